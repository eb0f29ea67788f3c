"""Gradient accumulation (`train.grad_accum_steps`): micro-batches averaged inside the
step give the one big step's update, and a run that accumulates resumes exactly."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from flaxlstm import config as config_lib
from flaxlstm import train as train_lib
from flaxlstm.train.assembly import assemble
from flaxlstm.train.step import TrainState, train_step_fn


def test_four_micro_batches_update_as_the_whole_batch(tiny):
  spec = config_lib.to_spec(config_lib.load_config(tiny["exp"]))  # no dropout
  run = assemble(spec)
  # Random params rather than `init_state`, whose initializers take longer to compile.
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda: run.init_with(spec.seed, run.tx)).params
  params = jax.tree.map(lambda a: rng.normal(0, 0.5, a.shape).astype(a.dtype), shapes)
  state = TrainState(step=np.int32(0), params=params, opt_state=run.tx.init(params))
  batch = run.train_batch(0)
  out = {}
  for k in (1, 4):
    train = dataclasses.replace(spec.train, grad_accum_steps=k)
    out[k] = jax.jit(train_step_fn(run.model, run.tx, train, spec.seed))(state, *batch)
  (one, m1), (four, m4) = out[1], out[4]
  assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-6)
  assert float(m4["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-5)
  for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params)):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= 1e-6 * np.max(np.abs(b))


@pytest.mark.slow  # three runs
def test_a_run_that_accumulates_resumes_exactly(tiny, tmp_path):
  # Dropout on: each micro-batch's key is a pure function of the seed, step and index.
  base = ["train.grad_accum_steps=2", "model.dropout=0.1", "model.recurrent_dropout=0.1"]
  config = lambda steps: config_lib.load_config(tiny["exp"], base + [f"train.max_steps={steps}"])
  wd, straight = str(tmp_path / "resumed"), str(tmp_path / "straight")
  train_lib.train_and_evaluate(config(10), wd)
  resumed = train_lib.train_and_evaluate(config(20), wd)  # a larger budget resumes at 10
  ref = train_lib.train_and_evaluate(config(20), straight)
  for key in ("val", "test", "steps", "best_step"):
    assert resumed[key] == ref[key], key
  lines = lambda w: [
    {k: v for k, v in json.loads(line).items() if k not in ("flops_per_s",)}
    for line in open(os.path.join(w, "metrics.jsonl"))
  ]
  assert lines(wd) == lines(straight)
  # On CPU no peak is known: FLOPs and FLOP/s are logged, no MFU.
  assert "flops_per_step" in resumed and "flops_per_s" in resumed and "mfu" not in resumed
  assert not any("mfu" in line for line in lines(wd))
