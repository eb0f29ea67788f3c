"""`Forecaster`: a `StackedLSTM` encoder and a dense head predicting `horizon` steps at once."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from flaxlstm.layers import StackedLSTM

Array = jax.Array

# Initializers a config may name (model.kernel_init / model.recurrent_init).
INITIALIZERS: dict[str, Callable[..., Any]] = {
    "glorot_uniform": initializers.glorot_uniform(),
    "glorot_normal": initializers.glorot_normal(),
    "lecun_uniform": initializers.lecun_uniform(),
    "lecun_normal": initializers.lecun_normal(),
    "he_uniform": initializers.he_uniform(),
    "he_normal": initializers.he_normal(),
    "orthogonal": initializers.orthogonal(),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Forecaster(nn.Module):
  """Direct multi-step forecaster: `(B, lookback, n_features) -> (B, horizon, n_targets)`.

  The LSTM stack reads the lookback window; its last output goes through dropout and one
  `Dense` layer that emits all `horizon x n_targets` values at once (no autoregressive
  feedback, so errors do not compound over the horizon).

  With `predict_delta`, the model is level-free: inputs are taken relative to their last
  observed values and the head predicts the change from the last observed target value
  `y_last` `(B, n_targets)`, which is then added back. The head starts at zero, so the
  untrained model is exactly the naive forecast and training learns corrections to it.

  With `linear_skip`, a linear map from the whole (flattened) window is added to the head's
  output (LSTNet's autoregressive component); it starts at zero.
  """

  horizon: int
  n_targets: int
  features: Sequence[int] = (64,)
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  inter_layer_dropout: float = 0.0
  dense_dropout: float = 0.0
  forget_bias: float = 1.0
  kernel_init: Callable[..., Any] = initializers.glorot_uniform()
  recurrent_kernel_init: Callable[..., Any] = initializers.orthogonal()
  proj_features: int | None = None
  layer_norm: bool = False
  bidirectional: bool = False
  remat: bool = False
  unroll: int = 1
  dtype: Any = None
  predict_delta: bool = False
  linear_skip: bool = False

  @nn.compact
  def __call__(self, x: Array, y_last: Array | None = None, *,
               deterministic: bool = True) -> Array:
    if self.predict_delta:
      if y_last is None:
        raise ValueError("Forecaster(predict_delta=True) needs y_last")
      # Level-free inputs: each feature relative to its last observed value, so a level
      # shift between the training years and the test years changes nothing.
      x = x - x[..., -1:, :]
    h = StackedLSTM(
        features=tuple(self.features), dropout=self.dropout,
        recurrent_dropout=self.recurrent_dropout,
        inter_layer_dropout=self.inter_layer_dropout, return_sequences=False,
        bidirectional=self.bidirectional, unroll=self.unroll, remat=self.remat,
        kernel_init=self.kernel_init, recurrent_kernel_init=self.recurrent_kernel_init,
        forget_bias=self.forget_bias, proj_features=self.proj_features,
        layer_norm=self.layer_norm, dtype=self.dtype, name="encoder",
    )(x, deterministic=deterministic)
    h = nn.Dropout(self.dense_dropout)(h, deterministic=deterministic)
    # With predict_delta the head starts at zero, so the untrained model *is* the naive
    # forecast and training can only move it where the data says corrections help.
    head_init = initializers.zeros_init() if self.predict_delta else self.kernel_init
    y = nn.Dense(self.horizon * self.n_targets, kernel_init=head_init, dtype=self.dtype,
                 name="head")(h)
    if self.linear_skip:
      # LSTNet's autoregressive highway (Lai et al., 2018): a linear map from the whole
      # window to the forecast, so the LSTM only has to model what a linear model cannot.
      y = y + nn.Dense(self.horizon * self.n_targets, kernel_init=initializers.zeros_init(),
                       name="linear_skip")(x.reshape(x.shape[:-2] + (-1,)))
    y = y.astype(jnp.float32).reshape(h.shape[:-1] + (self.horizon, self.n_targets))
    if self.predict_delta:
      y = y + y_last[..., None, :]
    return y


def forecaster_from_config(model_cfg, *, horizon: int, n_targets: int) -> Forecaster:
  """Builds the `Forecaster` described by a config's `model` section."""
  return Forecaster(
      horizon=horizon, n_targets=n_targets, features=tuple(model_cfg.features),
      dropout=model_cfg.dropout, recurrent_dropout=model_cfg.recurrent_dropout,
      inter_layer_dropout=model_cfg.inter_layer_dropout,
      dense_dropout=model_cfg.dense_dropout, forget_bias=model_cfg.forget_bias,
      kernel_init=INITIALIZERS[model_cfg.kernel_init],
      recurrent_kernel_init=INITIALIZERS[model_cfg.recurrent_init],
      proj_features=model_cfg.proj_features or None, layer_norm=model_cfg.layer_norm,
      bidirectional=model_cfg.bidirectional, remat=model_cfg.remat,
      unroll=model_cfg.unroll, dtype=DTYPES[model_cfg.dtype],
      predict_delta=model_cfg.predict_delta, linear_skip=model_cfg.linear_skip)
