"""A validated, split and scaled series (`SeriesData`), prepared from a `DataSpec`.

The flow: CSV/Parquet -> validated frame (io.py) -> row splits train/val/test -> scalers
fit on the train rows only (scaling.py) -> one float32 array of inputs and one of targets
for all rows -> window *start indices* per split (`SeriesData.window_starts`), which
windows.py gathers into batches.

The spec's values are checked once, by the schema; what is checked here needs the data:
columns that exist, splits that fit the file, series long enough for their windows.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from flaxlstm.config.schema import DataSpec
from flaxlstm.data import io
from flaxlstm.data.io import error, list_names
from flaxlstm.data.scaling import FittedScalers, make_scaler, transform

# data.split: how rows are split in time.
SPLITS = ("fractions", "rows", "ett")
# Informer's ETT protocol: 12/4/4 months of 30 days of hourly rows.
ETT_BOUNDS = {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)}


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
    return FittedScalers(
      kind=self.scaler_kind,
      feature_scaler=self.feature_scaler,
      target_scaler=self.target_scaler,
      feature_names=self.feature_names,
      target_names=self.target_names,
    )

  def save_scalers(self, path: str | os.PathLike) -> None:
    """Saves the fitted scalers and column names atomically (see ``load_scalers``)."""
    self.scalers.save(path)

  def inverse_targets(self, y_scaled: Any) -> np.ndarray:
    """Maps scaled targets of shape ``(..., n_targets)`` back to original units.

    Accepts any array-like (including jax arrays, via ``np.asarray``); returns float32.
    """
    y_scaled = np.asarray(y_scaled)
    if y_scaled.ndim == 0 or y_scaled.shape[-1] != self.n_targets:
      raise ValueError(
        f"expected a last axis of {self.n_targets} targets, got shape {y_scaled.shape}"
      )
    if self.target_scaler is None:
      return y_scaled.astype(np.float32)
    flat = y_scaled.reshape(-1, self.n_targets).astype(np.float64)
    return self.target_scaler.inverse_transform(flat).reshape(y_scaled.shape).astype(np.float32)

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
      raise error(f"unknown split {split!r} (this data has: {', '.join(self.bounds)})")
    start, stop = self.bounds[split]
    first = start + self.lookback if split == "train" else max(start, self.lookback)
    last = stop - self.horizon  # inclusive
    if last < first:
      return np.zeros((0,), np.int64)
    return np.arange(first, last + 1, dtype=np.int64)


def split_bounds(spec: DataSpec, n_rows: int) -> dict[str, tuple[int, int]]:
  """The train/val/test row ranges of `spec.split` for a file of `n_rows` rows."""
  if spec.split == "ett":
    if n_rows < ETT_BOUNDS["test"][1]:
      raise error(
        f"data.split='ett' needs at least {ETT_BOUNDS['test'][1]} rows "
        f"(12/4/4 months of 30 days, hourly), the file has {n_rows}"
      )
    return dict(ETT_BOUNDS)
  if spec.split == "rows":
    ends = tuple(spec.split_rows)
    if len(ends) == 2:
      ends += (n_rows,)  # Without test_end the test split runs to the end of the file.
    if not 0 < ends[0] < ends[1] < ends[2] <= n_rows:
      raise error(
        f"data.split_rows must satisfy 0 < train_end < val_end < test_end <= "
        f"{n_rows} (the number of rows), got {ends}"
      )
  else:
    train_end = int(n_rows * spec.split_fractions[0])
    val_end = train_end + int(n_rows * spec.split_fractions[1])
    ends = (train_end, val_end, val_end + int(n_rows * spec.split_fractions[2]))
  return {"train": (0, ends[0]), "val": (ends[0], ends[1]), "test": (ends[1], ends[2])}


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


def _columns(
  spec: DataSpec, frame_columns: Sequence[str], date_column: str | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
  features = spec.features or tuple(c for c in frame_columns if c != date_column)
  if date_column and date_column in features + spec.target:
    raise error(
      f"date column {date_column!r} cannot be a feature or target; "
      "check data.features / data.target"
    )
  return features, spec.target


def prepare(spec: DataSpec, *, scalers: FittedScalers | None = None) -> SeriesData:
  """Loads, validates, splits and scales the series `spec` describes.

  Scalers (one for the feature columns, a separate one for the target columns) are fitted
  on the train rows only, so no statistic of validation or test data leaks into training.

  Args:
    spec: the data spec (see `flaxlstm.config.DataSpec`).
    scalers: already fitted scalers (e.g. from ``load_scalers`` of a finished run) to use
      instead of fitting new ones; their column names must match the spec's. Splits are
      computed exactly as without them.

  Raises:
    InputError: for any problem with the file.
  """
  date_column = spec.date_column or None
  path = io.data_file(spec.path)
  raw, kind = io.read_table(path)
  features, targets = _columns(spec, list(raw.columns), date_column)
  for key, names in (("data.features", features), ("data.target", targets)):
    for name in names:
      if name not in raw.columns:
        # Checked here, not only in validate_frame, so the message names the config key.
        raise error(
          f"column {name!r} ({key}) not found in {path} (columns: {list_names(list(raw.columns))})"
        )
  columns = list(dict.fromkeys(features + targets))
  frame = io.validate_frame(
    raw, path, kind, date_column=date_column, columns=columns, fill=spec.fill, check_constant=True
  )
  n_rows = len(frame)
  bounds = split_bounds(spec, n_rows)
  _check_lengths(bounds, spec, n_rows)

  x_raw = frame[list(features)].to_numpy(np.float64)
  y_raw = frame[list(targets)].to_numpy(np.float64)
  scaler_kind = spec.scaler
  if scalers is None:
    train = slice(*bounds["train"])
    feature_scaler = make_scaler(scaler_kind)
    target_scaler = make_scaler(scaler_kind) if spec.scale_target else None
    if feature_scaler is not None:
      feature_scaler.fit(x_raw[train])
    if target_scaler is not None:
      target_scaler.fit(y_raw[train])
  else:
    if (tuple(scalers.feature_names), tuple(scalers.target_names)) != (features, targets):
      raise error(
        f"the saved scalers were fitted on features "
        f"[{list_names(scalers.feature_names)}] and targets "
        f"[{list_names(scalers.target_names)}] but data.features/data.target "
        f"select [{list_names(features)}] and [{list_names(targets)}]"
      )
    feature_scaler, target_scaler = scalers.feature_scaler, scalers.target_scaler
    scaler_kind = scalers.kind

  return SeriesData(
    x=transform(feature_scaler, x_raw),
    y=transform(target_scaler, y_raw),
    y_raw=y_raw.astype(np.float32),
    dates=frame[date_column].to_numpy() if date_column else None,
    feature_names=features,
    target_names=targets,
    lookback=spec.lookback,
    horizon=spec.horizon,
    bounds=bounds,
    feature_scaler=feature_scaler,
    target_scaler=target_scaler,
    scaler_kind=scaler_kind,
    source=str(path),
  )


def prepare_inference(
  spec: DataSpec, scalers: FittedScalers, *, path: str | os.PathLike | None = None
) -> SeriesData:
  """Prepares a NEW file with a finished run's scalers (for ``flaxlstm predict``).

  Nothing is fitted and nothing is split: the result has one range ``bounds["all"] =
  (0, n_rows)``. Columns come from ``scalers`` (the ones the model was trained on), so
  the spec's ``features``/``target`` need not be repeated. The target columns may be
  absent (pure forecasting): then ``has_targets`` is False and ``y``/``y_raw`` are NaN.

  Use ``data.window_starts("all")`` for back-testing windows whose targets are in the
  file, and ``windows.gather_inputs(data, np.array([data.n_rows]))`` for the forecast of
  the ``horizon`` rows right after the end of the file.

  Args:
    spec: the run's data spec (``date_column``, ``fill``, ``lookback``, ``horizon`` and,
      when ``path`` is None, ``path`` are read).
    scalers: fitted scalers, e.g. ``load_scalers(workdir / "scalers.json")``.
    path: the file to prepare; None means ``spec.path``.

  Raises:
    InputError: for a bad file or one shorter than ``lookback`` rows.
  """
  date_column = spec.date_column or None
  resolved = io.data_file(path if path is not None else spec.path)
  raw, kind = io.read_table(resolved)
  features, targets = tuple(scalers.feature_names), tuple(scalers.target_names)
  has_targets = all(t in raw.columns for t in targets)
  columns = list(dict.fromkeys(features + (targets if has_targets else ())))
  # No constant check: a short inference file may legitimately hold a flat stretch.
  frame = io.validate_frame(
    raw,
    resolved,
    kind,
    date_column=date_column,
    columns=columns,
    fill=spec.fill,
    check_constant=False,
  )
  n_rows = len(frame)
  if n_rows < spec.lookback:
    raise error(
      f"series too short: {resolved} has {n_rows} rows but data.lookback="
      f"{spec.lookback} rows of inputs are needed"
    )
  x_raw = frame[list(features)].to_numpy(np.float64)
  if has_targets:
    y_raw = frame[list(targets)].to_numpy(np.float64)
    y = transform(scalers.target_scaler, y_raw)
  else:
    y_raw = np.full((n_rows, len(targets)), np.nan)
    y = y_raw.astype(np.float32)
  return SeriesData(
    x=transform(scalers.feature_scaler, x_raw),
    y=y,
    y_raw=y_raw.astype(np.float32),
    dates=frame[date_column].to_numpy() if date_column else None,
    feature_names=features,
    target_names=targets,
    lookback=spec.lookback,
    horizon=spec.horizon,
    bounds={"all": (0, n_rows)},
    feature_scaler=scalers.feature_scaler,
    target_scaler=scalers.target_scaler,
    scaler_kind=scalers.kind,
    source=str(resolved),
    has_targets=has_targets,
  )
