"""The sLSTM (flaxlstm/nn/cells/slstm.py, nn/xlstm.py): its cell through flaxlstm's layers,
and the layer against the `xlstm` package's own (`pip install xlstm`, CPU backend
"vanilla"): random weights, outputs, final states and gradients within 1e-5 in float32.
The comparison skips cleanly where the package is absent (CI installs it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxlstm
from flaxlstm.nn import convert
from flaxlstm.nn.cells.slstm import SLSTMCarry, SLSTMCell, forget_bias
from flaxlstm.nn.xlstm import SLSTM

B, T = 3, 7
RTOL, ATOL = 1e-5, 1e-5


def _close(a, b, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(
    np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol
  )


def _rand(seed, *shape, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _random_params(module, x, seed=0, scale=0.4):
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x))
  leaves, tree = jax.tree.flatten(shapes)
  return jax.tree.unflatten(
    tree, [_rand(seed + k, *a.shape, scale=scale) for k, a in enumerate(leaves)]
  )


# ---- the cell ------------------------------------------------------------------------------------
def test_cell_steps_equal_its_loop_and_its_carry_is_typed():
  """`flaxlstm.RNN(SLSTMCell)` (the autodiff loop over the pure step) equals stepping the
  cell by hand, which checks the equations one step at a time in NumPy."""
  h, heads, d = 8, 2, 3
  cell = SLSTMCell(h, num_heads=heads)
  x = _rand(1, B, T, d)
  params = _random_params(flaxlstm.RNN(cell), x)
  carry, ys = flaxlstm.RNN(cell, return_carry=True).apply(params, x)
  assert isinstance(carry, SLSTMCarry) and ys.shape == (B, T, h)

  p = {k: np.asarray(v, np.float64) for k, v in params["params"]["cell"].items()}
  c = n = m = hh = np.zeros((B, h))
  r = p["recurrent_kernel"]
  for t in range(T):
    rh = np.einsum("bkd,kde->bke", hh.reshape(B, heads, -1), r).reshape(B, heads, 4, -1)
    z = x[:, t] @ p["input_kernel"] + p["bias"] + rh.transpose(0, 2, 1, 3).reshape(B, -1)
    i_, f_, z_, o_ = np.split(z, 4, axis=-1)
    log_f = -np.logaddexp(0, -f_) + m
    m_new = np.where(n == 0, i_, np.maximum(i_, log_f))
    i_g, f_g = np.exp(i_ - m_new), np.exp(log_f - m_new)
    c, n, m = f_g * c + i_g * np.tanh(z_), f_g * n + i_g, m_new
    hh = 1 / (1 + np.exp(-o_)) * c / n
    _close(ys[:, t], hh)
  for got, want in zip(carry, (c, n, m, hh)):
    _close(got, want)


def test_cell_in_a_stack_with_ragged_lengths_dropout_and_remat():
  x = _rand(2, B, T, 4)
  lengths = np.array([T, 4, 1])
  stack = flaxlstm.StackedRNN(lambda w: SLSTMCell(w, num_heads=2), features=(8, 4))
  params = stack.init(jax.random.key(0), x)
  full = stack.apply(params, x, seq_lengths=lengths)
  assert np.all(np.asarray(full)[2, 1:] == 0)  # zero past each sequence's end
  _close(stack.clone(remat=True).apply(params, x, seq_lengths=lengths), full)
  dropped = stack.clone(recurrent_dropout=0.5).apply(
    params, x, deterministic=False, rngs={"dropout": jax.random.key(1)}
  )
  assert not np.allclose(dropped, full)


@pytest.mark.parametrize("kind", ["powerlaw", "linspace", "zeros"])
def test_forget_bias_initializers(kind):
  cell = SLSTMCell(8, num_heads=2, forget_bias_init=kind, bias_init=jax.nn.initializers.ones)
  p = cell.init(jax.random.key(0), cell.initialize_carry(None, (1, 3)), jnp.ones((1, 3)))
  bias = np.asarray(p["params"]["bias"])
  np.testing.assert_array_equal(bias[:8], 1.0)  # the other gates: bias_init
  _close(bias[8:16], forget_bias(kind, 2, 4))
  if kind == "powerlaw":  # the xlstm package's powerlaw_blockdependent, first block
    _close(bias[8:12], [5.0, -(-5 + 12 * (1 / 3) ** 0.3), -(-5 + 12 * (2 / 3) ** 0.3), -7.0])


# ---- the layer against the xlstm package ---------------------------------------------------------
def _xlstm_layer(h, heads, conv, seed):
  torch = pytest.importorskip("torch")
  pytest.importorskip("xlstm")
  from xlstm.blocks.slstm.layer import sLSTMLayer, sLSTMLayerConfig

  torch.manual_seed(seed)
  cfg = sLSTMLayerConfig(
    embedding_dim=h, num_heads=heads, conv1d_kernel_size=conv, backend="vanilla", dtype="float32"
  )
  layer = sLSTMLayer(cfg)
  with torch.no_grad():  # random everything (its recurrent kernel starts at zero)
    for v in layer.parameters():
      v.copy_(0.4 * torch.randn_like(v))
  return torch, layer


@pytest.mark.parametrize(
  "h, heads, conv", [(16, 4, 4), (12, 1, 0), (16, 2, 2)], ids=["4_heads_conv", "1_head", "2_heads"]
)
def test_layer_equals_the_xlstm_package(h, heads, conv):
  torch, theirs = _xlstm_layer(h, heads, conv, seed=h + heads + conv)
  x = _rand(3, B, T, h)
  state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
  params = {"params": convert.from_xlstm_slstm_layer(state, num_heads=heads, layout="vanilla")}
  ours = SLSTM(h, num_heads=heads, conv1d_kernel_size=conv, return_carry=True)
  assert jax.tree.structure(params) == jax.tree.structure(
    jax.eval_shape(lambda: ours.init(jax.random.key(0), x))
  )
  weights = _rand(4, B, T, h)

  def loss(p, x):
    carry, y = ours.apply(p, x)
    return (y * weights).sum() + 0.3 * carry.c.sum() - 0.2 * carry.n.sum(), (carry, y)

  (value, (carry, y)), (g_params, g_x) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
    params, x
  )
  xt = torch.tensor(x, requires_grad=True)
  y_t, st = theirs(xt, return_last_state=True)
  h_t, c_t, n_t, m_t = st["slstm_state"].unbind(0)
  value_t = (y_t * torch.tensor(weights)).sum() + 0.3 * c_t.sum() - 0.2 * n_t.sum()
  value_t.backward()
  _close(y, y_t.detach())
  _close(value, value_t.detach())
  for ours_s, theirs_s in zip(carry, (c_t, n_t, m_t, h_t)):
    _close(ours_s, theirs_s.detach())
  _close(g_x, xt.grad)
  g_theirs = {k: v.grad.numpy() for k, v in theirs.named_parameters()}
  g_mapped = convert.from_xlstm_slstm_layer(g_theirs, num_heads=heads, layout="vanilla")
  for a, b in zip(jax.tree.leaves(g_params["params"]), jax.tree.leaves(g_mapped)):
    _close(a, b)


@pytest.mark.parametrize("layout", ["cuda", "vanilla"])
def test_converters_are_inverse(layout):
  x = _rand(5, 2, 3, 16)
  params = _random_params(SLSTM(16, num_heads=4), x)["params"]
  state = convert.to_xlstm_slstm_layer(params, layout=layout)
  back = convert.from_xlstm_slstm_layer(state, num_heads=4, layout=layout)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="missing 'slstm_cell._recurrent_kernel_'"):
    convert.from_xlstm_slstm_layer({}, num_heads=4)


def test_block_equals_the_xlstm_package():
  torch = pytest.importorskip("torch")
  pytest.importorskip("xlstm")
  from xlstm.blocks.slstm.block import sLSTMBlock, sLSTMBlockConfig
  from xlstm.blocks.slstm.layer import sLSTMLayerConfig
  from xlstm.components.feedforward import FeedForwardConfig

  from flaxlstm.nn.xlstm import SLSTMBlock

  h, heads = 16, 4
  torch.manual_seed(0)
  cfg = sLSTMBlockConfig(
    slstm=sLSTMLayerConfig(embedding_dim=h, num_heads=heads, backend="vanilla", dtype="float32"),
    feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu"),
    _num_blocks=1,
    _block_idx=0,
  )
  theirs = sLSTMBlock(cfg)
  with torch.no_grad():
    for v in theirs.parameters():
      v.copy_(0.3 * torch.randn_like(v))
  state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
  params = {"params": convert.from_xlstm_slstm_block(state, num_heads=heads, layout="vanilla")}
  x = _rand(6, B, T, h)
  ours = SLSTMBlock(h, num_heads=heads)
  _close(ours.apply(params, x), theirs(torch.tensor(x)).detach(), rtol=1e-5, atol=2e-5)


# ---- the fused kernel against the autodiff loop ------------------------------------------------
def _state(seed, b, h):
  """A carry as a run would leave it: n > 0, m anywhere."""
  rng = np.random.default_rng(seed)
  return SLSTMCarry(
    rng.standard_normal((b, h)).astype(np.float32),
    rng.uniform(0.5, 2.0, (b, h)).astype(np.float32),
    rng.standard_normal((b, h)).astype(np.float32),
    rng.standard_normal((b, h)).astype(np.float32),
  )


@pytest.mark.parametrize("masked", [False, True], ids=["", "mask"])
@pytest.mark.parametrize("h_masked", [False, True], ids=["", "h_mask"])
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("from_zeros", [False, True], ids=["carry", "zeros"])
def test_fused_equals_autodiff(masked, h_masked, forget_gate, from_zeros):
  """Outputs, final carries and the gradients of a loss on both, with respect to the
  parameters, the inputs, the initial carry and the recurrent-dropout mask."""
  from flaxlstm.nn import kernels

  h, heads, d = 8, 2, 3
  cell = SLSTMCell(h, num_heads=heads, forget_gate=forget_gate)
  x = _rand(10, T, B, d)
  params = _random_params(flaxlstm.RNN(cell), np.swapaxes(x, 0, 1))["params"]["cell"]
  carry0 = jax.tree.map(np.zeros_like, _state(11, B, h)) if from_zeros else _state(11, B, h)
  lengths = np.array([T, 3, 0])
  mask = jnp.asarray((np.arange(T)[:, None] < lengths[None, :])[..., None]) if masked else None
  h_mask = jnp.asarray(np.random.default_rng(12).uniform(0, 2, (B, h)), jnp.float32)
  w_y, w_s = _rand(13, T, B, h), _rand(14, 4, B, h)
  assert kernels.select(cell, "auto", kernels.Call()).name == "slstm_fused"

  def loss(impl):
    def f(p, x, carry, hm):
      carry, ys = kernels.recurrence(
        cell, p, carry, x, mask=mask, h_mask=hm if h_masked else None, implementation=impl
      )
      return (ys * w_y).sum() + sum((s * w).sum() for s, w in zip(carry, w_s)), (carry, ys)

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))

  (l1, (c1, y1)), g1 = loss("fused")(params, x, carry0, h_mask)
  (l2, (c2, y2)), g2 = loss("autodiff")(params, x, carry0, h_mask)
  _close(y1, y2)
  _close(l1, l2)
  for a, b in zip(jax.tree.leaves((c1, g1)), jax.tree.leaves((c2, g2))):
    _close(a, b, rtol=1e-4, atol=1e-5)
  assert np.abs(np.asarray(g1[0]["recurrent_kernel"])).sum() > 0  # not vacuous


def test_the_fused_kernels_log_sigmoid_is_jaxs_over_float32s_range():
  """The kernel's forget gate takes `log sigma` with `log` where JAX has `log1p` (faster on
  XLA:CPU): equal within 1e-7 absolute from the tails to 0, infinities and NaN included."""
  from flaxlstm.nn.kernels.slstm_fused import _log_sigmoid

  x = jnp.concatenate(
    [jnp.linspace(-120.0, 120.0, 20001), jnp.array([-1e30, 1e30, -jnp.inf, jnp.inf, 0.0])]
  )
  ours, ref = np.asarray(_log_sigmoid(x)), np.asarray(jax.nn.log_sigmoid(x))
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
  assert np.isnan(np.asarray(_log_sigmoid(jnp.array([jnp.nan])))).all()


def test_fused_layer_with_reverse_remat_and_ragged_lengths():
  x = _rand(20, B, T, 4)
  lengths = np.array([T, 4, 1])

  def loss(p, m):
    carry, ys = m.apply(p, x, seq_lengths=lengths)
    return ys.sum() + carry.c.sum() + carry.n.sum()

  grad = jax.value_and_grad(loss)
  for kw in ({"reverse": True, "keep_order": True}, {"remat": True}):
    fused = flaxlstm.RNN(SLSTMCell(8, num_heads=2), return_carry=True, **kw)
    params = _random_params(fused, x)
    got, want = grad(params, fused), grad(params, fused.clone(implementation="autodiff"))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      _close(a, b, rtol=1e-4, atol=1e-5)


def test_the_layer_on_the_fused_kernel_equals_its_other_routes(monkeypatch):
  """`SLSTM` on the fused kernel computes its gate projections head-major and loops on them
  (`run_heads`); on autodiff, and with remat, it goes through the gate-major `run_layer`.
  The same outputs, final carry and gradients (parameters, inputs, initial carry), with two
  batch dims, ragged lengths (one of them 0), an initial carry, and both dropouts drawing
  from one key."""
  from flaxlstm.nn.kernels import slstm_fused

  calls = []
  run_heads = slstm_fused.FusedSLSTM.run_heads
  monkeypatch.setattr(
    slstm_fused.FusedSLSTM, "run_heads", lambda *a, **k: calls.append(1) or run_heads(*a, **k)
  )
  x = _rand(30, 2, B, T, 8)
  lengths = np.array([[T, 4, 1], [0, T, 3]])
  c, n, m, h = (_rand(31 + k, 2, B, 8) for k in range(4))
  carry0 = SLSTMCarry(c, np.abs(n) + 0.5, m, h)
  w_y = _rand(35, 2, B, T, 8)
  layer = SLSTM(8, num_heads=2, dropout=0.2, recurrent_dropout=0.3, return_carry=True)
  params = _random_params(layer.clone(deterministic=True), x)

  def grads(module):
    def loss(p, x, carry0):
      carry, y = module.apply(
        p,
        x,
        initial_carry=carry0,
        seq_lengths=lengths,
        deterministic=False,
        rngs={"dropout": jax.random.key(3)},
      )
      return (y * w_y).sum() + sum(a.sum() for a in carry), (carry, y)

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, x, carry0)

  got = grads(layer)
  assert calls  # the head-major route ran
  n_calls = len(calls)
  for other in (layer.clone(implementation="autodiff"), layer.clone(remat=True)):
    want = grads(other)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      _close(a, b, rtol=1e-4, atol=1e-5)
  assert len(calls) == n_calls  # and the others did not
  assert np.abs(np.asarray(got[1][1])).sum() > 0  # d/dx: not vacuous


def test_headwise_linear_head_major_equals_its_batch_major_form():
  from flaxlstm.nn.xlstm import HeadwiseLinear

  x = _rand(40, B, T, 8)
  layer = HeadwiseLinear(heads=2, use_bias=True)
  params = _random_params(layer, x)
  rows = np.transpose(x.reshape(B * T, 2, 4), (1, 0, 2))  # (NH, N, DH)
  got = layer.apply(params, rows, head_major=True)
  want = np.transpose(np.asarray(layer.apply(params, x)).reshape(B * T, 2, 4), (1, 0, 2))
  _close(got, want)


def test_unsupported_configurations_run_on_autodiff():
  from flaxlstm.nn import kernels

  call = kernels.Call()
  for cell in (SLSTMCell(8, num_heads=2, gate_soft_cap=15.0), SLSTMCell(8, dtype=jnp.bfloat16)):
    assert kernels.select(cell, "auto", call).name == "autodiff"
    with pytest.raises(ValueError, match="fused sLSTM path"):
      kernels.select(cell, "fused", call)
  with pytest.raises(ValueError, match="needs an SLSTMCell"):
    kernels.select(flaxlstm.LSTMCell(8), "slstm_fused", call)


def test_the_nnx_cell_runs_the_linen_cells_math():
  """`lnnx.SLSTMCell`: parameters under the Linen names, the same outputs through
  `lnnx.RNN` (the fused kernel), `nnx.RNN` (its step) and the Linen layer."""
  from flax import nnx

  from flaxlstm import nnx as lnnx

  x = _rand(30, B, T, 3)
  cell = lnnx.SLSTMCell(3, 8, num_heads=2, forget_gate="exp", rngs=nnx.Rngs(0))
  ours = lnnx.RNN(cell)(x)
  _close(ours, nnx.RNN(cell)(x))
  linen = flaxlstm.RNN(SLSTMCell(8, num_heads=2, forget_gate="exp"))
  _close(ours, linen.apply({"params": {"cell": cell.params()}}, x))
  grads = nnx.state(nnx.grad(lambda m: m(x).sum())(lnnx.RNN(cell)), nnx.Param)
  assert set(grads["cell"]) == {"input_kernel", "recurrent_kernel", "bias"}
