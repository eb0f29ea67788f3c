"""FLOPs and MFU: XLA's count of the compiled step with its loops counted as often as they
run, the peak table, and what a run logs (metrics.jsonl, metrics.json)."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlstm import config as config_lib
from flaxlstm import train as train_lib
from flaxlstm.train import flops
from flaxlstm.train.assembly import assemble
from flaxlstm.train.step import make_train_step


def _rnn(w, x, unroll=1):
  """A tanh RNN over `x` (T, B, D): one matmul pair per step, in a scan."""

  def step(h, xt):
    h = jnp.tanh(xt @ w + h @ w)
    return h, None

  return jax.lax.scan(step, jnp.zeros((x.shape[1], w.shape[1])), x, unroll=unroll)[0].sum()


def _nested(w, xs, unroll=1):
  """`_rnn` over each of `xs`' leading slices, in an outer scan: loops within a loop."""
  return jax.lax.scan(lambda c, x: (c + _rnn(w, x, unroll), None), 0.0, xs, unroll=unroll)[0]


def _count(fn, *args):
  compiled = jax.jit(fn).lower(*args).compile()
  return flops.step_flops(compiled), compiled.cost_analysis()["flops"]


def _program(fn, grad: bool, unroll):
  f = lambda w, x: fn(w, x, unroll)
  return jax.grad(f) if grad else f


@pytest.mark.parametrize("nested", [False, True])
def test_loops_are_counted_as_often_as_they_run(nested):
  fn = _nested if nested else _rnn
  w, x = jnp.ones((16, 16)), jnp.ones((3, 8, 4, 16) if nested else (8, 4, 16))
  for grad in (False, True):
    counted, once = _count(_program(fn, grad, 1), w, x)
    # The same program with its loops unrolled has no loop: XLA counts it whole (its
    # fusions differ a little).
    unrolled, _ = _count(_program(fn, grad, True), w, x)
    assert counted == pytest.approx(unrolled, rel=0.05)
    assert counted > 7 * once  # XLA's own figure has each loop's body once
  loop_free, once = _count(lambda w: jnp.tanh(w @ w).sum(), w)
  assert loop_free == once


def test_peaks_by_device_kind_and_dtype_and_mfu_only_with_one():
  assert flops.peak_flops("NVIDIA H100 80GB HBM3", jnp.bfloat16) == 989e12
  assert flops.peak_flops("NVIDIA H200", jnp.bfloat16) == 989e12
  assert flops.peak_flops("NVIDIA H100 PCIe", jnp.bfloat16) == 756e12
  # float32 at JAX's default precision runs as TF32 on tensor cores, one bfloat16 pass on
  # TPUs; at "highest" it is true float32 (TPUs: several passes, no peak in the table).
  assert flops.peak_flops("NVIDIA A100-SXM4-40GB", np.float32) == 156e12
  assert flops.peak_flops("NVIDIA A100-SXM4-40GB", np.float32, "highest") == 19.5e12
  assert flops.peak_flops("NVIDIA H100 80GB HBM3", np.float32, "float32") == 67e12
  assert flops.peak_flops("TPU v5 lite", jnp.float32) == 197e12
  assert flops.peak_flops("TPU v4", jnp.float32, "highest") is None
  assert flops.peak_flops("cpu", jnp.float32) is None
  known = flops.StepCost(flops_per_step=2e12, devices=2, peak_flops_per_device=1e12)
  assert known.metrics(steps=3, seconds=2.0) == {
    "flops_per_step": 2e12,
    "flops_per_s": 3e12,
    "mfu": 1.5,
  }
  unknown = flops.StepCost(flops_per_step=2e12, devices=2, peak_flops_per_device=None)
  assert unknown.metrics(steps=3, seconds=2.0) == {"flops_per_step": 2e12, "flops_per_s": 3e12}


@pytest.mark.slow  # a run
def test_a_run_logs_the_flops_of_the_step_it_compiled_once(tiny, tmp_path, caplog):
  overrides = ["train.max_steps=10", "train.peak_flops_per_device=1e11"]
  wd = str(tmp_path / "run")
  with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
    train_lib.train_and_evaluate(config_lib.load_config(tiny["exp"], overrides), wd)
  compiles = [
    r for r in caplog.records if "Finished XLA compilation of jit(train_step)" in r.message
  ]
  assert len(compiles) == 1  # counting its FLOPs compiled nothing more

  # The same step compiled on its own counts the same.
  spec = config_lib.to_spec(config_lib.load_config(tiny["exp"], overrides))
  run = assemble(spec)
  step = make_train_step(run.model, run.tx, spec.train, spec.seed, run.mesh, run.state_sharding())
  compiled = step.lower(run.abstract_state(), *run.train_batch(0)).compile()
  expected = flops.step_flops(compiled)
  assert expected > compiled.cost_analysis()["flops"] > 0  # the time loops, counted through

  with open(os.path.join(wd, "metrics.jsonl")) as f:
    train = [r for r in map(json.loads, f) if r["split"] == "train" and "loss" in r]
  assert [r["step"] for r in train] == [5, 10]
  for r in train:
    assert r["flops_per_step"] == expected
    assert r["flops_per_s"] > 0
    assert r["mfu"] == pytest.approx(r["flops_per_s"] / 1e11)
  with open(os.path.join(wd, "metrics.json")) as f:
    final = json.load(f)
  assert final["flops_per_step"] == expected
  assert final["flops_per_s"] == pytest.approx(np.mean([r["flops_per_s"] for r in train]))
  assert final["mfu"] == pytest.approx(np.mean([r["mfu"] for r in train]))
