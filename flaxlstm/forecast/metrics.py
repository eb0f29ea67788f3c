"""Forecast metrics, on the scaled values and in the data's own units: MSE/MAE/RMSE of
points, and CRPS, pinball loss, interval coverage and width of predictive distributions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from flaxlstm.data import windows
from flaxlstm.data.series import SeriesData
from flaxlstm.forecast import heads


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
  """MSE, MAE and RMSE over all elements, computed in float64, as Python floats."""
  y_true = np.asarray(y_true, dtype=np.float64)
  y_pred = np.asarray(y_pred, dtype=np.float64)
  if y_true.shape != y_pred.shape:
    raise ValueError(f"shape mismatch: y_true {y_true.shape} vs y_pred {y_pred.shape}")
  err = y_pred - y_true
  mse = float(np.mean(err**2))
  return {"mse": mse, "mae": float(np.mean(np.abs(err))), "rmse": math.sqrt(mse)}


def split_metrics(data: SeriesData, starts: np.ndarray, pred: np.ndarray) -> dict:
  """MSE/MAE/RMSE on the scaled values and (suffix `_original`) in the data's units."""
  y = windows.gather_targets(data, starts)
  scaled = regression_metrics(y, pred)
  orig = regression_metrics(data.inverse_targets(y, starts), data.inverse_targets(pred, starts))
  return {**scaled, **{f"{k}_original": v for k, v in orig.items()}}


def per_target_metrics(data: SeriesData, starts: np.ndarray, pred: np.ndarray) -> dict:
  """`split_metrics` on the scaled values of each target column alone, by name."""
  y = windows.gather_targets(data, starts)
  return {
    name: regression_metrics(y[..., i], pred[..., i]) for i, name in enumerate(data.target_names)
  }


# ---- predictive distributions ---------------------------------------------------------------
class HeadDistribution:
  """The predictive distributions of a distribution head: `params (..., P)` in the head's
  parameterization (forecast/heads.py), as float64 on the host."""

  def __init__(self, head: Any, params: Any):  # a distribution head
    self.head, self.params = head, np.asarray(params, np.float64)

  def point(self) -> np.ndarray:
    return np.asarray(self.head.point(self.params), np.float64)

  def quantiles(self, levels: Any) -> np.ndarray:
    return self.head.quantiles(self.params, levels)

  def crps(self, y: np.ndarray) -> np.ndarray:
    return self.head.crps(self.params, y)


def distribution_metrics(
  dist: Any, y: Any, unit_scale: Any, levels: Sequence[float], intervals=heads.INTERVALS
) -> dict[str, Any]:
  """Scores predictive distributions `dist` against the targets `y (N, H, T)`.

  `dist` has `quantiles(levels) -> (N, H, T, Q)` and `crps(y) -> (N, H, T)` (a
  `HeadDistribution`, or `baselines.Conformal`). `unit_scale (N, H, T)` is what one scaled
  unit is in the data's units (the scaler's std): CRPS, pinball and widths scale with it
  (suffix `_original`), coverage does not.

  Returns CRPS, the mean pinball loss over `levels`, and for each central interval `c` in
  `intervals` its coverage (`coverage_80`: the share of targets inside it) and mean width;
  under `per_lead`, the same by lead time (lists of H values, scaled units).
  """
  y = np.asarray(y, np.float64)
  unit = np.asarray(unit_scale, np.float64)
  grid = np.asarray(levels, np.float64)
  crps = dist.crps(y)
  loss = heads.pinball(y[..., None], dist.quantiles(grid), grid).mean(axis=-1)
  out: dict[str, Any] = {
    "crps": float(crps.mean()),
    "crps_original": float((crps * unit).mean()),
    "pinball": float(loss.mean()),
    "pinball_original": float((loss * unit).mean()),
  }
  lead_mean = lambda a: [float(v) for v in a.mean(axis=(0, 2))]
  per_lead: dict[str, list[float]] = {"crps": lead_mean(crps), "pinball": lead_mean(loss)}
  for c in intervals:
    lo, hi = np.moveaxis(dist.quantiles(((1 - c) / 2, (1 + c) / 2)), -1, 0)
    inside = (lo <= y) & (y <= hi)
    name = f"{round(100 * c)}"
    out[f"coverage_{name}"] = float(inside.mean())
    out[f"width_{name}"] = float((hi - lo).mean())
    out[f"width_{name}_original"] = float(((hi - lo) * unit).mean())
    per_lead[f"coverage_{name}"] = lead_mean(inside.astype(np.float64))
    per_lead[f"width_{name}"] = lead_mean(hi - lo)
  out["per_lead"] = per_lead
  return out


