"""Time-series data pipeline: load, validate, split, scale, window and batch.

The flow is::

  CSV/Parquet -> validated DataFrame (``load_frame``)
    -> row splits train/val/test -> scalers fit on train rows only (``prepare``)
    -> one float32 array of inputs and one of targets for all rows (``SeriesData``)
    -> window *start indices* per split (``SeriesData.window_starts``)
    -> batches of positions into those indices (``epoch_batches``, ``batch_for_step``,
       ``eval_batches``)
    -> gathered windows ``(batch, lookback, features)`` (``gather_windows``).

Windows are never materialised for a whole split: a window is just the index ``i`` of its
first forecast row, with inputs ``[i - lookback, i)`` and targets ``[i, i + horizon)``, and
batches are gathered by fancy indexing when needed. Every batch is a pure function of
``(seed, epoch, step)`` so a resumed or multi-host run re-derives it without iterator state.

This module is host-side only: it uses numpy, pandas and scikit-learn and must never import
jax, so that data problems surface before any device is touched and so that the module can
be used (and tested) without an accelerator.

Every problem with user input raises :class:`flaxlstm.errors.InputError` with a one-line
message that names the file, column, row/value or config key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flaxlstm import workdir as workdir_lib
from flaxlstm.errors import InputError

_DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
_CSV_SUFFIXES = (".csv",)
_PARQUET_SUFFIXES = (".parquet", ".pq")
_FILLS = ("none", "ffill", "interpolate")
_SCALERS = ("standard", "robust", "minmax", "none")
_SPLITS = ("fractions", "rows", "ett")
# Informer's ETT protocol: 12/4/4 months of 30 days of hourly rows.
ETT_BOUNDS = {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)}
_SCALERS_FORMAT = "flaxlstm.scalers/2"  # /1 was a pickle
# Stream tags keep the permutation and augmentation random streams independent even
# when (seed, epoch) and (seed, step) happen to hold equal numbers.
_PERMUTATION_STREAM = 0
_AUGMENT_STREAM = 1


# ----------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------


def _error(message: str) -> InputError:
  """Builds an InputError whose message is guaranteed to be one line."""
  return InputError(re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip())


def _short(value: Any, limit: int = 40) -> str:
  """repr() of a value, cut short so a bad cell cannot flood the message."""
  if isinstance(value, np.generic):
    value = value.item()  # 5, not np.int64(5).
  text = repr(value)
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _list_names(names: Sequence[Any], limit: int = 12) -> str:
  """Comma-separated names, truncated: files can have thousands of columns."""
  shown = ", ".join(str(n) for n in list(names)[:limit])
  if len(names) > limit:
    shown += f", ... ({len(names) - limit} more)"
  return shown


def _cfg_get(cfg: Any, name: str, default: Any) -> Any:
  """Reads a config field by attribute or key, so ConfigDicts, dicts and objects work."""
  if cfg is None:
    return default
  if isinstance(cfg, Mapping):
    return cfg.get(name, default)
  return getattr(cfg, name, default)


def _as_names(value: Any, key: str) -> tuple[str, ...]:
  """Normalises a column-name field: a plain string means one column."""
  if value is None:
    return ()
  if isinstance(value, str):
    return (value,) if value else ()
  try:
    names = tuple(value)
  except TypeError:
    raise _error(f"{key} must be a column name or a list of column names, "
                 f"got {_short(value)}") from None
  for name in names:
    if not isinstance(name, str) or not name:
      raise _error(f"{key} must hold non-empty column names, got {_short(name)}")
  duplicated = [n for i, n in enumerate(names) if n in names[:i]]
  if duplicated:
    raise _error(f"{key} lists column {duplicated[0]!r} more than once")
  return names


def _positive_int(cfg: Any, name: str, default: int) -> int:
  value = _cfg_get(cfg, name, default)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise _error(f"data.{name} must be a positive integer, got {_short(value)}")
  return int(value)


# ----------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------


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
    raise _error(f"no bundled dataset named {name!r} (bundled: {_list_names(available)})")
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
    raise _error(f"data path {path}: {e}") from None


def _file_kind(path: Path) -> str:
  suffix = path.suffix.lower()
  if suffix in _CSV_SUFFIXES:
    return "csv"
  if suffix in _PARQUET_SUFFIXES:
    return "parquet"
  raise _error(f"unsupported data file extension {path.suffix or '(none)'!r} for {path}: "
               "use .csv, .parquet or .pq")


def _read_table(path: Path) -> tuple[pd.DataFrame, str]:
  """Reads a CSV or Parquet file into a DataFrame with a fresh RangeIndex.

  Returns:
    The frame and the file kind ("csv" or "parquet"), which decides how rows are named
    in messages.
  """
  if not path.exists():
    raise _error(f"data file not found: {path}")
  if not path.is_file():
    raise _error(f"data path is not a file: {path}")
  kind = _file_kind(path)
  try:
    if kind == "csv":
      # low_memory=False: type inference over the whole column, so a stray string late
      # in the file makes the column object-typed instead of a chunk-wise mixed warning.
      frame = pd.read_csv(path, low_memory=False)
    else:
      frame = pd.read_parquet(path)
  except ImportError as e:
    raise _error(f"reading Parquet file {path} needs pyarrow: "
                 f"pip install 'flaxlstm[parquet]' ({e})") from None
  except pd.errors.EmptyDataError:
    raise _error(f"data file is empty: {path}") from None
  except Exception as e:  # pylint: disable=broad-except
    # Parser, decoding and Arrow errors have many types; all mean "cannot read it".
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise _error(f"cannot read data file {path}: {first_line}") from None
  if kind == "parquet" and any(name is not None for name in frame.index.names):
    # A frame saved with df.set_index("date").to_parquet() keeps its dates in a named
    # index; make them an ordinary column again so date_column finds them. Unnamed
    # indexes (e.g. left over from slicing before saving) are dropped: they are row
    # labels, not data.
    clash = [n for n in frame.index.names if n in frame.columns]
    if clash:
      raise _error(f"{path} has both an index and a column named {clash[0]!r}")
    frame = frame.reset_index()
  frame = frame.reset_index(drop=True)
  frame.columns = [str(c).strip() for c in frame.columns]
  seen = set()
  for c in frame.columns:
    if c in seen:
      raise _error(f"{path} has two columns named {c!r}")
    seen.add(c)
  if len(frame) == 0:
    raise _error(f"data file has no data rows: {path}")
  return frame, kind


def _row_label(row: int, kind: str) -> str:
  """Names a row both as a 0-based data row and, for CSV, as the file line to open."""
  if kind == "csv":
    return f"row {row} (line {row + 2})"
  return f"row {row}"


def _check_columns(frame: pd.DataFrame, wanted: Sequence[str], path: Path,
                   date_column: str | None) -> None:
  existing = list(frame.columns)
  if date_column and date_column not in existing:
    raise _error(f"date column {date_column!r} not found in {path} "
                 f"(columns: {_list_names(existing)}); set data.date_column='' for a file "
                 "without dates")
  for name in wanted:
    if name not in existing:
      raise _error(f"column {name!r} not found in {path} (columns: {_list_names(existing)})")


def _parse_dates(raw: pd.Series, path: Path, column: str, kind: str) -> np.ndarray:
  """Parses, then checks a timestamp column is complete, strictly increasing and unique."""
  missing = np.flatnonzero(raw.isna().to_numpy())
  if missing.size:
    raise _error(f"missing timestamp in date column {column!r} of {path} at "
                 f"{_row_label(int(missing[0]), kind)}")
  if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
    # pandas would read integers as nanoseconds since 1970 and silently produce 1970
    # dates; refuse rather than guess the unit.
    raise _error(f"date column {column!r} of {path} holds numbers, not timestamps "
                 f"({_row_label(0, kind)}: {_short(raw.iloc[0])}); write ISO timestamps "
                 "or set data.date_column=''")
  with warnings.catch_warnings():
    # "Could not infer format" warnings are noise: failures are reported below.
    warnings.simplefilter("ignore")
    try:
      # utc=True: naive stamps stay as they are and aware ones (even with mixed offsets)
      # become comparable UTC instants.
      parsed = pd.to_datetime(raw, utc=True)
    except (ValueError, TypeError, OverflowError):
      # The fast path infers one format from the first value; retry value by value so
      # that we can name the first stamp that really does not parse.
      parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
  bad = np.flatnonzero(parsed.isna().to_numpy())
  if bad.size:
    row = int(bad[0])
    raise _error(f"unparseable timestamp {_short(raw.iloc[row])} in date column {column!r} "
                 f"of {path} at {_row_label(row, kind)}")
  dates = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
  steps = np.diff(dates.astype(np.int64))
  bad = np.flatnonzero(steps <= 0)
  if bad.size:
    row = int(bad[0]) + 1
    this, before = pd.Timestamp(dates[row]), pd.Timestamp(dates[row - 1])
    if steps[row - 1] == 0:
      raise _error(f"duplicated timestamp {this} in date column {column!r} of {path} at "
                   f"{_row_label(row, kind)} (same as the row before)")
    raise _error(f"timestamps not sorted in date column {column!r} of {path}: "
                 f"{this} at {_row_label(row, kind)} comes after {before} in the row "
                 "before; sort the file by time")
  return dates


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
    raise _error(f"non-numeric value {_short(raw.iloc[row])} in column {column!r} of {path} "
                 f"at {_row_label(row, kind)}")
  return coerced.to_numpy(dtype=np.float64)


def _fill_column(values: np.ndarray, fill: str) -> np.ndarray:
  """Fills missing values; infinities count as missing because they are sensor faults."""
  if fill == "none":
    return values
  series = pd.Series(np.where(np.isinf(values), np.nan, values))
  if fill == "ffill":
    series = series.ffill()
  else:
    # Linear in row position (not in time): rows are assumed evenly spaced, and the
    # edges, which have no neighbour on one side, take the nearest observed value.
    series = series.interpolate(method="linear").ffill().bfill()
  return series.to_numpy(dtype=np.float64)


def _check_finite(values: np.ndarray, path: Path, column: str, kind: str,
                  fill: str) -> None:
  bad = np.flatnonzero(~np.isfinite(values))
  if not bad.size:
    return
  row = int(bad[0])
  where = f"in column {column!r} of {path} at {_row_label(row, kind)}"
  if fill == "none":
    what = "missing value (NaN)" if np.isnan(values[row]) else f"infinite value ({values[row]})"
    raise _error(f"{what} {where}; set data.fill='ffill' or 'interpolate' to fill gaps")
  hint = ("nothing before it to carry forward; use data.fill='interpolate'"
          if fill == "ffill" else "the column has no observed value at all")
  raise _error(f"missing value {where} remains after data.fill={fill!r} ({hint})")


def _validate_frame(frame: pd.DataFrame, path: Path, kind: str, *,
                    date_column: str | None, columns: Sequence[str], fill: str,
                    check_constant: bool) -> pd.DataFrame:
  """Validates and cleans the selected columns of a freshly read frame."""
  if fill not in _FILLS:
    raise _error(f"data.fill must be one of {', '.join(_FILLS)}, got {_short(fill)}")
  _check_columns(frame, columns, path, date_column)
  out = {}
  if date_column:
    out[date_column] = _parse_dates(frame[date_column], path, date_column, kind)
  for name in columns:
    values = _fill_column(_numeric_column(frame[name], path, name, kind), fill)
    _check_finite(values, path, name, kind, fill)
    if check_constant and values.size and np.all(values == values[0]):
      # A constant column carries no signal and breaks scaling (zero variance), and is
      # almost always a wrong column choice, so stop early.
      raise _error(f"column {name!r} of {path} is constant (every value is {values[0]:g}); "
                   "drop it from data.features / data.target")
    out[name] = values
  return pd.DataFrame(out)


def load_frame(path: str | os.PathLike | None, *, date_column: str | None,
               columns: Sequence[str] | None = None, fill: str = "none",
               check_constant: bool = True) -> pd.DataFrame:
  """Reads and validates a CSV or Parquet table.

  Args:
    path: a ``.csv``, ``.parquet`` or ``.pq`` file; empty or None means the bundled ETTh1.
    date_column: name of the timestamp column, or ""/None for a file without dates.
      Timestamps must parse, be present on every row, strictly increase and be unique.
      Timezone-aware stamps are converted to UTC; the result is naive ``datetime64[ns]``.
    columns: numeric columns to load, in this order; None or empty means every column
      except the date column.
    fill: ``"none"`` (any NaN/inf is an error), ``"ffill"`` (carry the last value
      forward) or ``"interpolate"`` (linear in row position, edges take the nearest
      value). With a fill, infinities are treated as missing too. Missing values left
      after the fill (e.g. leading NaNs with ffill) are still an error.
    check_constant: reject columns whose values are all equal. Turn off for short
      inference files, where a constant stretch is legitimate.

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
  frame, kind = _read_table(resolved)
  wanted = _default_columns(frame, date_column) if not columns else list(columns)
  return _validate_frame(frame, resolved, kind, date_column=date_column or None,
                         columns=wanted, fill=fill, check_constant=check_constant)


