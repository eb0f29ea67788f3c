"""Dropout whose rate may be a traced array: one program trains a population of models
with a rate per member (train/population.py).

Flax's `nn.Dropout` branches on its rate in Python (`rate == 0` returns the input), which
a traced rate cannot do. Here a rate that is not a Python number is always *active*: the
mask is drawn, and a member whose rate is 0 gets an all-ones mask (the same values as no
dropout). With a Python rate the ops and random bits are exactly `nn.Dropout`'s, and the
module keeps its name (`Dropout_0`, ...), so existing runs reproduce bit for bit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array


def is_active(rate: Any) -> bool:
  """Whether dropout at `rate` draws a mask: a positive number, or any traced rate."""
  return not isinstance(rate, (int, float)) or rate > 0


def dropout_mask(rng: Array, rate: Any, shape: tuple[int, ...], dtype) -> Array:
  """Inverted-dropout multiplier: 0 with probability `rate`, else 1 / (1 - rate)."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, shape)
  return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


class Dropout(nn.Module):
  """`nn.Dropout` for a rate that may be traced (see the module docstring)."""

  rate: Any

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool | None = None) -> Array:
    if deterministic or not is_active(self.rate):
      return inputs
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), p=keep, shape=inputs.shape)
    return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))
