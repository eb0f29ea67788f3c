"""Validated, split and scaled series (`SeriesData`), prepared from a `DataSpec`.

The flow: CSV/Parquet -> a validated table (io.py, table.py), wide (one series whose
columns are the features and targets) or long (one row per (series, date),
`data.id_column`) -> every series' rows one after another in one array -> chronological
splits, per series (splits.py) -> scalers fit on the train rows only (scaling.py: one for
all series, or one per series) -> float32 inputs, targets and known-in-advance covariates
(calendar.py) for every row, static covariates per series -> a window index per split
(`SeriesData.window_index`, never materialized), which windows.py gathers into batches.

The spec's values are checked once, by the schema; what is checked here needs the data:
columns that exist, splits that fit the file, series long enough for their windows.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Sequence

import numpy as np

from flaxlstm.config.specs import DataSpec
from flaxlstm.data import checks, io, splits, steps
from flaxlstm.data.calendar import calendar_features, calendar_names
from flaxlstm.data.io import error, list_names, short
from flaxlstm.data.scaling import FittedScalers, SeriesScaler, inverse, make_scaler
from flaxlstm.data.table import (
  Table,
  check_named,
  feature_columns,
  read,
  resolve_columns,
  static_values,
  validate_table,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class WindowIndex:
  """The windows of one split: series ``s`` has the window starts ``first[s]``, ...,
  ``first[s] + counts[s] - 1`` (rows of the data's arrays).

  Position ``p`` (0 <= p < len) numbers the windows series by series; `rows` maps
  positions to window starts with one binary search over the series, so nothing of size
  ``len`` is ever built unless asked for (`all_rows`).
  """

  first: np.ndarray
  counts: np.ndarray
  _ends: np.ndarray = dataclasses.field(init=False, repr=False)

  def __post_init__(self) -> None:
    object.__setattr__(self, "_ends", np.cumsum(self.counts, dtype=np.int64))

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  @property
  def n_series(self) -> int:
    return len(self.first)

  def rows(self, positions: Any) -> np.ndarray:
    """Window starts (int64) at `positions` of this index."""
    positions = np.asarray(positions, dtype=np.int64)
    if self.n_series == 1:
      return self.first[0] + positions
    series = np.searchsorted(self._ends, positions, side="right")
    return self.first[series] + positions - (self._ends[series] - self.counts[series])

  def all_rows(self) -> np.ndarray:
    return self.rows(np.arange(len(self), dtype=np.int64))


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
    start_padding: windows may start after one row of their series, the inputs before
      its first row repeating that row (``data.start_padding``; `input_rows`).
    padded: bool ``(n_series,)``, the series whose windows start so though
      `start_padding` is off (``data.pad_short``: too short otherwise), or None.
    y_filled: bool ``(n_rows, n_targets)``, for data from ``prepare_inference`` with
      targets: the target values the file did not hold (filled), else None.
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
  start_padding: bool = False
  padded: np.ndarray | None = None
  y_filled: np.ndarray | None = None

  @functools.cached_property
  def frequencies(self) -> dict[str, int]:
    """How many series step by each frequency (`steps.frequencies`; {} without dates)."""
    return {} if self.dates is None else steps.frequencies(self.dates, self.offsets)

  @property
  def context(self) -> np.ndarray:
    """Per series, the observed rows a window's inputs need: the lookback, or 1 where its
    start is padded (`start_padding`, `padded`)."""
    pad = self.start_padding | (False if self.padded is None else self.padded)
    return np.where(np.broadcast_to(pad, (self.n_series,)), 1, self.lookback)

  def input_rows(self, starts: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Rows ``starts[:, None] + steps`` (``steps`` counted from each window's start); where
    starts are padded, a row before its window's series begins is that series' first row
    (edge padding), so no window reads another series (a no-op for the others, whose
    windows never reach before their series)."""
    rows = np.asarray(starts, np.int64)[:, None] + np.asarray(steps, np.int64)
    if self.start_padding or self.padded is not None:
      first = self.offsets[self.row_series(np.asarray(starts) - 1)]
      rows = np.maximum(rows, first[:, None])
    return rows

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

    Window ``i`` has inputs ``[i - lookback, i)`` (with `start_padding`, the rows before
    its series' first repeat that row, and one observed row suffices) and targets
    ``[i, i + horizon)``. Train
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
      first = rows[:, 0] + self.context
    else:
      first = np.maximum(rows[:, 0], self.offsets[:-1] + self.context)
    counts = np.maximum(rows[:, 1] - self.horizon - first + 1, 0)
    return WindowIndex(first.astype(np.int64), counts.astype(np.int64))

  def window_starts(self, split: str) -> np.ndarray:
    """`window_index(split)` as an int64 array of window starts, increasing."""
    return self.window_index(split).all_rows()


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
  raw, kind = read(spec, path)
  spec = resolve_columns(spec, raw, path, kind)  # data.features / data.target = ("*",)
  features, targets = feature_columns(spec, list(raw.columns))
  check_named(spec, list(raw.columns), path, features, targets)
  columns = list(dict.fromkeys(features + targets + spec.known + spec.static))
  file_columns = list(raw.columns)
  table, _ = validate_table(spec, path, raw, kind, columns, check_constant=True)
  # What data.fill made up, by column, in the file's rows (a long table's: sorted below).
  missing = checks.missing(raw, columns) if spec.fill != "none" else {}
  del raw  # the validated table holds what is needed; a large file is not kept twice
  date_column = spec.date_column or None
  dates = table.frame[date_column].to_numpy() if date_column else None
  lengths = np.diff(table.offsets)
  if spec.split == "auto":
    spec = splits.resolve_split(spec, file_columns, dates, len(table.frame))
    log.info(f"data.split='auto': {spec.split!r} for {path}")
  if spec.id_column:
    ends = splits.panel_ends(spec, lengths, dates, table.offsets)
    drop, padded = splits.screen_series(spec, ends, lengths, table.series_ids, path)
    if drop.any():
      table, ends, padded = table.select(~drop), ends[~drop], padded[~drop]
      lengths = np.diff(table.offsets)
      dates = table.frame[date_column].to_numpy() if date_column else None
  else:
    bounds = splits.split_bounds(spec, len(table.frame), dates)
    padded = np.array([splits.check_lengths(bounds, spec, len(table.frame), path)])
    ends = np.array([[bounds[k][1] for k in splits.SPLIT_NAMES]], np.int64)
  begin = table.offsets[:-1, None]
  # Each series' first train row: its first row, or its last `recent_train_rows` train rows
  # (never fewer than one window's).
  train_begin = np.zeros((len(ends), 1), np.int64)
  if spec.recent_train_rows:
    window = np.where(padded, 1, splits.context(spec)) + spec.horizon
    train_begin[:, 0] = np.maximum(ends[:, 0] - np.maximum(spec.recent_train_rows, window), 0)
  local = np.concatenate([train_begin, ends], axis=1)
  split_rows = {k: begin + local[:, i : i + 2] for i, k in enumerate(splits.SPLIT_NAMES)}
  if table.file_rows is not None:  # the rows as the table holds them (by series and date)
    missing = {c: steps.apply_rows(m, table.file_rows, True) for c, m in missing.items()}
  checks.warn_filled_splits(
    missing, split_rows, spec, targets, path, table.series_ids, table.file_rows
  )

  frame = table.frame
  blocks = {
    "features": frame[list(features)].to_numpy(np.float64),
    "targets": frame[list(targets)].to_numpy(np.float64),
    "known": frame[list(spec.known)].to_numpy(np.float64),
  }
  static = static_values(spec, table)
  if scalers is None:
    train_mask = np.zeros(len(frame), bool)
    for a, b in split_rows["train"]:
      train_mask[a:b] = True
    checks.train_targets(blocks["targets"], train_mask, targets, table, split_rows["train"])
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
  return _build(
    spec, table, blocks, static, scalers, codes, split_rows, features, targets, padded=padded
  )


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


def _series_codes(scalers: FittedScalers, table: Table) -> np.ndarray:
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
  table: Table,
  blocks: dict[str, np.ndarray],
  static: np.ndarray | None,
  scalers: FittedScalers,
  codes: np.ndarray,
  split_rows: dict[str, np.ndarray],
  features,
  targets,
  has_targets: bool = True,
  padded: np.ndarray | None = None,
) -> SeriesData:
  """Scales the blocks and adds the calendar: the `SeriesData` of a validated table;
  `padded`: the series whose start is padded (`data.pad_short`)."""
  row_codes = None
  if scalers.scope == "series":
    row_codes = codes[table.row_series]
  date_column = spec.date_column or None
  dates = table.frame[date_column].to_numpy() if date_column else None

  def scaled(scaler: Any, block: np.ndarray, names: Sequence[str]) -> np.ndarray:
    return checks.scaled(scaler, block, names, np.arange(len(block)), row_codes, spec, table)

  known_parts = [scaled(scalers.known_scaler, blocks["known"], spec.known)] if spec.known else []
  if spec.calendar:
    assert dates is not None
    known_parts.append(calendar_features(dates, spec.calendar))
  if has_targets:
    y_raw = blocks["targets"]
    y = scaled(scalers.target_scaler, y_raw, targets)
  else:
    y_raw = np.full((len(table.frame), len(targets)), np.nan)
    y = y_raw.astype(np.float32)
  return SeriesData(
    x=scaled(scalers.feature_scaler, blocks["features"], features),
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
    static=None
    if static is None  # one row per series, scaled over the series: named by its first row
    else checks.scaled(
      scalers.static_scaler, static, spec.static, table.offsets[:-1], None, spec, table
    ),
    has_targets=has_targets,
    start_padding=spec.start_padding,
    padded=None if padded is None or not padded.any() else padded,
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
  raw, kind = read(spec, resolved)
  table, has_targets = validate_table(
    spec, resolved, raw, kind, columns, check_constant=False, optional=targets
  )
  filled = _filled_targets(raw, table, targets) if has_targets else None
  del raw
  lengths = np.diff(table.offsets)
  # With data.pad_short, a series shorter than the lookback is padded here too.
  padded = lengths < spec.lookback if spec.pad_short else None
  too_short = lengths < (1 if spec.pad_short else splits.context(spec))
  if too_short.any():
    first = int(np.argmax(too_short))
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
  data = _build(
    spec,
    table,
    blocks,
    static_values(spec, table),
    scalers,
    codes,
    split_rows,
    features,
    targets,
    has_targets=has_targets,
    padded=padded,
  )
  return dataclasses.replace(data, y_filled=filled)


def _filled_targets(raw: Any, table: Table, targets: Sequence[str]) -> np.ndarray:
  """`(rows, n_targets)` bool: which target values of the table the file did not hold
  (made up by data.fill, or at a date data.missing_dates='fill' inserted)."""
  missing = checks.missing(raw, targets)
  rows = table.file_rows
  return np.stack(
    [missing[c] if rows is None else steps.apply_rows(missing[c], rows, True) for c in targets],
    axis=1,
  )
