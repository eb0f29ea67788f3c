"""Point-forecast metrics, on the scaled values and in the data's own units."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from flaxlstm.data import windows
from flaxlstm.data.series import SeriesData


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
  _, y = windows.gather_windows(data, starts)
  scaled = regression_metrics(y, pred)
  orig = regression_metrics(data.inverse_targets(y, starts), data.inverse_targets(pred, starts))
  return {**scaled, **{f"{k}_original": v for k, v in orig.items()}}


def per_target_metrics(data: SeriesData, starts: np.ndarray, pred: np.ndarray) -> dict:
  """`split_metrics` on the scaled values of each target column alone, by name."""
  _, y = windows.gather_windows(data, starts)
  return {
    name: regression_metrics(y[..., i], pred[..., i]) for i, name in enumerate(data.target_names)
  }
