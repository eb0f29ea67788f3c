"""The autodiff time loop: any cell's pure step under `lax.scan`, differentiated by JAX.

It runs every cell (flaxlstm/nn/cells/base.py: a flaxlstm cell's `project`/`recur`, or any
Flax cell through `LinenStep`/`NnxStep`) with every option the layers have: step masks
(`seq_lengths`), a recurrent-dropout mask, remat. The input side `cell.project` runs once
for all time steps, before the loop (one large matmul for the LSTM). It is the reference
the fused kernels are tested against.

Also here, shared by the time-major loops: the batch-major <-> time-major boundary
(`TimeMajor`) and remat by chunks (`chunked`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from flaxlstm.nn.cells.base import like
from flaxlstm.nn.kernels.registry import Call, Kernel, register, select

Array = jax.Array
Loop = Callable[[Any, Array, Array | None], tuple[Any, Array]]


def _keep(m: Array, new: Any, old: Any) -> Any:
  """`new` where the step mask `m` `(B, 1)` is on, else `old`, leaf by leaf (a leaf may have
  more feature axes than one: a ConvLSTM's state)."""

  def pick(n, o):
    return jnp.where(m.reshape(m.shape[:1] + (1,) * (n.ndim - 1)), n, o)

  return jax.tree.map(pick, new, old)


def masked_step(cell: Any, p: Any, h_mask: Array | None) -> Callable:
  """The scan body: one `cell.recur` step; with a step mask, finished sequences keep their
  carry and output zeros."""

  def step(carry, inp):
    zx, m = inp
    new_carry, y = cell.recur(p, carry, zx, h_mask)
    new_carry = like(carry, new_carry)  # a plain tuple in, a plain tuple out (lax.scan)
    if m is not None:
      new_carry = _keep(m, new_carry, carry)
      y = jax.tree.map(lambda a: _keep(m, a, jnp.zeros_like(a)), y)
    return new_carry, y

  return step


def autodiff_loop(
  cell: Any, p: Any, carry: Any, x: Array, mask: Array | None, h_mask: Array | None, unroll: int
) -> tuple[Any, Array]:
  """`cell` over time-major `x` `(T, B, ...)` from `carry`: `(carry, ys)`."""
  zx = cell.project(p, x)  # the hoisted input projection: one large matmul
  return jax.lax.scan(masked_step(cell, p, h_mask), carry, (zx, mask), unroll=unroll)


def chunked(loop: Loop, carry: Any, x: Array, mask: Array | None, remat: bool):
  """`loop(carry, x, mask)` over time-major `x`; with `remat`, the sequence is cut into
  ~sqrt(T) chunks and only the carry at chunk boundaries is kept for the backward pass:
  each chunk (input projection included) is recomputed when its gradient is needed, so
  saved activations grow like sqrt(T) instead of T."""
  t = x.shape[0]
  if not remat or t <= 1:
    return loop(carry, x, mask)
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
  run_chunk = jax.checkpoint(loop, policy=jax.checkpoint_policies.nothing_saveable)
  carry, ys = jax.lax.scan(lambda c, xm: run_chunk(c, *xm), carry, (xs, ms))
  ys = jax.tree.map(lambda a: a.reshape((n_chunks * chunk,) + a.shape[2:])[:t], ys)
  return carry, ys


def step_mask(lengths: Array | None, t: int) -> Array | None:
  """`(T, B, 1)` bool, on for the steps before each sequence's length (None: all steps)."""
  if lengths is None:
    return None
  return (jnp.arange(t)[:, None] < lengths[None, :])[..., None]


class TimeMajor(Kernel):
  """A kernel whose loop runs time-major, `(T, B, ...)`: each step then reads one contiguous
  slab. `run` turns the layer's batch-major inputs and lengths into that and back; `loop`
  is the kernel's own time loop (chunked for remat)."""

  def loop(
    self,
    cell: Any,
    p: Any,
    carry: Any,
    x: Array,
    mask: Array | None,
    h_mask: Array | None,
    unroll: int,
  ) -> tuple[Any, Array]:
    raise NotImplementedError

  def recurrence(
    self,
    cell: Any,
    p: Any,
    carry: Any,
    x: Array,
    *,
    mask: Array | None = None,
    h_mask: Array | None = None,
    unroll: int = 1,
    remat: bool = False,
  ) -> tuple[Any, Array]:
    """The loop over time-major `x` `(T, B, ...)`; `mask` `(T, B, 1)` bool: False steps
    leave the carry unchanged and output 0."""
    run = lambda c, xc, mc: self.loop(cell, p, c, xc, mc, h_mask, unroll)
    return chunked(run, carry, x, mask, remat)

  def run(self, cell, p, carry, x, lengths, *, h_mask=None, unroll=1, remat=False):
    xt = jnp.swapaxes(x, 0, 1)
    mask = step_mask(lengths, x.shape[1])
    carry, ys = self.recurrence(
      cell, p, carry, xt, mask=mask, h_mask=h_mask, unroll=unroll, remat=remat
    )
    return carry, jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), ys)  # XLA drops it if unused


class Autodiff(TimeMajor):
  """`lax.scan` over the cell's own step (the module docstring)."""

  name = "autodiff"

  def loop(self, cell, p, carry, x, mask, h_mask, unroll):
    return autodiff_loop(cell, p, carry, x, mask, h_mask, unroll)


AUTODIFF = register(Autodiff())


def recurrence(
  cell: Any,
  p: Any,
  carry: Any,
  x: Array,
  *,
  mask: Array | None = None,
  h_mask: Array | None = None,
  unroll: int = 1,
  remat: bool = False,
  implementation: str = "auto",
) -> tuple[Any, Array]:
  """Runs `cell` over time-major `x` `(T, B, ...)` from `carry`: `(carry, ys)`, on the
  time-major kernel `select` picks (the layers' `run_layer` is the batch-major entry).

  Args:
    cell: a cell offering its pure step (`project`/`recur`; cells/base.py).
    p: the cell's parameters.
    mask: optional `(T, B, 1)` bool; False steps leave the carry unchanged and output 0.
    h_mask: optional recurrent-dropout mask of the fed-back state (already scaled).
    unroll: `lax.scan` unroll factor.
    remat: bound activation memory for long sequences (`chunked`).
    implementation: "auto", or a time-major kernel's name ("fused", "autodiff").
  """
  call = Call(recurrent_dropout=h_mask is not None, remat=remat)
  kernel = select(cell, implementation, call)
  if not isinstance(kernel, TimeMajor):
    raise ValueError(f"implementation={kernel.name!r} has no time-major loop; use the layers")
  return kernel.recurrence(cell, p, carry, x, mask=mask, h_mask=h_mask, unroll=unroll, remat=remat)
