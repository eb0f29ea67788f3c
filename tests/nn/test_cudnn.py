"""The cuDNN backend (`flaxlstm.nn.cudnn`) and its weight packing (`convert.to_cudnn`), on CPU.

cuDNN itself needs an NVIDIA GPU (experiments/benchmarks/gpu_check.sh checks it there).
Here the packing is checked against `jax.experimental.rnn.lstm_ref`, JAX's own reference of
cuDNN's LSTM, which runs anywhere; and `implementation="cudnn"` runs under
`cudnn.emulate()`: the same packing and the same call, with `lstm_ref` as the kernel.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx as fnnx
from jax.experimental import rnn

from flaxlstm import LSTM, StackedLSTM, nnx
from flaxlstm.nn import convert
from flaxlstm.nn.kernels import cudnn, registry

B, T, D = 3, 7, 5
LENGTHS = jnp.array([7, 4, 1], jnp.int32)  # lstm_ref needs lengths >= 1
RTOL, ATOL = 2e-5, 2e-5


def _x(seed=1):
  return jax.random.normal(jax.random.key(seed), (B, T, D))


def _close(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)


def _random_params(model, x, seed=0, **kw):
  """`model`'s parameter tree with every entry random (biases included), so no term hides
  behind a zero (only the shapes are traced: nothing runs)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, **kw)["params"])
  leaves, tree = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
    tree, [0.4 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)]
  )


def _stack_params(widths, bidirectional, x):
  return _random_params(StackedLSTM(widths, bidirectional=bidirectional), x)


@pytest.fixture
def kernel_calls(monkeypatch):
  """The `num_layers` of every emulated cuDNN call traced (one entry per call)."""
  calls: list[int] = []
  reference = cudnn._reference

  def counting(*args):
    calls.append(args[7])
    return reference(*args)

  monkeypatch.setattr(cudnn, "_reference", counting)
  monkeypatch.setattr(registry, "_warned", set())
  return calls


STACKS = pytest.mark.parametrize(
  "widths, bidirectional",
  [((6,), False), ((6, 6), False), ((6, 6), True)],
  ids=["one_layer", "two_layers", "bidirectional"],
)


# ---- the packing ------------------------------------------------------------------------------
@STACKS
def test_packing_is_jax_rnn_layout(widths, bidirectional):
  x = _x()
  params = _stack_params(widths, bidirectional, x)
  forget_bias = 1.0
  w = convert.to_cudnn(params, bidirectional=bidirectional, forget_bias=forget_bias)
  h, n = widths[0], len(widths)
  assert w.shape == (rnn.get_num_params_in_lstm(D, h, n, bidirectional),)
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, D, h, n, bidirectional)
  cells = convert._pseudo_layers(params, bidirectional)
  for k, c in enumerate(cells):
    np.testing.assert_array_equal(w_ih[k], c["input_kernel"].T)
    np.testing.assert_array_equal(w_hh[k], c["recurrent_kernel"].T)
    expected = np.asarray(c["bias"]).copy()
    expected[h : 2 * h] += forget_bias  # cuDNN has no forget bias: it goes into b_ih
    np.testing.assert_allclose(b_ih[k], expected, rtol=1e-7)
    np.testing.assert_array_equal(b_hh[k], 0)


@STACKS
def test_unpacking_inverts_packing(widths, bidirectional):
  params = _stack_params(widths, bidirectional, _x())
  w = convert.to_cudnn(params, bidirectional=bidirectional, forget_bias=0.5)
  back = convert.from_cudnn(
    w,
    input_size=D,
    hidden_size=widths[0],
    num_layers=len(widths),
    bidirectional=bidirectional,
    forget_bias=0.5,
  )
  _close(back, params)


def _ref(w, x, lengths, h, n, bidirectional, h0=None, c0=None):
  dirs = 2 if bidirectional else 1
  zeros = jnp.zeros((dirs * n, x.shape[0], h))
  h0, c0 = (zeros if h0 is None else h0), (zeros if c0 is None else c0)
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, D, h, n, bidirectional)
  return rnn.lstm_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, D, h, n, 0.0, bidirectional)


