"""Malformed: get_config() fails with an ordinary exception."""

from flaxlstm import config as config_lib


def get_config(arg=None):
  c = config_lib.default_config()
  c.model.hidden_sizes = (int("sixty-four"),)
  return c
