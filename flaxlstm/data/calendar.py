"""Calendar features (`data.calendar`): covariates known in advance, computed from the dates.

Each feature is its phase in [0, 1) within a cycle (the day, week, month, year), fed as a
sin/cos pair so that the end of a cycle meets its start (23h is next to 0h). Used for the
rows of a file (series.py) and for the future rows of a forecast (train/inference.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

# data.calendar: the features there are.
CALENDAR = ("hour", "dayofweek", "dayofmonth", "dayofyear", "month")


def _phase(name: str, idx: pd.DatetimeIndex) -> np.ndarray:
  if name == "hour":
    return (idx.hour + idx.minute / 60.0) / 24.0
  if name == "dayofweek":
    return idx.day_of_week / 7.0
  if name == "dayofmonth":
    return (idx.day - 1) / idx.days_in_month
  if name == "dayofyear":
    return (idx.day_of_year - 1) / (365.0 + idx.is_leap_year)
  return (idx.month - 1) / 12.0


def calendar_features(dates: np.ndarray, names: Sequence[str]) -> np.ndarray:
  """``(n, 2 * len(names))`` float32: sin and cos of each calendar phase of `dates`."""
  idx = pd.DatetimeIndex(dates)
  out = []
  for name in names:
    angle = 2 * math.pi * np.asarray(_phase(name, idx), np.float64)
    out += [np.sin(angle), np.cos(angle)]
  return np.stack(out, axis=-1).astype(np.float32) if out else np.zeros((len(idx), 0), np.float32)


def calendar_names(names: Sequence[str]) -> tuple[str, ...]:
  return tuple(f"{name}_{f}" for name in names for f in ("sin", "cos"))
