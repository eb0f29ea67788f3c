"""The spec's columns of a freshly read file, validated into a `Table`.

io.py reads and validates files; this module knows the spec: which columns are inputs,
targets and covariates (`resolve_columns` for `("*",)`, every numeric column;
`feature_columns`, `check_named`), a wide or a long table
(`validate_table`: every series' rows one after another, in time order), and the static
covariates of each series (`static_values`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from flaxlstm.config.specs import ALL_NUMERIC, DataSpec
from flaxlstm.data import io
from flaxlstm.data.io import error, list_names, row_label, short

log = logging.getLogger(__name__)
# What pandas calls a column whose header cell is blank.
BLANK_HEADER = re.compile(r"Unnamed: \d+")


def numeric_columns(spec: DataSpec, raw: pd.DataFrame, path: Any, kind: str) -> tuple[str, ...]:
  """The columns `data.features` / `data.target` = ("*",) stand for, in file order.

  Every column of the freshly read `raw` that holds numbers, but the date, id, known and
  static columns: a numeric (or boolean) column with at least one value, or a text column
  whose every value reads as a number (numbers a Parquet file stores as text). A column
  without any number (names, codes, a second date column, an empty column) is not an
  input, nor is one whose header is blank (the row numbers `to_csv` writes). One that
  mixes numbers and text (a CSV column with a stray word) is refused, naming the first
  cell that is not a number: left out, its numbers would silently stop being read.
  """
  taken = {spec.date_column, spec.id_column, *spec.known, *spec.static}
  out = []
  for name in raw.columns:
    if name in taken:
      continue
    if BLANK_HEADER.fullmatch(name):
      # pandas' name for a header cell left blank: above all the row numbers that
      # `DataFrame.to_csv` writes unless told `index=False`. As a feature and target it
      # would be a counter the model forecasts and the metrics average in.
      log.info(f"data.features / data.target = '*': left out {name!r} of {path} (no header)")
      continue
    column = raw[name]
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
      if column.notna().any():
        out.append(name)
      continue
    if not pd.api.types.is_object_dtype(column) and not pd.api.types.is_string_dtype(column):
      continue  # dates, durations, categories: not numbers
    numbers = pd.to_numeric(column, errors="coerce")
    if not numbers.notna().any():
      continue
    text = np.flatnonzero((numbers.isna() & column.notna()).to_numpy())
    if text.size:
      row = int(text[0])
      raise error(
        f"column {name!r} of {path} mixes numbers and text ({short(column.iloc[row])} at "
        f"{row_label(row, kind)}); data.features / data.target = '*' read every numeric "
        "column: fix the cell, or name the columns in data.features and data.target"
      )
    out.append(name)
  return tuple(out)


def resolve_columns(spec: DataSpec, raw: pd.DataFrame, path: Any, kind: str) -> DataSpec:
  """`spec` with `data.features` / `data.target` = ("*",) replaced by the numeric columns
  of the freshly read `raw` (`numeric_columns`); other values are kept as they are."""
  wanted = (ALL_NUMERIC,)
  if wanted not in (spec.features, spec.target):
    return spec
  numeric = numeric_columns(spec, raw, path, kind)
  if not numeric:
    keys = [k for k in ("features", "target") if getattr(spec, k) == wanted]
    but = [
      f"the {what} column {name!r}"
      for what, name in (("date", spec.date_column), ("id", spec.id_column))
      if name
    ]
    raise error(
      f"{' and '.join('data.' + k for k in keys)}='*' stand{'s' if len(keys) == 1 else ''} "
      f"for every numeric column of {path}{' but ' + ' and '.join(but) if but else ''}, and "
      f"it has none (columns: {list_names(list(raw.columns))})"
    )
  return dataclasses.replace(
    spec,
    features=numeric if spec.features == wanted else spec.features,
    target=numeric if spec.target == wanted else spec.target,
  )


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
    features = tuple(c for c in frame_columns if c not in taken and not BLANK_HEADER.fullmatch(c))
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
  # The file row of each row (a long table is sorted by series and date; -1: a date that
  # data.missing_dates='fill' inserted); None: the same.
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
      missing_dates=spec.missing_dates,
      freq=spec.freq,
    )
    return Table(frame, offsets, tuple(ids), path, file_rows), present
  frame, inserted = io.validate_frame(
    raw,
    path,
    kind,
    date_column=date_column,
    columns=wanted,
    fill=spec.fill,
    check_constant=check_constant,
    date_format=spec.date_format,
    missing_dates=spec.missing_dates,
    freq=spec.freq,
  )
  return Table(frame, np.array([0, len(frame)], np.int64), (), path, inserted), present


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
