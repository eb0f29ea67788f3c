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
) -> Callable:
  """The jitted train step `(state, inputs, y) -> (state, metrics)`; `state` is donated.

  `inputs` is `windows.model_inputs`'s dict (as global arrays): the Forecaster's arguments.

  A non-finite loss or gradient skips the update (params and optimizer state unchanged),
  so NaNs never reach the weights; `metrics["nonfinite"]` tells the host, which counts.
  """
  # The inputs arrive as global arrays already split over the mesh (`host_to_global`);
  # jit keeps their shardings.
  return jax.jit(
    train_step_fn(model, tx, spec, seed),
    donate_argnums=0,
    in_shardings=(state_sharding, None, parallel.batch_sharding(mesh, 3)),
    out_shardings=(state_sharding, parallel.replicated(mesh)),
  )


def train_step_fn(model: Forecaster, tx: optax.GradientTransformation, spec: TrainSpec, seed):
  """The train step as a pure function (`make_train_step` jits it; a population maps it
  over its members with traced `seed` and hyperparameters)."""

  head = model.head

  def train_step(state: TrainState, inputs, y):
    dropout_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), state.step)

    def loss_fn(params):
      pred = model.apply(
        {"params": params}, **inputs, deterministic=False, rngs={"dropout": dropout_key}
      )
      fit = data_loss(head, spec, pred, y).mean()
      return fit + penalty(params, spec.l1, spec.l2), fit

    (loss, fit), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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
