"""The packaged ETT recipes: ETTh1 univariate/multivariate at every horizon.

Each recipe must load and validate at all five Informer horizons with the protocol's split,
columns and windows, and must run unchanged on another ETT-format file
(`--config.data.path=...`), which the issue promises users with ETTh2/ETTm1.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib

import numpy as np
import pandas as pd
import pytest

from flaxlstm import config as config_lib
from flaxlstm import train as train_lib
from flaxlstm.data import io, series

HORIZONS = (24, 48, 168, 336, 720)
COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")


@pytest.mark.parametrize("setting", ["univariate", "multivariate"])
@pytest.mark.parametrize("horizon", HORIZONS)
def test_ett_recipe_follows_the_informer_protocol(setting, horizon):
  config = config_lib.load_config(f"ett_{setting}:{horizon}")
  assert config.data.split == "ett"  # rows [0, 8640), [8640, 11520), [11520, 14400)
  assert config.data.scaler == "standard"
  assert config.data.horizon == horizon
  assert config.data.lookback == (96 if horizon <= 48 else 168)
  expected = ("OT",) if setting == "univariate" else COLUMNS
  assert tuple(config.data.features) == expected
  assert tuple(config.data.target) == expected


def test_ett_recipe_splits_the_bundled_file_12_4_4_months():
  config = config_lib.load_config("ett_univariate:24")
  bounds = series.prepare(config_lib.to_spec(config).data).bounds
  assert bounds == {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)}


def _ett_format_file(path: pathlib.Path, rows: int = 14400) -> pathlib.Path:
  """An ETT-format CSV (date + the 7 ETT columns, hourly) with other values than ETTh1."""
  rng = np.random.default_rng(7)
  t = np.arange(rows)
  frame = pd.DataFrame({"date": pd.date_range("2018-01-01", periods=rows, freq="h")})
  for i, name in enumerate(COLUMNS):
    frame[name] = (
      10 + i + np.sin(2 * np.pi * t / 24 + i) + 0.1 * t / rows + 0.2 * rng.standard_normal(rows)
    )
  frame.to_csv(path, index=False)
  return path


@pytest.mark.slow
def test_ett_recipe_runs_unchanged_on_another_ett_format_file(tmp_path):
  other = _ett_format_file(tmp_path / "ETTlike.csv")
  config = config_lib.load_config(
    "ett_multivariate:24",
    [f"data.path={other}", "train.max_steps=2", "model.hidden_sizes=8,", "train.batch_size=16"],
  )
  workdir = tmp_path / "run"
  metrics = train_lib.train_and_evaluate(config, str(workdir))
  assert np.isfinite(metrics["test"]["mse"])
  saved = json.loads((workdir / "config.json").read_text())
  assert os.path.samefile(saved["data"]["path"], other)
  # The same protocol as on ETTh1: the split is by rows, whatever the file's dates.
  assert series.prepare(config_lib.to_spec(config).data).bounds["test"] == (11520, 14400)


LTSF = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "ltsf" / "ett.py"
LTSF_HORIZONS = (96, 192, 336, 720)


@pytest.mark.parametrize("horizon", LTSF_HORIZONS)
def test_ltsf_recipe_follows_the_tslib_protocol(horizon):
  config = config_lib.load_config(f"{LTSF}:{horizon}")
  spec = config_lib.to_spec(config)
  # Every numeric column and ETT's split on an ETT file (TSLib's 70/10/20 on another).
  assert (spec.data.split, spec.data.scaler, spec.data.lookback) == ("auto", "standard", 96)
  assert spec.data.features == spec.data.target == ("*",)
  assert spec.data.horizon == horizon
  assert spec.model.channels == "independent"  # one model shared by the 7 columns
  data = series.prepare(spec.data)
  assert data.feature_names == data.target_names == COLUMNS
  assert data.bounds == {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)}
  # Every test window, stride 1, none dropped; val/test read context from before the split.
  starts = data.window_starts("test")
  assert (starts[0], starts[-1], len(starts)) == (11520, 14400 - horizon, 2880 - horizon + 1)
  assert data.window_starts("val")[0] == 8640
  assert data.window_starts("train")[0] == 96


def test_ltsf_recipe_reads_etth1_exactly_as_when_it_named_the_columns_and_split():
  """The recipe named ETT's 7 columns and data.split='ett' before it read every numeric
  column with data.split='auto': on ETTh1 both give the same data, windows and scalers."""
  spec = config_lib.to_spec(config_lib.load_config(f"{LTSF}:96")).data
  named = dataclasses.replace(spec, features=COLUMNS, target=COLUMNS, split="ett")
  auto, before = series.prepare(spec), series.prepare(named)
  assert (auto.feature_names, auto.target_names) == (before.feature_names, before.target_names)
  for split in ("train", "val", "test"):
    np.testing.assert_array_equal(auto.split_rows[split], before.split_rows[split])
    np.testing.assert_array_equal(auto.window_starts(split), before.window_starts(split))
  for name in ("x", "y", "y_raw"):
    np.testing.assert_array_equal(getattr(auto, name), getattr(before, name))
  assert auto.scalers.to_json() == before.scalers.to_json()


def _tsl_format_file(path: pathlib.Path, rows: int = 1000) -> pathlib.Path:
  """exchange_rate.csv's layout: a date column, then columns 0, 1, ..., OT (daily)."""
  frame = pd.read_csv(_ett_format_file(path, rows))
  frame = frame.rename(columns=dict(zip(COLUMNS, ["0", "1", "2", "3", "4", "5", "OT"])))
  frame["date"] = pd.date_range("1990-01-01", periods=rows, freq="D")
  frame.to_csv(path, index=False)
  return path


