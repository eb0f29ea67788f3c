"""Seed recipe 2: recipe 1 plus dropout (0.2 on inputs and recurrent state, 0.5 dense)."""

from __future__ import annotations

import ml_collections

from flaxlstm.recipes import seed_example1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns recipe 2 (`arg` is unused)."""
  del arg
  config = seed_example1.get_config()
  config.model.dropout = 0.2
  config.model.recurrent_dropout = 0.2
  config.model.dense_dropout = 0.5
  return config
