"""Long tables (unique_id, ds, y): panels of series with their own lengths and start dates,
per-series splits and scalers, covariates, the window index and the panel shuffle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flaxlstm.config import DataSpec, RunSpec, validate
from flaxlstm.data import calendar, scaling, series, splits, windows
from flaxlstm.errors import InputError

LOOKBACK, HORIZON = 8, 4
LENGTHS = {"b": 120, "a": 100, "c": 90}  # deliberately not in id order


def panel_frame(seed: int = 0) -> pd.DataFrame:
  """Three hourly series of different lengths and starts, levels and scales; a static
  column `size`, a known column `promo`; rows shuffled."""
  rng = np.random.default_rng(seed)
  parts = []
  for k, (name, n) in enumerate(LENGTHS.items()):
    t = np.arange(n)
    parts.append(
      pd.DataFrame(
        {
          "unique_id": name,
          "ds": pd.date_range("2021-03-01", periods=n, freq="h") + pd.Timedelta(hours=5 * k),
          "y": 10.0 * k + (k + 1) * np.sin(t / 4.0) + 0.1 * rng.normal(size=n),
          "promo": (t % 7 == 0).astype(float),
          "size": float(k + 2),
        }
      )
    )
  frame = pd.concat(parts, ignore_index=True)
  return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


def last_rows(frame: pd.DataFrame, name: str, k: int) -> pd.DataFrame:
  """`frame` with series `name` cut to its last 1/k of dates (still evenly stepped)."""
  own = frame.unique_id == name
  first = frame.ds[own].sort_values().iloc[-(int(own.sum()) // k)]
  return frame[~own | (frame.ds >= first)]


def write(tmp_path: Path, frame: pd.DataFrame, name: str = "panel.csv") -> str:
  path = tmp_path / name
  frame.to_csv(path, index=False)
  return str(path)


def spec(path: str, **overrides) -> DataSpec:
  values = dict(
    path=path,
    id_column="unique_id",
    date_column="ds",
    target=("y",),
    lookback=LOOKBACK,
    horizon=HORIZON,
    seasonal_period=4,
  )
  return DataSpec(**{**values, **overrides})


@pytest.fixture
def panel_path(tmp_path):
  return write(tmp_path, panel_frame())


def test_long_table_rows_are_grouped_by_series_in_time_order(panel_path):
  data = series.prepare(spec(panel_path))
  assert data.series_ids == ("a", "b", "c")
  lengths = [LENGTHS[i] for i in data.series_ids]
  np.testing.assert_array_equal(np.diff(data.offsets), lengths)
  frame = pd.read_csv(panel_path, parse_dates=["ds"]).sort_values(["unique_id", "ds"])
  np.testing.assert_allclose(data.y_raw[:, 0], frame.y.to_numpy(np.float32))
  assert (
    np.diff(data.dates.astype(np.int64))[np.diff(data.row_series(np.arange(310))) == 0] > 0
  ).all()


def test_per_series_fraction_splits_and_window_index(panel_path):
  data = series.prepare(spec(panel_path))
  for s, n in enumerate(np.diff(data.offsets)):
    begin = data.offsets[s]
    train_end = begin + int(n * 0.7)
    assert tuple(data.split_rows["train"][s]) == (begin, train_end)
    assert data.split_rows["val"][s][0] == train_end
  for split in ("train", "val", "test"):
    index = data.window_index(split)
    starts = index.all_rows()
    # Brute force: every start whose inputs lie in its series (train: in its train rows)
    # and whose targets lie in the split.
    expected = []
    for s in range(data.n_series):
      lo, hi = data.split_rows[split][s]
      first = lo + LOOKBACK if split == "train" else max(lo, data.offsets[s] + LOOKBACK)
      expected += list(range(first, hi - HORIZON + 1))
    np.testing.assert_array_equal(starts, expected)
    assert len(index) == len(expected)
    # No window reaches into another series.
    np.testing.assert_array_equal(
      data.row_series(starts - LOOKBACK), data.row_series(starts + HORIZON - 1)
    )


def test_split_dates_per_series(panel_path):
  data = series.prepare(
    spec(panel_path, split="dates", split_dates=("2021-03-04", "2021-03-04 12:00"))
  )
  train_end, val_end = np.datetime64("2021-03-04"), np.datetime64("2021-03-04T12:00")
  for s in range(data.n_series):
    begin, stop = data.offsets[s], data.offsets[s + 1]
    dates = data.dates[begin:stop]
    (a, b), (c, d), (e, f) = (data.split_rows[k][s] for k in ("train", "val", "test"))
    assert (a, c, e, f) == (begin, b, d, stop)  # contiguous, the test split to the end
    np.testing.assert_array_equal(dates < train_end, np.arange(begin, stop) < b)
    np.testing.assert_array_equal(dates < val_end, np.arange(begin, stop) < d)


@pytest.mark.parametrize("val_size, test_size", [(-1, -1), (6, 9), (6, 0)])
def test_holdout_keeps_each_series_last_rows(panel_path, val_size, test_size):
  data = series.prepare(spec(panel_path, split="holdout", val_size=val_size, test_size=test_size))
  val = HORIZON if val_size == -1 else val_size
  test = HORIZON if test_size == -1 else test_size
  for s in range(data.n_series):
    begin, stop = data.offsets[s], data.offsets[s + 1]
    (a, b), (c, d), (e, f) = (data.split_rows[k][s] for k in ("train", "val", "test"))
    assert (a, b, c, d, e, f) == (begin, stop - test - val, b, stop - test, d, stop)
  # Each series: every val/test row is a target of some window, whose inputs may reach
  # back into the rows before its split (never into another series).
  per_series = data.n_series
  assert len(data.window_index("val")) == per_series * (val - HORIZON + 1)
  assert len(data.window_index("test")) == per_series * (test - HORIZON + 1 if test else 0)
  for split in ("val", "test"):
    starts = data.window_starts(split)
    rows = data.split_rows[split][data.row_series(starts)]
    assert np.all(starts >= rows[:, 0]) and np.all(starts + HORIZON <= rows[:, 1])
    np.testing.assert_array_equal(data.row_series(starts - LOOKBACK), data.row_series(starts))
    # Each series' first window starts at its split's first row: its inputs lie before it.
    assert (starts == rows[:, 0]).sum() == (per_series if len(starts) else 0)
  train = data.window_starts("train")
  rows = data.split_rows["train"][data.row_series(train)]
  assert np.all(train - LOOKBACK >= rows[:, 0]) and np.all(train + HORIZON <= rows[:, 1])


def test_recent_train_rows_keep_each_series_last_train_rows(panel_path):
  recent = 30  # series a, b, c have 100, 120, 90 rows: each trains on its last 30 train rows
  full = series.prepare(spec(panel_path, split="holdout", scaler_scope="series"))
  data = series.prepare(
    spec(panel_path, split="holdout", scaler_scope="series", recent_train_rows=recent)
  )
  for s in range(data.n_series):
    (a, b), (_, d) = data.split_rows["train"][s], full.split_rows["train"][s]
    assert (a, b) == (d - recent, d)
    # The scaler sees those rows only; val and test are the same rows as without it.
    np.testing.assert_allclose(data.y[a:b].mean(), 0, atol=1e-5)
    for split in ("val", "test"):
      assert tuple(data.split_rows[split][s]) == tuple(full.split_rows[split][s])
  train = data.window_starts("train")
  assert len(train) == data.n_series * (recent - LOOKBACK - HORIZON + 1)
  rows = data.split_rows["train"][data.row_series(train)]
  assert np.all(train - LOOKBACK >= rows[:, 0]) and np.all(train + HORIZON <= rows[:, 1])
  np.testing.assert_array_equal(data.window_starts("val"), full.window_starts("val"))
  # More rows than a series has: every train row, as without it.
  data = series.prepare(spec(panel_path, split="holdout", recent_train_rows=1000))
  np.testing.assert_array_equal(data.window_starts("train"), full.window_starts("train"))
  # Fewer than one window's rows: one window per series.
  data = series.prepare(spec(panel_path, split="holdout", recent_train_rows=5))
  assert len(data.window_starts("train")) == data.n_series
  with pytest.raises(InputError, match="data.recent_train_rows' = -1: must be >= 0"):
    spec(panel_path, recent_train_rows=-1)


def test_holdout_names_a_series_too_short_or_drops_it(tmp_path, monkeypatch):
  frame = panel_frame()
  short = last_rows(frame, "c", 4)
  n_c = int((short.unique_id == "c").sum())
  path = write(tmp_path, short, "short.csv")
  holdout = dict(split="holdout", val_size=2 * HORIZON, test_size=n_c)
  needs = LOOKBACK + HORIZON + 2 * HORIZON + n_c
  message = _error(f"{path}: series 'c' has {n_c} rows; ", series.prepare, spec(path, **holdout))
  assert message.startswith(
    f"{path}: series 'c' has {n_c} rows; data.split='holdout' needs at least {needs} "
    f"(data.lookback={LOOKBACK} + data.horizon={HORIZON} for a train window, "
    f"data.val_size={2 * HORIZON}, data.test_size={n_c})"
  )
  assert message.endswith(
    "(1 of 3 series are too short; set data.drop_short=True to leave them out, or "
    "data.pad_short=True to pad their first windows)"
  )
  warned = []
  monkeypatch.setattr(splits.log, "warning", warned.append)
  kept = series.prepare(spec(path, drop_short=True, **holdout))
  assert kept.series_ids == ("a", "b")
  assert warned == ["data.drop_short: left out 1 of 3 series too short to split"]
  # c is too short even padded (its holdout alone is all its rows): pad_short says nothing.
  warned.clear()
  kept = series.prepare(spec(path, drop_short=True, pad_short=True, **holdout))
  assert kept.series_ids == ("a", "b") and kept.padded is None
  assert warned == ["data.drop_short: left out 1 of 3 series too short to split"]


def test_per_series_scaling_uses_each_series_train_rows(panel_path, tmp_path):
  data = series.prepare(spec(panel_path, scaler_scope="series"))
  for s in range(data.n_series):
    a, b = data.split_rows["train"][s]
    np.testing.assert_allclose(data.y[a:b].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(data.y[a:b].std(), 1, atol=1e-4)
  starts = data.window_starts("test")
  _, y = windows.gather_windows(data, starts)
  raw = data.y_raw[starts[:, None] + np.arange(HORIZON)]
  np.testing.assert_allclose(data.inverse_targets(y, starts), raw, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="pass the window starts"):
    data.inverse_targets(y)
  # Saved as plain numbers and read back to the same transform.
  path = tmp_path / "scalers.json"
  data.save_scalers(path)
  loaded = scaling.load_scalers(path)
  assert loaded.scope == "series" and loaded.series_ids == ("a", "b", "c")
  again = series.prepare(spec(panel_path, scaler_scope="series"), scalers=loaded)
  np.testing.assert_array_equal(again.y, data.y)
  # Scale only: each series' train rows divided by their own max |y|.
  data = series.prepare(spec(panel_path, scaler_scope="series", scaler="maxabs"))
  for s in range(data.n_series):
    a, b = data.split_rows["train"][s]
    np.testing.assert_allclose(np.abs(data.y[a:b]).max(), 1, rtol=1e-6)
    np.testing.assert_allclose(
      data.y[a:b] * np.abs(data.y_raw[a:b]).max(), data.y_raw[a:b], rtol=1e-5
    )


def test_global_scaling_pools_every_series_train_rows(panel_path):
  data = series.prepare(spec(panel_path))
  rows = np.concatenate([np.arange(a, b) for a, b in data.split_rows["train"]])
  np.testing.assert_allclose(
    data.target_scaler.mean_, [data.y_raw[rows].astype(np.float64).mean()], rtol=1e-6
  )


def test_covariates_reach_the_model_inputs(panel_path):
  data = series.prepare(spec(panel_path, known=("promo",), static=("size",), calendar=("hour",)))
  assert data.known_names == ("promo", "hour_sin", "hour_cos")
  starts = data.window_starts("train")[[0, -1]]
  inputs = windows.model_inputs(data, starts)
  assert inputs["x"].shape == (2, LOOKBACK, 1)
  assert inputs["known"].shape == (2, LOOKBACK + HORIZON, 3)
  assert inputs["static"].shape == (2, 1)
  np.testing.assert_array_equal(inputs["series"], [0, 2])
  hours = pd.DatetimeIndex(data.dates[starts[0] - LOOKBACK : starts[0] + HORIZON]).hour
  np.testing.assert_allclose(inputs["known"][0, :, 1], np.sin(2 * np.pi * hours / 24), atol=1e-6)
  # Static values: one per series (a: 3, b: 2, c: 4), standardized over the series.
  np.testing.assert_allclose(inputs["static"][:, 0], [0.0, 1 / np.std([2, 3, 4])], rtol=1e-6)


def test_past_only_columns_are_inputs_but_not_targets(panel_path):
  data = series.prepare(spec(panel_path, features=("y", "promo")))
  inputs = windows.model_inputs(data, data.window_starts("val")[:3])
  assert data.feature_names == ("y", "promo") and data.target_names == ("y",)
  assert inputs["x"].shape == (3, LOOKBACK, 2) and "known" not in inputs


def test_calendar_features_are_unit_circles():
  dates = pd.date_range("2020-02-28", periods=80, freq="7h").to_numpy()
  out = calendar.calendar_features(dates, calendar.CALENDAR)
  assert out.shape == (80, 10)
  np.testing.assert_allclose(out[:, 0::2] ** 2 + out[:, 1::2] ** 2, 1, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 5, 17, 64, 1000, 4097])
def test_shuffled_positions_are_a_permutation(n):
  out = windows.shuffled_positions(np.arange(n), n, seed=3, epoch=1)
  np.testing.assert_array_equal(np.sort(out), np.arange(n))
  again = windows.shuffled_positions(np.arange(n), n, seed=3, epoch=1)
  np.testing.assert_array_equal(out, again)
  if n > 16:
    assert not np.array_equal(out, windows.shuffled_positions(np.arange(n), n, seed=3, epoch=2))


def test_panel_batches_are_pure_functions_of_seed_and_step(panel_path):
  data = series.prepare(spec(panel_path))
  index = data.window_index("train")
  n, bs = len(index), 16
  per_epoch = windows.steps_per_epoch(n, bs)
  epoch = np.concatenate([windows.batch_for_step(index, bs, 0, k) for k in range(per_epoch)])
  assert len(np.unique(epoch)) == per_epoch * bs  # an epoch sees no window twice
  assert set(epoch) <= set(index.all_rows())
  np.testing.assert_array_equal(
    windows.batch_for_step(index, bs, 0, per_epoch + 2),
    windows.batch_for_step(index, bs, 0, per_epoch + 2),
  )
  assert not np.array_equal(
    windows.batch_for_step(index, bs, 0, 0), windows.batch_for_step(index, bs, 1, 0)
  )


def _error(fragment: str, fn, *args, **kwargs) -> str:
  with pytest.raises(InputError) as info:
    fn(*args, **kwargs)
  assert fragment in str(info.value), str(info.value)
  assert "\n" not in str(info.value)
  return str(info.value)


def test_long_table_errors(tmp_path):
  frame = panel_frame()
  dup = pd.concat([frame, frame.iloc[[5]]], ignore_index=True)
  _error("duplicate (id, date)", series.prepare, spec(write(tmp_path, dup, "dup.csv")))
  _error(
    "id column 'series' (data.id_column) not found",
    series.prepare,
    spec(write(tmp_path, frame, "ok.csv"), id_column="series"),
  )
  varies = frame.assign(size=np.where(frame.index == 3, 99.0, frame["size"]))
  _error(
    "static column 'size' (data.static) of",
    series.prepare,
    spec(write(tmp_path, varies, "varies.csv"), static=("size",)),
  )
  short = last_rows(frame, "c", 5)
  path = write(tmp_path, short, "short.csv")
  _error("series 'c'", series.prepare, spec(path))
  _error("data.drop_short=True", series.prepare, spec(path))
  kept = series.prepare(spec(path, drop_short=True))
  assert kept.series_ids == ("a", "b")
  gap = frame.copy()
  gap.loc[gap.index[gap.unique_id == "b"][3], "y"] = np.nan
  path = write(tmp_path, gap, "gap.csv")
  _error("missing value (NaN) in column 'y'", series.prepare, spec(path))
  filled = series.prepare(spec(path, fill="ffill"))
  assert np.isfinite(filled.y).all()


def test_start_padding_trains_and_forecasts_series_shorter_than_the_lookback(tmp_path, caplog):
  frame = panel_frame()
  c = frame[frame.unique_id == "c"].sort_values("ds")
  # Series c keeps 14 rows: a holdout (val 4, test 4) leaves it 6 train rows, fewer than a
  # window's lookback 8 + horizon 4.
  frame = pd.concat([frame[frame.unique_id != "c"], c.iloc[:14]])
  path = write(tmp_path, frame)
  _error("series 'c' has 14 rows", series.prepare, spec(path, split="holdout"))
  data = series.prepare(spec(path, split="holdout", start_padding=True))
  s = data.series_ids.index("c")
  begin = int(data.offsets[s])
  train = data.window_index("train")
  # c's train windows start after one observed row, and their targets stay in its train rows.
  assert (train.first[s], train.counts[s]) == (begin + 1, 6 - HORIZON)
  starts = np.array([begin + 1, begin + 3, int(data.offsets[s + 1])])  # the last: the forecast
  x = windows.gather_inputs(data, starts)
  steps = np.arange(-LOOKBACK, 0)
  # Inputs before c's first row repeat it (edge padding), never another series' rows.
  np.testing.assert_array_equal(x, data.x[np.maximum(starts[:, None] + steps, begin)])
  assert (x[0] == data.x[begin]).all()
  inputs = windows.model_inputs(data, starts)
  np.testing.assert_array_equal(inputs["x"], x)
  assert (inputs["series"] == data.series_codes[s]).all()
  # The baselines read the same padded window: seasonal naive (period 4) one step in
  # repeats c's first value.
  from flaxlstm.forecast import baselines

  seasonal = baselines.seasonal_naive_forecast(data, starts[:1], 4)
  np.testing.assert_array_equal(seasonal[0], np.repeat(data.y[begin : begin + 1], HORIZON, 0))
  scores = baselines.baseline_metrics(data, 4)
  assert all(np.isfinite(scores[name]["test"]["mse"]) for name in ("linear", "dlinear"))
  # data.pad_short pads c alone: its windows are start_padding's, the others' are those of
  # the file without c's padding (and c is named in a warning).
  with caplog.at_level("WARNING", logger="flaxlstm.data.splits"):
    only = series.prepare(spec(path, split="holdout", pad_short=True))
  assert "data.pad_short: 1 of 3 series of" in caplog.text
  np.testing.assert_array_equal(only.padded, [k == s for k in range(3)])
  for split in ("train", "val", "test"):
    index, full = only.window_index(split), data.window_index(split)
    assert (index.first[s], index.counts[s]) == (full.first[s], full.counts[s])
    others = series.prepare(spec(path, split="holdout", drop_short=True)).window_index(split)
    assert [int(n) for k, n in enumerate(index.counts) if k != s] == list(others.counts)
  np.testing.assert_array_equal(windows.gather_inputs(only, starts), x)
  # Without padding a window's rows are the plain range: nothing changes for long series.
  plain = series.prepare(spec(write(tmp_path, panel_frame(), "long.csv"), split="holdout"))
  ends = plain.offsets[1:]
  np.testing.assert_array_equal(windows.gather_inputs(plain, ends), plain.x[ends[:, None] + steps])


def test_config_checks_for_panels():
  for overrides, fragment in [
    (dict(static=("size",)), "needs a long table"),
    (dict(scaler_scope="series"), "needs a long table"),
    (dict(calendar=("minute",)), "is not one of"),
    (dict(split="dates"), "split='dates' needs increasing timestamps"),
    (dict(split="dates", split_dates=("2021-01-02", "2021-01-01")), "increasing timestamps"),
    (dict(split_dates=("2021-01-01", "2021-01-02")), "only used with data.split='dates'"),
    (dict(known=("OT",)), "'OT' is also in data.target"),
    (dict(split="holdout", val_size=0), "'data.val_size' = 0: must be -1 (one horizon)"),
    (dict(split="holdout", test_size=2**41), "'data.test_size' = 2199023255552: must be <="),
    (dict(val_size=30), "'data.val_size' = 30: is only used with data.split='holdout'"),
  ]:
    _error(fragment, lambda **kw: validate(RunSpec(data=DataSpec(**kw))), **overrides)


def test_saved_scalers_reject_a_malformed_panel_block(panel_path, tmp_path):
  data = series.prepare(spec(panel_path, scaler_scope="series"))
  path = tmp_path / "scalers.json"
  data.save_scalers(path)
  payload = json.loads(path.read_text())
  payload["targets"]["scale"] = [[1.0]]
  path.write_text(json.dumps(payload))
  _error("targets: scale must be 3 x 1 finite numbers", scaling.load_scalers, path)


def test_a_series_split_that_data_fill_made_up_is_one_warning(tmp_path, monkeypatch):
  """The panel counterpart of test_data's: the rows are shuffled in the file and sorted by
  series and date, and the warning names the series whose test target was all made up."""
  from flaxlstm.data import checks

  warned = []
  monkeypatch.setattr(checks.log, "warning", warned.append)
  frame = panel_frame()
  b = frame["unique_id"] == "b"
  last = frame.loc[b, "ds"].sort_values().iloc[-LENGTHS["b"] // 5 :]  # past its val rows
  frame.loc[b & frame["ds"].isin(last), "y"] = np.nan
  path = write(tmp_path, frame)
  data = series.prepare(spec(path, fill="ffill"))
  assert np.isfinite(data.y).all()
  assert len(warned) == 1
  assert warned[0].startswith("data.fill='ffill' filled all ")
  assert f"values of target column 'y' in the test split of series 'b' of {path}" in warned[0]
  assert "test metrics are scored against filled values" in warned[0]
