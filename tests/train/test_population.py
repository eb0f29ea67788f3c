"""Populations (train/population.py): member k equals the single run of config k, each
member writes a standard workdir, resume after a kill, and the 8-device mesh."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax_helpers import fake_devices_env

from flaxlstm import config as config_lib
from flaxlstm import train as train_lib
from flaxlstm.data import augment
from flaxlstm.errors import InputError
from flaxlstm.train import population
from flaxlstm.train.checkpoint import Checkpoints

COMMON = (
  "model.recurrent_dropout=0.1",
  "train.patience=2",
  "train.max_steps=60",
  "train.eval_every_steps=10",
)
# Seeds, learning rates, weight decays, dropout rates and augmentation differ per member.
MEMBERS = (
  ("seed=0", "train.learning_rate=0.01", "model.dropout=0.1", "train.weight_decay=0.001"),
  ("seed=1", "train.learning_rate=0.05", "model.dropout=0.3", "train.weight_decay=0.0001"),
  ("seed=2", "train.learning_rate=0.003", "model.dropout=0.2", "data.augment.jitter=0.05"),
)


def _configs(tiny):
  return [config_lib.load_config(tiny["exp"], [*COMMON, *m]) for m in MEMBERS]


def _close(a, b):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
  """The members trained one by one and as one population."""
  root = tmp_path_factory.mktemp("population")
  single = [
    train_lib.train_and_evaluate(c, str(root / f"single{k}")) for k, c in enumerate(_configs(tiny))
  ]
  workdirs = [str(root / f"member{k}") for k in range(len(MEMBERS))]
  members = population.train_population(_configs(tiny), workdirs)
  return {"single": single, "members": members, "workdirs": workdirs, "root": root}


@pytest.mark.slow  # trains to completion
def test_member_k_equals_the_single_run_of_config_k(runs):
  single, members = runs["single"], runs["members"]
  assert any(m["stopped_early"] for m in single) and not all(m["stopped_early"] for m in single)
  # On CPU each member runs its single run's own program (one member per `lax.map`
  # iteration): the numbers are the same to the bit, not only to float tolerance.
  for s, m in zip(single, members):
    for key in ("steps", "best_step", "stopped_early"):
      assert m[key] == s[key], key
    for split in ("val", "test"):
      assert m[split]["mse"] == s[split]["mse"]
      assert m[split]["mae"] == s[split]["mae"]


@pytest.mark.slow  # trains to completion
def test_members_all_at_once_equal_the_single_runs(runs, tmp_path, tiny):
  # The accelerator layout: a device's members vmapped in one `lax.map` iteration (the fused
  # kernel's population rule), frozen members masked instead of skipped.
  workdirs = [str(tmp_path / f"m{k}") for k in range(len(MEMBERS))]
  trained = population.train_population(_configs(tiny), workdirs, chunk=len(MEMBERS))
  for s, m in zip(runs["single"], trained):
    for key in ("steps", "best_step", "stopped_early"):
      assert m[key] == s[key], key
    for split in ("val", "test"):
      _close(m[split]["mse"], s[split]["mse"])


def test_members_share_the_batch_fitted_to_a_small_training_set(tiny):
  # A batch above the training windows becomes the most that fit (assembly.fit_batch):
  # for every member alike, as each of their single runs would.
  configs = [
    config_lib.load_config(tiny["exp"], [*COMMON, *m, "train.batch_size=4096"]) for m in MEMBERS
  ]
  setups = population.assemble_population([config_lib.to_spec(c) for c in configs])
  n_train = len(setups[0].data.window_index("train"))
  assert n_train < 4096 and {s.spec.train.batch_size for s in setups} == {n_train}


def test_a_frozen_member_is_skipped_one_member_at_a_time(tiny):
  # On CPU a device's members run one per `lax.map` iteration, each behind a `lax.cond`
  # on its flag. The loop must stay a plain scan: vmapped over a chunk of one, the cond
  # becomes a select and a stopped member costs a whole train step (or forecast).
  specs = [config_lib.to_spec(c) for c in _configs(tiny)]
  pop = population._Population(
    population.assemble_population(specs), population._pop_mesh(jax.devices()[:1])
  )
  assert pop.chunk() == 1
  on = pop.flags([True, False, True])
  inputs, y = pop.batch(0, [True, False, True])
  state = pop.init()
  step = pop.make_step().lower(state, pop.hp, pop.seeds, inputs, y, on).as_text()
  assert "stablehlo.case" in step
  window = {k: v[:, :2] for k, v in inputs.items()}
  predict = pop.make_predict().lower(state.params, window, on).as_text()
  assert "stablehlo.case" in predict


@pytest.mark.slow  # trains to completion
def test_each_member_writes_the_workdir_a_single_run_writes(runs):
  root = runs["root"]
  for k, wd in enumerate(runs["workdirs"]):
    ref = root / f"single{k}"
    assert sorted(os.listdir(wd)) == sorted(os.listdir(ref))
    assert json.load(open(os.path.join(wd, "config.json"))) == json.load(open(ref / "config.json"))
    logged = [(r["step"], r["split"]) for r in map(json.loads, open(f"{wd}/metrics.jsonl"))]
    assert logged == [(r["step"], r["split"]) for r in map(json.loads, open(ref / "metrics.jsonl"))]
  # `flaxlstm evaluate` reads a member's workdir as a run's.
  again = train_lib.evaluate(runs["workdirs"][1])
  _close(again["test"]["mse"], runs["members"][1]["test"]["mse"])


def test_groups_split_runs_by_structure(tiny):
  specs = [config_lib.to_spec(c) for c in _configs(tiny)]
  other = [
    config_lib.to_spec(config_lib.load_config(tiny["exp"], [*COMMON, *MEMBERS[0], o]))
    for o in ("model.hidden_sizes=4,", "model.dense_dropout=0.1", "train.l2=0.001")
  ]
  # Zero vs non-zero is structure (a mask drawn, a penalty term): its own group.
  assert population.groups(specs + other) == [[0, 1, 2], [3], [4], [5]]
  with pytest.raises(InputError, match="differ only in seed"):
    population.assemble_population(specs[:1] + other[:1])


class _Interrupt(Exception):
  pass


@pytest.mark.slow  # trains to completion
def test_a_killed_population_resumes_to_the_same_numbers(runs, tiny, tmp_path, monkeypatch):
  workdirs = [str(tmp_path / f"m{k}") for k in range(len(MEMBERS))]
  real, calls = augment.augment, []

  def dying(*args):  # member 2 augments once per step: dies during step 25
    calls.append(1)
    if len(calls) == 25:
      raise _Interrupt()
    return real(*args)

  monkeypatch.setattr(augment, "augment", dying)
  with pytest.raises(_Interrupt):
    population.train_population(_configs(tiny), workdirs)
  monkeypatch.setattr(augment, "augment", real)
  # As after a kill -9 between two members' saves: member 0 is one checkpoint behind.
  with Checkpoints(os.path.join(workdirs[0], "checkpoints")) as ckpts:
    newest = ckpts.steps("latest")[-1]
    ckpts.latest.delete(newest)
  shutil.rmtree(os.path.join(workdirs[0], "checkpoints", "integrity", "latest"), ignore_errors=True)
  resumed = population.train_population(_configs(tiny), workdirs)
  for r, m in zip(resumed, runs["members"]):
    for key in ("steps", "best_step", "stopped_early"):
      assert r[key] == m[key], key
    for split in ("val", "test"):
      assert r[split]["mse"] == m[split]["mse"]


@pytest.mark.slow
def test_members_sharded_over_8_devices_give_the_same_numbers(runs, tiny, tmp_path):
  workdirs = [str(tmp_path / f"m{k}") for k in range(len(MEMBERS))]
  overrides = [[*COMMON, *m] for m in MEMBERS]
  script = (
    "import json, sys, jax\n"
    "from flaxlstm import config as config_lib\n"
    "from flaxlstm.train import population\n"
    "assert jax.device_count() == 8\n"
    f"configs = [config_lib.load_config({tiny['exp']!r}, m) for m in {overrides!r}]\n"
    f"out = population.train_population(configs, {workdirs!r})\n"
    "print(json.dumps([[m['val']['mse'], m['test']['mse'], m['best_step']] for m in out]))\n"
  )
  env = fake_devices_env(8, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-2000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  for (val, test, best), m in zip(got, runs["members"]):
    _close(val, m["val"]["mse"])
    _close(test, m["test"]["mse"])
    assert best == m["best_step"]
  assert jax.device_count() >= 1


@pytest.mark.slow  # trains to completion
def test_a_diverging_member_fails_alone(tiny, tmp_path):
  # Member 1's learning rate blows its weights up: more non-finite steps than allowed
  # fail it, as its single run would fail, and member 0 trains on to its end.
  common = ("train.max_steps=20", "train.max_nonfinite_steps=0", "train.clip_norm=0")
  configs = [
    config_lib.load_config(tiny["exp"], [*common, f"train.learning_rate={lr}"])
    for lr in (0.01, 1e30)
  ]
  workdirs = [str(tmp_path / "ok"), str(tmp_path / "nan")]
  ok, bad = population.train_population(configs, workdirs)
  assert ok["steps"] == 20 and np.isfinite(ok["test"]["mse"])
  assert "non-finite loss or gradients" in bad["error"]
  assert not os.path.exists(os.path.join(workdirs[1], "metrics.json"))


@pytest.mark.slow  # trains to completion
def test_members_starting_from_the_ridge_fit_equal_their_single_runs(tiny, tmp_path):
  # model.linear_skip_init='ridge' is fit outside the members' traced init and broadcast to
  # each; train.eval_at_start scores every member's start before the first step.
  start = (
    "model.predict_delta=True",
    "model.linear_skip=True",
    "model.linear_skip_init=ridge",
    "train.eval_at_start=True",
    "train.max_steps=20",
  )
  configs = [
    config_lib.load_config(tiny["exp"], [*start, f"seed={k}", f"train.learning_rate={lr}"])
    for k, lr in enumerate((0.01, 0.5))
  ]
  single = [train_lib.train_and_evaluate(c, str(tmp_path / f"s{k}")) for k, c in enumerate(configs)]
  members = population.train_population(configs, [str(tmp_path / f"m{k}") for k in range(2)])
  assert single[1]["best_step"] == 0  # lr 0.5 never beats the ridge start
  for s, m in zip(single, members):
    assert m["best_step"] == s["best_step"]
    assert m["val"]["mse"] == s["val"]["mse"] and m["test"]["mse"] == s["test"]["mse"]