def _default_columns(frame: pd.DataFrame, date_column: str | None) -> list[str]:
  return [c for c in frame.columns if c != date_column]


# ----------------------------------------------------------------------------------------
# Scalers
# ----------------------------------------------------------------------------------------


def _make_scaler(kind: str) -> Any:
  """Builds an unfitted sklearn scaler (sklearn is imported here, not at module import)."""
  from sklearn import preprocessing  # pylint: disable=import-outside-toplevel
  if kind == "standard":
    return preprocessing.StandardScaler()
  if kind == "robust":
    return preprocessing.RobustScaler()
  if kind == "minmax":
    return preprocessing.MinMaxScaler()
  return None


def _transform(scaler: Any, values: np.ndarray) -> np.ndarray:
  if scaler is None:
    return values.astype(np.float32)
  return scaler.transform(values).astype(np.float32)


# What a fitted scaler is, as plain numbers: the statistics sklearn's `transform` and
# `inverse_transform` read, per kind. Saved as JSON and set back onto a fresh scaler of
# the same kind, so loading a run's scalers never executes anything (a pickle could).
_SCALER_STATE = {
    "standard": ("mean_", "var_", "scale_"),
    "robust": ("center_", "scale_"),
    "minmax": ("min_", "scale_", "data_min_", "data_max_", "data_range_"),
}
_SCALER_COUNTS = {"standard": ("n_samples_seen_",), "robust": (),
                  "minmax": ("n_samples_seen_",)}


