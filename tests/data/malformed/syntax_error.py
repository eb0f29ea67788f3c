"""Malformed: not valid Python (unclosed parenthesis)."""

from flaxlstm import config as config_lib


def get_config(arg=None):
  c = config_lib.default_config()
  c.model.hidden_sizes = (64,
  return c
