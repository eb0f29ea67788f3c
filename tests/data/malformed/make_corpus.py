"""Regenerates the data files of this malformed-input corpus (run once; files are committed).

  /work/venv/bin/python tests/data/malformed/make_corpus.py

Every file is the valid series of `valid.csv` (300 hourly rows: date, x, y) with exactly
one defect, so the error each one raises is the defect's and nothing else's. The expected
messages live in cases.json; tests/test_malformed.py runs them through the CLI.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

HERE = pathlib.Path(__file__).resolve().parent
N_ROWS = 300


def valid_frame(n: int = N_ROWS) -> pd.DataFrame:
  rng = np.random.default_rng(0)
  t = np.arange(n)
  return pd.DataFrame(
    {
      "date": pd.date_range("2021-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
      "x": np.round(np.sin(2 * np.pi * t / 12) + 0.1 * rng.normal(size=n), 4),
      "y": np.round(np.cos(2 * np.pi * t / 12) + 0.002 * t + 0.1 * rng.normal(size=n), 4),
    }
  )


def long_frame() -> pd.DataFrame:
  """Three series ("a", "b", "c") of 300, 280 and 260 hourly rows starting 10 h apart,
  with a static column `size`; rows shuffled, as a long table's may be."""
  parts = []
  for k, (name, n) in enumerate([("a", 300), ("b", 280), ("c", 260)]):
    part = valid_frame(n).rename(columns={"date": "ds"})
    part["ds"] = pd.date_range("2021-01-01", periods=n, freq="h") + pd.Timedelta(hours=10 * k)
    part["ds"] = part["ds"].dt.strftime("%Y-%m-%d %H:%M:%S")
    part.insert(0, "unique_id", name)
    part["y"] = part["y"] * (k + 1) + 10 * k
    part["size"] = float(k + 1)
    parts.append(part[["unique_id", "ds", "y", "size"]])
  frame = pd.concat(parts, ignore_index=True)
  order = np.random.default_rng(0).permutation(len(frame))
  return frame.iloc[order].reset_index(drop=True)


def csv(name: str, frame: pd.DataFrame) -> None:
  frame.to_csv(HERE / name, index=False)


def with_cell(row: int, column: str, value) -> pd.DataFrame:
  frame = valid_frame().astype({column: object})
  frame.loc[row, column] = value
  return frame


