"""Seed recipe 1: LSTM(512) -> LSTM(256) -> Dense on unscaled data, no dropout.

AdamW (lr 1e-4, weight decay 1e-5), gradient clipping at norm 1, batch 32, early stopping
with patience 10 restoring the best weights. seed_example2 and seed_example3 build
on this file.
"""

from __future__ import annotations

import ml_collections

from flaxlstm import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns recipe 1 (`arg` is unused)."""
  del arg
  config = config_lib.default_config()
  config.data.scaler = "none"  # The recipe feeds raw values; recipe 3 adds scaling.
  config.data.scale_target = False

  config.model.hidden_sizes = (512, 256)

  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-4
  config.train.weight_decay = 1e-5
  config.train.clip_norm = 1.0
  config.train.batch_size = 32
  config.train.patience = 10
  config.train.restore_best = True
  return config