def unit_scale(data: SeriesData, starts: np.ndarray) -> np.ndarray:
  """`(N, horizon, n_targets)`: one scaled unit of each target in the data's units."""
  shape = (len(starts), data.horizon, data.n_targets)
  zero = data.inverse_targets(np.zeros(shape, np.float32), starts).astype(np.float64)
  return data.inverse_targets(np.ones(shape, np.float32), starts) - zero


# ---- M4 competition scores -------------------------------------------------------------------
def smape(y_true: Any, y_pred: Any) -> float:
  """M4's sMAPE in percent: the mean over every value of 200 |y - y_hat| / (|y| + |y_hat|).

  Over a panel of equal horizons this is the mean of the series' own sMAPEs, as M4's.
  """
  y, f = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
  if y.shape != f.shape:
    raise ValueError(f"shape mismatch: y_true {y.shape} vs y_pred {f.shape}")
  return float(np.mean(200.0 * np.abs(y - f) / (np.abs(y) + np.abs(f))))


def mase_scale(history: Any, season: int = 1) -> float:
  """MASE's scale for one series: the mean absolute `season`-step change of its history."""
  h = np.asarray(history, np.float64)
  if h.ndim != 1 or len(h) <= season:
    raise ValueError(f"MASE needs a history longer than the season ({season}), got {h.shape}")
  return float(np.mean(np.abs(h[season:] - h[:-season])))


def mase(y_true: Any, y_pred: Any, scales: Any) -> float:
  """M4's MASE over a panel: each series' mean absolute error over its own scale
  (`mase_scale`), averaged over series. `y_true`, `y_pred`: ``(series, horizon)``."""
  y, f = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
  s = np.asarray(scales, np.float64)
  if y.shape != f.shape or y.ndim != 2 or s.shape != (len(y),):
    raise ValueError(f"shapes: y_true {y.shape}, y_pred {f.shape}, scales {s.shape}")
  return float(np.mean(np.mean(np.abs(y - f), axis=1) / s))


def msis(y_true: Any, lower: Any, upper: Any, scales: Any, alpha: float = 0.05) -> float:
  """M4's MSIS, the scaled interval score of `1 - alpha` intervals over a panel: per value
  the width `u - l`, plus `2 / alpha` times how far `y` falls outside; each series' mean
  over its own scale (`mase_scale`), averaged over series. Arrays ``(series, horizon)``."""
  y, lo, up = (np.asarray(a, np.float64) for a in (y_true, lower, upper))
  s = np.asarray(scales, np.float64)
  if not y.shape == lo.shape == up.shape or y.ndim != 2 or s.shape != (len(y),):
    raise ValueError(
      f"shapes: y_true {y.shape}, lower {lo.shape}, upper {up.shape}, scales {s.shape}"
    )
  score = (up - lo) + 2.0 / alpha * (np.maximum(lo - y, 0.0) + np.maximum(y - up, 0.0))
  return float(np.mean(score.mean(axis=1) / s))


def owa(smape_value: float, mase_value: float, naive2_smape: float, naive2_mase: float) -> float:
  """M4's overall weighted average: the mean of sMAPE and MASE, each relative to Naive2's."""
  return 0.5 * (smape_value / naive2_smape + mase_value / naive2_mase)
