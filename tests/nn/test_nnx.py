"""flaxlstm.nnx: the NNX twins of the Linen layers, on the same recurrence code."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from jax_helpers import fake_devices_env

import flaxlstm
from flaxlstm import nnx as lnnx

B, T, D, H = 4, 9, 3, 6


def _x(seed=0, shape=(B, T, D)):
  return jax.random.normal(jax.random.key(seed), shape)


def test_importing_flaxlstm_nnx_stays_light():
  heavy = "('pandas', 'sklearn', 'orbax.checkpoint', 'matplotlib')"
  code = f"import sys, flaxlstm.nnx; print(any(m in sys.modules for m in {heavy}))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


def test_layer_cell_in_nnx_rnn_gives_the_same_outputs():
  layer = lnnx.LSTM(D, H, rngs=nnx.Rngs(0))
  x = _x()
  np.testing.assert_allclose(layer(x), nnx.RNN(layer.cell)(x), atol=1e-6)


def test_equals_nnx_optimized_lstm_cell_forward_and_gradients():
  """forget_bias=0 with `from_nnx_cell(..., forget_bias=0.0)`: Flax's cell, exactly."""
  flax_cell = nnx.OptimizedLSTMCell(D, H, rngs=nnx.Rngs(1))
  ours = lnnx.LSTM(D, H, rngs=nnx.Rngs(0), forget_bias=0.0)
  lnnx.load_params(ours.cell, lnnx.from_nnx_cell(flax_cell, forget_bias=0.0))
  x = _x()
  ref_rnn = nnx.RNN(flax_cell)
  np.testing.assert_allclose(ours(x), ref_rnn(x), atol=1e-6)

  def loss(model, x):
    return jnp.sum(jnp.sin(model(x)))

  g_ours, gx_ours = nnx.grad(loss, argnums=(0, 1))(ours, x)
  g_ref, gx_ref = nnx.grad(loss, argnums=(0, 1))(ref_rnn, x)
  np.testing.assert_allclose(gx_ours, gx_ref, atol=1e-5)
  # The parameter gradients too, once Flax's are put in our layout by the same converter.
  ref_as_ours = lnnx.from_nnx_cell(_with_state(flax_cell, g_ref.cell), forget_bias=0.0)
  for name, value in ref_as_ours.items():
    np.testing.assert_allclose(getattr(g_ours.cell, name)[...], value, atol=1e-5)


def _with_state(module, grads_state):
  """A copy of `module` whose params are `grads_state` (to convert gradients like params)."""
  graphdef, _ = nnx.split(module)
  return nnx.merge(graphdef, grads_state)


def test_from_nnx_lstm_cell_matches():
  flax_cell = nnx.LSTMCell(D, H, rngs=nnx.Rngs(1))
  cell = lnnx.LSTMCell(D, H, rngs=nnx.Rngs(0), forget_bias=0.0)
  lnnx.load_params(cell, lnnx.from_nnx_cell(flax_cell, forget_bias=0.0))
  x = _x()
  np.testing.assert_allclose(nnx.RNN(cell)(x), nnx.RNN(flax_cell)(x), atol=1e-6)


OPTIONS = [
  {},
  {"proj_features": 4},
  {"layer_norm": True},
  {"reverse": True},
  {"return_sequences": False},
  {"unroll": 3, "remat": True},
]


@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: ",".join(kw) or "default")
def test_equals_the_linen_layer_given_converted_params(kw):
  x = _x()
  lengths = jnp.array([9, 5, 1, 7])
  carry0 = (_x(3, (B, H)), _x(4, (B, kw.get("proj_features", H))))
  linen_layer = flaxlstm.LSTM(H, **kw)
  params = linen_layer.init(jax.random.key(1), x)
  ours = lnnx.linen_to_nnx(lnnx.LSTM(D, H, rngs=nnx.Rngs(0), **kw), params)
  for call in ({}, {"seq_lengths": lengths}, {"initial_carry": carry0}):
    np.testing.assert_allclose(ours(x, **call), linen_layer.apply(params, x, **call), atol=1e-6)
  back = lnnx.nnx_to_linen(ours)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, params))


