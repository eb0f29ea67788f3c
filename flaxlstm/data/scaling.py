"""Scalers fit on the training rows, and how a run saves them: as plain numbers.

Two scopes (``data.scaler_scope``): ``"global"``, one sklearn scaler per column block fit
on the training rows of every series; ``"series"``, each series of a panel scaled by its
own training rows (`SeriesScaler`: sklearn fit per series, kept as the affine map it is).

A run's scalers are saved as `scalers.json`: the kind, the columns, the series and each
scaler's fitted statistics, set back onto a fresh scaler of the same kind when loaded. So
loading a run's scalers never executes anything, which a pickle could.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from flaxlstm import fileio
from flaxlstm.data.io import error, short

# data.scaler: the sklearn class of each kind ("none": no scaling).
SCALERS = {
  "standard": "StandardScaler",
  "robust": "RobustScaler",
  "minmax": "MinMaxScaler",
  "maxabs": "MaxAbsScaler",  # Scale only (x / max |x|): positive data stays positive.
  "none": None,
}
_SCALERS_FORMAT = "flaxlstm.scalers/2"  # /1 was a pickle
# data.scaler_scope.
SCOPES = ("global", "series")

# What a fitted scaler is, as plain numbers: the statistics sklearn's `transform` and
# `inverse_transform` read, per kind. Saved as JSON and set back onto a fresh scaler of
# the same kind, so loading a run's scalers never executes anything (a pickle could).
_SCALER_STATE = {
  "standard": ("mean_", "var_", "scale_"),
  "robust": ("center_", "scale_"),
  "minmax": ("min_", "scale_", "data_min_", "data_max_", "data_range_"),
  "maxabs": ("max_abs_", "scale_"),
}
_SCALER_COUNTS = {
  "standard": ("n_samples_seen_",),
  "robust": (),
  "minmax": ("n_samples_seen_",),
  "maxabs": ("n_samples_seen_",),
}


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
    scope: ``"global"`` (sklearn scalers) or ``"series"`` (`SeriesScaler` per block).
    series_ids: a panel's series, in their row order (index = the model's series id);
      () for a wide table.
    known_names / known_scaler: user columns known in advance (``data.known``).
    static_names / static_scaler: per-series constant columns (``data.static``), scaled
      over the series by one global scaler.
  """

  kind: str
  feature_scaler: Any
  target_scaler: Any
  feature_names: tuple[str, ...]
  target_names: tuple[str, ...]
  scope: str = "global"
  series_ids: tuple[str, ...] = ()
  known_names: tuple[str, ...] = ()
  known_scaler: Any = None
  static_names: tuple[str, ...] = ()
  static_scaler: Any = None

  def to_json(self) -> str:
    """The scalers as JSON: kind, columns and each scaler's statistics (exact floats)."""
    payload = {
      "format": _SCALERS_FORMAT,
      "kind": self.kind,
      "feature_names": list(self.feature_names),
      "target_names": list(self.target_names),
      "features": _scaler_state(self.kind, self.feature_scaler),
      "targets": _scaler_state(self.kind, self.target_scaler),
    }
    if self.series_ids or self.known_names or self.static_names or self.scope != "global":
      # Written only when used, so a wide-table run's file is what it always was.
      payload.update(
        scope=self.scope,
        series=list(self.series_ids),
        known_names=list(self.known_names),
        known=_scaler_state(self.kind, self.known_scaler),
        static_names=list(self.static_names),
        static=_scaler_state(self.kind, self.static_scaler),
      )
    return json.dumps(payload, indent=1, allow_nan=False) + "\n"

  def save(self, path: str | os.PathLike) -> None:
    """Writes ``to_json()`` atomically: a crash never leaves a half-written file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fileio.write_atomic(path, self.to_json())


def _scaler_state(kind: str, scaler: Any) -> dict[str, Any] | None:
  if scaler is None:
    return None
  if isinstance(scaler, SeriesScaler):
    return {"center": scaler.center.tolist(), "scale": scaler.scale.tolist()}
  state = {
    name: np.asarray(getattr(scaler, name), np.float64).tolist() for name in _SCALER_STATE[kind]
  }
  state.update({name: int(getattr(scaler, name)) for name in _SCALER_COUNTS[kind]})
  return state


def _rebuild_scaler(kind: str, state: Any, n_columns: int, where: str) -> Any:
  """An sklearn scaler of `kind` with the saved statistics set; InputError if malformed."""
  if state is None:
    return None
  expected = set(_SCALER_STATE[kind]) | set(_SCALER_COUNTS[kind])
  if not isinstance(state, dict) or set(state) != expected:
    raise error(f"{where}: expected the {kind} statistics {sorted(expected)}")
  scaler = make_scaler(kind)
  for name in _SCALER_STATE[kind]:
    values = state[name]
    if (
      not isinstance(values, list)
      or len(values) != n_columns
      or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
      )
    ):
      raise error(f"{where}: {name} must be {n_columns} finite numbers")
    setattr(scaler, name, np.asarray(values, np.float64))
  for name in _SCALER_COUNTS[kind]:
    count = state[name]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
      raise error(f"{where}: {name} must be a positive integer")
    setattr(scaler, name, count)
  if np.any(scaler.scale_ == 0):
    raise error(f"{where}: scale_ has a zero")
  scaler.n_features_in_ = n_columns
  return scaler


def _rebuild_series_scaler(state: Any, n_series: int, n_columns: int, where: str) -> Any:
  if state is None:
    return None
  if not isinstance(state, dict) or set(state) != {"center", "scale"}:
    raise error(f"{where}: expected per-series 'center' and 'scale'")
  arrays = {}
  for name in ("center", "scale"):
    try:
      values = np.asarray(state[name], np.float64)
    except (TypeError, ValueError):
      values = np.zeros((0,))
    if values.shape != (n_series, n_columns) or not np.all(np.isfinite(values)):
      raise error(f"{where}: {name} must be {n_series} x {n_columns} finite numbers")
    arrays[name] = values
  if np.any(arrays["scale"] == 0):
    raise error(f"{where}: scale has a zero")
  return SeriesScaler(arrays["center"], arrays["scale"])


def _names(payload: dict, key: str, where: str, *, required: bool) -> tuple[str, ...]:
  value = payload.get(key, None if required else [])
  if (
    not isinstance(value, list)
    or (required and not value)
    or not all(isinstance(n, str) and n for n in value)
  ):
    what = "a non-empty list" if required else "a list"
    raise error(f"{where}: {key} must be {what} of {'column ' if required else ''}names")
  return tuple(value)


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
    raise error(
      f"{path} is a pickle, which flaxlstm no longer loads (unpickling can run "
      "code); re-create the run's scalers.json with `flaxlstm evaluate --workdir "
      f"{path.parent} --refit-scalers`"
    )
  if not path.exists():
    raise error(f"scalers file not found: {path}")
  payload = fileio.read_json(path, "scalers file")
  where = f"scalers file {path}"
  if not isinstance(payload, dict) or payload.get("format") != _SCALERS_FORMAT:
    raise error(f"{path} is not a flaxlstm scalers file (expected format {_SCALERS_FORMAT!r})")
  kind = payload.get("kind")
  if kind not in SCALERS:
    raise error(f"{where}: kind must be one of {', '.join(SCALERS)}, got {short(kind)}")
  scope = payload.get("scope", "global")
  if scope not in SCOPES:
    raise error(f"{where}: scope must be one of {', '.join(SCOPES)}, got {short(scope)}")
  names = {
    key: _names(payload, key, where, required=True) for key in ("feature_names", "target_names")
  }
  for key in ("series", "known_names", "static_names"):
    names[key] = _names(payload, key, where, required=False)
  if len(set(names["series"])) != len(names["series"]):
    raise error(f"{where}: series names a series twice")
  if scope == "series" and not names["series"]:
    raise error(f"{where}: scope 'series' needs the list of series")
  scalers: dict[str, Any] = {}
  for part, key in (
    ("features", "feature_names"),
    ("targets", "target_names"),
    ("known", "known_names"),
    ("static", "static_names"),
  ):
    state = payload.get(part)
    n_columns = len(names[key])
    if kind == "none" and state is not None:
      raise error(f"{where}: scaler 'none' has no {part} statistics")
    if not n_columns and state is not None:
      raise error(f"{where}: {part} has statistics but no columns to scale")
    if part in ("features", "known") and kind != "none" and n_columns and state is None:
      what = "feature" if part == "features" else part
      raise error(f"{where}: the {kind} {what} statistics are missing")
    if kind == "none" or not n_columns:
      scalers[part] = None
    elif scope == "series" and part != "static":
      scalers[part] = _rebuild_series_scaler(
        state, len(names["series"]), n_columns, f"{where}, {part}"
      )
    else:
      scalers[part] = _rebuild_scaler(kind, state, n_columns, f"{where}, {part}")
  return FittedScalers(
    kind=kind,
    feature_scaler=scalers["features"],
    target_scaler=scalers["targets"],
    feature_names=names["feature_names"],
    target_names=names["target_names"],
    scope=scope,
    series_ids=names["series"],
    known_names=names["known_names"],
    known_scaler=scalers["known"],
    static_names=names["static_names"],
    static_scaler=scalers["static"],
  )


def make_scaler(kind: str) -> Any:
  """An unfitted sklearn scaler of `kind`, None for "none" (sklearn loads here, on first
  use, not when the module is imported)."""
  from sklearn import preprocessing

  name = SCALERS[kind]
  return None if name is None else getattr(preprocessing, name)()


@dataclasses.dataclass(frozen=True, eq=False)
class SeriesScaler:
  """Each series scaled by its own training rows: ``x' = (x - center[s]) / scale[s]``.

  Every sklearn scaler flaxlstm offers is such an affine map, so a per-series scaler is
  fitted with sklearn, series by series (`fit`), and kept as its ``(n_series, n_columns)``
  center and scale: one gather per row, however many series.
  """

  center: np.ndarray
  scale: np.ndarray

  @classmethod
  def fit(cls, kind: str, blocks: list[np.ndarray]) -> SeriesScaler:
    """Fits a `kind` scaler on each series' training rows (`blocks[s]`, ``(n_s, C)``)."""
    centers, scales = [], []
    for block in blocks:
      fitted = make_scaler(kind).fit(block)
      if kind == "minmax":  # x * scale_ + min_ == (x - (-min_ / scale_)) / (1 / scale_)
        centers.append(-fitted.min_ / fitted.scale_)
        scales.append(1.0 / fitted.scale_)
      elif kind == "maxabs":
        centers.append(np.zeros_like(fitted.scale_))
        scales.append(fitted.scale_)
      else:
        centers.append(fitted.mean_ if kind == "standard" else fitted.center_)
        scales.append(fitted.scale_)
    return cls(np.asarray(centers, np.float64), np.asarray(scales, np.float64))

  def transform(self, values: np.ndarray, series: np.ndarray) -> np.ndarray:
    return (values - self.center[series]) / self.scale[series]

  def inverse_transform(self, values: np.ndarray, series: np.ndarray) -> np.ndarray:
    return values * self.scale[series] + self.center[series]


def transform(scaler: Any, values: np.ndarray, series: np.ndarray | None = None) -> np.ndarray:
  """Scales ``values (n, C)``; `series` (each row's series) is needed by a `SeriesScaler`."""
  if scaler is None:
    return values.astype(np.float32)
  if isinstance(scaler, SeriesScaler):
    assert series is not None
    return scaler.transform(values, series).astype(np.float32)
  return scaler.transform(values).astype(np.float32)


def inverse(scaler: Any, values: np.ndarray, series: np.ndarray | None = None) -> np.ndarray:
  """The inverse of `transform`, for ``values (n, C)``, as float32."""
  if scaler is None:
    return values.astype(np.float32)
  if isinstance(scaler, SeriesScaler):
    assert series is not None
    return scaler.inverse_transform(values.astype(np.float64), series).astype(np.float32)
  return scaler.inverse_transform(values.astype(np.float64)).astype(np.float32)
