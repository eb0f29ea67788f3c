"""Scalers fit on the training rows, and how a run saves them: as plain numbers.

A run's scalers are saved as `scalers.json`: the kind, the columns and each sklearn
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
  "none": None,
}
_SCALERS_FORMAT = "flaxlstm.scalers/2"  # /1 was a pickle

# What a fitted scaler is, as plain numbers: the statistics sklearn's `transform` and
# `inverse_transform` read, per kind. Saved as JSON and set back onto a fresh scaler of
# the same kind, so loading a run's scalers never executes anything (a pickle could).
_SCALER_STATE = {
  "standard": ("mean_", "var_", "scale_"),
  "robust": ("center_", "scale_"),
  "minmax": ("min_", "scale_", "data_min_", "data_max_", "data_range_"),
}
_SCALER_COUNTS = {"standard": ("n_samples_seen_",), "robust": (), "minmax": ("n_samples_seen_",)}


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
    payload = {
      "format": _SCALERS_FORMAT,
      "kind": self.kind,
      "feature_names": list(self.feature_names),
      "target_names": list(self.target_names),
      "features": _scaler_state(self.kind, self.feature_scaler),
      "targets": _scaler_state(self.kind, self.target_scaler),
    }
    return json.dumps(payload, indent=1, allow_nan=False) + "\n"

  def save(self, path: str | os.PathLike) -> None:
    """Writes ``to_json()`` atomically: a crash never leaves a half-written file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fileio.write_atomic(path, self.to_json())


def _scaler_state(kind: str, scaler: Any) -> dict[str, Any] | None:
  if scaler is None:
    return None
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
  names = {}
  for key in ("feature_names", "target_names"):
    value = payload.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(n, str) and n for n in value):
      raise error(f"{where}: {key} must be a non-empty list of column names")
    names[key] = tuple(value)
  scalers = {}
  for part, key in (("features", "feature_names"), ("targets", "target_names")):
    state = payload.get(part)
    if kind == "none" and state is not None:
      raise error(f"{where}: scaler 'none' has no {part} statistics")
    if part == "features" and kind != "none" and state is None:
      raise error(f"{where}: the {kind} feature statistics are missing")
    scalers[part] = (
      None if kind == "none" else _rebuild_scaler(kind, state, len(names[key]), f"{where}, {part}")
    )
  return FittedScalers(
    kind=kind,
    feature_scaler=scalers["features"],
    target_scaler=scalers["targets"],
    feature_names=names["feature_names"],
    target_names=names["target_names"],
  )


def make_scaler(kind: str) -> Any:
  """An unfitted sklearn scaler of `kind`, None for "none" (sklearn loads here, on first
  use, not when the module is imported)."""
  from sklearn import preprocessing

  name = SCALERS[kind]
  return None if name is None else getattr(preprocessing, name)()


def transform(scaler: Any, values: np.ndarray) -> np.ndarray:
  if scaler is None:
    return values.astype(np.float32)
  return scaler.transform(values).astype(np.float32)
