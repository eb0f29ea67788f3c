"""Baselines every forecast is scored against, on exactly the model's windows: naive,
seasonal naive and linear (ridge on the window)."""

from __future__ import annotations

import numpy as np

from flaxlstm.data import windows
from flaxlstm.data.io import error, short
from flaxlstm.data.series import SeriesData
from flaxlstm.forecast.metrics import split_metrics


def naive_forecast(data: SeriesData, starts: np.ndarray) -> np.ndarray:
  """Repeats the last observed target (row ``i - 1``) over the horizon.

  Returns:
    float32 ``(B, horizon, n_targets)`` in scaled units.
  """
  starts = np.asarray(starts, dtype=np.int64)
  last = data.y[starts - 1]  # (B, T)
  return np.repeat(last[:, None, :], data.horizon, axis=1)


def seasonal_naive_forecast(data: SeriesData, starts: np.ndarray, period: int) -> np.ndarray:
  """Repeats the last observed season: ``y_hat[i + h] = y[i + h - period*ceil((h+1)/period)]``.

  Args:
    data: the prepared series.
    starts: window indices ``(B,)``.
    period: season length in rows (``data.seasonal_period``); must fit in the lookback so
      the forecast only uses the window's own inputs.

  Returns:
    float32 ``(B, horizon, n_targets)`` in scaled units.

  Raises:
    InputError: if ``period`` is not in ``[1, lookback]``.
  """
  if (
    isinstance(period, bool)
    or not isinstance(period, (int, np.integer))
    or not (1 <= period <= data.lookback)
  ):
    raise error(
      f"data.seasonal_period must be an integer in [1, data.lookback="
      f"{data.lookback}], got {short(period)}"
    )
  starts = np.asarray(starts, dtype=np.int64)
  h = np.arange(data.horizon, dtype=np.int64)
  offsets = h - period * ((h + period) // period)  # (h+period)//period == ceil((h+1)/period)
  return data.y[starts[:, None] + offsets[None, :]]


# The linear baseline solves a (lookback * n_features)-dimensional ridge problem; past this
# size it would cost more than the LSTM, so it is skipped.
LINEAR_MAX_INPUTS = 4096
# It is fit on at most this many training windows, evenly spread (a large panel has 10^7).
LINEAR_MAX_WINDOWS = 50_000


def linear_forecaster(data: SeriesData, alpha: float = 1.0):
  """Fits a ridge regression from the whole input window to the whole horizon.

  Inputs are the flattened scaled window ``(lookback * n_features)``, outputs the flattened
  ``(horizon * n_targets)`` targets, fit on the training windows the LSTM trains on (at
  most ``LINEAR_MAX_WINDOWS`` of them, evenly spread). Returns ``predict(starts) -> (B,
  horizon, n_targets)`` in scaled units, or None when the problem is larger than
  ``LINEAR_MAX_INPUTS`` inputs.
  """
  from sklearn.linear_model import Ridge  # sklearn loads on first use

  if data.lookback * data.n_features > LINEAR_MAX_INPUTS:
    return None
  index = data.window_index("train")
  n = len(index)
  positions = np.arange(n) if n <= LINEAR_MAX_WINDOWS else np.linspace(0, n - 1, LINEAR_MAX_WINDOWS)
  starts = index.rows(positions.astype(np.int64))
  x, y = windows.gather_windows(data, starts)
  model = Ridge(alpha=alpha).fit(x.reshape(len(starts), -1), y.reshape(len(starts), -1))

  def predict(s: np.ndarray) -> np.ndarray:
    xs = windows.gather_inputs(data, np.asarray(s, dtype=np.int64))
    out = model.predict(xs.reshape(len(xs), -1))
    return out.reshape(len(xs), data.horizon, data.n_targets).astype(np.float32)

  return predict


def baseline_metrics(data: SeriesData, period: int, splits=("val", "test")) -> dict:
  """Naive, seasonal-naive and linear forecasts scored on exactly the model's windows:
  whether the LSTM earns its keep is read off one table."""
  forecasters = {"naive": lambda s: naive_forecast(data, s)}
  if data.lookback >= period:  # seasonal naive needs a full season of history
    forecasters["seasonal_naive"] = lambda s: seasonal_naive_forecast(data, s, period)
  linear = linear_forecaster(data)
  if linear is not None:
    forecasters["linear"] = linear
  return {
    name: {
      split: split_metrics(data, data.window_starts(split), f(data.window_starts(split)))
      for split in splits
    }
    for name, f in forecasters.items()
  }