def test_ltsf_recipe_reads_any_ltsf_format_file_without_overrides(tmp_path):
  other = _tsl_format_file(tmp_path / "exchange_like.csv")
  config = config_lib.load_config(f"{LTSF}:96", [f"data.path={other}"])
  data = series.prepare(config_lib.to_spec(config).data)
  assert data.feature_names == data.target_names == ("0", "1", "2", "3", "4", "5", "OT")
  assert data.bounds == {"train": (0, 700), "val": (700, 800), "test": (800, 1000)}
  # What the user names wins over the recipe's defaults.
  config = config_lib.load_config(
    f"{LTSF}:96",
    [f"data.path={other}", "data.split=fractions", "data.features=OT", "data.target=OT"],
  )
  data = series.prepare(config_lib.to_spec(config).data)
  assert (data.feature_names, data.target_names) == (("OT",), ("OT",))
  assert config.data.split == "fractions" and data.bounds["test"] == (800, 1000)


@pytest.mark.slow  # trains to completion
def test_ltsf_recipe_runs_unchanged_on_another_ett_format_file(tmp_path):
  other = _ett_format_file(tmp_path / "ETTlike.csv")
  config = config_lib.load_config(
    f"{LTSF}:96",
    [
      f"data.path={other}",
      "train.max_steps=2",
      "model.hidden_sizes=8,",
      "model.series_embedding=4",
      "train.batch_size=16",
    ],
  )
  metrics = train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(metrics["test"]["mse"])
  # The global model is also scored on each column alone (e.g. OT, for the univariate table).
  per_target = metrics["test"]["per_target"]
  assert list(per_target) == list(COLUMNS)
  np.testing.assert_allclose(
    np.mean([m["mse"] for m in per_target.values()]), metrics["test"]["mse"], rtol=1e-6
  )


@pytest.mark.slow  # trains to completion
def test_probabilistic_recipe_runs_unchanged_on_another_ett_format_file(tmp_path):
  other = _ett_format_file(tmp_path / "ETTlike.csv")
  recipe = os.path.join(os.path.dirname(__file__), "..", "experiments", "ett", "probabilistic.py")
  config = config_lib.load_config(
    f"{recipe}:24",
    [f"data.path={other}", "train.max_steps=2", "model.hidden_sizes=8,", "train.batch_size=16"],
  )
  metrics = train_lib.train_and_evaluate(config, str(tmp_path / "run"), quiet=True)
  dist = metrics["test"]["distribution"]
  assert np.isfinite(dist["crps"]) and 0 <= dist["coverage_80"] <= 1
  assert "distribution_uncalibrated" in metrics["test"]  # the recipe recalibrates
  assert np.isfinite(metrics["conformal"]["model"]["test"]["crps"])


def test_the_later_period_file_is_etth1s_last_rows_under_etts_split(tmp_path, monkeypatch):
  """experiments/ett/later_period.py: its file is the bundled ETTh1's last 14,400 rows,
  unchanged, and the recipes split it as an ETT file, so its test rows are ETTh1's last
  2,880 (past every row ETT's protocol reads)."""
  script = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "ett" / "later_period.py"
  monkeypatch.syspath_prepend(str(script.parent))  # its sibling scripts, as when run
  spec = importlib.util.spec_from_file_location("later_period", script)
  later = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(later)
  path = later.write_later_file(str(tmp_path))
  whole = pd.read_csv(io.bundled_dataset_path("ETTh1"))
  part = pd.read_csv(path)
  assert len(whole) > 14400 and len(part) == 14400
  pd.testing.assert_frame_equal(part, whole.iloc[-14400:].reset_index(drop=True))
  # The LTSF recipe's `data.split=auto` recognizes it as an ETT file (the univariate
  # recipes name ETT's split outright).
  config = config_lib.load_config(f"{LTSF}:96", [f"data.path={path}"])
  data = series.prepare(config_lib.to_spec(config).data)
  assert data.bounds == {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)}


@pytest.mark.slow  # trains
def test_on_random_walks_the_ltsf_recipe_keeps_its_naive_start(tmp_path, monkeypatch):
  """experiments/ltsf/random_walk.py's file: every column a random walk, so nothing beats
  the naive forecast. The recipe scores its untrained model, which is the naive forecast
  (the change from the last value, from a head at zero); training (here a few steps of a
  small copy) does not beat it on validation, so the forecast is naive's, to the bit."""
  script = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "ltsf" / "random_walk.py"
  monkeypatch.syspath_prepend(str(script.parents[1] / "ett"))  # its sibling's, as when run
  spec = importlib.util.spec_from_file_location("random_walk", script)
  walk = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(walk)
  path = walk.write_random_walk(str(tmp_path))
  frame = pd.read_csv(path)
  assert frame.shape == (walk.ROWS, walk.COLUMNS + 1) and frame.columns[0] == "date"
  overrides = [
    f"data.path={path}",
    "train.max_steps=6",
    "train.eval_every_steps=3",
    "model.hidden_sizes=8,",
    "model.series_embedding=4",
  ]
  m = train_lib.train_and_evaluate(
    config_lib.load_config(f"{LTSF}:96", overrides), str(tmp_path / "run"), quiet=True
  )
  assert m["best_step"] == 0
  naive = m["baselines"]["naive"]
  for split in ("val", "test"):
    np.testing.assert_allclose(m[split]["mse"], naive[split]["mse"], rtol=1e-6)
