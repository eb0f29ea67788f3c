"""Validated, split and scaled series (`SeriesData`), prepared from a `DataSpec`.

The flow: CSV/Parquet -> a validated table (io.py), wide (one series whose columns are the
features and targets) or long (one row per (series, date), `data.id_column`) -> every
series' rows one after another in one array -> chronological splits, per series -> scalers
fit on the train rows only (scaling.py: one for all series, or one per series) -> float32
inputs, targets and known-in-advance covariates for every row, static covariates per
series -> a window index per split (`SeriesData.window_index`, never materialized), which
windows.py gathers into batches.

The spec's values are checked once, by the schema; what is checked here needs the data:
columns that exist, splits that fit the file, series long enough for their windows.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from flaxlstm.config.schema import DataSpec
from flaxlstm.data import io
from flaxlstm.data.io import error, list_names, short
from flaxlstm.data.scaling import FittedScalers, SeriesScaler, inverse, make_scaler, transform
from flaxlstm.data.windows import WindowIndex

log = logging.getLogger(__name__)

# data.split: how rows are split in time.
SPLITS = ("fractions", "rows", "dates", "ett")
# Informer's ETT protocol: 12/4/4 months of 30 days of hourly rows.
ETT_BOUNDS = {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)}
_SPLIT_NAMES = ("train", "val", "test")


# data.calendar: each feature's phase in [0, 1) from the timestamps, fed as sin/cos so that
# the end of a cycle meets its start (23h is next to 0h).
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


CALENDAR = ("hour", "dayofweek", "dayofmonth", "dayofyear", "month")


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


def increasing_dates(values: Sequence[str]) -> bool:
  """Whether every value is a timestamp and each is later than the one before."""
  try:
    stamps = [pd.Timestamp(v) for v in values]
  except (ValueError, TypeError):
    return False
  return all(a < b for a, b in zip(stamps, stamps[1:]))


@dataclasses.dataclass(frozen=True, eq=False)
class SeriesData:
  """Validated, split and scaled series, ready to be windowed.

  The rows of every series lie one after another (series ``s`` is rows
  ``offsets[s]:offsets[s + 1]``, in time order), so a window is addressed by a plain row
  index and never crosses into another series. Rows after a series' last split are kept,
  but no window uses them.

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
    split_rows: ``{"train"|"val"|"test": (n_series, 2)}`` each series' contiguous
      chronological ``[start, stop)`` rows per split; for data from ``prepare_inference`` a
      single ``"all"`` (every row of each series).
    scalers: the fitted scalers (and the series and covariate columns they know).
    source: the file the data came from.
    offsets: int64 ``(n_series + 1,)`` first row of each series, then ``n_rows``.
    series_ids: the series of a long table, in row order; () for a wide table.
    series_codes: int32 ``(n_series,)`` each series' position among the training run's
      series (the model's series id); -1 for a series the run never saw.
    known: float32 ``(n_rows, n_known)`` covariates known in advance (scaled ``data.known``
      columns, then the calendar features), or None.
    known_names: their names.
    static: float32 ``(n_series, n_static)`` scaled static columns, or None.
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
  split_rows: dict[str, np.ndarray]
  scalers: FittedScalers
  source: str
  offsets: np.ndarray
  series_ids: tuple[str, ...] = ()
  series_codes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1, np.int32))
  known: np.ndarray | None = None
  known_names: tuple[str, ...] = ()
  static: np.ndarray | None = None
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
  def n_series(self) -> int:
    return len(self.offsets) - 1

  @property
  def feature_scaler(self) -> Any:
    return self.scalers.feature_scaler

  @property
  def target_scaler(self) -> Any:
    return self.scalers.target_scaler

  @property
  def scaler_kind(self) -> str:
    return self.scalers.kind

  @property
  def bounds(self) -> dict[str, tuple[int, int]]:
    """A wide table's split row ranges, ``{"train": (start, stop), ...}``."""
    if self.n_series != 1:
      raise ValueError("a panel of several series has split_rows per series, not bounds")
    return {k: (int(v[0, 0]), int(v[0, 1])) for k, v in self.split_rows.items()}

  def save_scalers(self, path: str | os.PathLike) -> None:
    """Saves the fitted scalers and column names atomically (see ``load_scalers``)."""
    self.scalers.save(path)

  def row_series(self, rows: Any) -> np.ndarray:
    """The series (0-based, in row order) each row belongs to."""
    return (np.searchsorted(self.offsets, np.asarray(rows), side="right") - 1).astype(np.int64)

  def inverse_targets(self, y_scaled: Any, starts: Any = None) -> np.ndarray:
    """Maps scaled targets of shape ``(..., n_targets)`` back to original units.

    With per-series scaling the series must be known: pass the window starts (one per
    leading index of `y_scaled`). Accepts any array-like (jax arrays too); returns float32.
    """
    y_scaled = np.asarray(y_scaled)
    if y_scaled.ndim == 0 or y_scaled.shape[-1] != self.n_targets:
      raise ValueError(
        f"expected a last axis of {self.n_targets} targets, got shape {y_scaled.shape}"
      )
    flat = y_scaled.reshape(-1, self.n_targets)
    series = None
    if isinstance(self.target_scaler, SeriesScaler):
      if starts is None:
        raise ValueError("per-series scaling: pass the window starts to inverse_targets")
      # The row before a start is the window's last input: always in the window's series.
      codes = self.series_codes[self.row_series(np.asarray(starts) - 1)]
      series = np.repeat(codes, flat.shape[0] // max(len(codes), 1))
    return inverse(self.target_scaler, flat, series).reshape(y_scaled.shape)

  def window_index(self, split: str) -> WindowIndex:
    """Every window (stride 1) whose targets lie in ``split``, per series.

    Window ``i`` has inputs ``[i - lookback, i)`` and targets ``[i, i + horizon)``. Train
    windows keep their inputs inside the train rows too. Val/test windows may read inputs
    from the rows before their split (the Informer convention: context, not targets), so
    every split is evaluated on all of its rows; no target of a later split ever appears
    in an earlier one, and no window reaches into another series.

    Args:
      split: ``"train"``, ``"val"``, ``"test"``, or ``"all"`` for inference data.
    """
    if split not in self.split_rows:
      raise error(f"unknown split {split!r} (this data has: {', '.join(self.split_rows)})")
    rows = self.split_rows[split]
    if split == "train":
      first = rows[:, 0] + self.lookback
    else:
      first = np.maximum(rows[:, 0], self.offsets[:-1] + self.lookback)
    counts = np.maximum(rows[:, 1] - self.horizon - first + 1, 0)
    return WindowIndex(first.astype(np.int64), counts.astype(np.int64))

  def window_starts(self, split: str) -> np.ndarray:
    """`window_index(split)` as an int64 array of window starts, increasing."""
    return self.window_index(split).all_rows()


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
  if spec.split in ("rows", "dates"):
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


def _check_lengths(bounds: dict[str, tuple[int, int]], spec: DataSpec, n_rows: int) -> None:
  """Requires at least one window per split (train: inputs inside train rows too)."""
  sizes = {name: stop - start for name, (start, stop) in bounds.items()}
  lookback, horizon = spec.lookback, spec.horizon
  if sizes["train"] >= lookback + horizon and sizes["val"] >= horizon and sizes["test"] >= horizon:
    return
  raise error(
    f"series too short: data.lookback={lookback} + data.horizon={horizon} need "
    f"at least {lookback + horizon} train rows and {horizon} val and test rows, "
    f"but data.split={spec.split!r} gives train={sizes['train']}, "
    f"val={sizes['val']}, test={sizes['test']} (of {n_rows} rows)"
  )


def _panel_ends(spec: DataSpec, lengths: np.ndarray, dates, offsets) -> np.ndarray:
  """Each series' local split ends ``(S, 3)`` (train_end, val_end, test_end)."""
  if spec.split == "dates":
    return _date_ends(spec, dates, offsets)
  if spec.split == "fractions":
    f = spec.split_fractions
    train = (lengths * f[0]).astype(np.int64)
    val = train + (lengths * f[1]).astype(np.int64)
    return np.stack([train, val, val + (lengths * f[2]).astype(np.int64)], axis=-1)
  fixed = [ETT_BOUNDS[k][1] for k in _SPLIT_NAMES] if spec.split == "ett" else list(spec.split_rows)
  ends = np.empty((len(lengths), 3), np.int64)
  ends[:, : len(fixed)] = fixed
  if len(fixed) == 2:
    ends[:, 2] = lengths
  # A series that ends before a fixed boundary is too short (found by `_short_series`).
  return np.minimum(ends, lengths[:, None])


def _short_series(spec: DataSpec, ends: np.ndarray) -> np.ndarray:
  """Which series lack a window in some split (train: inputs inside train rows too)."""
  train, val, test = ends[:, 0], ends[:, 1] - ends[:, 0], ends[:, 2] - ends[:, 1]
  return (train < spec.lookback + spec.horizon) | (val < spec.horizon) | (test < spec.horizon)


def _columns(
  spec: DataSpec, frame_columns: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
  if spec.features:
    features = spec.features
  elif spec.id_column:
    features = spec.target  # a long table: each series' own past
  else:
    taken = {spec.date_column, *spec.known}
    features = tuple(c for c in frame_columns if c not in taken)
  date_column = spec.date_column or None
  if date_column and date_column in features + spec.target + spec.known + spec.static:
    raise error(
      f"date column {date_column!r} cannot be a feature or target (or a covariate); "
      "check data.features / data.target / data.known / data.static"
    )
  return features, spec.target


@dataclasses.dataclass
class _Table:
  """A validated table, every series' rows one after another in time order."""

  frame: pd.DataFrame
  offsets: np.ndarray
  series_ids: tuple[str, ...]
  path: Any

  @property
  def row_series(self) -> np.ndarray:
    return np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int32), np.diff(self.offsets))

  def select(self, keep: np.ndarray) -> _Table:
    """Only the series where `keep` is True."""
    lengths = np.diff(self.offsets)
    rows = np.repeat(keep, lengths)
    return _Table(
      self.frame[rows].reset_index(drop=True),
      np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64),
      tuple(i for i, k in zip(self.series_ids, keep) if k),
      self.path,
    )


