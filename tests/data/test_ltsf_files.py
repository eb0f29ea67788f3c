"""Any LTSF-format file (a date column and numeric columns): `data.features` / `data.target`
= ("*",) read every numeric column, and `data.split="auto"` is ETT's split on an ETT file,
the Time-Series-Library's 70/10/20 on any other (flaxlstm/data/table.py, splits.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flaxlstm.config import DataSpec
from flaxlstm.data import series, splits
from flaxlstm.errors import InputError

ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
ALL = ("*",)


def _frame(n: int, columns=("a", "b", "OT"), freq: str = "h", seed: int = 0) -> pd.DataFrame:
  """`n` rows of a date column and noisy, non-constant numeric `columns`."""
  rng = np.random.default_rng(seed)
  t = np.arange(n)
  frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n, freq=freq)})
  for i, name in enumerate(columns):
    frame[name] = np.sin(2 * np.pi * t / 24 + i) + 0.1 * i * t / n + 0.1 * rng.normal(size=n)
  return frame


def _csv(tmp_path: Path, frame: pd.DataFrame, name: str = "file.csv") -> str:
  path = tmp_path / name
  frame.to_csv(path, index=False)
  return str(path)


def _spec(path: str, **values) -> DataSpec:
  """The LTSF recipe's data settings (every numeric column, auto split), small windows."""
  return DataSpec(
    **{
      "path": path,
      "features": ALL,
      "target": ALL,
      "split": "auto",
      "lookback": 8,
      "horizon": 4,
      **values,
    }
  )


def _error(fragment: str, spec: DataSpec) -> str:
  with pytest.raises(InputError) as info:
    series.prepare(spec)
  message = str(info.value)
  assert fragment in message, message
  assert "\n" not in message
  return message


def _tslib_borders(n: int, lookback: int) -> tuple[list[int], list[int]]:
  """Time-Series-Library's `Dataset_Custom.__read_data__` borders, as it writes them."""
  num_train = int(n * 0.7)
  num_test = int(n * 0.2)
  num_vali = n - num_train - num_test
  border1s = [0, num_train - lookback, n - num_test - lookback]
  border2s = [num_train, num_train + num_vali, n]
  return border1s, border2s


def test_star_reads_every_numeric_column_of_a_non_ett_file(tmp_path):
  frame = _frame(300)
  frame.insert(2, "site", "north")  # text: not an input
  frame["empty"] = np.nan  # no number at all: not an input
  frame["flag"] = np.arange(300) % 2 == 0  # booleans are numbers (0/1), as io.py reads them
  data = series.prepare(_spec(_csv(tmp_path, frame)))
  assert data.feature_names == data.target_names == ("a", "b", "OT", "flag")
  np.testing.assert_array_equal(data.y_raw[:, 2], frame["OT"].to_numpy(np.float32))
  # The date, known and static columns are never among them; a named side keeps its names.
  data = series.prepare(_spec(_csv(tmp_path, frame), known=("b",), target=("OT",)))
  assert data.feature_names == ("a", "OT", "flag") and data.target_names == ("OT",)
  assert data.known_names == ("b",)
  # exchange_rate.csv's layout: numbered columns, then OT.
  data = series.prepare(_spec(_csv(tmp_path, _frame(300, ("0", "1", "2", "OT")))))
  assert data.feature_names == ("0", "1", "2", "OT")
  # A file written with its row numbers (`to_csv` without index=False): the blank-headed
  # counter is no input and no target.
  indexed = tmp_path / "indexed.csv"
  _frame(300).to_csv(indexed)
  data = series.prepare(_spec(str(indexed)))
  assert data.feature_names == data.target_names == ("a", "b", "OT")
  data = series.prepare(_spec(str(indexed), features=(), target=("OT",)))  # "every other"
  assert data.feature_names == ("a", "b", "OT")


