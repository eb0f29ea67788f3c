"""`Forecaster`: a `StackedLSTM` encoder and a dense head predicting `horizon` steps at once.

Pure modelling: the model is built from a `ModelSpec` and nothing else (no files, no run
directories).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from flaxlstm.config.schema import ModelSpec
from flaxlstm.nn.layers import StackedLSTM

Array = jax.Array


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
  spec: ModelSpec = ModelSpec()

  @nn.compact
  def __call__(self, x: Array, y_last: Array | None = None, *, deterministic: bool = True) -> Array:
    spec = self.spec
    if spec.predict_delta:
      if y_last is None:
        raise ValueError("Forecaster(predict_delta=True) needs y_last")
      # Level-free inputs: each feature relative to its last observed value, so a level
      # shift between the training years and the test years changes nothing.
      x = x - x[..., -1:, :]
    cell = spec.cell_options
    h = StackedLSTM(
      features=spec.hidden_sizes,
      dropout=spec.dropout,
      recurrent_dropout=spec.recurrent_dropout,
      inter_layer_dropout=spec.inter_layer_dropout,
      return_sequences=False,
      bidirectional=spec.bidirectional,
      unroll=spec.unroll,
      remat=spec.remat,
      **cell,
      name="encoder",
    )(x, deterministic=deterministic)
    h = nn.Dropout(spec.dense_dropout)(h, deterministic=deterministic)
    # With predict_delta the head starts at zero, so the untrained model *is* the naive
    # forecast and training can only move it where the data says corrections help.
    head_init = initializers.zeros_init() if spec.predict_delta else cell["kernel_init"]
    y = nn.Dense(
      self.horizon * self.n_targets, kernel_init=head_init, dtype=cell["dtype"], name="head"
    )(h)
    if spec.linear_skip:
      # LSTNet's autoregressive highway (Lai et al., 2018): a linear map from the whole
      # window to the forecast, so the LSTM only has to model what a linear model cannot.
      y = y + nn.Dense(
        self.horizon * self.n_targets, kernel_init=initializers.zeros_init(), name="linear_skip"
      )(x.reshape(x.shape[:-2] + (-1,)))
    y = y.astype(jnp.float32).reshape(h.shape[:-1] + (self.horizon, self.n_targets))
    if spec.predict_delta:
      assert y_last is not None  # checked above
      y = y + y_last[..., None, :]
    return y