def _read(
  spec: DataSpec,
  path: Any,
  raw: pd.DataFrame,
  kind: str,
  columns: list[str],
  *,
  check_constant: bool,
  optional: Sequence[str] = (),
) -> tuple[_Table, bool]:
  """Validates the freshly read `raw` as the spec's wide or long table.

  `optional` columns (an inference file's targets) may be absent: the second value says
  whether they are all there.
  """
  date_column = spec.date_column or None
  present = all(c in raw.columns for c in optional)
  wanted = list(dict.fromkeys(columns + (list(optional) if present else [])))
  if spec.id_column:
    frame, offsets, ids = io.validate_long(
      raw,
      path,
      kind,
      id_column=spec.id_column,
      date_column=date_column,
      columns=wanted,
      fill=spec.fill,
      check_constant=check_constant,
    )
    return _Table(frame, offsets, tuple(ids), path), present
  frame = io.validate_frame(
    raw,
    path,
    kind,
    date_column=date_column,
    columns=wanted,
    fill=spec.fill,
    check_constant=check_constant,
  )
  return _Table(frame, np.array([0, len(frame)], np.int64), (), path), present


def _check_named(spec: DataSpec, raw_columns: Sequence[str], path: Any, features, targets) -> None:
  for key, names in (
    ("data.features", features),
    ("data.target", targets),
    ("data.known", spec.known),
    ("data.static", spec.static),
  ):
    for name in names:
      if name not in raw_columns:
        # Checked here, not only in validation, so the message names the config key.
        raise error(
          f"column {name!r} ({key}) not found in {path} (columns: {list_names(list(raw_columns))})"
        )


