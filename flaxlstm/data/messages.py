"""One-line messages about bad input: the `InputError` they raise, and how they name values
and rows. A leaf of data/, so that io.py and dates.py both phrase errors the same way."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from flaxlstm.errors import InputError


def error(message: str) -> InputError:
  """Builds an InputError whose message is guaranteed to be one line."""
  return InputError(re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip())


def short(value: Any, limit: int = 40) -> str:
  """repr() of a value, cut short so a bad cell cannot flood the message."""
  if isinstance(value, np.generic):
    value = value.item()  # 5, not np.int64(5).
  text = repr(value)
  return text if len(text) <= limit else text[: limit - 3] + "..."


def list_names(names: Sequence[Any], limit: int = 12) -> str:
  """Comma-separated names, truncated: files can have thousands of columns."""
  shown = ", ".join(str(n) for n in list(names)[:limit])
  if len(names) > limit:
    shown += f", ... ({len(names) - limit} more)"
  return shown


def row_label(row: int, kind: str) -> str:
  """Names a row both as a 0-based data row and, for CSV, as the file line to open."""
  if kind == "csv":
    return f"row {row} (line {row + 2})"
  return f"row {row}"