@pytest.mark.parametrize("n", [137, 300, 1001])
def test_auto_split_of_a_non_ett_file_is_tslib_70_10_20(tmp_path, n):
  lookback, horizon = 8, 4
  data = series.prepare(_spec(_csv(tmp_path, _frame(n))))
  border1s, border2s = _tslib_borders(n, lookback)
  assert data.bounds == {
    "train": (0, border2s[0]),
    "val": (border2s[0], border2s[1]),
    "test": (border2s[1], border2s[2]),
  }
  # TSLib's windows: each split's rows [border1, border2), inputs from border1 on (val and
  # test read `lookback` rows of context before their split), stride 1, every one.
  for i, split in enumerate(("train", "val", "test")):
    starts = data.window_starts(split)
    assert starts[0] - lookback == border1s[i]
    assert starts[-1] + horizon == border2s[i]
    assert len(starts) == border2s[i] - border1s[i] - lookback - horizon + 1
  # The scaler is fit on the train rows.
  np.testing.assert_allclose(
    data.target_scaler.mean_, data.y_raw[: border2s[0]].astype(np.float64).mean(0), rtol=1e-5
  )


@pytest.mark.parametrize("n", [7588, 52696, 17544, 26304, 10, 11, 99999])
def test_tsl_ends_are_tslib_rows(n):
  """The row counts of exchange_rate, weather, electricity, traffic and some odd ones."""
  _, border2s = _tslib_borders(n, 0)
  assert splits.tsl_ends(n) == tuple(border2s)
  lengths = np.array([n, n + 1, 3 * n])
  np.testing.assert_array_equal(
    splits.tsl_ends(lengths), np.array([_tslib_borders(int(m), 0)[1] for m in lengths]).T
  )


def test_auto_split_of_a_long_table_is_tslib_in_each_series(tmp_path):
  parts = []
  for name, n in (("s1", 100), ("s2", 137)):
    part = _frame(n, ("y",), seed=n).rename(columns={"date": "ds"})
    parts.append(part.assign(unique_id=name))
  path = _csv(tmp_path, pd.concat(parts))
  spec = _spec(path, id_column="unique_id", date_column="ds", features=(), target=ALL)
  data = series.prepare(spec)
  assert data.target_names == ("y",)
  local = {k: v - data.offsets[:-1, None] for k, v in data.split_rows.items()}
  for s, n in enumerate((100, 137)):
    _, (train_end, val_end, end) = _tslib_borders(n, 0)
    assert [tuple(local[k][s]) for k in ("train", "val", "test")] == [
      (0, train_end),
      (train_end, val_end),
      (val_end, end),
    ]


def _ett_dates(n: int, freq: str) -> np.ndarray:
  return pd.date_range("2016-07-01", periods=n, freq=freq).to_numpy()


@pytest.mark.parametrize(
  "columns, freq, n, layout",
  [
    (("date", *ETT_COLUMNS), "h", 17420, "ett"),  # ETTh1, ETTh2
    (("date", *ETT_COLUMNS), "15min", 69680, "ettm"),  # ETTm1, ETTm2
    (("date", *ETT_COLUMNS), "h", 14400, "ett"),  # just the rows of the layout
    (("date", *reversed(ETT_COLUMNS)), "h", 14400, "ett"),  # any column order
    (("date", *ETT_COLUMNS), "h", 14399, None),  # too short for ETT's 12/4/4 months
    (("date", *ETT_COLUMNS), "15min", 57599, None),
    (("date", *ETT_COLUMNS), "D", 20000, None),  # neither hourly nor 15-minute rows
    (("date", *ETT_COLUMNS, "extra"), "h", 17420, None),  # another column
    (("date", *ETT_COLUMNS[1:]), "h", 17420, None),  # a column short
    (("date", "0", "1", "OT"), "h", 17420, None),
  ],
)
def test_ett_layout_is_ett_columns_step_and_rows(columns, freq, n, layout):
  assert splits.ett_layout(columns, "date", _ett_dates(n, freq), n) == layout


