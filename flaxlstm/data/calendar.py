"""Calendar features (`data.calendar`): covariates known in advance, computed from the dates;
and the dates of a forecast's future rows (`future_dates`).

Each feature is its phase in [0, 1) within a cycle (the day, week, month, year), fed as a
sin/cos pair so that the end of a cycle meets its start (23h is next to 0h). Used for the
rows of a file (series.py) and for the future rows of a forecast (train/inference.py).

A series' future rows are dated by its frequency as pandas infers it (`pd.infer_freq`: month
end or start, business day, a week anchored to a weekday, quarter, hour, minutes, ...), one
offset per step from its last date, never a median gap added up (which drifts off month
ends). Each series of a panel steps by its own frequency.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset

from flaxlstm.data.messages import error, short

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


_DAY_NS, _HOUR_NS = 86_400 * 10**9, 3_600 * 10**9


def frequency(dates: np.ndarray) -> BaseOffset | None:
  """The frequency of one series' (increasing) dates as pandas infers it, or None when they
  fit none (a missing row, uneven steps) or are too few (pandas needs three).

  Also whole days that a daylight-saving change makes an hour shorter or longer: the local
  midnights of a timezone-aware file, read as UTC (`dates.py`), step by 23 or 25 hours
  there. They step by whole days in the file's own time, so their frequency is those days
  (and their forecasts are dated by them, in UTC, an hour off once a change falls inside)."""
  if len(dates) < 3:
    return None
  with warnings.catch_warnings():
    # pandas 3 warns that infer_freq will return an offset, not its name: to_offset takes both.
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    freq = pd.infer_freq(pd.DatetimeIndex(dates))
  if freq is not None:
    return to_offset(freq)
  steps = np.diff(np.asarray(dates, "datetime64[ns]")).astype(np.int64)
  days = np.rint(steps / _DAY_NS)
  if (
    days[0] >= 1 and (days == days[0]).all() and (np.abs(steps - days * _DAY_NS) <= _HOUR_NS).all()
  ):
    return to_offset(f"{int(days[0])}D")
  return None


# Per calendar cycle, the offsets that step through it and how many steps of theirs it has:
# a week of business days, a year of weeks, of half-months, months or quarters.
_CYCLES: tuple[tuple[tuple[type, ...], int], ...] = (
  ((pd.offsets.BusinessDay, pd.offsets.CustomBusinessDay), 5),
  ((pd.offsets.Week,), 52),
  ((pd.offsets.SemiMonthBegin, pd.offsets.SemiMonthEnd), 24),
  (
    (
      pd.offsets.MonthBegin,
      pd.offsets.MonthEnd,
      pd.offsets.BusinessMonthBegin,
      pd.offsets.BusinessMonthEnd,
    ),
    12,
  ),
  (
    (
      pd.offsets.QuarterBegin,
      pd.offsets.QuarterEnd,
      pd.offsets.BQuarterBegin,
      pd.offsets.BQuarterEnd,
    ),
    4,
  ),
)


def season(freq: str | BaseOffset) -> int:
  """The seasonal period of a frequency, in its steps: the cycle the field reads such data
  by (statsforecast's and GluonTS's season lengths). Below a day, a day ("1h": 24, "15min":
  96); days, a week ("D": 7; business days "B": 5); weeks, a year (52); half-months,
  months and quarters, a year (24, 12, 4). A multiple steps through the cycle that many
  times slower ("2MS": 6). 1, no season, where the cycle is not a whole number of steps and
  for years."""
  offset = to_offset(freq)
  n, steps = abs(offset.n) or 1, 1
  if isinstance(offset, pd.offsets.Tick) and pd.Timedelta(offset) < pd.Timedelta(days=1):
    day, step = pd.Timedelta(days=1), pd.Timedelta(offset)
    return day // step if day % step == pd.Timedelta(0) else 1
  if isinstance(offset, pd.offsets.Day):
    steps, n = (52, n // 7) if n % 7 == 0 else (7, n)  # "7D" and "14D" step by weeks
  for kinds, per_cycle in _CYCLES:
    if isinstance(offset, kinds):
      steps = per_cycle
  return steps // n if steps % n == 0 else 1


def span(step: Any) -> str:
  """A time step as pandas names it ("4h"), in days when whole ("7D", not "168h")."""
  step = pd.Timedelta(step)
  if step.value and step % pd.Timedelta(days=1) == pd.Timedelta(0):
    return f"{step.days}D"
  name = to_offset(step).freqstr
  return name if name[0].isdigit() else f"1{name}"  # "1h", not "h"


def step_dates(last: np.datetime64, offset: BaseOffset, periods: int) -> np.ndarray:
  """The `periods` dates after `last`, stepped by `offset` (``datetime64[ns]``)."""
  # `last` is on the offset (its frequency was inferred from dates ending there), so the
  # range starts at it; the dates after it are the future ones.
  stamps = pd.date_range(pd.Timestamp(last), periods=periods + 1, freq=offset)
  return stamps[stamps > pd.Timestamp(last)][:periods].to_numpy("datetime64[ns]")


def future_dates(
  dates: np.ndarray,
  offsets: np.ndarray,
  periods: int,
  *,
  source: str,
  series_ids=(),
  freq: str = "",
) -> np.ndarray:
  """``(n_series, periods)`` the dates after each series' last one, by its own frequency
  (or by `freq`, `data.freq`, when given).

  `dates` holds every series' rows one after another (series ``s`` is rows
  ``offsets[s]:offsets[s + 1]``, increasing).

  Raises:
    InputError: a series whose dates fit no frequency, naming the file and the series.
  """
  out = np.empty((len(offsets) - 1, periods), "datetime64[ns]")
  for s, (begin, end) in enumerate(zip(offsets[:-1], offsets[1:])):
    own = dates[begin:end]
    offset = to_offset(freq) if freq else frequency(own)
    if offset is None:
      which = f"series {short(series_ids[s])} of {source}" if series_ids else source
      if len(own) < 3:
        why = f"{len(own)} dates are too few to infer a frequency from (pandas needs 3)"
      else:
        gaps = np.diff(own)
        why = (
          f"its dates fit no frequency (steps from {span(gaps.min())} to "
          f"{span(gaps.max())}; pandas.infer_freq finds none)"
        )
      raise error(
        f"cannot date the forecast after the last row of {which}: {why}; predict steps "
        "future dates by the series' frequency, so give it evenly stepped rows (no missing "
        "dates) or name the frequency with data.freq (flaxlstm predict: --freq)"
      )
    out[s] = step_dates(own[-1], offset, periods)
  return out
