"""`Forecaster`: an encoder, a decoder and a head, each chosen by name from its registry
(encoders.py, decoders.py, heads.py), predicting `horizon` steps at once.

Pure modelling: the model is built from a `ModelSpec` and nothing else (no files, no run
directories).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from flaxlstm.config.specs import ModelSpec
from flaxlstm.forecast import decoders, encoders, heads
from flaxlstm.nn.blocks import RevIN, SegmentEmbedding

Array = jax.Array

# model.volatility_scaling: the smallest volatility a window is divided by (scaled units),
# so a constant window does not divide by zero.
VOLATILITY_FLOOR = 1e-3
# The choices of model.channels.
CHANNELS = ("mixed", "independent")
# The choices of model.linear_skip_init: the highway starts at zero (the untrained model is
# the LSTM's alone), or at the ridge fit of its own inputs to its own targets (`skip_problem`).
LINEAR_SKIP_INITS = ("zeros", "ridge")


def level_free(spec: ModelSpec, x: Array) -> tuple[Array, Array | None, Array | None]:
  """The windows `x (..., L, F)` as the encoder and the highway read them, before RevIN:
  relative to their last value (`predict_delta`), in units of their volatility
  (`volatility_scaling`). Returns `(x, vol (..., 1, F) or None, log_vol or None)`."""
  vol = log_vol = None
  if spec.predict_delta:
    # Level-free inputs: each feature relative to its last observed value, so a level
    # shift between the training years and the test years changes nothing.
    x = x - x[..., -1:, :]
  if spec.volatility_scaling:
    # Changes in units of the window's own volatility: a calm week and a stormy one reach
    # the model alike, and its forecast (a distribution's spread too) is scaled back by
    # the window's volatility, so calibration learned on the training years carries over
    # to calmer or wilder test years. A statistic of the input, like RevIN's: no gradient.
    vol = jax.lax.stop_gradient(
      jnp.maximum(jnp.mean(jnp.abs(jnp.diff(x, axis=-2)), axis=-2, keepdims=True), VOLATILITY_FLOOR)
    )
    x = x / vol
    if spec.volatility_input:
      # The one statistic scaling hides from the model, as DeepAR's log-scale covariate.
      log_vol = jnp.log(vol)
  return x, vol, log_vol


def skip_problem(
  spec: ModelSpec, target_columns: tuple[int, ...], x: Array, y_last: Array, y: Array
) -> tuple[Array, Array]:
  """The linear highway's least-squares problem on windows `x (B, L, F)` with last targets
  `y_last (B, T)` and futures `y (B, H, T)` of a point forecaster: `(inputs, targets)`,
  the rows the `linear_skip` layer reads and the values its output must equal for the
  forecast to be `y` with the rest of the model at zero (the untrained model's decoder
  head, with `predict_delta`). `(B, L * F)` and `(B, H * T)`; with independent channels
  one row per (window, column): `(B * F, L)` and `(B * F, H)`. RevIN is not covered (its
  statistics are a layer's)."""
  if spec.revin:
    raise ValueError("skip_problem does not cover RevIN")
  x, vol, _ = level_free(spec, x)
  if spec.predict_delta:
    y = y - y_last[..., None, :]
  if vol is not None:
    y = y / (vol if spec.channels == "independent" else vol[..., jnp.asarray(target_columns)])
  if spec.channels == "independent":  # as __call__: row b * C + c is column c of window b
    return (
      jnp.swapaxes(x, -1, -2).reshape(-1, x.shape[-2]),
      jnp.swapaxes(y, -1, -2).reshape(-1, y.shape[-2]),
    )
  return x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)


