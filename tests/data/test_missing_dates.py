"""data.missing_dates (flaxlstm/data/steps.py): a series that skips dates of its frequency
is refused by default, filled onto its frequency with "fill", read as it is with "keep". And
the season a frequency has (`data.seasonal_period=0`).
The one-line messages of the refusals are in the malformed corpus (cases.json)."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from flaxlstm.config.specs import DataSpec, RunSpec
from flaxlstm.data import calendar, io, series, steps
from flaxlstm.data import table as table_lib
from flaxlstm.errors import InputError
from flaxlstm.forecast import baselines
from flaxlstm.pretrained import files
from flaxlstm.train import assembly


def panel(tmp_path, parts: dict[str, pd.DatetimeIndex], name: str = "panel.csv") -> str:
  """A long table of a linear ramp per series over its dates (so interpolation is exact)."""
  frames = []
  for k, (sid, dates) in enumerate(parts.items()):
    hours = (dates - dates[0]) / pd.Timedelta(hours=1)
    frames.append(pd.DataFrame({"unique_id": sid, "ds": dates, "y": 10.0 * k + 0.5 * hours}))
  path = tmp_path / name
  pd.concat(frames).to_csv(path, index=False)
  return str(path)


# A small holdout panel; the file is the first argument (`DataSpec.path`).
spec = functools.partial(
  DataSpec,
  id_column="unique_id",
  date_column="ds",
  target=("y",),
  lookback=8,
  horizon=4,
  split="holdout",
  seasonal_period=4,
)


def validated(data: DataSpec) -> table_lib.Table:
  """The file as `series.prepare` reads it: the validated table, before splits."""
  raw, kind = table_lib.read(data, io.data_file(data.path))
  return table_lib.validate_table(data, data.path, raw, kind, ["y"], check_constant=True)[0]


def hourly(n: int, drop=(), start="2021-03-01") -> pd.DatetimeIndex:
  return pd.date_range(start, periods=n, freq="h").delete(list(drop))


def test_a_series_that_skips_hours_is_refused_filled_or_kept(tmp_path):
  path = panel(tmp_path, {"a": hourly(60), "b": hourly(60, drop=[20, 21, 40])})
  with pytest.raises(InputError, match=r"series 'b' of .* skips 3 of the dates of its freq"):
    series.prepare(spec(path))
  filled = series.prepare(spec(path, missing_dates="fill", fill="interpolate"))
  # Each series is now every hour from its first to its last: b's 57 rows are 60 again,
  # and the inserted hours hold the line between their neighbours (the ramp, exactly).
  np.testing.assert_array_equal(np.diff(filled.offsets), [60, 60])
  b = slice(int(filled.offsets[1]), int(filled.offsets[2]))
  np.testing.assert_array_equal(filled.dates[b], hourly(60).to_numpy("datetime64[ns]"))
  table = validated(spec(path, missing_dates="fill", fill="interpolate"))
  np.testing.assert_allclose(table.frame["y"].to_numpy()[60:], 10.0 + 0.5 * np.arange(60))
  kept = series.prepare(spec(path, missing_dates="keep"))
  np.testing.assert_array_equal(np.diff(kept.offsets), [60, 57])


def test_business_days_and_months_are_filled_on_their_own_frequency(tmp_path):
  days = pd.bdate_range("2021-03-01", periods=80)  # weekends are not missing dates
  months = pd.date_range("2015-01-01", periods=60, freq="MS")
  path = panel(tmp_path, {"d": days.delete([10, 33]), "m": months.delete([7]), "w": days})
  with pytest.raises(InputError, match=r"series 'd' .* skips 2 of the dates of its \w+ \(B\)"):
    series.prepare(spec(path))
  table = validated(spec(path, missing_dates="fill", fill="ffill"))
  dates = table.frame["ds"].to_numpy("datetime64[ns]")
  np.testing.assert_array_equal(np.diff(table.offsets), [80, 60, 80])
  np.testing.assert_array_equal(dates[:80], days.to_numpy("datetime64[ns]"))
  np.testing.assert_array_equal(dates[80:140], months.to_numpy("datetime64[ns]"))
  # The inserted business day carries the day before it forward; file rows say which
  # rows are the file's (-1: inserted), so that messages still name the file's lines.
  y = table.frame["y"].to_numpy()
  assert y[10] == y[9] and (table.file_rows[[10, 33, 87]] == -1).all()
  assert (table.file_rows >= 0).sum() == 80 + 60 + 80 - 3


def test_given_freq_fills_to_it_and_dates_the_forecast_by_it():
  # Trading days with two holidays: on data.freq="B" they are filled as business days;
  # with "keep" and no freq the rows stand as they are.
  days = pd.bdate_range("2021-03-01", periods=30).delete([4, 17]).to_numpy("datetime64[ns]")
  offsets = np.array([0, len(days)])
  inserted, found = steps.regular_rows(days, offsets, mode="fill", freq="B", source="f.csv")
  assert inserted is not None and found == {"B": 1}
  take, new_offsets, new_dates = inserted
  assert new_offsets.tolist() == [0, 30] and (take == -1).sum() == 2
  kept = steps.regular_rows(days, offsets, mode="keep", freq="", source="f.csv")
  assert kept == (None, {})  # uneven and no frequency named: not counted
  # Already on its frequency: nothing to insert.
  full = pd.bdate_range("2021-03-01", periods=30).to_numpy("datetime64[ns]")
  whole = np.array([0, len(full)])
  assert steps.regular_rows(full, whole, mode="error", freq="B", source="f.csv") == (
    None,
    {"B": 1},
  )
  ahead = calendar.future_dates(days, offsets, 3, source="f.csv", freq="B")
  np.testing.assert_array_equal(
    ahead[0], pd.bdate_range(pd.Timestamp(days[-1]), periods=4)[1:].to_numpy("datetime64[ns]")
  )


def test_tirex_reads_a_missing_date_as_a_gap(tmp_path):
  path = panel(tmp_path, {"a": hourly(40, drop=[30, 31])})
  got, values = files.read_series(path, files.TableColumns())
  assert len(values) == 40 and np.isnan(values[30:32, 0]).all() and np.isfinite(values[:30]).all()
  # Calendar days with weekends missing: on --freq B the weekends are no gaps, a holiday is.
  days = pd.bdate_range("2021-03-01", periods=30)
  path = panel(tmp_path, {"a": days.delete([12])}, "days.csv")
  got, values = files.read_series(path, files.TableColumns(freq="B"))
  assert len(values) == 30 and np.flatnonzero(np.isnan(values[:, 0])).tolist() == [12]
  with pytest.raises(InputError, match="--freq 'weekdays' is not a pandas frequency"):
    files.read_series(path, files.TableColumns(freq="weekdays"))


def test_a_panel_mixing_frequencies_is_warned(tmp_path, caplog):
  path = panel(tmp_path, {"h": hourly(60), "d": pd.date_range("2021-03-01", periods=60, freq="D")})
  with caplog.at_level("WARNING"):
    series.prepare(spec(path))
  assert "step by different frequencies (1 at 1D, 1 at 1h)" in caplog.text
  caplog.clear()
  with caplog.at_level("WARNING"):
    series.prepare(spec(panel(tmp_path, {"a": hourly(60), "b": hourly(60)}, "same.csv")))
  assert "different frequencies" not in caplog.text


def test_a_split_made_up_of_inserted_dates_is_warned_with_the_files_rows(tmp_path, caplog):
  # A wide table whose last 20 hours are one stamp (its value missing) after a gap: filled,
  # the test split holds no observation, and the warning names the file's row, not the
  # table's 100th.
  dates = hourly(100).delete(range(80, 99))
  frame = pd.DataFrame({"date": dates, "OT": np.r_[np.sin(np.arange(80) / 3.0), np.nan]})
  path = tmp_path / "wide.csv"
  frame.to_csv(path, index=False)
  data = DataSpec(
    path=str(path),
    lookback=8,
    horizon=4,
    split="rows",
    split_rows=(60, 80),
    missing_dates="fill",
    fill="ffill",
  )
  with caplog.at_level("WARNING"):
    series.prepare(data)
  assert "filled all 20 values of target column 'OT' in the test split" in caplog.text
  assert "(row 80 (line 82) to row 80 (line 82))" in caplog.text


def test_local_midnights_across_a_daylight_saving_change_are_daily(tmp_path, caplog):
  # A timezone-aware file's dates are read as UTC, where a daily series steps by 23 or 25
  # hours at a change of the clocks: still whole days, not skipped dates.
  local = pd.date_range("2021-03-20", periods=30, freq="D", tz="Europe/Berlin")
  path = tmp_path / "tz.csv"
  frame = pd.DataFrame({"unique_id": "a", "ds": local.strftime("%Y-%m-%dT%H:%M:%S%z"), "y": 1.0})
  naive = pd.date_range("2021-03-20", periods=30, freq="D")
  other = pd.DataFrame({"unique_id": "b", "ds": naive.strftime("%Y-%m-%dT00:00:00+0000"), "y": 2.0})
  pd.concat([frame, other]).assign(y=np.arange(60.0)).to_csv(path, index=False)
  with caplog.at_level("WARNING"):
    data = series.prepare(spec(str(path)))
  assert "different frequencies" not in caplog.text  # both daily
  assert steps.frequencies(data.dates, data.offsets) == {"1D": 2}
  ahead = calendar.future_dates(data.dates, data.offsets, 2, source="tz.csv")
  assert (np.diff(ahead, axis=1) == np.timedelta64(1, "D")).all()


@pytest.mark.parametrize(
  "freq, season",
  [
    ("h", 24),
    ("15min", 96),
    ("2h", 12),
    ("7min", 1),  # a day is no whole number of its steps
    ("D", 7),
    ("B", 5),
    ("7D", 52),
    ("W-SUN", 52),
    ("14D", 26),
    ("3D", 1),
    ("MS", 12),
    ("2MS", 6),
    ("ME", 12),
    ("QS-OCT", 4),
    ("YS", 1),
  ],
)
def test_the_season_of_a_frequency(freq, season):
  assert calendar.season(freq) == season


def test_seasonal_period_zero_is_the_season_of_most_series(tmp_path, caplog):
  days = functools.partial(pd.date_range, "2021-03-01", periods=60, freq="D")
  path = panel(tmp_path, {"a": hourly(60), "b": days(), "c": days()})
  run = RunSpec(data=spec(path, seasonal_period=0, lookback=12))
  with caplog.at_level("INFO", logger="flaxlstm.train.assembly"):
    fitted = assembly.fit_season(run, series.prepare(run.data))
  # Two of three series are daily: a week of days.
  assert fitted.data.seasonal_period == 7
  assert "data.seasonal_period=7 (the season of 1D)" in caplog.text
  # A named frequency (data.freq) rules: business days, a week of 5.
  named = RunSpec(data=spec(path, seasonal_period=0, lookback=12, freq="B"))
  assert assembly.fit_season(named, series.prepare(run.data)).data.seasonal_period == 5
  # A given season is kept; a season longer than the window is said to leave no baseline.
  assert assembly.fit_season(fitted, series.prepare(run.data)) is fitted
  short = RunSpec(data=spec(path, seasonal_period=0, lookback=6))
  with caplog.at_level("INFO", logger="flaxlstm.train.assembly"):
    assert assembly.fit_season(short, series.prepare(short.data)).data.seasonal_period == 7
  assert "longer than data.lookback=6: no seasonal-naive baseline" in caplog.text
  # No dates, no season: 1 (and the seasonal naive, which would be the naive, is left out).
  frame = pd.DataFrame({"y": np.sin(np.arange(60) / 3.0) + 2.0})
  frame.to_csv(tmp_path / "plain.csv", index=False)
  plain = RunSpec(
    data=DataSpec(
      path=str(tmp_path / "plain.csv"), date_column="", target=("y",), lookback=8, horizon=4
    )
  )
  fitted = assembly.fit_season(plain, data := series.prepare(plain.data))
  assert fitted.data.seasonal_period == 1
  assert "seasonal_naive" not in baselines.baseline_metrics(data, 1)