def test_ett_layout_needs_the_date_column():
  dates = _ett_dates(17420, "h")
  assert splits.ett_layout(("stamp", *ETT_COLUMNS), "stamp", dates, 17420) == "ett"
  assert splits.ett_layout(("date", *ETT_COLUMNS), "", dates, 17420) is None
  assert splits.ett_layout(("date", *ETT_COLUMNS), "date", None, 17420) is None


def test_auto_split_of_an_ett_file_is_ett_and_its_columns_are_etts(tmp_path):
  ett = _csv(tmp_path, _frame(14400, ETT_COLUMNS), "ETTlike.csv")
  data = series.prepare(_spec(ett))
  assert data.bounds == splits.ETT_BOUNDS
  assert data.feature_names == data.target_names == ETT_COLUMNS
  # The same rows with an eighth column are another file: TSLib's 70/10/20.
  other = _csv(tmp_path, _frame(14400, (*ETT_COLUMNS, "x")), "other.csv")
  assert series.prepare(_spec(other)).bounds["train"] == (0, int(14400 * 0.7))
  # The layouts as their own splits: ETTm is ETTh's months in 15-minute rows.
  assert splits.ETTM_BOUNDS == {
    "train": (0, 34560),
    "val": (34560, 46080),
    "test": (46080, 57600),
  }
  _error("data.split='ettm' needs at least 57600 rows", _spec(ett, split="ettm"))


def test_what_the_user_names_wins(tmp_path):
  ett = _csv(tmp_path, _frame(14400, ETT_COLUMNS), "ETTlike.csv")
  data = series.prepare(_spec(ett, split="tsl", features=("OT", "HUFL"), target=("OT",)))
  assert data.bounds["test"] == (14400 - int(14400 * 0.2), 14400)
  assert (data.feature_names, data.target_names) == (("OT", "HUFL"), ("OT",))
  data = series.prepare(_spec(ett, split="rows", split_rows=(100, 200, 300)))
  assert data.bounds["test"] == (200, 300)
  plain = _csv(tmp_path, _frame(300))
  assert series.prepare(_spec(plain, split="fractions", target=("b",))).bounds == {
    "train": (0, 210),
    "val": (210, 240),
    "test": (240, 300),
  }


def test_a_file_without_numeric_columns_or_a_bad_named_column_is_one_line(tmp_path):
  frame = pd.DataFrame({"date": _frame(50)["date"], "site": "north", "kind": "x"})
  path = _csv(tmp_path, frame)
  message = _error("has none", _spec(path))
  assert message == (
    f"data.features and data.target='*' stand for every numeric column of {path} but the "
    "date column 'date', and it has none (columns: date, site, kind)"
  )
  _error("data.target='*' stands for every", _spec(path, features=("site",)))
  frame = _frame(300)
  frame["site"] = "north"
  path = _csv(tmp_path, frame)
  _error(
    f"column 'nope' (data.target) not found in {path} (columns: date, a, b, OT, site)",
    _spec(path, target=("nope",)),
  )
  _error(f"column 'nope' (data.features) not found in {path}", _spec(path, features=("nope",)))
  _error(
    f"non-numeric value 'north' in column 'site' of {path} at row 0 (line 2)",
    _spec(path, features=("a", "site")),
  )
  # A column that mixes numbers and text would silently stop being read: refused.
  frame = _frame(300)
  frame["code"] = np.arange(300).astype(str)
  frame.loc[7, "code"] = "n/a?"
  path = _csv(tmp_path, frame)
  _error(f"column 'code' of {path} mixes numbers and text ('n/a?' at row 7 (line 9))", _spec(path))


def test_star_stands_alone_and_only_for_features_and_target():
  for values, fragment in (
    (dict(features=("*", "OT")), "'data.features' = ('*', 'OT'): '*' (every numeric column) "),
    (dict(target=("OT", "*")), "stands alone"),
    (dict(known=("*",)), "is only for data.features and data.target"),
  ):
    with pytest.raises(InputError, match=r".*") as info:
      dataclasses.replace(DataSpec(), **values)
    assert fragment in str(info.value), info.value