def main() -> None:
  base = valid_frame()
  csv("valid.csv", base)  # The one good file: base.py trains on it.

  # --- reading the file ----------------------------------------------------------------
  (HERE / "valid_but_wrong_extension.txt").write_text(base.to_csv(index=False))
  (HERE / "empty.csv").write_bytes(b"")
  (HERE / "blank_lines.csv").write_text("\n\n   \n")
  (HERE / "header_only.csv").write_text("date,x,y\n")
  lines = base.to_csv(index=False).splitlines()
  lines[101] += ",0.5"  # one row with a field too many
  (HERE / "ragged_row.csv").write_text("\n".join(lines) + "\n")
  (HERE / "garbage.parquet").write_bytes(
    np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes()
  )
  good = base.assign(date=pd.to_datetime(base["date"]))
  good.to_parquet(HERE / "_full.parquet", index=False)
  full = (HERE / "_full.parquet").read_bytes()
  (HERE / "truncated.parquet").write_bytes(full[: len(full) // 2])
  (HERE / "_full.parquet").unlink()

  # --- columns ---------------------------------------------------------------------------
  csv("no_target_column.csv", base.rename(columns={"y": "z"}))
  csv("no_date_column.csv", base.rename(columns={"date": "time"}))
  # Known library problems (xfail in cases.json):
  # "x" renamed to " y": distinct in the file, the same name once headers are stripped.
  csv("columns_equal_after_strip.csv", base.rename(columns={"x": " y"}))
  # Dates saved as a named index AND a column of the same name.
  collide = good.set_index("date")
  collide["date"] = 1.0
  collide.to_parquet(HERE / "index_and_column_named_date.parquet")

  # --- values ----------------------------------------------------------------------------
  csv("non_numeric.csv", with_cell(150, "x", "abc"))
  csv("nan.csv", with_cell(100, "y", np.nan))
  csv("inf.csv", with_cell(42, "x", "inf"))
  csv("nan_first_row.csv", with_cell(0, "y", np.nan))
  csv("all_nan_column.csv", base.assign(x=np.nan))
  csv("constant_column.csv", base.assign(x=1.5))
  csv("too_big_for_float32.csv", with_cell(100, "y", 1e39))  # float32 holds up to 3.4e38
  # x barely varies over the training rows (0.7 * 300 = 210), so scaling by their spread
  # takes a later, ordinary-looking 1e30 past float32's range.
  tiny_x = base.assign(x=np.round(base["x"] * 1e-10, 16)).astype({"x": object})
  tiny_x.loc[280, "x"] = 1e30
  csv("overflow_after_scaling.csv", tiny_x)
  # The target only starts to vary after the training rows.
  csv("constant_train_target.csv", base.assign(y=np.where(base.index < 210, 2.5, base["y"])))
  nan_pq = good.copy()
  nan_pq.loc[77, "y"] = np.nan
  nan_pq.to_parquet(HERE / "nan.parquet", index=False)

  # --- timestamps ------------------------------------------------------------------------
  csv("bad_date.csv", with_cell(200, "date", "2021-13-45 25:00:00"))
  csv("missing_date.csv", with_cell(60, "date", np.nan))
  unsorted = base.copy()
  unsorted.loc[[120, 121], "date"] = unsorted.loc[[121, 120], "date"].to_numpy()
  csv("unsorted_dates.csv", unsorted)
  duplicated = base.copy()
  duplicated.loc[181, "date"] = duplicated.loc[180, "date"]
  csv("duplicated_date.csv", duplicated)
  csv("numeric_dates.csv", base.assign(date=np.arange(N_ROWS) * 3600))

  # --- length ----------------------------------------------------------------------------
  csv("too_short.csv", valid_frame(40))  # 0.7 * 40 = 28 train rows < lookback 24 + horizon 6

  # --- long tables (unique_id, ds, y): three series of different lengths and starts ----
  panel = long_frame()
  csv("long_valid.csv", panel)
  csv("long_duplicate.csv", pd.concat([panel, panel.iloc[[130]]], ignore_index=True))
  csv("long_missing_id.csv", panel.assign(unique_id=panel.unique_id.where(panel.index != 75)))
  in_b = panel.unique_id == "b"
  short = panel[~in_b | (panel.ds >= panel.ds[in_b].sort_values().iloc[-55])]  # its last 55 h
  csv("long_short_series.csv", short)
  # Series 'c' without 3 of its hours (issue 32: a window of rows must be a window of time).
  in_c = panel.unique_id == "c"
  skipped = panel.ds[in_c].sort_values().iloc[100:103]
  csv("long_missing_dates.csv", panel[~(in_c & panel.ds.isin(skipped))])
  csv("long_static_varies.csv", panel.assign(size=np.where(panel.index == 400, 9.0, panel["size"])))
  too_big = panel.assign(y=np.where(panel.index == 50, -2e39, panel["y"]))
  csv("long_too_big_for_float32.csv", too_big)

  # --- dates read one way (issue 33): day-first, missing, mixed zones, reordering ------
  # Wide, day-first throughout: the file's day/month order is inferred from the whole
  # column (this one is valid); hourly over 12 days, every day <= 12, is ambiguous.
  dayfirst = pd.date_range("2021-01-01", periods=N_ROWS, freq="h")
  csv("dayfirst_valid.csv", base.assign(date=dayfirst.strftime("%d/%m/%Y %H:%M")))
  csv(
    "dayfirst_ambiguous.csv",
    valid_frame(288).assign(date=dayfirst[:288].strftime("%d/%m/%Y %H:%M")),
  )
  csv("mixed_formats.csv", with_cell(150, "date", "01/07/2021 06:00"))
  csv("mixed_zones.csv", with_cell(90, "date", "2021-01-04 18:00:00+02:00"))
  panel_ds = pd.to_datetime(panel.ds)
  long_dayfirst = panel.assign(ds=panel_ds.dt.strftime("%d/%m/%Y %H:%M"))
  csv("long_dayfirst_ambiguous.csv", long_dayfirst[panel_ds < "2021-01-13"])
  csv("long_missing_date.csv", panel.assign(ds=panel.ds.where(panel.index != 210)))
  csv("long_nat_date.csv", panel.assign(ds=panel.ds.where(panel.index != 33, "NaT")))
  zoned = panel.ds.where(panel.index != 120, panel.ds + "+01:00")
  csv("long_mixed_zones.csv", panel.assign(ds=zoned))
  # A long table in time order but for one swapped pair of rows of series "b".
  ordered = panel.sort_values(["unique_id", "ds"], ignore_index=True)
  swap = ordered.index[ordered.unique_id == "b"][[40, 41]]
  ordered.loc[swap, "ds"] = ordered.loc[swap[::-1], "ds"].to_numpy()
  csv("long_out_of_order.csv", ordered)
  # Monthly on the 1st..12th, written day-first and in order: read month-first (the wrong
  # data.date_format) it parses, but 12/01 (1 December) comes before 01/02 (2 January).
  days = [pd.Timestamp(2021, m, d) for m in range(1, 13) for d in range(1, 13)]
  misread = pd.DataFrame({"unique_id": "a", "ds": [d.strftime("%d/%m/%Y") for d in days]})
  csv("long_misread.csv", misread.assign(y=np.round(np.sin(np.arange(len(days)) / 3.0), 4)))

  # --- config files that need exact bytes ------------------------------------------------
  (HERE / "not_utf8.json").write_bytes(b'{"seed": 0, "data": {"target": ["\xff"]}}\n')


if __name__ == "__main__":
  main()
