"""Valid on its own, but takes no argument: selecting it as takes_no_arg.py:ARG fails."""

from flaxlstm import config as config_lib


def get_config():
  return config_lib.default_config()
