"""The LSTM's fused time loop: one `jax.custom_vjp` per layer with cuDNN's backward scheme.

`LSTMCell` offers it as `"fused"` (flaxlstm/nn/cells/lstm.py) for float32 cells with the
standard sigmoid/tanh gates and no layer norm or projection (`fused_supported`); `"auto"`
picks it there. The forward scan saves the gate activations and the carries; the backward
pass is a reverse scan that carries only `(dc, dh)`, does one `(B, 4H) @ (4H, H)` matmul per
step and stores the gate pre-activation gradients `dz`; then `dU`, `dW`, `db` and `dx` are
each ONE large matmul (or sum) over all `T*B` rows. Autodiff of the scan (scan.py) instead
accumulates `dU` with T small matmuls and carries an `(H, 4H)` accumulator through the loop.

Further levers, each measured (the figures live in BENCHMARKS.md, "Where flaxlstm's step
time goes" and the sessions after it; `experiments/benchmarks/train_step.py` and
`ab_kernels.py` re-measure them): all four gate nonlinearities are one sigmoid over the
fused `(B, 4H)` block (`tanh(z) = 2 sigmoid(2z) - 1`); weight gradients avoid XLA:CPU's slow
transposed-LHS dot (`_matmul_tn`); narrow inputs fold the projection into the per-step
matmul instead of a hoisted `(T*B, D) @ (D, 4H)` (`_inloop_projection`), wide inputs keep
it hoisted; wide layers run the time loop feature-major, state `(H, B)`, so that each
step's matmul has the weight as its left operand (`_feature_major`). Buffers are reused in
place: the saved gate activations overwrite a hoisted projection, and the backward's gate
gradients overwrite the saved activations; stacked scan outputs would instead be fresh,
zero-filled memory on every call.

Under `jax.vmap` over a population of models, narrow layers run as one population kernel
(`custom_vmap` rules, below). It is tested equal to the autodiff loop, outputs, carries and
gradients, with step masks, recurrent dropout and remat (tests/nn/test_kernels.py).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from flaxlstm.nn.cells.base import like
from flaxlstm.nn.cells.lstm import LSTMCarry
from flaxlstm.nn.kernels.registry import Call, register
from flaxlstm.nn.kernels.scan import TimeMajor, chunked

Array = jax.Array


# ---- fused path: custom VJP with a cuDNN-style backward -------------------------------------
def _gate_consts(n: int, dtype) -> tuple[Array, Array]:
  """Per-unit `(scale, shift)` so that `scale * sigmoid(scale * z) - shift` is sigmoid on the
  i, f, o blocks and `tanh` on the g block (`tanh(z) = 2 sigmoid(2z) - 1`): one transcendental
  over the whole `(B, 4H)` block instead of four sliced activations."""
  one, two = jnp.ones((n,), dtype), jnp.full((n,), 2, dtype)
  scale = jnp.concatenate([one, one, two, one])
  return scale, scale - 1


def _split4(a: Array, axis: int) -> tuple[Array, Array, Array, Array]:
  i, f, g, o = jnp.split(a, 4, axis=axis)
  return i, f, g, o


def _swap(a: Array) -> Array:
  """Swaps the last two axes: batch-major `(..., B, F)` <-> feature-major `(..., F, B)`."""
  return jnp.swapaxes(a, -1, -2)


def _same(a: Array) -> Array:
  return a


def _matmul_tn(a: Array, b: Array) -> Array:
  """`a.T @ b` for `a` `(N, K)`, `b` `(N, M)`: a weight gradient summed over all N rows.

  XLA's CPU backend runs a dot whose *left* operand contracts its leading dimension on a
  generic path at about half the speed of its tuned GEMM; transposing `a` explicitly (the
  barrier keeps XLA from folding the transpose back into the dot) costs one copy of `a` and
  gets the fast GEMM (BENCHMARKS.md, session 2's profile)."""
  return jax.lax.optimization_barrier(a.T) @ b


def _matmul_tn3(a: Array, b: Array) -> Array:
  """`_matmul_tn` over rows given as two axes: `a (T, B, K)`, `b (T, B, M)` -> `(K, M)`,
  summed over every (t, b) (see `_fused_backward` for why the axes stay apart)."""
  at = jax.lax.optimization_barrier(jnp.transpose(a, (2, 0, 1)))  # (K, T, B)
  return jnp.einsum("ktb,tbm->km", at, b)


def _unbroadcast(a: Array, shape: tuple[int, ...]) -> Array:
  """Sums `a` down to `shape` (the cotangent of an operand that was broadcast to `a`)."""
  lead = a.ndim - len(shape)
  a = a.sum(axis=tuple(range(lead))) if lead else a
  axes = tuple(i for i, n in enumerate(shape) if n == 1 and a.shape[i] != 1)
  return a.sum(axis=axes, keepdims=True) if axes else a


def _read_slot(buf: Array, t: Array, axis: int = 0) -> Array:
  """`buf[t]` for a scan step that then overwrites slot `t` of the carried `buf` in place.

  Read directly, XLA fuses the slice into each consumer of the slot. When one of those (the
  carry `dc` here) is not ordered before the write, XLA keeps the in-place update legal by
  copying the whole buffer on every step (two full copies of the saved activations).
  Reading through a `cond` gives one materialized slot that every consumer uses, and the
  write depends on it. XLA does not fuse across a `cond`. Its predicate is always true, but
  XLA cannot prove that, so it keeps the `cond`. `tests/nn/test_kernels.py` checks that no
  per-step copy is left."""
  return jax.lax.cond(
    t >= 0,
    lambda b: jax.lax.dynamic_index_in_dim(b, t, axis=axis, keepdims=False),
    lambda b: jnp.zeros(b.shape[:axis] + b.shape[axis + 1 :], b.dtype),
    buf,
  )


def _gates_forward(z: Array, c: Array, scale: Array, shift: Array, axis: int):
  """One step's gate math from the pre-activations `z`: `(activations, c_new, h_new)`."""
  a = scale * jax.nn.sigmoid(scale * z) - shift
  i, f, g, o = _split4(a, axis)
  c_new = f * c + i * g
  return a, c_new, o * jnp.tanh(c_new)


def _gates_backward(a, c, cp, gh, gc, scale, shift, axis: int):
  """One step's backward through the gate math: `(dz, dcn)`, the gradients of the
  pre-activations and of the new cell state, from the saved activations `a`, the new and
  previous cell states `c`, `cp` and the incoming `gh = dL/dh_new`, `gc = dL/dc_new`."""
  i, f, g, o = _split4(a, axis)
  tc = jnp.tanh(c)
  dcn = gc + gh * o * (1 - tc * tc)
  da = jnp.concatenate([dcn * g, dcn * cp, dcn * i, gh * tc], axis=axis)
  sig = (a + shift) / scale  # the sigmoid before scaling, for d(activation)/dz
  return da * (scale * scale) * sig * (1 - sig), dcn


def _inloop_projection(d: int, h: int) -> bool:
  """Whether to fold the input projection into the per-step matmul (`[x_t, h] @ [W; U]`).

  For narrow inputs (a few features, the usual time-series case) the hoisted `(T*B, D) @
  (D, 4H)` matmul is a poor GEMM (XLA's CPU GEMM is slow for tiny K) and its `(T, B, 4H)`
  result costs more memory traffic than the matmul: widening each step's K from H to D+H
  is nearly free. Wide inputs keep the hoisted projection, one large efficient GEMM."""
  return 4 * d <= h


# Layers at least this wide run their time loop feature-major (see `_feature_major`).
_FEATURE_MAJOR_MIN_UNITS = 512


def _feature_major(h: int) -> bool:
  """Whether the time loop keeps its state feature-major, `(H, B)`, instead of `(B, H)`.

  Feature-major, each step's matmul has the weight as its *left* operand (`U^T @ h`), which
  XLA:CPU's GEMM packs more cheaply: wide layers' per-step dots and whole train steps run
  faster that way, narrow layers' slower (`experiments/benchmarks/step_dot_layout.py`,
  BENCHMARKS.md "Session 2 runs, after the feature-major change"). The price is a transpose
  of the inputs, outputs and gate gradients at the layer boundary."""
  return h >= _FEATURE_MAJOR_MIN_UNITS


def _fused_forward(w, b, u, c0, h0, x, mask, h_mask, unroll, save):
  """Forward scan. Returns `((c_T, h_T), ys)` and, with `save`, the residuals
  `(acts, cs, hs)` in the loop's layout: gate activations `(T, B, 4H)` and the carry
  `(c, h)` *after* each step (feature-major: `(T, 4H, B)`, `(T, H, B)`)."""
  n4 = u.shape[-1]
  fm = _feature_major(u.shape[0])
  tr, axis = (_swap, -2) if fm else (_same, -1)  # to/from the loop layout; the gate axis
  scale, shift = (v[:, None] if fm else v for v in _gate_consts(n4 // 4, x.dtype))
  inloop = _inloop_projection(x.shape[-1], u.shape[0])
  if inloop:
    xs = tr(x)
    if fm:  # (4H, D + H): one matmul per step for both sides
      # Transposing the two parts, then joining them, is a 4x cheaper copy on XLA:CPU than
      # transposing the joined matrix (a strided loop instead of its tuned transpose).
      wu_t = jax.lax.optimization_barrier(jnp.concatenate([w.T, u.T], axis=1))
      b_col = b[:, None]
      z_of = lambda x_t, h_in: wu_t @ jnp.concatenate([x_t, h_in], axis=0) + b_col
    else:
      wu = jnp.concatenate([w, u])  # (D + H, 4H): one matmul per step for both sides
      z_of = lambda x_t, h_in: jnp.concatenate([x_t, h_in], axis=-1) @ wu + b
  else:
    xs = tr(x @ w + b)  # the hoisted input projection: one large matmul
    if fm:
      u_t = jax.lax.optimization_barrier(u.T)  # transposed once, not folded into each dot
      z_of = lambda zx, h_in: zx + u_t @ h_in
    else:
      z_of = lambda zx, h_in: zx + h_in @ u
  hm = None if h_mask is None else tr(h_mask)
  ms = None if mask is None else tr(mask)
  # Saving with a hoisted projection, each step overwrites its slot of the projection with
  # its gate activations (same shape, read just before): the saved `acts` need no buffer of
  # their own, which a scan output would zero-fill first (a full extra pass over memory).
  in_place = save and not inloop
  steps = jnp.arange(x.shape[0]) if in_place else None

  def step(carry, inp):
    c, h, buf = carry
    x_t, m, t = inp
    if in_place:
      x_t = jax.lax.dynamic_index_in_dim(buf, t, keepdims=False)
    z = z_of(x_t, h if hm is None else h * hm)
    a, c_new, h_new = _gates_forward(z, c, scale, shift, axis)
    y = h_new
    if m is not None:
      c_new = jnp.where(m, c_new, c)
      h_new = jnp.where(m, h_new, h)
      y = jnp.where(m, y, jnp.zeros_like(y))
    if in_place:
      buf = jax.lax.dynamic_update_index_in_dim(buf, a, t, 0)
    out = (y, None if in_place else a, c_new, h_new if m is not None else None) if save else y
    return (c_new, h_new, buf), out

  carry0 = (tr(c0), tr(h0), xs if in_place else None)
  (c, h, buf), out = jax.lax.scan(
    step, carry0, (None if in_place else xs, ms, steps), unroll=unroll
  )
  if not save:
    return (tr(c), tr(h)), tr(out), None
  ys, acts, cs, hs = out
  acts = buf if in_place else acts
  # Without a step mask the carries h are the outputs (batch-major: the same buffer).
  return (tr(c), tr(h)), tr(ys), (acts, cs, ys if hs is None else hs)


def _fused_backward(w, u, c0, h0, x, mask, h_mask, res, cts, unroll):
  acts, cs, hs = res
  (dc_t, dh_t), dys = cts
  n4 = u.shape[-1]
  fm = _feature_major(u.shape[0])
  tr, axis = (_swap, -2) if fm else (_same, -1)
  # Each step needs the carry it started from: the saved carries shifted by one step. The
  # loop reads c's from `cs` itself (no shifted copy); h's shifted copy feeds `du` anyway.
  c_init = tr(c0)
  h_prev = jnp.concatenate([tr(h0)[None], hs[:-1]])
  scale, shift = (v[:, None] if fm else v for v in _gate_consts(n4 // 4, acts.dtype))
  if fm:
    dh_of = lambda dz: u @ dz  # (H, 4H) @ (4H, B): the weight on the left again
  else:
    u_t = u.T  # transposed once, outside the loop
    dh_of = lambda dz: dz @ u_t
  hm = None if h_mask is None else tr(h_mask)
  ms = None if mask is None else tr(mask)

  # Each step overwrites its slot of `acts`, dead once read, with its gate gradients: the
  # stacked `dz` needs no zero-filled buffer of its own (see `_fused_forward`).
  def step(carry, inp):
    dc, dh, dhm, buf = carry
    dy, c, hp, m, t = inp
    cp = jnp.where(
      t > 0, jax.lax.dynamic_index_in_dim(cs, jnp.maximum(t - 1, 0), keepdims=False), c_init
    )
    a = _read_slot(buf, t)
    gh, gc = dh + dy, dc
    if m is not None:  # masked steps passed the carry through and output 0
      gh = jnp.where(m, gh, jnp.zeros_like(gh))
      gc = jnp.where(m, gc, jnp.zeros_like(gc))
    dz, dcn = _gates_backward(a, c, cp, gh, gc, scale, shift, axis)
    dh_prev = dh_of(dz)
    if hm is not None:
      dhm = dhm + hp * dh_prev
      dh_prev = dh_prev * hm
    dc_prev = dcn * _split4(a, axis)[1]
    if m is not None:
      dh_prev = dh_prev + jnp.where(m, jnp.zeros_like(dh), dh)
      dc_prev = dc_prev + jnp.where(m, jnp.zeros_like(dc), dc)
    buf = jax.lax.dynamic_update_index_in_dim(buf, dz, t, 0)
    return (dc_prev, dh_prev, dhm, buf), None

  dhm0 = None if hm is None else jnp.zeros(h_prev.shape[1:], h_prev.dtype)
  (dc0, dh0, dhm, dzs), _ = jax.lax.scan(
    step,
    (tr(dc_t), tr(dh_t), dhm0, acts),
    (tr(dys), cs, h_prev if hm is not None else None, ms, jnp.arange(acts.shape[0])),
    reverse=True,
    unroll=unroll,
  )
  # cuDNN's scheme: the weight gradients of all time steps are single large matmuls, over
  # the gate gradients' `T x B` rows. Contracted over (t, b) as two axes, not reshaped to
  # `(T*B, 4H)`: merging T with a batch axis split over devices would make XLA gather the
  # whole batch to every device (and each compute the full weight gradient); kept apart,
  # each device sums its own rows and one all-reduce adds them. On one device the two
  # axes are contiguous, so the dot is the same GEMM.
  dz3 = tr(dzs)  # (T, B, 4H)
  h_in = h_prev if hm is None else h_prev * hm
  if fm:  # (H, T, B) x (T, B, 4H): the one transpose copy gives a plain NN GEMM
    du = jnp.einsum("htb,tbg->hg", jnp.transpose(h_in, (1, 0, 2)), dz3)
  else:
    du = _matmul_tn3(h_in, dz3)
  dw = _matmul_tn3(x, dz3)
  db = dz3.sum((0, 1))
  dx = jnp.einsum("tbg,dg->tbd", dz3, w)
  if dhm is not None:
    dhm = _unbroadcast(tr(dhm), h_mask.shape).astype(h_mask.dtype)
  return dw, db, du, tr(dc0), tr(dh0), dx, None, dhm


# ---- populations: P members' layers as one kernel ------------------------------------------
# `jax.vmap` over a population of models (seeds, hyperparameters: train/population.py) would
# batch the kernel above mechanically: its scans' time-major stacked inputs and outputs get
# the member axis moved inside them, each costing a full transposed copy of a `(T, B, 4H)`
# buffer per member, and the weight gradients become batched dots with a transposed
# operand, which made one member's gradient far slower than a single call
# (experiments/benchmarks/population_step.py, BENCHMARKS.md "Populations"). The rules below
# (`jax.custom_batching.custom_vmap`) run the members as one kernel instead, in the layout a
# vmapped argument arrives in, member-major `(P, T, B, .)`: every per-member array is
# exactly the single kernel's (batch-major) layout, the time loop carries its buffers and
# reads and writes slot `t` of axis 1 in place (no stacked scan inputs or outputs, so
# nothing is transposed), per-step matmuls are `(P, B, K) @ (P, K, N)` batched GEMMs and the
# weight gradients batched NN GEMMs over all `T*B` rows.


def _at(buf: Array, t: Array) -> Array:
  return jax.lax.dynamic_index_in_dim(buf, t, axis=1, keepdims=False)


def _put(buf: Array, value: Array, t: Array) -> Array:
  return jax.lax.dynamic_update_index_in_dim(buf, value, t, 1)


def _population_forward(w, b, u, c0, h0, x, h_mask, unroll, save):
  """`_fused_forward` of P members with narrow inputs (the in-loop projection) and no step
  mask: each argument has a leading member axis (`w (P, D, 4H)`, `x (P, T, B, D)`,
  `c0 (P, B, H)`, ...); the residuals are `(acts (P, T, B, 4H), cs, hs (P, T, B, H))`, per
  member the batch-major layout."""
  n_pop, t_len, batch, _ = x.shape
  n4 = u.shape[-1]
  scale, shift = _gate_consts(n4 // 4, x.dtype)
  bias = b[:, None, :]  # broadcast over each member's batch
  wu = jnp.concatenate([w, u], axis=1)  # (P, D + H, 4H): one matmul per step for both sides
  acts = jnp.zeros((n_pop, t_len, batch, n4), x.dtype) if save else None
  ys = jnp.zeros((n_pop, t_len, batch, u.shape[-2]), x.dtype)
  cs = jnp.zeros_like(ys) if save else None

  def step(carry, t):
    c, h, buf, ys, cs = carry
    h_in = h if h_mask is None else h * h_mask
    z = jnp.matmul(jnp.concatenate([_at(x, t), h_in], -1), wu) + bias
    a, c, h = _gates_forward(z, c, scale, shift, -1)
    if save:
      buf, cs = _put(buf, a, t), _put(cs, c, t)
    return (c, h, buf, _put(ys, h, t), cs), None

  (c, h, acts, ys, cs), _ = jax.lax.scan(
    step, (c0, h0, acts, ys, cs), jnp.arange(t_len), unroll=unroll
  )
  return (c, h), ys, ((acts, cs, ys) if save else None)


def _population_backward(w, u, c0, h0, x, h_mask, res, cts, unroll):
  """`_fused_backward` of P members (see `_population_forward` for the layout)."""
  acts, cs, hs = res
  (dc_t, dh_t), dys = cts
  n_pop, t_len = x.shape[:2]
  n4 = u.shape[-1]
  scale, shift = _gate_consts(n4 // 4, acts.dtype)
  u_t = jnp.swapaxes(u, 1, 2)  # (P, 4H, H), transposed once outside the loop

  def step(carry, t):
    dc, dh, dhm, buf = carry
    prev = jnp.maximum(t - 1, 0)
    cp = jnp.where(t > 0, _at(cs, prev), c0)
    a = _read_slot(buf, t, axis=1)
    dz, dcn = _gates_backward(a, _at(cs, t), cp, dh + _at(dys, t), dc, scale, shift, -1)
    dh_prev = jnp.matmul(dz, u_t)
    if h_mask is not None:
      dhm = dhm + jnp.where(t > 0, _at(hs, prev), h0) * dh_prev
      dh_prev = dh_prev * h_mask
    return (dcn * _split4(a, -1)[1], dh_prev, dhm, _put(buf, dz, t)), None

  dhm0 = None if h_mask is None else jnp.zeros(h0.shape, h0.dtype)
  (dc0, dh0, dhm, dzs), _ = jax.lax.scan(
    step, (dc_t, dh_t, dhm0, acts), jnp.arange(t_len), reverse=True, unroll=unroll
  )
  dz2 = dzs.reshape(n_pop, -1, n4)  # (P, T*B, 4H): member-major, so a free reshape
  h_in = jnp.concatenate([h0[:, None], hs[:, :-1]], axis=1)
  if h_mask is not None:
    h_in = h_in * h_mask[:, None]
  # a^T @ b per member, with the transpose materialized (see `_matmul_tn`).
  tn = lambda a, b: jnp.matmul(jax.lax.optimization_barrier(jnp.swapaxes(a, 1, 2)), b)
  du = tn(h_in.reshape(n_pop, -1, h_in.shape[-1]), dz2)
  dw = tn(x.reshape(n_pop, -1, x.shape[-1]), dz2)
  dx = jnp.matmul(dz2, jnp.swapaxes(w, 1, 2)).reshape(x.shape)
  if dhm is not None:
    dhm = jax.vmap(lambda g: _unbroadcast(g, h_mask.shape[1:]))(dhm).astype(h_mask.dtype)
  return dw, dz2.sum(1), du, dc0, dh0, dx, None, dhm


def _population_kernel(w: Array, u: Array, mask: Array | None) -> bool:
  """Whether a vmapped call runs the population kernel; otherwise JAX's default batching.

  Only for narrow inputs (the in-loop projection: the per-step matmul is the whole cost, and
  the member-major layout beats JAX's batching there); with a hoisted projection JAX's own
  batching measured faster (`experiments/benchmarks/population_step.py --shape seed`). Not
  with a step mask (masks are for padded batches, not populations) and not for
  feature-major layers: both rules must agree on the residuals' layout, and the
  population kernel's is batch-major."""
  h = u.shape[-2]
  return mask is None and _inloop_projection(w.shape[-2], h) and not _feature_major(h)


def _as_batched(axis_size: int, in_batched, args):
  """Every array of `args` with a leading member axis (unbatched ones broadcast)."""
  return jax.tree.map(
    lambda a, batched: a if batched else jnp.broadcast_to(a, (axis_size,) + a.shape),
    tuple(args),
    tuple(in_batched),
  )


def _default_vmap(fn, axis_size: int, in_batched, args):
  """JAX's own batching of `fn`, as a `custom_vmap` rule's result."""
  in_axes = jax.tree.map(lambda batched: 0 if batched else None, tuple(in_batched))
  out = jax.vmap(fn, in_axes=tuple(in_axes), axis_size=axis_size)(*args)
  return out, jax.tree.map(lambda _: True, out)


@functools.lru_cache(maxsize=None)
def _forward_op(unroll: int, save: bool, population_rule: bool) -> Any:
  """`_fused_forward` with the population rule (see `_population_kernel`);
  `population_rule=False` leaves every vmapped call to JAX's default batching (an A/B)."""

  def single(w, b, u, c0, h0, x, mask, h_mask):
    return _fused_forward(w, b, u, c0, h0, x, mask, h_mask, unroll, save)

  op = jax.custom_batching.custom_vmap(single)

  @op.def_vmap
  def rule(axis_size, in_batched, *args):
    if not population_rule or not _population_kernel(args[0], args[2], args[6]):
      return _default_vmap(single, axis_size, in_batched, args)
    w, b, u, c0, h0, x, _, h_mask = _as_batched(axis_size, in_batched, args)
    out = _population_forward(w, b, u, c0, h0, x, h_mask, unroll, save)
    return out, jax.tree.map(lambda _: True, out)

  return op


@functools.lru_cache(maxsize=None)
def _backward_op(unroll: int, population_rule: bool) -> Any:
  """`_fused_backward` with the population rule (see `_population_kernel`). Residuals
  that are not batched (a vmap over the cotangents alone) take JAX's default batching."""

  def single(w, u, c0, h0, x, mask, h_mask, res, cts):
    return _fused_backward(w, u, c0, h0, x, mask, h_mask, res, cts, unroll)

  op = jax.custom_batching.custom_vmap(single)

  @op.def_vmap
  def rule(axis_size, in_batched, *args):
    batched_res = all(jax.tree.leaves(in_batched[7]))
    if not population_rule or not _population_kernel(args[0], args[1], args[5]) or not batched_res:
      return _default_vmap(single, axis_size, in_batched, args)
    w, u, c0, h0, x, _, h_mask, res, cts = _as_batched(axis_size, in_batched, args)
    out = _population_backward(w, u, c0, h0, x, h_mask, res, cts, unroll)
    return out, jax.tree.map(lambda _: True, out)

  return op


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _fused_recurrence(w, b, u, c0, h0, x, mask, h_mask, unroll, rule):
  carry, ys, _ = _forward_op(unroll, False, rule)(w, b, u, c0, h0, x, mask, h_mask)
  return carry, ys


def _fused_fwd(w, b, u, c0, h0, x, mask, h_mask, unroll, rule):
  carry, ys, res = _forward_op(unroll, True, rule)(w, b, u, c0, h0, x, mask, h_mask)
  return (carry, ys), (w, u, c0, h0, x, mask, h_mask, res)


def _fused_bwd(unroll, rule, saved, cts):
  return _backward_op(unroll, rule)(*saved, cts)


_fused_recurrence.defvjp(_fused_fwd, _fused_bwd)


# ---- the kernel --------------------------------------------------------------------------------
def fused_supported(cell: Any) -> bool:
  """Whether `cell`'s configuration runs on the fused loop: an `LSTMCell` in float32 with
  the standard gates, no layer norm and no projection."""
  return (
    not getattr(cell, "layer_norm", True)
    and not cell.proj_features
    and cell.gate_fn is jax.nn.sigmoid
    and cell.activation_fn is jnp.tanh
    and jnp.dtype(cell.compute_dtype) == jnp.float32
    and jnp.dtype(cell.state_dtype) == jnp.float32
  )


class FusedLSTM(TimeMajor):
  """The fused custom-VJP loop (the module docstring). `population_rule=False` runs a
  vmapped call with JAX's default batching instead of the population kernel: an A/B for
  `experiments/benchmarks/population_step.py`, registered there under a name of its own."""

  def __init__(self, name: str = "fused", population_rule: bool = True):
    self.name, self.population_rule = name, population_rule

  @property
  def offered_as(self) -> str:
    return "fused"

  def unsupported(self, cell: Any, call: Call) -> str | None:
    del call  # masks, recurrent dropout, remat and vmap are all supported
    if fused_supported(cell):
      return None
    return (
      "the fused LSTM path needs float32, no layer_norm, no proj_features and the default "
      "sigmoid/tanh gates"
    )

  def recurrence(self, cell, p, carry, x, *, mask=None, h_mask=None, unroll=1, remat=False):
    # jnp.asarray: parameters may be NumPy arrays (a restored checkpoint, `device_get`).
    w, u, b = (jnp.asarray(p[k], jnp.float32) for k in ("input_kernel", "recurrent_kernel", "bias"))
    if cell.forget_bias:  # what `cell.project` adds; folded into the bias once
      n = cell.features
      b = b.at[n : 2 * n].add(cell.forget_bias)

    def loop(carry, x_chunk, m_chunk):
      c, h = carry
      (c, h), ys = _fused_recurrence(
        w,
        b,
        u,
        c.astype(jnp.float32),
        h.astype(jnp.float32),
        x_chunk.astype(jnp.float32),
        m_chunk,
        h_mask,
        unroll,
        self.population_rule,
      )
      return like(carry, LSTMCarry(c, h)), ys

    return chunked(loop, carry, x, mask, remat)


FUSED = register(FusedLSTM())
