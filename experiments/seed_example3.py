"""Seed recipe 3: recipe 2 plus StandardScaler on the features and the target."""

from __future__ import annotations

import pathlib

import ml_collections

from flaxlstm import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns recipe 3 (`arg` is unused)."""
  del arg
  config = config_lib.load_config_file(pathlib.Path(__file__).with_name("seed_example2.py"))
  config.data.scaler = "standard"  # Fit on the train rows only.
  config.data.scale_target = True
  return config
