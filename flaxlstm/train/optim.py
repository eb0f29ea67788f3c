"""Optimizers, learning-rate schedules, losses and weight penalties, as optax transforms
and small pure functions of a `TrainSpec`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from flaxlstm.config.schema import TrainSpec

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
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else lr,
      peak_value=lr,
      warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=lr * 0.01,
    )
  if warmup:
    return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
  return optax.constant_schedule(lr)


def make_optimizer(
  spec: TrainSpec, total_steps: int, steps_per_epoch: int = 1
) -> optax.GradientTransformation:
  """`clip_by_global_norm` -> AdamW (decay masked to kernels) or SGD with momentum."""
  schedule = learning_rate_schedule(spec, total_steps, steps_per_epoch)
  if spec.optimizer == "sgd":
    opt = optax.chain(
      optax.add_decayed_weights(spec.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=spec.momentum or None),
    )
  else:
    opt = optax.adamw(schedule, weight_decay=spec.weight_decay, mask=decay_mask)
  if spec.clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(spec.clip_norm), opt)
  return opt


def pointwise_loss(kind: str, pred: Array, target: Array, huber_delta: float = 1.0) -> Array:
  err = pred - target
  if kind == "mae":
    return jnp.abs(err)
  if kind == "huber":
    return optax.huber_loss(pred, target, delta=huber_delta)
  return jnp.square(err)


def penalty(params: Any, l1: float, l2: float) -> Array:
  """L1/L2 terms over the weight matrices (the same leaves weight decay applies to)."""
  leaves = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(decay_mask(params))) if m]
  total = jnp.zeros((), jnp.float32)
  if l1:
    total += l1 * sum(jnp.abs(p).sum() for p in leaves)
  if l2:
    total += l2 * sum(jnp.square(p).sum() for p in leaves)
  return total
