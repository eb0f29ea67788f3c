"""Malformed: importing the file calls sys.exit(0), which would end flaxlstm with code 0."""

import sys

sys.exit(0)


def get_config(arg=None):
  return None
