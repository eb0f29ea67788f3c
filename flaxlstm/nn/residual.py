"""`residual_boundary`: a residual stream's gradient computed once per block, on the CPU.

In a stack of pre-norm residual blocks (`x + f(norm(x))`, the sLSTM, mLSTM and TiRex
blocks) the gradient of the stream at block k is the one above it plus the norm's
backward: a chain of elementwise ops from the top of the stack down. XLA:CPU fuses such a
chain into *each* consumer instead of writing it once, so every block's weight gradient
and norm backward recomputed the chain of all the blocks above it: work quadratic in the
depth (BENCHMARKS.md, "sLSTM", measures it on a 12-block stack of TiRex's width).
`jax.lax.optimization_barrier` does not stop it (XLA:CPU removes barriers before fusing);
a `cond` does, because XLA does not fuse across one. So the backward passes the stream's
gradient through a `cond` whose predicate is always true, written so that XLA cannot
prove it (`g == g or g != g` holds for NaNs too). Other platforms take the identity
(`jax.lax.platform_dependent`): there a `cond` would cost a device-to-host read of its
predicate, and their fusion does not duplicate the chain this way.

A `jax.custom_vjp` function: reverse mode only (as the fused recurrences are).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _through_cond(g: Array) -> Array:
  if g.size == 0:
    return g
  g0 = g.reshape(-1)[0]
  return jax.lax.cond((g0 == g0) | (g0 != g0), lambda a: a, jnp.zeros_like, g)


@jax.custom_vjp
def residual_boundary(x: Array) -> Array:
  """The identity on `x`; in the backward, `x`'s gradient is written out once (on the
  CPU), not recomputed inside each of its consumers. Call it on a residual block's input."""
  return x


def _fwd(x: Array):
  return x, None


def _bwd(_, g: Array):
  return (jax.lax.platform_dependent(g, cpu=_through_cond, default=lambda a: a),)


residual_boundary.defvjp(_fwd, _bwd)
