"""The sLSTM's fused time loop: one `jax.custom_vjp` per layer (kernel "slstm_fused",
offered by `SLSTMCell` as "fused").

The scheme is the LSTM kernel's (lstm_fused.py). The forward scan saves each step's gates
and the states it read (the states after it are two multiply-adds away). The backward is a
reverse scan that carries only the state cotangents `(dc, dn, dm, dh)`; per step it runs
the gate math's derivative, written out from the saved gates (`_pointwise_vjp`: no gate is
computed twice, and the stabilizer's gradient goes where autodiff's does), and one
head-batched `R^T dz` matmul, and stores `dz`. The loop runs head-major (`_to_heads`), so that
no step transposes anything, and its pre-activations and their gradient `dz` are stored
heads first, `(NH, T, B, 4 DH)`: each head's rows in (step, sample) order, as a head-wise
projection's batched matmul writes and reads them (`run_heads`, for the `SLSTM` layer). The
recurrent kernel's gradient is then ONE matmul per head over all `T*B` rows, outside the
loop, instead of T small matmuls accumulated in the loop's carry, and the input side's
gradient is the stored `dz` itself (the projection, outside the kernel, is differentiated by
JAX). It runs float32 cells without a gate soft-cap; the
autodiff loop (scan.py) runs every other configuration and is the reference it is tested
against (tests/nn/test_slstm.py: outputs, final carries and gradients, ragged lengths,
reverse, remat, recurrent dropout).
`experiments/benchmarks/slstm_step.py` measures it (BENCHMARKS.md).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from flaxlstm.nn.cells.base import like
from flaxlstm.nn.cells.slstm import SLSTMCarry, SLSTMCell
from flaxlstm.nn.kernels.registry import Call, register
from flaxlstm.nn.kernels.scan import TimeMajor, chunked, step_mask

Array = jax.Array


# The loop runs head-major: states `(NH, B, DH)` and pre-activations `(NH, B, 4 DH)` (each
# head's [i | f | z | o] side by side), so that each step's recurrent matmul is one batched
# GEMM over the heads, `(NH, B, DH) @ (NH, DH, 4 DH)`, with no transpose inside the loop; a
# caller's batch-major, gate-major arrays are transposed once at the kernel's boundary
# (`recurrence`), where the `SLSTM` layer's projections write head-major ones (`run_heads`).
def _to_heads(a: Array, nh: int) -> Array:
  """`(..., B, H)` -> `(..., NH, B, DH)`."""
  lead, b = a.shape[:-2], a.shape[-2]
  return jnp.moveaxis(a.reshape(lead + (b, nh, -1)), -2, -3)


def _from_heads(a: Array) -> Array:
  """`(..., NH, B, DH)` -> `(..., B, H)`."""
  a = jnp.moveaxis(a, -3, -2)
  return a.reshape(a.shape[:-2] + (-1,))


def _gates_to_heads(z: Array, nh: int) -> Array:
  """Gate-major `(T, B, 4H)` -> head-major `(NH, T, B, 4 DH)`."""
  t, b = z.shape[:2]
  return jnp.transpose(z.reshape(t, b, 4, nh, -1), (3, 0, 1, 2, 4)).reshape(nh, t, b, -1)


# Each gate's block of step `t` is read by a `dynamic_slice` of its own, and the gates are
# saved as four arrays, not one `(..., 4 DH)` block split after the read: XLA:CPU emits a
# fusion that takes two static slices of one dynamic slice an order of magnitude slower
# (element by element) than one that reads two dynamic slices, and every gate fusion of
# both loops did that (experiments/benchmarks/slstm_step.py measures the step).
def _step_gates(zx: Array, t: Array) -> tuple[Array, ...]:
  """Step `t`'s four pre-activation blocks `(NH, B, DH)` of `zx (NH, T, B, 4 DH)`."""
  nh, _, b, g = zx.shape
  dh = g // 4
  return tuple(
    jax.lax.dynamic_slice(zx, (0, t, 0, k * dh), (nh, 1, b, dh)).reshape(nh, b, dh)
    for k in range(4)
  )


