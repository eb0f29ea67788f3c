"""Decoders: how the encoder's final state becomes the horizon (`model.decoder`), a registry.

    DECODERS  name -> Decoder: "dense" (one map from the last state to every value),
              "parallel" (one step of the encoder's cell per output segment, all at once:
              SegRNN's PMF), "recurrent" (the same steps one after another: RMF)

A decoder is called inside the `Forecaster`'s compact method, so the modules and parameters
it makes are the forecaster's (`head`, `decoder`, `series_embedding`: the names runs were
saved with). Each carries its own rules (`check`), which the schema reads. A new decoder is
one class here and one entry.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from flaxlstm.config.specs import ModelSpec, RunSpec
from flaxlstm.forecast import encoders
from flaxlstm.nn.blocks import ParallelDecoder, RecurrentDecoder
from flaxlstm.nn.dropout import Dropout

Array = jax.Array


class Decoder:
  """A registry entry: `decode(...) -> (B', horizon, n_out)` and its rules."""

  name: str = ""

  def check(self, spec: RunSpec, c: Any) -> None:
    """The decoder's rules (`c.model`, ...: the sections' checkers)."""
    del spec, c

  def decode(
    self,
    model: Any,
    carry: Any,
    h: Array,
    series: Array | None,
    future: Array | None,
    n_out: int,
    deterministic: bool,
  ) -> Array:
    """The encoder's top carry and last output (and the known future `(B', horizon, K)`)
    -> `(B', horizon, n_out)`; `model` is the calling `Forecaster`."""
    raise NotImplementedError


def _series_rows(model: Any) -> int:
  """Rows of the series embedding: the columns (independent channels) or the series."""
  return model.n_series or model.n_targets


class Dense(Decoder):
  """One dense map from the last state (with the series embedding and the known future
  flattened beside it) to all `horizon x n_out` values."""

  name = "dense"

  def decode(self, model, carry, h, series, future, n_out, deterministic):
    spec, horizon = model.spec, model.horizon
    common = encoders.common_options(spec)
    if series is not None and spec.series_embedding:
      table = model.param(
        "series_embedding", initializers.normal(1.0), (_series_rows(model), spec.series_embedding)
      )
      h = jnp.concatenate([h, table[series].astype(h.dtype)], axis=-1)
    if future is not None:
      h = jnp.concatenate([h, future.reshape(future.shape[0], -1).astype(h.dtype)], axis=-1)
    h = Dropout(spec.dense_dropout)(h, deterministic=deterministic)
    head = nn.Dense(
      horizon * n_out, kernel_init=head_init(spec), dtype=common["dtype"], name="head"
    )
    y = head(h)
    return y.reshape(h.shape[:-1] + (horizon, n_out))


def head_init(spec: ModelSpec) -> Any:
  """The output map's initializer: with predict_delta zeros, so that the untrained model
  *is* the naive forecast (train.eval_at_start scores it) and training can only move it
  where the data says corrections help; otherwise the encoder's kernel initializer."""
  return (
    initializers.zeros_init()
    if spec.predict_delta
    else encoders.common_options(spec)["kernel_init"]
  )


class Segments(Decoder):
  """One step of the encoder's cell per output segment of `model.segment_length` steps,
  from the encoder's final carry: all at once (`parallel`) or one after another."""

  def __init__(self, name: str, parallel: bool):
    self.name, self.parallel = name, parallel

  def check(self, spec: RunSpec, c: Any) -> None:
    m = spec.model
    c.model.check("decoder", m.segment_length > 0, "needs model.segment_length > 0")
    c.model.check("decoder", not m.bidirectional, "needs a unidirectional encoder")
    if not self.parallel and m.series_embedding:
      c.model.check(
        "series_embedding",
        False,
        f"is not read by model.decoder={self.name!r} (use 'dense' or 'parallel')",
      )

  def decode(self, model, carry, h, series, future, n_out, deterministic):
    del h  # the carry holds it
    spec, horizon = model.spec, model.horizon
    segments = -(-horizon // spec.segment_length)  # the last one is cut to the horizon
    if future is not None:
      # (B', H, K) -> (B', m, S * K): each output segment's known values, zero-padded.
      pad = segments * spec.segment_length - horizon
      future = jnp.pad(future, ((0, 0), (0, pad), (0, 0)))
      future = future.reshape(future.shape[0], segments, -1)
    common = dict(
      cell=encoders.ENCODERS[spec.encoder].cell(spec, spec.hidden_sizes[-1]),
      n_segments=segments,
      segment_length=spec.segment_length,
      out_features=n_out,
      dropout=spec.dense_dropout,
      kernel_init=encoders.common_options(spec)["kernel_init"],
      output_init=head_init(spec),
      name="decoder",
    )
    if self.parallel:
      y = ParallelDecoder(
        n_series=_series_rows(model) if series is not None else 0,
        series_features=spec.series_embedding,
        **common,
      )(carry, series, future, deterministic=deterministic)
    else:
      y = RecurrentDecoder(**common)(carry, future, deterministic=deterministic)
    return y[..., :horizon, :]


DECODERS: dict[str, Decoder] = {}


def register(decoder: Decoder) -> Decoder:
  DECODERS[decoder.name] = decoder
  return decoder


register(Dense())
register(Segments("parallel", parallel=True))
register(Segments("recurrent", parallel=False))
