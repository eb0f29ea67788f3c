"""Tests for `flaxlstm.nn.cells.lstm` and `flaxlstm.nn.convert`: the fused-gate `LSTMCell` and
the Flax/PyTorch converters."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from flaxlstm import LSTM, LSTMCell, StackedLSTM, from_flax_params, from_torch_lstm
from flaxlstm.nn.cells.lstm import GATES

B, D, H, P = 3, 4, 5, 2
RTOL, ATOL = 1e-5, 1e-6  # float32


def _rand(seed, *shape, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _shapes(tree):
  return jax.tree.map(lambda a: (a.shape, a.dtype), tree)


def _random_carry(seed, batch, hid, rec):
  return _rand(seed, *batch, hid), _rand(seed + 1, *batch, rec)


from jax_helpers import np_tree, param_shapes, rand_params, run  # noqa: E402


# ---- shapes and carry semantics ----------------------------------------------------------------
@pytest.mark.parametrize("batch", [(B,), (2, 3), ()])
@pytest.mark.parametrize("proj", [None, P])
def test_initialize_carry_shapes_and_dtypes(batch, proj):
  cell = LSTMCell(H, proj_features=proj)
  c, h = cell.initialize_carry(jax.random.key(0), batch + (D,))
  assert c.shape == batch + (H,)
  assert h.shape == batch + ((proj or H),)
  assert c.dtype == jnp.float32 and h.dtype == jnp.float32
  np.testing.assert_array_equal(c, 0.0)
  np.testing.assert_array_equal(h, 0.0)


def test_num_feature_axes_is_one():
  assert LSTMCell(H).num_feature_axes == 1
  assert isinstance(LSTMCell(H), nn.RNNCellBase)


@pytest.mark.parametrize("proj", [None, P])
def test_param_shapes(proj):
  cell = LSTMCell(H, proj_features=proj)
  x = np.ones((B, D), np.float32)
  params = param_shapes(cell, cell.initialize_carry(jax.random.key(1), x.shape), x)
  r = proj or H
  expected = {"input_kernel": (D, 4 * H), "recurrent_kernel": (r, 4 * H), "bias": (4 * H,)}
  if proj:
    expected["projection_kernel"] = (H, P)
  assert jax.tree.map(lambda a: a.shape, params["params"]) == expected
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))


@pytest.mark.parametrize("proj", [None, P])
@pytest.mark.parametrize("batch", [(B,), (2, 3)])
def test_step_shapes_and_output_is_new_h(proj, batch):
  cell = LSTMCell(H, proj_features=proj)
  x = _rand(0, *batch, D)
  carry = _random_carry(1, batch, H, proj or H)
  params = rand_params(cell, carry, x)
  (c, h), y = run(cell, params, carry, x)
  assert c.shape == batch + (H,)
  assert h.shape == y.shape == batch + ((proj or H),)
  np.testing.assert_array_equal(h, y)
  # The step really uses the incoming carry.
  (c0, _), y0 = run(cell, params, jax.tree.map(np.zeros_like, carry), x)
  assert not np.allclose(c, c0) and not np.allclose(y, y0)


def test_default_init():
  cell = LSTMCell(H, layer_norm=True)
  x = np.ones((1, D), np.float32)
  carry = cell.initialize_carry(jax.random.key(0), x.shape)
  params = jax.jit(cell.init)(jax.random.key(3), carry, x)["params"]
  # The recurrent kernel is orthogonal per gate: each (H, H) block on its own.
  u = np.asarray(params["recurrent_kernel"])
  for k in range(4):
    blk = u[:, H * k : H * (k + 1)]
    np.testing.assert_allclose(blk.T @ blk, np.eye(H), atol=1e-5)
  assert not np.allclose(u[:, :H], u[:, H : 2 * H])  # an own random draw per gate
  w = np.asarray(params["input_kernel"])
  assert np.all(np.abs(w) <= np.sqrt(6.0 / (D + H)) + 1e-6)  # per-gate Glorot bound
  np.testing.assert_array_equal(params["bias"], 0.0)
  # Layer norm starts as the identity transform.
  np.testing.assert_array_equal(params["input_ln_scale"], 1.0)
  np.testing.assert_array_equal(params["recurrent_ln_scale"], 1.0)
  np.testing.assert_array_equal(params["cell_ln_scale"], 1.0)
  np.testing.assert_array_equal(params["cell_ln_bias"], 0.0)


@pytest.mark.parametrize("proj", [None, P])
def test_cell_inside_flax_rnn_equals_python_loop(proj):
  t = 6
  cell = LSTMCell(H, proj_features=proj)
  rnn = nn.RNN(cell, return_carry=True)
  x = _rand(0, B, t, D)
  params = rand_params(rnn, x)
  (c, h), ys = run(rnn, params, x)
  assert ys.shape == (B, t, proj or H)

  carry = cell.initialize_carry(jax.random.key(0), (B, D))
  cell_params = {"params": params["params"]["cell"]}
  outs = []
  for s in range(t):
    carry, y = run(cell, cell_params, carry, x[:, s])
    outs.append(y)
  np.testing.assert_allclose(ys, np.stack(outs, 1), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(c, carry[0], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(h, carry[1], rtol=RTOL, atol=ATOL)


# ---- layer norm --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ln_setup():
  x = _rand(0, B, D)
  carry = _random_carry(1, (B,), H, H)
  base = LSTMCell(H)
  p = rand_params(base, carry, x)["params"]
  ln = LSTMCell(H, layer_norm=True)
  p_ln = rand_params(ln, carry, x, seed=1)["params"]
  return x, carry, base, p, ln, p_ln


def test_layer_norm_params_and_differs_from_plain(ln_setup):
  x, carry, base, p, ln, p_ln = ln_setup
  assert _shapes(p_ln) == {
    **_shapes(p),
    "input_ln_scale": ((4 * H,), jnp.float32),
    "recurrent_ln_scale": ((4 * H,), jnp.float32),
    "cell_ln_scale": ((H,), jnp.float32),
    "cell_ln_bias": ((H,), jnp.float32),
  }
  # Same core weights, LN on vs. off.
  p_ln = {**p_ln, **p}
  (c_ln, h_ln), _ = run(ln, {"params": p_ln}, carry, x)
  (c, h), _ = run(base, {"params": p}, carry, x)
  assert np.all(np.isfinite(c_ln)) and np.all(np.isfinite(h_ln))
  assert c_ln.shape == c.shape and h_ln.shape == h.shape
  assert np.max(np.abs(np.asarray(h_ln) - np.asarray(h))) > 1e-3


def test_layer_norm_is_per_gate_scale_invariant(ln_setup):
  """LN normalizes each gate's pre-activations: rescaling one gate's kernel block (by a
  positive factor) must not change the output; without LN it does."""
  x, carry, base, p, ln, p_ln = ln_setup
  p_ln = {**p_ln, **p}
  factors = np.repeat(np.float32([3.0, 0.5, 2.0, 7.0]), H)
  scaled = {
    **p_ln,
    "input_kernel": np.asarray(p_ln["input_kernel"]) * factors,
    "recurrent_kernel": np.asarray(p_ln["recurrent_kernel"]) * factors[::-1],
  }
  (c1, h1), _ = run(ln, {"params": p_ln}, carry, x)
  (c2, h2), _ = run(ln, {"params": scaled}, carry, x)
  np.testing.assert_allclose(c2, c1, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(h2, h1, rtol=1e-4, atol=1e-4)
  scaled_plain = {k: scaled[k] for k in p}
  (_, h3), _ = run(base, {"params": p}, carry, x)
  (_, h4), _ = run(base, {"params": scaled_plain}, carry, x)
  assert np.max(np.abs(np.asarray(h3) - np.asarray(h4))) > 1e-3


# ---- equality with Flax's cells ----------------------------------------------------------------
T_FLAX = 2  # two steps: gradients also flow through the carry


@functools.partial(jax.jit, static_argnums=0)
def _run_cell(cell, params, carry, xs):
  ys = []
  for s in range(xs.shape[1]):
    carry, y = cell.apply({"params": params}, carry, xs[:, s])
    ys.append(y)
  return carry, jnp.stack(ys, 1)


def _loss(cell, params, carry, xs, wy, wc):
  (c, h), ys = _run_cell(cell, params, carry, xs)
  return jnp.sum(ys * wy) + jnp.sum(c * wc) + jnp.sum(h**2)


@pytest.fixture(scope="module", params=["LSTMCell", "OptimizedLSTMCell"])
def flax_setup(request):
  flax_cls = getattr(nn, request.param)
  fcell = flax_cls(H)
  xs = _rand(0, B, T_FLAX, D)
  carry = _random_carry(1, (B,), H, H)
  fparams = rand_params(fcell, carry, xs[:, 0])["params"]
  wy = _rand(5, B, T_FLAX, H)
  wc = _rand(6, B, H)
  return fcell, fparams, xs, carry, wy, wc


@pytest.mark.parametrize("forget_bias", [0.0, 1.0])
def test_matches_flax_cell_forward(flax_setup, forget_bias):
  fcell, fparams, xs, carry, _, _ = flax_setup
  if forget_bias == 1.0:  # the defaults on both sides
    cell, ours = LSTMCell(H), from_flax_params(fparams)
  else:
    cell = LSTMCell(H, forget_bias=forget_bias)
    ours = from_flax_params(fparams, forget_bias=forget_bias)
  (fc, fh), fys = np_tree(_run_cell(fcell, fparams, carry, xs))
  (c, h), ys = np_tree(_run_cell(cell, ours, carry, xs))
  np.testing.assert_allclose(ys, fys, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(c, fc, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(h, fh, rtol=RTOL, atol=ATOL)


def test_matches_flax_cell_gradients(flax_setup):
  fcell, fparams, xs, carry, wy, wc = flax_setup
  cell = LSTMCell(H, forget_bias=0.0)
  ours = from_flax_params(fparams, forget_bias=0.0)
  grad = jax.jit(jax.grad(_loss, argnums=(1, 2, 3)), static_argnums=0)
  fg_p, fg_carry, fg_x = np_tree(grad(fcell, fparams, carry, xs, wy, wc))
  g_p, g_carry, g_x = np_tree(grad(cell, ours, carry, xs, wy, wc))

  np.testing.assert_allclose(g_x, fg_x, rtol=RTOL, atol=ATOL)
  for a, b in zip(g_carry, fg_carry):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
  assert set(g_p) == {"input_kernel", "recurrent_kernel", "bias"}
  for k, gate in enumerate(GATES):
    cols = slice(k * H, (k + 1) * H)
    np.testing.assert_allclose(
      g_p["input_kernel"][:, cols], fg_p[f"i{gate}"]["kernel"], rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
      g_p["recurrent_kernel"][:, cols], fg_p[f"h{gate}"]["kernel"], rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(g_p["bias"][cols], fg_p[f"h{gate}"]["bias"], rtol=RTOL, atol=ATOL)
  assert np.max(np.abs(np.asarray(g_p["input_kernel"]))) > 1e-3  # not trivially zero


def test_from_flax_params_layout_and_wrapping(flax_setup):
  _, fparams, _, _, _, _ = flax_setup
  p0 = np_tree(from_flax_params(fparams, forget_bias=0.0))
  p1 = np_tree(from_flax_params({"params": fparams}))  # wrapped; default forget_bias=1.0
  for k, gate in enumerate(GATES):
    cols = slice(k * H, (k + 1) * H)
    np.testing.assert_array_equal(p0["input_kernel"][:, cols], fparams[f"i{gate}"]["kernel"])
    np.testing.assert_array_equal(p0["recurrent_kernel"][:, cols], fparams[f"h{gate}"]["kernel"])
    np.testing.assert_array_equal(p0["bias"][cols], fparams[f"h{gate}"]["bias"])
  shift = np.zeros(4 * H, np.float32)
  shift[H : 2 * H] = 1.0
  np.testing.assert_allclose(p1["bias"], np.asarray(p0["bias"]) - shift, rtol=0, atol=1e-7)
  np.testing.assert_array_equal(p1["input_kernel"], p0["input_kernel"])


def test_from_flax_params_rejects_other_trees():
  with pytest.raises(ValueError, match="missing"):
    from_flax_params({"input_kernel": np.zeros((2, 8))})


# ---- equality with a NumPy LSTM in PyTorch's layout --------------------------------------------
@pytest.mark.parametrize("proj", [0, P])
@pytest.mark.parametrize("layer,reverse", [(0, False), (0, True), (1, False), (1, True)])
def test_torch_converted_cell_step_matches_numpy(np_ref, proj, layer, reverse):
  sd = np_ref.random_torch_state_dict(0, D, H, num_layers=2, proj_size=proj, bidirectional=True)
  r = proj or H
  d_in = D if layer == 0 else 2 * r
  p = from_torch_lstm(sd, layer=layer, reverse=reverse)
  assert p["input_kernel"].shape == (d_in, 4 * H)
  assert p["recurrent_kernel"].shape == (r, 4 * H)
  assert ("projection_kernel" in p) == bool(proj)
  cell = LSTMCell(H, proj_features=proj or None)
  x = _rand(7, B, d_in)
  c0, h0 = _rand(8, B, H), _rand(9, B, r)
  (c, h), y = run(cell, {"params": p}, (c0, h0), x)
  c_ref, h_ref = np_ref.step(x, c0, h0, *np_ref.torch_layer_weights(sd, layer, reverse))
  np.testing.assert_allclose(c, c_ref, rtol=RTOL, atol=2e-6)
  np.testing.assert_allclose(h, h_ref, rtol=RTOL, atol=2e-6)
  np.testing.assert_array_equal(y, h)


def test_torch_converter_bias_and_forget_bias(np_ref):
  sd = np_ref.random_torch_state_dict(1, D, H, num_layers=1)
  p0 = from_torch_lstm(sd, forget_bias=0.0)
  np.testing.assert_allclose(p0["bias"], sd["bias_ih_l0"] + sd["bias_hh_l0"], rtol=0, atol=1e-7)
  np.testing.assert_array_equal(p0["input_kernel"], sd["weight_ih_l0"].T)
  np.testing.assert_array_equal(p0["recurrent_kernel"], sd["weight_hh_l0"].T)
  x, c0, h0 = _rand(2, B, D), _rand(3, B, H), _rand(4, B, H)
  c_ref, h_ref = np_ref.step(x, c0, h0, *np_ref.torch_layer_weights(sd))
  (c, h), _ = run(LSTMCell(H, forget_bias=0.0), {"params": p0}, (c0, h0), x)
  np.testing.assert_allclose(h, h_ref, rtol=RTOL, atol=2e-6)
  np.testing.assert_allclose(c, c_ref, rtol=RTOL, atol=2e-6)


def test_torch_converter_without_biases(np_ref):
  sd = np_ref.random_torch_state_dict(2, D, H, num_layers=1, bias=False)
  p = from_torch_lstm(sd)
  expected = np.zeros(4 * H, np.float32)
  expected[H : 2 * H] = -1.0  # cancels the cell's default forget_bias=1.0
  np.testing.assert_array_equal(p["bias"], expected)
  x, c0, h0 = _rand(2, B, D), _rand(3, B, H), _rand(4, B, H)
  c_ref, h_ref = np_ref.step(x, c0, h0, *np_ref.torch_layer_weights(sd))
  (c, h), _ = run(LSTMCell(H), {"params": p}, (c0, h0), x)
  np.testing.assert_allclose(h, h_ref, rtol=RTOL, atol=2e-6)
  np.testing.assert_allclose(c, c_ref, rtol=RTOL, atol=2e-6)


def test_torch_converter_missing_layer_raises(np_ref):
  sd = np_ref.random_torch_state_dict(0, D, H, num_layers=1)
  with pytest.raises(ValueError, match="layer 1"):
    from_torch_lstm(sd, layer=1)
  with pytest.raises(ValueError):
    from_torch_lstm(sd, reverse=True)


T_TORCH = 7


@pytest.mark.parametrize("proj", [0, P])
def test_torch_lstm_layer_sequences_match_numpy(np_ref, proj):
  """Layer 0's forward and layer 1's `_reverse` direction, each run as an `LSTM` layer."""
  sd = np_ref.random_torch_state_dict(3, D, H, num_layers=2, proj_size=proj, bidirectional=True)
  r = proj or H
  for layer, reverse in ((0, False), (1, True)):
    d_in = D if layer == 0 else 2 * r
    x = _rand(10 + layer, B, T_TORCH, d_in)
    p = from_torch_lstm(sd, layer=layer, reverse=reverse)
    model = LSTM(H, proj_features=proj or None, reverse=reverse, return_carry=True)
    (c, h), ys = run(model, {"params": {"cell": p}}, x)
    ys_ref, (c_ref, h_ref) = np_ref.layer(
      x, *np_ref.torch_layer_weights(sd, layer, reverse), reverse=reverse
    )
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c, c_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj", [0, P])
def test_torch_two_layer_stack_matches_numpy(np_ref, bidirectional, proj):
  sd = np_ref.random_torch_state_dict(
    4, D, H, num_layers=2, proj_size=proj, bidirectional=bidirectional
  )
  model = StackedLSTM(features=(H, H), bidirectional=bidirectional, proj_features=proj or None)
  x = _rand(5, B, T_TORCH, D)
  if bidirectional:
    params = {
      f"bilstm_{k}": {
        "forward_rnn": {"cell": from_torch_lstm(sd, layer=k)},
        "backward_rnn": {"cell": from_torch_lstm(sd, layer=k, reverse=True)},
      }
      for k in range(2)
    }
  else:
    params = {f"lstm_{k}": {"cell": from_torch_lstm(sd, layer=k)} for k in range(2)}
  # The converted tree has exactly the structure and shapes the model creates.
  assert _shapes(param_shapes(model, x)["params"]) == _shapes(params)

  ys = run(model, {"params": params}, x)
  h_ref = np.asarray(x, np.float64)
  for k in range(2):
    fwd, _ = np_ref.layer(h_ref, *np_ref.torch_layer_weights(sd, k))
    if bidirectional:
      bwd, _ = np_ref.layer(h_ref, *np_ref.torch_layer_weights(sd, k, True), reverse=True)
      fwd = np.concatenate([fwd, bwd], -1)
    h_ref = fwd
  assert ys.shape == h_ref.shape == (B, T_TORCH, (proj or H) * (2 if bidirectional else 1))
  np.testing.assert_allclose(ys, h_ref, rtol=1e-5, atol=1e-5)


def test_numpy_params_are_accepted():
  """Parameters held as NumPy arrays (`jax.device_get(params)`, a restored checkpoint) must
  work like `jax.Array`s; the default `forget_bias=1.0` used to call `bias.at[...]` on them."""
  cell = LSTMCell(H)
  x, carry = _rand(0, B, D), _random_carry(1, (B,), H, H)
  params = rand_params(cell, carry, x)
  expected = run(cell, params, carry, x)
  got = cell.apply(jax.device_get(params), carry, x)  # eager, NumPy leaves
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


# ---- default forget bias and mixed precision ---------------------------------------------------
def test_default_forget_bias_adds_one_to_forget_gate(np_ref):
  cell = LSTMCell(H)
  x, c0, h0 = _rand(2, B, D), _rand(3, B, H), _rand(4, B, H)
  p = rand_params(cell, (c0, h0), x)["params"]
  (c, h), _ = run(cell, {"params": p}, (c0, h0), x)
  c_ref, h_ref = np_ref.step(x, c0, h0, *np_ref.fused_to_torch(p, forget_bias=1.0))
  np.testing.assert_allclose(c, c_ref, rtol=RTOL, atol=2e-6)
  np.testing.assert_allclose(h, h_ref, rtol=RTOL, atol=2e-6)
  (c_nf, _), _ = run(LSTMCell(H, forget_bias=0.0), {"params": p}, (c0, h0), x)
  assert not np.allclose(c_nf, c)


def test_bf16_cell_keeps_float32_state_and_params():
  cell = LSTMCell(H, dtype=jnp.bfloat16)
  x = _rand(0, B, D)
  carry = cell.initialize_carry(jax.random.key(0), x.shape)
  assert carry[0].dtype == jnp.float32 and carry[1].dtype == jnp.bfloat16
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(param_shapes(cell, carry, x)))
  params = rand_params(cell, carry, x)
  c0, h0 = _random_carry(2, (B,), H, H)
  (c, h), y = run(cell, params, (c0, h0.astype(jnp.bfloat16)), x)
  assert c.dtype == jnp.float32 and h.dtype == jnp.bfloat16 and y.dtype == jnp.bfloat16
  (c32, h32), _ = run(LSTMCell(H), params, (c0, h0), x)
  np.testing.assert_allclose(c, c32, atol=3e-2)
  np.testing.assert_allclose(h.astype(jnp.float32), h32, atol=3e-2)
  # Inside nn.RNN the mixed-dtype carry stays consistent across steps.
  (c_seq, h_seq), ys = run(
    nn.RNN(cell, return_carry=True), {"params": {"cell": params["params"]}}, _rand(1, B, 4, D)
  )
  assert c_seq.dtype == jnp.float32 and h_seq.dtype == ys.dtype == jnp.bfloat16
