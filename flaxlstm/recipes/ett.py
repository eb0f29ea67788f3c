"""The default experiment: bundled ETTh1, oil temperature (OT) 96 rows -> next 24 steps.

Follows the ETT protocol in DESIGN.md (12/4/4-month split, StandardScaler fit on train,
metrics on scaled values). The optional argument sets the horizon:

  flaxlstm train --workdir runs/ett              # the default: --config ett
  flaxlstm train --config ett:48 --workdir runs/ett_48
"""

from __future__ import annotations

import ml_collections

from flaxlstm import config as config_lib
from flaxlstm.errors import InputError

# The highway's zero start, as the LSTM ablations (experiments/sweeps: dropout, init, ...) and
# the tuning study ran before the ridge start was chosen: they pin it, so that their tables
# stay reproducible and they still measure the LSTM, not the linear fit early stopping keeps.
ZERO_START = ("model.linear_skip_init=zeros", "train.eval_at_start=False")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the ETTh1 multivariate config; `arg` is the horizon (default 24)."""
  config = config_lib.default_config()
  config.data.split = "ett"
  # OT alone as input: with all 7 columns the same model fits the training years better
  # but loses to the naive forecast on the test year (measured; see README).
  config.data.features = ("OT",)
  config.data.target = ("OT",)
  config.data.lookback = 96
  config.data.horizon = 24
  if arg:
    if not arg.isdigit():
      raise InputError(f"ett takes the horizon as its argument, got {arg!r}")
    config.data.horizon = int(arg)

  config.model.hidden_sizes = (64,)
  config.model.dropout = 0.1
  # Level-free: inputs relative to their last value, output = last value + predicted change.
  # The untrained model is the naive forecast; ETT's level drifts between years.
  config.model.predict_delta = True
  # Plus a linear map from the whole window (LSTNet's AR highway): the LSTM models what a
  # linear model misses. It starts at its ridge fit, and that start is scored, so early
  # stopping keeps the linear forecast unless training beats it on validation: the LSTM
  # alone adds little here, and from a zero start its best epoch (hence its test score)
  # moved with the machine's last bits. Chosen on validation at every horizon
  # (experiments/sweeps/univariate_start.py; experiments/README.md).
  config.model.linear_skip = True
  config.model.linear_skip_init = "ridge"
  config.train.eval_at_start = True

  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-3
  config.train.schedule = "cosine"
  config.train.warmup_steps = 200  # About 1.5 epochs at batch 64.
  config.train.weight_decay = 1e-4
  config.train.clip_norm = 1.0
  config.train.batch_size = 64
  config.train.patience = 5
  # Budget: ~8.5k train windows / 64 = ~133 steps per epoch; 30 epochs is ~4k steps, meant
  # to finish in 3-5 minutes on 2 CPU cores (to be re-tuned once the trainer is timed).
  # Early stopping usually ends it sooner; cosine decays over the full 30 epochs.
  config.train.max_epochs = 30
  return config