@STACKS
def test_stack_equals_lstm_ref_on_packed_weights_forward_and_gradients(widths, bidirectional):
  """Our StackedLSTM (the fused path) and cuDNN's reference LSTM on the packed weights."""
  x = _x()
  h, n = widths[0], len(widths)
  params = _stack_params(widths, bidirectional, x)
  model = StackedLSTM(widths, bidirectional=bidirectional, return_carry=True)

  def ours(params, x):
    carries, y = model.apply({"params": params}, x, seq_lengths=LENGTHS)
    cells = [c for layer in carries for c in (layer if bidirectional else (layer,))]
    return y, jnp.stack([hh for _, hh in cells]), jnp.stack([cc for cc, _ in cells])

  def theirs(params, x):
    w = convert.to_cudnn(params, bidirectional=bidirectional)
    return _ref(w, x, LENGTHS, h, n, bidirectional)

  probe = jax.random.normal(jax.random.key(7), (B, T, (1 + bidirectional) * h))

  def outputs_and_gradients(fn):
    def value(params, x):
      y, h_n, c_n = out = fn(params, x)
      return jnp.sum(y * probe) + jnp.sum(h_n**2) + jnp.sum(jnp.sin(c_n)), out

    return jax.jit(jax.value_and_grad(value, argnums=(0, 1), has_aux=True))(params, x)

  _close(outputs_and_gradients(ours), outputs_and_gradients(theirs))


def test_weights_from_cudnn_compute_what_cudnn_computes():
  """A cuDNN weight vector with both of its biases (as Keras or PyTorch train them) runs
  the same in our layers once converted."""
  x, h, n = _x(), 6, 2
  w = rnn.init_lstm_weight(jax.random.key(3), D, h, n, True)
  params = convert.from_cudnn(w, input_size=D, hidden_size=h, num_layers=n, bidirectional=True)
  y = StackedLSTM((h,) * n, bidirectional=True).apply({"params": params}, x, seq_lengths=LENGTHS)
  _close(y, _ref(w, x, LENGTHS, h, n, True)[0])


def test_packing_refuses_what_cudnn_cannot_hold():
  x = _x()
  with pytest.raises(ValueError, match="one hidden size"):
    convert.to_cudnn(_stack_params((6, 4), False, x))
  with pytest.raises(ValueError, match="hold 3 values"):
    convert.from_cudnn(np.zeros(3), input_size=D, hidden_size=6)


# ---- implementation="cudnn" ---------------------------------------------------------------
@pytest.mark.parametrize(
  "widths, bidirectional, return_sequences, calls",
  [
    ((6, 6), False, True, [2]),
    ((6, 6), True, False, [2]),
    ((6, 4), False, False, [1, 1]),
    ((6, 4), True, True, [1] * 4),
  ],
  ids=["one_call", "one_call_bidirectional", "call_per_layer", "call_per_direction"],
)
def test_cudnn_stack_equals_fused(widths, bidirectional, return_sequences, calls, kernel_calls):
  x = _x()
  lengths = jnp.array([7, 3, 0], jnp.int32)  # an empty sequence keeps its initial carry
  kw = dict(bidirectional=bidirectional, return_carry=True, return_sequences=return_sequences)
  fused, on_cudnn = StackedLSTM(widths, **kw), StackedLSTM(widths, implementation="cudnn", **kw)
  params = _stack_params(widths, bidirectional, x)
  with cudnn.emulate():  # the same parameter tree on either path
    assert jax.tree.structure(_random_params(on_cudnn, x)) == jax.tree.structure(params)

  def outputs_and_gradients(model):
    def value(params, x):
      carries, y = model.apply({"params": params}, x, seq_lengths=lengths)
      loss = jnp.sum(jnp.sin(y)) + sum(jnp.sum(a**2) for a in jax.tree.leaves(carries))
      return loss, (carries, y)

    return jax.jit(jax.value_and_grad(value, argnums=(0, 1), has_aux=True))(params, x)

  want = outputs_and_gradients(fused)
  kernel_calls.clear()
  with cudnn.emulate():
    got = outputs_and_gradients(on_cudnn)
  _close(got, want)
  assert kernel_calls[: len(calls)] == calls  # one call for the stack where it can be


