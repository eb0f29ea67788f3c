"""The jitted steps: one train step (forward, backward, clip, update) and prediction.

The same functions run on one device or many: inputs are split over the mesh's batch axes,
the state as its shardings say (replicated, FSDP, gate-sharded), and XLA inserts the
collectives. Dropout keys are threefry-partitionable, so masks do not depend on the mesh
either.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxlstm import parallel
from flaxlstm.config.specs import TrainSpec
from flaxlstm.data import windows
from flaxlstm.data.series import SeriesData
from flaxlstm.forecast.model import Forecaster
from flaxlstm.train.optim import data_loss, penalty

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any


def make_train_step(
  model: Forecaster,
  tx: optax.GradientTransformation,
  spec: TrainSpec,
  seed: int,
  mesh,
  state_sharding,
  gather_dtype: str = "",
) -> Callable:
  """The jitted train step `(state, inputs, y) -> (state, metrics)`; `state` is donated.

  `inputs` is `windows.model_inputs`'s dict (as global arrays): the Forecaster's arguments.
  `gather_dtype` (`mesh.gather_dtype`): the parameters split over `fsdp` are cast to it
  before the model uses them.

  A non-finite loss or gradient skips the update (params and optimizer state unchanged),
  so NaNs never reach the weights; `metrics["nonfinite"]` tells the host, which counts.
  """
  cast = None
  if gather_dtype:
    cast = (jnp.dtype(gather_dtype), state_sharding.params)
  # The inputs arrive as global arrays already split over the mesh (`host_to_global`);
  # jit keeps their shardings.
  return jax.jit(
    train_step_fn(model, tx, spec, seed, cast),
    donate_argnums=0,
    in_shardings=(state_sharding, None, parallel.batch_sharding(mesh, 3)),
    out_shardings=(state_sharding, parallel.replicated(mesh)),
  )


def train_step_fn(
  model: Forecaster,
  tx: optax.GradientTransformation,
  spec: TrainSpec,
  seed,
  cast: tuple[Any, Any] | None = None,
):
  """The train step as a pure function (`make_train_step` jits it; a population maps it
  over its members with traced `seed` and hyperparameters).

  `cast`: `(dtype, shardings)`: the floating parameters whose `NamedSharding` splits them
  over `fsdp` are cast to `dtype` before the model uses them, each shard where it lies, so
  that their all-gathers move `dtype`; the gradients reach the master parameters through
  the cast.

  With `spec.grad_accum_steps` = k > 1 the batch is split into k micro-batches of every
  k-th row (row i*k + j is in micro-batch j), so each micro-batch is split over the mesh
  as the batch is and splitting moves no data; a `lax.scan` sums their gradients and
  losses, which are then averaged: the mean loss of equal micro-batches is the batch's,
  and so is its gradient. Micro-batch j's dropout key is the step's folded with j.
  """

  head = model.head
  k = spec.grad_accum_steps

  def to_model(params):
    if cast is None:
      return params
    dtype, shardings = cast

    def low(p, split, sharding):
      if not split or not jnp.issubdtype(p.dtype, jnp.floating):
        return p
      # Cast on each shard, then gathered: both pinned, as XLA's sharding propagation
      # would otherwise gather the float32 master (or the float32 the model casts the
      # copy back to) and move the full bytes.
      low = jax.lax.with_sharding_constraint(p.astype(dtype), sharding)
      return jax.lax.with_sharding_constraint(low, parallel.gathered(sharding))

    return jax.tree.map(low, params, parallel.split_over_fsdp(shardings), shardings)

  def loss_fn(params, inputs, y, dropout_key):
    pred = model.apply(
      {"params": to_model(params)}, **inputs, deterministic=False, rngs={"dropout": dropout_key}
    )
    fit = data_loss(head, spec, pred, y).mean()
    return fit + penalty(params, spec.l1, spec.l2), fit

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulated(params, inputs, y, dropout_key):
    """The mean loss and gradients of the k micro-batches (the docstring)."""

    def micro(a):  # (B, ...) -> (k, B/k, ...): micro-batch j = rows j, j + k, ...
      return jnp.swapaxes(a.reshape((a.shape[0] // k, k) + a.shape[1:]), 0, 1)

    def body(carry, batch):
      j, mb_inputs, mb_y = batch
      (loss, fit), grads = grad_fn(params, mb_inputs, mb_y, jax.random.fold_in(dropout_key, j))
      total = jax.tree.map(jnp.add, carry, ((loss, fit), grads))
      return total, None

    zeros = jax.tree.map(jnp.zeros_like, ((jnp.zeros(()), jnp.zeros(())), params))
    batches = (jnp.arange(k), jax.tree.map(micro, inputs), micro(y))
    total, _ = jax.lax.scan(body, zeros, batches)
    return jax.tree.map(lambda a: a / k, total)

  def train_step(state: TrainState, inputs, y):
    dropout_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), state.step)
    if k == 1:
      (loss, fit), grads = grad_fn(state.params, inputs, y, dropout_key)
    else:
      (loss, fit), grads = accumulated(state.params, inputs, y, dropout_key)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics = {"loss": fit, "total_loss": loss, "grad_norm": grad_norm, "nonfinite": ~finite}
    return TrainState(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
    ), metrics

  return train_step


def make_predict_fn(model: Forecaster, mesh=None) -> Callable:
  """Jitted `(params, inputs) -> predictions`, replicated so every host can read them."""
  out = None if mesh is None else parallel.replicated(mesh)
  return jax.jit(
    lambda params, inputs: model.apply({"params": params}, **inputs, deterministic=True),
    out_shardings=out,
  )


def predict_windows(
  predict_fn: Callable,
  params: Any,
  data: SeriesData,
  starts: np.ndarray,
  batch_size: int,
  mesh=None,
  future_known: np.ndarray | None = None,
) -> np.ndarray:
  """Scaled predictions `(N, horizon, n_targets)` for windows starting at `starts`.

  `future_known` ``(N, horizon, n_known)``: known covariates past the end of the data,
  for forecasts beyond it.

  Batches come from `windows.eval_batches`: in order, the last one padded so that one
  compiled function serves all. With a `mesh`, each process gathers only its own rows of
  every batch.
  """
  positions, mask = windows.eval_batches(len(starts), batch_size)
  out = []
  for pos, real in zip(positions, mask):
    idx = starts[pos]
    inputs: Any
    if mesh is None:
      inputs = windows.model_inputs(data, idx, None if future_known is None else future_known[pos])
    else:
      mine = parallel.local_batch_slice(mesh, batch_size)
      future = None if future_known is None else future_known[pos][mine]
      local = windows.model_inputs(data, idx[mine], future)
      inputs = {k: parallel.host_to_global(mesh, v, batch_size) for k, v in local.items()}
    out.append(np.asarray(predict_fn(params, inputs))[real])
  return np.concatenate(out) if out else np.zeros((0, data.horizon, len(data.target_names)))
