"""The DLinear baseline (flaxlstm/forecast/baselines.py): DLinear's decomposition and
channel-independent linear maps, fit in closed form, scored beside the others."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flaxlstm.config import DataSpec
from flaxlstm.data import series
from flaxlstm.forecast import baselines


def _moving_average_by_hand(x: np.ndarray, kernel: int) -> np.ndarray:
  """DLinear's `moving_avg`: the window padded with copies of its first and last value,
  then averaged over `kernel` steps, stride 1."""
  pad = (kernel - 1) // 2
  padded = np.concatenate([np.repeat(x[:, :1], pad, 1), x, np.repeat(x[:, -1:], pad, 1)], 1)
  return np.stack([padded[:, j : j + kernel].mean(1) for j in range(x.shape[1])], 1)


def test_dlinear_weights_equal_a_direct_least_squares_fit():
  rng = np.random.default_rng(0)
  n, lookback, horizon, kernel, alpha = 40, 8, 3, 5, 0.1
  x = rng.normal(size=(n, lookback)).cumsum(1)
  y = rng.normal(size=(n, horizon)) + x[:, -1:]
  trend = _moving_average_by_hand(x, kernel)
  seasonal, got_trend = baselines.decompose(x, kernel)
  np.testing.assert_allclose(got_trend, trend, atol=1e-12)
  np.testing.assert_allclose(seasonal, x - trend, atol=1e-12)
  # Ridge as one least-squares problem: [seasonal, trend, 1] @ [W_s; W_t; b] ~ y, and
  # sqrt(alpha) * W ~ 0 (the bias unpenalized).
  z = np.concatenate([x - trend, trend, np.ones((n, 1))], 1)
  penalty = np.concatenate([np.sqrt(alpha) * np.eye(2 * lookback), np.zeros((2 * lookback, 1))], 1)
  a = np.concatenate([z, penalty])
  b = np.concatenate([y, np.zeros((2 * lookback, horizon))])
  w = np.linalg.lstsq(a, b, rcond=None)[0]
  model = baselines.fit_dlinear(x, y, kernel=kernel, alpha=alpha)
  np.testing.assert_allclose(model.seasonal, w[:lookback], rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(model.trend, w[lookback : 2 * lookback], rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(model.bias, w[-1], rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(model.predict(x), z @ w, rtol=1e-7, atol=1e-9)


def test_dlinear_beats_naive_on_a_trend_plus_a_daily_sine(tmp_path):
  n = 1200
  t = np.arange(n)
  rng = np.random.default_rng(1)
  frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n, freq="h")})
  frame["a"] = 0.01 * t + np.sin(2 * np.pi * t / 24) + 0.05 * rng.normal(size=n)
  frame["OT"] = -0.02 * t + 2 * np.cos(2 * np.pi * t / 24) + 0.05 * rng.normal(size=n)
  path = tmp_path / "trend_sine.csv"
  frame.to_csv(path, index=False)
  spec = DataSpec(
    path=str(path), features=("*",), target=("*",), split="tsl", lookback=48, horizon=24
  )
  data = series.prepare(spec)
  scores = baselines.baseline_metrics(data, period=24)
  assert list(scores) == ["naive", "seasonal_naive", "linear", "dlinear"]
  for split in ("val", "test"):
    assert scores["dlinear"][split]["mse"] < 0.1 * scores["naive"][split]["mse"], scores
  # Channel-independent: one map fit to every (train window, column) pair of the scaled
  # targets, applied to each column's own past.
  lookback, horizon = 48, 24
  train = data.window_starts("train")
  steps = np.arange(-lookback, horizon)
  samples = np.concatenate([data.y[train[:, None] + steps, c] for c in range(2)])
  model = baselines.fit_dlinear(samples[:, :lookback], samples[:, lookback:])
  starts = data.window_starts("test")[:5]
  out = baselines.dlinear_forecaster(data)(starts)
  assert out.shape == (5, horizon, 2) and out.dtype == np.float32
  for c in range(2):
    own = data.y[starts[:, None] + np.arange(-lookback, 0), c]
    np.testing.assert_allclose(out[..., c], model.predict(own), rtol=1e-4, atol=1e-4)
