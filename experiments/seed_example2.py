"""Seed recipe 2: recipe 1 plus dropout (0.2 on inputs and recurrent state, 0.5 dense)."""

from __future__ import annotations

import pathlib

import ml_collections

from flaxlstm import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns recipe 2 (`arg` is unused)."""
  del arg
  config = config_lib.load_config_file(pathlib.Path(__file__).with_name("seed_example1.py"))
  config.model.dropout = 0.2
  config.model.recurrent_dropout = 0.2
  config.model.dense_dropout = 0.5
  return config
