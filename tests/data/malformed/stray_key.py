"""Malformed: adds a key the schema does not have (a typo of train.learning_rate)."""

from flaxlstm import config as config_lib


def get_config(arg=None):
  c = config_lib.default_config()
  c.train.lr = 3e-4
  return c
