"""Checks of a table that need its splits or its scalers (series.py runs them).

io.py checks each cell and column of a file on its own; what only shows once the rows are
split and scaled is here: a target constant over the training rows (`train_targets`), a
split whose values `data.fill` made up entirely (`warn_filled_splits`) and a value that
scaling takes past float32's range (`scaled`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from flaxlstm.config.specs import DataSpec
from flaxlstm.data import io
from flaxlstm.data.io import error, short
from flaxlstm.data.scaling import transform
from flaxlstm.data.table import Table

log = logging.getLogger(__name__)


def train_targets(
  values: np.ndarray, train: np.ndarray, targets: Sequence[str], table: Table, rows: np.ndarray
) -> None:
  """Refuses a target constant over the training rows (`train`: a row mask; `rows`: each
  series' training rows). io.py refuses a column constant everywhere; one constant only
  where the model learns leaves nothing to learn and a zero spread to scale by, and
  every model, the naive forecast included, scores 0 wherever the constant goes on."""
  train_values = values[train]
  if not len(train_values):
    return
  flat = np.flatnonzero(np.all(train_values == train_values[:1], axis=0))
  if not flat.size:
    return
  c = int(flat[0])
  where = (
    f"the training rows of every series of {table.path}"
    if table.series_ids
    else f"the training rows of {table.path} ({io.file_row_label(int(rows[0, 0]), table.path)} to "
    f"{io.file_row_label(int(rows[0, 1]) - 1, table.path)})"
  )
  raise error(
    f"target column {targets[c]!r} is constant over {where}: every value is "
    f"{train_values[0, c]:g}, so there is nothing to learn; check data.target and data.split"
  )


def missing(raw: pd.DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
  """Each column's missing cells (NaN or inf: what data.fill fills), before the fill.
  Read from the file's frame: the validated table holds the filled values only."""
  return {
    c: ~np.isfinite(pd.to_numeric(raw[c], errors="coerce").to_numpy(np.float64)) for c in columns
  }


def warn_filled_splits(
  missing: dict[str, np.ndarray],
  split_rows: dict[str, np.ndarray],
  spec: DataSpec,
  targets: Sequence[str],
  path: Any,
  series_ids: Sequence[str] = (),
  file_rows: np.ndarray | None = None,
) -> None:
  """Warns, in one line, when data.fill made up every value of a column in a split of a
  series (`missing`: each column's missing cells, in the table's rows; `split_rows`: each
  split's `(series, 2)` row ranges): a val or test target so filled scores every model
  against the fill, not against observations. `file_rows`: the file row of each table row
  (-1: a date data.missing_dates='fill' inserted), to name a wide table's rows."""
  filled = [
    (split, column, s, int(a), int(b))
    for split, rows in split_rows.items()
    for column, mask in missing.items()
    for s, (a, b) in enumerate(rows)
    if b > a and mask[a:b].all()
  ]
  if not filled:
    return
  split, column, s, a, b = filled[0]
  role = "target" if column in targets else "input"
  effect = (
    f"{split} metrics are scored against filled values, not observations"
    if role == "target" and split != "train"
    else f"the model sees only filled values of it in the {split} split"
  )
  if series_ids:  # a long table: its rows are sorted, so the series names the place
    where = f"series {short(series_ids[s])} of {path}"
  else:
    first, last = a, b - 1
    if file_rows is not None:  # the file's rows around the range (inserted dates have none)
      held = file_rows[a:b][file_rows[a:b] >= 0]
      first, last = (int(held[0]), int(held[-1])) if held.size else (first, last)
    where = f"{path} ({io.file_row_label(first, path)} to {io.file_row_label(last, path)})"
  others = [
    f"{c!r} in {sp}" + (f" of {short(series_ids[k])}" if series_ids else "")
    for sp, c, k, *_ in filled[1:4]
  ]
  more = "; also " + ", ".join(others) if others else ""
  if len(filled) > 4:
    more += f" and {len(filled) - 4} more"
  log.warning(
    f"data.fill={spec.fill!r} filled all {b - a} values of {role} column {column!r} in the "
    f"{split} split of {where}: {effect}{more}"
  )


def scaled(
  scaler: Any,
  block: np.ndarray,
  names: Sequence[str],
  rows: np.ndarray,
  codes: np.ndarray | None,
  spec: DataSpec,
  table: Table,
) -> np.ndarray:
  """`transform(scaler, block, codes)`, refusing a value that scaling takes past float32's
  range: a column whose training rows barely vary is divided by their tiny spread, and a
  later value far from them would be inf in the model's inputs or targets. `rows`: the
  table row of each row of `block` (a series' first row for the static columns)."""
  with np.errstate(over="ignore"):  # the cast's overflow warning: refused below instead
    out = transform(scaler, block, codes)
  bad = np.argwhere(np.isinf(out))
  if not bad.size:
    return out
  i, c = (int(v) for v in bad[0])
  row = int(rows[i])
  if table.series_ids:  # a long table is sorted: name the series and its date, not a row
    s = int(np.searchsorted(table.offsets, row, side="right") - 1)
    date_column = spec.date_column or None
    at = (
      str(table.frame[date_column].iloc[row])
      if date_column
      else f"its row {row - int(table.offsets[s])}"
    )
    where = f"series {short(table.series_ids[s])} at {at}"
  else:
    where = io.file_row_label(row, table.path)
  raise error(
    f"value {block[i, c]:g} in column {names[c]!r} of {table.path} at {where} overflows "
    f"float32 once scaled by data.scaler={spec.scaler!r} fitted on the training rows (they "
    "vary too little next to it); rescale the column or choose another data.scaler"
  )
