"""Reading tables: CSV or Parquet into a validated DataFrame, with one-line errors.

Every problem with user input raises :class:`flaxlstm.errors.InputError` with a one-line
message that names the file, column, row/value or config key; `tests/data/malformed/`
holds a corpus of them. Host-side only: numpy and pandas, never jax, so data problems
surface before any device is touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from flaxlstm.data.dates import check_file_order, check_increasing, parse_dates
from flaxlstm.data.messages import error, list_names, row_label, short
from flaxlstm.data.steps import apply_rows, regular_rows, warn_mixed

_DATASETS_DIR = Path(__file__).resolve().parents[1] / "datasets"
_CSV_SUFFIXES = (".csv",)
_PARQUET_SUFFIXES = (".parquet", ".pq")
# data.fill: what to do with missing values (see `load_frame`).
FILLS = ("none", "ffill", "interpolate")
# Not a data.fill choice: missing values (and infinities) kept as NaN, for models that read
# gaps as gaps (TiRex's observed mask; `flaxlstm tirex forecast`).
KEEP_MISSING = "keep"
# The largest magnitude the model's float32 arrays hold; a value beyond it becomes inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)


# ---- files --------------------------------------------------------------------------------------
def bundled_dataset_path(name: str = "ETTh1") -> str:
  """Returns the path of a dataset shipped inside the package.

  Args:
    name: dataset name without extension; ``"ETTh1"`` is the one bundled today.

  Returns:
    Absolute path of ``flaxlstm/datasets/<name>.csv``.

  Raises:
    InputError: if no dataset of that name is bundled.
  """
  path = _DATASETS_DIR / f"{name}.csv"
  if not path.is_file():
    available = sorted(p.stem for p in _DATASETS_DIR.glob("*.csv"))
    raise error(f"no bundled dataset named {name!r} (bundled: {list_names(available)})")
  return str(path)


def data_file(path: str | os.PathLike | None) -> Path:
  """The absolute path of the file a ``data.path`` value names ("" = the bundled ETTh1)."""
  return Path(os.path.abspath(_resolve_path(path)))


def _resolve_path(path: str | os.PathLike | None) -> Path:
  if path is None or str(path) == "":
    return Path(bundled_dataset_path())
  try:
    return Path(path).expanduser()
  except RuntimeError as e:  # "~user" with no such user
    raise error(f"data path {path}: {e}") from None


def _file_kind(path: Path) -> str:
  suffix = path.suffix.lower()
  if suffix in _CSV_SUFFIXES:
    return "csv"
  if suffix in _PARQUET_SUFFIXES:
    return "parquet"
  raise error(
    f"unsupported data file extension {path.suffix or '(none)'!r} for {path}: "
    "use .csv, .parquet or .pq"
  )


def read_table(path: Path, *, text_columns: Sequence[str] = ()) -> tuple[pd.DataFrame, str]:
  """Reads a CSV or Parquet file into a DataFrame with a fresh RangeIndex.

  Args:
    path: the file.
    text_columns: columns a CSV's values are kept in as written (a series id: '007' and
      '7' are two series, not the number 7); a Parquet file's columns keep their types.

  Returns:
    The frame and the file kind ("csv" or "parquet"), which decides how rows are named
    in messages.
  """
  if not path.exists():
    raise error(f"data file not found: {path}")
  if not path.is_file():
    raise error(f"data path is not a file: {path}")
  kind = _file_kind(path)
  try:
    if kind == "csv":
      # low_memory=False: type inference over the whole column, so a stray string late
      # in the file makes the column object-typed instead of a chunk-wise mixed warning.
      frame = pd.read_csv(path, low_memory=False, dtype=_text_dtypes(path, text_columns))
    else:
      frame = pd.read_parquet(path)
  except ImportError as e:
    raise error(
      f"reading Parquet file {path} needs pyarrow: pip install 'flaxlstm[parquet]' ({e})"
    ) from None
  except pd.errors.EmptyDataError:
    raise error(f"data file is empty: {path}") from None
  except Exception as e:  # parser, decoding and Arrow errors: all mean unreadable
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise error(f"cannot read data file {path}: {first_line}") from None
  if kind == "parquet" and any(name is not None for name in frame.index.names):
    # A frame saved with df.set_index("date").to_parquet() keeps its dates in a named
    # index; make them an ordinary column again so date_column finds them. Unnamed
    # indexes (e.g. left over from slicing before saving) are dropped: they are row
    # labels, not data.
    clash = [n for n in frame.index.names if n in frame.columns]
    if clash:
      raise error(f"{path} has both an index and a column named {clash[0]!r}")
    frame = frame.reset_index()
  frame = frame.reset_index(drop=True)
  frame.columns = [str(c).strip() for c in frame.columns]
  seen = set()
  for c in frame.columns:
    if c in seen:
      raise error(f"{path} has two columns named {c!r}")
    seen.add(c)
  if len(frame) == 0:
    raise error(f"data file has no data rows: {path}")
  return frame, kind


def _text_dtypes(path: Path, names: Sequence[str]) -> dict[str, type] | None:
  """`dtype=` for `read_csv` keeping `names` as text, keyed by the header as written (names
  are matched once stripped of spaces, as `read_table` strips them)."""
  if not names:
    return None
  header = pd.read_csv(path, nrows=0).columns
  return {c: str for c in header if str(c).strip() in names}


# ---- validation ---------------------------------------------------------------------------------
def _check_columns(
  frame: pd.DataFrame, wanted: Sequence[str], path: Path, date_column: str | None
) -> None:
  existing = list(frame.columns)
  if date_column and date_column not in existing:
    raise error(
      f"date column {date_column!r} not found in {path} "
      f"(columns: {list_names(existing)}); set data.date_column='' for a file "
      "without dates"
    )
  for name in wanted:
    if name not in existing:
      raise error(f"column {name!r} not found in {path} (columns: {list_names(existing)})")


def _numeric_column(raw: pd.Series, path: Path, column: str, kind: str) -> np.ndarray:
  """Converts one column to float64, naming the first cell that is not a number."""
  if pd.api.types.is_bool_dtype(raw):
    return raw.to_numpy(dtype=np.float64)
  if pd.api.types.is_numeric_dtype(raw):
    return raw.to_numpy(dtype=np.float64)
  coerced = pd.to_numeric(raw, errors="coerce")
  bad = np.flatnonzero((coerced.isna() & raw.notna()).to_numpy())
  if bad.size:
    row = int(bad[0])
    raise error(
      f"non-numeric value {short(raw.iloc[row])} in column {column!r} of {path} "
      f"at {row_label(row, kind)}"
    )
  return coerced.to_numpy(dtype=np.float64)


def _fill_column(values: np.ndarray, fill: str) -> np.ndarray:
  """Fills missing values; infinities count as missing because they are sensor faults."""
  if fill == "none":
    return values
  if fill == KEEP_MISSING:
    return np.where(np.isinf(values), np.nan, values)
  series = pd.Series(np.where(np.isinf(values), np.nan, values))
  if fill == "ffill":
    series = series.ffill()
  else:
    # Linear in row position (not in time): rows are assumed evenly spaced, and the
    # edges, which have no neighbour on one side, take the nearest observed value.
    series = series.interpolate(method="linear").ffill().bfill()
  return series.to_numpy(dtype=np.float64)


def _check_finite(values: np.ndarray, path: Path, column: str, kind: str, fill: str) -> None:
  bad = np.flatnonzero(~np.isfinite(values))
  if not bad.size or fill == KEEP_MISSING:
    return
  row = int(bad[0])
  where = f"in column {column!r} of {path} at {row_label(row, kind)}"
  if fill == "none":
    what = "missing value (NaN)" if np.isnan(values[row]) else f"infinite value ({values[row]})"
    raise error(
      f"{what} {where}; set data.fill='ffill' or 'interpolate' to fill gaps "
      "(flaxlstm predict: --fill)"
    )
  hint = (
    "nothing before it to carry forward; use data.fill='interpolate'"
    if fill == "ffill"
    else "the column has no observed value at all"
  )
  raise error(f"missing value {where} remains after data.fill={fill!r} ({hint})")


def check_float32(values: np.ndarray, path: Path, column: str, kind: str) -> None:
  """Refuses a finite value too large for float32: the model, its scalers' outputs and
  `y_raw` are float32, where it would become inf and turn every metric into NaN."""
  big = np.flatnonzero(np.isfinite(values) & (np.abs(values) > FLOAT32_MAX))
  if big.size:
    row = int(big[0])
    raise error(
      f"value {values[row]:g} in column {column!r} of {path} at {row_label(row, kind)} is "
      f"outside the float32 range (|x| <= {FLOAT32_MAX:.4g}); rescale the column"
    )


def file_row_label(row: int, path: Path) -> str:
  """`row_label` for a file named by its path (a wide table's rows are the file's)."""
  return row_label(row, "csv" if Path(path).suffix.lower() in _CSV_SUFFIXES else "parquet")


def validate_frame(
  frame: pd.DataFrame,
  path: Path,
  kind: str,
  *,
  date_column: str | None,
  columns: Sequence[str],
  fill: str,
  check_constant: bool,
  date_format: str = "",
  missing_dates: str = "error",
  freq: str = "",
) -> tuple[pd.DataFrame, np.ndarray | None]:
  """Validates and cleans the selected columns of a freshly read frame; also returns the
  file row of each row when `missing_dates="fill"` inserted dates (-1 for those), else
  None (flaxlstm/data/steps.py)."""
  if fill not in FILLS + (KEEP_MISSING,):
    raise error(f"data.fill must be one of {', '.join(FILLS)}, got {short(fill)}")
  _check_columns(frame, columns, path, date_column)
  out = {}
  take = None
  if date_column:
    dates = parse_dates(frame[date_column], path, date_column, kind, date_format=date_format)
    check_increasing(dates, path, date_column, kind)
    regular, _ = regular_rows(
      dates, np.array([0, len(dates)]), mode=missing_dates, freq=freq, source=str(path)
    )
    if regular is not None:
      take, _, dates = regular
      _check_fill_for_dates(fill)
    out[date_column] = dates
  for name in columns:
    values = _numeric_column(frame[name], path, name, kind)
    check_float32(values, path, name, kind)  # before the fill: names the file's own value
    if take is not None:
      values = apply_rows(values, take)
    values = _fill_column(values, fill)
    _check_finite(values, path, name, kind, fill)
    if check_constant and values.size and np.all(values == values[0]):
      # A constant column carries no signal and breaks scaling (zero variance), and is
      # almost always a wrong column choice, so stop early.
      raise error(
        f"column {name!r} of {path} is constant (every value is {values[0]:g}); "
        "drop it from data.features / data.target"
      )
    out[name] = values
  return pd.DataFrame(out), take


def _check_fill_for_dates(fill: str) -> None:
  if fill == "none":
    raise error(
      "data.missing_dates='fill' inserted dates, which have no values: set data.fill to "
      "'ffill' or 'interpolate'"
    )


def load_frame(
  path: str | os.PathLike | None,
  *,
  date_column: str | None,
  columns: Sequence[str] | None = None,
  fill: str = "none",
  check_constant: bool = True,
  date_format: str = "",
) -> pd.DataFrame:
  """Reads and validates a CSV or Parquet table.

  Args:
    path: a ``.csv``, ``.parquet`` or ``.pq`` file; empty or None means the bundled ETTh1.
    date_column: name of the timestamp column, or ""/None for a file without dates.
      Timestamps must parse, be present on every row, strictly increase and be unique.
      Timezone-aware stamps are converted to UTC; the result is naive ``datetime64[ns]``.
      The column is read one way throughout (flaxlstm/data/dates.py).
    columns: numeric columns to load, in this order; None or empty means every column
      except the date column.
    fill: ``"none"`` (any NaN/inf is an error), ``"ffill"`` (carry the last value
      forward) or ``"interpolate"`` (linear in row position, edges take the nearest
      value). With a fill, infinities are treated as missing too. Missing values left
      after the fill (e.g. leading NaNs with ffill) are still an error.
    check_constant: reject columns whose values are all equal. Turn off for short
      inference files, where a constant stretch is legitimate.
    date_format: the strptime format of the date column (``data.date_format``); ""
      infers one from the whole column.

  Returns:
    A DataFrame with a RangeIndex in file order: the date column (if any) as
    ``datetime64[ns]``, then ``columns`` as float64 with no NaN or inf.

  Raises:
    InputError: for a missing/unreadable/empty file, an unsupported extension, a missing
      column, a non-numeric cell, NaN/inf, a bad timestamp, unsorted or duplicated
      timestamps, or a constant column. The message is one line and names the file,
      column and row (for CSV also the 1-based file line).
  """
  resolved = _resolve_path(path)
  frame, kind = read_table(resolved)
  wanted = _default_columns(frame, date_column) if not columns else list(columns)
  out, _ = validate_frame(
    frame,
    resolved,
    kind,
    date_column=date_column or None,
    columns=wanted,
    fill=fill,
    check_constant=check_constant,
    date_format=date_format,
  )
  return out


def _default_columns(frame: pd.DataFrame, date_column: str | None) -> list[str]:
  return [c for c in frame.columns if c != date_column]


# ---- long tables --------------------------------------------------------------------------------
def validate_long(
  frame: pd.DataFrame,
  path: Path,
  kind: str,
  *,
  id_column: str,
  date_column: str | None,
  columns: Sequence[str],
  fill: str,
  check_constant: bool,
  date_format: str = "",
  missing_dates: str = "error",
  freq: str = "",
) -> tuple[pd.DataFrame, np.ndarray, list[str], np.ndarray]:
  """Validates a long table (one row per (series, date)) and sorts it by series, then date.

  Cells are checked in file order, so a message names the file's row; then the rows are
  sorted (stable) by series id and date, and gaps are filled within each series only (a
  fill never carries one series' value into another). Ids are text as the file writes them
  (read them with `read_table`'s `text_columns`, so that CSV's '007' stays '007').

  Each series' dates are checked for missing ones by `missing_dates` (and `freq`:
  flaxlstm/data/steps.py); with "fill", the inserted dates are rows of missing values.

  Returns:
    The sorted frame (the date column, if any, then `columns` as float64), the row
    offsets of each series ``(S + 1,)``, the series ids (as strings, sorted) and the file
    row of each sorted row (-1: a date inserted by `missing_dates="fill"`).
  """
  if fill not in FILLS + (KEEP_MISSING,):
    raise error(f"data.fill must be one of {', '.join(FILLS)}, got {short(fill)}")
  if id_column not in frame.columns:
    raise error(
      f"id column {id_column!r} (data.id_column) not found in {path} "
      f"(columns: {list_names(list(frame.columns))})"
    )
  _check_columns(frame, columns, path, date_column)
  # Factorized, so that 10^7 rows of a few thousand ids cost one int per row, not a string.
  codes, uniques = pd.factorize(frame[id_column], use_na_sentinel=True)
  missing = np.flatnonzero(codes < 0)
  if missing.size:
    raise error(
      f"missing series id in column {id_column!r} of {path} at {row_label(int(missing[0]), kind)}"
    )
  names = np.array([str(u).strip() for u in uniques], dtype=object)
  empty = np.flatnonzero(names == "")
  if empty.size:
    row = int(np.argmax(codes == empty[0]))
    raise error(f"empty series id in column {id_column!r} of {path} at {row_label(row, kind)}")
  # Ids that differ only by surrounding spaces are one series; series are sorted by name.
  merged, ids_sorted_names = pd.factorize(names, sort=True)
  series_of_row = merged[codes]
  values = {name: _numeric_column(frame[name], path, name, kind) for name in columns}
  if date_column:
    dates = parse_dates(frame[date_column], path, date_column, kind, date_format=date_format)
    order = np.lexsort((dates, series_of_row))
  else:
    # Without dates, rows are in time order within each series, as they appear in the file.
    order = np.argsort(series_of_row, kind="stable")
  groups = series_of_row[order]
  starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
  offsets = np.r_[starts, len(groups)].astype(np.int64)
  series_names = [str(n) for n in ids_sorted_names]
  if date_column:
    d = dates[order]
    same = np.flatnonzero((groups[1:] == groups[:-1]) & (d[1:] == d[:-1]))
    if same.size:
      a, b = sorted((int(order[same[0]]), int(order[same[0] + 1])))
      raise error(
        f"duplicate (id, date) ({short(series_names[groups[same[0]]])}, "
        f"{pd.Timestamp(d[same[0]])}) in {path} at {row_label(a, kind)} and "
        f"{row_label(b, kind)}"
      )
    check_file_order(
      dates, series_of_row, series_names, frame[date_column], path, date_column, kind
    )
  out = {}
  file_rows, take = order.astype(np.int64), None
  if date_column:
    sorted_dates = dates[order]
    regular, found = regular_rows(
      sorted_dates,
      offsets,
      mode=missing_dates,
      freq=freq,
      source=str(path),
      series_ids=series_names,
    )
    if regular is not None:
      take, offsets, sorted_dates = regular
      _check_fill_for_dates(fill)
      file_rows = apply_rows(file_rows, take, -1)
      groups = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    warn_mixed(found, str(path))
    out[date_column] = sorted_dates
  for name in columns:
    check_float32(values[name], path, name, kind)  # in file order: names the file's row
    column = values[name][order]
    if take is not None:
      column = apply_rows(column, take)
    if fill == KEEP_MISSING:
      column = np.where(np.isinf(column), np.nan, column)
    elif fill != "none":
      column = _fill_grouped(column, groups, fill)
    bad = np.flatnonzero(~np.isfinite(column))
    if bad.size and fill != KEEP_MISSING:
      if fill == "none":
        _check_finite(values[name], path, name, kind, fill)  # raises, naming the file's row
      row, series_id = int(file_rows[bad[0]]), series_names[groups[bad[0]]]
      raise error(
        f"missing value in column {name!r} of {path} at {row_label(row, kind)} (series "
        f"{short(series_id)}) remains after data.fill={fill!r} (no observed value before it "
        "in its series)"
      )
    if check_constant and column.size and np.all(column == column[0]):
      raise error(
        f"column {name!r} of {path} is constant (every value is {column[0]:g}); "
        "drop it from data.features / data.target"
      )
    out[name] = column
  return pd.DataFrame(out), offsets, series_names, file_rows


def _fill_grouped(values: np.ndarray, groups: np.ndarray, fill: str) -> np.ndarray:
  """`_fill_column` within each group (series) of a sorted long table."""
  frame = pd.DataFrame({"g": groups, "v": np.where(np.isinf(values), np.nan, values)})
  grouped = frame.groupby("g", sort=False)["v"]
  if fill == "ffill":
    return grouped.ffill().to_numpy(np.float64)
  filled = grouped.transform(lambda v: v.interpolate(method="linear").ffill().bfill())
  return filled.to_numpy(np.float64)
