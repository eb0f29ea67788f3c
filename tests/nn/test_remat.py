"""`XLSTMStack(remat=True)` on its unrolled sLSTM blocks (flaxlstm/nn/remat.py): the same
loss and gradients as without remat, fewer bytes of activations, and with dropout the
recomputation draws the forward's masks."""

import jax
import jax.numpy as jnp
import numpy as np

import flaxlstm

W = 32


def _stack(remat, **slstm):
  return flaxlstm.XLSTMStack(
    W, num_blocks=2, slstm_at=(0, 1), slstm=dict(num_heads=4, **slstm), remat=remat
  )


def test_remat_of_slstm_blocks_keeps_the_gradients_and_frees_their_activations():
  x = jax.random.normal(jax.random.key(1), (8, 64, W))
  lens = jnp.arange(57, 65)  # ragged
  params = jax.jit(_stack(False).init)(jax.random.key(0), x[:1, :2])["params"]
  results, temps = {}, {}
  for remat in (False, True):
    model = _stack(remat)
    loss = lambda p, model=model: jnp.mean(model.apply({"params": p}, x, seq_lengths=lens) ** 2)
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
    results[remat] = compiled(params)
    temps[remat] = compiled.memory_analysis().temp_size_in_bytes  # XLA's own account
  np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(results[True][1]), jax.tree.leaves(results[False][1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  assert temps[True] < 0.8 * temps[False], temps


def test_remat_with_dropout_recomputes_the_same_masks():
  """The gradient of a dropout step under remat is the derivative of that step's loss
  (its masks fixed by the key): against a central difference along a random direction."""
  x = jax.random.normal(jax.random.key(1), (2, 9, W))
  model = flaxlstm.XLSTMStack(
    W,
    num_blocks=1,
    slstm_at=(0,),
    slstm=dict(num_heads=4, dropout=0.3, ffn_dropout=0.2),
    remat=True,
  )
  params = jax.jit(lambda k, x: model.init(k, x, deterministic=True))(jax.random.key(0), x)
  params = params["params"]

  def loss(p):
    y = model.apply({"params": p}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    return jnp.mean(y**2)

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert float(value) == float(jax.jit(loss)(params))  # the same masks every call
  keys = jax.random.split(jax.random.key(7), len(jax.tree.leaves(params)))
  direction = jax.tree.unflatten(
    jax.tree.structure(params),
    [1e-3 * jax.random.normal(k, a.shape) for k, a in zip(keys, jax.tree.leaves(params))],
  )
  step = lambda s: jax.tree.map(lambda a, d: a + s * d, params, direction)
  numeric = (jax.jit(loss)(step(1.0)) - jax.jit(loss)(step(-1.0))) / 2
  analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
  np.testing.assert_allclose(float(analytic), float(numeric), rtol=2e-2)