def _static_values(spec: DataSpec, table: _Table) -> np.ndarray | None:
  """One row per series of the `data.static` columns; each must be constant in its series."""
  if not spec.static:
    return None
  values = table.frame[list(spec.static)].to_numpy(np.float64)
  begin = table.offsets[:-1]
  low, high = np.minimum.reduceat(values, begin), np.maximum.reduceat(values, begin)
  bad = np.argwhere(low != high)
  if bad.size:
    s, c = (int(v) for v in bad[0])
    raise error(
      f"static column {spec.static[c]!r} (data.static) of {table.path} varies within series "
      f"{short(table.series_ids[s])} (from {low[s, c]:g} to {high[s, c]:g})"
    )
  return values[begin]


def _fit(
  kind: str, scope: str, values: np.ndarray, train: np.ndarray, split_rows: np.ndarray
) -> Any:
  """A `kind` scaler fit on the train rows (`train`: a row mask; `split_rows`: each series'
  train rows), over all series at once or for each on its own."""
  if kind == "none" or values.shape[1] == 0:
    return None
  if scope == "series":
    return SeriesScaler.fit(kind, [values[a:b] for a, b in split_rows])
  return make_scaler(kind).fit(values[train])


def prepare(spec: DataSpec, *, scalers: FittedScalers | None = None) -> SeriesData:
  """Loads, validates, splits and scales the series `spec` describes.

  Scalers (one for the feature columns, a separate one for the target columns, one for
  the known columns) are fitted on the train rows only, so no statistic of validation or
  test data leaks into training: over every series' train rows (``scaler_scope="global"``)
  or per series on its own (``"series"``).

  Args:
    spec: the data spec (see `flaxlstm.config.DataSpec`).
    scalers: already fitted scalers (e.g. from ``load_scalers`` of a finished run) to use
      instead of fitting new ones; their column names must match the spec's. Splits are
      computed exactly as without them.

  Raises:
    InputError: for any problem with the file.
  """
  path = io.data_file(spec.path)
  raw, kind = io.read_table(path)
  features, targets = _columns(spec, list(raw.columns))
  _check_named(spec, list(raw.columns), path, features, targets)
  columns = list(dict.fromkeys(features + targets + spec.known + spec.static))
  table, _ = _read(spec, path, raw, kind, columns, check_constant=True)
  del raw  # the validated table holds what is needed; a large file is not kept twice
  date_column = spec.date_column or None
  dates = table.frame[date_column].to_numpy() if date_column else None
  lengths = np.diff(table.offsets)
  if spec.id_column:
    ends = _panel_ends(spec, lengths, dates, table.offsets)
    short_ = _short_series(spec, ends)
    if short_.any():
      first = int(np.argmax(short_))
      what = (
        f"series too short: data.lookback={spec.lookback} + data.horizon={spec.horizon} need "
        f"at least {spec.lookback + spec.horizon} train rows and {spec.horizon} val and test "
        f"rows in every series, but data.split={spec.split!r} leaves series "
        f"{short(table.series_ids[first])} ({lengths[first]} rows) with train={ends[first, 0]}, "
        f"val={ends[first, 1] - ends[first, 0]}, test={ends[first, 2] - ends[first, 1]}"
      )
      n_short = int(short_.sum())
      if not spec.drop_short or n_short == len(lengths):
        hint = "" if spec.drop_short else "; set data.drop_short=True to leave them out"
        raise error(f"{what} ({n_short} of {len(lengths)} series are too short{hint})")
      log.warning(
        f"data.drop_short: left out {n_short} of {len(lengths)} series too short to split"
      )
      table = table.select(~short_)
      ends, lengths = ends[~short_], np.diff(table.offsets)
      dates = table.frame[date_column].to_numpy() if date_column else None
  else:
    bounds = split_bounds(spec, len(table.frame), dates)
    _check_lengths(bounds, spec, len(table.frame))
    ends = np.array([[bounds[k][1] for k in _SPLIT_NAMES]], np.int64)
  begin = table.offsets[:-1, None]
  local = np.concatenate([np.zeros((len(ends), 1), np.int64), ends], axis=1)
  split_rows = {k: begin + local[:, i : i + 2] for i, k in enumerate(_SPLIT_NAMES)}

  frame = table.frame
  blocks = {
    "features": frame[list(features)].to_numpy(np.float64),
    "targets": frame[list(targets)].to_numpy(np.float64),
    "known": frame[list(spec.known)].to_numpy(np.float64),
  }
  static = _static_values(spec, table)
  if scalers is None:
    train_mask = np.zeros(len(frame), bool)
    for a, b in split_rows["train"]:
      train_mask[a:b] = True
    fit = lambda v: _fit(spec.scaler, spec.scaler_scope, v, train_mask, split_rows["train"])
    scalers = FittedScalers(
      kind=spec.scaler,
      feature_scaler=fit(blocks["features"]),
      target_scaler=fit(blocks["targets"]) if spec.scale_target else None,
      feature_names=features,
      target_names=targets,
      scope=spec.scaler_scope,
      series_ids=table.series_ids,
      known_names=spec.known,
      known_scaler=fit(blocks["known"]),
      static_names=spec.static,
      # Static values are one row per series, scaled over the series.
      static_scaler=None
      if static is None or spec.scaler == "none"
      else make_scaler(spec.scaler).fit(static),
    )
    codes = np.arange(len(lengths), dtype=np.int32)
  else:
    _check_saved(scalers, features, targets, spec)
    codes = _series_codes(scalers, table)
  return _build(spec, table, blocks, static, scalers, codes, split_rows, features, targets)