def _log_sigmoid(x: Array) -> Array:
  """`log sigma(x) = min(x, 0) - log(1 + exp(-|x|))`, as `jax.nn.log_sigmoid` but with `log`
  where it has `log1p`: XLA:CPU's `log1p` is several times slower than `log`, and this runs
  in every step of the loop (BENCHMARKS.md, "sLSTM"). The rounding of `1 + u` costs at most
  ~6e-8 absolute, below float32's resolution of the `m` it is added to."""
  return jnp.minimum(x, 0.0) - jnp.log(1.0 + jnp.exp(-jnp.abs(x)))


def _pointwise(z, c: Array, n: Array, m: Array, exp_forget: bool):
  """The gate math of one step (`SLSTMCell.activate`, float32) on the head-major
  pre-activations `z = (i~, f~, z~, o~)`, `(..., DH)` each: the new `(c, n, m, h)`, and what
  its derivative reads (`_pointwise_vjp`): the gates `(i', f', tanh z, sigma(o))`,
  `d log f / d f~`, and whether `m` came from the input gate."""
  ii, ff, zz, oo = z
  log_fm = (ff if exp_forget else _log_sigmoid(ff)) + m
  from_input = (n == 0) | (ii >= log_fm)
  m_new = jnp.where(from_input, ii, log_fm)
  i_gate = jnp.minimum(jnp.exp(ii - m_new), 1.0)
  f_gate = jnp.minimum(jnp.exp(log_fm - m_new), 1.0)
  tz, og = jnp.tanh(zz), jax.nn.sigmoid(oo)
  c_new = f_gate * c + i_gate * tz
  n_new = f_gate * n + i_gate
  dlog_f = jnp.ones_like(ff) if exp_forget else jax.nn.sigmoid(-ff)
  saved = ((i_gate, f_gate, tz, og), dlog_f, from_input)
  return (c_new, n_new, m_new, og * c_new / n_new), saved


def _pointwise_vjp(saved, c_p, n_p, c, n, cts):
  """The derivative of `_pointwise` from what its forward saved, the states before and
  after the step and the cotangents `(dc, dn, dm, dh)` of the new state: `(dz, dc_p, dn_p,
  dm_p)`. Written out rather than `jax.vjp` of the step, which would recompute every gate
  (the transcendentals are most of a step's cost).

  The stabilizer cancels out of `h`: `i' = exp(i~ - m)`, `f' = exp(log f + m_p - m)`, and
  `m` is the larger of their exponents (or `i~` while `n_p = 0`), so the exponent `m` came
  from gets its gradient back through `m` (the clamps `min(., 1)` only bind, with zero
  gradient, where `n_p = 0` makes `f'`'s exponent positive)."""
  (ig, fg, tz, og), dlog_f, from_input = saved
  dc, dn, dm, dh = cts
  # n > 0 after every step (the backward recomputes a masked-off step's n as if it ran,
  # and scores it with zero cotangents); the guard keeps 0 * (1 / n) finite regardless.
  inv_n = 1.0 / jnp.where(n == 0, 1.0, n)
  d_og = dh * c * inv_n
  dc = dc + dh * og * inv_n
  dn = dn - dh * og * c * inv_n * inv_n
  d_ig = dc * tz + dn
  d_fg = dc * c_p + dn * n_p
  du = d_ig * ig  # the input gate's exponent
  dv = jnp.where(fg < 1.0, d_fg * fg, 0.0)  # the forget gate's (zero where clamped)
  dm = dm - du - dv  # m = the exponent it came from
  d_ii = du + jnp.where(from_input, dm, 0.0)
  d_logfm = dv + jnp.where(from_input, 0.0, dm)
  dz = jnp.concatenate(
    [d_ii, d_logfm * dlog_f, dc * ig * (1.0 - tz * tz), d_og * og * (1.0 - og)], axis=-1
  )
  return dz, dc * fg, dn * fg, d_logfm


