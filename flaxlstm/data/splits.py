"""Chronological train/val/test splits (`data.split`), each series split on its own.

A wide table's split is a row range per split (`split_bounds`); a long table's is each
series' local split ends (`panel_ends`), computed for every series at once. Both are
checked to leave at least one window in every split (`check_lengths`, `short_series`),
except a test split that the config leaves out (a production fit, `has_test`).
config/schema.py validates `data.split` and `data.split_dates` with `SPLITS` and
`increasing_dates`. `data.split="auto"` is resolved once the table is read (`resolve_split`):
ETT's split on an ETT file (`ett_layout`), the Time-Series-Library's 70/10/20 otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from flaxlstm.config.specs import DataSpec
from flaxlstm.data.io import error
from flaxlstm.data.messages import short

log = logging.getLogger(__name__)

# data.split: how rows are split in time.
SPLITS = ("fractions", "rows", "dates", "ett", "ettm", "tsl", "holdout", "auto")
# Informer's ETT protocol: 12/4/4 months of 30 days of hourly rows (ETTh1/ETTh2)...
ETT_BOUNDS = {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)}
# ... and of 15-minute rows (ETTm1/ETTm2): 4 rows an hour.
ETTM_BOUNDS = {k: (4 * a, 4 * b) for k, (a, b) in ETT_BOUNDS.items()}
FIXED_BOUNDS = {"ett": ETT_BOUNDS, "ettm": ETTM_BOUNDS}
# The columns of every ETT file (ETTh1, ETTh2, ETTm1, ETTm2), besides its date column.
ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
# The row step of each ETT layout.
ETT_STEPS = {"ett": np.timedelta64(1, "h"), "ettm": np.timedelta64(15, "m")}
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


def context(spec: DataSpec) -> int:
  """The observed rows a window's inputs need: the lookback, or one with
  `data.start_padding` (the rest repeats the series' first row)."""
  return 1 if spec.start_padding else spec.lookback


def context_words(spec: DataSpec) -> str:
  """`context` as messages name it."""
  if spec.start_padding:
    return "1 input row (data.start_padding)"
  return f"data.lookback={spec.lookback}"


def holdout_minimum(spec: DataSpec) -> int:
  """The fewest rows a series needs under `data.split='holdout'`: a train window, then the
  val and test rows."""
  return context(spec) + spec.horizon + sum(holdout_sizes(spec))


def holdout_needs(spec: DataSpec) -> str:
  """What a series needs under `data.split='holdout'`, for messages."""
  val, test = holdout_sizes(spec)
  return (
    f"data.split='holdout' needs at least {holdout_minimum(spec)} ({context_words(spec)} + "
    f"data.horizon="
    f"{spec.horizon} for a train window, data.val_size={val}, data.test_size={test})"
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
  if spec.split in FIXED_BOUNDS:
    fixed = FIXED_BOUNDS[spec.split]
    if n_rows < fixed["test"][1]:
      step = "hourly" if spec.split == "ett" else "of 15 minutes"
      raise error(
        f"data.split={spec.split!r} needs at least {fixed['test'][1]} rows "
        f"(12/4/4 months of 30 days, rows {step}), the file has {n_rows}"
      )
    return dict(fixed)
  if spec.split == "tsl":
    ends = tsl_ends(n_rows)
  elif spec.split == "holdout":
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
  elif spec.split == "fractions":
    train_end = int(n_rows * spec.split_fractions[0])
    val_end = train_end + int(n_rows * spec.split_fractions[1])
    ends = (train_end, val_end, val_end + int(n_rows * spec.split_fractions[2]))
  else:  # "auto" is resolved before any split is made (`resolve_split`)
    raise ValueError(f"data.split={spec.split!r} is not resolved")
  return {"train": (0, ends[0]), "val": (ends[0], ends[1]), "test": (ends[1], ends[2])}


def tsl_ends(n_rows):
  """The Time-Series-Library's split ends of `n_rows` rows (an int or an int array), as its
  `Dataset_Custom` computes them: ``num_train = int(n * 0.7)``, ``num_test = int(n * 0.2)``,
  ``num_vali = n - num_train - num_test``; train = the first num_train rows, test = the
  last num_test, val the rows between (val/test windows read their inputs from the rows
  before them, as every split's do: `SeriesData.window_index`)."""
  if isinstance(n_rows, np.ndarray):
    train, test = (n_rows * 0.7).astype(np.int64), (n_rows * 0.2).astype(np.int64)
  else:
    train, test = int(n_rows * 0.7), int(n_rows * 0.2)
  return train, n_rows - test, n_rows


def ett_layout(
  columns: Sequence[str], date_column: str, dates: np.ndarray | None, n_rows: int
) -> str | None:
  """'ett' or 'ettm' if the table is an ETT file, else None.

  An ETT file: its columns are exactly the date column and ETT's seven (`ETT_COLUMNS`, in
  any order), its rows step by one hour ('ett', ETTh1/ETTh2) or 15 minutes ('ettm',
  ETTm1/ETTm2; the median step between consecutive dates), and it has at least the rows
  of that layout (14,400 or 57,600: 12/4/4 months of 30 days).
  """
  if not date_column or dates is None or len(dates) < 2:
    return None
  if len(columns) != len(ETT_COLUMNS) + 1 or set(columns) != {date_column, *ETT_COLUMNS}:
    return None
  step = np.median(np.diff(np.asarray(dates, "datetime64[ns]")).astype(np.int64))
  for name, expected in ETT_STEPS.items():
    if step == expected.astype("timedelta64[ns]").astype(np.int64):
      return name if n_rows >= FIXED_BOUNDS[name]["test"][1] else None
  return None


def resolve_split(
  spec: DataSpec, columns: Sequence[str], dates: np.ndarray | None, n_rows: int
) -> DataSpec:
  """`spec` with `data.split="auto"` made concrete for a table with `columns` (the file's,
  as read), `dates` (validated, or None) and `n_rows` rows: ETT's split on an ETT file
  (`ett_layout`), the Time-Series-Library's 70/10/20 ("tsl") on any other table, a long
  one's series each on its own. Any other split is returned as it is."""
  if spec.split != "auto":
    return spec
  layout = None if spec.id_column else ett_layout(columns, spec.date_column, dates, n_rows)
  return dataclasses.replace(spec, split=layout or "tsl")


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


def _fits(sizes: dict[str, int], spec: DataSpec) -> bool:
  test_ok = sizes["test"] >= spec.horizon or not has_test(spec)
  return sizes["train"] >= context(spec) + spec.horizon and sizes["val"] >= spec.horizon and test_ok


def check_lengths(
  bounds: dict[str, tuple[int, int]], spec: DataSpec, n_rows: int, source: object = "the file"
) -> bool:
  """Requires at least one window per split (train: inputs inside train rows too) but a
  test split the config leaves out; `source` names the file in messages. Returns whether
  the series has one only with its start padded (`data.pad_short`)."""
  sizes = {name: stop - start for name, (start, stop) in bounds.items()}
  if _fits(sizes, spec):
    return False
  if spec.pad_short and not spec.start_padding:
    spec = dataclasses.replace(spec, start_padding=True)
    if _fits(sizes, spec):
      log.warning(
        f"data.pad_short: {source} is too short for a window of data.lookback="
        f"{spec.lookback} in every split: its first windows repeat its first row"
      )
      return True
  lookback, horizon = context(spec), spec.horizon
  if spec.split == "holdout":
    raise error(f"{source} has {n_rows} rows; {holdout_needs(spec)}")
  raise error(
    f"series too short: {context_words(spec)} + data.horizon={horizon} need "
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
  if spec.split == "tsl":
    return np.stack(tsl_ends(np.asarray(lengths, np.int64)), axis=-1)
  if spec.split == "holdout":
    val_size, test_size = holdout_sizes(spec)
    lengths = np.asarray(lengths, np.int64)
    ends = np.stack([lengths - test_size - val_size, lengths - test_size, lengths], axis=-1)
    # A series shorter than its holdout is too short (found by `short_series`).
    return np.maximum(ends, 0)
  if spec.split in FIXED_BOUNDS:
    fixed = [FIXED_BOUNDS[spec.split][k][1] for k in SPLIT_NAMES]
  elif spec.split == "rows":
    fixed = list(spec.split_rows)
  else:  # "auto" is resolved before any split is made (`resolve_split`)
    raise ValueError(f"data.split={spec.split!r} is not resolved")
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
  return (train < context(spec) + spec.horizon) | (val < spec.horizon) | short_test


def screen_series(
  spec: DataSpec, ends: np.ndarray, lengths: np.ndarray, series_ids: Sequence[str], source: object
) -> tuple[np.ndarray, np.ndarray]:
  """The series of a long table that lack a window in some split (`short_series`), as
  `(drop, padded)` masks: with `data.pad_short`, those that a padded start gives one are
  `padded`; any others are refused on one line naming the first, or, with
  `data.drop_short`, left out (`drop`), with a warning."""
  short_ = short_series(spec, ends)
  padded = np.zeros(len(ends), bool)
  if spec.pad_short and not spec.start_padding and short_.any():
    spec = dataclasses.replace(spec, start_padding=True)  # what a padded series needs
    still = short_series(spec, ends)
    padded, short_ = short_ & ~still, still
  if padded.any():
    log.warning(
      f"data.pad_short: {int(padded.sum())} of {len(ends)} series of {source} are too short "
      f"for a window of data.lookback={spec.lookback} in every split: their first windows "
      "repeat their first row"
    )
  if not short_.any():
    return short_, padded
  first = int(np.argmax(short_))
  name = short(series_ids[first])
  if spec.split == "holdout":
    what = f"{source}: series {name} has {lengths[first]} rows; {holdout_needs(spec)}"
  else:
    what = (
      f"series too short: {context_words(spec)} + data.horizon={spec.horizon} "
      f"need at least {context(spec) + spec.horizon} train rows and {spec.horizon} val "
      f"and test rows in every series, but data.split={spec.split!r} leaves series "
      f"{name} ({lengths[first]} rows) with train={ends[first, 0]}, "
      f"val={ends[first, 1] - ends[first, 0]}, test={ends[first, 2] - ends[first, 1]}"
    )
  n_short = int(short_.sum())
  if not spec.drop_short or n_short == len(lengths):
    hint = ""
    if not spec.drop_short:
      hint = "; set data.drop_short=True to leave them out"
      if not spec.start_padding:
        hint += ", or data.pad_short=True to pad their first windows"
    raise error(f"{what} ({n_short} of {len(lengths)} series are too short{hint})")
  log.warning(f"data.drop_short: left out {n_short} of {len(lengths)} series too short to split")
  return short_, padded
