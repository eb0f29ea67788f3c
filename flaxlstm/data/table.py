"""The spec's columns of a freshly read file, validated into a `Table`.

io.py reads and validates files; this module knows the spec: which columns are inputs,
targets and covariates (`feature_columns`, `check_named`), a wide or a long table
(`validate_table`: every series' rows one after another, in time order), and the static
covariates of each series (`static_values`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from flaxlstm.config.specs import DataSpec
from flaxlstm.data import io
from flaxlstm.data.io import error, list_names, short


def feature_columns(
  spec: DataSpec, frame_columns: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """The input and target columns of a table with `frame_columns`."""
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
class Table:
  """A validated table, every series' rows one after another in time order."""

  frame: pd.DataFrame
  offsets: np.ndarray
  series_ids: tuple[str, ...]
  path: Any
  # The file row of each row (a long table is sorted by series and date); None: the same.
  file_rows: np.ndarray | None = None

  @property
  def row_series(self) -> np.ndarray:
    return np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int32), np.diff(self.offsets))

  def select(self, keep: np.ndarray) -> Table:
    """Only the series where `keep` is True."""
    lengths = np.diff(self.offsets)
    rows = np.repeat(keep, lengths)
    return Table(
      self.frame[rows].reset_index(drop=True),
      np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64),
      tuple(i for i, k in zip(self.series_ids, keep) if k),
      self.path,
      None if self.file_rows is None else self.file_rows[rows],
    )


def read(spec: DataSpec, path: Any) -> tuple[pd.DataFrame, str]:
  """The file as read for `spec`: a long table's ids kept as text, as the file writes them."""
  return io.read_table(path, text_columns=(spec.id_column,) if spec.id_column else ())


def validate_table(
  spec: DataSpec,
  path: Any,
  raw: pd.DataFrame,
  kind: str,
  columns: list[str],
  *,
  check_constant: bool,
  optional: Sequence[str] = (),
) -> tuple[Table, bool]:
  """Validates the freshly read `raw` as the spec's wide or long table.

  `optional` columns (an inference file's targets) may be absent: the second value says
  whether they are all there.
  """
  date_column = spec.date_column or None
  present = all(c in raw.columns for c in optional)
  wanted = list(dict.fromkeys(columns + (list(optional) if present else [])))
  if spec.id_column:
    frame, offsets, ids, file_rows = io.validate_long(
      raw,
      path,
      kind,
      id_column=spec.id_column,
      date_column=date_column,
      columns=wanted,
      fill=spec.fill,
      check_constant=check_constant,
      date_format=spec.date_format,
    )
    return Table(frame, offsets, tuple(ids), path, file_rows), present
  frame = io.validate_frame(
    raw,
    path,
    kind,
    date_column=date_column,
    columns=wanted,
    fill=spec.fill,
    check_constant=check_constant,
    date_format=spec.date_format,
  )
  return Table(frame, np.array([0, len(frame)], np.int64), (), path), present


def check_named(spec: DataSpec, raw_columns: Sequence[str], path: Any, features, targets) -> None:
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


def static_values(spec: DataSpec, table: Table) -> np.ndarray | None:
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
