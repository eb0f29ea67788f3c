"""Tests for `flaxlstm.nn.layers` (and the scan in `flaxlstm.nn.recurrence`): `LSTM`,
`Bidirectional`, `StackedLSTM`, `flip_sequences`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import errors as flax_errors
from flax import linen as nn

from flaxlstm import (
  LSTM,
  Bidirectional,
  LSTMCarry,
  LSTMCell,
  StackedLSTM,
  StackedRNN,
  flip_sequences,
)
from flaxlstm import RNN as flaxlstm_RNN

B, T, D, H, P = 3, 6, 4, 5, 2
RTOL, ATOL = 1e-5, 1e-5  # float32
LENGTHS = np.array([6, 3, 1], np.int32)  # one full, one half, one single-step sequence


def _rand(seed, *shape, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _close(a, b, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(
    np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol
  )


def _structure(tree):
  return jax.tree.map(lambda a: (a.shape, a.dtype), tree)


def _dot(g, d):
  """Sum of elementwise products over two trees: a directional derivative."""
  return sum(
    np.sum(np.asarray(a, np.float64) * b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(d))
  )


from jax_helpers import np_tree, param_shapes, rand_params, run  # noqa: E402


@pytest.fixture(scope="module")
def x():
  return _rand(0, B, T, D)


@pytest.fixture(scope="module")
def carry0():
  return _rand(1, B, H, scale=0.5), _rand(2, B, H, scale=0.5)


@pytest.fixture(scope="module")
def params(x):
  return rand_params(LSTM(H), x)


# ---- LSTM == nn.RNN(LSTMCell) ------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"proj_features": P, "layer_norm": True, "forget_bias": 0.0}])
def test_param_tree_and_outputs_equal_flax_rnn(x, kw):
  ours = LSTM(H, **kw)
  theirs = nn.RNN(LSTMCell(H, **kw))
  s_ours, s_theirs = param_shapes(ours, x), param_shapes(theirs, x)
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_theirs)
  assert _structure(s_ours) == _structure(s_theirs)
  assert list(s_ours["params"]) == ["cell"]
  p = rand_params(ours, x)
  y = run(ours, p, x)
  assert y.shape == (B, T, kw.get("proj_features", H))
  _close(y, run(theirs, p, x))


@pytest.mark.parametrize("reverse", [False, True])
def test_equals_flax_rnn_variants(x, carry0, params, reverse):
  rnn = nn.RNN(LSTMCell(H), return_carry=True, reverse=reverse, keep_order=True)
  (rc, rh), rys = run(rnn, params, x, initial_carry=carry0)
  assert not np.allclose(rys[:, 0], rys[:, -1])

  # Full sequences, from a given initial carry, with the carry returned.
  (c, h), ys = run(LSTM(H, reverse=reverse, return_carry=True), params, x, initial_carry=carry0)
  _close(ys, rys)
  _close(c, rc)
  _close(h, rh)
  # `reverse` given at call time instead.
  _close(run(LSTM(H), params, x, initial_carry=carry0, reverse=reverse), rys)
  # Only the last output: the last step processed (t=T-1 forward, t=0 reversed).
  last = run(LSTM(H, reverse=reverse, return_sequences=False), params, x, initial_carry=carry0)
  assert last.shape == (B, H)
  _close(last, rys[:, 0] if reverse else rys[:, -1])
  _close(last, rh)
  # The default initial carry is zeros.
  ys0 = run(LSTM(H, reverse=reverse), params, x)
  zeros = jax.tree.map(np.zeros_like, carry0)
  _close(run(LSTM(H), params, x, initial_carry=zeros, reverse=reverse), ys0)
  assert not np.allclose(ys0, rys)  # the initial carry matters


@pytest.mark.parametrize("kw", [{}, {"proj_features": P}])  # fused and autodiff paths
def test_numpy_params_are_accepted(x, kw):
  """Parameters held as NumPy arrays (`jax.device_get(params)`, a restored checkpoint) must
  work like `jax.Array`s, eagerly and as constants closed over by `jit`."""
  model = LSTM(H, **kw)
  params = rand_params(model, x)
  expected = run(model, params, x)
  np_params = jax.device_get(params)
  assert isinstance(jax.tree.leaves(np_params)[0], np.ndarray)
  _close(model.apply(np_params, x), expected)
  _close(jax.jit(lambda v: model.apply(np_params, v))(x), expected)


def test_unroll_does_not_change_results(x, params):
  _close(run(LSTM(H, unroll=4), params, x), run(LSTM(H), params, x))


def test_rejects_inputs_without_time_axis(params):
  with pytest.raises(ValueError, match="time"):
    LSTM(H).apply(params, jnp.ones((D,)))


# ---- seq_lengths -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def padded_x(x):
  # Large garbage past each sequence's end: it must not leak into anything.
  t = np.arange(T)[None, :, None]
  return np.where(t < LENGTHS[:, None, None], x, np.float32(1e3))


@pytest.mark.parametrize("reverse", [False, True])
def test_seq_lengths_equal_unpadded_runs(padded_x, carry0, params, reverse):
  model = LSTM(H, reverse=reverse, return_carry=True)
  lengths = LENGTHS
  (c, h), ys = run(model, params, padded_x, seq_lengths=lengths, initial_carry=carry0)
  last = run(
    LSTM(H, reverse=reverse, return_sequences=False),
    params,
    padded_x,
    seq_lengths=lengths,
    initial_carry=carry0,
  )
  assert np.all(np.isfinite(ys))
  for b, n in enumerate(LENGTHS):
    one_carry = (carry0[0][b : b + 1], carry0[1][b : b + 1])
    (c1, h1), y1 = run(model, params, padded_x[b : b + 1, :n], initial_carry=one_carry)
    _close(ys[b, :n], y1[0])
    np.testing.assert_array_equal(ys[b, n:], 0.0)  # exactly zero past the end
    _close(c[b], c1[0])
    _close(h[b], h1[0])
    _close(last[b], h1[0])
    _close(last[b], y1[0, 0] if reverse else y1[0, -1])


@pytest.mark.parametrize("lengths,reverse", [(None, False), (LENGTHS, True)])
def test_outputs_and_gradients_match_flax_rnn(padded_x, carry0, params, lengths, reverse):
  """Forward values and gradients (w.r.t. params, inputs and initial carry) equal plain
  autodiff through `nn.RNN(LSTMCell)`; with `seq_lengths` only outputs within length count."""
  valid = (
    np.ones((B, T, 1), bool)
    if lengths is None
    else (np.arange(T)[None, :] < lengths[:, None])[..., None]
  )
  w, wc = _rand(12, B, T, H), _rand(13, B, H)
  rnn = nn.RNN(LSTMCell(H), return_carry=True, reverse=reverse, keep_order=True)
  ours = LSTM(H, reverse=reverse, return_carry=True)

  def loss(model, p, v, carry):
    (c, h), ys = model.apply(p, v, seq_lengths=lengths, initial_carry=carry)
    return jnp.sum(jnp.where(valid, ys, 0.0) * w) + jnp.sum(c * wc) + jnp.sum(h**2), ys

  vg = jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True), static_argnums=0)
  (l_ref, ys_ref), g_ref = np_tree(vg(rnn, params, padded_x, carry0))
  (l_ours, ys), g = np_tree(vg(ours, params, padded_x, carry0))
  _close(np.where(valid, ys, 0), np.where(valid, ys_ref, 0))
  _close(l_ours, l_ref)
  assert _structure(g) == _structure(g_ref)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    assert np.max(np.abs(b)) > 0
    _close(a, b, rtol=1e-4, atol=1e-5)


def test_seq_lengths_padding_gets_no_gradient(x, padded_x, params):
  valid = np.arange(T)[None, :, None] < LENGTHS[:, None, None]
  zero_padded = np.where(valid, x, np.float32(0.0))
  # Both directions in one program: a Bidirectional pair with carries.
  model = Bidirectional(LSTM(H, return_carry=True), LSTM(H, return_carry=True))
  both = {"params": {"forward_rnn": params["params"], "backward_rnn": params["params"]}}

  def loss(p, v):
    ((cf, hf), (cb, hb)), ys = model.apply(p, v, seq_lengths=LENGTHS)
    return (
      jnp.sum(ys * jnp.arange(1, 2 * H + 1))
      + jnp.sum(cf)
      + jnp.sum(hf**2)
      + jnp.sum(cb**2)
      + jnp.sum(hb)
    )

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  gp, gx = np_tree(grad(both, padded_x))
  gp0, gx0 = np_tree(grad(both, zero_padded))
  np.testing.assert_array_equal(np.where(valid, 0.0, gx), 0.0)  # none for padded steps
  assert np.all(np.abs(gx[valid[..., 0]]) > 0)
  _close(gx, gx0)
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gp0)):  # padding values don't matter
    assert np.all(np.isfinite(a))
    _close(a, b)


def test_zero_length_sequence_keeps_initial_carry(x, carry0, params):
  lengths = np.array([T, 0, 2])
  (c, h), ys = run(LSTM(H, return_carry=True), params, x, seq_lengths=lengths, initial_carry=carry0)
  np.testing.assert_array_equal(ys[1], 0.0)
  np.testing.assert_array_equal(c[1], carry0[0][1])
  np.testing.assert_array_equal(h[1], carry0[1][1])


def test_flip_sequences():
  flip = jax.jit(flip_sequences)
  xs = np.arange(2 * 5, dtype=np.float32).reshape(2, 5, 1)
  np.testing.assert_array_equal(flip(xs, None), xs[:, ::-1])
  lengths = np.array([5, 3])
  np.testing.assert_array_equal(flip(xs, lengths)[..., 0], [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]])
  np.testing.assert_array_equal(flip(flip(xs, lengths), lengths), xs)


# ---- dropout -----------------------------------------------------------------------------------
DD, BD, RATE = 8, 6, 0.5  # more input features and rows so that masks are informative


@pytest.fixture(scope="module")
def drop_setup():
  xd = _rand(3, BD, T, DD)
  carry = _rand(4, BD, H, scale=0.5), _rand(5, BD, H, scale=0.5)
  p = rand_params(LSTM(H), xd, seed=1)
  return xd, carry, p


def _check_mask_set(dropped):
  """Asserts a (rows, features) bool 'dropped' pattern is a sensible set of dropout masks."""
  dropped = np.asarray(dropped)
  assert 0 < dropped.sum() < dropped.size  # some dropped, some kept
  assert len({tuple(r) for r in dropped}) > 1  # differs across sequences


def test_input_dropout_mask_constant_over_time_and_per_sequence(drop_setup, np_ref):
  xd, _, p = drop_setup
  model = LSTM(H, dropout=RATE)
  rngs = {"dropout": jax.random.key(7)}
  w = _rand(6, BD, T, H)
  loss = lambda v: jnp.sum(model.apply(p, v, deterministic=False, rngs=rngs) * w)
  g = jax.jit(jax.grad(loss))(xd)
  zero = np.asarray(g) == 0.0  # a dropped feature gets no gradient at any step
  np.testing.assert_array_equal(zero.all(axis=1), zero.any(axis=1))  # same set at every t
  dropped = zero[:, 0, :]
  _check_mask_set(dropped)
  # The output is exactly the dropout-free LSTM of the masked, rescaled input.
  keep = np.where(dropped, 0.0, 1.0 / (1.0 - RATE)).astype(np.float32)
  ys = run(model, p, xd, deterministic=False, rngs=rngs)
  _close(ys, run(LSTM(H), p, xd * keep[:, None, :]))
  ys_ref, _ = np_ref.layer(xd, *np_ref.fused_to_torch(p["params"]["cell"], 1.0), x_mask=keep)
  _close(ys, ys_ref)


def test_recurrent_dropout_mask_constant_over_time(drop_setup, np_ref):
  xd, carry, p = drop_setup
  model = LSTM(H, recurrent_dropout=RATE)
  rngs = {"dropout": jax.random.key(8)}
  w = _rand(9, BD, T, H)

  def loss(params, h0):
    ys = model.apply(params, xd, initial_carry=(carry[0], h0), deterministic=False, rngs=rngs)
    return jnp.sum(ys * w)

  g_p, g_h0 = np_tree(jax.jit(jax.grad(loss, argnums=(0, 1)))(p, carry[1]))
  # h0 only reaches the output through the first step's masked feedback h0 * mask.
  dropped = g_h0 == 0.0
  _check_mask_set(dropped)
  # The gradients (with the mask held fixed) agree with central finite differences.
  jloss, eps = jax.jit(loss), 1e-2
  d_p = jax.tree.map(lambda a: _rand(a.size + 1, *a.shape), p)
  d_h = _rand(98, *carry[1].shape)
  shifted = lambda s: jax.tree.map(lambda a, d: np.asarray(a) + s * eps * d, p, d_p)
  fd_p = (jloss(shifted(1.0), carry[1]) - jloss(shifted(-1.0), carry[1])) / (2 * eps)
  fd_h = (jloss(p, carry[1] + eps * d_h) - jloss(p, carry[1] - eps * d_h)) / (2 * eps)
  np.testing.assert_allclose(fd_p, _dot(g_p, d_p), rtol=2e-2)
  np.testing.assert_allclose(fd_h, _dot(g_h0, d_h), rtol=2e-2)
  h_mask = np.where(dropped, 0.0, 1.0 / (1.0 - RATE))
  ys = run(model, p, xd, initial_carry=carry, deterministic=False, rngs=rngs)
  # A NumPy LSTM using this one mask at *every* step reproduces the whole sequence.
  ys_ref, _ = np_ref.layer(
    xd, *np_ref.fused_to_torch(p["params"]["cell"], 1.0), c0=carry[0], h0=carry[1], h_mask=h_mask
  )
  _close(ys, ys_ref)
  assert not np.allclose(ys, run(LSTM(H), p, xd, initial_carry=carry), atol=1e-3)


def test_dropout_deterministic_and_rng_streams(drop_setup):
  xd, _, p = drop_setup
  kw = dict(dropout=0.3, recurrent_dropout=0.3)
  model = LSTM(H, **kw)
  plain = run(LSTM(H), p, xd)
  _close(run(model, p, xd, deterministic=True), plain, rtol=0, atol=0)
  _close(run(LSTM(H, deterministic=True, **kw), p, xd), plain, rtol=0, atol=0)

  def sample(dropout_seed, params_seed=0, m=model, **call_kw):
    return run(
      m,
      p,
      xd,
      rngs={"dropout": jax.random.key(dropout_seed), "params": jax.random.key(params_seed)},
      **call_kw,
    )

  a = sample(1, deterministic=False)
  assert not np.allclose(a, plain, atol=1e-3)
  np.testing.assert_array_equal(sample(1, deterministic=False), a)  # same rng => same
  # Other RNG streams are not used.
  np.testing.assert_array_equal(sample(1, params_seed=5, deterministic=False), a)
  assert not np.allclose(sample(2, deterministic=False), a, atol=1e-3)  # different rng


def test_dropout_requires_deterministic(drop_setup):
  xd, _, p = drop_setup
  for kw in ({"dropout": 0.2}, {"recurrent_dropout": 0.2}):
    with pytest.raises(ValueError, match="deterministic"):
      LSTM(H, **kw).apply(p, xd)
  with pytest.raises(ValueError, match="deterministic"):
    StackedLSTM(features=(H,), inter_layer_dropout=0.2).apply(
      {"params": {"lstm_0": p["params"]}}, xd
    )
  with pytest.raises(flax_errors.InvalidRngError):
    LSTM(H, dropout=0.2).apply(p, xd, deterministic=False)  # no 'dropout' rng at all


# ---- StackedLSTM / Bidirectional ---------------------------------------------------------------
STACK = (6, 3)


@pytest.fixture(scope="module")
def stack_params(x):
  return rand_params(StackedLSTM(features=STACK), x, seed=2)


def test_stacked_layer_sizes_and_chaining(x, stack_params):
  shapes = jax.tree.map(lambda a: a.shape, stack_params["params"])
  assert shapes == {
    "lstm_0": {
      "cell": {"input_kernel": (D, 4 * 6), "recurrent_kernel": (6, 4 * 6), "bias": (4 * 6,)}
    },
    "lstm_1": {
      "cell": {"input_kernel": (6, 4 * 3), "recurrent_kernel": (3, 4 * 3), "bias": (4 * 3,)}
    },
  }
  ys = run(StackedLSTM(features=STACK), stack_params, x)
  assert ys.shape == (B, T, 3)
  sp = stack_params["params"]
  y0 = run(LSTM(6), {"params": sp["lstm_0"]}, x)
  y1 = run(LSTM(3), {"params": sp["lstm_1"]}, y0)
  _close(ys, y1)
  last = run(StackedLSTM(features=STACK, return_sequences=False), stack_params, x)
  assert last.shape == (B, 3)
  _close(last, y1[:, -1])


def test_stacked_rejects_empty():
  with pytest.raises(ValueError):
    StackedLSTM(features=()).init(jax.random.key(0), jnp.ones((1, 2, D)))


def test_stacked_inter_layer_dropout(x, stack_params):
  rate = 0.5
  model = StackedLSTM(features=STACK, inter_layer_dropout=rate)
  plain = run(StackedLSTM(features=STACK), stack_params, x)
  _close(run(model, stack_params, x, deterministic=True), plain, rtol=0, atol=0)
  ys, state = run(
    model,
    stack_params,
    x,
    deterministic=False,
    rngs={"dropout": jax.random.key(3)},
    capture_intermediates=True,
  )
  inter = state["intermediates"]
  y0 = inter["lstm_0"]["__call__"][0]
  dropped = inter["Dropout_0"]["__call__"][0]
  zero = np.asarray(dropped) == 0.0
  assert 0.2 < zero.mean() < 0.8
  _close(np.where(zero, 0.0, dropped), np.where(zero, 0.0, y0 / (1 - rate)))
  # Ordinary (not variational) dropout: the zeroed units change over time.
  assert np.any(zero.all(axis=1) != zero.any(axis=1))
  # The top layer sees exactly the dropped intermediate; no other dropout is applied.
  _close(ys, run(LSTM(3), {"params": stack_params["params"]["lstm_1"]}, dropped))
  assert not np.allclose(ys, plain, atol=1e-3)


def _manual_bidirectional(pf, pb, inputs, lengths=None, h=H):
  """Forward LSTM, and a forward LSTM over each time-reversed valid prefix (re-reversed)."""
  fwd = run(LSTM(h), {"params": {"cell": pf}}, inputs, seq_lengths=lengths)
  n_steps = inputs.shape[1]
  lens = [n_steps] * inputs.shape[0] if lengths is None else np.asarray(lengths)
  rev = np.array(inputs)
  for b, n in enumerate(lens):
    rev[b, :n] = rev[b, :n][::-1]
  bwd = np.array(run(LSTM(h), {"params": {"cell": pb}}, rev, seq_lengths=lengths))
  for b, n in enumerate(lens):
    bwd[b, :n] = bwd[b, :n][::-1]
  return np.asarray(fwd), bwd


def test_stacked_bidirectional(x):
  model = StackedLSTM(features=STACK, bidirectional=True)
  p = rand_params(model, x, seed=4)
  sp = p["params"]
  assert set(sp) == {"bilstm_0", "bilstm_1"}
  assert set(sp["bilstm_0"]) == {"forward_rnn", "backward_rnn"}
  assert sp["bilstm_1"]["forward_rnn"]["cell"]["input_kernel"].shape == (2 * 6, 4 * 3)
  ys = run(model, p, x)
  assert ys.shape == (B, T, 2 * 3)
  h = x
  for k, width in enumerate(STACK):
    f, b = _manual_bidirectional(
      sp[f"bilstm_{k}"]["forward_rnn"]["cell"],
      sp[f"bilstm_{k}"]["backward_rnn"]["cell"],
      h,
      h=width,
    )
    h = np.concatenate([f, b], -1)
  _close(ys, h)
  assert not np.allclose(ys[..., :3], ys[..., 3:])


def test_stacked_bidirectional_with_seq_lengths(padded_x):
  model = StackedLSTM(features=(H,), bidirectional=True)
  p = rand_params(model, padded_x, seed=5)
  lengths = LENGTHS
  ys = run(model, p, padded_x, seq_lengths=lengths)
  pp = p["params"]["bilstm_0"]
  f, b = _manual_bidirectional(
    pp["forward_rnn"]["cell"], pp["backward_rnn"]["cell"], padded_x, lengths
  )
  _close(ys, np.concatenate([f, b], -1))
  for row, n in enumerate(LENGTHS):
    np.testing.assert_array_equal(ys[row, n:], 0.0)
  # return_sequences=False: forward's own last output next to backward's output at t=0.
  last = run(
    StackedLSTM(features=(H,), bidirectional=True, return_sequences=False),
    p,
    padded_x,
    seq_lengths=lengths,
  )
  for row, n in enumerate(LENGTHS):
    _close(last[row], np.concatenate([f[row, n - 1], b[row, 0]]))


def test_bidirectional_alone(x, carry0):
  model = Bidirectional(LSTM(H), LSTM(H))
  p = rand_params(model, x, seed=6)
  assert set(p["params"]) == {"forward_rnn", "backward_rnn"}
  pf, pb = p["params"]["forward_rnn"], p["params"]["backward_rnn"]
  ys = run(model, p, x)
  assert ys.shape == (B, T, 2 * H)
  f, b = _manual_bidirectional(pf["cell"], pb["cell"], x)
  _close(ys, np.concatenate([f, b], -1))
  # The backward half is exactly an LSTM(reverse=True).
  _close(ys[..., H:], run(LSTM(H, reverse=True), {"params": pb}, x))

  summed = run(Bidirectional(LSTM(H), LSTM(H), merge_fn=jnp.add), p, x)
  _close(summed, f + b)

  last = run(Bidirectional(LSTM(H, return_sequences=False), LSTM(H, return_sequences=False)), p, x)
  _close(last, np.concatenate([f[:, -1], b[:, 0]], -1))

  init_b = jax.tree.map(lambda a: -a, carry0)
  (cf, cb), merged = run(
    Bidirectional(LSTM(H, return_carry=True), LSTM(H, return_carry=True)),
    p,
    x,
    initial_carry=(carry0, init_b),
  )
  cf_ref, f2 = run(LSTM(H, return_carry=True), {"params": pf}, x, initial_carry=carry0)
  cb_ref, b2 = run(
    LSTM(H, return_carry=True, reverse=True), {"params": pb}, x, initial_carry=init_b
  )
  _close(merged, np.concatenate([f2, b2], -1))
  for a, r in zip(cf + cb, cf_ref + cb_ref):
    _close(a, r)


# ---- mixed precision ---------------------------------------------------------------------------
def test_bf16_close_to_f32_with_f32_params_and_state(x, params):
  model = LSTM(H, dtype=jnp.bfloat16, return_carry=True)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(param_shapes(model, x)))
  (c, h), ys = run(model, params, x)
  assert ys.dtype == jnp.bfloat16 and h.dtype == jnp.bfloat16
  assert c.dtype == jnp.float32
  (c32, _), ys32 = run(LSTM(H, return_carry=True), params, x)
  _close(ys.astype(jnp.float32), ys32, rtol=0, atol=3e-2)
  _close(c, c32, rtol=0, atol=3e-2)
  # Also with a float32 initial carry and sequence lengths.
  (c2, _), _ = run(model, params, x, initial_carry=(c32, ys32[:, -1]), seq_lengths=LENGTHS)
  assert c2.dtype == jnp.float32


def test_bf16_stacked_bidirectional_params_stay_f32(x):
  model = StackedLSTM(features=(H, H), bidirectional=True, dtype=jnp.bfloat16)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(param_shapes(model, x)))
  p = rand_params(model, x)
  ys = run(model, p, x)
  ys32 = run(StackedLSTM(features=(H, H), bidirectional=True), p, x)
  assert ys.dtype == jnp.bfloat16
  _close(ys.astype(jnp.float32), ys32, rtol=0, atol=3e-2)


# ---- transformations ---------------------------------------------------------------------------
_W = _rand(11, B, T, H)


def _loss(p, inputs):
  return jnp.sum(LSTM(H).apply(p, inputs) * _W)


_grad = jax.jit(jax.grad(_loss, argnums=(0, 1)))


def test_jit_and_grad(x, params):
  _close(jax.jit(LSTM(H).apply)(params, x), LSTM(H).apply(params, x))  # jit == eager
  gp, gx = np_tree(_grad(params, x))
  assert _structure(gp) == _structure(params)
  for a in jax.tree.leaves((gp, gx)):
    assert np.all(np.isfinite(a))
    assert np.max(np.abs(a)) > 0
  # Directional finite differences (central, float32) agree with the gradient.
  jloss = jax.jit(_loss)
  eps = 1e-2
  d_p = jax.tree.map(lambda a: _rand(a.size, *a.shape), params)
  d_x = _rand(99, *x.shape)
  shifted = lambda s: jax.tree.map(lambda a, d: np.asarray(a) + s * eps * d, params, d_p)
  fd_p = (jloss(shifted(1.0), x) - jloss(shifted(-1.0), x)) / (2 * eps)
  fd_x = (jloss(params, x + eps * d_x) - jloss(params, x - eps * d_x)) / (2 * eps)
  np.testing.assert_allclose(fd_p, _dot(gp, d_p), rtol=2e-2)
  np.testing.assert_allclose(fd_x, _dot(gx, d_x), rtol=2e-2)


def test_vmap_over_extra_axis_and_over_params(x, params):
  model = LSTM(H)
  xs = np.stack([x, 2.0 * x, -x])
  out = np.asarray(jax.jit(jax.vmap(lambda v: model.apply(params, v)))(xs))
  for k in range(3):
    _close(out[k], run(model, params, xs[k]))
  # An ensemble: vmap over stacked parameters, and vmap of grad.
  ps = [params, jax.tree.map(lambda a: 0.5 * np.asarray(a), params)]
  stacked = jax.tree.map(lambda *a: np.stack(a), *ps)
  ens = np.asarray(jax.jit(jax.vmap(lambda p: model.apply(p, x)))(stacked))
  g = np_tree(jax.jit(jax.vmap(_grad, in_axes=(0, None)))(stacked, x))
  for k in range(2):
    _close(ens[k], run(model, ps[k], x))
    for a, b in zip(
      jax.tree.leaves(jax.tree.map(lambda a, k=k: a[k], g)), jax.tree.leaves(_grad(ps[k], x))
    ):
      assert np.all(np.isfinite(a))
      _close(a, b)


# ---- remat -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "t,lengths,reverse",
  [
    (10, None, False),  # T not a perfect square: 3 chunks of 4, the last one padded
    (7, [2, 7, 5], True),  # chunk padding on top of sequence lengths, reversed
  ],
)
def test_remat_matches_plain(t, lengths, reverse):
  xr = _rand(20 + t, B, t, D)
  seq = None if lengths is None else np.asarray(lengths)
  p = rand_params(LSTM(H), xr, seed=9)
  w = _rand(30, B, t, H)

  def value_and_grad(remat):
    model = LSTM(H, reverse=reverse, return_carry=True, remat=remat)

    def f(p, v):
      (c, h), ys = model.apply(p, v, seq_lengths=seq)
      return jnp.sum(ys * w) + jnp.sum(c**2) + jnp.sum(h), (ys, c, h)

    return np_tree(jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(p, xr))

  (l0, aux0), g0 = value_and_grad(False)
  (l1, aux1), g1 = value_and_grad(True)
  _close(l1, l0)
  for a, b in zip(jax.tree.leaves((aux1, g1)), jax.tree.leaves((aux0, g0))):
    assert np.all(np.isfinite(a))
    _close(a, b)
  if lengths is not None:
    for row, n in enumerate(lengths):
      np.testing.assert_array_equal(aux1[0][row, n:], 0.0)


def _grad_temp_bytes(t, remat, return_sequences):
  model = LSTM(32, remat=remat, return_sequences=return_sequences)
  p = rand_params(LSTM(32), np.zeros((2, 2, 4), np.float32))

  def loss(p, v):
    return jnp.sum(model.apply(p, v) ** 2)

  compiled = (
    jax.jit(jax.grad(loss, argnums=(0, 1)))
    .lower(p, jax.ShapeDtypeStruct((2, t, 4), jnp.float32))
    .compile()
  )
  analysis = compiled.memory_analysis()
  if analysis is None:
    pytest.skip(f"memory_analysis() returns None on backend {jax.default_backend()}")
  return analysis.temp_size_in_bytes


def test_remat_bounds_activation_memory():
  """T=4096, B=2, H=32, D=4: remat keeps O(sqrt T) saved activations instead of O(T)."""
  plain = _grad_temp_bytes(4096, False, True)
  remat = _grad_temp_bytes(4096, True, True)
  # remat's temporaries here are mostly the O(T) outputs and their cotangents (2 MB); the
  # plain path reuses its saved-activation buffers in place, so the gap is ~3.8x, not more.
  assert remat < plain / 3, (remat, plain)
  # With all T outputs returned, the outputs and their cotangents are O(T) whatever one
  # does; with only the last output, nothing but the (tiny, D=4) input and its gradient is,
  # so remat's temporary memory must grow sublinearly with T.
  remat_last_4k = _grad_temp_bytes(4096, True, False)
  remat_last_1k = _grad_temp_bytes(1024, True, False)
  assert remat_last_4k < plain / 16, (remat_last_4k, plain)
  assert remat_last_4k / remat_last_1k < 3, (remat_last_4k, remat_last_1k)


# ---- arbitrary batch dims ----------------------------------------------------------------------
def test_leading_batch_dims_equal_flattened(params):
  x4 = _rand(40, 2, 3, T, D)
  flat = x4.reshape(6, T, D)
  lengths = np.array([[6, 2, 4], [1, 6, 3]], np.int32)
  carry = (_rand(41, 2, 3, H), _rand(42, 2, 3, H))
  flat_carry = jax.tree.map(lambda a: a.reshape(6, H), carry)
  model = LSTM(H, return_carry=True)

  (c, h), ys = run(model, params, x4)
  (cf, hf), ysf = run(model, params, flat)
  assert ys.shape == (2, 3, T, H) and c.shape == h.shape == (2, 3, H)
  _close(ys, ysf.reshape(2, 3, T, H))
  _close(c, cf.reshape(2, 3, H))
  _close(h, hf.reshape(2, 3, H))

  (c, h), ys = run(model, params, x4, seq_lengths=lengths, initial_carry=carry)
  (cf, hf), ysf = run(model, params, flat, seq_lengths=lengths.reshape(6), initial_carry=flat_carry)
  _close(ys, ysf.reshape(2, 3, T, H))
  _close(c, cf.reshape(2, 3, H))
  _close(h, hf.reshape(2, 3, H))
  last = run(LSTM(H, return_sequences=False, reverse=True), params, x4)
  assert last.shape == (2, 3, H)
  _close(last, run(LSTM(H, reverse=True), params, flat)[:, 0].reshape(2, 3, H))


# ---- RNN over any cell (the cell protocol, flaxlstm/nn/cells/base.py) ---------------------------
def _valid(a, lengths):
  """Zeroes the steps past each length (where nn.RNN computes on the padding)."""
  return np.where((np.arange(a.shape[1])[None, :] < lengths[:, None])[..., None], a, 0)


@pytest.mark.parametrize("cell", [nn.GRUCell(H), nn.LSTMCell(H)], ids=["gru", "flax_lstm"])
@pytest.mark.parametrize("reverse", [False, True])
def test_rnn_over_a_flax_cell_equals_flax_rnn(padded_x, cell, reverse):
  """`flaxlstm.RNN(cell)` is `nn.RNN(cell)`: same parameter tree, same outputs on every
  valid step, same final carry and same gradients, with ragged `seq_lengths`."""
  ours = flaxlstm_RNN(cell, return_carry=True, reverse=reverse, keep_order=True)
  theirs = nn.RNN(cell, return_carry=True, reverse=reverse, keep_order=True)
  assert jax.tree.structure(param_shapes(ours, padded_x)) == jax.tree.structure(
    param_shapes(theirs, padded_x)
  )
  p = rand_params(theirs, padded_x)
  weights = _rand(7, B, T, H)

  def loss(module, p, x):
    carry, ys = module.apply(p, x, seq_lengths=LENGTHS)
    ys = jnp.where((jnp.arange(T)[None, :] < LENGTHS[:, None])[..., None], ys, 0)
    return (ys * weights).sum() + sum(0.3 * c.sum() for c in jax.tree.leaves(carry)), (carry, ys)

  (l1, (c1, y1)), g1 = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(ours, p, padded_x)
  (l2, (c2, y2)), g2 = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(theirs, p, padded_x)
  _close(y1, _valid(np.asarray(y2), LENGTHS))
  _close(l1, l2)
  for a, b in zip(jax.tree.leaves(c1), jax.tree.leaves(c2)):
    _close(a, b)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    _close(a, b)
  # Past each sequence's end our outputs are zero (nn.RNN computes on the padding).
  assert np.all(np.asarray(y1)[2, 3:] == 0)


def test_rnn_over_a_flax_cell_has_dropout_remat_and_the_last_output(x):
  """What nn.RNN lacks, on a cell flaxlstm knows nothing about: variational dropout of the
  fed-back state, remat, and each sequence's own last output."""
  cell = nn.GRUCell(H)
  p = rand_params(nn.RNN(cell), x)
  plain = run(flaxlstm_RNN(cell), p, x)
  _close(run(flaxlstm_RNN(cell, remat=True), p, x), plain)
  dropped = flaxlstm_RNN(cell, recurrent_dropout=0.5)
  y = dropped.apply(p, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
  assert not np.allclose(y, plain)
  _close(dropped.apply(p, x, deterministic=True), plain)
  lengths = np.array([6, 3, 1], np.int32)
  last = run(flaxlstm_RNN(cell, return_sequences=False), p, x, seq_lengths=lengths)
  full = run(flaxlstm_RNN(cell), p, x, seq_lengths=lengths)
  _close(last, full[np.arange(B), lengths - 1])
  # time-major in and out, as nn.RNN's `time_major`
  tm = run(flaxlstm_RNN(cell, time_major=True), p, np.swapaxes(x, 0, 1))
  _close(np.swapaxes(tm, 0, 1), plain)


def test_rnn_of_the_lstm_cell_is_the_lstm_layer(x, carry0, params):
  """`RNN(LSTMCell(H))` runs the LSTM's fused loop: it equals `LSTM(H)`, and its carry is
  the cell's typed carry, read from a plain tuple."""
  rnn = flaxlstm_RNN(LSTMCell(H), return_carry=True, keep_order=True)
  carry, ys = rnn.apply(params, x, initial_carry=carry0, reverse=True)
  want_carry, want = LSTM(H, return_carry=True).apply(params, x, initial_carry=carry0, reverse=True)
  _close(ys, want)
  assert isinstance(carry, LSTMCarry) and carry._fields == ("c", "h")
  _close(carry.h, want_carry[1])


def test_rnn_refuses_a_kernel_the_cell_does_not_offer(x):
  with pytest.raises(ValueError, match="GRUCell offers no 'fused' kernel"):
    flaxlstm_RNN(nn.GRUCell(H), implementation="fused").init(jax.random.key(0), x)


def test_stacked_rnn_over_any_cell(x):
  stack = StackedRNN(lambda h: nn.GRUCell(h), features=(5, 4), return_carry=True)
  p = rand_params(stack, x)
  assert set(p["params"]) == {"rnn_0", "rnn_1"}
  carries, y = stack.apply(p, x)
  bottom = flaxlstm_RNN(nn.GRUCell(5), keep_order=True).apply({"params": p["params"]["rnn_0"]}, x)
  top = flaxlstm_RNN(nn.GRUCell(4)).apply({"params": p["params"]["rnn_1"]}, bottom)
  _close(y, top)
  assert [c.shape for c in carries] == [(B, 5), (B, 4)]
