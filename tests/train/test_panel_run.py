"""A global model over a long table, end to end through the CLI: train with covariates and
per-series scaling, evaluate to the same numbers, predict per series in original units."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pandas as pd
import pytest

from flaxlstm import cli

CORPUS = pathlib.Path(__file__).resolve().parents[1] / "data" / "malformed"
PANEL = CORPUS / "long_valid.csv"  # three series of 300/280/260 hourly rows, shuffled


@pytest.fixture(scope="module")
def panel_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("panel") / "run"
  args = [
    "train",
    "--quiet",
    "--config",
    str(CORPUS / "base.py"),
    "--workdir",
    str(workdir),
    f"--config.data.path={PANEL}",
    "--config.data.id_column=unique_id",
    "--config.data.date_column=ds",
    "--config.data.target=y",
    "--config.data.static=size",
    "--config.data.calendar=hour,dayofweek",
    "--config.data.scaler_scope=series",
    "--config.model.series_embedding=4",
    "--config.model.segment_length=6",
    "--config.model.decoder=parallel",
    "--config.train.max_steps=8",
  ]
  assert cli.main(args) == 0
  return workdir


@pytest.mark.slow  # trains to completion
def test_panel_run_evaluates_to_its_own_metrics(panel_run):
  before = json.loads((panel_run / "metrics.json").read_text())
  assert cli.main(["evaluate", "--workdir", str(panel_run)]) == 0
  after = json.loads((panel_run / "metrics.json").read_text())
  assert after["test"] == before["test"] and after["val"] == before["val"]
  assert before["test"]["mse"] > 0 and np.isfinite(before["test"]["mse_original"])


@pytest.mark.slow  # trains to completion
def test_panel_predict_forecasts_each_series_in_original_units(panel_run, tmp_path):
  out = tmp_path / "forecast.csv"
  args = ["predict", "--workdir", str(panel_run), "--data", str(PANEL), "--out", str(out)]
  assert cli.main(args) == 0
  table = pd.read_csv(out, parse_dates=["origin", "date"])
  assert list(table.columns) == ["unique_id", "origin", "step", "date", "y"]
  panel = pd.read_csv(PANEL, parse_dates=["ds"])
  for name, rows in table.groupby("unique_id"):
    last = panel[panel.unique_id == name].ds.max()
    assert (rows.origin == last).all()
    np.testing.assert_array_equal(rows.date, last + pd.to_timedelta(rows.step, unit="h"))
    # Original units: each series near its own level (levels differ by 10 per series).
    level = panel[panel.unique_id == name].y.mean()
    assert abs(rows.y.mean() - level) < 5
  assert sorted(table.unique_id.unique()) == ["a", "b", "c"]
  assert len(table) == 3 * 6


@pytest.mark.slow  # trains to completion
def test_panel_predict_refuses_a_series_the_run_never_saw(panel_run, tmp_path, capsys):
  panel = pd.read_csv(PANEL)
  new = tmp_path / "new.csv"
  panel.assign(unique_id=panel.unique_id.replace("c", "zz")).to_csv(new, index=False)
  out = tmp_path / "forecast.csv"
  args = ["predict", "--workdir", str(panel_run), "--data", str(new), "--out", str(out)]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: series 'zz'") and err.count("\n") == 1
  assert not out.exists()