class Forecaster(nn.Module):
  """Direct multi-step forecaster: `(B, lookback, n_features) -> (B, horizon, n_targets)`,
  or `(B, horizon, n_targets, P)` distribution parameters with a distribution head.

  The pieces, in order (each a `ModelSpec` option):

  - levels: `predict_delta` takes inputs relative to their last value and adds the last
    observed target `y_last (B, n_targets)` back to the output (the head starts at zero, so
    the untrained model is the naive forecast); or `revin` normalizes every window by its
    own mean and std and maps the output back (`RevIN`).
  - `volatility_scaling` (with `predict_delta`) divides the changes by the window's mean
    absolute step change and multiplies the forecast (its offset from `y_last`, and a
    distribution's scale) by it; `volatility_input` also gives the encoder each column's
    log volatility, as a constant channel per column (like `static`).
  - channels: `"mixed"` reads all columns as one multivariate window. `"independent"`
    reshapes `(B, L, C) -> (B * C, L, 1)`: one shared model forecasts every column from its
    own past, optionally told which column by a learned series embedding, and the result is
    reshaped back to `(B, H, C)`. The targets are then the inputs, in order.
  - encoder (`model.encoder`, forecast/encoders.py): a recurrent stack (`"lstm"`: a
    `StackedLSTM`; `"gru"`; any registered cell) over the steps, or over
    `SegmentEmbedding` segments of `segment_length` steps.
  - decoder (`model.decoder`, forecast/decoders.py): `"dense"` maps the last state to all
    `horizon x n_targets` values at once; `"parallel"` runs one step of the encoder's cell
    per output segment, all at once, from the encoder's final carry (`ParallelDecoder`);
    `"recurrent"` runs them one after another (`RecurrentDecoder`). No decoder feeds back
    point forecasts unless it is `"recurrent"`.
  - `linear_skip` adds a linear map from the whole (normalized) window, zero at start or,
    with `linear_skip_init="ridge"`, the ridge fit of `skip_problem` (set by the trainer:
    train/assembly.py) (LSTNet's autoregressive highway; with independent channels,
    NLinear's model).
  - head (`model.head`, forecast/heads.py): the point forecast, or the P parameters of a
    predictive distribution per value (Gaussian, Student-t, non-crossing quantiles). Every
    decoder emits P raw values per output; the head constrains them, and the levels
    (`predict_delta`, RevIN) are restored on the distribution's location and scale.
  - covariates (optional arguments): `known (B, lookback + horizon, K)`, values known in
    advance (calendar, planned inputs), joins the encoder's inputs over the lookback and
    the decoder's over the horizon (flattened into the dense head; per output segment
    into the segment decoders); `static (B, Z)` joins every encoder step; `series (B,)`,
    a long table's series ids, selects the learned series embedding. Levels
    (`predict_delta`, RevIN) apply to `x` only: covariates are not series values.

  Attributes:
    horizon: steps forecast.
    n_targets: columns forecast.
    spec: the model options.
    target_columns: position of each target among the input columns; RevIN maps each
      output back with its column's statistics (`"independent"` uses all columns).
    n_series: a long table's number of training series (rows of the series embedding).
  """

  horizon: int
  n_targets: int
  spec: ModelSpec = ModelSpec()
  target_columns: tuple[int, ...] = ()
  n_series: int = 0

  @property
  def head(self) -> heads.Head:
    return heads.make(self.spec.head, self.spec.quantiles)

  @nn.compact
  def __call__(
    self,
    x: Array,
    y_last: Array | None = None,
    known: Array | None = None,
    static: Array | None = None,
    series: Array | None = None,
    *,
    deterministic: bool = True,
  ) -> Array:
    spec = self.spec
    independent = spec.channels == "independent"
    if spec.predict_delta and y_last is None:
      raise ValueError("Forecaster(predict_delta=True) needs y_last")
    x, vol, log_vol = level_free(spec, x)
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
    n_out = self.n_targets
    n_params = self.head.n_params
    width = max(n_params, 1)  # raw outputs per forecast value
    covariates = [
      None if a is None else a.reshape((-1,) + a.shape[len(batch_shape) :]) for a in (known, static)
    ]
    if series is not None:
      series = series.reshape(-1)
    if independent:
      # (B, L, C) -> (B * C, L, 1): every column is its own sample of one shared model.
      x = jnp.swapaxes(x, -1, -2).reshape((-1, length, 1))
      series = jnp.tile(jnp.arange(n_channels), x.shape[0] // n_channels)
      n_out = 1
      covariates = [None if a is None else jnp.repeat(a, n_channels, axis=0) for a in covariates]
    else:
      x = x.reshape((-1, length, n_channels))
    known, static = covariates
    if log_vol is not None:
      # (..., 1, F) -> one constant input channel per column, joined like a static covariate.
      log_vol = log_vol.reshape((-1, n_channels))
      if independent:
        log_vol = log_vol.reshape((-1, 1))  # row b * C + c is column c of window b, as x
      static = log_vol if static is None else jnp.concatenate([static, log_vol], axis=-1)
    inputs = x
    if known is not None:
      inputs = jnp.concatenate([inputs, known[:, :length].astype(x.dtype)], axis=-1)
    if static is not None:
      s = jnp.broadcast_to(static[:, None].astype(x.dtype), (x.shape[0], length, static.shape[-1]))
      inputs = jnp.concatenate([inputs, s], axis=-1)

    carry, h = self._encode(inputs, deterministic)
    future = None if known is None else known[:, length:]
    y = self._decode(carry, h, series, future, n_out * width, deterministic)
    if spec.linear_skip:
      # LSTNet's autoregressive highway (Lai et al., 2018): a linear map from the whole
      # window to the forecast, so the LSTM only has to model what a linear model cannot.
      y = y + nn.Dense(
        self.horizon * n_out * width, kernel_init=initializers.zeros_init(), name="linear_skip"
      )(x.reshape(x.shape[0], -1)).reshape(y.shape)
    y = y.astype(jnp.float32)
    if vol is not None:  # (..., 1, F) -> each target's: (..., 1, T)
      vol = vol if independent else vol[..., jnp.asarray(self.target_columns)]
    if n_params:
      return self._distribution(y, batch_shape, n_channels, revin, stats, y_last, vol)
    if independent:
      y = jnp.swapaxes(y.reshape((-1, n_channels, self.horizon)), -1, -2)
    y = y.reshape(batch_shape + (self.horizon, self.n_targets))
    if vol is not None:
      y = y * vol
    if revin is not None:
      assert stats is not None
      y = revin.denormalize(y, stats, None if independent else self.target_columns)
    if spec.predict_delta:
      assert y_last is not None  # checked above
      y = y + y_last[..., None, :]
    return y

  def _distribution(
    self, y: Array, batch_shape, n_channels: int, revin, stats, y_last, vol
  ) -> Array:
    """Raw decoder outputs `(B', H, n_out * P)` -> distribution parameters `(B, H, T, P)`
    in the data's (scaled) units."""
    head: Any = self.head  # a distribution head
    horizon, n_params = self.horizon, head.n_params
    if self.spec.channels == "independent":
      y = jnp.moveaxis(y.reshape((-1, n_channels, horizon, n_params)), 1, 2)
    params = head.constrain(y.reshape(batch_shape + (horizon, self.n_targets, n_params)))
    shift, scale = None, None
    if revin is not None:
      cols = None if self.spec.channels == "independent" else self.target_columns
      zero = jnp.zeros(params.shape[:-1], params.dtype)
      shift = revin.denormalize(zero, stats, cols)
      scale = revin.denormalize(zero + 1, stats, cols) - shift
    if self.spec.predict_delta:
      assert y_last is not None  # checked in __call__
      shift = jnp.broadcast_to(y_last[..., None, :], params.shape[:-1])
      scale = jnp.ones_like(shift) if vol is None else jnp.broadcast_to(vol, shift.shape)
    if shift is None:
      return params
    return head.affine(params, shift, scale)

  def _encode(self, x: Array, deterministic: bool):
    spec = self.spec
    if spec.segment_length:
      common = encoders.common_options(spec)
      x = SegmentEmbedding(
        spec.segment_length,
        spec.hidden_sizes[0],
        kernel_init=common["kernel_init"],
        dtype=common["dtype"],
        name="segments",
      )(x)
    encoder = encoders.ENCODERS[spec.encoder].module(spec, name="encoder")
    carries, h = encoder(x, deterministic=deterministic)
    return carries[-1], h

  def _decode(self, carry, h: Array, series, future, n_out: int, deterministic: bool) -> Array:
    """The encoder's top carry and last output (and the known future `(B', horizon, K)`)
    -> `(B', horizon, n_out)`, by the decoder `model.decoder` names."""
    if series is not None:
      # -1 (an unseen series) is refused before; rows: the columns or the series.
      series = jnp.clip(series, 0, (self.n_series or self.n_targets) - 1)
    decoder = decoders.DECODERS[self.spec.decoder]
    return decoder.decode(self, carry, h, series, future, n_out, deterministic)