def test_linen_to_nnx_and_nnx_to_linen_are_inverses():
  # README's "Moving weights": Linen variables -> NNX -> the same variables, which the
  # Linen layer applies as its own; and an NNX layer's weights survive the way back.
  x = _x()
  linen_stack = flaxlstm.StackedLSTM(features=(5, 4), bidirectional=True)
  variables = linen_stack.init(jax.random.key(2), x)
  ours = lnnx.linen_to_nnx(
    lnnx.StackedLSTM(D, (5, 4), rngs=nnx.Rngs(0), bidirectional=True), variables
  )
  back = lnnx.nnx_to_linen(ours)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, variables))
  np.testing.assert_allclose(linen_stack.apply(back, x), ours(x), atol=1e-6)

  layer = lnnx.LSTM(D, H, rngs=nnx.Rngs(3))
  again = lnnx.linen_to_nnx(lnnx.LSTM(D, H, rngs=nnx.Rngs(4)), lnnx.nnx_to_linen(layer))
  assert jax.tree.all(
    jax.tree.map(np.array_equal, nnx.state(again, nnx.Param), nnx.state(layer, nnx.Param))
  )
  np.testing.assert_allclose(
    flaxlstm.LSTM(H).apply(lnnx.nnx_to_linen(layer), x), layer(x), atol=1e-6
  )


def test_bfloat16_compute_keeps_float32_params():
  layer = lnnx.LSTM(D, H, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
  y = layer(_x())
  assert y.dtype == jnp.bfloat16 and layer.cell.input_kernel[...].dtype == jnp.float32
  ref = lnnx.LSTM(D, H, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(y.astype(jnp.float32), ref(_x()), atol=0.05)


def test_stacked_and_bidirectional_match_linen():
  x = _x()
  linen_stack = flaxlstm.StackedLSTM(features=(5, 4), bidirectional=True)
  params = linen_stack.init(jax.random.key(2), x)
  ours = lnnx.StackedLSTM(D, (5, 4), rngs=nnx.Rngs(0), bidirectional=True)
  lnnx.linen_to_nnx(ours, params)
  np.testing.assert_allclose(ours(x), linen_stack.apply(params, x), atol=1e-6)


def test_dropout_uses_the_dropout_stream_and_eval_turns_it_off():
  x = _x()
  layer = lnnx.StackedLSTM(D, (H, H), rngs=nnx.Rngs(0, dropout=7), dropout=0.3,
                           recurrent_dropout=0.3, inter_layer_dropout=0.3)  # fmt: skip
  a, b = layer(x), layer(x)
  assert not np.allclose(a, b)  # a new mask per call in training mode
  layer.eval()
  np.testing.assert_array_equal(layer(x), layer(x))
  layer.train()
  assert not np.allclose(layer(x), layer(x, deterministic=True))
  # Same seed, same masks: dropout is a pure function of the rngs given.
  again = lnnx.StackedLSTM(D, (H, H), rngs=nnx.Rngs(0, dropout=7), dropout=0.3,
                           recurrent_dropout=0.3, inter_layer_dropout=0.3)  # fmt: skip
  np.testing.assert_array_equal(again(x), a)


def test_runs_the_fused_recurrence(monkeypatch):
  from flaxlstm.nn.kernels import lstm_fused

  calls = []
  real = lstm_fused._fused_recurrence
  monkeypatch.setattr(
    lstm_fused, "_fused_recurrence", lambda *a: calls.append(1) or real(*a)
  )  # fmt: skip
  layer = lnnx.LSTM(D, H, rngs=nnx.Rngs(0))
  nnx.grad(lambda m: m(_x()).sum())(layer)
  assert calls


class _Regressor(nnx.Module):
  def __init__(self, rngs):
    self.lstm = lnnx.LSTM(D, H, rngs=rngs, return_sequences=False, dropout=0.1)
    self.head = nnx.Linear(H, 1, rngs=rngs)

  def __call__(self, x):
    return self.head(self.lstm(x))[..., 0]


def test_nnx_training_loop_lowers_the_loss_and_state_round_trips(tmp_path):
  x = _x(0, (32, T, D))
  y = jnp.sum(x[:, -3:, 0], axis=1)
  model = _Regressor(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, x, y)) for _ in range(60)]
  assert losses[-1] < 0.5 * losses[0]

  graphdef, state = nnx.split(model)
  clone = nnx.merge(graphdef, state)
  model.eval()
  clone.eval()
  np.testing.assert_array_equal(clone(x), model(x))

  import orbax.checkpoint as ocp

  path = tmp_path / "ckpt"
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, nnx.state(model))
  fresh = _Regressor(nnx.Rngs(1))
  fresh.eval()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(fresh))
  with ocp.StandardCheckpointer() as ckpt:
    nnx.update(fresh, ckpt.restore(path, abstract))
  np.testing.assert_array_equal(fresh(x), model(x))


