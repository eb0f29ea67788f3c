"""Malformed: a value of the wrong type (float layer sizes where the schema has ints)."""

from flaxlstm import config as config_lib


def get_config(arg=None):
  c = config_lib.default_config()
  c.model.hidden_sizes = (64.5, 32.0)
  return c
