"""End to end: training lowers the loss, early stopping, bit-identical resume, the CLI."""

import json
import os
import re

import jax
import numpy as np
import pandas as pd
import pytest

from flaxlstm import cli
from flaxlstm import config as config_lib
from flaxlstm import train as train_lib
from flaxlstm.data import augment, scaling
from flaxlstm.errors import Preempted, TrainingError
from flaxlstm.train import loop as loop_lib
from flaxlstm.train import session as session_lib
from flaxlstm.train.assembly import assemble
from flaxlstm.train.checkpoint import Checkpoints


def _config(tiny, *overrides):
  return config_lib.load_config(tiny["exp"], list(overrides))


def _best_params(workdir):
  config = config_lib.config_from_json(open(os.path.join(workdir, "config.json")).read())
  run = assemble(config_lib.to_spec(config))
  return train_lib.restore_params(workdir, jax.tree.map(np.asarray, run.init_state().params))


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_training_lowers_loss_and_writes_a_complete_workdir(tiny, tmp_path):
  wd = str(tmp_path / "run")
  m = train_lib.train_and_evaluate(_config(tiny), wd)
  val = [r["loss"] for r in _lines(wd) if r["split"] == "val"]
  assert val[-1] < 0.5 * val[0]
  assert m["val"]["mse"] < m["baselines"]["naive"]["val"]["mse"]  # a seasonal series
  for name in (
    "config.json",
    "metrics.json",
    "metrics.jsonl",
    "scalers.json",
    "learning_curves.png",
    "forecast_test.png",
  ):
    assert os.path.getsize(os.path.join(wd, name)) > 0, name
  assert os.listdir(os.path.join(wd, "tensorboard"))
  saved = json.load(open(os.path.join(wd, "metrics.json")))
  assert set(saved) >= {"val", "test", "baselines"}
  assert set(saved["test"]) >= {"mse", "mae", "rmse", "mse_original", "mae_original"}
  assert set(saved["baselines"]) == {"naive", "seasonal_naive", "linear", "dlinear"}
  assert saved["seasonal_period"] == 12  # the season seasonal naive used
  # Original-unit metrics are the scaled ones times the target's variance.
  scale = scaling.load_scalers(os.path.join(wd, "scalers.json")).target_scaler.scale_[0]
  np.testing.assert_allclose(
    saved["test"]["mse_original"], saved["test"]["mse"] * scale**2, rtol=1e-4
  )


@pytest.mark.slow
def test_early_stopping_stops_and_restores_the_best_params(tiny, tmp_path):
  # A learning rate this large without clipping makes validation worse after the first
  # evaluation, so patience 2 must stop the run and the best (first) params come back.
  wd = str(tmp_path / "run")
  m = train_lib.train_and_evaluate(
    _config(
      tiny,
      "train.learning_rate=0.5",
      "train.clip_norm=0",
      "train.patience=2",
      "train.max_steps=200",
      "train.eval_every_steps=5",
    ),
    wd,
  )
  assert m["stopped_early"] and m["steps"] < 200
  val = {r["step"]: r["mse"] for r in _lines(wd) if r["split"] == "val"}
  best_step = min(val, key=val.get)
  assert m["best_step"] == best_step
  assert m["steps"] == best_step + 2 * 5
  np.testing.assert_allclose(m["val"]["mse"], val[best_step], rtol=1e-6)


class _Interrupt(Exception):
  pass