def test_cudnn_layer_with_initial_carry_and_reverse(kernel_calls):
  x = _x()
  kw = dict(return_carry=True, reverse=True)
  params = _random_params(LSTM(6, **kw), x)
  carry = (
    jax.random.normal(jax.random.key(4), (B, 6)),
    jax.random.normal(jax.random.key(5), (B, 6)),
  )

  def run(model):
    apply = jax.jit(
      lambda p: model.apply({"params": p}, x, initial_carry=carry, seq_lengths=LENGTHS)
    )
    return apply(params)

  want = run(LSTM(6, **kw))
  with cudnn.emulate():
    got = run(LSTM(6, implementation="cudnn", **kw))
  _close(got, want)
  assert kernel_calls == [1]


def test_input_dropout_runs_on_cudnn_layer_by_layer(kernel_calls):
  """Input dropout is a mask on each layer's inputs, drawn from our seed: each layer makes
  its own cuDNN call, with the same masks as the fused path."""
  x = _x()
  kw = dict(dropout=0.3, inter_layer_dropout=0.2)
  params = _stack_params((6, 6), False, x)
  rngs = {"dropout": jax.random.key(9)}

  def run(model):
    return jax.jit(lambda p: model.apply({"params": p}, x, deterministic=False, rngs=rngs))(params)

  want = run(StackedLSTM((6, 6), **kw))
  with cudnn.emulate():
    got = run(StackedLSTM((6, 6), implementation="cudnn", **kw))
  _close(got, want)
  assert kernel_calls == [1, 1]


@pytest.mark.parametrize(
  "options, reason",
  [
    (dict(dtype=jnp.bfloat16), "compute dtype bfloat16"),
    (dict(recurrent_dropout=0.25), "recurrent dropout"),
    (dict(proj_features=3), "proj_features"),
    (dict(layer_norm=True), "layer_norm"),
    (dict(remat=True), "remat"),
  ],
  ids=["bf16", "recurrent_dropout", "lstmp", "layer_norm", "remat"],
)
def test_unsupported_options_fall_back_with_one_warning(options, reason, kernel_calls, caplog):
  x = _x()
  rngs = {"dropout": jax.random.key(2)}
  auto = StackedLSTM((6, 6), **options)
  params = _random_params(auto, x, deterministic=True)

  def run(model):
    return jax.jit(lambda p: model.apply({"params": p}, x, deterministic=False, rngs=rngs))(params)

  want = run(auto)
  with cudnn.emulate(), caplog.at_level(logging.WARNING, logger="flaxlstm.nn.kernels.registry"):
    got = run(StackedLSTM((6, 6), implementation="cudnn", **options))
    run(StackedLSTM((6, 6), implementation="cudnn", **options))  # no second warning
  _close(got, want)
  assert kernel_calls == []
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 1 and reason in lines[0] and "\n" not in lines[0], lines
  assert lines[0].startswith("implementation='cudnn' falls back to the")


def test_without_a_gpu_cudnn_falls_back_to_fused(kernel_calls, caplog):
  x = _x()
  params = _stack_params((6, 6), True, x)
  want = StackedLSTM((6, 6), bidirectional=True).apply({"params": params}, x)
  with caplog.at_level(logging.WARNING, logger="flaxlstm.nn.kernels.registry"):
    got = StackedLSTM((6, 6), bidirectional=True, implementation="cudnn").apply(
      {"params": params}, x
    )
  np.testing.assert_array_equal(got, want)  # the very same path
  assert [r.getMessage() for r in caplog.records] == [
    "implementation='cudnn' falls back to the fused path: no CUDA GPU here"
  ]


def test_nnx_layers_take_the_same_option(kernel_calls):
  x = _x()
  kw = dict(rngs=fnnx.Rngs(0), bidirectional=True, return_sequences=False)
  fused = nnx.StackedLSTM(D, (6, 4), **kw)
  on_cudnn = nnx.StackedLSTM(D, (6, 4), implementation="cudnn", **kw)
  fnnx.update(on_cudnn, fnnx.state(fused))
  want = jax.jit(lambda x: fused(x, seq_lengths=LENGTHS))(x)
  with cudnn.emulate():
    got = jax.jit(lambda x: on_cudnn(x, seq_lengths=LENGTHS))(x)
  _close(got, want)
  assert kernel_calls == [1] * 4
