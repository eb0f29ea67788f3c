"""ETTh1 univariate (Informer protocol): OT alone in, OT out; the argument is the horizon.

  flaxlstm train --config ett_univariate:168 --workdir runs/ett_u168
  flaxlstm train --config ett_univariate:24 --config.data.path=ETTh2.csv

Split 12/4/4 months (rows [0, 8640), [8640, 11520), [11520, 14400)), StandardScaler fit on
the training rows, MSE/MAE on scaled values over every test window. The recipe is the
default experiment's (level-free LSTM + linear highway starting at its ridge fit, AdamW,
cosine, early stopping that keeps the start unless training beats it) with a week of
history for horizons beyond two days.
"""

from flaxlstm.recipes import ett

HORIZONS = (24, 48, 168, 336, 720)


def get_config(arg: str | None = None):
  config = ett.get_config(arg or "24")
  horizon = config.data.horizon
  config.data.lookback = 96 if horizon <= 48 else 168
  return config