def _check_saved(scalers: FittedScalers, features, targets, spec: DataSpec) -> None:
  saved = (tuple(scalers.feature_names), tuple(scalers.target_names))
  if saved != (features, targets):
    raise error(
      f"the saved scalers were fitted on features "
      f"[{list_names(scalers.feature_names)}] and targets "
      f"[{list_names(scalers.target_names)}] but data.features/data.target "
      f"select [{list_names(features)}] and [{list_names(targets)}]"
    )
  if (tuple(scalers.known_names), tuple(scalers.static_names)) != (spec.known, spec.static):
    raise error(
      f"the saved scalers know the columns data.known=[{list_names(scalers.known_names)}] and "
      f"data.static=[{list_names(scalers.static_names)}] but the config has "
      f"[{list_names(spec.known)}] and [{list_names(spec.static)}]"
    )


def _series_codes(scalers: FittedScalers, table: _Table) -> np.ndarray:
  """Each series' position among the run's series; -1 for a new one."""
  if not table.series_ids:
    return np.zeros(1, np.int32)
  known = {name: i for i, name in enumerate(scalers.series_ids)}
  codes = np.array([known.get(i, -1) for i in table.series_ids], np.int32)
  if scalers.scope == "series" and (codes < 0).any():
    new = table.series_ids[int(np.argmax(codes < 0))]
    raise error(
      f"series {short(new)} of {table.path} was not in the training data; a run with "
      "data.scaler_scope='series' can only scale the series it was trained on"
    )
  return codes