@pytest.mark.slow
def test_interrupted_run_resumes_bit_identical(tiny, tmp_path, monkeypatch):
  overrides = (
    "model.dropout=0.1",
    "model.recurrent_dropout=0.1",
    "data.augment.jitter=0.05",
    "train.max_steps=30",
  )
  ref = str(tmp_path / "ref")
  ref_metrics = train_lib.train_and_evaluate(_config(tiny, *overrides), ref)

  wd = str(tmp_path / "interrupted")
  real_augment = augment.augment

  def dies_at(step):
    calls = []

    def dying_augment(*args):
      calls.append(1)
      if len(calls) == step:
        raise _Interrupt()
      return real_augment(*args)

    return dying_augment

  # Killed at step 7, before the first checkpoint (step 10): the rerun starts over, and
  # the lines logged at step 5 must not be left to appear twice.
  monkeypatch.setattr(augment, "augment", dies_at(7))
  with pytest.raises(_Interrupt):
    train_lib.train_and_evaluate(_config(tiny, *overrides), wd)
  assert [r["step"] for r in _lines(wd)] == [5] and not os.path.exists(
    os.path.join(wd, "checkpoints", "latest", "10")
  )
  # Then at step 17, mid-way between the checkpoints at steps 10 and 20.
  monkeypatch.setattr(augment, "augment", dies_at(17))
  with pytest.raises(_Interrupt):
    train_lib.train_and_evaluate(_config(tiny, *overrides), wd)
  monkeypatch.setattr(augment, "augment", real_augment)
  with Checkpoints(os.path.join(wd, "checkpoints"), read_only=True) as ckpts:
    assert ckpts.steps("latest") == [10]

  metrics = train_lib.train_and_evaluate(_config(tiny, *overrides), wd)
  for key in ("val", "test", "steps", "best_step"):
    assert metrics[key] == ref_metrics[key], key
  for a, b in zip(jax.tree.leaves(_best_params(wd)), jax.tree.leaves(_best_params(ref))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The log holds each step once: lines written after the checkpoint were dropped.
  steps = [(r["step"], r["split"]) for r in _lines(wd)]
  assert steps == [(r["step"], r["split"]) for r in _lines(ref)]


@pytest.mark.slow
def test_rerun_of_finished_run_changes_nothing_and_other_config_is_refused(
  tiny, tmp_path, monkeypatch
):
  # The first run also records the order of workdir events. Every process must finish its
  # read-only look at checkpoints/ before process 0 creates it, so a collective (`agree`)
  # lies between the two; without it the processes of a distributed run could enter
  # different orbax barriers (seen once in CI).
  events = []

  class Recorded(Checkpoints):
    def __init__(self, directory, *args, read_only=False, **kwargs):
      events.append("read" if read_only else "write")
      super().__init__(directory, *args, read_only=read_only, **kwargs)

  agree = loop_lib.workdir_lib.agree
  monkeypatch.setattr(loop_lib, "Checkpoints", Recorded)  # the claim's read-only look
  monkeypatch.setattr(session_lib, "Checkpoints", Recorded)  # the run's own, written
  monkeypatch.setattr(loop_lib.workdir_lib, "agree", lambda e: (events.append("agree"), agree(e)))
  wd = str(tmp_path / "run")
  first = train_lib.train_and_evaluate(_config(tiny, "train.max_steps=10"), wd)
  before_write = events[: events.index("write")]
  assert "read" in before_write and before_write[-1] == "agree", events
  monkeypatch.undo()
  again = train_lib.train_and_evaluate(_config(tiny, "train.max_steps=10"), wd)
  assert again["val"] == first["val"] and again["steps"] == 10
  with pytest.raises(Exception, match="another config.*train.learning_rate"):
    train_lib.train_and_evaluate(_config(tiny, "train.max_steps=10", "train.learning_rate=0.5"), wd)


@pytest.mark.slow  # trains to completion
def test_cli_train_evaluate_predict(tiny, tmp_path, capsys):
  wd = str(tmp_path / "run")
  assert (
    cli.main(
      ["train", "--config", tiny["exp"], "--workdir", wd, "--quiet", "--config.train.max_steps=20"]
    )
    == 0
  )
  assert json.load(open(os.path.join(wd, "config.json")))["train"]["max_steps"] == 20
  capsys.readouterr()
  assert cli.main(["evaluate", "--workdir", wd, "--json"]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["test"] == json.load(open(os.path.join(wd, "metrics.json")))["test"]
  assert cli.main(["evaluate", "--workdir", wd]) == 0  # the table `train` prints
  table = capsys.readouterr().out.splitlines()
  # header, the model, naive, seasonal naive, linear, DLinear, where it was read from
  names = [line.split()[0] for line in table[1:-1]]
  assert names == ["lstm", "naive", "seasonal_naive", "linear", "dlinear"], table
  assert table[3].startswith("seasonal_naive (12) "), table  # with its season
  assert len({len(line) for line in table[:-1]}) == 1, table  # the columns stay aligned
  assert "metrics.json" in table[-1]
  assert table[1].split()[-1] == f"{printed['test']['mae']:.4f}"

  out = str(tmp_path / "preds.csv")
  assert cli.main(["predict", "--workdir", wd, "--data", tiny["csv"], "--out", out]) == 0
  assert capsys.readouterr().out == f"wrote 1 forecast (6 rows) to {out}\n"
  preds = pd.read_csv(out)
  assert list(preds.columns) == ["origin", "step", "date", "y"] and len(preds) == 6
  assert preds["date"].iloc[0] == "2020-01-26 00:00:00"  # the hour after the last row
  # Original units: the forecast lives on the scale of the series, not of the scaled data.
  series = pd.read_csv(tiny["csv"])["y"]
  assert series.min() - 1 < preds["y"].mean() < series.max() + 1

  out_all = str(tmp_path / "all.csv")
  assert (
    cli.main(["predict", "--workdir", wd, "--data", tiny["csv"], "--out", out_all, "--all-windows"])
    == 0
  )
  every = pd.read_csv(out_all)
  assert len(every) == (600 - 24 + 1) * 6 and "y_actual" in every.columns
  assert capsys.readouterr().out == f"wrote 577 forecasts (3462 rows) to {out_all}\n"


@pytest.mark.parametrize(
  "error, hint",
  [
    (Preempted(2, 7), "stopped by signal 2 at step 7; checkpoint saved, rerun the same command"),
    (TrainingError("disk full in W; free space and rerun the same command to resume"), "error: "),
  ],
)
def test_the_resume_hint_names_the_workdir_the_cli_chose(
  tiny, tmp_path, capsys, monkeypatch, error, hint
):
  # Without --workdir the run gets a new timestamped folder, which the same command would
  # not find again: the hint names it.
  monkeypatch.chdir(tmp_path)

  def stopped(config, workdir, **_):
    raise error

  monkeypatch.setattr(train_lib, "train_and_evaluate", stopped)
  code = cli.main(["train", "--config", tiny["exp"], "--quiet"])
  assert code == (130 if isinstance(error, Preempted) else 1)
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and hint in err
  (workdir,) = re.findall(r"rerun the same command with --workdir (runs/tiny-\d{8}-\d{6}) ", err)
  # Named --workdir: the same command resumes, as the hint has always said.
  assert cli.main(["train", "--config", tiny["exp"], "--workdir", workdir, "--quiet"]) == code
  assert "rerun the same command to resume" in capsys.readouterr().err


def test_evaluate_prints_the_table_and_predict_counts_forecasts(capsys, monkeypatch):
  from flaxlstm.train import workdir as workdir_lib

  scores = {s: {"mse": 0.5, "mae": 0.25} for s in ("val", "test")}
  baselines = {"naive": scores, "linear": scores, "dlinear": scores}
  metrics = {**scores, "baselines": baselines, "data": {"x": 1}}
  metrics["encoder"] = "slstm"
  monkeypatch.setattr(train_lib, "evaluate", lambda workdir, **_: metrics)
  assert cli.main(["evaluate", "--workdir", "W"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[1:5] == [
    f"{n:<16}" + 2 * "    0.5000    0.2500" for n in ("slstm", "naive", "linear", "dlinear")
  ]
  assert lines[5] == f"metrics written to {os.path.join('W', 'metrics.json')}" and len(lines) == 6
  assert cli.main(["evaluate", "--workdir", "W", "--json"]) == 0
  assert json.loads(capsys.readouterr().out) == metrics

  config = config_lib.load_config(None, ["data.horizon=24"])
  monkeypatch.setattr(workdir_lib, "read_run_config", lambda workdir: (config, None))
  for n, text in ((1, "1 forecast (24 rows)"), (3, "3 forecasts (72 rows)")):
    monkeypatch.setattr(train_lib, "predict_file", lambda *a, n=n, **_: n)
    assert cli.main(["predict", "--workdir", "W", "--data", "d.csv", "--out", "o.csv"]) == 0
    assert capsys.readouterr().out == f"wrote {text} to o.csv\n"


@pytest.mark.parametrize(
  "argv, fragment",
  [
    (["--config.train.lr=1"], "unknown config key 'train.lr'"),
    (["--config.model.dropout=1.5"], "model.dropout"),
    (["--config.data.target=nope"], "'nope'"),
    (["--config.data.path=/does/not/exist.csv"], "not found"),
    (["--config.data.lookback=500"], "too short"),
  ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(
  tiny, tmp_path, capsys, argv, fragment
):
  wd = tmp_path / "run"
  code = cli.main(["train", "--config", tiny["exp"], "--workdir", str(wd), "--quiet"] + argv)
  err = capsys.readouterr().err
  assert code == 2
  assert err.startswith("error: ") and fragment in err and err.count("\n") == 1
  assert not wd.exists()


@pytest.mark.slow
def test_the_default_experiment_does_not_depend_on_the_directory(tmp_path, monkeypatch):
  # A new user outside the checkout (no experiments/ folder here) gets the packaged
  # default experiment, not the bare schema defaults.
  monkeypatch.chdir(tmp_path)
  assert cli.main(["train", "--workdir", "run", "--quiet", "--config.train.max_steps=2"]) == 0
  saved = json.load(open(tmp_path / "run" / "config.json"))
  expected = json.loads(
    config_lib.config_to_json(config_lib.load_config("ett", ["train.max_steps=2"]), saved["_run"])
  )
  # The run records the season it read off the hourly file (data.seasonal_period=0).
  assert expected["data"]["seasonal_period"] == 0 and saved["data"]["seasonal_period"] == 24
  expected["data"]["seasonal_period"] = 24
  assert saved == expected
  assert saved["data"]["split"] == "ett" and saved["model"]["predict_delta"]


def test_a_run_without_restore_best_is_evaluated_and_predicted_with_its_final_params(
  tiny, tmp_path
):
  """`train.restore_best=False` reports the final params; `evaluate` and `predict` read
  those too (the newest checkpoint), not the best checkpoint's."""
  wd = str(tmp_path / "run")
  # A high rate so the last step is not the best one; 25 steps: not a multiple of the
  # evaluation interval, so the final save is its own.
  config = _config(
    tiny, "train.restore_best=False", "train.max_steps=25", "train.learning_rate=0.3"
  )
  trained = train_lib.train_and_evaluate(config, wd)
  assert trained["best_step"] != trained["steps"]
  again = train_lib.evaluate(wd)
  for split in ("val", "test"):
    assert again[split]["mse"] == trained[split]["mse"], split
  # And the params predict reads are the final ones, which differ from the best ones.
  abstract = jax.tree.map(np.asarray, assemble(config_lib.to_spec(config)).init_state().params)
  final = train_lib.restore_params(wd, abstract, best=False)
  best = train_lib.restore_params(wd, abstract)
  leaves = zip(jax.tree.leaves(final), jax.tree.leaves(best))
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in leaves)
