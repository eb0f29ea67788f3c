"""Tests for `flaxlstm.nn.kernels`: the fused custom-VJP LSTM loop equals the autodiff one,
and `select` picks the kernel a cell offers and a call allows."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlstm.nn import kernels
from flaxlstm.nn.cells.lstm import LSTMCell
from flaxlstm.nn.kernels import lstm_fused

T, B, H = 5, 3, 8
RTOL, ATOL = 1e-5, 1e-5  # float32
LENGTHS = np.array([5, 2, 0])  # full, partial and empty sequences


def _rand(seed, *shape, scale=0.5):
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _params(d, seed=0):
  return {
    "input_kernel": _rand(seed, d, 4 * H),
    "recurrent_kernel": _rand(seed + 1, H, 4 * H),
    "bias": _rand(seed + 2, 4 * H),
  }


def _close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)


def _loss_and_grads(cell, implementation, *, masked, h_masked, remat=False):
  """value_and_grad of a loss using all outputs and the final carry, w.r.t. the params,
  the inputs, the initial carry and the recurrent-dropout mask."""
  mask = jnp.asarray((np.arange(T)[:, None] < LENGTHS[None, :])[..., None]) if masked else None
  weights = _rand(9, T, B, cell.features, scale=1.0)

  def loss(p, x, c0, h0, h_mask):
    (c, h), ys = kernels.recurrence(
      cell,
      p,
      (c0, h0),
      x,
      mask=mask,
      h_mask=h_mask if h_masked else None,
      remat=remat,
      implementation=implementation,
    )
    return (ys * weights).sum() + 1.3 * c.sum() - 0.7 * h.sum(), ys

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))


@pytest.fixture(params=["batch_major", "feature_major"])
def layout(request, monkeypatch):
  """Runs a test with the fused loop in both state layouts (wide layers use feature-major)."""
  if request.param == "feature_major":
    monkeypatch.setattr(lstm_fused, "_FEATURE_MAJOR_MIN_UNITS", 1)
  assert lstm_fused._feature_major(H) == (request.param == "feature_major")
  return request.param


@pytest.mark.parametrize("d", [2, 16], ids=["in_loop_projection", "hoisted_projection"])
@pytest.mark.parametrize("masked", [False, True], ids=["", "mask"])
@pytest.mark.parametrize("h_masked", [False, True], ids=["", "h_mask"])
def test_fused_outputs_and_gradients_equal_autodiff(d, masked, h_masked, layout):
  # Both projection layouts: narrow inputs fold W into the per-step matmul, wide ones not.
  assert lstm_fused._inloop_projection(d, H) == (d == 2)
  cell = LSTMCell(H)  # forget_bias=1.0: the fused path must add it like `project` does
  args = (
    _params(d),
    _rand(3, T, B, d, scale=1.0),
    _rand(4, B, H),
    _rand(5, B, H),
    jnp.asarray(np.random.default_rng(6).uniform(0.0, 2.0, (B, H)), jnp.float32),
  )
  (ref_loss, ref_ys), ref_grads = _loss_and_grads(
    cell, "autodiff", masked=masked, h_masked=h_masked
  )(*args)
  (loss, ys), grads = _loss_and_grads(cell, "fused", masked=masked, h_masked=h_masked)(*args)
  _close(ys, ref_ys)
  _close(loss, ref_loss)
  _close(grads, ref_grads)
  assert np.abs(np.asarray(grads[0]["recurrent_kernel"])).sum() > 0  # not vacuous


@pytest.mark.parametrize("d", [2, 16], ids=["in_loop_projection", "hoisted_projection"])
@pytest.mark.parametrize("masked", [False, True], ids=["", "mask"])
def test_fused_gradient_has_no_per_step_buffer_copies(d, masked, layout):
  # The scans overwrite slots of a carried (T, ...) buffer in place (`_read_slot`). If a read
  # of the slot is not ordered before the write, XLA silently copies the whole buffer on
  # every step instead: correct, but a full memory pass per step.
  cell = LSTMCell(H)
  args = (
    _params(d),
    _rand(3, T, B, d, scale=1.0),
    _rand(4, B, H),
    _rand(5, B, H),
    jnp.ones((B, H), jnp.float32),
  )
  grad = _loss_and_grads(cell, "fused", masked=masked, h_masked=True)
  hlo = grad.lower(*args).compile().as_text()
  assert "while" in hlo
  copies = re.findall(rf"= f32\[{T},[0-9,]*\]\S* copy\(%get-tuple-element", hlo)
  assert not copies, copies


@pytest.mark.parametrize("masked", [False, True], ids=["", "mask"])
def test_fused_with_remat_equals_autodiff(masked, layout):
  cell = LSTMCell(H, forget_bias=0.0)
  args = (
    _params(2, seed=10),
    _rand(11, T, B, 2, scale=1.0),
    _rand(12, B, H),
    _rand(13, B, H),
    jnp.ones((B, H), jnp.float32),
  )
  ref = _loss_and_grads(cell, "autodiff", masked=masked, h_masked=False)(*args)
  out = _loss_and_grads(cell, "fused", masked=masked, h_masked=False, remat=True)(*args)
  _close(out, ref)


def test_fused_forward_without_gradient_equals_autodiff():
  cell = LSTMCell(H)
  p, x = _params(16), _rand(20, T, B, 16, scale=1.0)
  carry = (_rand(21, B, H), _rand(22, B, H))
  run = jax.jit(
    lambda impl_is_fused, p, x, carry: kernels.recurrence(
      cell, p, carry, x, implementation="fused" if impl_is_fused else "autodiff"
    ),
    static_argnums=0,
  )
  _close(run(True, p, x, carry), run(False, p, x, carry))


def test_default_is_fused_where_supported():
  assert lstm_fused.fused_supported(LSTMCell(H))
  for cell in (
    LSTMCell(H, layer_norm=True),
    LSTMCell(H, proj_features=4),
    LSTMCell(H, dtype=jnp.bfloat16),
    LSTMCell(H, gate_fn=jax.nn.hard_sigmoid),
  ):
    assert not lstm_fused.fused_supported(cell)
    with pytest.raises(ValueError, match="fused"):
      kernels.recurrence(
        cell, {}, (jnp.zeros((B, H)),) * 2, jnp.zeros((T, B, 2)), implementation="fused"
      )


def test_unsupported_cells_fall_back_to_autodiff():
  cell = LSTMCell(H, proj_features=4)
  p = {**_params(2), "recurrent_kernel": _rand(30, 4, 4 * H), "projection_kernel": _rand(31, H, 4)}
  x, carry = _rand(32, T, B, 2, scale=1.0), (_rand(33, B, H), _rand(34, B, 4))
  run = jax.jit(
    lambda impl, p: kernels.recurrence(cell, p, carry, x, implementation=impl),
    static_argnums=0,
  )
  _close(run("auto", p), run("autodiff", p))


def test_rejects_unknown_implementation():
  with pytest.raises(ValueError, match="implementation"):
    kernels.recurrence(
      LSTMCell(H),
      _params(2),
      (jnp.zeros((B, H)),) * 2,
      jnp.zeros((T, B, 2)),
      implementation="bogus",
    )


@pytest.mark.parametrize("d", [2, 16], ids=["in_loop_projection", "hoisted_projection"])
@pytest.mark.parametrize("masked", [False, True], ids=["", "mask"])
def test_fused_under_vmap_over_members_equals_autodiff(d, masked, layout, monkeypatch):
  # A population: P members with their own params, inputs, carries and dropout masks,
  # under jax.vmap (the population rule of the fused kernel for narrow inputs; with a
  # hoisted projection, a step mask or feature-major, JAX's default batching). Each member
  # must equal autodiff on its own.
  cell, n = LSTMCell(H), 3
  members = [
    (
      _params(d, 30 + 3 * k),
      _rand(40 + k, T, B, d, scale=1.0),
      _rand(50 + k, B, H),
      _rand(60 + k, B, H),
      jnp.asarray(np.random.default_rng(70 + k).uniform(0, 2, (B, H)), jnp.float32),
    )
    for k in range(n)
  ]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
  calls = []
  for name in ("_population_forward", "_population_backward"):
    real = getattr(lstm_fused, name)
    monkeypatch.setattr(
      lstm_fused, name, lambda *a, real=real, name=name: calls.append(name) or real(*a)
    )
  fused = _loss_and_grads(cell, "fused", masked=masked, h_masked=True)
  (loss, ys), grads = jax.jit(jax.vmap(fused))(*stacked)
  population_kernel = not masked and layout == "batch_major" and 4 * d <= H  # in-loop
  assert sorted(set(calls)) == (
    ["_population_backward", "_population_forward"] if population_kernel else []
  )
  for k, args in enumerate(members):
    (ref_loss, ref_ys), ref_grads = _loss_and_grads(cell, "autodiff", masked=masked, h_masked=True)(
      *args
    )
    _close(loss[k], ref_loss)
    _close(ys[k], ref_ys)
    _close(jax.tree.map(lambda a, k=k: a[k], grads), ref_grads)
  # Shared weights (a vmap over the data only) take the same rule, the weights broadcast.
  shared = jax.jit(jax.vmap(fused, in_axes=(None, 0, 0, 0, 0)))
  (_, ys_shared), _ = shared(members[0][0], *stacked[1:])
  _close(ys_shared[0], ys[0])


# ---- select: the one place a kernel is chosen ---------------------------------------------------
def test_select_takes_the_fastest_kernel_a_cell_offers_and_a_call_allows():
  from flax import linen as nn

  from flaxlstm.nn.cells.base import LinenStep

  call = kernels.Call()
  assert kernels.select(LSTMCell(H), "auto", call).name == "fused"
  # A configuration the fused loop cannot run, and any Flax cell: the autodiff loop.
  assert kernels.select(LSTMCell(H, layer_norm=True), "auto", call).name == "autodiff"
  gru = LinenStep(nn.GRUCell(H))
  assert kernels.select(gru, "auto", call).name == "autodiff"
  # Asking for a kernel the cell does not offer is an error naming the cell.
  with pytest.raises(ValueError, match="GRUCell offers no 'fused' kernel"):
    kernels.select(gru, "fused", call)
  with pytest.raises(ValueError, match="unknown implementation 'bogus'"):
    kernels.select(LSTMCell(H), "bogus", call)


def test_cudnn_falls_back_where_it_cannot_run_naming_why(caplog):
  import logging

  with caplog.at_level(logging.WARNING, logger="flaxlstm.nn.kernels.registry"):
    kernel = kernels.select(LSTMCell(H), "cudnn", kernels.Call())
  assert kernel.name == "fused"  # what "auto" picks
  assert "no CUDA GPU here" in caplog.text
  # A population's members under vmap: cuDNN has no batching rule, whatever the machine.
  with kernels.cudnn.emulate(), kernels.members_batched():
    assert kernels.call_needs(recurrent_dropout=False, remat=False).batched
    reason = kernels.cudnn.unsupported(
      LSTMCell(H), kernels.call_needs(recurrent_dropout=False, remat=False)
    )
  assert reason == "a population's vmap over members is not supported"
  assert not kernels.call_needs(recurrent_dropout=False, remat=False).batched  # reset on exit


def test_a_kernel_variant_registers_under_its_own_name(monkeypatch):
  """`FusedLSTM(population_rule=False)`: JAX's default batching under vmap, for A/Bs. It
  is registered, and picked, by its own name wherever "fused" is offered; its results
  equal the population rule's."""
  variant = lstm_fused.FusedLSTM("fused_test_variant", population_rule=False)
  kernels.register(variant)
  try:
    cell = LSTMCell(H)
    assert kernels.select(cell, "fused_test_variant", kernels.Call()) is variant
    assert "fused_test_variant" in kernels.names()
    p, x = _params(2), _rand(80, 2, T, B, 2, scale=1.0)
    c0 = (_rand(81, 2, B, H), _rand(82, 2, B, H))

    calls = []
    real = lstm_fused._population_forward
    monkeypatch.setattr(
      lstm_fused, "_population_forward", lambda *a: calls.append(1) or real(*a)
    )  # fmt: skip

    def run(kernel):
      calls.clear()
      f = lambda p, x, c, h: kernel.recurrence(cell, p, (c, h), x)[1].sum()
      out = jax.vmap(jax.grad(f, argnums=1), in_axes=(None, 0, 0, 0))(p, x, *c0)
      return out, bool(calls)

    (plain, plain_rule), (ruled, rule) = run(variant), run(lstm_fused.FUSED)
    assert rule and not plain_rule  # the population kernel only with the rule
    _close(plain, ruled)
  finally:
    kernels.KERNELS.pop("fused_test_variant")
