"""The LSTM recurrence as a pure function: hoisted input projection + `lax.scan`.

`LSTM` (layers.py) owns parameters, dropout masks and shapes; this module only runs the
time loop, so the same function can later carry a custom VJP or a cuDNN path.

Layout: inputs arrive time-major `(T, B, D)`. The input-side pre-activations of *all* time
steps are one `(T*B, D) @ (D, 4H)` matmul done before the loop; the loop body is then the
recurrent matmul plus the gate elementwise math only.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def _masked_step(cell, p, h_mask):
  """Scan body. With a step mask, finished sequences keep their carry and output zeros."""

  def step(carry, inp):
    zx, m = inp
    new_carry, y = cell.recur(p, carry, zx, h_mask)
    if m is not None:
      new_carry = jax.tree.map(lambda n, o: jnp.where(m, n, o), new_carry, carry)
      y = jnp.where(m, y, jnp.zeros_like(y))
    return new_carry, y

  return step


def lstm_recurrence(cell: Any, p: dict, carry: tuple[Array, Array], x: Array, *,
                    mask: Array | None = None, h_mask: Array | None = None,
                    unroll: int = 1, remat: bool = False) -> tuple[tuple[Array, Array], Array]:
  """Runs `cell` over time-major `x` `(T, B, D)` from `carry`; returns `(carry, ys)`.

  Args:
    cell: an `LSTMCell` (only its pure `project`/`recur` methods are used).
    p: the cell's parameters.
    mask: optional `(T, B, 1)` bool; False steps leave the carry unchanged and output 0.
    h_mask: optional `(B, R)` recurrent-dropout mask (already scaled by 1/keep).
    unroll: `lax.scan` unroll factor.
    remat: bound activation memory for long sequences: the sequence is cut into ~sqrt(T)
      chunks; only the carry at chunk boundaries is kept for the backward pass and each
      chunk (input projection included) is recomputed when its gradient is needed. Memory
      for saved activations goes from O(T) gate tensors to O(sqrt(T)).
  """
  step = _masked_step(cell, p, h_mask)

  def run(carry, x_chunk, m_chunk):
    zx = cell.project(p, x_chunk)  # the hoisted input projection: one large matmul
    return jax.lax.scan(step, carry, (zx, m_chunk), unroll=unroll)

  t = x.shape[0]
  if not remat or t <= 1:
    return run(carry, x, mask)

  chunk = max(1, math.isqrt(t - 1) + 1)  # ceil(sqrt(T))
  n_chunks = -(-t // chunk)
  pad = n_chunks * chunk - t
  if pad:  # padded steps are masked off: they never change the carry
    if mask is None:
      mask = jnp.ones((t, x.shape[1], 1), bool)
    x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
    mask = jnp.concatenate([mask, jnp.zeros((pad,) + mask.shape[1:], bool)])
  xs = x.reshape((n_chunks, chunk) + x.shape[1:])
  ms = None if mask is None else mask.reshape((n_chunks, chunk) + mask.shape[1:])
  run_chunk = jax.checkpoint(run, policy=jax.checkpoint_policies.nothing_saveable)
  carry, ys = jax.lax.scan(lambda c, xm: run_chunk(c, *xm), carry, (xs, ms))
  ys = ys.reshape((n_chunks * chunk,) + ys.shape[2:])
  return carry, ys[:t]
