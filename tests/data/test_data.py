"""Tests for flaxlstm.data (loading, validation, splits, scaling, windows, batches,
augmentation) and flaxlstm.forecast's baselines and metrics."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import flaxlstm.data
from flaxlstm.config import AugmentSpec, DataSpec
from flaxlstm.data import augment, checks, io, scaling, series, windows
from flaxlstm.errors import InputError
from flaxlstm.forecast import baselines, metrics

LOOKBACK = 8
HORIZON = 4


def make_frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
  """A small hourly series with two inputs and a target, none of them constant."""
  rng = np.random.default_rng(seed)
  t = np.arange(n)
  return pd.DataFrame(
    {
      "date": pd.date_range("2020-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
      "a": np.sin(t / 5.0) + 0.1 * rng.normal(size=n),
      "b": np.cumsum(rng.normal(size=n)),
      "OT": 20.0 + 3.0 * np.cos(t / 7.0) + rng.normal(size=n),
    }
  )


def write_csv(tmp_path: Path, frame: pd.DataFrame, name: str = "series.csv") -> str:
  path = tmp_path / name
  frame.to_csv(path, index=False)
  return str(path)


def make_cfg(path: str = "", **overrides) -> DataSpec:
  """The data spec with the schema defaults, shrunk for small synthetic files."""
  return DataSpec(
    **{"path": path, "lookback": LOOKBACK, "horizon": HORIZON, "seasonal_period": 4, **overrides}
  )


def expect_input_error(fragment: str, fn, *args, **kwargs) -> str:
  with pytest.raises(InputError) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert fragment in message, message
  assert "\n" not in message and "\r" not in message, message
  return message


# ---------------------------------------------------------------------------------------
# The module boundary and the bundled dataset
# ---------------------------------------------------------------------------------------


def test_data_package_never_imports_jax():
  imported = set()
  for path in Path(flaxlstm.data.__file__).parent.glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        imported.update(alias.name.split(".")[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module:
        imported.add(node.module.split(".")[0])
  assert not imported & {"jax", "flax", "optax", "orbax"}, imported


def test_bundled_dataset_is_shipped_with_attribution():
  path = Path(io.bundled_dataset_path())
  assert path.name == "ETTh1.csv" and path.is_file()
  assert path.read_text().splitlines()[0] == "date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT"
  assert (path.parent / "ETT-LICENSE.txt").is_file()
  readme = (path.parent / "README.md").read_text()
  assert "CC BY-ND 4.0" in readme and "Informer" in readme and "@inproceedings" in readme
  expect_input_error("no bundled dataset named 'nope'", io.bundled_dataset_path, "nope")


def test_ett_split_gives_informer_bounds_on_bundled_file():
  data = series.prepare(make_cfg(path="", split="ett", lookback=96, horizon=24, features=("OT",)))
  assert data.n_rows == 17420
  assert data.bounds == {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)}
  assert data.feature_names == ("OT",) and data.target_names == ("OT",)
  assert data.dates[0] == np.datetime64("2016-07-01T00:00")
  # Informer's dataset lengths for seq_len=96, pred_len=24 (ETTh1, stride 1).
  train, val, test = (data.window_starts(s) for s in ("train", "val", "test"))
  assert (len(train), len(val), len(test)) == (8521, 2857, 2857)
  assert train[0] == 96 and val[0] == 8640 and test[0] == 11520
  assert test[-1] + 24 == 14400  # Rows 14400.. are unused.
  np.testing.assert_allclose(
    data.feature_scaler.mean_, data.y_raw[:8640].astype(np.float64).mean(0), rtol=1e-5
  )


# ---------------------------------------------------------------------------------------
# Splits and scalers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "overrides",
  [
    dict(split="fractions"),
    dict(split="fractions", split_fractions=(0.5, 0.25, 0.25)),
    dict(split="rows", split_rows=(120, 150, 190)),
    dict(split="rows", split_rows=(120, 150)),
    dict(split="holdout"),
    dict(split="holdout", val_size=10, test_size=12),
  ],
)
def test_splits_never_leak(tmp_path, overrides):
  data = series.prepare(make_cfg(write_csv(tmp_path, make_frame()), **overrides))
  (tr0, tr1), (va0, va1), (te0, te1) = (data.bounds[s] for s in ("train", "val", "test"))
  assert tr0 == 0 and tr1 == va0 and va1 == te0 and te1 <= data.n_rows
  train = data.window_starts("train")
  assert len(train) == tr1 - tr0 - LOOKBACK - HORIZON + 1
  assert np.all(train - LOOKBACK >= tr0) and np.all(train + HORIZON <= tr1)
  for split, (lo, hi) in (("val", (va0, va1)), ("test", (te0, te1))):
    starts = data.window_starts(split)
    assert len(starts) == hi - lo - HORIZON + 1  # Every row of the split is a target.
    assert np.all(starts >= lo) and np.all(starts + HORIZON <= hi)
    assert np.all(starts - LOOKBACK >= 0)
    assert np.all(np.diff(starts) == 1)


def test_fraction_and_row_bounds_are_exact(tmp_path):
  path = write_csv(tmp_path, make_frame(n=1000))
  data = series.prepare(make_cfg(path))
  assert data.bounds == {"train": (0, 700), "val": (700, 800), "test": (800, 1000)}
  data = series.prepare(make_cfg(path, split="rows", split_rows=(500, 600)))
  assert data.bounds == {"train": (0, 500), "val": (500, 600), "test": (600, 1000)}
  data = series.prepare(make_cfg(path, split="holdout", val_size=100, test_size=200))
  assert data.bounds == {"train": (0, 700), "val": (700, 800), "test": (800, 1000)}
  data = series.prepare(make_cfg(path, split="holdout"))  # one horizon each
  assert data.bounds == {"train": (0, 992), "val": (992, 996), "test": (996, 1000)}
  assert len(data.window_starts("val")) == len(data.window_starts("test")) == 1


@pytest.mark.parametrize(
  "overrides, train_end",
  [
    (dict(split="holdout", val_size=100, test_size=0), 900),
    (dict(split_fractions=(0.9, 0.1, 0.0)), 900),
  ],
)
def test_a_production_fit_has_no_test_split(tmp_path, overrides, train_end):
  data = series.prepare(make_cfg(write_csv(tmp_path, make_frame(n=1000)), **overrides))
  assert data.bounds == {"train": (0, train_end), "val": (train_end, 1000), "test": (1000, 1000)}
  assert len(data.window_starts("test")) == 0
  assert len(data.window_starts("val")) == 1000 - train_end - HORIZON + 1
  # The baselines are scored on the splits that have windows.
  assert {s for m in baselines.baseline_metrics(data, 4).values() for s in m} == {"val"}


def test_scalers_are_fit_on_train_rows_only(tmp_path):
  frame = make_frame()
  data = series.prepare(make_cfg(write_csv(tmp_path, frame)))
  stop = data.bounds["train"][1]
  train_x = frame[["a", "b", "OT"]].to_numpy()[:stop]
  np.testing.assert_allclose(data.feature_scaler.mean_, train_x.mean(0), rtol=1e-10)
  np.testing.assert_allclose(data.feature_scaler.scale_, train_x.std(0), rtol=1e-10)
  np.testing.assert_allclose(data.target_scaler.mean_, [frame.OT[:stop].mean()])
  # Train rows are ~standardised; the rest of the file is not used for the statistics.
  np.testing.assert_allclose(data.x[:stop].mean(0), 0.0, atol=1e-5)

  # Changing a test-row value changes that row's scaled value but not the scaler.
  changed = frame.copy()
  row = data.bounds["test"][0] + 3
  changed.loc[row, ["a", "OT"]] = [1e3, -1e3]
  data2 = series.prepare(make_cfg(write_csv(tmp_path, changed, "changed.csv")))
  np.testing.assert_array_equal(data2.feature_scaler.mean_, data.feature_scaler.mean_)
  np.testing.assert_array_equal(data2.target_scaler.scale_, data.target_scaler.scale_)
  np.testing.assert_array_equal(data2.x[:row], data.x[:row])
  assert data2.x[row, 0] != data.x[row, 0]


@pytest.mark.parametrize("scaler", ["standard", "robust", "minmax", "maxabs", "none"])
@pytest.mark.parametrize("scale_target", [True, False])
def test_inverse_targets_inverts(tmp_path, scaler, scale_target):
  data = series.prepare(
    make_cfg(
      write_csv(tmp_path, make_frame()),
      scaler=scaler,
      scale_target=scale_target,
      target=("OT", "b"),
    )
  )
  assert data.x.dtype == data.y.dtype == data.y_raw.dtype == np.float32
  assert data.y.shape == (data.n_rows, 2)
  if scaler == "none" or not scale_target:
    assert data.target_scaler is None
    np.testing.assert_array_equal(data.y, data.y_raw)
  if scaler == "none":
    assert data.feature_scaler is None
  np.testing.assert_allclose(data.inverse_targets(data.y), data.y_raw, rtol=1e-5, atol=1e-4)
  starts = data.window_starts("val")
  _, y = windows.gather_windows(data, starts)
  _, y_raw_windows = windows.gather_windows(dataclasses.replace(data, y=data.y_raw), starts)
  np.testing.assert_allclose(data.inverse_targets(y), y_raw_windows, rtol=1e-5, atol=1e-4)


def test_no_date_column(tmp_path):
  path = write_csv(tmp_path, make_frame().drop(columns="date"))
  data = series.prepare(make_cfg(path, date_column="", features=("a",), target=("OT",)))
  assert data.dates is None
  assert data.feature_names == ("a",) and data.target_names == ("OT",)


def test_scalers_round_trip_and_inference(tmp_path):
  frame = make_frame()
  cfg = make_cfg(write_csv(tmp_path, frame), features=("a", "b"))
  data = series.prepare(cfg)
  scaler_path = tmp_path / "run" / "scalers.json"
  data.save_scalers(scaler_path)
  assert [p.name for p in scaler_path.parent.iterdir()] == ["scalers.json"]  # No temp left.
  loaded = scaling.load_scalers(scaler_path)
  assert loaded.feature_names == ("a", "b") and loaded.target_names == ("OT",)

  again = series.prepare(cfg, scalers=loaded)
  np.testing.assert_array_equal(again.x, data.x)
  np.testing.assert_array_equal(again.y, data.y)
  expect_input_error(
    "saved scalers were fitted on features",
    series.prepare,
    make_cfg(cfg.path, features=("a",)),
    scalers=loaded,
  )

  # A new file without the target column: inputs are scaled with the saved scalers.
  new = frame.iloc[150:].drop(columns="OT")
  new_path = write_csv(tmp_path, new, "new.csv")
  inf = series.prepare_inference(cfg, loaded, path=new_path)
  assert inf.bounds == {"all": (0, 50)} and not inf.has_targets
  np.testing.assert_allclose(inf.x, data.x[150:], rtol=1e-6)
  assert np.isnan(inf.y).all()
  future = windows.gather_inputs(inf, np.array([inf.n_rows]))
  np.testing.assert_array_equal(future[0], inf.x[-LOOKBACK:])
  # With targets present, back-test windows are available.
  inf2 = series.prepare_inference(
    cfg, loaded, path=write_csv(tmp_path, frame.iloc[150:], "new2.csv")
  )
  assert inf2.has_targets and len(inf2.window_starts("all")) == 50 - LOOKBACK - HORIZON + 1
  np.testing.assert_allclose(inf2.y, data.y[150:], rtol=1e-6)
  expect_input_error(
    "series too short",
    series.prepare_inference,
    cfg,
    loaded,
    path=write_csv(tmp_path, frame.iloc[:3], "tiny.csv"),
  )

  bad = tmp_path / "bad.json"
  bad.write_bytes(b"{not json")
  expect_input_error("is not valid JSON", scaling.load_scalers, bad)
  expect_input_error("scalers file not found", scaling.load_scalers, tmp_path / "none.json")


@pytest.mark.parametrize(
  "kind, scale_target",
  [
    ("standard", True),
    ("robust", True),
    ("minmax", True),
    ("maxabs", True),
    ("standard", False),
    ("none", True),
  ],
)
def test_saved_scalers_are_plain_json_and_exact(tmp_path, kind, scale_target):
  """Scalers are saved as numbers, not a pickle, and rebuild to the same transform bit for
  bit (JSON keeps every float64 digit)."""
  cfg = make_cfg(
    write_csv(tmp_path, make_frame()), features=("a", "b"), scaler=kind, scale_target=scale_target
  )
  data = series.prepare(cfg)
  path = tmp_path / "scalers.json"
  data.save_scalers(path)
  payload = json.loads(path.read_text())  # plain data: a JSON object of lists of numbers
  assert payload["kind"] == kind and payload["feature_names"] == ["a", "b"]
  loaded = scaling.load_scalers(path)
  again = series.prepare(cfg, scalers=loaded)
  np.testing.assert_array_equal(again.x, data.x)
  np.testing.assert_array_equal(again.y, data.y)
  y = np.linspace(-2, 2, 12).reshape(4, 3, 1)
  np.testing.assert_array_equal(again.inverse_targets(y), data.inverse_targets(y))


@pytest.mark.parametrize(
  "edit, fragment",
  [
    (lambda p: p.update(format="flaxlstm.scalers/1"), "is not a flaxlstm scalers file"),
    (lambda p: p.update(kind="quantile"), "kind must be one of"),
    (lambda p: p.update(feature_names=[]), "feature_names must be a non-empty list"),
    (lambda p: p["features"].update(mean_=[0.0]), "mean_ must be 2 finite numbers"),
    (lambda p: p["features"].update(scale_=[1.0, 0.0]), "scale_ has a zero"),
    (lambda p: p["features"].pop("var_"), "expected the standard statistics"),
    (lambda p: p["features"].update(n_samples_seen_="many"), "must be a positive integer"),
    (lambda p: p.update(features=None), "feature statistics are missing"),
  ],
)
def test_malformed_scalers_file_is_one_line_naming_it(tmp_path, edit, fragment):
  cfg = make_cfg(write_csv(tmp_path, make_frame()), features=("a", "b"))
  path = tmp_path / "scalers.json"
  series.prepare(cfg).save_scalers(path)
  payload = json.loads(path.read_text())
  edit(payload)
  path.write_text(json.dumps(payload))
  message = expect_input_error(fragment, scaling.load_scalers, path)
  assert "\n" not in message


def test_legacy_pickled_scalers_are_refused_unread(tmp_path):
  marker = tmp_path / "executed"

  class Payload:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = tmp_path / "run" / "scalers.pkl"
  path.parent.mkdir()
  path.write_bytes(pickle.dumps(Payload()))
  message = expect_input_error(
    "is a pickle, which flaxlstm no longer loads", scaling.load_scalers, path
  )
  assert "--refit-scalers" in message and not marker.exists()


# ---------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------


def test_parquet_round_trip_loads_like_csv(tmp_path):
  frame = make_frame()
  csv = write_csv(tmp_path, frame)
  typed = frame.assign(date=pd.to_datetime(frame.date))
  typed.to_parquet(tmp_path / "series.parquet", index=False)
  typed.set_index("date").to_parquet(tmp_path / "indexed.pq")  # Dates in the index.
  shifted = typed.set_axis(np.arange(len(typed)) + 100)  # An unnamed, non-range index.
  shifted.to_parquet(tmp_path / "shifted.parquet")
  from_csv = io.load_frame(csv, date_column="date")
  for name in ("series.parquet", "indexed.pq", "shifted.parquet"):
    from_pq = io.load_frame(tmp_path / name, date_column="date")
    pd.testing.assert_frame_equal(from_pq, from_csv)
  assert from_csv.date.dtype == "datetime64[ns]"
  assert list(from_csv.columns) == ["date", "a", "b", "OT"]


def test_fill_fixes_gaps(tmp_path):
  frame = make_frame(n=30)
  frame.loc[5, "a"] = np.nan
  frame.loc[6, "a"] = np.nan
  frame.loc[9, "b"] = np.inf
  frame.loc[0, "OT"] = np.nan
  path = write_csv(tmp_path, frame)
  expect_input_error(
    "remains after data.fill='ffill'", io.load_frame, path, date_column="date", fill="ffill"
  )
  ff = io.load_frame(path, date_column="date", columns=["a", "b"], fill="ffill")
  assert ff.a[5] == ff.a[6] == frame.a[4] and ff.b[9] == frame.b[8]
  lin = io.load_frame(path, date_column="date", fill="interpolate")
  np.testing.assert_allclose(
    lin.a[5:7], frame.a[4] + (frame.a[7] - frame.a[4]) * np.array([1, 2]) / 3
  )
  assert lin.OT[0] == frame.OT[1]  # The leading edge takes the nearest value.
  assert np.isfinite(lin[["a", "b", "OT"]].to_numpy()).all()


def test_a_split_that_data_fill_made_up_is_one_warning(tmp_path, monkeypatch):
  # The test split's target is all missing: ffill makes it the last observed value, and its
  # metrics would score that, not the data. Partly filled splits stay quiet.
  warned = []  # the logger's own records: the CLI may have stopped its propagation
  monkeypatch.setattr(checks.log, "warning", warned.append)
  frame = make_frame()
  frame.loc[160:, "OT"] = np.nan
  frame.loc[150:155, "a"] = np.nan
  path = write_csv(tmp_path, frame)
  data = series.prepare(make_cfg(path, target=("OT",), fill="ffill"))
  assert np.isfinite(data.y).all()
  assert warned == [
    f"data.fill='ffill' filled all 40 values of target column 'OT' in the test split of {path} "
    "(row 160 (line 162) to row 199 (line 201)): test metrics are scored against filled "
    "values, not observations"
  ]
  warned.clear()
  frame.loc[170:, "OT"] = frame.loc[170:, "a"]  # observations again in the test split
  series.prepare(make_cfg(write_csv(tmp_path, frame, "partly.csv"), target=("OT",), fill="ffill"))
  assert not warned


def test_values_beyond_float32_and_a_target_constant_while_training_are_refused(tmp_path):
  frame = make_frame()
  frame.loc[7, "b"] = -1e300  # finite in float64, -inf in the model's float32
  expect_input_error(
    "value -1e+300 in column 'b' of",
    series.prepare,
    make_cfg(write_csv(tmp_path, frame, "big.csv"), target=("OT",), fill="ffill"),
  )
  frame = make_frame()
  frame.loc[:139, "OT"] = 20.0  # 0.7 x 200 training rows, flat; the rest varies
  message = expect_input_error(
    "target column 'OT' is constant over the training rows",
    series.prepare,
    make_cfg(write_csv(tmp_path, frame, "flat.csv"), target=("OT",)),
  )
  assert "(row 0 (line 2) to row 139 (line 141)): every value is 20" in message


def _bad_cases():
  """(name, frame mutation or file writer, config overrides, expected fragment)."""

  def mutate(fn):
    def write(tmp_path):
      frame = make_frame(n=40)
      fn(frame)
      return write_csv(tmp_path, frame)

    return write

  def set_cell(row, column, value):
    def fn(frame):
      if not isinstance(value, float):
        frame[column] = frame[column].astype(object)
      frame.loc[row, column] = value

    return fn

  def swap_dates(frame):
    frame.loc[[10, 11], "date"] = frame.loc[[11, 10], "date"].to_numpy()

  def duplicate_date(frame):
    frame.loc[12, "date"] = frame.loc[11, "date"]

  def constant(frame):
    frame["b"] = 1.5

  def raw(text, name="series.csv"):
    def write(tmp_path):
      path = tmp_path / name
      path.write_text(text)
      return str(path)

    return write

  good = mutate(lambda frame: None)
  return [
    ("missing file", lambda tmp_path: str(tmp_path / "nope.csv"), {}, "data file not found"),
    ("extension", raw("a,b\n1,2\n", "series.txt"), {}, "unsupported data file extension"),
    ("empty file", raw(""), {}, "data file is empty"),
    ("header only", raw("date,a,OT\n"), {}, "has no data rows"),
    (
      "unreadable parquet",
      raw("not parquet at all", "series.parquet"),
      {},
      "cannot read data file",
    ),
    (
      "ragged csv",
      raw("date,a,OT\n2020-01-01,1,2\n2020-01-02,1,2,3,4\n"),
      {},
      "cannot read data file",
    ),
    (
      "missing column",
      good,
      dict(features=("a", "nope")),
      "column 'nope' (data.features) not found",
    ),
    ("missing target", good, dict(target=("temp",)), "column 'temp' (data.target) not found"),
    ("missing date column", good, dict(date_column="when"), "date column 'when' not found"),
    ("non-numeric", mutate(set_cell(3, "a", "abc")), {}, "non-numeric value 'abc' in column 'a'"),
    ("nan", mutate(set_cell(2, "b", np.nan)), {}, "missing value (NaN) in column 'b'"),
    ("inf", mutate(set_cell(7, "OT", np.inf)), {}, "infinite value (inf) in column 'OT'"),
    (
      "leading nan with ffill",
      mutate(set_cell(0, "a", np.nan)),
      dict(fill="ffill"),
      "at row 0 (line 2) remains after data.fill='ffill'",
    ),
    (
      "unparseable date",
      mutate(set_cell(4, "date", "not a date")),
      {},
      "unparseable timestamp 'not a date'",
    ),
    ("missing date", mutate(set_cell(4, "date", np.nan)), {}, "missing timestamp"),
    ("unsorted dates", mutate(swap_dates), {}, "timestamps not sorted"),
    ("duplicated dates", mutate(duplicate_date), {}, "duplicated timestamp"),
    ("constant column", mutate(constant), {}, "is constant (every value is 1.5)"),
    ("too short", good, dict(lookback=30), "series too short: data.lookback=30"),
    ("too short val", good, dict(split_fractions=(0.9, 0.05, 0.05)), "series too short"),
    ("fractions sum", good, dict(split_fractions=(0.7, 0.3, 0.2)), "data.split_fractions"),
    ("fractions sign", good, dict(split_fractions=(0.7, -0.1, 0.2)), "data.split_fractions"),
    ("split rows order", good, dict(split="rows", split_rows=(30, 20, 40)), "data.split_rows"),
    ("split rows past end", good, dict(split="rows", split_rows=(20, 30, 41)), "data.split_rows"),
    ("ett too short", good, dict(split="ett"), "data.split='ett' needs at least 14400"),
    (
      "holdout too short",
      good,
      dict(split="holdout", val_size=16, test_size=16),
      "has 40 rows; data.split='holdout' needs at least 44 (data.lookback=8 + "
      "data.horizon=4 for a train window, data.val_size=16, data.test_size=16)",
    ),
    (
      "val_size zero",
      good,
      dict(split="holdout", val_size=0),
      "'data.val_size' = 0: must be -1 (one horizon) or at least data.horizon=4",
    ),
    (
      "test_size below horizon",
      good,
      dict(split="holdout", test_size=3),
      "'data.test_size' = 3: must be -1 (one horizon), 0 (no test split) or at least",
    ),
    (
      "test_size without holdout",
      good,
      dict(test_size=0),
      "'data.test_size' = 0: is only used with data.split='holdout'",
    ),
    ("fractions zero val", good, dict(split_fractions=(0.9, 0.0, 0.1)), "train and val > 0"),
    ("unknown split", good, dict(split="random"), "'data.split' = 'random': must be one of"),
    ("unknown scaler", good, dict(scaler="zscore"), "'data.scaler' = 'zscore': must be one"),
    ("unknown fill", good, dict(fill="zero"), "'data.fill' = 'zero': must be one of"),
    ("bad lookback", good, dict(lookback=0), "'data.lookback' = 0: must be > 0"),
    (
      "duplicate feature",
      good,
      dict(features=("a", "a")),
      "column names must be non-empty and distinct",
    ),
  ]


@pytest.mark.parametrize(
  "name,writer,overrides,fragment", _bad_cases(), ids=[c[0] for c in _bad_cases()]
)
def test_bad_input_raises_one_line_input_error(tmp_path, name, writer, overrides, fragment):
  del name
  # Spec values are checked when the spec is made, its choices by the schema (`validate`,
  # as `to_spec` does), the rest when the data is read.
  from flaxlstm import config as config_lib

  def prepare():
    data = make_cfg(writer(tmp_path), **overrides)
    return series.prepare(config_lib.validate(config_lib.RunSpec(data=data)).data)

  expect_input_error(fragment, prepare)


def test_messages_name_file_row_and_value(tmp_path):
  frame = make_frame(n=40)
  frame["a"] = frame["a"].astype(object)
  frame.loc[3, "a"] = "1,5"
  path = write_csv(tmp_path, frame)
  message = expect_input_error("non-numeric", io.load_frame, path, date_column="date")
  assert path in message and "'1,5'" in message and "row 3 (line 5)" in message
  frame = make_frame(n=40)
  frame.loc[11, "date"] = frame.loc[10, "date"]
  message = expect_input_error(
    "duplicated", io.load_frame, write_csv(tmp_path, frame), date_column="date"
  )
  assert "2020-01-01 10:00:00" in message and "row 11" in message
  message = expect_input_error("not found", io.load_frame, path, date_column="date", columns=["zz"])
  assert "columns: date, a, b, OT" in message
  frame = make_frame(n=40)
  frame["c"] = 2.0
  message = expect_input_error(
    "is constant", io.load_frame, write_csv(tmp_path, frame), date_column="date"
  )
  assert "'c'" in message


def test_missing_column_list_is_truncated(tmp_path):
  frame = pd.DataFrame({f"col{i}": np.arange(5.0) + i for i in range(40)})
  message = expect_input_error(
    "not found", io.load_frame, write_csv(tmp_path, frame), date_column="", columns=["x"]
  )
  assert "(28 more)" in message and "col39" not in message


# ---------------------------------------------------------------------------------------
# Windows, batches, augmentation, baselines
# ---------------------------------------------------------------------------------------


def test_gathered_windows_equal_raw_slices(tmp_path):
  data = series.prepare(make_cfg(write_csv(tmp_path, make_frame()), target=("OT", "a")))
  starts = np.concatenate([data.window_starts(s)[[0, 3, -1]] for s in ("train", "val", "test")])
  x, y = windows.gather_windows(data, starts)
  assert x.shape == (len(starts), LOOKBACK, 3) and y.shape == (len(starts), HORIZON, 2)
  assert x.dtype == y.dtype == np.float32
  for k, i in enumerate(starts):
    np.testing.assert_array_equal(x[k], data.x[i - LOOKBACK : i])
    np.testing.assert_array_equal(y[k], data.y[i : i + HORIZON])


def test_epoch_batches_are_pure_and_reshuffled():
  first = windows.epoch_batches(103, 10, seed=7, epoch=0)
  assert first.shape == (10, 10) and first.dtype == np.int64
  np.testing.assert_array_equal(first, windows.epoch_batches(103, 10, seed=7, epoch=0))
  assert len(np.unique(first)) == 100  # No window twice within an epoch.
  assert not np.array_equal(first, windows.epoch_batches(103, 10, seed=7, epoch=1))
  assert not np.array_equal(first, windows.epoch_batches(103, 10, seed=8, epoch=0))
  ordered = windows.epoch_batches(103, 10, seed=7, epoch=0, shuffle=False)
  np.testing.assert_array_equal(ordered.ravel(), np.arange(100))
  full = windows.epoch_batches(103, 10, seed=7, epoch=0, drop_last=False)
  assert full.shape == (11, 10) and set(full.ravel()) == set(range(103))
  assert windows.epoch_batches(5, 10, seed=0, epoch=0).shape == (0, 10)


def test_batch_for_step_matches_epoch_batches():
  starts = np.arange(50, 153)  # 103 windows -> 10 steps per epoch.
  for step in (0, 9, 10, 25):
    epoch, index = divmod(step, 10)
    expected = starts[windows.epoch_batches(103, 10, seed=3, epoch=epoch)[index]]
    np.testing.assert_array_equal(windows.batch_for_step(starts, 10, seed=3, step=step), expected)
  expect_input_error("fewer than one batch", windows.batch_for_step, starts[:5], 10, 0, 0)


def test_eval_batches_cover_everything_in_order():
  positions, mask = windows.eval_batches(23, 10)
  assert positions.shape == mask.shape == (3, 10)
  np.testing.assert_array_equal(positions[mask], np.arange(23))
  assert mask.sum() == 23 and not mask[2, 3:].any()
  assert (positions[2, 3:] == 22).all()  # Padding repeats a valid position.
  assert windows.eval_batches(0, 4)[0].shape == (0, 4)


@pytest.mark.parametrize(
  "name,strength",
  [("jitter", 0.1), ("scaling", 0.2), ("magnitude_warp", 0.2), ("window_slice", 0.3)],
)
def test_augmentations(name, strength):
  x = np.random.default_rng(0).normal(size=(6, 24, 3)).astype(np.float32)
  off = AugmentSpec()
  assert augment.augment(x, off, np.random.default_rng(1)) is x
  on = AugmentSpec(**{name: strength})
  out = augment.augment(x, on, augment.augment_rng(seed=1, step=5))
  assert out.shape == x.shape and out.dtype == np.float32
  assert not np.allclose(out, x)
  np.testing.assert_array_equal(out, augment.augment(x, on, augment.augment_rng(1, 5)))
  assert not np.array_equal(out, augment.augment(x, on, augment.augment_rng(1, 6)))
  np.testing.assert_array_equal(
    x, np.random.default_rng(0).normal(size=(6, 24, 3)).astype(np.float32)
  )  # Input not modified in place.


def test_window_slice_stretches_time_and_magnitude_warp_is_smooth():
  ramp = np.broadcast_to(np.arange(20, dtype=np.float32)[None, :, None], (4, 20, 1))
  out = augment.augment(ramp, AugmentSpec(window_slice=0.5), np.random.default_rng(0))
  steps = np.diff(out[:, :, 0], axis=1)
  # A crop of 10 steps stretched over 20: still a straight ramp, with slope 9/19.
  np.testing.assert_allclose(steps, 9 / 19, rtol=1e-5)
  assert out.min() >= 0 and out.max() <= 19
  ones = np.ones((4, 96, 2), np.float32)
  curve = augment.augment(ones, AugmentSpec(magnitude_warp=0.2), np.random.default_rng(0))
  assert np.abs(np.diff(curve, axis=1)).max() < 0.1  # Smooth, not noise.
  # Strengths are checked when the spec is made, once, not by each use.
  expect_input_error("'data.augment.window_slice' = 1.0", AugmentSpec, window_slice=1.0)
  expect_input_error("'data.augment.jitter' = -1", AugmentSpec, jitter=-1)


def test_baselines_match_hand_computed_values(tmp_path):
  n = 60
  frame = pd.DataFrame({"a": np.sin(np.arange(n)), "OT": np.arange(n, dtype=float) ** 2})
  cfg = make_cfg(
    write_csv(tmp_path, frame),
    date_column="",
    scaler="none",
    lookback=6,
    horizon=5,
    split="rows",
    split_rows=(30, 45, 60),
  )
  data = series.prepare(cfg)
  starts = np.array([10, 31])
  naive = baselines.naive_forecast(data, starts)
  assert naive.shape == (2, 5, 1)
  np.testing.assert_array_equal(naive[:, :, 0], [[81.0] * 5, [900.0] * 5])
  # period 3: h = 0..4 looks back to rows i-3, i-2, i-1, i-3, i-2.
  seasonal = baselines.seasonal_naive_forecast(data, starts, 3)
  np.testing.assert_array_equal(
    seasonal[:, :, 0], [[49, 64, 81, 49, 64], [784, 841, 900, 784, 841]]
  )
  # period == horizon == lookback edge: y_hat[i + h] = y[i + h - 5].
  data5 = series.prepare(
    make_cfg(
      cfg.path,
      date_column="",
      scaler="none",
      lookback=5,
      horizon=5,
      split="rows",
      split_rows=(30, 45, 60),
    )
  )
  np.testing.assert_array_equal(
    baselines.seasonal_naive_forecast(data5, starts, 5)[0, :, 0],
    (np.arange(5, 10) ** 2).astype(float),
  )
  expect_input_error("data.seasonal_period", baselines.seasonal_naive_forecast, data, starts, 7)


def test_regression_metrics():
  scores = metrics.regression_metrics(
    np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 0.0], [6.0, 4.0]])
  )
  assert scores == {"mse": 13 / 4, "mae": 5 / 4, "rmse": math.sqrt(13 / 4)}
  assert all(type(v) is float for v in scores.values())


def test_pad_short_pads_a_wide_table_only_when_it_is_too_short(tmp_path, caplog):
  rows = dict(split="rows", split_rows=(10, 16))  # train 10 rows: less than 8 + 4 of a window
  path = write_csv(tmp_path, make_frame(20))
  expect_input_error("series too short: data.lookback=8", series.prepare, make_cfg(path, **rows))
  with caplog.at_level("WARNING", logger="flaxlstm.data.splits"):
    data = series.prepare(make_cfg(path, pad_short=True, **rows))
  assert (
    "data.pad_short:" in caplog.text and "its first windows repeat its first row" in caplog.text
  )
  np.testing.assert_array_equal(data.padded, [True])
  # Train windows start after one observed row, their inputs padded with the first row.
  assert data.window_starts("train")[0] == 1 and data.context.tolist() == [1]
  np.testing.assert_array_equal(
    windows.gather_inputs(data, np.array([1]))[0], data.x[[0] * LOOKBACK]
  )
  # Long enough: nothing padded, the same windows as without it.
  long = series.prepare(make_cfg(write_csv(tmp_path, make_frame(200), "long.csv"), pad_short=True))
  assert long.padded is None and long.context.tolist() == [LOOKBACK]
  # Inference pads a file shorter than the lookback in the same way.
  cfg = make_cfg(path, pad_short=True, **rows)
  short_file = write_csv(tmp_path, make_frame(20).iloc[:5], "five.csv")
  inf = series.prepare_inference(cfg, data.scalers, path=short_file)
  np.testing.assert_array_equal(inf.padded, [True])
  x = windows.gather_inputs(inf, np.array([inf.n_rows]))[0]
  np.testing.assert_array_equal(x, inf.x[[0, 0, 0, 0, 1, 2, 3, 4]])
