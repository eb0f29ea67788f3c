"""Missing dates (`data.missing_dates`): a series' rows are its time steps only if none is
missing.

Windows count rows: a lookback of 48 rows is 48 hours of an hourly series only if no hour
is missing from the file. With one missing, a window reads 49 hours as 48, the
seasonal-naive baseline compares the wrong hours, and the forecast's dates are off, all
without a sign. So each series whose dates fit no frequency (pandas' `infer_freq`: hourly,
business days, month ends, ...) is handled by `data.missing_dates`:

- "error" (the default): refused, naming the series, its frequency and the first date it
  skips;
- "fill": the missing dates become rows of missing values, then filled by `data.fill` (or
  kept as gaps where the reader keeps them: TiRex's observed mask);
- "keep": rows are steps whatever their dates (trading days with holidays: every row is
  one session).

A series with missing dates has no frequency pandas can infer from all of it, so its own is
inferred from short runs of its dates (the one most runs show: `_frequency_with_gaps`), or
is `data.freq` where given. Fewer than three rows are too few to infer a frequency from and
pass as they are.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset

from flaxlstm.data.calendar import frequency, span
from flaxlstm.data.messages import error, short

log = logging.getLogger(__name__)

MISSING_DATES = ("error", "fill", "keep")
# Dates per run that `_frequency_with_gaps` infers a frequency from: a week of days, so
# that every run of business days spans a weekend (three would read as daily).
_RUN = 7
_PROBES = 64


def parse_freq(freq: str) -> BaseOffset | None:
  """`data.freq` as a pandas offset ("" = inferred: None); ValueError if pandas has none."""
  return to_offset(freq) if freq else None


def valid_freq(freq: str) -> bool:
  try:
    parse_freq(freq)
  except ValueError:
    return False
  return True


def _which(s: int, source: str, series_ids: Sequence[str]) -> str:
  return f"series {short(series_ids[s])} of {source}" if series_ids else source


def _grid(own: np.ndarray, offset: BaseOffset) -> np.ndarray:
  """The dates from `own`'s first to its last, by `offset`."""
  grid = pd.date_range(pd.Timestamp(own[0]), pd.Timestamp(own[-1]), freq=offset)
  return grid.to_numpy("datetime64[ns]")


def _frequency_with_gaps(own: np.ndarray) -> BaseOffset | None:
  """The frequency of dates that skip some: the one pandas infers from most runs of
  `_RUN` dates (a run across a gap infers none), if every date lies on it."""
  k = min(_RUN, len(own))
  probes = np.unique(np.linspace(0, len(own) - k, num=_PROBES).astype(np.int64))
  found = Counter(f.freqstr for i in probes if (f := frequency(own[i : i + k])) is not None)
  if not found:
    return None
  offset = to_offset(found.most_common(1)[0][0])
  return offset if np.isin(own, _grid(own, offset)).all() else None


def regular_rows(
  dates: np.ndarray,
  offsets: np.ndarray,
  *,
  mode: str,
  freq: str,
  source: str,
  series_ids: Sequence[str] = (),
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray] | None, dict[str, int]]:
  """Checks each series' dates (`dates` sorted within each series, series `s` the rows
  `offsets[s]:offsets[s + 1]`) under `mode` (the module docstring).

  Returns what a "fill" inserted, None when the rows stay as they are, else `(take,
  offsets, dates)`: for each new row the old row it is (-1: an inserted date), and the new
  offsets and dates; and the series' `frequencies`, found on the way.

  Raises:
    InputError: a series that skips dates ("error"), or whose dates fit no frequency.
  """
  if mode == "keep":
    return None, frequencies(dates, offsets)
  given = parse_freq(freq)
  even, step = _evenly_stepped(dates, offsets)
  found: Counter[str] = Counter()
  grids: list[np.ndarray | None] = []
  for s, (begin, end) in enumerate(zip(offsets[:-1], offsets[1:])):
    own = dates[begin:end]
    grids.append(None)
    if len(own) < 3:
      continue
    if given is None:
      inferred = None if even[s] else frequency(own)
      if even[s] or inferred is not None:
        found[span(step[s]) if even[s] else _label(inferred)] += 1
        continue
    elif _is_grid(own, given):
      found[_label(given)] += 1
      continue
    where = _which(s, source, series_ids)
    offset = given or _frequency_with_gaps(own)
    grid = None if offset is None else _grid(own, offset)
    if grid is None or not np.isin(own, grid).all():
      steps = np.diff(own)
      fits = "fit no frequency" if given is None else f"are not on data.freq={freq!r}"
      raise error(
        f"the dates of {where} {fits} (steps from {span(steps.min())} to "
        f"{span(steps.max())}): windows count rows, so uneven dates would be read as even "
        "steps; name the frequency with data.freq (a pandas offset: 'h', 'D', 'B', "
        "'W-SUN', 'MS', ...; predict and tirex forecast: --freq), or set "
        "data.missing_dates='keep' to read rows as steps"
      )
    assert offset is not None and grid is not None  # else refused just above
    if mode == "error":
      gap = np.flatnonzero(~np.isin(grid, own))[0]
      raise error(
        f"{where} skips {len(grid) - len(own)} of the dates of its frequency "
        f"({offset.freqstr}), first {pd.Timestamp(grid[gap])} (after "
        f"{pd.Timestamp(grid[gap - 1])}): windows count rows, so missing dates would be "
        "read as steps that are not there; set data.missing_dates='fill' (with data.fill="
        "'ffill' or 'interpolate') to insert them, or 'keep' to read rows as steps "
        "(trading days); flaxlstm predict: --missing-dates, --fill"
      )
    grids[s] = grid
    found[_label(offset)] += 1
  found_sorted = _ordered(found)
  if all(g is None for g in grids):
    return None, found_sorted
  takes, new_dates = [], []
  for s, (begin, end) in enumerate(zip(offsets[:-1], offsets[1:])):
    own, grid = dates[begin:end], grids[s]
    if grid is None:
      takes.append(np.arange(begin, end))
      new_dates.append(own)
      continue
    take = np.full(len(grid), -1, np.int64)
    take[np.searchsorted(grid, own)] = np.arange(begin, end)
    takes.append(take)
    new_dates.append(grid)
  new_offsets = np.concatenate([[0], np.cumsum([len(t) for t in takes])]).astype(np.int64)
  inserted = (
    np.concatenate(takes).astype(np.int64),
    new_offsets,
    np.concatenate(new_dates).astype("datetime64[ns]"),
  )
  return inserted, found_sorted


