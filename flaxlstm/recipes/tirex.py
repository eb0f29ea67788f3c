"""Fine-tuning TiRex on a long table (NeuralForecast's `unique_id, ds, y`), `--config
tirex:H` for a horizon of H steps (default 24):

  flaxlstm tirex convert model.ckpt --out tirex.npz           # once (needs torch)
  flaxlstm train --config tirex:48 --config.model.tirex.weights=tirex.npz \\
      --config.data.path=panel.csv --workdir runs/tirex_ft

Without `model.tirex.weights` the model starts from random weights of the sizes in
`model.tirex.*` (the published model's by default). TiRex's own quantiles are trained by
the pinball loss on the training split; validation picks the checkpoint (early
stopping). A wide table: `--config.data.id_column= --config.data.target=OT` (and its date
column).
"""

from __future__ import annotations

import ml_collections

from flaxlstm import config as config_lib
from flaxlstm.errors import InputError
from flaxlstm.pretrained.tirex import QUANTILES


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The TiRex fine-tuning config; `arg` is the horizon (default 24)."""
  config = config_lib.default_config()
  config.data.id_column = "unique_id"
  config.data.date_column = "ds"
  config.data.target = ("y",)
  config.data.features = ("y",)
  # Each series' last horizon is test, the one before it validation (data.val_size,
  # data.test_size; test_size=0 fine-tunes on everything but validation).
  config.data.split = "holdout"
  # TiRex scales each window by its own mean and deviation; a global scaler before it
  # changes nothing but the units the loss is measured in.
  config.data.scaler = "standard"
  config.data.scaler_scope = "series"
  config.data.lookback = 512
  config.data.horizon = 24
  if arg:
    if not arg.isdigit() or int(arg) <= 0:
      raise InputError(f"tirex takes the horizon as its argument, got {arg!r}")
    config.data.horizon = int(arg)

  config.model.encoder = "tirex"
  config.model.head = "quantile"
  config.model.quantiles = QUANTILES
  config.model.predict_delta = False
  config.model.linear_skip = False
  config.model.dropout = 0.0

  # Fine-tuning: a small learning rate and few epochs, so the pretrained model is adjusted,
  # not overwritten; early stopping on validation keeps the best checkpoint.
  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-5
  config.train.schedule = "cosine"
  config.train.warmup_steps = 20
  config.train.weight_decay = 0.0
  config.train.clip_norm = 1.0
  config.train.batch_size = 32
  config.train.patience = 3
  config.train.max_epochs = 5
  return config