def test_bridge_to_linen_and_to_nnx():
  x = _x()
  linen_layer = flaxlstm.LSTM(H)

  # The NNX layer inside a Linen model: its params are the Linen layer's tree, and the
  # Linen layer given them computes the same outputs.
  class LinenModel(linen.Module):
    @linen.compact
    def __call__(self, x):
      return nnx.bridge.ToLinen(lnnx.LSTM, args=(D, H), name="lstm")(x)

  wrapped = LinenModel()
  variables = wrapped.init(jax.random.key(0), x)
  inner = jax.tree.map(jnp.asarray, variables["params"]["lstm"])
  np.testing.assert_allclose(
    wrapped.apply(variables, x), linen_layer.apply({"params": inner}, x), atol=1e-6
  )

  # The Linen layer inside NNX code gives the NNX layer's outputs.
  params = linen_layer.init(jax.random.key(1), x)
  ours = lnnx.linen_to_nnx(lnnx.LSTM(D, H, rngs=nnx.Rngs(0)), params)
  bridged = nnx.bridge.ToNNX(linen_layer, rngs=nnx.Rngs(0))
  nnx.bridge.lazy_init(bridged, x)
  for name, value in params["params"]["cell"].items():
    bridged.cell[name][...] = value
  np.testing.assert_allclose(bridged(x), ours(x), atol=1e-6)


@pytest.mark.slow
def test_with_partitioning_trains_on_8_devices_like_on_one():
  worker = pathlib.Path(__file__).with_name("nnx_sharding_worker.py")
  env = fake_devices_env(8)
  out = subprocess.run(
    [sys.executable, str(worker)], capture_output=True, text=True, env=env, timeout=300
  )
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["sharded_kernel"] == [None, "model"]
  np.testing.assert_allclose(result["mesh"], result["single"], rtol=1e-5)
  assert result["mesh"][-1] < result["mesh"][0]


@pytest.mark.parametrize("proj", [0, 4])
def test_torch_converted_params_load_as_is(np_ref, proj):
  """`flaxlstm.from_torch_lstm`'s output loads into the NNX cell unchanged (LSTMP too)."""
  sd = np_ref.random_torch_state_dict(0, D, H, num_layers=1, proj_size=proj)
  cell = lnnx.LSTMCell(D, H, rngs=nnx.Rngs(0), proj_features=proj or None)
  lnnx.load_params(cell, flaxlstm.from_torch_lstm(sd))
  x, c0, h0 = _x(1, (B, D)), _x(2, (B, H)), _x(3, (B, proj or H))
  (c, h), _ = cell((c0, h0), x)
  c_ref, h_ref = np_ref.step(x, c0, h0, *np_ref.torch_layer_weights(sd))
  np.testing.assert_allclose(c, c_ref, rtol=1e-5, atol=2e-6)
  np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=2e-6)


def test_load_params_names_a_wrong_shape():
  cell = lnnx.LSTMCell(D, H, rngs=nnx.Rngs(0))
  params = cell.params() | {"bias": jnp.zeros((5,))}
  with pytest.raises(ValueError, match=r"bias: expected shape \(24,\), got \(5,\)"):
    lnnx.load_params(cell, params)


