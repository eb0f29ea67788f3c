"""`residual_boundary` (nn/residual.py): the identity, whose gradient is the identity too,
and which on the CPU writes a residual stream's gradient once per block."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flaxlstm.nn import xlstm
from flaxlstm.nn.residual import residual_boundary
from flaxlstm.nn.xlstm import SLSTMBlock


def test_it_is_the_identity_forward_and_backward_nans_and_vmap_included():
  x = jnp.array([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
  np.testing.assert_array_equal(residual_boundary(x), x)
  w = jnp.array([[2.0, jnp.nan, -1.0], [0.0, 4.0, 1.0]])
  # Its cotangent goes through a `cond` on the CPU: it must pass every value, NaN first
  # (the predicate reads the first element) and NaN elsewhere, unchanged.
  for weights in (w, w.at[0, 0].set(jnp.nan), -w):
    g = jax.grad(lambda x, weights=weights: jnp.sum(residual_boundary(x) * weights))(x)
    np.testing.assert_array_equal(g, weights)
  gv = jax.vmap(jax.grad(lambda r, wr: jnp.sum(residual_boundary(r) * wr)))(x, w)
  np.testing.assert_array_equal(gv, w)
  assert jax.grad(lambda x: jnp.sum(residual_boundary(x)))(jnp.zeros((0,))).shape == (0,)


def test_a_stack_of_blocks_writes_each_blocks_stream_gradient_once(monkeypatch):
  """What it is for: in the compiled gradient of a stack of sLSTM blocks, one `cond` per
  residual boundary (two per block), and the gradient equal to the stack's without them."""
  blocks = [SLSTMBlock(8, num_heads=2, ffn_proj_factor=1.3, name=f"b{k}") for k in range(2)]

  def loss(x, params):
    for block, p in zip(blocks, params):
      x = block.apply(p, x)
    return jnp.sum(jnp.square(x))

  x = jax.random.normal(jax.random.key(0), (2, 3, 8))
  params = [b.init(jax.random.key(k), x) for k, b in enumerate(blocks)]

  def compiled():  # compiled once, run from the compiled object (no second compile)
    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, params).compile()

  grad = compiled()
  assert grad.as_text().count("conditional(") == 2 * len(blocks)
  with_boundaries = grad(x, params)

  monkeypatch.setattr(xlstm, "residual_boundary", lambda a: a)
  grad = compiled()
  assert grad.as_text().count("conditional(") == 0
  for a, b in zip(jax.tree.leaves(with_boundaries), jax.tree.leaves(grad(x, params))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_other_platforms_lower_the_plain_identity():
  """On a GPU a `cond` would read its predicate on the host: lowered for CUDA (exported,
  no GPU needed), the backward has no trace of the CPU's predicate."""
  from jax import export

  grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(residual_boundary(x)))))
  x = jnp.ones((4, 3))
  text = {p: export.export(grad, platforms=(p,))(x).mlir_module() for p in ("cpu", "cuda")}
  assert "stablehlo.compare" in text["cpu"]
  assert "stablehlo.compare" not in text["cuda"]
