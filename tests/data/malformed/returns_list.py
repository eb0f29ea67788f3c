"""Malformed: get_config() returns something that is not a config."""


def get_config(arg=None):
  return [("train.batch_size", 32)]