def _build(
  spec: DataSpec,
  table: _Table,
  blocks: dict[str, np.ndarray],
  static: np.ndarray | None,
  scalers: FittedScalers,
  codes: np.ndarray,
  split_rows: dict[str, np.ndarray],
  features,
  targets,
  has_targets: bool = True,
) -> SeriesData:
  """Scales the blocks and adds the calendar: the `SeriesData` of a validated table."""
  row_codes = None
  if scalers.scope == "series":
    row_codes = codes[table.row_series]
  date_column = spec.date_column or None
  dates = table.frame[date_column].to_numpy() if date_column else None
  known_parts = [transform(scalers.known_scaler, blocks["known"], row_codes)] if spec.known else []
  if spec.calendar:
    assert dates is not None
    known_parts.append(calendar_features(dates, spec.calendar))
  if has_targets:
    y_raw = blocks["targets"]
    y = transform(scalers.target_scaler, y_raw, row_codes)
  else:
    y_raw = np.full((len(table.frame), len(targets)), np.nan)
    y = y_raw.astype(np.float32)
  return SeriesData(
    x=transform(scalers.feature_scaler, blocks["features"], row_codes),
    y=y,
    y_raw=y_raw.astype(np.float32),
    dates=dates,
    feature_names=features,
    target_names=targets,
    lookback=spec.lookback,
    horizon=spec.horizon,
    split_rows=split_rows,
    scalers=scalers,
    source=str(table.path),
    offsets=table.offsets,
    series_ids=table.series_ids,
    series_codes=codes,
    known=np.concatenate(known_parts, axis=1) if known_parts else None,
    known_names=spec.known + calendar_names(spec.calendar),
    static=None if static is None else transform(scalers.static_scaler, static),
    has_targets=has_targets,
  )


