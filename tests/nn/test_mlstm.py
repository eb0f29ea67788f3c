"""The mLSTM (flaxlstm/nn/cells/mlstm.py, nn/kernels/mlstm.py, nn/xlstm.py): its three
sequence forms against each other, its step and parallel form against the `xlstm`
package's backends, and its layer, block and block stack against the package's own
(`pip install xlstm`, on CPU): random weights, outputs and gradients within 1e-5 of the
magnitudes in float32. The comparisons with the package skip cleanly where it is absent."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxlstm
from flaxlstm.nn import convert
from flaxlstm.nn.cells.mlstm import EMPTY, MLSTMCarry, MLSTMCell, MLSTMStepInputs
from flaxlstm.nn.kernels.mlstm import mlstm_sequence
from flaxlstm.nn.xlstm import MLSTM, MLSTMBlock, MLSTMLayerCarry, XLSTMStack

TOL = 1e-5


def _close(got, want, tol=TOL):
  """`got` within `tol` of `want`, relative to `want`'s largest magnitude (at least 1)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  scale = max(1.0, float(np.abs(want).max(initial=0.0)))
  err = float(np.abs(got - want).max(initial=0.0))
  assert err <= tol * scale, f"max error {err:.3g} over a scale of {scale:.3g}"


def _rand(seed, *shape, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _random_params(module, x, seed=0, scale=0.3):
  """Parameters for `module` drawn around its initial ones (without running its init):
  every leaf `scale` times a standard normal, plus the forget gates' initial bias (3 to 6
  over the heads) and the skip's (1). The gate kernels start at zero; here they are not,
  so the gates vary from step to step."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x))
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  out = []
  for k, (path, a) in enumerate(leaves):
    value = _rand(seed + k, *a.shape, scale=scale)
    name = jax.tree_util.keystr(path[-1:], simple=True)
    if name == "gate_bias":
      nh = a.shape[-1] // 2
      value[..., nh:] += np.linspace(3.0, 6.0, nh, dtype=np.float32)
    elif name == "learnable_skip":
      value += 1.0
    out.append(value)
  return jax.tree.unflatten(tree, out)


def _carry(seed, b, nh, dh):
  """A nonzero state as a run would leave it."""
  rng = np.random.default_rng(seed)
  return MLSTMCarry(
    rng.standard_normal((b, nh, dh, dh)).astype(np.float32),
    rng.standard_normal((b, nh, dh)).astype(np.float32),
    rng.standard_normal((b, nh)).astype(np.float32),
  )


def _np_outputs(params, x, carry, lengths, heads):
  """`flaxlstm.RNN(MLSTMCell)`'s outputs stepped in float64 NumPy (the cell's docstring)."""
  p = {k: np.asarray(v, np.float64) for k, v in params["params"]["cell"].items()}
  z = np.asarray(x, np.float64) @ p["input_kernel"]
  b, t, h = z.shape[0], z.shape[1], z.shape[2] // 3
  i, f = np.split(z @ p["gate_kernel"] + p["gate_bias"], 2, axis=-1)
  log_f = -np.logaddexp(0.0, -f)
  q, k, v = (a.reshape(b, t, heads, -1) for a in np.split(z, 3, axis=-1))
  k = k / np.sqrt(k.shape[-1])
  C, n, m = (np.asarray(a, np.float64) for a in carry)
  ys = np.zeros((b, t, h))
  for s in range(int(np.max(lengths, initial=0))):
    on = (s < lengths)[:, None]
    m_new = np.maximum(log_f[:, s] + m, i[:, s])
    f_g, i_g = np.exp(log_f[:, s] + m - m_new), np.exp(i[:, s] - m_new)
    C_new = f_g[..., None, None] * C + i_g[..., None, None] * np.einsum(
      "bhd,bhe->bhde", k[:, s], v[:, s]
    )
    n_new = f_g[..., None] * n + i_g[..., None] * k[:, s]
    num = np.einsum("bhd,bhde->bhe", q[:, s], C_new)
    den = np.maximum(np.abs((q[:, s] * n_new).sum(-1)), np.exp(-m_new)) + 1e-6
    ys[:, s] = np.where(on, (num / den[..., None]).reshape(b, h), 0.0)
    C = np.where(on[..., None, None], C_new, C)
    n, m = np.where(on[..., None], n_new, n), np.where(on, m_new, m)
  return ys, MLSTMCarry(C, n, m)


# ---- the three forms against each other ----------------------------------------------------------
def _forms(t, chunks, lengths, carry0, *, heads=2, dh=4, d=3, seed=0, ragged=True):
  """Each form's `((loss, (final carry, outputs)), gradients)` of a loss on the outputs and
  the final carry, with respect to the parameters, the inputs and the initial carry; keyed
  by `(implementation, chunk size)`. `ragged=False`: no `seq_lengths` (every step real)."""
  b, h = len(lengths), heads * dh
  x = _rand(seed + 1, b, t, d)
  cell = MLSTMCell(h, num_heads=heads)
  params = _random_params(flaxlstm.RNN(cell), x, seed=seed)
  w_y, w_c, w_n = (
    _rand(seed + 3, b, t, h),
    _rand(seed + 4, b, heads, dh, dh),
    _rand(seed + 5, b, heads, dh),
  )
  results = {}
  for impl, chunk in [("recurrent", None), ("parallel", None)] + [("chunkwise", c) for c in chunks]:
    rnn = flaxlstm.RNN(cell.clone(chunk_size=chunk or 64), implementation=impl, return_carry=True)

    def loss(p, x, carry0, rnn=rnn):
      carry, y = rnn.apply(p, x, initial_carry=carry0, seq_lengths=lengths if ragged else None)
      return (y * w_y).sum() + (carry.C * w_c).sum() + (carry.n * w_n).sum(), (carry, y)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    results[impl, chunk] = grad(params, x, carry0)
  return params, x, results


def _agree(got, want, tol=TOL):
  """Two forms' `_forms` results: outputs, final carries, gradients."""
  (_, (c, y)), g = got
  (_, (c_ref, y_ref)), g_ref = want
  _close(y, y_ref, tol)
  for a, b in zip(c, c_ref):
    _close(a, b, tol)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    _close(a, b, tol)