def _forward(r, carry0, zx, mask, h_mask, unroll: int, exp_forget: bool, save: bool):
  """The forward scan, head-major: `zx (NH, T, B, 4 DH)` (the input side, bias included),
  `carry0` four `(NH, B, DH)`, `mask (T, 1, B, 1)`, `h_mask (NH, B, DH)`. Returns
  `(carry, ys (T, NH, B, DH))` and, with `save`, the residuals: each step's gates (what its
  derivative reads, `_pointwise`) and the states `(c, n, h)` it read."""

  def step(carry, inp):
    c, n, m, h = carry
    t, on = inp
    rec = jnp.split(jnp.matmul(h if h_mask is None else h * h_mask, r), 4, axis=-1)
    z = tuple(a + b for a, b in zip(_step_gates(zx, t), rec))
    new, gates = _pointwise(z, c, n, m, exp_forget)
    y = new[3]
    if on is not None:  # finished sequences keep their carry and output zeros
      new = tuple(jnp.where(on, a, b) for a, b in zip(new, carry))
      y = jnp.where(on, y, 0.0)
    # Saved: the states the step READ, `(c, n, h)`. The backward needs them (and `h` for
    # the recurrent kernel's gradient); the states after the step it recomputes from these
    # and the saved gates (two multiply-adds), which is cheaper than storing both and
    # shifting one by a step. The stabilizer `m` is never read back: the derivative runs
    # from the saved gates.
    return new, ((y, gates, (c, n, h)) if save else y)

  steps = jnp.arange(zx.shape[1])
  carry, out = jax.lax.scan(step, tuple(carry0), (steps, mask), unroll=unroll)
  if not save:
    return carry, out, None
  ys, gates, states = out
  return carry, ys, (gates, states)


def _backward(r, mask, h_mask, res, cts, unroll: int, exp_forget: bool):
  gates, prev = res  # prev: the states `(c, n, h)` each step read, (T, NH, B, DH) each
  d_carry, dys = cts
  r_t = jnp.swapaxes(r, 1, 2)  # (NH, 4 DH, DH), transposed once, outside the loop
  del exp_forget  # the derivative reads the saved gates

  def step(carry, inp):
    dc, dn, dm, dh, dhm, dzs = carry
    t, saved, c_p, n_p, h_p, dy, on = inp
    ig, fg, tz, _ = saved[0]
    # The step's new (c, n), unmasked; where it was masked off its cotangents are zero.
    c, n = fg * c_p + ig * tz, fg * n_p + ig
    out_ct = (dc, dn, dm, dh + dy)
    if on is not None:  # a finished step passed its carry through and output zero
      out_ct = tuple(jnp.where(on, g, 0.0) for g in out_ct)
    dz, dc_p, dn_p, dm_p = _pointwise_vjp(saved, c_p, n_p, c, n, out_ct)
    dh_p = jnp.matmul(dz, r_t)
    if h_mask is not None:
      dhm = dhm + h_p * dh_p
      dh_p = dh_p * h_mask
    if on is not None:
      passed = (dc, dn, dm, dh)
      dc_p, dn_p, dm_p, dh_p = (
        g + jnp.where(on, 0.0, p) for g, p in zip((dc_p, dn_p, dm_p, dh_p), passed)
      )
    # Into `(NH, T, B, 4 DH)`, the layout of `zx`, written in place: the projection's
    # gradient and the recurrent kernel's read it heads first with no transpose.
    dzs = jax.lax.dynamic_update_index_in_dim(dzs, dz, t, axis=1)
    return (dc_p, dn_p, dm_p, dh_p, dhm, dzs), None

  dhm0 = None if h_mask is None else jnp.zeros_like(prev[2][0])
  t_len, (nh, b, dh) = gates[0][0].shape[0], gates[0][0].shape[1:]
  g = 4 * dh
  dzs0 = jnp.zeros((nh, t_len, b, g), gates[0][0].dtype)
  steps = jnp.arange(t_len)
  (dc0, dn0, dm0, dh0, dhm, dzs), _ = jax.lax.scan(
    step, (*d_carry, dhm0, dzs0), (steps, gates, *prev, dys, mask), reverse=True, unroll=unroll
  )
  # The recurrent kernel's gradient: per head ONE matmul over every (step, sample) row.
  h_in = prev[2] if h_mask is None else prev[2] * h_mask  # (T, NH, B, DH)
  rows = lambda a: jnp.moveaxis(a, 1, 0).reshape(a.shape[1], -1, a.shape[-1])
  dz_rows = dzs.reshape(nh, -1, g)  # already head-major, rows in (step, sample) order
  dr = jnp.matmul(jax.lax.optimization_barrier(jnp.swapaxes(rows(h_in), 1, 2)), dz_rows)
  return dr, (dc0, dn0, dm0, dh0), dzs, None, dhm


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _fused(r, carry0, zx, mask, h_mask, unroll, exp_forget):
  carry, ys, _ = _forward(r, carry0, zx, mask, h_mask, unroll, exp_forget, save=False)
  return carry, ys


