"""Chronological train/val/test splits (`data.split`), each series split on its own.

A wide table's split is a row range per split (`split_bounds`); a long table's is each
series' local split ends (`panel_ends`), computed for every series at once. Both are
checked to leave at least one window in every split (`check_lengths`, `short_series`),
except a test split that the config leaves out (a production fit, `has_test`).
config/schema.py validates `data.split` and `data.split_dates` with `SPLITS` and
`increasing_dates`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from flaxlstm.config.specs import DataSpec
from flaxlstm.data.io import error

# data.split: how rows are split in time.
SPLITS = ("fractions", "rows", "dates", "ett", "holdout")
# Informer's ETT protocol: 12/4/4 months of 30 days of hourly rows.
ETT_BOUNDS = {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)}
SPLIT_NAMES = ("train", "val", "test")


def increasing_dates(values: Sequence[str]) -> bool:
  """Whether every value is a timestamp and each is later than the one before."""
  try:
    stamps = [pd.Timestamp(v) for v in values]
  except (ValueError, TypeError):
    return False
  return all(a < b for a, b in zip(stamps, stamps[1:]))


def holdout_sizes(spec: DataSpec) -> tuple[int, int]:
  """`data.val_size` and `data.test_size` in rows (-1: one horizon)."""
  val, test = (spec.horizon if n == -1 else n for n in (spec.val_size, spec.test_size))
  return val, test


def holdout_minimum(spec: DataSpec) -> int:
  """The fewest rows a series needs under `data.split='holdout'`: a train window, then the
  val and test rows."""
  return spec.lookback + spec.horizon + sum(holdout_sizes(spec))


def holdout_needs(spec: DataSpec) -> str:
  """What a series needs under `data.split='holdout'`, for messages."""
  val, test = holdout_sizes(spec)
  return (
    f"data.split='holdout' needs at least {holdout_minimum(spec)} (data.lookback="
    f"{spec.lookback} + data.horizon={spec.horizon} for a train window, data.val_size={val}, "
    f"data.test_size={test})"
  )


def has_test(spec: DataSpec) -> bool:
  """Whether the split holds test rows: a production fit (`data.test_size=0`, or a zero
  test share of `data.split_fractions`) trains on all but the val rows and has none."""
  if spec.split == "holdout":
    return holdout_sizes(spec)[1] > 0
  if spec.split == "fractions":
    return spec.split_fractions[2] > 0
  return True


def split_bounds(
  spec: DataSpec, n_rows: int, dates: np.ndarray | None = None
) -> dict[str, tuple[int, int]]:
  """The train/val/test row ranges of `spec.split` for a series of `n_rows` rows."""
  if spec.split == "ett":
    if n_rows < ETT_BOUNDS["test"][1]:
      raise error(
        f"data.split='ett' needs at least {ETT_BOUNDS['test'][1]} rows "
        f"(12/4/4 months of 30 days, hourly), the file has {n_rows}"
      )
    return dict(ETT_BOUNDS)
  if spec.split == "holdout":
    val, test = holdout_sizes(spec)
    ends = tuple(max(e, 0) for e in (n_rows - test - val, n_rows - test, n_rows))
  elif spec.split in ("rows", "dates"):
    if spec.split == "dates":
      assert dates is not None  # the schema requires a date column
      ends = _date_ends(spec, dates[None], np.array([0, n_rows]))[0]
    else:
      ends = tuple(spec.split_rows)
      if len(ends) == 2:
        ends += (n_rows,)  # Without test_end the test split runs to the end of the file.
    if not 0 < ends[0] < ends[1] < ends[2] <= n_rows:
      got = tuple(int(e) for e in ends)
      if spec.split == "dates":
        raise error(
          f"data.split_dates {tuple(spec.split_dates)} leave a split without rows: they end "
          f"the splits at rows {got} of {n_rows}"
        )
      raise error(
        f"data.split_rows must satisfy 0 < train_end < val_end < test_end <= "
        f"{n_rows} (the number of rows), got {got}"
      )
  else:
    train_end = int(n_rows * spec.split_fractions[0])
    val_end = train_end + int(n_rows * spec.split_fractions[1])
    ends = (train_end, val_end, val_end + int(n_rows * spec.split_fractions[2]))
  return {"train": (0, ends[0]), "val": (ends[0], ends[1]), "test": (ends[1], ends[2])}


def _date_ends(spec: DataSpec, dates: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """Per series, the local row where each split of `data.split_dates` ends: ``(S, 3)``.

  `dates` holds every row (all series, in row order); a row is in the first split whose
  end date is after it. Without a test end the test split runs to each series' end.
  """
  flat = np.asarray(dates).reshape(-1)
  ends_at = [np.datetime64(pd.Timestamp(d).tz_localize(None), "ns") for d in spec.split_dates]
  begin, stop = offsets[:-1], offsets[1:]
  # Dates increase within each series, so "rows before the end date" is a count per
  # series: the rows of that series whose date is before it.
  out = np.empty((len(begin), 3), np.int64)
  for k in range(3):
    if k < len(ends_at):
      before = np.concatenate([[0], np.cumsum(flat < ends_at[k])])
      out[:, k] = before[stop] - before[begin]
    else:
      out[:, k] = stop - begin
  return out


def check_lengths(
  bounds: dict[str, tuple[int, int]], spec: DataSpec, n_rows: int, source: object = "the file"
) -> None:
  """Requires at least one window per split (train: inputs inside train rows too) but a
  test split the config leaves out; `source` names the file in messages."""
  sizes = {name: stop - start for name, (start, stop) in bounds.items()}
  lookback, horizon = spec.lookback, spec.horizon
  test_ok = sizes["test"] >= horizon or not has_test(spec)
  if sizes["train"] >= lookback + horizon and sizes["val"] >= horizon and test_ok:
    return
  if spec.split == "holdout":
    raise error(f"{source} has {n_rows} rows; {holdout_needs(spec)}")
  raise error(
    f"series too short: data.lookback={lookback} + data.horizon={horizon} need "
    f"at least {lookback + horizon} train rows and {horizon} val and test rows, "
    f"but data.split={spec.split!r} gives train={sizes['train']}, "
    f"val={sizes['val']}, test={sizes['test']} (of {n_rows} rows)"
  )


def panel_ends(spec: DataSpec, lengths: np.ndarray, dates, offsets) -> np.ndarray:
  """Each series' local split ends ``(S, 3)`` (train_end, val_end, test_end)."""
  if spec.split == "dates":
    return _date_ends(spec, dates, offsets)
  if spec.split == "fractions":
    f = spec.split_fractions
    train = (lengths * f[0]).astype(np.int64)
    val = train + (lengths * f[1]).astype(np.int64)
    return np.stack([train, val, val + (lengths * f[2]).astype(np.int64)], axis=-1)
  if spec.split == "holdout":
    val_size, test_size = holdout_sizes(spec)
    lengths = np.asarray(lengths, np.int64)
    ends = np.stack([lengths - test_size - val_size, lengths - test_size, lengths], axis=-1)
    # A series shorter than its holdout is too short (found by `short_series`).
    return np.maximum(ends, 0)
  fixed = [ETT_BOUNDS[k][1] for k in SPLIT_NAMES] if spec.split == "ett" else list(spec.split_rows)
  ends = np.empty((len(lengths), 3), np.int64)
  ends[:, : len(fixed)] = fixed
  if len(fixed) == 2:
    ends[:, 2] = lengths
  # A series that ends before a fixed boundary is too short (found by `short_series`).
  return np.minimum(ends, lengths[:, None])


def short_series(spec: DataSpec, ends: np.ndarray) -> np.ndarray:
  """Which series lack a window in some split (train: inputs inside train rows too)."""
  train, val, test = ends[:, 0], ends[:, 1] - ends[:, 0], ends[:, 2] - ends[:, 1]
  short_test = (test < spec.horizon) if has_test(spec) else np.zeros(len(ends), bool)
  return (train < spec.lookback + spec.horizon) | (val < spec.horizon) | short_test
