"""`Forecaster`: an LSTM encoder and a decoder predicting `horizon` steps at once.

Pure modelling: the model is built from a `ModelSpec` and nothing else (no files, no run
directories).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from flaxlstm.config.schema import ModelSpec
from flaxlstm.nn.blocks import ParallelDecoder, RecurrentDecoder, RevIN, SegmentEmbedding
from flaxlstm.nn.layers import StackedLSTM

Array = jax.Array

# model.channels and model.decoder (defined before `Forecaster`: its default spec checks them).
CHANNELS = ("mixed", "independent")
DECODERS = ("dense", "parallel", "recurrent")


class Forecaster(nn.Module):
  """Direct multi-step forecaster: `(B, lookback, n_features) -> (B, horizon, n_targets)`.

  The pieces, in order (each a `ModelSpec` option):

  - levels: `predict_delta` takes inputs relative to their last value and adds the last
    observed target `y_last (B, n_targets)` back to the output (the head starts at zero, so
    the untrained model is the naive forecast); or `revin` normalizes every window by its
    own mean and std and maps the output back (`RevIN`).
  - channels: `"mixed"` reads all columns as one multivariate window. `"independent"`
    reshapes `(B, L, C) -> (B * C, L, 1)`: one shared model forecasts every column from its
    own past, optionally told which column by a learned series embedding, and the result is
    reshaped back to `(B, H, C)`. The targets are then the inputs, in order.
  - encoder: a `StackedLSTM` over the steps, or over `SegmentEmbedding` segments of
    `segment_length` steps (the fused recurrence either way).
  - decoder: `"dense"` maps the last state to all `horizon x n_targets` values at once;
    `"parallel"` runs one decoder LSTM step per output segment, all at once, from the
    encoder's final carry (`ParallelDecoder`); `"recurrent"` runs them one after another
    (`RecurrentDecoder`). No decoder feeds back point forecasts unless it is `"recurrent"`.
  - `linear_skip` adds a linear map from the whole (normalized) window, zero at start
    (LSTNet's autoregressive highway; with independent channels, NLinear's model).

  Attributes:
    horizon: steps forecast.
    n_targets: columns forecast.
    spec: the model options.
    target_columns: position of each target among the input columns; RevIN maps each
      output back with its column's statistics (`"independent"` uses all columns).
  """

  horizon: int
  n_targets: int
  spec: ModelSpec = ModelSpec()
  target_columns: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, x: Array, y_last: Array | None = None, *, deterministic: bool = True) -> Array:
    spec = self.spec
    independent = spec.channels == "independent"
    if spec.predict_delta:
      if y_last is None:
        raise ValueError("Forecaster(predict_delta=True) needs y_last")
      # Level-free inputs: each feature relative to its last observed value, so a level
      # shift between the training years and the test years changes nothing.
      x = x - x[..., -1:, :]
    if independent and x.shape[-1] != self.n_targets:
      raise ValueError(
        f"channels='independent' forecasts every input column: got {x.shape[-1]} inputs "
        f"for {self.n_targets} targets"
      )
    revin = stats = None
    if spec.revin:
      revin = RevIN(x.shape[-1], affine=spec.revin_affine, name="revin")
      x, stats = revin.normalize(x)

    batch_shape, (length, n_channels) = x.shape[:-2], x.shape[-2:]
    series = None
    n_out = self.n_targets
    if independent:
      # (B, L, C) -> (B * C, L, 1): every column is its own sample of one shared model.
      x = jnp.swapaxes(x, -1, -2).reshape((-1, length, 1))
      series = jnp.tile(jnp.arange(n_channels), x.shape[0] // n_channels)
      n_out = 1
    else:
      x = x.reshape((-1, length, n_channels))

    carry, h = self._encode(x, deterministic)
    y = self._decode(carry, h, series, n_out, deterministic)
    if spec.linear_skip:
      # LSTNet's autoregressive highway (Lai et al., 2018): a linear map from the whole
      # window to the forecast, so the LSTM only has to model what a linear model cannot.
      y = y + nn.Dense(
        self.horizon * n_out, kernel_init=initializers.zeros_init(), name="linear_skip"
      )(x.reshape(x.shape[0], -1)).reshape(y.shape)
    y = y.astype(jnp.float32)
    if independent:
      y = jnp.swapaxes(y.reshape((-1, n_channels, self.horizon)), -1, -2)
    y = y.reshape(batch_shape + (self.horizon, self.n_targets))
    if revin is not None:
      assert stats is not None
      y = revin.denormalize(y, stats, None if independent else self.target_columns)
    if spec.predict_delta:
      assert y_last is not None  # checked above
      y = y + y_last[..., None, :]
    return y

  def _encode(self, x: Array, deterministic: bool):
    spec = self.spec
    cell = spec.cell_options
    if spec.segment_length:
      x = SegmentEmbedding(
        spec.segment_length,
        spec.hidden_sizes[0],
        kernel_init=cell["kernel_init"],
        dtype=cell["dtype"],
        name="segments",
      )(x)
    carries, h = StackedLSTM(
      features=spec.hidden_sizes,
      dropout=spec.dropout,
      recurrent_dropout=spec.recurrent_dropout,
      inter_layer_dropout=spec.inter_layer_dropout,
      return_sequences=False,
      return_carry=True,
      bidirectional=spec.bidirectional,
      unroll=spec.unroll,
      remat=spec.remat,
      **cell,
      name="encoder",
    )(x, deterministic=deterministic)
    return carries[-1], h

  def _decode(self, carry, h: Array, series, n_out: int, deterministic: bool) -> Array:
    """The encoder's top carry and last output -> `(B', horizon, n_out)`."""
    spec, horizon = self.spec, self.horizon
    cell = spec.cell_options
    if spec.decoder != "dense":
      segments = -(-horizon // spec.segment_length)  # the last one is cut to the horizon
      common = dict(
        features=spec.hidden_sizes[-1],
        n_segments=segments,
        segment_length=spec.segment_length,
        out_features=n_out,
        dropout=spec.dense_dropout,
        **{k: v for k, v in cell.items() if k != "features"},
      )
      if spec.decoder == "parallel":
        n_series = self.n_targets if series is not None else 0
        y = ParallelDecoder(
          n_series=n_series, series_features=spec.series_embedding, name="decoder", **common
        )(carry, series, deterministic=deterministic)
      else:
        y = RecurrentDecoder(name="decoder", **common)(carry, deterministic=deterministic)
      return y[..., :horizon, :]
    if series is not None and spec.series_embedding:
      table = self.param(
        "series_embedding", initializers.normal(1.0), (self.n_targets, spec.series_embedding)
      )
      h = jnp.concatenate([h, table[series].astype(h.dtype)], axis=-1)
    h = nn.Dropout(spec.dense_dropout)(h, deterministic=deterministic)
    # With predict_delta the head starts at zero, so the untrained model *is* the naive
    # forecast and training can only move it where the data says corrections help.
    head_init = initializers.zeros_init() if spec.predict_delta else cell["kernel_init"]
    y = nn.Dense(horizon * n_out, kernel_init=head_init, dtype=cell["dtype"], name="head")(h)
    return y.reshape(h.shape[:-1] + (horizon, n_out))