def frequencies(dates: np.ndarray, offsets: np.ndarray) -> dict[str, int]:
  """How many series step by each frequency: a fixed step by its length ("1h", "7D"),
  another by pandas' name ("MS", "B"); a series that fits none, or has fewer than 3 rows,
  is not counted."""
  even, step = _evenly_stepped(dates, offsets)
  lengths, counts = np.unique(step[even], return_counts=True)
  found = Counter({span(v): int(n) for v, n in zip(lengths, counts)})
  for s in np.flatnonzero(~even & (np.diff(offsets) >= 3)):
    inferred = frequency(dates[offsets[s] : offsets[s + 1]])
    if inferred is not None:
      found[_label(inferred)] += 1
  return _ordered(found)


def _ordered(found: Counter[str]) -> dict[str, int]:
  """Most series first, then by name: the same order however they were counted."""
  return dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))


def _label(offset: BaseOffset) -> str:
  """A frequency's name in `frequencies`: a fixed length as `span` names it ("1D", as an
  evenly stepped series' is), a calendar one by pandas' name ("MS")."""
  try:
    return span(pd.Timedelta(offset))
  except ValueError:
    return offset.freqstr


def describe(found: dict[str, int], limit: int = 4) -> str:
  """`frequencies` in words: "5 at 1D, 1 at 1h"."""
  shown = ", ".join(f"{n} at {f}" for f, n in list(found.items())[:limit])
  return shown + (f" and {len(found) - limit} more" if len(found) > limit else "")


def warn_mixed(found: dict[str, int], source: str) -> None:
  """Warns when the series of a panel step by different frequencies (`found`:
  `frequencies`)."""
  if len(found) > 1:
    log.warning(
      f"the series of {source} step by different frequencies ({describe(found)}): each row "
      "is one step of its own series, and one data.seasonal_period serves them all"
    )


def _evenly_stepped(dates: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per series of 3 rows or more, whether every step has the same length, and that length
  (ns): the common case (hours, days, weeks), for all series at once; the others ask
  pandas (months are uneven)."""
  lengths = np.diff(offsets)
  out = np.zeros(len(lengths), bool)
  step = np.zeros(len(lengths), "timedelta64[ns]")
  long = np.flatnonzero(lengths >= 3)
  if not long.size:
    return out, step
  steps = np.diff(dates.astype(np.int64))
  series = np.repeat(np.arange(len(lengths)), lengths)
  # A step between two series, or within a short one, must not count: neutral values.
  own = (series[1:] == series[:-1]) & (lengths[series[:-1]] >= 3)
  big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
  begin = offsets[:-1][long]
  low = np.minimum.reduceat(np.where(own, steps, big), begin)
  high = np.maximum.reduceat(np.where(own, steps, small), begin)
  out[long] = low == high
  step[long] = low.astype("timedelta64[ns]")
  return out, step


def _is_grid(own: np.ndarray, offset: BaseOffset) -> bool:
  """Whether `own` is every date of `offset` from its first to its last."""
  return np.array_equal(_grid(own, offset), own)


def apply_rows(values: np.ndarray, take: np.ndarray, inserted: Any = np.nan) -> np.ndarray:
  """`values` of the old rows at the new ones (`take`, from `regular_rows`), `inserted` at
  the inserted dates."""
  return np.where(take >= 0, values[np.maximum(take, 0)], inserted)
