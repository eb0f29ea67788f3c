"""A date column's timestamps, read one way for the whole column.

pandas, given no format, guesses one from the first value; told to fall back value by value
(``format="mixed"``) it reads '02/01/2020' month-first and '13/01/2020' day-first in the
same column, and a long table sorted by such dates is silently shuffled. Here a column has
one format: ``data.date_format`` when set, else the one pandas guesses from the first
value, month-first or day-first, whichever every value fits (ISO 8601 variants, such as a
fraction of a second on some rows, are one reading). A column that both readings fit but
that they date differently is refused, naming ``data.date_format``; so are missing
stamps, numbers, and a mix of timezone-aware and naive stamps. Aware stamps become UTC.

`check_file_order` is the long table's guard against a misread that sorting would hide.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:
  from pandas.tseries.api import guess_datetime_format
except ImportError:  # pandas < 2.2, where it was not public yet
  from pandas._libs.tslibs.parsing import guess_datetime_format

from flaxlstm.data.messages import error, row_label, short

# Strings that stand for a missing stamp besides the cells pandas reads as NaN.
_MISSING = ("NaT", "nat", "NAT")


def parse_dates(
  raw: pd.Series, path: Path, column: str, kind: str, *, date_format: str = ""
) -> np.ndarray:
  """Every row of `raw` as naive ``datetime64[ns]`` (aware stamps in UTC), in file order.

  Raises:
    InputError: a missing stamp, numbers, a value that does not parse (or does not fit
      the column's format or `date_format`), an ambiguous day/month order, or aware and
      naive stamps in one column; the message names the file, column, row and value.
  """
  where = f"in date column {column!r} of {path}"
  typed = pd.api.types.is_datetime64_any_dtype(raw) or pd.api.types.is_numeric_dtype(raw)
  text = raw if typed else raw.astype(str).str.strip()
  missing = raw.isna() | raw.isin(_MISSING) | (False if typed else text.eq(""))
  rows = np.flatnonzero(missing.to_numpy())
  if rows.size:
    row = int(rows[0])
    value = raw.iloc[row]
    # An empty cell is the missing stamp itself; a marker such as 'NaT' is named.
    shown = f" ({short(value)})" if isinstance(value, str) else ""
    raise error(f"missing timestamp {where} at {row_label(row, kind)}{shown}")
  if pd.api.types.is_datetime64_any_dtype(raw):  # Parquet: typed, one timezone or none
    stamps = pd.to_datetime(raw, utc=True)
  elif pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
    # pandas would read integers as nanoseconds since 1970 and silently produce 1970
    # dates; refuse rather than guess the unit.
    raise error(
      f"date column {column!r} of {path} holds numbers, not timestamps "
      f"({row_label(0, kind)}: {short(raw.iloc[0])}); write ISO timestamps "
      "or set data.date_column=''"
    )
  elif not isinstance(raw.iloc[0], str):
    stamps = _objects(raw, where, kind)
  else:
    stamps = _text(text, where, kind, date_format)
  return stamps.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")


def _to_datetime(text: pd.Series, fmt: str) -> pd.Series:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "could not infer format" and the like: we report
    return pd.to_datetime(text, format=fmt, utc=True, errors="coerce")


def _one(value: Any) -> pd.Timestamp | None:
  """One value parsed on its own (for messages only), or None if it does not parse."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      stamp = pd.Timestamp(value)
  except (ValueError, TypeError, OverflowError):
    return None
  return None if pd.isna(stamp) else stamp


def _aware(value: Any) -> bool:
  """Whether a value that parses on its own carries a timezone."""
  stamp = _one(value)
  return stamp is not None and stamp.tzinfo is not None


def _mixed_zones(where: str, kind: str, text: pd.Series, row: int, first: int = 0) -> Exception:
  aware, naive = (row, first) if _aware(text.iloc[row]) else (first, row)
  return error(
    f"timezone-aware and naive timestamps mixed {where}: {short(text.iloc[aware])} at "
    f"{row_label(aware, kind)} has a UTC offset, {short(text.iloc[naive])} at "
    f"{row_label(naive, kind)} has none; write every timestamp with an offset or none"
  )


def _formats(first: str) -> list[str]:
  """The formats pandas guesses from the first value: month-first, then day-first."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    month_first = guess_datetime_format(first)
    day_first = guess_datetime_format(first, dayfirst=True)
  if month_first and month_first.startswith("%Y"):
    return [month_first]  # year first is ISO 8601's order: year, month, day
  return list(dict.fromkeys(f for f in (month_first, day_first) if f))


def _text(text: pd.Series, where: str, kind: str, date_format: str) -> pd.Series:
  first = text.iloc[0]
  formats = [date_format] if date_format else _formats(first)
  if not formats:
    raise _refusal(text, 0, "", where, kind, date_format)
  readings = []
  for fmt in formats:
    try:
      stamps = _to_datetime(text, fmt)
    except ValueError as e:  # only a user's format can be malformed
      reason = str(e).strip().splitlines()[0]
      raise error(f"data.date_format {fmt!r} is not a format pandas can read ({reason})") from None
    bad = np.flatnonzero(stamps.isna().to_numpy())
    if bad.size and not date_format and fmt.startswith("%Y-%m-%d"):
      # ISO 8601 rows that vary in form (a fraction of a second here, a 'T' there) are one
      # reading; the rows that did not fit the first row's exact form must still agree
      # with it on having a UTC offset or not.
      iso = _to_datetime(text, "ISO8601")
      if iso.notna().all():
        first_aware = _aware(first)
        for odd in bad:
          if _aware(text.iloc[odd]) != first_aware:
            raise _mixed_zones(where, kind, text, int(odd))
        stamps, bad = iso, bad[:0]
    readings.append((fmt, stamps, bad))
  complete = [(fmt, stamps) for fmt, stamps, bad in readings if not bad.size]
  if len(complete) == 2:
    (fmt_a, a), (fmt_b, b) = complete
    differ = np.flatnonzero((a != b).to_numpy())
    if differ.size:
      row = int(differ[0])
      raise error(
        f"ambiguous timestamps {where}: {short(text.iloc[row])} at {row_label(row, kind)} "
        f"reads as {a.iloc[row].tz_localize(None)} with {fmt_a!r} and as "
        f"{b.iloc[row].tz_localize(None)} with {fmt_b!r}; set data.date_format to the "
        "format the file uses"
      )
  if complete:
    return complete[0][1]
  # No reading fits every row: report the one that fits the longest stretch from the top.
  fmt, _, bad = max(readings, key=lambda reading: reading[2][0])
  raise _refusal(text, int(bad[0]), fmt, where, kind, date_format)


def _refusal(text: pd.Series, row: int, fmt: str, where: str, kind: str, date_format: str):
  """The error for the first row of `text` that does not fit format `fmt`."""
  value = text.iloc[row]
  at = f"{where} at {row_label(row, kind)}"
  if date_format:
    return error(f"timestamp {short(value)} {at} does not match data.date_format {date_format!r}")
  alone = _one(value)
  if alone is None:
    return error(f"unparseable timestamp {short(value)} {at}")
  if not fmt:
    return error(
      f"cannot infer the format of timestamp {short(value)} {at}; set data.date_format "
      "(a strptime format such as '%d/%m/%Y %H:%M')"
    )
  if _aware(text.iloc[0]) != _aware(value):
    return _mixed_zones(where, kind, text, row)
  return error(
    f"timestamp {short(value)} {at} is not in the format of the first one, "
    f"{short(text.iloc[0])} ({fmt}); write every timestamp in one format, or set "
    "data.date_format"
  )


def _objects(raw: pd.Series, where: str, kind: str) -> pd.Series:
  """A column of datetime objects (not text): each is its own reading, but all must agree
  on having a timezone."""
  aware = np.array([getattr(v, "tzinfo", None) is not None for v in raw])
  mixed = np.flatnonzero(aware != aware[0])
  if mixed.size:
    raise _mixed_zones(where, kind, raw, int(mixed[0]))
  stamps = pd.to_datetime(raw, utc=True, errors="coerce")
  bad = np.flatnonzero(stamps.isna().to_numpy())
  if bad.size:
    row = int(bad[0])
    raise error(f"unparseable timestamp {short(raw.iloc[row])} {where} at {row_label(row, kind)}")
  return stamps


def check_file_order(
  dates: np.ndarray,
  series_of_row: np.ndarray,
  series_names: list[str],
  raw: pd.Series,
  path: Path,
  column: str,
  kind: str,
) -> None:
  """Refuses a series that the file holds in time order but for a few rows.

  A long table's rows may come in any order, and are sorted by date; but a series whose
  rows run in time order in the file (or in reverse) except at a few places was most
  likely written in order and read wrongly (a day/month swap), and sorting would hide it.
  "A few": at most a tenth of its steps go the other way, so a shuffled series (about
  half) or a short one (under ten steps) is never taken for one.
  """
  order = np.argsort(series_of_row, kind="stable")  # each series' rows in file order
  group, when = series_of_row[order], dates[order]
  same = group[1:] == group[:-1]
  down = same & (when[1:] < when[:-1])
  up = same & (when[1:] > when[:-1])
  n = len(series_names)
  downs, ups = (np.bincount(group[1:][m], minlength=n) for m in (down, up))
  steps = np.bincount(group[1:][same], minlength=n)
  against = np.minimum(downs, ups)
  suspect = np.flatnonzero((against > 0) & (against * 10 <= steps))
  if not suspect.size:
    return
  s = int(suspect[0])
  ascending = downs[s] <= ups[s]
  k = int(np.flatnonzero((group[1:] == s) & (down if ascending else up))[0])
  before, after = int(order[k]), int(order[k + 1])
  direction = "earlier" if ascending else "later"
  raise error(
    f"series {short(series_names[s])} of {path} runs in time order but for "
    f"{row_label(after, kind)}: {short(raw.iloc[after])} ({pd.Timestamp(dates[after])}) in "
    f"date column {column!r} is {direction} than {short(raw.iloc[before])} "
    f"({pd.Timestamp(dates[before])}) at {row_label(before, kind)}; a misread date would be "
    "sorted out of place silently: check data.date_format, or sort the file by id and date"
  )


def check_increasing(dates: np.ndarray, path: Path, column: str, kind: str) -> None:
  """A wide table's stamps must strictly increase row by row: its rows are never sorted."""
  steps = np.diff(dates.astype(np.int64))
  bad = np.flatnonzero(steps <= 0)
  if not bad.size:
    return
  row = int(bad[0]) + 1
  this, before = pd.Timestamp(dates[row]), pd.Timestamp(dates[row - 1])
  if steps[row - 1] == 0:
    raise error(
      f"duplicated timestamp {this} in date column {column!r} of {path} at "
      f"{row_label(row, kind)} (same as the row before)"
    )
  raise error(
    f"timestamps not sorted in date column {column!r} of {path}: "
    f"{this} at {row_label(row, kind)} comes after {before} in the row "
    "before; sort the file by time"
  )
