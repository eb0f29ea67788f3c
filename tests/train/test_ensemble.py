"""`flaxlstm evaluate --workdir A --workdir B ...`: the mean of several runs' forecasts."""

import json
import os
import shutil

import pytest

from flaxlstm import cli
from flaxlstm import config as config_lib
from flaxlstm import train as train_lib
from flaxlstm.errors import InputError


@pytest.fixture(scope="module")
def two_seeds(tiny, tmp_path_factory):
  root = tmp_path_factory.mktemp("ensemble")
  runs = []
  for seed in (0, 1):
    wd = str(root / f"seed{seed}")
    config = config_lib.load_config(
      tiny["exp"], ["--config.train.max_steps=10", f"--config.seed={seed}"]
    )
    train_lib.train_and_evaluate(config, wd, quiet=True)
    runs.append(wd)
  return runs


def test_the_ensemble_scores_the_mean_of_its_members_forecasts(two_seeds, tmp_path, capsys):
  a, b = two_seeds
  scores = train_lib.evaluate_ensemble([a, b])
  for wd, member in zip(two_seeds, scores["members"]):
    saved = json.load(open(os.path.join(wd, "metrics.json")))
    for split in ("val", "test"):  # each member as its own run scored itself
      assert member[split]["mse"] == pytest.approx(saved[split]["mse"], rel=1e-6)
    assert scores["test_windows"] == saved["test_windows"]
  for split in ("val", "test"):
    # The squared error is convex: the mean forecast is no worse than the members' mean
    # score, and better unless the members forecast alike.
    members = [m[split]["mse"] for m in scores["members"]]
    assert scores[split]["mse"] < sum(members) / 2
    assert min(members) != max(members)
  # A run beside an exact copy of itself: the mean is the run's own forecast.
  copy = str(tmp_path / "copy")
  shutil.copytree(a, copy)
  same = train_lib.evaluate_ensemble([a, copy])
  assert same["test"]["mse"] == pytest.approx(scores["members"][0]["test"]["mse"], rel=1e-12)

  assert cli.main(["evaluate", "--workdir", a, "--workdir", b]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [line.split()[0] for line in lines[1:4]] == ["member", "member", "mean"]
  assert lines[3].split()[-2] == f"{scores['test']['mse']:.4f}"
  assert lines[4:] == [f"member 0: {a}", f"member 1: {b}"]
  assert not os.path.exists(os.path.join(tmp_path, "metrics.json"))


def test_an_ensemble_refuses_runs_of_other_data_and_a_single_run(tiny, two_seeds, tmp_path, capsys):
  a, _ = two_seeds
  other = str(tmp_path / "lookback12")
  config = config_lib.load_config(
    tiny["exp"], ["--config.train.max_steps=2", "--config.data.lookback=12"]
  )
  train_lib.train_and_evaluate(config, other, quiet=True)
  capsys.readouterr()
  assert cli.main(["evaluate", "--workdir", a, "--workdir", other]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1
  assert "data.lookback (12 vs 24)" in err
  with pytest.raises(InputError, match="the same run twice"):
    train_lib.evaluate_ensemble([a, a + "/"])
  with pytest.raises(InputError, match="at least two runs"):
    train_lib.evaluate_ensemble([a])
  assert cli.main(["evaluate", "--workdir", a, "--workdir", a + "x", "--refit-scalers"]) == 2
  assert "apply to one run" in capsys.readouterr().err


def test_predict_writes_the_mean_of_the_members_forecasts(tiny, two_seeds, tmp_path, capsys):
  import numpy as np
  import pandas as pd

  a, b = two_seeds
  outs = {}
  for name, runs in {"a": [a], "b": [b], "ab": [a, b]}.items():
    out = str(tmp_path / f"{name}.csv")
    argv = ["predict", "--data", tiny["csv"], "--out", out, "--all-windows"]
    assert cli.main(argv + [x for wd in runs for x in ("--workdir", wd)]) == 0
    outs[name] = pd.read_csv(out)
  assert capsys.readouterr().out.splitlines()[-1] == (
    f"wrote 577 forecasts (3462 rows) to {tmp_path / 'ab.csv'}"
  )
  one, two, mean = outs["a"], outs["b"], outs["ab"]
  assert list(mean.columns) == list(one.columns) == ["origin", "step", "date", "y", "y_actual"]
  for column in ("origin", "step", "date", "y_actual"):
    assert mean[column].equals(one[column])
  assert not np.allclose(one["y"], two["y"])
  np.testing.assert_allclose(mean["y"], (one["y"] + two["y"]) / 2, rtol=1e-6, atol=1e-9)
  # Runs of other data are refused before anything is written.
  other = str(tmp_path / "h3")
  config = config_lib.load_config(
    tiny["exp"], ["--config.train.max_steps=2", "--config.data.horizon=3"]
  )
  train_lib.train_and_evaluate(config, other, quiet=True)
  capsys.readouterr()
  bad = str(tmp_path / "bad.csv")
  argv = ["predict", "--workdir", a, "--workdir", other, "--data", tiny["csv"], "--out", bad]
  assert cli.main(argv) == 2
  assert "data.horizon (3 vs 6)" in capsys.readouterr().err
  assert not os.path.exists(bad)
