"""Malformed: importing the file fails (a missing module)."""

import flaxlstm_no_such_module  # noqa: F401


def get_config(arg=None):
  return None
