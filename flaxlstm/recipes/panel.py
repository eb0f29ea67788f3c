"""A global model over a panel: any long table (NeuralForecast's `unique_id, ds, y` by
default), `--config panel:H` for a horizon of H steps, `panel:H,S` with a season length of S
steps (the seasonal-naive baseline's `data.seasonal_period`; by default the season of the
series' frequency: 24 for hourly series, 7 daily, 52 weekly, 12 monthly, ...):

  flaxlstm train --config panel:48 --config.data.path=panel.csv --workdir runs/panel
  # A production fit (every row but each series' last H trains), then each series' next H:
  flaxlstm train --config panel:48 --config.data.path=panel.csv --config.data.test_size=0 \\
      --workdir runs/panel_fit
  flaxlstm predict --workdir runs/panel_fit --data panel.csv --out forecast.csv

Each series' last H rows are test, the H before them validation (early stopping picks the
checkpoint on them). It forecasts quantiles (`y_q0.025` ... `y_q0.975` beside the median
`y` in `predict`'s output): 80% and 95% intervals; `--config.model.head=point
--config.train.loss=mae` forecasts the point alone, as the recipe did before. Other column
names: `--config.data.id_column=`, `data.date_column`, `data.target` (and
`data.features`). The settings were chosen on validation holdouts cut from training rows
only (experiments/README.md, "Panels"); then frozen.
"""

from __future__ import annotations

import ml_collections

from flaxlstm import config as config_lib
from flaxlstm.errors import InputError

USAGE = (
  "panel takes the horizon and an optional season length as its argument (panel:H or panel:H,S)"
)


def parse_arg(arg: str | None) -> tuple[int, int]:
  """`"H"` or `"H,S"` -> (horizon, season length); no argument is horizon 24. A season of
  0 is the one of the data's frequency (`data.seasonal_period=0`)."""
  if not arg:
    return 24, 0
  parts = arg.split(",")
  if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise InputError(f"{USAGE}, positive integers; got {arg!r}")
  horizon, season = int(parts[0]), int(parts[1]) if len(parts) == 2 else 0
  return horizon, season


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The panel config; `arg` is `H` or `H,S`."""
  horizon, season = parse_arg(arg)
  config = config_lib.default_config()
  config.data.id_column = "unique_id"
  config.data.date_column = "ds"
  config.data.target = ("y",)
  config.data.features = ()  # a long table's own target
  config.data.split = "holdout"
  config.data.horizon = horizon
  # Four horizons of history: enough to see a trend and the recent level, short enough
  # that short series still have training windows (chosen on M4 Weekly's validation
  # origins: experiments/README.md). At least one given season, so that the seasonal-naive
  # baseline reads only the window (one found in the data may be longer: then no baseline).
  config.data.lookback = max(4 * horizon, season)
  config.data.seasonal_period = season
  # A series too short for a window in every split still trains and is forecast: its first
  # windows repeat its first row. Panels mix lengths (M4 Yearly's series have 13 to 835
  # rows); without it the recipe would refuse every panel with one short series. Only the
  # short series are padded: the others read what they read without it.
  config.data.pad_short = True
  # Each series divided by its own largest training value: the loss then weighs every
  # series by its relative error (as sMAPE does), not by its size.
  config.data.scaler = "maxabs"
  config.data.scaler_scope = "series"
  # Each series trains on its recent history only (N-BEATS samples its last few horizons): a
  # long series' early years follow another regime and would outnumber the short series.
  config.data.recent_train_rows = 20 * horizon

  config.model.encoder = "lstm"
  config.model.hidden_sizes = (64,)
  # Reversible instance normalization: each window by its own mean and deviation, so the
  # model sees shapes, not levels, and its forecast is mapped back to the window's level.
  config.model.revin = True
  config.model.predict_delta = False
  # Plus a linear map from the whole window (LSTNet's AR highway).
  config.model.linear_skip = True
  config.model.dropout = 0.0
  # Quantiles of each value (model.quantiles: 2.5% to 97.5%, the median the point forecast),
  # by the pinball loss, whose median term is the MAE the recipe trained by before. On M4
  # Weekly's validation origins its median forecast is as good as the MAE head's and its
  # intervals cover as they say (experiments/README.md, "Panels").
  config.model.head = "quantile"

  config.train.loss = "mse"  # the default; the quantile head trains by its own loss
  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-3
  config.train.schedule = "cosine"
  config.train.warmup_steps = 100
  config.train.weight_decay = 1e-4
  config.train.clip_norm = 1.0
  config.train.batch_size = 256
  # A step budget, not epochs: panels hold from thousands to millions of windows.
  config.train.max_steps = 2000
  config.train.max_epochs = 1000
  config.train.eval_every_steps = 200
  config.train.patience = 5
  return config
