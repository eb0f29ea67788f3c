"""Seed recipe 3: recipe 2 plus StandardScaler on the features and the target."""

from __future__ import annotations

import ml_collections

from flaxlstm.recipes import seed_example2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns recipe 3 (`arg` is unused)."""
  del arg
  config = seed_example2.get_config()
  config.data.scaler = "standard"  # Fit on the train rows only.
  config.data.scale_target = True
  return config
