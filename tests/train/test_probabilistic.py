"""End to end with a distribution head: the metrics beside the conformal baselines, the
TensorBoard curves, evaluate, predict's quantile columns, the bands plot; the config checks."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from flaxlstm import cli, score_tables


@pytest.fixture(scope="module")
def quantile_run(tiny, tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("prob") / "run")
  argv = ["train", "--config", tiny["exp"], "--workdir", wd, "--quiet"]
  argv += ["--config.model.head=quantile", "--config.model.quantiles=0.05,0.1,0.5,0.9,0.95"]
  argv += ["--config.model.predict_delta=True", "--config.model.volatility_scaling=True"]
  # the recipe's model (experiments/ett/probabilistic.py), so evaluate and predict read it
  argv += ["--config.model.volatility_input=True", "--config.model.recalibration_windows=16"]
  argv += ["--config.data.features=y", "--config.train.max_steps=30"]
  assert cli.main(argv) == 0
  return wd


@pytest.mark.slow  # trains to completion
def test_metrics_score_the_distribution_and_the_conformal_baselines(quantile_run):
  m = json.load(open(os.path.join(quantile_run, "metrics.json")))
  for split in ("val", "test"):
    # Recalibrated (model.recalibration_windows) beside the head's own quantiles.
    for key in ("distribution", "distribution_uncalibrated"):
      d = m[split][key]
      assert 0 <= d["coverage_50"] <= d["coverage_80"] <= d["coverage_95"] <= 1
      assert 0 < d["width_50"] < d["width_80"] < d["width_95"]
      assert d["crps"] > 0 and len(d["per_lead"]["crps"]) == 6
      assert np.mean(d["per_lead"]["crps"]) == pytest.approx(d["crps"])
  # The first validation forecasts have fewer than 8 windows before them and keep the head's
  # own; every test forecast has validation windows before it.
  assert 0 < m["val"]["distribution"]["recalibrated_windows"] < m["val_windows"]
  assert m["test"]["distribution"]["recalibrated_windows"] == m["test_windows"]
  # What `flaxlstm train` and `evaluate` print below the point scores.
  table = score_tables.distributions(m).splitlines()
  assert table[1].split() == "val crps val 80% val 95% test crps test 80% test 95%".split()
  assert table[2].startswith("as forecast") and table[3].startswith("head alone")
  assert f"{100 * m['test']['distribution']['coverage_80']:.1f}%" in table[2]
  assert score_tables.distributions({"val": {"mse": 1.0}}) == ""  # a point model
  # The test windows are recalibrated on the validation windows before them.
  assert m["test"]["distribution"]["width_80"] != m["test"]["distribution_uncalibrated"]["width_80"]
  for name in ("model", "naive"):
    assert set(m["conformal"][name]) == {"test"}
    assert m["conformal"][name]["test"]["crps"] > 0
  # The point metrics score the median: the same numbers a point model would report.
  assert m["test"]["mse"] > 0 and "mse_original" in m["test"]
  lines = [json.loads(line) for line in open(os.path.join(quantile_run, "metrics.jsonl"))]
  val = [r for r in lines if r["split"] == "val"]
  assert val and all("crps" in r and "coverage_80" in r for r in val)  # TensorBoard scalars
  assert os.path.getsize(os.path.join(quantile_run, "forecast_test.png")) > 0


@pytest.mark.slow  # trains to completion
def test_evaluate_reproduces_and_predict_writes_quantiles(quantile_run, tiny, tmp_path, capsys):
  before = json.load(open(os.path.join(quantile_run, "metrics.json")))
  assert cli.main(["evaluate", "--workdir", quantile_run, "--json"]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["test"] == before["test"] and printed["conformal"] == before["conformal"]
  out = str(tmp_path / "q.csv")
  argv = ["predict", "--workdir", quantile_run, "--data", tiny["csv"], "--out", out]
  assert cli.main(argv + ["--all-windows"]) == 0
  rows = pd.read_csv(out)
  names = ["y_q0.05", "y_q0.1", "y_q0.5", "y_q0.9", "y_q0.95"]
  assert [c for c in rows.columns if c.startswith("y_q")] == names
  assert (np.diff(rows[names].to_numpy(), axis=1) >= 0).all()  # no crossing
  np.testing.assert_allclose(rows["y"], rows["y_q0.5"], rtol=1e-6)  # the median is the point
  inside = (rows["y_q0.05"] <= rows["y_actual"]) & (rows["y_actual"] <= rows["y_q0.95"])
  assert inside[rows["y_actual"].notna()].mean() > 0.5  # original units, not scaled ones


@pytest.mark.slow  # trains to completion
def test_predict_recalibrates_what_it_can_and_keeps_the_median(quantile_run, tiny):
  from flaxlstm.train import inference
  from flaxlstm.train import workdir as workdir_lib

  config, _ = workdir_lib.read_run_config(quantile_run)
  recal = inference._forecast(quantile_run, config, tiny["csv"], True, {})
  config.model.recalibration_windows = 0  # the head's own quantiles
  own = inference._forecast(quantile_run, config, tiny["csv"], True, {})
  np.testing.assert_array_equal(recal.point, own.point)
  np.testing.assert_allclose(recal.quantiles[2], own.quantiles[2], rtol=1e-6)  # the median
  # A forecast is recalibrated once 8 (16 / 2) complete windows of the file were observed
  # by its block's first origin (forecast/calibration.py); before, it keeps the head's own.
  starts, horizon = recal.starts, recal.data.horizon
  observed = (starts - starts % horizon) - horizon - starts[0] + 1
  moved = np.abs(recal.quantiles[0] - own.quantiles[0]).max(axis=(1, 2)) > 1e-6
  assert (observed < 8).any() and not moved[observed < 8].any()
  assert moved[observed >= 8].all()


@pytest.mark.parametrize(
  "argv, fragment",
  [
    (["--config.model.head=poisson"], "config key 'model.head' = 'poisson'"),
    (["--config.model.quantiles=0.9,0.1"], "config key 'model.quantiles'"),
    (["--config.model.head=quantile", "--config.model.quantiles=0.5"], "at least two"),
    (["--config.model.head=gaussian", "--config.train.loss=mae"], "config key 'train.loss'"),
    (["--config.model.volatility_scaling=True"], "needs model.predict_delta"),
    (["--config.model.volatility_input=True"], "needs model.volatility_scaling=True"),
    (["--config.model.recalibration_windows=24"], "needs model.head other than 'point'"),
    (
      ["--config.model.head=gaussian", "--config.model.recalibration_windows=-1"],
      "'model.recalibration_windows' = -1",
    ),
    (["--config.model.recalibration_scope=world"], "'model.recalibration_scope' = 'world'"),
  ],
)
def test_bad_head_config_is_one_line(tiny, tmp_path, capsys, argv, fragment):
  wd = tmp_path / "run"
  code = cli.main(["train", "--config", tiny["exp"], "--workdir", str(wd), "--quiet"] + argv)
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("error: ") and fragment in err and err.count("\n") == 1
  assert not wd.exists()


@pytest.mark.slow
def test_a_population_of_distribution_heads_equals_its_single_runs(tiny, tmp_path):
  from flaxlstm import config as config_lib
  from flaxlstm import train as train_lib
  from flaxlstm.train import population

  over = ["model.head=gaussian", "train.max_steps=20"]
  configs = [config_lib.load_config(tiny["exp"], over + [f"seed={s}"]) for s in (0, 1)]
  members = population.train_population(configs, [str(tmp_path / f"m{k}") for k in (0, 1)])
  single = train_lib.train_and_evaluate(configs[1], str(tmp_path / "single"), quiet=True)
  got, want = members[1]["test"]["distribution"], single["test"]["distribution"]
  assert members[1]["best_step"] == single["best_step"]
  for key in ("crps", "coverage_80", "width_80"):
    assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow  # trains to completion
def test_a_lognormal_run_on_positive_data(tiny, tmp_path, capsys):
  # Positive targets with multiplicative noise: the log-normal head, scaled by max |y|.
  frame = pd.read_csv(tiny["csv"])
  frame["y"] = np.exp(frame["y"])
  data = tmp_path / "positive.csv"
  frame.to_csv(data, index=False)
  wd = tmp_path / "run"
  argv = ["train", "--config", tiny["exp"], "--workdir", str(wd), "--quiet"]
  argv += [f"--config.data.path={data}", "--config.model.head=lognormal"]
  argv += ["--config.data.scaler=maxabs", "--config.train.max_steps=20"]
  assert cli.main(argv) == 0
  dist = json.load(open(wd / "metrics.json"))["test"]["distribution"]
  assert np.isfinite(dist["crps"]) and 0 < dist["coverage_80"] <= 1
  out = str(tmp_path / "q.csv")
  assert cli.main(["predict", "--workdir", str(wd), "--data", str(data), "--out", out]) == 0
  rows = pd.read_csv(out)
  q = rows[[c for c in rows.columns if c.startswith("y_q")]].to_numpy()
  assert q.shape[1] == 7 and (q > 0).all() and (np.diff(q, axis=1) >= 0).all()
  np.testing.assert_allclose(rows["y"], rows["y_q0.5"], rtol=1e-5)  # the median is the point
  capsys.readouterr()

  # A target <= 0 is named; so are the settings that would shift the distribution.
  frame.loc[100, "y"] = -1.5
  frame.to_csv(data, index=False)
  cases = [
    ([], "column 'y' has -1.5 at row 100 (line 102), and 0 more values <= 0"),
    (["--config.model.predict_delta=True"], "config key 'model.predict_delta'"),
    (["--config.model.revin=True"], "config key 'model.revin'"),
    (["--config.data.scaler=standard"], "config key 'data.scaler'"),
  ]
  for extra, fragment in cases:
    bad = tmp_path / "bad"
    assert cli.main([*argv[:4], str(bad), *argv[5:], *extra]) == 2, extra
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1, err
    assert not bad.exists()