def _fused_fwd(r, carry0, zx, mask, h_mask, unroll, exp_forget):
  carry, ys, res = _forward(r, carry0, zx, mask, h_mask, unroll, exp_forget, save=True)
  return (carry, ys), (r, mask, h_mask, res)


def _fused_bwd(unroll, exp_forget, saved, cts):
  r, mask, h_mask, res = saved
  return _backward(r, mask, h_mask, res, cts, unroll, exp_forget)


_fused.defvjp(_fused_fwd, _fused_bwd)


def fused_supported(cell: Any) -> str | None:
  """Why `cell` cannot run on this kernel (None: it can)."""
  if not isinstance(cell, SLSTMCell):
    return "the fused sLSTM path needs an SLSTMCell"
  if jnp.dtype(cell.compute_dtype) != jnp.float32:
    return "the fused sLSTM path needs float32 (other dtypes run on autodiff)"
  if cell.gate_soft_cap is not None:
    return "the fused sLSTM path has no gate soft-cap (it runs on autodiff)"
  return None


class FusedSLSTM(TimeMajor):
  """The fused custom-VJP loop of the sLSTM (the module docstring)."""

  name = "slstm_fused"

  @property
  def offered_as(self) -> str:
    return "fused"

  def unsupported(self, cell: Any, call: Call) -> str | None:
    del call  # masks, recurrent dropout, remat and vmap are all supported
    return fused_supported(cell)

  def recurrence(self, cell, p, carry, x, *, mask=None, h_mask=None, unroll=1, remat=False):
    nh = cell.num_heads

    def loop(carry, x_chunk, m_chunk):
      # The input side for all of the chunk's steps at once, outside the time loop (and
      # inside a remat chunk, so that remat recomputes it rather than keeping it).
      zx = _gates_to_heads(cell.project(p, x_chunk).astype(jnp.float32), nh)
      carry, ys = self.loop_heads(cell, p, carry, zx, m_chunk, h_mask, unroll)
      return carry, _from_heads(ys)

    return chunked(loop, carry, x, mask, remat)

  def loop_heads(self, cell, p, carry, zx, mask, h_mask, unroll):
    """The loop over head-major pre-activations `zx (NH, T, B, 4 DH)` (input side and bias),
    `mask (T, B, 1)`, the carry and `h_mask` batch-major as the cell's: `(carry, ys (T, NH,
    B, DH))`."""
    r = jnp.asarray(p["recurrent_kernel"], jnp.float32)
    nh = r.shape[0]
    h_m = None if h_mask is None else _to_heads(h_mask.astype(jnp.float32), nh)
    c0 = tuple(_to_heads(jnp.asarray(a, jnp.float32), nh) for a in carry)
    on = None if mask is None else mask[:, None]  # (T, 1, B, 1)
    new, ys = _fused(r, c0, zx, on, h_m, unroll, cell.forget_gate == "exp")
    return like(carry, SLSTMCarry(*(_from_heads(a) for a in new))), ys

  def run_heads(self, cell, p, carry, zx, lengths, *, h_mask=None, unroll=1):
    """The time loop of a layer that computes its input side head-major itself (the
    `SLSTM` layer: its head-wise gate projections write `(NH, T, B, DH)` directly, which
    spares the pre-activations two transposes, one each way, that `run` pays):
    `zx (NH, T, B, 4 DH)` without the bias, each head's gates `[i | f | z | o]` side by
    side; `carry`, `lengths (B,)` and `h_mask` as `run`'s. Returns `(carry, ys (B, T, H))`."""
    nh, t, b = zx.shape[:3]
    bias = jnp.asarray(p["bias"], jnp.float32).reshape(4, nh, -1)  # gate-major -> per head
    zx = zx.astype(jnp.float32) + jnp.swapaxes(bias, 0, 1).reshape(nh, 1, 1, -1)
    carry, ys = self.loop_heads(cell, p, carry, zx, step_mask(lengths, t), h_mask, unroll)
    return carry, jnp.transpose(ys, (2, 0, 1, 3)).reshape(b, t, -1)


FUSED_SLSTM = register(FusedSLSTM())
