"""Dates read one way, forecasts dated by each series' frequency, ids kept as written
(issue 33's silently wrong cases). The refusals run through the CLI in the malformed corpus
(tests/data/malformed/cases.json); here, the right results, without training anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flaxlstm.config import DataSpec
from flaxlstm.data import calendar, io, series
from flaxlstm.errors import InputError
from flaxlstm.train import inference

# Frequencies pandas infers, by name, with the first date of a series of each.
FREQUENCIES = {
  "h": "2021-03-27 00:00",  # hourly, over a DST change (naive dates have none)
  "15min": "2021-01-01 23:00",
  "D": "2020-02-25",  # daily, over a leap day
  "B": "2021-01-04",  # business days: Friday -> Monday
  "W-WED": "2021-01-06",
  "ME": "2019-01-31",  # month ends: 28, 29, 30 and 31 days
  "MS": "2019-01-01",
  "QE": "2018-03-31",  # quarter ends (December year end)
}


def write(tmp_path: Path, frame: pd.DataFrame, name: str) -> str:
  path = tmp_path / name
  frame.to_csv(path, index=False)
  return str(path)


def spec(path: str, **overrides) -> DataSpec:
  base = dict(path=path, target=("y",), lookback=8, horizon=4, seasonal_period=4)
  return DataSpec(**{**base, **overrides})


def values(n: int, seed: int = 0) -> np.ndarray:
  return np.sin(np.arange(n) / 3.0) + 0.1 * np.random.default_rng(seed).normal(size=n)


def error_of(fn, *args, **kwargs) -> str:
  with pytest.raises(InputError) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert "\n" not in message
  return message


# ---- reading dates -------------------------------------------------------------------------------
def test_day_first_dates_read_the_same_right_way_in_wide_and_long_tables(tmp_path):
  # Hourly over 13 days: '02/01/2020' must be 2 January, as '13/01/2020' shows.
  dates = pd.date_range("2020-01-01", periods=300, freq="h")
  written = dates.strftime("%d/%m/%Y %H:%M")
  wide = write(tmp_path, pd.DataFrame({"ds": written, "y": values(300)}), "wide.csv")
  long = pd.DataFrame({"unique_id": "a", "ds": written, "y": values(300)})
  long = long.iloc[np.random.default_rng(0).permutation(300)]  # any order
  long_path = write(tmp_path, long, "long.csv")
  for data in (
    series.prepare(spec(wide, date_column="ds")),
    series.prepare(spec(long_path, date_column="ds", id_column="unique_id")),
  ):
    np.testing.assert_array_equal(data.dates, dates.to_numpy("datetime64[ns]"))


def test_date_format_reads_a_column_both_orders_fit(tmp_path):
  dates = pd.date_range("2020-01-01", periods=200, freq="h")  # every day <= 12: ambiguous
  frame = pd.DataFrame({"date": dates.strftime("%d/%m/%Y %H:%M"), "y": values(200)})
  path = write(tmp_path, frame, "ambiguous.csv")
  assert "set data.date_format" in error_of(series.prepare, spec(path))
  data = series.prepare(spec(path, date_format="%d/%m/%Y %H:%M"))
  np.testing.assert_array_equal(data.dates, dates.to_numpy("datetime64[ns]"))


def test_iso_dates_that_vary_in_form_are_one_reading(tmp_path):
  dates = pd.date_range("2021-01-01", periods=60, freq="h")
  text = list(dates.strftime("%Y-%m-%d %H:%M:%S"))
  text[5] = dates[5].strftime("%Y-%m-%dT%H:%M:%S.000")  # a 'T' and a fraction of a second
  path = write(tmp_path, pd.DataFrame({"date": text, "y": values(60)}), "iso.csv")
  loaded = io.load_frame(path, date_column="date")
  np.testing.assert_array_equal(loaded.date.to_numpy(), dates.to_numpy("datetime64[ns]"))


def test_aware_dates_over_a_dst_change_become_utc(tmp_path):
  local = pd.date_range("2021-03-27", periods=60, freq="h", tz="Europe/Berlin")
  text = local.strftime("%Y-%m-%d %H:%M:%S%z")  # offsets +0100, then +0200
  path = write(tmp_path, pd.DataFrame({"date": text, "y": values(60)}), "aware.csv")
  loaded = io.load_frame(path, date_column="date")
  expected = local.tz_convert("UTC").tz_localize(None).to_numpy("datetime64[ns]")
  np.testing.assert_array_equal(loaded.date.to_numpy(), expected)


def test_missing_and_unparseable_dates_name_file_column_row_and_value(tmp_path):
  frame = pd.DataFrame({"date": pd.date_range("2021-01-01", periods=30, freq="D"), "y": values(30)})
  frame["date"] = frame.date.dt.strftime("%Y-%m-%d")
  blank = write(tmp_path, frame.assign(date=frame.date.where(frame.index != 4, "  ")), "b.csv")
  message = error_of(io.load_frame, blank, date_column="date")
  assert (
    message.startswith("missing timestamp in date column 'date' of ")
    and "row 4 (line 6)" in message
  )
  first = write(tmp_path, frame.assign(date=frame.date.where(frame.index != 0, "soon")), "f.csv")
  assert "unparseable timestamp 'soon'" in error_of(io.load_frame, first, date_column="date")


# ---- ids ----------------------------------------------------------------------------------------
def test_zero_padded_ids_stay_as_written(tmp_path):
  n, dates = 60, pd.date_range("2021-01-01", periods=60, freq="h").strftime("%Y-%m-%d %H:%M")
  parts = [
    pd.DataFrame({"unique_id": i, "ds": dates, "y": values(n, k)})
    for k, i in enumerate(["007", "7", "0"])
  ]
  path = write(tmp_path, pd.concat(parts), "ids.csv")
  data = series.prepare(spec(path, id_column="unique_id", date_column="ds"))
  assert data.series_ids == ("0", "007", "7")
  parquet = tmp_path / "ids.parquet"
  numbers = {"007": 7, "7": 12, "0": 0}
  pd.concat(parts).assign(unique_id=lambda f: f.unique_id.map(numbers)).to_parquet(parquet)
  data = series.prepare(spec(str(parquet), id_column="unique_id", date_column="ds"))
  assert data.series_ids == ("0", "12", "7")  # integers stay their value, as text


# ---- frequencies and future dates ----------------------------------------------------------------
def test_future_dates_step_by_pandas_offsets():
  for freq, start in FREQUENCIES.items():
    dates = pd.date_range(start, periods=30, freq=freq)
    got = calendar.future_dates(
      dates.to_numpy("datetime64[ns]"), np.array([0, 30]), 7, source="f.csv"
    )
    expected = pd.date_range(dates[-1], periods=8, freq=freq)[1:]
    np.testing.assert_array_equal(got[0], expected.to_numpy("datetime64[ns]"), err_msg=freq)
  # The case: month ends step to month ends, not by 31 days at a time.
  month_ends = pd.date_range("2019-01-31", "2019-12-31", freq="ME").to_numpy("datetime64[ns]")
  got = calendar.future_dates(month_ends, np.array([0, 12]), 3, source="f.csv")
  assert list(pd.DatetimeIndex(got[0]).strftime("%Y-%m-%d")) == [
    "2020-01-31",
    "2020-02-29",
    "2020-03-31",
  ]


def test_each_series_of_a_panel_steps_by_its_own_frequency():
  parts = [pd.date_range(FREQUENCIES[f], periods=20 + k, freq=f) for k, f in enumerate(FREQUENCIES)]
  dates = np.concatenate([p.to_numpy("datetime64[ns]") for p in parts])
  offsets = np.cumsum([0] + [len(p) for p in parts])
  got = calendar.future_dates(dates, offsets, 5, source="p.csv", series_ids=tuple(FREQUENCIES))
  for k, (freq, part) in enumerate(zip(FREQUENCIES, parts)):
    expected = pd.date_range(part[-1], periods=6, freq=freq)[1:].to_numpy("datetime64[ns]")
    np.testing.assert_array_equal(got[k], expected, err_msg=freq)


def test_dates_that_fit_no_frequency_are_refused():
  hours = pd.date_range("2021-01-01", periods=30, freq="h").delete(10).to_numpy("datetime64[ns]")
  message = error_of(
    calendar.future_dates, hours, np.array([0, 29]), 4, source="p.csv", series_ids=("b",)
  )
  assert message.startswith("cannot date the forecast after the last row of series 'b' of p.csv")
  assert "fit no frequency (steps from 1h to 2h" in message
  two = hours[:2]
  assert "2 dates are too few" in error_of(
    calendar.future_dates, two, np.array([0, 2]), 4, source="w"
  )


def test_future_calendar_features_use_the_stepped_dates(tmp_path):
  # A month-end series: the horizon's month features are those of Jan..Apr 2020, where a
  # 31-day step would have drifted into March by the second step.
  dates = pd.date_range("2015-01-31", periods=60, freq="ME")
  frame = pd.DataFrame({"ds": dates, "y": values(60)})
  path = write(tmp_path, frame, "monthly.csv")
  data_spec = spec(path, date_column="ds", calendar=("month", "dayofmonth"))
  data = series.prepare_inference(data_spec, series.prepare(data_spec).scalers)
  starts, of = data.offsets[1:], np.zeros(1, np.int64)
  ahead = calendar.future_dates(data.dates, data.offsets, data.horizon, source=path)
  known = inference._future_known(data_spec, data, starts, of, ahead)
  expected = pd.date_range(dates[-1], periods=5, freq="ME")[1:]
  assert list(expected.strftime("%Y-%m-%d")) == [
    "2020-01-31",
    "2020-02-29",
    "2020-03-31",
    "2020-04-30",
  ]
  np.testing.assert_allclose(
    known[0], calendar.calendar_features(expected.to_numpy(), ("month", "dayofmonth"))
  )
