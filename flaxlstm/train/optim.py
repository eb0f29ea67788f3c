"""Optimizers, learning-rate schedules, losses and weight penalties, as optax transforms
and small pure functions of a `TrainSpec`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from flaxlstm.config.specs import TrainSpec

Array = jax.Array

# The choices of train.schedule, train.optimizer and train.loss.
SCHEDULES = ("constant", "cosine", "exponential")
OPTIMIZERS = ("adamw", "sgd")
LOSSES = ("mse", "mae", "huber")


def decay_mask(params: Any) -> Any:
  """True for weight matrices (decayed, penalized); False for biases and norm parameters."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: str(getattr(path[-1], "key", "")).endswith("kernel"), params
  )


def learning_rate_schedule(
  spec: TrainSpec, total_steps: int, steps_per_epoch: int = 1
) -> optax.Schedule:
  lr, warmup = spec.learning_rate, min(spec.warmup_steps, max(total_steps - 1, 0))
  if spec.schedule == "exponential":
    # The LTSF codes' per-epoch decay: the peak for `train.decay_after_epochs` epochs, then
    # times `train.epoch_decay` at the start of every further epoch (staircase).
    def decay(step):
      epoch = jnp.asarray(step) // steps_per_epoch
      decays = jnp.maximum(epoch - spec.decay_after_epochs + 1, 0)
      return lr * jnp.asarray(spec.epoch_decay, jnp.float32) ** decays

    if not warmup:
      return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])
  if spec.schedule == "cosine":
    # optax.warmup_cosine_decay_schedule, spelled out: it computes alpha = end / peak with
    # a Python branch on the peak, which a population's traced learning rate cannot take.
    # The end is 1% of the peak, so alpha is 0.01 exactly; the ops are optax's.
    cosine = optax.cosine_decay_schedule(
      init_value=lr, decay_steps=max(total_steps, warmup + 1) - warmup, alpha=0.01
    )
    if not warmup:
      return cosine
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), cosine], [warmup])
  if warmup:
    return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
  return optax.constant_schedule(lr)


def make_optimizer(
  spec: TrainSpec, total_steps: int, steps_per_epoch: int = 1
) -> optax.GradientTransformation:
  """`clip_by_global_norm` -> AdamW (decay masked to kernels) or SGD with momentum.

  A population's members pass their traced hyperparameters in `spec` (`is_on`)."""
  schedule = learning_rate_schedule(spec, total_steps, steps_per_epoch)
  if spec.optimizer == "sgd":
    opt = optax.chain(
      optax.add_decayed_weights(spec.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=spec.momentum or None),
    )
  else:
    opt = optax.adamw(schedule, weight_decay=spec.weight_decay, mask=decay_mask)
  if is_on(spec.clip_norm):
    opt = optax.chain(optax.clip_by_global_norm(spec.clip_norm), opt)
  return opt


def is_on(value: Any) -> bool:
  """Whether an optional term (clipping, a penalty) is on: a non-zero number, or a traced
  per-member value of a population (whose members all have it on or all off)."""
  return not isinstance(value, (int, float)) or value != 0


def pointwise_loss(kind: str, pred: Array, target: Array, huber_delta: float = 1.0) -> Array:
  err = pred - target
  if kind == "mae":
    return jnp.abs(err)
  if kind == "huber":
    return optax.huber_loss(pred, target, delta=huber_delta)
  return jnp.square(err)


def data_loss(head: Any, spec: TrainSpec, pred: Array, target: Array) -> Array:
  """The elementwise training loss: `train.loss` for the point head; a distribution head's
  own (negative log-likelihood, pinball) on its parameters `pred (..., P)`."""
  if head.n_params:
    return head.loss(pred, target)
  return pointwise_loss(spec.loss, pred, target, spec.huber_delta)


def penalty(params: Any, l1: float, l2: float) -> Array:
  """L1/L2 terms over the weight matrices (the same leaves weight decay applies to)."""
  leaves = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(decay_mask(params))) if m]
  total = jnp.zeros((), jnp.float32)
  if is_on(l1):
    total += l1 * sum(jnp.abs(p).sum() for p in leaves)
  if is_on(l2):
    total += l2 * sum(jnp.square(p).sum() for p in leaves)
  return total
