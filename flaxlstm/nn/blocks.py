r"""Research blocks around the LSTM for forecasting: `RevIN`, `SegmentEmbedding`,
`ParallelDecoder` and `RecurrentDecoder`.

They are the pieces of SegRNN-style models (Lin et al., 2023: segment-wise iterations,
parallel multi-step decoding, instance normalization), written so that each can be
imported on its own into any Flax Linen model. Shapes use `B` batch, `L` lookback, `F`
features, `S` segment length, `n = L / S` input segments, `m` output segments, `d` hidden
size.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from flaxlstm.nn.cells.base import feedback
from flaxlstm.nn.cells.lstm import LSTMCell
from flaxlstm.nn.dropout import Dropout

Array = jax.Array
Carry = Any  # the decoder cell's carry (`LSTMCarry(c, h)` for the LSTM)


class RevIN(nn.Module):
  r"""Reversible instance normalization (Kim et al., ICLR 2022).

  Each window is normalized by its own statistics over time, per feature, and the model's
  output is mapped back with the same statistics, so a level or scale shift between the
  training years and the test years reaches the model as nothing at all:

  .. math::

      \mu = \tfrac{1}{L} \textstyle\sum_t x_t, \quad
      \sigma = \sqrt{\tfrac{1}{L} \textstyle\sum_t (x_t - \mu)^2 + \epsilon}, \quad
      \hat x_t = \gamma \odot \frac{x_t - \mu}{\sigma} + \beta, \qquad
      y_t = \sigma \odot \frac{\hat y_t - \beta}{\gamma + \epsilon^2} + \mu

  `gamma`, `beta` (shape `(F,)`, starting at 1 and 0) exist only with `affine=True`.
  Statistics are not learned and carry no gradient into the window they came from beyond
  the plain algebra above (as in the paper's reference code, they are not stopped).

  Use `normalize` on the inputs and `denormalize` on the outputs:

      revin = RevIN(n_features=F, affine=True)
      x_hat, stats = revin.normalize(x)            # x: (..., L, F)
      y = revin.denormalize(model(x_hat), stats)   # y_hat: (..., H, F)

  `denormalize(..., columns=(i, j))` maps outputs that forecast only inputs `i, j`.
  """

  n_features: int
  affine: bool = False
  eps: float = 1e-5

  def setup(self) -> None:
    if self.affine:
      self.scale = self.param("scale", initializers.ones_init(), (self.n_features,))
      self.bias = self.param("bias", initializers.zeros_init(), (self.n_features,))

  def normalize(self, x: Array) -> tuple[Array, tuple[Array, Array]]:
    """`x (..., L, F) -> (x_hat, (mean, std))`; `mean`, `std` have shape `(..., 1, F)`."""
    mean = jnp.mean(x, axis=-2, keepdims=True)
    std = jnp.sqrt(jnp.var(x, axis=-2, keepdims=True) + self.eps)
    x = (x - mean) / std
    if self.affine:
      x = x * self.scale + self.bias
    return x, (mean, std)

  def denormalize(
    self, y: Array, stats: tuple[Array, Array], columns: tuple[int, ...] | None = None
  ) -> Array:
    """`y (..., H, T) -> original units`; `columns`: the input feature of each output (all
    features, in order, when None)."""
    mean, std = stats
    idx = jnp.arange(self.n_features) if columns is None else jnp.asarray(columns)
    if self.affine:
      y = (y - self.bias[idx]) / (self.scale[idx] + self.eps * self.eps)
    return y * std[..., idx] + mean[..., idx]


class SegmentEmbedding(nn.Module):
  r"""Cuts the window into segments of `segment_length` steps and embeds each linearly:
  `(..., L, F) -> (..., L / S, features)`, with :math:`e_k = \mathrm{ReLU}(W\,
  \mathrm{vec}(x_{kS:(k+1)S}) + b)`.

  An LSTM over the `L / S` segment embeddings iterates S times fewer steps than one over
  the raw points (SegRNN's segment-wise iterations), which is both faster and, on long
  lookbacks, easier to train.
  """

  segment_length: int
  features: int
  kernel_init: Callable[..., Array] = initializers.lecun_normal()
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    length, n_features = x.shape[-2:]
    if length % self.segment_length:
      raise ValueError(
        f"a window of {length} steps does not split into segments of {self.segment_length}"
      )
    segments = x.reshape(x.shape[:-2] + (length // self.segment_length, -1))
    return nn.relu(
      nn.Dense(self.features, kernel_init=self.kernel_init, dtype=self.dtype, name="dense")(
        segments
      )
    )


def _embedding_table(module: nn.Module, name: str, rows: int, width: int) -> Array:
  # Unit normal, as SegRNN's torch.randn: the embeddings are inputs of the same scale as a
  # ReLU segment embedding, not small corrections.
  return module.param(name, initializers.normal(1.0), (rows, width))


class ParallelDecoder(nn.Module):
  r"""Parallel multi-step decoding (SegRNN's PMF): every output segment `j` is one step of
  the decoder's cell from the encoder's final carry, with a learned position embedding as
  input, all `m` steps computed at once (no step waits for another, so errors cannot
  compound). For the LSTM:

  .. math::

      z_j = W\,[p_j; s] + K k_j + U h_L + b, \quad (c_j, h_j) = \mathrm{gates}(c_L, z_j),
      \quad \hat y_{jS:(j+1)S} = V \,\mathrm{dropout}(h_j) + a

  `p_j` is the position embedding (as wide as the cell), `s` the optional series embedding
  of the sample's series (`series_features` wide; pass `series` ids), `k_j` the optional
  known-in-advance inputs of output segment `j` (pass `known`; e.g. its calendar). The
  decoder's cell (`cell`, e.g. `LSTMCell(d)`) has its own parameters; its carry is the
  encoder's, so it is the encoder's kind of cell.

  Performance: with an `LSTMCell` (its step split: `recurrent_preactivations`,
  `activate`), the `m` steps share one `h_L`, so `U h_L + b` is computed once per sample,
  and `W [p_j; s]` once per (position, series) pair for the whole batch; what remains per
  (sample, segment) is elementwise gate math and the output map. Running the decoder as
  `B x m` full steps on a repeated carry (as the reference code does, and as any other cell
  runs here: one call of the cell over the `m` segments) is several times slower
  (`experiments/benchmarks/parallel_decoder.py`, BENCHMARKS.md).

  Attributes:
    cell: the decoder's cell, `features` wide (the encoder's top layer).
    n_segments: `m`, output segments.
    segment_length: `S`, steps per output segment.
    out_features: values per output step (1 for a channel-independent model).
    n_series: rows of the series embedding (0: no series embedding).
    series_features: width of the series embedding.
    dropout: on `h_j` before the output map.
    kernel_init: initializer of the output and known-input maps.
    output_init: the output map's own initializer, if not `kernel_init` (zeros: the
      decoder's forecast starts at zero).
  """

  cell: nn.Module
  n_segments: int = 1
  segment_length: int = 1
  out_features: int = 1
  n_series: int = 0
  series_features: int = 0
  dropout: float = 0.0
  kernel_init: Callable[..., Array] = initializers.glorot_uniform()
  output_init: Callable[..., Array] | None = None  # the output map's; None: kernel_init

  @nn.compact
  def __call__(
    self,
    carry: Carry,
    series: Array | None = None,
    known: Array | None = None,
    *,
    deterministic: bool = True,
  ) -> Array:
    """`carry` (leaves `(*batch, ...)`) -> `(*batch, m * S, out_features)`.

    `series`: int ids of shape `batch` (needed when `n_series > 0`). `known`: inputs of
    each output segment, `(*batch, m, E)`, mapped straight to the gates. Gathering the
    projected table per sample measured faster on CPU than giving the carry a series axis
    and broadcasting (BENCHMARKS.md, the parallel decoder).
    """
    cell = self.cell
    d = cell.features
    position = _embedding_table(self, "position_embedding", self.n_segments, d)
    use_series = self.n_series and self.series_features
    table = None
    if use_series:
      if series is None:
        raise ValueError("ParallelDecoder(n_series > 0) needs the series ids")
      table = _embedding_table(self, "series_embedding", self.n_series, self.series_features)
    if isinstance(cell, LSTMCell):  # the shortcut is the LSTM's gate math, split
      out = self._shared_h(cell, carry, position, table, series, known)
    else:
      out = self._steps(cell, carry, position, table, series, known)
    out = Dropout(self.dropout)(out, deterministic=deterministic)
    y = nn.Dense(
      self.segment_length * self.out_features,
      kernel_init=self.output_init or self.kernel_init,
      name="output",
    )(out)
    return y.reshape(y.shape[:-2] + (self.n_segments * self.segment_length, self.out_features))

  @nn.nowrap
  def _shared_h(self, cell, carry, position, table, series, known) -> Array:
    """The LSTM's shortcut: `U h_L + b` once per sample (the class docstring)."""
    c, h = carry
    d = cell.features
    in_features = d + (table.shape[-1] if table is not None else 0)
    p = cell.parameters(in_features)
    if table is not None:
      # Every (series, position) input: (n_series, m, in_features), projected once.
      inputs = jnp.concatenate(
        [
          jnp.broadcast_to(position, (self.n_series,) + position.shape),
          jnp.broadcast_to(table[:, None], (self.n_series, self.n_segments, table.shape[-1])),
        ],
        axis=-1,
      )
      zx = cell.project(p, inputs)[series]  # series.shape + (m, 4d)
    else:
      zx = cell.project(p, position)  # (m, 4d)
    zh = cell.recurrent_preactivations(p, h)[..., None, :]  # once per sample: (*batch, 1, 4d)
    z = zx + zh
    if known is not None:
      z = z + nn.Dense(4 * d, use_bias=False, kernel_init=self.kernel_init, name="known")(
        known.astype(z.dtype)
      )
    c = jnp.broadcast_to(c[..., None, :], z.shape[:-1] + (c.shape[-1],))
    _, out = cell.activate(p, c, z)  # (*batch, m, R)
    return out

  @nn.nowrap
  def _steps(self, cell, carry, position, table, series, known) -> Array:
    """Any cell: one call over the `m` segments, from the carry repeated per segment."""
    batch = feedback(carry).shape[:-1]
    inputs = jnp.broadcast_to(position, batch + position.shape)
    if table is not None:
      rows = jnp.broadcast_to(
        table[series][..., None, :], batch + (self.n_segments, table.shape[-1])
      )
      inputs = jnp.concatenate([inputs, rows], axis=-1)
    if known is not None:
      inputs = jnp.concatenate([inputs, known.astype(inputs.dtype)], axis=-1)
    # The segment axis goes right after the batch axes: a state may have several axes of
    # its own (the mLSTM's `C (*batch, NH, DH, DH)`).
    per_segment = jax.tree.map(
      lambda a: jnp.broadcast_to(
        jnp.expand_dims(a, len(batch)), batch + (self.n_segments,) + a.shape[len(batch) :]
      ),
      carry,
    )
    _, out = cell(per_segment, inputs)
    return out


class RecurrentDecoder(nn.Module):
  r"""Recurrent (autoregressive) multi-step decoding (SegRNN's RMF): each output segment is
  predicted from the current state and fed back, embedded, as the next step's input:

  .. math::

      \hat y_0 = V h_L + a, \quad (c_j, h_j) = \mathrm{cell}((c_{j-1}, h_{j-1}),
      \mathrm{ReLU}(E \hat y_{j-1} + e)), \quad \hat y_j = V h_j + a

  Sequential over the `m` segments, and errors compound; kept as the classic baseline to
  `ParallelDecoder`. Attributes as `ParallelDecoder` (no series embedding); any cell (its
  output, the fed-back state, feeds the output map). With `known` inputs `(*batch, m, E)`,
  step `j` reads `ReLU(E [\hat y_{j-1}; k_j] + e)`.
  """

  cell: nn.Module
  n_segments: int = 1
  segment_length: int = 1
  out_features: int = 1
  dropout: float = 0.0
  kernel_init: Callable[..., Array] = initializers.glorot_uniform()
  output_init: Callable[..., Array] | None = None  # the output map's; None: kernel_init

  @nn.compact
  def __call__(
    self, carry: Carry, known: Array | None = None, *, deterministic: bool = True
  ) -> Array:
    cell = self.cell
    embed = nn.Dense(cell.features, kernel_init=self.kernel_init, name="embedding")
    head = nn.Dense(
      self.segment_length * self.out_features,
      kernel_init=self.output_init or self.kernel_init,
      name="output",
    )
    drop = Dropout(self.dropout)
    outputs = []
    h = feedback(carry)
    for j in range(self.n_segments):
      y = head(drop(h, deterministic=deterministic))
      outputs.append(y)
      if j + 1 < self.n_segments:
        step_in = y if known is None else jnp.concatenate([y, known[..., j + 1, :]], axis=-1)
        carry, h = cell(carry, nn.relu(embed(step_in)))
    y = jnp.stack(outputs, axis=-2)  # (B, m, S * out)
    return y.reshape(y.shape[:-2] + (self.n_segments * self.segment_length, self.out_features))