@dataclasses.dataclass(frozen=True)
class FittedScalers:
  """Scalers fitted on the training rows, plus the columns they were fitted on.

  Saved with a run as ``scalers.json`` (``save``/``load_scalers``) so that
  ``flaxlstm predict`` scales a new file exactly as the training data was scaled.

  Attributes:
    kind: the ``data.scaler`` they were built from.
    feature_scaler: fitted sklearn scaler for the input columns, or None.
    target_scaler: fitted sklearn scaler for the target columns, or None (scaler "none"
      or ``scale_target=False``).
    feature_names: input columns, in order.
    target_names: target columns, in order.
  """

  kind: str
  feature_scaler: Any
  target_scaler: Any
  feature_names: tuple[str, ...]
  target_names: tuple[str, ...]

  def to_json(self) -> str:
    """The scalers as JSON: kind, columns and each scaler's statistics (exact floats)."""
    payload = {"format": _SCALERS_FORMAT, "kind": self.kind,
               "feature_names": list(self.feature_names),
               "target_names": list(self.target_names),
               "features": _scaler_state(self.kind, self.feature_scaler),
               "targets": _scaler_state(self.kind, self.target_scaler)}
    return json.dumps(payload, indent=1, allow_nan=False) + "\n"

  def save(self, path: str | os.PathLike) -> None:
    """Writes ``to_json()`` atomically: a crash never leaves a half-written file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_atomic(path, self.to_json())


def _scaler_state(kind: str, scaler: Any) -> dict[str, Any] | None:
  if scaler is None:
    return None
  state = {name: np.asarray(getattr(scaler, name), np.float64).tolist()
           for name in _SCALER_STATE[kind]}
  state.update({name: int(getattr(scaler, name)) for name in _SCALER_COUNTS[kind]})
  return state


def _rebuild_scaler(kind: str, state: Any, n_columns: int, where: str) -> Any:
  """An sklearn scaler of `kind` with the saved statistics set; InputError if malformed."""
  if state is None:
    return None
  expected = set(_SCALER_STATE[kind]) | set(_SCALER_COUNTS[kind])
  if not isinstance(state, dict) or set(state) != expected:
    raise _error(f"{where}: expected the {kind} statistics {sorted(expected)}")
  scaler = _make_scaler(kind)
  for name in _SCALER_STATE[kind]:
    values = state[name]
    if (not isinstance(values, list) or len(values) != n_columns
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v) for v in values)):
      raise _error(f"{where}: {name} must be {n_columns} finite numbers")
    setattr(scaler, name, np.asarray(values, np.float64))
  for name in _SCALER_COUNTS[kind]:
    count = state[name]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
      raise _error(f"{where}: {name} must be a positive integer")
    setattr(scaler, name, count)
  if np.any(scaler.scale_ == 0):
    raise _error(f"{where}: scale_ has a zero")
  scaler.n_features_in_ = n_columns
  return scaler


def load_scalers(path: str | os.PathLike) -> FittedScalers:
  """Loads scalers written by ``FittedScalers.save`` (a ``scalers.json``).

  Plain JSON, checked field by field; nothing in the file is executed. A ``.pkl`` (what
  flaxlstm wrote before) is refused: unpickling a file from a shared run can run code.

  Raises:
    InputError: if the file is missing, unreadable, a pickle, or not a flaxlstm scalers
      file.
  """
  path = Path(path)
  if path.suffix == ".pkl":
    raise _error(f"{path} is a pickle, which flaxlstm no longer loads (unpickling can run "
                 "code); re-create the run's scalers.json with `flaxlstm evaluate --workdir "
                 f"{path.parent} --refit-scalers`")
  if not path.exists():
    raise _error(f"scalers file not found: {path}")
  payload = workdir_lib.read_json(path, "scalers file")
  where = f"scalers file {path}"
  if not isinstance(payload, dict) or payload.get("format") != _SCALERS_FORMAT:
    raise _error(f"{path} is not a flaxlstm scalers file (expected format "
                 f"{_SCALERS_FORMAT!r})")
  kind = payload.get("kind")
  if kind not in _SCALERS:
    raise _error(f"{where}: kind must be one of {', '.join(_SCALERS)}, got {_short(kind)}")
  names = {}
  for key in ("feature_names", "target_names"):
    value = payload.get(key)
    if (not isinstance(value, list) or not value
        or not all(isinstance(n, str) and n for n in value)):
      raise _error(f"{where}: {key} must be a non-empty list of column names")
    names[key] = tuple(value)
  scalers = {}
  for part, key in (("features", "feature_names"), ("targets", "target_names")):
    state = payload.get(part)
    if kind == "none" and state is not None:
      raise _error(f"{where}: scaler 'none' has no {part} statistics")
    if part == "features" and kind != "none" and state is None:
      raise _error(f"{where}: the {kind} feature statistics are missing")
    scalers[part] = None if kind == "none" else _rebuild_scaler(
        kind, state, len(names[key]), f"{where}, {part}")
  return FittedScalers(kind=kind, feature_scaler=scalers["features"],
                       target_scaler=scalers["targets"],
                       feature_names=names["feature_names"],
                       target_names=names["target_names"])


# ----------------------------------------------------------------------------------------
# The prepared series
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class SeriesData:
  """A validated, split and scaled series, ready to be windowed.

  Arrays cover every row of the file (rows after the last split are kept but no window
  uses them), so a window is addressed by a plain row index.

  Attributes:
    x: float32 ``(n_rows, n_features)`` scaled inputs.
    y: float32 ``(n_rows, n_targets)`` scaled targets (unscaled if there is no target
      scaler); NaN when an inference file has no target columns.
    y_raw: float32 ``(n_rows, n_targets)`` targets in original units.
    dates: ``datetime64[ns]`` ``(n_rows,)`` or None when there is no date column.
    feature_names: input columns.
    target_names: target columns (may also be inputs).
    lookback: input window length.
    horizon: forecast length.
    bounds: ``{"train"|"val"|"test": (start, stop)}`` contiguous chronological row ranges;
      for data from ``prepare_inference`` a single ``{"all": (0, n_rows)}``.
    feature_scaler: fitted sklearn scaler for ``x`` or None.
    target_scaler: fitted sklearn scaler for ``y`` or None.
    scaler_kind: the ``data.scaler`` name.
    source: the file the data came from.
    has_targets: False when an inference file lacks the target columns.
  """

  x: np.ndarray
  y: np.ndarray
  y_raw: np.ndarray
  dates: np.ndarray | None
  feature_names: tuple[str, ...]
  target_names: tuple[str, ...]
  lookback: int
  horizon: int
  bounds: dict[str, tuple[int, int]]
  feature_scaler: Any
  target_scaler: Any
  scaler_kind: str
  source: str
  has_targets: bool = True

  @property
  def n_rows(self) -> int:
    return int(self.x.shape[0])

  @property
  def n_features(self) -> int:
    return int(self.x.shape[1])

  @property
  def n_targets(self) -> int:
    return int(self.y.shape[1])

  @property
  def scalers(self) -> FittedScalers:
    return FittedScalers(kind=self.scaler_kind, feature_scaler=self.feature_scaler,
                         target_scaler=self.target_scaler,
                         feature_names=self.feature_names, target_names=self.target_names)

  def save_scalers(self, path: str | os.PathLike) -> None:
    """Saves the fitted scalers and column names atomically (see ``load_scalers``)."""
    self.scalers.save(path)

  def inverse_targets(self, y_scaled: Any) -> np.ndarray:
    """Maps scaled targets of shape ``(..., n_targets)`` back to original units.

    Accepts any array-like (including jax arrays, via ``np.asarray``); returns float32.
    """
    y_scaled = np.asarray(y_scaled)
    if y_scaled.ndim == 0 or y_scaled.shape[-1] != self.n_targets:
      raise ValueError(f"expected a last axis of {self.n_targets} targets, got shape "
                       f"{y_scaled.shape}")
    if self.target_scaler is None:
      return y_scaled.astype(np.float32)
    flat = y_scaled.reshape(-1, self.n_targets).astype(np.float64)
    return self.target_scaler.inverse_transform(flat).reshape(y_scaled.shape).astype(
        np.float32)

  def window_starts(self, split: str) -> np.ndarray:
    """Indices of every window (stride 1) whose targets lie in ``split``.

    Window ``i`` has inputs ``[i - lookback, i)`` and targets ``[i, i + horizon)``.
    Train windows keep their inputs inside the train rows too. Val/test windows may read
    inputs from the rows before their split (the Informer convention: context, not
    targets), so every split is evaluated on all of its rows; no target of a later split
    ever appears in an earlier one.

    Args:
      split: ``"train"``, ``"val"``, ``"test"``, or ``"all"`` for inference data.

    Returns:
      int64 array of window indices, increasing.
    """
    if split not in self.bounds:
      raise _error(f"unknown split {split!r} (this data has: {', '.join(self.bounds)})")
    start, stop = self.bounds[split]
    first = start + self.lookback if split == "train" else max(start, self.lookback)
    last = stop - self.horizon  # inclusive
    if last < first:
      return np.zeros((0,), np.int64)
    return np.arange(first, last + 1, dtype=np.int64)


def _split_bounds(cfg: Any, n_rows: int) -> dict[str, tuple[int, int]]:
  split = _cfg_get(cfg, "split", "fractions")
  if split == "fractions":
    fractions = _cfg_get(cfg, "split_fractions", (0.7, 0.1, 0.2))
    try:
      fractions = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
      raise _error(f"data.split_fractions must be three numbers, got "
                   f"{_short(fractions)}") from None
    if (len(fractions) != 3 or not all(math.isfinite(f) and f > 0 for f in fractions)
        or sum(fractions) > 1 + 1e-9):
      raise _error(f"data.split_fractions must be three positive numbers summing to at "
                   f"most 1, got {_short(fractions)}")
    train_end = int(n_rows * fractions[0])
    val_end = train_end + int(n_rows * fractions[1])
    test_end = val_end + int(n_rows * fractions[2])
    ends = (train_end, val_end, test_end)
  elif split == "rows":
    rows = _cfg_get(cfg, "split_rows", ())
    try:
      ends = tuple(int(r) for r in rows)
      valid = len(ends) in (2, 3) and all(int(r) == r for r in rows)
    except (TypeError, ValueError):
      valid = False
    if not valid:
      raise _error(f"data.split_rows must be row boundaries (train_end, val_end[, "
                   f"test_end]) when data.split='rows', got {_short(rows)}")
    if len(ends) == 2:
      ends += (n_rows,)  # Without test_end the test split runs to the end of the file.
    if not 0 < ends[0] < ends[1] < ends[2] <= n_rows:
      raise _error(f"data.split_rows must satisfy 0 < train_end < val_end < test_end <= "
                   f"{n_rows} (the number of rows), got {ends}")
  elif split == "ett":
    if n_rows < ETT_BOUNDS["test"][1]:
      raise _error(f"data.split='ett' needs at least {ETT_BOUNDS['test'][1]} rows "
                   f"(12/4/4 months of 30 days, hourly), the file has {n_rows}")
    return dict(ETT_BOUNDS)
  else:
    raise _error(f"data.split must be one of {', '.join(_SPLITS)}, got {_short(split)}")
  return {"train": (0, ends[0]), "val": (ends[0], ends[1]), "test": (ends[1], ends[2])}


def _check_lengths(bounds: dict[str, tuple[int, int]], lookback: int, horizon: int,
                   split: str, n_rows: int) -> None:
  """Requires at least one window per split (train: inputs inside train rows too)."""
  sizes = {name: stop - start for name, (start, stop) in bounds.items()}
  if (sizes["train"] >= lookback + horizon and sizes["val"] >= horizon
      and sizes["test"] >= horizon):
    return
  raise _error(f"series too short: data.lookback={lookback} + data.horizon={horizon} need "
               f"at least {lookback + horizon} train rows and {horizon} val and test rows, "
               f"but data.split={split!r} gives train={sizes['train']}, "
               f"val={sizes['val']}, test={sizes['test']} (of {n_rows} rows)")


def _resolve_columns(cfg: Any, frame_columns: Sequence[str],
                     date_column: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
  features = _as_names(_cfg_get(cfg, "features", ()), "data.features")
  targets = _as_names(_cfg_get(cfg, "target", ("OT",)), "data.target")
  if not targets:
    raise _error("data.target must name at least one column")
  if not features:
    features = tuple(c for c in frame_columns if c != date_column)
  if date_column and date_column in features + targets:
    raise _error(f"date column {date_column!r} cannot be a feature or target; "
                 "check data.features / data.target")
  return features, targets


def prepare(cfg: Any, *, scalers: FittedScalers | None = None) -> SeriesData:
  """Loads, validates, splits and scales the series described by a data config.

  Scalers (one for the feature columns, a separate one for the target columns) are fitted
  on the train rows only, so no statistic of validation or test data leaks into training.

  Args:
    cfg: the data config (``ml_collections.ConfigDict``, dict or any object with these
      attributes): ``path, date_column, features, target, lookback, horizon, split,
      split_fractions, split_rows, scaler, scale_target, fill``. Missing fields take the
      documented defaults.
    scalers: already fitted scalers (e.g. from ``load_scalers`` of a finished run) to use
      instead of fitting new ones; their column names must match the config's. Splits are
      computed exactly as without them.

  Returns:
    The prepared ``SeriesData`` with train/val/test bounds.

  Raises:
    InputError: for any problem with the file or the config values it reads.
  """
  lookback = _positive_int(cfg, "lookback", 96)
  horizon = _positive_int(cfg, "horizon", 24)
  scaler_kind = _cfg_get(cfg, "scaler", "standard")
  if scaler_kind not in _SCALERS:
    raise _error(f"data.scaler must be one of {', '.join(_SCALERS)}, got "
                 f"{_short(scaler_kind)}")
  scale_target = bool(_cfg_get(cfg, "scale_target", True))
  date_column = _cfg_get(cfg, "date_column", "date") or None
  fill = _cfg_get(cfg, "fill", "none")

  path = _resolve_path(_cfg_get(cfg, "path", ""))
  raw, kind = _read_table(path)
  features, targets = _resolve_columns(cfg, list(raw.columns), date_column)
  for key, names in (("data.features", features), ("data.target", targets)):
    for name in names:
      if name not in raw.columns:
        # Checked here, not only in _validate_frame, so the message names the config key.
        raise _error(f"column {name!r} ({key}) not found in {path} "
                     f"(columns: {_list_names(list(raw.columns))})")
  columns = list(dict.fromkeys(features + targets))
  frame = _validate_frame(raw, path, kind, date_column=date_column, columns=columns,
                          fill=fill, check_constant=True)
  n_rows = len(frame)
  bounds = _split_bounds(cfg, n_rows)
  _check_lengths(bounds, lookback, horizon, _cfg_get(cfg, "split", "fractions"), n_rows)

  x_raw = frame[list(features)].to_numpy(np.float64)
  y_raw = frame[list(targets)].to_numpy(np.float64)
  if scalers is None:
    train = slice(*bounds["train"])
    feature_scaler = _make_scaler(scaler_kind)
    target_scaler = _make_scaler(scaler_kind) if scale_target else None
    if feature_scaler is not None:
      feature_scaler.fit(x_raw[train])
    if target_scaler is not None:
      target_scaler.fit(y_raw[train])
  else:
    if (tuple(scalers.feature_names), tuple(scalers.target_names)) != (features, targets):
      raise _error(f"the saved scalers were fitted on features "
                   f"[{_list_names(scalers.feature_names)}] and targets "
                   f"[{_list_names(scalers.target_names)}] but data.features/data.target "
                   f"select [{_list_names(features)}] and [{_list_names(targets)}]")
    feature_scaler, target_scaler = scalers.feature_scaler, scalers.target_scaler
    scaler_kind = scalers.kind

  return SeriesData(
      x=_transform(feature_scaler, x_raw), y=_transform(target_scaler, y_raw),
      y_raw=y_raw.astype(np.float32),
      dates=frame[date_column].to_numpy() if date_column else None,
      feature_names=features, target_names=targets, lookback=lookback, horizon=horizon,
      bounds=bounds, feature_scaler=feature_scaler, target_scaler=target_scaler,
      scaler_kind=scaler_kind, source=str(path))


def prepare_inference(cfg: Any, scalers: FittedScalers, *,
                      path: str | os.PathLike | None = None) -> SeriesData:
  """Prepares a NEW file with a finished run's scalers (for ``flaxlstm predict``).

  Nothing is fitted and nothing is split: the result has one range ``bounds["all"] =
  (0, n_rows)``. Columns come from ``scalers`` (the ones the model was trained on), so
  the config's ``features``/``target`` need not be repeated. The target columns may be
  absent (pure forecasting): then ``has_targets`` is False and ``y``/``y_raw`` are NaN.

  Use ``data.window_starts("all")`` for back-testing windows whose targets are in the
  file, and ``gather_inputs(data, np.array([data.n_rows]))`` for the forecast of the
  ``horizon`` rows right after the end of the file.

  Args:
    cfg: the run's data config; ``date_column``, ``fill``, ``lookback``, ``horizon`` and,
      when ``path`` is None, ``path`` are read.
    scalers: fitted scalers, e.g. ``load_scalers(workdir / "scalers.json")``.
    path: the file to prepare; None means ``cfg.path``.

  Raises:
    InputError: for a bad file or one shorter than ``lookback`` rows.
  """
  lookback = _positive_int(cfg, "lookback", 96)
  horizon = _positive_int(cfg, "horizon", 24)
  date_column = _cfg_get(cfg, "date_column", "date") or None
  fill = _cfg_get(cfg, "fill", "none")
  resolved = _resolve_path(path if path is not None else _cfg_get(cfg, "path", ""))
  raw, kind = _read_table(resolved)
  features, targets = tuple(scalers.feature_names), tuple(scalers.target_names)
  has_targets = all(t in raw.columns for t in targets)
  columns = list(dict.fromkeys(features + (targets if has_targets else ())))
  # No constant check: a short inference file may legitimately hold a flat stretch.
  frame = _validate_frame(raw, resolved, kind, date_column=date_column, columns=columns,
                          fill=fill, check_constant=False)
  n_rows = len(frame)
  if n_rows < lookback:
    raise _error(f"series too short: {resolved} has {n_rows} rows but data.lookback="
                 f"{lookback} rows of inputs are needed")
  x_raw = frame[list(features)].to_numpy(np.float64)
  if has_targets:
    y_raw = frame[list(targets)].to_numpy(np.float64)
    y = _transform(scalers.target_scaler, y_raw)
  else:
    y_raw = np.full((n_rows, len(targets)), np.nan)
    y = y_raw.astype(np.float32)
  return SeriesData(
      x=_transform(scalers.feature_scaler, x_raw), y=y, y_raw=y_raw.astype(np.float32),
      dates=frame[date_column].to_numpy() if date_column else None,
      feature_names=features, target_names=targets, lookback=lookback, horizon=horizon,
      bounds={"all": (0, n_rows)}, feature_scaler=scalers.feature_scaler,
      target_scaler=scalers.target_scaler, scaler_kind=scalers.kind,
      source=str(resolved), has_targets=has_targets)


# ----------------------------------------------------------------------------------------
# Windows and batches
# ----------------------------------------------------------------------------------------


def gather_inputs(data: SeriesData, starts: np.ndarray) -> np.ndarray:
  """Input windows ``x[i - lookback : i]`` for each start ``i``: ``(B, lookback, F)``.

  Starts may go up to ``n_rows`` (the forecast beyond the end of the data).
  """
  starts = np.asarray(starts, dtype=np.int64)
  rows = starts[:, None] + np.arange(-data.lookback, 0, dtype=np.int64)
  return data.x[rows]


def gather_windows(data: SeriesData, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Gathers a batch of windows by index, without materialising the split.

  Args:
    data: the prepared series.
    starts: int array ``(B,)`` of window indices (from ``window_starts``).

  Returns:
    ``x`` float32 ``(B, lookback, n_features)`` and ``y`` float32
    ``(B, horizon, n_targets)``, both scaled.
  """
  starts = np.asarray(starts, dtype=np.int64)
  rows = starts[:, None] + np.arange(data.horizon, dtype=np.int64)
  return gather_inputs(data, starts), data.y[rows]