def prepare_inference(
  spec: DataSpec, scalers: FittedScalers, *, path: str | os.PathLike | None = None
) -> SeriesData:
  """Prepares a NEW file with a finished run's scalers (for ``flaxlstm predict``).

  Nothing is fitted and nothing is split: each series has one range, ``split_rows["all"]``,
  all of its rows. Columns come from ``scalers`` (the ones the model was trained on), so
  the spec's ``features``/``target`` need not be repeated. The target columns may be
  absent (pure forecasting): then ``has_targets`` is False and ``y``/``y_raw`` are NaN. A
  long table may hold series the run never saw (a global model forecasts them too) unless
  the run scaled each series on its own.

  Use ``data.window_starts("all")`` for back-testing windows whose targets are in the
  file, and ``data.offsets[1:]`` as starts for the forecast of the ``horizon`` rows right
  after the end of each series.

  Args:
    spec: the run's data spec (``date_column``, ``id_column``, ``fill``, ``lookback``,
      ``horizon``, the covariates and, when ``path`` is None, ``path`` are read).
    scalers: fitted scalers, e.g. ``load_scalers(workdir / "scalers.json")``.
    path: the file to prepare; None means ``spec.path``.

  Raises:
    InputError: for a bad file or a series shorter than ``lookback`` rows.
  """
  resolved = io.data_file(path if path is not None else spec.path)
  features, targets = tuple(scalers.feature_names), tuple(scalers.target_names)
  columns = list(dict.fromkeys(features + spec.known + spec.static))
  # No constant check: a short inference file may legitimately hold a flat stretch.
  raw, kind = io.read_table(resolved)
  table, has_targets = _read(
    spec, resolved, raw, kind, columns, check_constant=False, optional=targets
  )
  del raw
  lengths = np.diff(table.offsets)
  if (lengths < spec.lookback).any():
    first = int(np.argmax(lengths < spec.lookback))
    which = (
      f"series {short(table.series_ids[first])} of {resolved}"
      if table.series_ids
      else str(resolved)
    )
    raise error(
      f"series too short: {which} has {lengths[first]} rows but data.lookback="
      f"{spec.lookback} rows of inputs are needed"
    )
  frame = table.frame
  blocks = {
    "features": frame[list(features)].to_numpy(np.float64),
    "targets": frame[list(targets)].to_numpy(np.float64) if has_targets else None,
    "known": frame[list(spec.known)].to_numpy(np.float64),
  }
  _check_saved(scalers, features, targets, spec)
  codes = _series_codes(scalers, table)
  split_rows = {"all": np.stack([table.offsets[:-1], table.offsets[1:]], axis=-1)}
  return _build(
    spec,
    table,
    blocks,
    _static_values(spec, table),
    scalers,
    codes,
    split_rows,
    features,
    targets,
    has_targets=has_targets,
  )
