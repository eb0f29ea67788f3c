"""`flaxlstm predict` dates its forecasts by each series' frequency, as pandas' offsets do, and
writes ids as the file writes them: tiny runs through the CLI, wide and long (issue 33)."""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
import pytest

from flaxlstm import cli

CORPUS = pathlib.Path(__file__).resolve().parents[1] / "data" / "malformed"
HORIZON = 6  # base.py: lookback 24, horizon 6
# A frequency pandas infers, by name, and the first date of a series of it.
FREQUENCIES = {
  "h": "2021-03-27 00:00",
  "D": "2020-02-20",
  "B": "2021-01-04",
  "W-WED": "2021-01-06",
  "ME": "2014-01-31",
  "MS": "2014-01-01",
  "QE": "2001-03-31",
}


def train(workdir: pathlib.Path, *args: str) -> pathlib.Path:
  base = ["train", "--quiet", "--config", str(CORPUS / "base.py"), "--workdir", str(workdir)]
  assert cli.main([*base, "--config.train.max_steps=2", *args]) == 0
  return workdir


def predict(run: pathlib.Path, data: pathlib.Path, out: pathlib.Path) -> pd.DataFrame:
  assert cli.main(["predict", "--workdir", str(run), "--data", str(data), "--out", str(out)]) == 0
  return pd.read_csv(out, dtype={"unique_id": str}, parse_dates=["origin", "date"])


def expected_dates(last: pd.Timestamp, freq: str) -> np.ndarray:
  return pd.date_range(last, periods=HORIZON + 1, freq=freq)[1:].to_numpy("datetime64[ns]")


def series_frame(freq: str, n: int, seed: int = 0) -> pd.DataFrame:
  rng = np.random.default_rng(seed)
  t = np.arange(n)
  return pd.DataFrame(
    {
      "date": pd.date_range(FREQUENCIES[freq], periods=n, freq=freq),
      "x": np.round(np.sin(t / 2.0) + 0.1 * rng.normal(size=n), 4),
      "y": np.round(np.cos(t / 2.0) + 0.1 * rng.normal(size=n), 4),
    }
  )


@pytest.mark.slow  # trains to completion
def test_wide_forecasts_are_dated_by_the_file_frequency(tmp_path, capsys):
  run = train(tmp_path / "run")  # hourly valid.csv; a new file brings its own frequency
  for freq in FREQUENCIES:
    frame = series_frame(freq, 40)
    data = tmp_path / f"{freq}.csv"
    frame.to_csv(data, index=False)
    capsys.readouterr()
    table = predict(run, data, tmp_path / f"{freq}_out.csv")
    # ... and is told when the run was trained on another (the run records its own: 1h).
    warned = "has series stepping by a frequency" in capsys.readouterr().err
    assert warned == (freq != "h"), freq
    last = frame.date.iloc[-1]
    assert (table.origin == last).all() and list(table.step) == list(range(1, HORIZON + 1))
    np.testing.assert_array_equal(table.date.to_numpy(), expected_dates(last, freq), freq)
  # A series with a missing row (data.missing_dates="error"): one line, exit 2, nothing
  # written.
  gappy = tmp_path / "gappy.csv"
  series_frame("ME", 40).drop(index=30).to_csv(gappy, index=False)
  out = tmp_path / "gappy_out.csv"
  args = ["predict", "--workdir", str(run), "--data", str(gappy), "--out", str(out)]
  capsys.readouterr()
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {gappy} skips 1 of the dates of its frequency (ME), first ")
  assert err.count("\n") == 1
  assert not out.exists()
  # Read with predict's own flags: the missing month filled, or the rows kept as they are
  # and the forecast dated by the frequency named; the forecast dates are the same.
  last = series_frame("ME", 40).date.iloc[-1]
  for flags in (
    ["--missing-dates", "fill", "--fill", "interpolate"],
    ["--missing-dates", "keep", "--freq", "ME"],
  ):
    assert cli.main([*args, "--overwrite", *flags]) == 0, flags
    table = pd.read_csv(out, parse_dates=["origin", "date"])
    np.testing.assert_array_equal(table.date.to_numpy(), expected_dates(last, "ME"), flags)
  assert cli.main([*args, "--overwrite", "--missing-dates", "fill"]) == 2
  assert "add --fill ffill or interpolate" in capsys.readouterr().err
  # Back-testing a filled file: the inserted month's actual is empty, never the fill.
  flags = ["--missing-dates", "fill", "--fill", "interpolate", "--all-windows"]
  assert cli.main([*args, "--overwrite", *flags]) == 0
  table = pd.read_csv(out, parse_dates=["origin", "date"])
  skipped = series_frame("ME", 40).date.iloc[30]
  assert table[table.date == skipped].y_actual.isna().all()
  assert table[table.date != skipped].y_actual.notna().any()


@pytest.mark.slow  # trains to completion
def test_panel_forecasts_each_series_by_its_frequency_with_ids_as_written(tmp_path):
  # Each series its own frequency; ids '007' and '7' are two series, not the number 7.
  names = {"007": "ME", "7": "MS", "w": "W-WED", "q": "QE", "b": "B", "d": "D", "h": "h"}
  parts = [
    series_frame(freq, 80, seed=k).drop(columns="x").assign(unique_id=name)
    for k, (name, freq) in enumerate(names.items())
  ]
  panel = pd.concat(parts, ignore_index=True).rename(columns={"date": "ds"})
  data = tmp_path / "panel.csv"
  panel.sample(frac=1.0, random_state=0).to_csv(data, index=False)  # any row order
  run = train(
    tmp_path / "run",
    f"--config.data.path={data}",
    "--config.data.id_column=unique_id",
    "--config.data.date_column=ds",
    "--config.data.target=y",
    "--config.data.calendar=month,dayofweek",
  )
  table = predict(run, data, tmp_path / "out.csv")
  assert sorted(table.unique_id.unique()) == sorted(names)
  for name, freq in names.items():
    rows = table[table.unique_id == name]
    last = panel[panel.unique_id == name].ds.iloc[-1]
    assert (rows.origin == last).all()
    np.testing.assert_array_equal(rows.date.to_numpy(), expected_dates(last, freq), name)
    assert np.isfinite(rows.y).all()
  # Written as the file writes them: the id column's text, not a number.
  written = {line.split(",")[0] for line in (tmp_path / "out.csv").read_text().splitlines()[1:]}
  assert written == set(names)
