"""Malformed: defines a config builder under the wrong name."""

from flaxlstm import config as config_lib


def make_config(arg=None):
  return config_lib.default_config()