def test_compiles_to_the_same_program_as_the_linen_layer():
  """The NNX layer is the Linen layer's code: its jitted gradient has the same XLA ops."""
  import re

  x = _x()
  linen_stack = flaxlstm.StackedLSTM(features=(8, 5), return_sequences=False)
  params = linen_stack.init(jax.random.key(0), x)["params"]
  graphdef, state, rest = nnx.split(
    lnnx.StackedLSTM(D, (8, 5), rngs=nnx.Rngs(0), return_sequences=False), nnx.Param, ...
  )

  def ops(f, *args):
    text = jax.jit(f).lower(*args).compile().as_text()
    return sorted(re.findall(r"= \w+\[[^\]]*\][^ ]* (\w+)\(", text))

  linen_ops = ops(
    lambda p, x: jax.grad(lambda p: linen_stack.apply({"params": p}, x).sum())(p), params, x
  )
  nnx_ops = ops(lambda s, x: jax.grad(lambda s: nnx.merge(graphdef, s, rest)(x).sum())(s), state, x)
  assert linen_ops and nnx_ops == linen_ops


def test_rnn_over_an_nnx_cell_equals_nnx_rnn_outputs_and_gradients():
  """`lnnx.RNN(nnx.GRUCell(...))`: the cell's own step in flaxlstm's loop, what `nnx.RNN`
  computes on every valid step, with gradients to the cell's parameters."""
  lengths = jnp.array([T, 4, 1])
  x = _x(shape=(3, T, D))
  valid = (jnp.arange(T)[None, :] < lengths[:, None])[..., None]
  cell = nnx.GRUCell(D, H, rngs=nnx.Rngs(0))

  def loss(layer):
    carry, ys = layer(x, seq_lengths=lengths, return_carry=True)
    return (jnp.where(valid, ys, 0) ** 2).sum() + carry.sum()

  ours, theirs = lnnx.RNN(cell), nnx.RNN(cell)
  np.testing.assert_allclose(loss(ours), loss(theirs), rtol=1e-5)
  g_ours = nnx.state(nnx.grad(loss)(ours), nnx.Param)
  g_theirs = nnx.state(nnx.grad(loss)(theirs), nnx.Param)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Recurrent dropout on a cell flaxlstm knows nothing about, from the `dropout` stream.
  dropped = lnnx.RNN(cell, recurrent_dropout=0.5, rngs=nnx.Rngs(dropout=1))
  assert not np.allclose(dropped(x), ours(x))
  np.testing.assert_allclose(dropped(x, deterministic=True), ours(x), atol=1e-6)


def test_the_xlstm_layers_and_blocks_train_in_nnx_code_through_the_bridge():
  """An xLSTM stack (an mLSTM block, then an sLSTM block: both layers and both blocks)
  wrapped by `nnx.bridge.ToNNX`: its parameter tree is the Linen one name for name, so
  weights in the Linen tree (a converter's) load with `nnx.update`, and then its loss and
  gradients under `nnx.grad` are the Linen module's with those weights, and one
  `nnx.Optimizer` step lowers the loss. Jitted both sides (eager, the recurrences run op by
  op)."""
  x = _x(3, (2, 7, 16))
  module = flaxlstm.XLSTMStack(
    16, num_blocks=2, slstm_at=(1,), mlstm=dict(num_heads=2), slstm=dict(num_heads=2)
  )
  bridged = nnx.bridge.ToNNX(module, rngs=nnx.Rngs(0))
  nnx.jit(nnx.bridge.lazy_init)(bridged, x[:, :1])  # its parameters, jitted
  state = nnx.state(bridged, nnx.Param)
  # Other weights (as a converter would give), loaded into the bridged module by name.
  params = jax.tree.map(lambda a: 1.1 * a + 0.01, nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, params)
  nnx.update(bridged, state)
  loss_of = lambda y: jnp.mean(jnp.square(y - 0.5))
  linen_loss = lambda p: loss_of(module.apply({"params": p}, x))
  want_loss, want_grads = jax.jit(jax.value_and_grad(linen_loss))(params)
  optimizer = nnx.Optimizer(bridged, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: loss_of(m(x)))(model)
    optimizer.update(model, grads)
    return loss, grads

  loss, grads = train_step(bridged, optimizer)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  got = nnx.to_pure_dict(grads)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert nnx.jit(lambda m: loss_of(m(x)))(bridged) < loss
