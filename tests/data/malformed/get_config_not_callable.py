"""Malformed: get_config is a value, not a function."""

from flaxlstm import config as config_lib

get_config = config_lib.default_config()