# At T = 1 the chunkwise form (any chunk size) is the parallel one: one chunk of one step.
@pytest.mark.parametrize("t, chunks", [(1, ()), (7, (3,)), (64, (16,))], ids=str)
def test_the_three_forms_agree(t, chunks):
  """Recurrent, parallel and chunkwise (a chunk that does not divide T, one that does):
  outputs, final carries (C, n, m) and the gradients of a loss on both with
  respect to the parameters, the inputs and the initial carry, within 1e-5; the recurrent
  form's outputs and carries also within 1e-5 of the step in float64 NumPy. The batch
  holds ragged lengths down to 0, three sequences from the empty state and three from
  nonzero carries."""
  lengths = np.array([t, (t + 1) // 2, 0] * 2)
  heads, dh = 2, 4
  empty = MLSTMCell(heads * dh, num_heads=heads).initialize_carry(jax.random.key(0), (3, 1))
  carry0 = MLSTMCarry(*(np.concatenate([a, b]) for a, b in zip(empty, _carry(t + 2, 3, heads, dh))))
  params, x, results = _forms(t, chunks, lengths, carry0, heads=heads, dh=dh, seed=t)
  ref = results.pop(("recurrent", None))
  (_, (c_ref, y_ref)), g_ref = ref
  assert np.all(np.asarray(y_ref)[lengths == 0] == 0)
  for a, b in zip(c_ref, carry0):  # a sequence of length 0 keeps its carry
    np.testing.assert_array_equal(np.asarray(a)[lengths == 0], np.asarray(b)[lengths == 0])
  assert all(np.isfinite(a).all() for a in jax.tree.leaves(g_ref))
  assert np.abs(np.asarray(g_ref[0]["params"]["cell"]["gate_kernel"])).sum() > 0
  y_np, c_np = _np_outputs(params, x, carry0, lengths, heads)
  _close(y_ref, y_np)
  for a, b in zip(c_ref, c_np):
    _close(a, b)
  for got in results.values():
    _agree(got, ref)


def test_the_three_forms_agree_over_a_long_sequence():
  """T = 4096 at a tiny width, from a nonzero carry, every step real (no `seq_lengths`: the
  forms' unmasked path): the parallel form (one 4096 x 4096 matrix), the chunkwise form (64
  steps a chunk, 64 chunks) and the step under `lax.scan`, within 1e-5 of the recurrence
  stepped in float64 (outputs, final carry) and of each other (gradients too). The parallel
  form sums the log forget gates between each pair of steps directly: as differences of
  running sums over the whole sequence, float32 rounding made it 2e-5 off here."""
  lengths, heads, dh = np.array([4096]), 1, 4
  carry0 = _carry(42, 1, heads, dh)
  params, x, results = _forms(
    4096, (64,), lengths, carry0, heads=heads, dh=dh, d=2, seed=40, ragged=False
  )
  y_np, c_np = _np_outputs(params, x, carry0, lengths, heads)
  for (_, (c, y)), _ in results.values():
    _close(y, y_np)
    for a, b in zip(c, c_np):
      _close(a, b)
  for key in (("chunkwise", 64), ("parallel", None)):
    _agree(results[key], results["recurrent", None])


def test_the_parallel_form_from_a_constant_start_state_inside_jit():
  """A zero start state with m = 0 built inside the jitted function (a constant of the
  program): XLA:CPU once compiled the parallel form at T = 1024 into outputs off by 1e30
  from it (flaxlstm/nn/kernels/mlstm.py keeps the state opaque). Against the chunkwise
  form from the same state."""
  b, t, nh, dh = 1, 1024, 4, 64
  ks = jax.random.split(jax.random.key(0), 5)
  q, k, v = (jax.random.normal(key, (b, t, nh, dh)) for key in ks[:3])
  x = MLSTMStepInputs(
    q,
    k * dh**-0.5,
    v,
    jax.random.normal(ks[3], (b, t, nh)),
    3.0 + jax.random.normal(ks[4], (b, t, nh)),
  )

  def outputs(x, chunk):
    zero = MLSTMCarry(jnp.zeros((b, nh, dh, dh)), jnp.zeros((b, nh, dh)), jnp.zeros((b, nh)))
    return mlstm_sequence(x, zero, chunk_size=chunk)[1]

  parallel = jax.jit(outputs, static_argnums=1)(x, None)
  chunked = jax.jit(outputs, static_argnums=1)(x, 64)
  _close(parallel, chunked)


# ---- the step and the parallel form against the xlstm package's backends -------------------------
def _backends():
  torch = pytest.importorskip("torch")
  pytest.importorskip("xlstm")
  from xlstm.blocks.mlstm import backends

  return torch, backends


def test_one_step_equals_the_packages_step_and_our_parallel_form():
  """`MLSTMCell` (its gates from `[q | k | v]`, then the step) from a given state (the
  package's zero state, m = 0, and a nonzero one) gives the output and state of the
  package's `recurrent_step_stabilized_simple` with the gates its `mLSTMCell` computes
  (`igate`, `fgate`: our gate kernel's halves); from our empty state (m = EMPTY) it gives
  what our parallel form gives over one step."""
  torch, backends = _backends()
  b, nh, dh = 3, 2, 4
  h = nh * dh
  cell = MLSTMCell(h, num_heads=nh, project_inputs=False)
  qkv = _rand(0, b, 3 * h)
  p = {
    "gate_kernel": _rand(1, 3 * h, 2 * nh, scale=0.3),
    "gate_bias": np.concatenate([_rand(2, nh, scale=0.1), np.linspace(3, 6, nh)]).astype("f4"),
  }
  i_t, f_t = (
    torch.nn.functional.linear(
      torch.tensor(qkv),
      torch.tensor(p["gate_kernel"][:, g * nh : (g + 1) * nh].T.copy()),
      torch.tensor(p["gate_bias"][g * nh : (g + 1) * nh]),
    )[..., None, None]
    for g in (0, 1)
  )
  q, k, v = (torch.tensor(a.reshape(b, nh, 1, dh)) for a in np.split(qkv, 3, axis=-1))
  zeros = MLSTMCarry(*(np.zeros(s, np.float32) for s in ((b, nh, dh, dh), (b, nh, dh), (b, nh))))
  step_ = jax.jit(lambda carry, x: cell.apply({"params": p}, carry, x))
  for state in (zeros, _carry(5, b, nh, dh)):
    new, y = step_(state, qkv)
    assert isinstance(new, MLSTMCarry) and y.shape == (b, h)
    t = torch.tensor
    y_t, (c_t, n_t, m_t) = backends.recurrent_step_stabilized_simple(
      t(state.C),
      t(state.n)[..., None],
      t(state.m)[..., None, None],
      q.clone(),
      k.clone(),
      v.clone(),
      i_t,
      f_t,
    )
    _close(y, y_t.reshape(b, h))
    for a, want in zip(new, (c_t, n_t[..., 0], m_t[..., 0, 0])):
      _close(a, want)

  empty = cell.initialize_carry(jax.random.key(0), (b, 3 * h))
  assert np.all(np.asarray(empty.m) == EMPTY)
  new, y = step_(empty, qkv)
  one_step = cell.project(p, jnp.asarray(qkv)[:, None])  # (B, T = 1, ...)
  final, y_par = jax.jit(partial(mlstm_sequence, chunk_size=None))(one_step, empty)
  _close(y, y_par.reshape(b, h))
  for a, want in zip(new, final):
    _close(a, want)


def test_our_forms_equal_the_packages_parallel_form_and_steps():
  """Over T steps from the empty state, our parallel form gives the package's
  `parallel_stabilized_simple` (outputs, and the gradients of a loss on them with respect to
  q, k, v and the gate pre-activations; the chunkwise and recurrent forms equal ours:
  `test_the_three_forms_agree`); from the package's zero state (m = 0), our chunkwise form
  at one step a chunk gives its `recurrent_step_stabilized_simple` one step after another."""
  torch, backends = _backends()
  b, t, nh, dh = 2, 12, 2, 4
  rng = np.random.default_rng(1)
  q, k, v = (rng.standard_normal((b, t, nh, dh)).astype(np.float32) for _ in range(3))
  i = rng.standard_normal((b, t, nh)).astype(np.float32)
  f = (1.0 + 2.0 * rng.standard_normal((b, t, nh))).astype(np.float32)
  w = _rand(2, b, t, nh, dh)
  empty = MLSTMCarry(jnp.zeros((b, nh, dh, dh)), jnp.zeros((b, nh, dh)), jnp.full((b, nh), EMPTY))

  def loss(q, k, v, i, f):
    _, h = mlstm_sequence(MLSTMStepInputs(q, k * dh**-0.5, v, i, f), empty, chunk_size=None)
    return (h * w).sum(), h

  heads_first = lambda a: torch.tensor(np.moveaxis(a, 2, 1).copy(), requires_grad=True)
  tq, tk, tv = (heads_first(a) for a in (q, k, v))
  ti, tf = (heads_first(a[..., None]) for a in (i, f))
  h_t = backends.parallel_stabilized_simple(tq, tk, tv, ti, tf)
  (h_t * torch.tensor(np.moveaxis(w, 2, 1).copy())).sum().backward()
  h_t = np.moveaxis(h_t.detach().numpy(), 1, 2)
  g_t = [np.moveaxis(a.grad.numpy(), 1, 2) for a in (tq, tk, tv)]
  g_t += [np.moveaxis(a.grad.numpy()[..., 0], 1, 2) for a in (ti, tf)]
  (_, h), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(
    q, k, v, i, f
  )
  _close(h, h_t)
  for a, want in zip(grads, g_t):
    _close(a, want)

  # the package's steps from its zero state
  state = tuple(torch.zeros(s) for s in ((b, nh, dh, dh), (b, nh, dh, 1), (b, nh, 1, 1)))
  hs = []
  for s in range(t):
    cut = lambda a, s=s: torch.tensor(np.ascontiguousarray(a[:, s, :, None]))  # (B, NH, 1, ...)
    h_s, state = backends.recurrent_step_stabilized_simple(
      *state, *(cut(a) for a in (q, k, v)), cut(i[..., None]), cut(f[..., None])
    )
    hs.append(h_s[:, :, 0].numpy())
  zeros = MLSTMCarry(*(jnp.zeros_like(a) for a in empty))
  final, h = jax.jit(partial(mlstm_sequence, chunk_size=1))(
    MLSTMStepInputs(q, k * dh**-0.5, v, i, f), zeros
  )
  _close(h, np.stack(hs, 1))
  for a, want in zip(final, (state[0], state[1][..., 0], state[2][..., 0, 0])):
    _close(a, want)


# ---- the layer, the block and the stack against the xlstm package --------------------------------
def _perturb_torch(torch, module, seed, scale=0.1):
  torch.manual_seed(seed)
  with torch.no_grad():
    for v in module.parameters():
      v.add_(scale * torch.randn_like(v))


def _xlstm_layer(d, t, heads, bias, seed):
  torch = pytest.importorskip("torch")
  pytest.importorskip("xlstm")
  from xlstm.blocks.mlstm.layer import mLSTMLayer, mLSTMLayerConfig

  torch.manual_seed(seed)
  cfg = mLSTMLayerConfig(embedding_dim=d, num_heads=heads, context_length=t, bias=bias)
  layer = mLSTMLayer(cfg)
  _perturb_torch(torch, layer, seed)
  return torch, layer


@pytest.mark.parametrize(
  "heads, bias, impl",
  [(1, False, "chunkwise"), (2, True, "parallel"), (4, True, "recurrent")],
  ids=["1_head", "2_heads_bias_parallel", "4_heads_bias_recurrent"],
)
def test_layer_equals_the_xlstm_package(heads, bias, impl):
  """`MLSTM` with the package's `mLSTMLayer`'s weights (random, converted): outputs, and
  the gradients of a loss on them with respect to the inputs and every parameter (mapped
  back with `to_xlstm_mlstm_layer`: the same keys as the package's)."""
  d, t, b = 16, 12, 2
  torch, theirs = _xlstm_layer(d, t, heads, bias, seed=heads + 10 * bias)
  state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
  params = {"params": convert.from_xlstm_mlstm_layer(state)}
  ours = MLSTM(d, num_heads=heads, use_bias=bias, implementation=impl, chunk_size=5)
  x = _rand(3, b, t, d)
  assert jax.tree.structure(params) == jax.tree.structure(
    jax.eval_shape(lambda: ours.init(jax.random.key(0), x))
  )
  w = _rand(4, b, t, d)

  def loss(p, x):
    y = ours.apply(p, x)
    return (y * w).sum(), y

  (_, y), (g_params, g_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
    params, x
  )
  xt = torch.tensor(x, requires_grad=True)
  y_t = theirs(xt)
  (y_t * torch.tensor(w)).sum().backward()
  _close(y, y_t.detach())
  _close(g_x, xt.grad)
  g_theirs = {k: v.grad.numpy() for k, v in theirs.named_parameters()}
  g_ours = convert.to_xlstm_mlstm_layer(g_params)
  assert set(g_ours) == set(g_theirs)
  for key, want in g_theirs.items():
    _close(g_ours[key], want)


def test_block_equals_the_xlstm_package():
  torch = pytest.importorskip("torch")
  pytest.importorskip("xlstm")
  from xlstm.blocks.mlstm.block import mLSTMBlock, mLSTMBlockConfig
  from xlstm.blocks.mlstm.layer import mLSTMLayerConfig

  d, t, heads = 16, 10, 2
  cfg = mLSTMBlockConfig(
    mlstm=mLSTMLayerConfig(embedding_dim=d, num_heads=heads, context_length=t),
    _num_blocks=1,
    _block_idx=0,
  )
  theirs = mLSTMBlock(cfg)
  _perturb_torch(torch, theirs, seed=7)
  state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
  params = {"params": convert.from_xlstm_mlstm_block(state)}
  x = _rand(6, 2, t, d)
  ours = MLSTMBlock(d, num_heads=heads, chunk_size=4)
  assert jax.tree.structure(params) == jax.tree.structure(
    jax.eval_shape(lambda: ours.init(jax.random.key(0), x))
  )
  _close(jax.jit(ours.apply)(params, x), theirs(torch.tensor(x)).detach())


def test_block_stack_equals_the_xlstm_package():
  """`xLSTMBlockStack` of 3 blocks, an sLSTM block in the middle (backend "vanilla"), and
  its post-blocks norm, against `XLSTMStack` with `from_xlstm_block_stack`'s parameters:
  the two mLSTM blocks are runs of one, each stacked on a leading axis."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("xlstm")
  from xlstm.blocks.mlstm.block import mLSTMBlockConfig
  from xlstm.blocks.mlstm.layer import mLSTMLayerConfig
  from xlstm.blocks.slstm.block import sLSTMBlockConfig
  from xlstm.blocks.slstm.layer import sLSTMLayerConfig
  from xlstm.xlstm_block_stack import xLSTMBlockStack, xLSTMBlockStackConfig

  d, t, heads = 16, 8, 2
  cfg = xLSTMBlockStackConfig(
    mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(num_heads=heads)),
    slstm_block=sLSTMBlockConfig(
      slstm=sLSTMLayerConfig(num_heads=heads, backend="vanilla", dtype="float32")
    ),
    context_length=t,
    num_blocks=3,
    embedding_dim=d,
    slstm_at=[1],
  )
  theirs = xLSTMBlockStack(cfg)
  _perturb_torch(torch, theirs, seed=8)
  state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
  params = convert.from_xlstm_block_stack(
    state, num_blocks=3, slstm_at=[1], num_heads_slstm=heads, layout="vanilla"
  )
  x = _rand(7, 2, t, d)
  ours = XLSTMStack(
    d, num_blocks=3, slstm_at=[1], mlstm={"num_heads": heads}, slstm={"num_heads": heads}
  )
  assert jax.tree.structure({"params": params}) == jax.tree.structure(
    jax.eval_shape(lambda: ours.init(jax.random.key(0), x))
  )
  # a run's leaves carry a leading axis, which the layer converters keep
  back = convert.to_xlstm_mlstm_layer(params["mlstm_2"]["block"]["mlstm"])
  for key, value in back.items():
    np.testing.assert_array_equal(value, state[f"blocks.2.xlstm.{key}"][None])
  _close(jax.jit(ours.apply)({"params": params}, x), theirs(torch.tensor(x)).detach())


# ---- the converters ------------------------------------------------------------------------------
@pytest.mark.parametrize("bias, conv", [(False, 4), (True, 4), (True, 0)])
def test_converters_are_inverse(bias, conv):
  x = _rand(5, 2, 3, 16)
  params = _random_params(MLSTM(16, num_heads=4, use_bias=bias, conv1d_kernel_size=conv), x)
  state = convert.to_xlstm_mlstm_layer(params)
  assert ("proj_up.bias" in state) == bias and ("conv1d.conv.weight" in state) == bool(conv)
  back = convert.from_xlstm_mlstm_layer(state)
  assert jax.tree.structure(back) == jax.tree.structure(params["params"])
  for a, b in zip(jax.tree.leaves(params["params"]), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
  again = convert.to_xlstm_mlstm_layer(back)
  assert set(again) == set(state)
  for key, value in state.items():
    np.testing.assert_array_equal(again[key], value)
  with pytest.raises(ValueError, match="missing 'xlstm.proj_up.weight'"):
    convert.from_xlstm_mlstm_layer({}, prefix="xlstm.")
  with pytest.raises(ValueError, match="need num_heads_slstm"):
    convert.from_xlstm_block_stack({}, num_blocks=2, slstm_at=[0])


# ---- NNX --------------------------------------------------------------------------------------
def test_the_nnx_cell_runs_the_linen_cells_math():
  """`lnnx.MLSTMCell`: parameters under the Linen names, the same outputs through
  `lnnx.RNN` (the chunkwise form), `nnx.RNN` (its step, from its empty state) and the
  Linen layer."""
  from flax import nnx

  from flaxlstm import nnx as lnnx

  x = _rand(30, 3, 7, 3)
  cell = lnnx.MLSTMCell(3, 8, num_heads=2, chunk_size=4, rngs=nnx.Rngs(0))
  cell.gate_kernel[...] = jnp.asarray(_rand(31, *cell.gate_kernel.shape, scale=0.3))
  assert set(nnx.state(cell, nnx.Param)) == {"input_kernel", "gate_kernel", "gate_bias"}
  ours = nnx.jit(lambda rnn, x: rnn(x))(lnnx.RNN(cell), x)
  _close(ours, nnx.jit(lambda rnn, x: rnn(x))(nnx.RNN(cell), x))
  linen = flaxlstm.RNN(MLSTMCell(8, num_heads=2, chunk_size=4))
  _close(ours, jax.jit(linen.apply)({"params": {"cell": cell.params()}}, x))


def test_the_layer_streams_in_pieces_as_one_call():
  """`MLSTM(return_carry=True)`: a sequence fed in pieces, each from the last one's
  `MLSTMLayerCarry` (the cell's state and the convolution's last inputs), gives the outputs
  and final state of one call; with ragged lengths the carry is each sequence's own."""
  layer = MLSTM(8, num_heads=2, return_carry=True, implementation="chunkwise", chunk_size=4)
  x = jax.random.normal(jax.random.key(0), (2, 13, 8))
  params = jax.jit(layer.init)(jax.random.key(1), x)  # eager init: seconds
  params = jax.tree.map(lambda a: a + 0.05 * jnp.cos(jnp.arange(a.size)).reshape(a.shape), params)
  apply = jax.jit(layer.apply)
  whole_carry, whole = apply(params, x)
  carry, pieces = None, []
  for lo, hi in ((0, 5), (5, 6), (6, 13)):  # a piece of one step too (shorter than the conv)
    carry, y = apply(params, x[:, lo:hi], initial_carry=carry)
    pieces.append(y)
  assert isinstance(carry, MLSTMLayerCarry) and carry.conv.shape == (2, 3, 64)
  np.testing.assert_allclose(np.concatenate(pieces, 1), whole, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(whole_carry)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Ragged: the second sequence ends at 9; its carry then continues as if cut there.
  lengths = jnp.array([13, 9])
  ragged, _ = apply(params, x, seq_lengths=lengths)
  cut, _ = apply(params, x[1:, :9])
  for a, b in zip(jax.tree.leaves(ragged), jax.tree.leaves(cut)):
    np.testing.assert_allclose(a[1:], b, rtol=1e-5, atol=1e-6)
