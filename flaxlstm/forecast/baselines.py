"""Baselines every forecast is scored against, on exactly the model's windows: naive,
seasonal naive and linear (ridge on the window), and split-conformal intervals around the
model's and the naive forecast."""

from __future__ import annotations

from typing import Any

import numpy as np

from flaxlstm.data import windows
from flaxlstm.data.io import error, short
from flaxlstm.data.series import SeriesData
from flaxlstm.forecast.metrics import distribution_metrics, split_metrics, unit_scale


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
  whether the LSTM earns its keep is read off one table. A split without windows (the test
  split of a production fit) is left out, as the model's is."""
  splits = [split for split in splits if len(data.window_index(split))]
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


# ---- split-conformal intervals -----------------------------------------------------------
class Conformal:
  """Split-conformal predictive distributions around a point forecast (Vovk et al., 2005;
  Lei et al., 2018): the point plus the empirical distribution of the calibration windows'
  signed errors, per lead time and target.

  `calibration_errors (n, H, T)` are `y - point` on windows the point forecaster was not
  fit on (the validation windows). The quantile at level `tau` is the `ceil((n + 1) tau)`-th
  smallest error above the median and the `floor((n + 1) tau)`-th below, so a central
  interval covers a new exchangeable window with probability at least its level. CRPS is the
  exact score of the empirical distribution, `E|X - y| - E|X - X'| / 2`.
  """

  def __init__(self, point: np.ndarray, calibration_errors: np.ndarray):
    self.point = np.asarray(point, np.float64)
    self.errors = np.sort(np.asarray(calibration_errors, np.float64), axis=0)  # (n, H, T)
    if not len(self.errors):
      raise ValueError("conformal calibration needs at least one window")

  def quantiles(self, levels) -> np.ndarray:
    n = len(self.errors)
    levels = np.asarray(levels, np.float64)
    rank = np.where(levels >= 0.5, np.ceil((n + 1) * levels), np.floor((n + 1) * levels))
    rank = np.clip(rank.astype(np.int64), 1, n) - 1
    return self.point[..., None] + np.moveaxis(self.errors[rank], 0, -1)

  def crps(self, y: np.ndarray) -> np.ndarray:
    r, n = self.errors, len(self.errors)
    e = np.asarray(y, np.float64) - self.point  # (N, H, T)
    # E|r - r'| from the sorted errors: (2 / n^2) sum_i (2i - n + 1) r_(i), i from 0.
    weights = (2 * np.arange(n) - n + 1)[:, None, None]
    spread = 2 * (weights * r).sum(axis=0) / n**2
    csum = np.concatenate([np.zeros((1,) + r.shape[1:]), np.cumsum(r, axis=0)])
    out = np.empty_like(e)
    for h, t in np.ndindex(*r.shape[1:]):  # one sorted column per (lead time, target)
      k = np.searchsorted(r[:, h, t], e[:, h, t], side="right")  # errors <= e
      below, total = csum[k, h, t], csum[n, h, t]
      mean_abs = (k * e[:, h, t] - below + (total - below) - (n - k) * e[:, h, t]) / n
      out[:, h, t] = mean_abs - spread[h, t] / 2
    return out


def conformal_metrics(
  data: SeriesData, val_point: np.ndarray, test_point: np.ndarray, levels
) -> dict[str, Any]:
  """Test-window scores of split-conformal distributions calibrated on the validation
  windows, around the given point forecasts (`"model"`) and around the naive forecast."""
  val, test = data.window_starts("val"), data.window_starts("test")
  if not len(val) or not len(test):
    return {}
  y_val = windows.gather_targets(data, val)
  y_test = windows.gather_targets(data, test)
  unit = unit_scale(data, test)
  out = {}
  for name, (cal, point) in {
    "model": (val_point, test_point),
    "naive": (naive_forecast(data, val), naive_forecast(data, test)),
  }.items():
    dist = Conformal(point, y_val - np.asarray(cal, np.float64))
    out[name] = {"test": distribution_metrics(dist, y_test, unit, levels)}
  return out
