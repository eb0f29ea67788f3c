"""The sLSTM's fused time loop: one `jax.custom_vjp` per layer (kernel "slstm_fused",
offered by `SLSTMCell` as "fused").

The scheme is the LSTM kernel's (lstm_fused.py). The forward scan saves each step's gate
pre-activations and the states after it. The backward is a reverse scan that carries only
the state cotangents `(dc, dn, dm, dh)`; per step it runs the pointwise gate math's VJP
(recomputed from the saved pre-activations, so the derivative is exactly autodiff's, the
stabilizer's included) and one head-batched `R^T dz` matmul, and stores `dz`. The
recurrent kernel's gradient is then ONE einsum over all `T*B` rows per head, outside the
loop, instead of T small matmuls accumulated in the loop's carry, and the input side's
gradient is the stored `dz` itself (the projection, outside the kernel, is differentiated
by JAX). It runs float32 cells without a gate soft-cap; the autodiff loop (scan.py) runs
every other configuration and is the reference it is tested against
(tests/nn/test_slstm.py: outputs, final carries and gradients, ragged lengths, reverse,
remat, recurrent dropout).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from flaxlstm.nn.cells.base import like
from flaxlstm.nn.cells.slstm import SLSTMCarry, SLSTMCell
from flaxlstm.nn.kernels.registry import Call, register
from flaxlstm.nn.kernels.scan import TimeMajor, chunked

Array = jax.Array


def _recurrent(r: Array, h: Array) -> Array:
  """`R h` head by head: `h (B, H)`, `r (NH, DH, 4 DH)` -> `(B, 4H)` gate-major."""
  nh, dh = r.shape[0], r.shape[1]
  out = jnp.einsum("bkd,kde->bke", h.reshape(h.shape[0], nh, dh), r)
  return jnp.swapaxes(out.reshape(h.shape[0], nh, 4, dh), 1, 2).reshape(h.shape[0], -1)


def _recurrent_t(r: Array, dz: Array) -> Array:
  """The transpose of `_recurrent`: `dz (B, 4H)` -> `(B, H)`."""
  nh, dh = r.shape[0], r.shape[1]
  g = jnp.swapaxes(dz.reshape(dz.shape[0], 4, nh, dh), 1, 2).reshape(dz.shape[0], nh, 4 * dh)
  return jnp.einsum("bke,kde->bkd", g, r).reshape(dz.shape[0], nh * dh)


def _pointwise(z: Array, c: Array, n: Array, m: Array, exp_forget: bool):
  """The gate math of one step (`SLSTMCell.activate`, float32): the new `(c, n, m, h)`."""
  ii, ff, zz, oo = jnp.split(z, 4, axis=-1)
  log_fm = (ff if exp_forget else jax.nn.log_sigmoid(ff)) + m
  m_new = jnp.where(n == 0, ii, jnp.maximum(ii, log_fm))
  i_gate = jnp.minimum(jnp.exp(ii - m_new), 1.0)
  f_gate = jnp.minimum(jnp.exp(log_fm - m_new), 1.0)
  c_new = f_gate * c + i_gate * jnp.tanh(zz)
  n_new = f_gate * n + i_gate
  return c_new, n_new, m_new, jax.nn.sigmoid(oo) * c_new / n_new


def _forward(r, carry0, zx, mask, h_mask, unroll: int, exp_forget: bool, save: bool):
  """The forward scan over time-major `zx (T, B, 4H)` (the input side, bias included).
  Returns `(carry, ys)` and, with `save`, the residuals: each step's pre-activations
  `(T, B, 4H)` and the states after it, `(c, n, m, h)` each `(T, B, H)`."""

  def step(carry, inp):
    c, n, m, h = carry
    zx_t, on = inp
    z = zx_t + _recurrent(r, h if h_mask is None else h * h_mask)
    new = _pointwise(z, c, n, m, exp_forget)
    y = new[3]
    if on is not None:  # finished sequences keep their carry and output zeros
      new = tuple(jnp.where(on, a, b) for a, b in zip(new, carry))
      y = jnp.where(on, y, 0.0)
    return new, ((y, z, new) if save else y)

  carry, out = jax.lax.scan(step, tuple(carry0), (zx, mask), unroll=unroll)
  if not save:
    return carry, out, None
  ys, zs, states = out
  return carry, ys, (zs, states)


def _backward(r, carry0, mask, h_mask, res, cts, unroll: int, exp_forget: bool):
  zs, (cs, ns, ms, hs) = res
  d_carry, dys = cts
  shift = lambda a0, a: jnp.concatenate([a0[None], a[:-1]])  # the states each step read
  prev = tuple(shift(a0, a) for a0, a in zip(carry0, (cs, ns, ms, hs)))
  pointwise = functools.partial(_pointwise, exp_forget=exp_forget)

  def step(carry, inp):
    dc, dn, dm, dh, dhm = carry
    z, c_p, n_p, m_p, h_p, dy, on = inp
    out_ct = (dc, dn, dm, dh + dy)
    if on is not None:  # a finished step passed its carry through and output zero
      out_ct = tuple(jnp.where(on, g, 0.0) for g in out_ct)
    _, vjp = jax.vjp(pointwise, z, c_p, n_p, m_p)
    dz, dc_p, dn_p, dm_p = vjp(out_ct)
    dh_p = _recurrent_t(r, dz)
    if h_mask is not None:
      dhm = dhm + h_p * dh_p
      dh_p = dh_p * h_mask
    if on is not None:
      passed = (dc, dn, dm, dh)
      dc_p, dn_p, dm_p, dh_p = (
        g + jnp.where(on, 0.0, p) for g, p in zip((dc_p, dn_p, dm_p, dh_p), passed)
      )
    return (dc_p, dn_p, dm_p, dh_p, dhm), dz

  dhm0 = None if h_mask is None else jnp.zeros_like(carry0[3])
  (dc0, dn0, dm0, dh0, dhm), dzs = jax.lax.scan(
    step, (*d_carry, dhm0), (zs, *prev, dys, mask), reverse=True, unroll=unroll
  )
  # The recurrent kernel's gradient: one einsum over every (step, sample) row, per head.
  h_in = prev[3] if h_mask is None else prev[3] * h_mask
  nh, dh = r.shape[0], r.shape[1]
  t, b = h_in.shape[:2]
  g = jnp.swapaxes(dzs.reshape(t * b, 4, nh, dh), 1, 2).reshape(t * b, nh, 4 * dh)
  dr = jnp.einsum("rkd,rke->kde", h_in.reshape(t * b, nh, dh), g)
  if dhm is not None:
    lead = dhm.ndim - h_mask.ndim
    dhm = dhm.sum(axis=tuple(range(lead))) if lead else dhm
    axes = tuple(i for i, k in enumerate(h_mask.shape) if k == 1 and dhm.shape[i] != 1)
    dhm = (dhm.sum(axis=axes, keepdims=True) if axes else dhm).astype(h_mask.dtype)
  return dr, (dc0, dn0, dm0, dh0), dzs, None, dhm


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _fused(r, carry0, zx, mask, h_mask, unroll, exp_forget):
  carry, ys, _ = _forward(r, carry0, zx, mask, h_mask, unroll, exp_forget, save=False)
  return carry, ys


def _fused_fwd(r, carry0, zx, mask, h_mask, unroll, exp_forget):
  carry, ys, res = _forward(r, carry0, zx, mask, h_mask, unroll, exp_forget, save=True)
  return (carry, ys), (r, carry0, mask, h_mask, res)


def _fused_bwd(unroll, exp_forget, saved, cts):
  r, carry0, mask, h_mask, res = saved
  return _backward(r, carry0, mask, h_mask, res, cts, unroll, exp_forget)


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
    r = jnp.asarray(p["recurrent_kernel"], jnp.float32)
    exp_forget = cell.forget_gate == "exp"
    h_m = None if h_mask is None else h_mask.astype(jnp.float32)

    def loop(carry, x_chunk, m_chunk):
      # The input side for all of the chunk's steps at once, outside the time loop (and
      # inside a remat chunk, so that remat recomputes it rather than keeping it).
      zx = cell.project(p, x_chunk).astype(jnp.float32)
      c0 = tuple(jnp.asarray(a, jnp.float32) for a in carry)
      new, ys = _fused(r, c0, zx, m_chunk, h_m, unroll, exp_forget)
      return like(carry, SLSTMCarry(*new)), ys

    return chunked(loop, carry, x, mask, remat)


FUSED_SLSTM = register(FusedSLSTM())