def steps_per_epoch(n_windows: int, batch_size: int, drop_last: bool = True) -> int:
  """Number of train batches in one epoch."""
  if drop_last:
    return n_windows // batch_size
  return -(-n_windows // batch_size)


def epoch_batches(n_windows: int, batch_size: int, seed: int, epoch: int,
                  shuffle: bool = True, drop_last: bool = True) -> np.ndarray:
  """Positions (into a split's ``window_starts``) of every batch of one epoch.

  The order is a pure function of ``(seed, epoch)``: each epoch gets its own permutation
  from ``np.random.default_rng([seed, 0, epoch])``, so a resumed run reproduces it.

  Args:
    n_windows: number of windows in the split.
    batch_size: windows per batch.
    seed: the config seed (non-negative).
    epoch: 0-based epoch number.
    shuffle: permute the windows; otherwise keep them in time order.
    drop_last: drop the final partial batch. Otherwise it is completed by wrapping around
      to the first positions of the same epoch order, so every batch has the same shape
      (jit compiles once) at the cost of a few windows seen twice that epoch.

  Returns:
    int64 ``(n_batches, batch_size)``; zero rows when ``n_windows < batch_size`` and
    ``drop_last``.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if shuffle:
    rng = np.random.default_rng([seed, _PERMUTATION_STREAM, epoch])
    order = rng.permutation(n_windows).astype(np.int64)
  else:
    order = np.arange(n_windows, dtype=np.int64)
  n_batches = steps_per_epoch(n_windows, batch_size, drop_last)
  if n_windows == 0:
    return np.zeros((0, batch_size), np.int64)
  if not drop_last:
    order = np.resize(order, n_batches * batch_size)  # np.resize repeats cyclically.
  return order[: n_batches * batch_size].reshape(n_batches, batch_size)


def batch_for_step(starts: np.ndarray, batch_size: int, seed: int, step: int,
                   shuffle: bool = True, drop_last: bool = True) -> np.ndarray:
  """Window starts of global train step ``step``: a pure function of (seed, step).

  ``epoch = step // steps_per_epoch`` and the batch is row ``step % steps_per_epoch``
  of ``epoch_batches(..., epoch)``, so a resumed run needs only the step number.

  Raises:
    InputError: if the split has fewer windows than one batch.
  """
  starts = np.asarray(starts, dtype=np.int64)
  per_epoch = steps_per_epoch(len(starts), batch_size, drop_last)
  if per_epoch == 0:
    raise _error(f"the train split has {len(starts)} windows, fewer than one batch of "
                 f"{batch_size}; lower the batch size or use more training rows")
  epoch, index = divmod(step, per_epoch)
  positions = epoch_batches(len(starts), batch_size, seed, epoch, shuffle, drop_last)
  return starts[positions[index]]


def eval_batches(n_windows: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic in-order evaluation batches, last partial batch included.

  Every batch has the full ``batch_size`` so a jitted eval step compiles once: the last
  batch is padded by repeating the last real position, and ``mask`` marks which entries
  are real. Weight per-window metrics by ``mask`` (or drop the padding on the host).

  Returns:
    ``positions`` int64 ``(n_batches, batch_size)`` and ``mask`` bool of the same shape.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  n_batches = -(-n_windows // batch_size)
  flat = np.arange(n_batches * batch_size, dtype=np.int64)
  mask = flat < n_windows
  positions = np.minimum(flat, max(n_windows - 1, 0))
  return positions.reshape(n_batches, batch_size), mask.reshape(n_batches, batch_size)


# ----------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------


def augment_rng(seed: int, step: int) -> np.random.Generator:
  """The augmentation generator of a train step: a pure function of (seed, step).

  The global step already determines the epoch, so (seed, step) is (seed, epoch, step).
  """
  return np.random.default_rng([seed, _AUGMENT_STREAM, step])


def _augment_params(aug_cfg: Any) -> dict[str, float]:
  params = {}
  for name in ("jitter", "scaling", "magnitude_warp", "window_slice"):
    value = _cfg_get(aug_cfg, name, 0.0)
    try:
      value = float(value)
    except (TypeError, ValueError):
      value = float("nan")
    upper = 1.0 if name == "window_slice" else math.inf
    if not (math.isfinite(value) and 0.0 <= value < upper):
      bound = "in [0, 1)" if name == "window_slice" else "a non-negative number"
      raw = _cfg_get(aug_cfg, name, 0.0)
      raise _error(f"data.augment.{name} must be {bound}, got {_short(raw)}")
    params[name] = value
  return params


def _catmull_rom(knots: np.ndarray, length: int) -> np.ndarray:
  """Smooth (C1) cubic curve through evenly spaced knots, sampled at ``length`` points.

  knots: ``(B, K, F)``; returns ``(B, length, F)``. Used instead of scipy's CubicSpline to
  keep the module numpy-only; for magnitude warping any smooth interpolant will do.
  """
  n_knots = knots.shape[1]
  u = np.linspace(0.0, n_knots - 1, length)
  seg = np.minimum(np.floor(u).astype(np.int64), n_knots - 2)
  t = (u - seg)[None, :, None]
  idx = lambda k: np.clip(seg + k, 0, n_knots - 1)  # Clamped ends repeat the edge knot.
  p0, p1, p2, p3 = (knots[:, idx(k), :] for k in (-1, 0, 1, 2))
  return 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)


def augment(x: np.ndarray, aug_cfg: Any, rng: np.random.Generator) -> np.ndarray:
  """Randomly perturbs a batch of train INPUT windows ``(B, lookback, F)``.

  Only inputs are augmented: the targets stay the true future, so the model learns to
  forecast reality from a perturbed past (robustness), not to forecast perturbations.
  Never apply this to val/test windows.

  Applied in this order, each skipped (no random draws) when its strength is 0:

  - ``window_slice`` r: crop a random contiguous ``(1 - r)`` of the lookback and
    linearly resample it back to ``lookback`` steps (a time-stretch; note the crop can
    drop the most recent steps, so keep r small).
  - ``magnitude_warp`` s: multiply by a smooth random curve through 6 evenly spaced
    knots ~ N(1, s), one curve per window and feature.
  - ``scaling`` s: multiply each window's feature by a factor ~ N(1, s).
  - ``jitter`` s: add Gaussian noise N(0, s) to every value.

  Args:
    x: float input windows ``(B, lookback, F)``, scaled.
    aug_cfg: ``data.augment`` (attributes or keys ``jitter, scaling, magnitude_warp,
      window_slice``; missing or None means off).
    rng: e.g. ``augment_rng(seed, step)``; results are deterministic given its state.

  Returns:
    The augmented batch (float32), or ``x`` itself when everything is off.
  """
  params = _augment_params(aug_cfg)
  if not any(params.values()):
    return x
  x = np.asarray(x, dtype=np.float32)
  batch, length, n_features = x.shape
  if params["window_slice"] and length > 1:
    crop = max(2, int(round(length * (1.0 - params["window_slice"]))))
    first = rng.integers(0, length - crop + 1, size=batch)
    pos = first[:, None] + np.linspace(0.0, crop - 1, length)[None, :]  # (B, L)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, length - 1)
    w = (pos - lo)[:, :, None].astype(np.float32)
    x = (np.take_along_axis(x, lo[:, :, None], axis=1) * (1 - w)
         + np.take_along_axis(x, hi[:, :, None], axis=1) * w)
  if params["magnitude_warp"]:
    knots = rng.normal(1.0, params["magnitude_warp"], size=(batch, 6, n_features))
    x = x * _catmull_rom(knots, length).astype(np.float32)
  if params["scaling"]:
    x = x * rng.normal(1.0, params["scaling"], size=(batch, 1, n_features)).astype(
        np.float32)
  if params["jitter"]:
    x = x + rng.normal(0.0, params["jitter"], size=x.shape).astype(np.float32)
  return x.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------
# Baselines and metrics
# ----------------------------------------------------------------------------------------


def naive_forecast(data: SeriesData, starts: np.ndarray) -> np.ndarray:
  """Repeats the last observed target (row ``i - 1``) over the horizon.

  Returns:
    float32 ``(B, horizon, n_targets)`` in scaled units.
  """
  starts = np.asarray(starts, dtype=np.int64)
  last = data.y[starts - 1]  # (B, T)
  return np.repeat(last[:, None, :], data.horizon, axis=1)


def seasonal_naive_forecast(data: SeriesData, starts: np.ndarray,
                            period: int) -> np.ndarray:
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
  if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or not (
      1 <= period <= data.lookback):
    raise _error(f"data.seasonal_period must be an integer in [1, data.lookback="
                 f"{data.lookback}], got {_short(period)}")
  starts = np.asarray(starts, dtype=np.int64)
  h = np.arange(data.horizon, dtype=np.int64)
  offsets = h - period * ((h + period) // period)  # (h+period)//period == ceil((h+1)/period)
  return data.y[starts[:, None] + offsets[None, :]]


# The linear baseline solves a (lookback * n_features)-dimensional ridge problem; past this
# size it would cost more than the LSTM, so it is skipped.
LINEAR_MAX_INPUTS = 4096


def linear_forecaster(data: SeriesData, alpha: float = 1.0):
  """Fits a ridge regression from the whole input window to the whole horizon.

  Inputs are the flattened scaled window ``(lookback * n_features)``, outputs the flattened
  ``(horizon * n_targets)`` targets, fit on every training window (the same windows the
  LSTM trains on). Returns ``predict(starts) -> (B, horizon, n_targets)`` in scaled units,
  or None when the problem is larger than ``LINEAR_MAX_INPUTS`` inputs.
  """
  from sklearn.linear_model import Ridge  # pylint: disable=g-import-not-at-top
  if data.lookback * data.n_features > LINEAR_MAX_INPUTS:
    return None
  starts = data.window_starts("train")
  x, y = gather_windows(data, starts)
  model = Ridge(alpha=alpha).fit(x.reshape(len(starts), -1), y.reshape(len(starts), -1))

  def predict(s: np.ndarray) -> np.ndarray:
    xs = gather_inputs(data, np.asarray(s, dtype=np.int64))
    out = model.predict(xs.reshape(len(xs), -1))
    return out.reshape(len(xs), data.horizon, data.n_targets).astype(np.float32)

  return predict


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
  """MSE, MAE and RMSE over all elements, computed in float64, as Python floats."""
  y_true = np.asarray(y_true, dtype=np.float64)
  y_pred = np.asarray(y_pred, dtype=np.float64)
  if y_true.shape != y_pred.shape:
    raise ValueError(f"shape mismatch: y_true {y_true.shape} vs y_pred {y_pred.shape}")
  err = y_pred - y_true
  mse = float(np.mean(err**2))
  return {"mse": mse, "mae": float(np.mean(np.abs(err))), "rmse": math.sqrt(mse)}
