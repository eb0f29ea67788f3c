"""Baselines every forecast is scored against, on exactly the model's windows: naive,
seasonal naive, linear (ridge on the window), DLinear (per column, on its trend and
seasonal parts), and split-conformal intervals around the model's and the naive forecast."""

from __future__ import annotations

import dataclasses
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
  h = np.arange(data.horizon, dtype=np.int64)
  offsets = h - period * ((h + period) // period)  # (h+period)//period == ceil((h+1)/period)
  return data.y[data.input_rows(starts, offsets)]


# The linear baseline solves a (lookback * n_features)-dimensional ridge problem; past this
# size it would cost more than the LSTM, so it is skipped.
LINEAR_MAX_INPUTS = 4096
# It is fit on at most this many training windows, evenly spread (a large panel has 10^7).
LINEAR_MAX_WINDOWS = 50_000


def spread_train_starts(data: SeriesData, most: int) -> np.ndarray:
  """Every training window's start, or `most` of them evenly spread: the samples a
  closed-form fit reads (deterministic, so a fit is the same in every run)."""
  index = data.window_index("train")
  n = len(index)
  positions = np.arange(n) if n <= most else np.linspace(0, n - 1, most)
  return index.rows(positions.astype(np.int64))


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
  starts = spread_train_starts(data, LINEAR_MAX_WINDOWS)
  x, y = windows.gather_windows(data, starts)
  model = Ridge(alpha=alpha).fit(x.reshape(len(starts), -1), y.reshape(len(starts), -1))

  def predict(s: np.ndarray) -> np.ndarray:
    xs = windows.gather_inputs(data, np.asarray(s, dtype=np.int64))
    out = model.predict(xs.reshape(len(xs), -1))
    return out.reshape(len(xs), data.horizon, data.n_targets).astype(np.float32)

  return predict


# ---- DLinear ------------------------------------------------------------------------------
# DLinear's moving-average kernel (Zeng et al., 2023: "Are Transformers Effective for Time
# Series Forecasting?"; its code's default).
DLINEAR_KERNEL = 25
# The ridge penalty of its closed-form fit: small against the Gram matrix of the 10^4 and
# more standardized training samples it sees (as the linear baseline's alpha=1).
DLINEAR_ALPHA = 1.0
# It is fit on at most this many (window, target column) samples: evenly spread windows.
DLINEAR_MAX_SAMPLES = 200_000
# Samples gathered at once while fitting (bounds the memory of a wide file's windows).
_DLINEAR_CHUNK = 16_384


def moving_average(length: int, kernel: int = DLINEAR_KERNEL) -> np.ndarray:
  """DLinear's trend as a matrix: ``trend = x @ A`` for windows ``x (N, length)``.

  A moving average of `kernel` (odd) steps, stride 1, over the window padded at each end
  with ``(kernel - 1) // 2`` copies of its first and its last value (DLinear's
  `moving_avg`), so the trend has the window's length.
  """
  if kernel < 1 or kernel % 2 == 0:
    raise ValueError(f"the moving average needs an odd kernel, got {kernel}")
  pad = (kernel - 1) // 2
  out = np.zeros((length, length))
  for j in range(length):  # output step j averages padded steps j .. j + kernel - 1
    rows = np.clip(np.arange(j - pad, j + pad + 1), 0, length - 1)
    np.add.at(out[:, j], rows, 1.0 / kernel)
  return out


def decompose(x: np.ndarray, kernel: int = DLINEAR_KERNEL) -> tuple[np.ndarray, np.ndarray]:
  """DLinear's series decomposition of windows ``x (N, L)``: (seasonal, trend), each
  ``(N, L)``, ``seasonal = x - trend``."""
  x = np.asarray(x, np.float64)
  trend = x @ moving_average(x.shape[-1], kernel)
  return x - trend, trend


@dataclasses.dataclass(frozen=True)
class DLinear:
  """DLinear's forecast ``seasonal @ W_s + trend @ W_t + bias`` of one column's window,
  the same weights for every column (channel-independent, DLinear's `individual=False`).

  Attributes:
    seasonal: ``(L, H)`` weights of the seasonal part (DLinear's `Linear_Seasonal`).
    trend: ``(L, H)`` weights of the trend part (`Linear_Trend`).
    bias: ``(H,)`` the two layers' biases, summed.
    kernel: the moving average's kernel.
  """

  seasonal: np.ndarray
  trend: np.ndarray
  bias: np.ndarray
  kernel: int = DLINEAR_KERNEL

  def weights(self) -> np.ndarray:
    """The whole map as one ``(L, H)`` matrix on the raw window: the decomposition is linear
    (``seasonal = x (I - A)``, ``trend = x A``), so the forecast is ``x @ M + bias``."""
    a = moving_average(self.seasonal.shape[0], self.kernel)
    return self.seasonal - a @ self.seasonal + a @ self.trend

  def predict(self, x: np.ndarray) -> np.ndarray:
    """Forecasts ``(N, H)`` of windows ``x (N, L)``."""
    return np.asarray(x, np.float64) @ self.weights() + self.bias


class Moments:
  """Running sums of inputs ``x (n, L)`` and their targets ``y (n, H)``: what a least
  squares fit needs, gathered a chunk at a time."""

  def __init__(self, lookback: int, horizon: int):
    self.n = 0
    self.sx, self.sy = np.zeros(lookback), np.zeros(horizon)
    self.xx, self.xy = np.zeros((lookback, lookback)), np.zeros((lookback, horizon))

  def add(self, x: np.ndarray, y: np.ndarray) -> None:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    self.n += len(x)
    self.sx += x.sum(axis=0)
    self.sy += y.sum(axis=0)
    self.xx += x.T @ x
    self.xy += x.T @ y


def ridge_solve(
  m: Moments, alpha: float, transform: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """The ridge fit ``y ~ z @ w + bias`` to the moments `m`, with features ``z = x @
  transform`` (default ``x``): minimizes the squared error plus ``alpha * |w|^2``, the bias
  unpenalized (fit on centered moments, as scikit-learn's `Ridge`). Returns `(w, bias)`."""
  mx, my = m.sx / m.n, m.sy / m.n
  cxx = m.xx - m.n * np.outer(mx, mx)
  cxy = m.xy - m.n * np.outer(mx, my)
  if transform is not None:
    cxx, cxy, mx = transform.T @ cxx @ transform, transform.T @ cxy, mx @ transform
  w = np.linalg.solve(cxx + alpha * np.eye(len(cxx)), cxy)
  return w, my - mx @ w


def _solve_dlinear(m: Moments, kernel: int, alpha: float) -> DLinear:
  """The ridge fit of `DLinear` to the moments `m`: minimizes the squared error over the
  samples plus ``alpha * (|W_s|^2 + |W_t|^2)``, the bias unpenalized.

  The features are ``z = [x (I - A), x A] = x T``, so their centered Gram matrix is
  ``T' Cxx T`` and their cross moments ``T' Cxy``: the ``2L``-dimensional problem needs only
  the window's ``L x L`` moments. (Without the penalty the fit is not unique: the two parts
  sum to the window, so only ``W_s (I - A) + W_t A`` is determined.)
  """
  lookback = len(m.sx)
  a = moving_average(lookback, kernel)
  w, bias = ridge_solve(m, alpha, np.concatenate([np.eye(lookback) - a, a], axis=1))  # (2L, H)
  return DLinear(seasonal=w[:lookback], trend=w[lookback:], bias=bias, kernel=kernel)


def fit_dlinear(
  x: np.ndarray, y: np.ndarray, kernel: int = DLINEAR_KERNEL, alpha: float = DLINEAR_ALPHA
) -> DLinear:
  """Fits DLinear in closed form to windows ``x (N, L)`` and their futures ``y (N, H)``.

  DLinear is linear in its inputs, so the weights that minimize the mean squared error (its
  training loss) are a least-squares solution: no gradient steps. A small ridge penalty
  `alpha` makes it unique (`_solve_dlinear`).
  """
  x, y = np.asarray(x), np.asarray(y)
  moments = Moments(x.shape[1], y.shape[1])
  moments.add(x, y)
  return _solve_dlinear(moments, kernel, alpha)


def dlinear_forecaster(data: SeriesData, alpha: float = DLINEAR_ALPHA):
  """Fits DLinear (`fit_dlinear`) to the training windows the LSTM trains on, each target
  column a sample (channel-independent: each column's past to its own future), on the
  scaled targets the naive baselines read (`data.y`). At most `DLINEAR_MAX_SAMPLES`
  (window, column) samples, evenly spread windows.

  Returns ``predict(starts) -> (B, horizon, n_targets)`` in scaled units, or None when the
  lookback is longer than ``LINEAR_MAX_INPUTS``.
  """
  lookback, horizon, n_targets = data.lookback, data.horizon, data.n_targets
  if lookback > LINEAR_MAX_INPUTS:
    return None
  most = max(1, min(LINEAR_MAX_WINDOWS, DLINEAR_MAX_SAMPLES // n_targets))
  starts = spread_train_starts(data, most)
  steps = np.arange(-lookback, horizon, dtype=np.int64)
  moments = Moments(lookback, horizon)
  chunk = max(1, _DLINEAR_CHUNK // n_targets)
  for i in range(0, len(starts), chunk):
    rows = data.input_rows(starts[i : i + chunk], steps)  # (B, L + H)
    series = np.moveaxis(data.y[rows], -1, 1).reshape(-1, lookback + horizon)  # (B * T, L + H)
    moments.add(series[:, :lookback], series[:, lookback:])
  model = _solve_dlinear(moments, DLINEAR_KERNEL, alpha)
  weights, bias = model.weights(), model.bias

  def predict(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.int64)
    x = np.moveaxis(data.y[data.input_rows(s, np.arange(-lookback, 0))], -1, 1)
    out = x.astype(np.float64) @ weights + bias  # (B, T, H)
    return np.moveaxis(out, 1, -1).astype(np.float32)

  return predict


def baseline_metrics(data: SeriesData, period: int, splits=("val", "test")) -> dict:
  """Naive, seasonal-naive, linear and DLinear forecasts scored on exactly the model's windows:
  whether the LSTM earns its keep is read off one table. A split without windows (the test
  split of a production fit) is left out, as the model's is."""
  splits = [split for split in splits if len(data.window_index(split))]
  forecasters = {"naive": lambda s: naive_forecast(data, s)}
  # Seasonal naive needs a full season of history; with a season of 1 it is the naive.
  if 1 < period <= data.lookback:
    forecasters["seasonal_naive"] = lambda s: seasonal_naive_forecast(data, s, period)
  linear = linear_forecaster(data)
  if linear is not None:
    forecasters["linear"] = linear
  dlinear = dlinear_forecaster(data)
  if dlinear is not None:
    forecasters["dlinear"] = dlinear
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
