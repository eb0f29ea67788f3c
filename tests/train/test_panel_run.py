"""A global model over a long table, end to end through the CLI: train with covariates and
per-series scaling, evaluate to the same numbers, predict per series in original units;
README's long-table commands (a holdout, a production fit and its forecast) as written."""

from __future__ import annotations

import json
import pathlib
import re
import shlex

import numpy as np
import pandas as pd
import pytest

from flaxlstm import cli, score_tables

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


# ---- README's long-table commands, as written, on a small generated panel ------------------
README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
# README's commands train the default experiment (lookback 96, horizon 24); the test only
# shrinks the model and the budget.
FAST = ["--quiet", "--config.model.hidden_sizes=8", "--config.train.max_steps=2"]


def readme_panel_commands() -> list[list[str]]:
  """The `flaxlstm` commands of README's long-table example (the bash block that names
  `--config.data.id_column=unique_id`), each as its arguments."""
  blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
  (block,) = [b for b in blocks if "--config.data.id_column=unique_id" in b]
  lines = [line.split("#")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
  return [shlex.split(line) for line in lines if line.startswith("flaxlstm ")]


def _generated_panel(path: pathlib.Path) -> None:
  """Three hourly series of their own lengths, starts and levels, rows shuffled."""
  rng = np.random.default_rng(0)
  parts = []
  for k, (name, n) in enumerate({"b": 230, "a": 200, "c": 180}.items()):
    t = np.arange(n)
    ds = pd.date_range("2021-01-01", periods=n, freq="h") + pd.Timedelta(hours=3 * k)
    y = 10.0 * k + np.sin(2 * np.pi * t / 24) + 0.1 * rng.normal(size=n)
    parts.append(pd.DataFrame({"unique_id": name, "ds": ds, "y": y}))
  frame = pd.concat(parts, ignore_index=True)
  frame.iloc[rng.permutation(len(frame))].to_parquet(path, index=False)


@pytest.mark.slow  # trains to completion
def test_readme_long_table_commands_run_as_written(tmp_path, monkeypatch):
  commands = readme_panel_commands()
  assert [c[:2] for c in commands] == [["flaxlstm", "train"]] * 2 + [["flaxlstm", "predict"]]
  monkeypatch.chdir(tmp_path)  # README's relative paths: panel.parquet, runs/..., forecast.csv
  _generated_panel(tmp_path / "panel.parquet")
  for command in commands:
    extra = FAST if command[1] == "train" else []
    assert cli.main(command[1:] + extra) == 0, command
  # The default experiment took a long table's defaults: its target as input, a holdout of
  # one horizon (24 rows) for val and for test in each series.
  config = json.loads((tmp_path / "runs/panel/config.json").read_text())
  assert (config["data"]["features"], config["data"]["split"]) == ([], "holdout")
  metrics = json.loads((tmp_path / "runs/panel/metrics.json").read_text())
  assert (metrics["val_windows"], metrics["test_windows"]) == (3, 3)
  assert np.isfinite(metrics["test"]["mse"]) and "test" in metrics["baselines"]["naive"]
  # The production fit: no test split, so no test metrics, and each series' next 24 steps.
  fit = json.loads((tmp_path / "runs/panel_fit/metrics.json").read_text())
  assert (fit["val_windows"], fit["test_windows"]) == (3, 0)
  assert "test" not in fit and "test" not in fit["baselines"]["naive"] and fit["conformal"] == {}
  forecast = pd.read_csv(tmp_path / "forecast.csv", parse_dates=["origin", "date"])
  panel = pd.read_parquet(tmp_path / "panel.parquet")
  for name, rows in forecast.groupby("unique_id"):
    last = panel[panel.unique_id == name].ds.max()
    assert (rows.origin == last).all() and list(rows.step) == list(range(1, 25))
    np.testing.assert_array_equal(rows.date, last + pd.to_timedelta(rows.step, unit="h"))
  assert sorted(forecast.unique_id.unique()) == ["a", "b", "c"]
  # evaluate recomputes the production fit's metrics, still without a test split.
  assert cli.main(["evaluate", "--workdir", "runs/panel_fit"]) == 0
  again = json.loads((tmp_path / "runs/panel_fit/metrics.json").read_text())
  assert again["val"] == fit["val"] and again["test_windows"] == 0 and "test" not in again


def test_the_printed_scores_of_a_production_fit_show_no_test_columns():
  val = {"mse": 0.5, "mae": 0.25}
  lines = score_tables.summary({"val": val, "baselines": {"naive": {"val": val}}}).splitlines()
  assert [line.split() for line in lines[1:]] == [
    ["model", "0.5000", "0.2500", "-", "-"],
    ["naive", "0.5000", "0.2500", "-", "-"],
  ]
