"""LSTM layers over `(batch, time, features)`: `LSTM`, `Bidirectional`, `StackedLSTM`."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxlstm.nn import cudnn
from flaxlstm.nn.cell import CellOptions, LSTMCell, cell_options
from flaxlstm.nn.dropout import Dropout, dropout_mask, is_active
from flaxlstm.nn.recurrence import fused_supported, lstm_recurrence

Array = jax.Array
Initializer = Callable[..., Array]


def flip_sequences(x: Array, seq_lengths: Array | None) -> Array:
  """Reverses `(B, T, ...)` along time; with `seq_lengths`, each sequence's valid prefix is
  reversed in place and its padding stays where it is (so flipping twice is the identity)."""
  if seq_lengths is None:
    return jnp.flip(x, axis=1)
  t = jnp.arange(x.shape[1])[None, :]
  lengths = seq_lengths[:, None]
  idx = jnp.where(t < lengths, lengths - 1 - t, t)
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


class LSTM(CellOptions):
  """One LSTM layer over `(*batch, time, features)`, with the input projection hoisted.

  The parameter tree is exactly that of `flax.linen.RNN(LSTMCell(...))`: `{'cell': {...}}`,
  so parameters move freely between `LSTMCell`, `nn.RNN` and this layer with identical
  outputs. The recurrence is a `lax.scan` over a pure step function (recurrence.py); the
  `W x + b` matmul for all time steps runs once, before the loop. With
  `implementation="cudnn"` the layer runs on cuDNN's kernel instead (cudnn.py).

  Attributes:
    features: hidden size H.
    return_sequences: return all outputs `(*batch, T, R)`; else only the last one
      `(*batch, R)` (with `seq_lengths`, each sequence's own last output).
    return_carry: also return the final carry: `(carry, outputs)`.
    reverse: run from the end of each sequence to its start; outputs stay in input order
      (like `nn.RNN(..., reverse=True, keep_order=True)`).
    unroll: `lax.scan` unroll factor.
    dropout: variational dropout on the inputs (one mask per sequence for all steps).
    recurrent_dropout: variational dropout on the fed-back `h` (Gal & Ghahramani, 2016).
    remat: recompute the loop in chunks in the backward pass so saved activations grow like
      sqrt(T) rather than T (long sequences).
    deterministic: disables dropout; can also be passed to `__call__`.
    The `CellOptions` attributes (`features`, `forget_bias`, ...) configure the cell.

  Dropout randomness comes from the `'dropout'` RNG stream only.
  """

  return_sequences: bool = True
  return_carry: bool = False
  reverse: bool = False
  unroll: int = 1
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  remat: bool = False
  deterministic: bool | None = None

  def make_cell(self) -> LSTMCell:
    return LSTMCell(self.features, **cell_options(self), name="cell")

  @nn.compact
  def __call__(
    self,
    inputs: Array,
    *,
    initial_carry: tuple[Array, Array] | None = None,
    seq_lengths: Array | None = None,
    deterministic: bool | None = None,
    reverse: bool | None = None,
  ):
    reverse = self.reverse if reverse is None else reverse
    cell = self.make_cell()
    if inputs.ndim < 2:
      raise ValueError(f"LSTM expects (*batch, time, features) inputs, got shape {inputs.shape}")
    p = cell.parameters(inputs.shape[-1])
    rng = None
    if is_active(self.dropout) or is_active(self.recurrent_dropout):
      if not nn.merge_param("deterministic", self.deterministic, deterministic):
        rng = lambda: self.make_rng("dropout")
    carry, out = run_layer(
      cell,
      p,
      inputs,
      initial_carry=initial_carry,
      seq_lengths=seq_lengths,
      reverse=reverse,
      dropout_rng=rng,
      **layer_options(self),
    )
    return (carry, out) if self.return_carry else out


def fold_batch(
  inputs: Array, seq_lengths: Array | None
) -> tuple[tuple[int, ...], Array, Array | None]:
  """`(*batch, T, D)` inputs -> `(batch_shape, x (B, T, D), lengths (B,) or None)`, with
  the padding past each length zeroed: NaN/inf there would otherwise poison the gradients
  through the input projection, although the outputs ignore those steps."""
  if inputs.ndim < 2:
    raise ValueError(f"LSTM expects (*batch, time, features) inputs, got shape {inputs.shape}")
  batch_shape, (t, d) = inputs.shape[:-2], inputs.shape[-2:]
  x = inputs.reshape((-1, t, d))  # any number of batch dims -> one
  lengths = None
  if seq_lengths is not None:
    lengths = jnp.broadcast_to(jnp.asarray(seq_lengths), batch_shape).reshape((x.shape[0],))
    x = jnp.where((jnp.arange(t)[None, :] < lengths[:, None])[..., None], x, 0)
  return batch_shape, x, lengths


# The options `run_layer` reads from a layer, Linen or NNX (the same attribute names).
LAYER_OPTIONS = ("dropout", "recurrent_dropout", "unroll", "remat", "return_sequences")


def layer_options(layer: Any) -> dict[str, Any]:
  return {name: getattr(layer, name) for name in LAYER_OPTIONS}


def run_layer(
  cell: LSTMCell,
  p: dict,
  inputs: Array,
  *,
  initial_carry: tuple[Array, Array] | None = None,
  seq_lengths: Array | None = None,
  reverse: bool = False,
  dropout: float = 0.0,
  recurrent_dropout: float = 0.0,
  dropout_rng: Callable[[], Array] | None = None,
  unroll: int = 1,
  remat: bool = False,
  return_sequences: bool = True,
) -> tuple[tuple[Array, Array], Array]:
  """One LSTM layer as a function of its cell, parameters and inputs: `(carry, out)`.

  The body of `LSTM` (Linen) and of `flaxlstm.nnx.LSTM`, shared so both run the same
  code: batch dims folded into one, padding zeroed, variational dropout masks drawn (from
  `dropout_rng()`, None = deterministic), the sequence flipped for `reverse`, and the
  time-major recurrence (`lstm_recurrence`: the fused custom VJP where it applies), or with
  `cell.implementation == "cudnn"` cuDNN's kernel (cudnn.py) where it supports the layer.
  `cell` supplies only its pure math (`project`, `recur`, dtypes), so an unbound Linen
  `LSTMCell` serves any framework's parameters `p`.
  """
  batch_shape, x, lengths = fold_batch(inputs, seq_lengths)
  b, t, d = x.shape

  if initial_carry is None:
    carry = cell.initialize_carry(jax.random.key(0), (b, d))
  else:
    carry = jax.tree.map(lambda a: a.reshape((b, -1)), initial_carry)
    carry = (carry[0].astype(cell.state_dtype), carry[1].astype(cell.compute_dtype))

  h_mask = None
  if dropout_rng is not None:
    if is_active(dropout):
      x = x * dropout_mask(dropout_rng(), dropout, (b, 1, d), x.dtype)
    if is_active(recurrent_dropout):
      h_mask = dropout_mask(dropout_rng(), recurrent_dropout, carry[1].shape, cell.compute_dtype)

  if reverse:
    x = flip_sequences(x, lengths)
  implementation = cell.implementation
  if implementation == "cudnn":
    reason = cudnn.unsupported(cell, recurrent_dropout=h_mask is not None, remat=remat)
    if reason is not None:
      cudnn.warn_fallback(reason, "fused" if fused_supported(cell) else "autodiff")
      implementation = "auto"
  if implementation == "cudnn":
    (carry,), ys = cudnn.run(cell, [p], [carry], x, lengths)  # batch-major in and out
  else:
    # Time-major inside the loop: each step then reads one contiguous (B, ...) slab.
    xt = jnp.swapaxes(x, 0, 1)
    mask = None
    if lengths is not None:
      mask = (jnp.arange(t)[:, None] < lengths[None, :])[..., None]
    carry, ys = lstm_recurrence(
      cell,
      p,
      carry,
      xt,
      mask=mask,
      h_mask=h_mask,
      unroll=unroll,
      remat=remat,
      implementation=implementation,
    )
    ys = jnp.swapaxes(ys, 0, 1)  # only computed if used (XLA drops it otherwise)

  carry_out = jax.tree.map(lambda a: a.reshape(batch_shape + a.shape[1:]), carry)
  if return_sequences:
    if reverse:
      ys = flip_sequences(ys, lengths)
    out = ys.reshape(batch_shape + ys.shape[1:])
  else:
    out = carry_out[1]  # h at each sequence's own last step (masked steps keep the carry)
  return carry_out, out


def _concat(a: Array, b: Array) -> Array:
  return jnp.concatenate([a, b], axis=-1)


class Bidirectional(nn.Module):
  """Runs `forward_rnn` and `backward_rnn` (called with `reverse=True`) and merges outputs.

  Works with `LSTM` layers; the backward outputs are in input order. With
  `return_sequences=False` layers, the merge is of the forward layer's last output and the
  backward layer's output at time 0 (its last step). If the layers have `return_carry=True`,
  returns `((forward_carry, backward_carry), merged)`.
  """

  forward_rnn: nn.Module
  backward_rnn: nn.Module
  merge_fn: Callable[[Array, Array], Array] = _concat

  @nn.compact
  def __call__(
    self,
    inputs: Array,
    *,
    seq_lengths: Array | None = None,
    deterministic: bool | None = None,
    initial_carry=None,
  ):
    kw = {} if deterministic is None else {"deterministic": deterministic}
    fwd_carry, bwd_carry = (None, None) if initial_carry is None else initial_carry
    fwd = self.forward_rnn(inputs, seq_lengths=seq_lengths, initial_carry=fwd_carry, **kw)
    bwd = self.backward_rnn(
      inputs, seq_lengths=seq_lengths, initial_carry=bwd_carry, reverse=True, **kw
    )
    if getattr(self.forward_rnn, "return_carry", False):
      (cf, yf), (cb, yb) = fwd, bwd
      return (cf, cb), self.merge_fn(yf, yb)
    return self.merge_fn(fwd, bwd)


class StackedLSTM(CellOptions):
  """A stack of `LSTM` layers (optionally bidirectional), e.g. `features=(512, 256)`.

  Attributes:
    features: hidden size of each layer, bottom to top.
    dropout: each layer's variational input dropout (Keras' `dropout`).
    recurrent_dropout: each layer's variational recurrent dropout.
    inter_layer_dropout: ordinary dropout on the outputs of every layer but the last
      (PyTorch `nn.LSTM`'s `dropout`).
    return_sequences: the top layer returns all steps, else its last output.
    return_carry: also return each layer's final carry, bottom to top: `(carries, out)`
      (a decoder starts from them). With `bidirectional`, each is a (forward, backward) pair.
    bidirectional: each layer is a `Bidirectional` pair (outputs concatenated: 2x width).
    unroll, remat: passed to every `LSTM` layer; so are the `CellOptions`.
  """

  features: Sequence[int] = (512, 256)  # type: ignore[assignment]  # one width per layer
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  inter_layer_dropout: float = 0.0
  return_sequences: bool = True
  return_carry: bool = False
  bidirectional: bool = False
  unroll: int = 1
  remat: bool = False
  deterministic: bool | None = None

  @nn.compact
  def __call__(
    self, inputs: Array, *, seq_lengths: Array | None = None, deterministic: bool | None = None
  ):
    if not self.features:
      raise ValueError("StackedLSTM needs at least one layer in `features`")
    rates = (self.dropout, self.recurrent_dropout, self.inter_layer_dropout)
    training = False
    if any(is_active(r) for r in rates):
      deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
      training = not deterministic
    if self._one_cudnn_call(training):
      return self._cudnn_stack(inputs, seq_lengths)
    x = inputs
    carries = []
    n = len(self.features)
    for i, h in enumerate(self.features):
      last = i == n - 1
      layer_kw = dict(
        return_sequences=self.return_sequences or not last,
        unroll=self.unroll,
        dropout=self.dropout,
        recurrent_dropout=self.recurrent_dropout,
        remat=self.remat,
        return_carry=self.return_carry,
        **cell_options(self),
      )
      layer: nn.Module
      if self.bidirectional:
        layer = Bidirectional(
          LSTM(h, parent=None, **layer_kw),  # adopted by the pair
          LSTM(h, parent=None, **layer_kw),
          name=f"bilstm_{i}",
        )
      else:
        layer = LSTM(h, name=f"lstm_{i}", **layer_kw)
      x = layer(x, seq_lengths=seq_lengths, deterministic=deterministic)
      if self.return_carry:
        carry, x = x
        carries.append(carry)
      if not last and is_active(self.inter_layer_dropout):
        x = Dropout(self.inter_layer_dropout)(x, deterministic=deterministic)
    return (tuple(carries), x) if self.return_carry else x

  @nn.nowrap
  def _one_cudnn_call(self, training: bool) -> bool:
    """Whether the whole stack runs as one cuDNN call (`implementation="cudnn"`, one width,
    no dropout mask drawn): cuDNN then runs the layers without a round trip per layer.
    Otherwise every layer makes its own call (or falls back, cudnn.py)."""
    if self.implementation != "cudnn" or len(set(self.features)) != 1 or training:
      return False
    cell = LSTMCell(self.features[0], **cell_options(self), parent=None)
    return cudnn.unsupported(cell, recurrent_dropout=False, remat=self.remat) is None

  @nn.nowrap
  def _cudnn_stack(self, inputs: Array, seq_lengths: Array | None):
    """The stack as one cuDNN call, on the parameters the layers would have (same names)."""
    h, n, bi = self.features[0], len(self.features), self.bidirectional
    batch_shape, x, lengths = fold_batch(inputs, seq_lengths)
    d = x.shape[-1]
    opts = cell_options(self)
    cells, width = [], d
    for i in range(n):
      if bi:
        cells += _PairParams(h, **opts, name=f"bilstm_{i}")(width)
      else:
        cells.append(_LayerParams(h, **opts, name=f"lstm_{i}")(width))
      width = (2 if bi else 1) * h
    cell = LSTMCell(h, **opts, parent=None)
    zero = cell.initialize_carry(jax.random.key(0), (x.shape[0], d))
    carries, ys = cudnn.run(cell, cells, [zero] * len(cells), x, lengths, bidirectional=bi)
    carries = [jax.tree.map(lambda a: a.reshape(batch_shape + a.shape[1:]), c) for c in carries]
    if self.return_sequences:
      out = ys.reshape(batch_shape + ys.shape[1:])
    else:  # each direction's own last output (the backward one's is at time 0)
      out = carries[-1][1] if not bi else _concat(carries[-2][1], carries[-1][1])
    if not self.return_carry:
      return out
    per_layer = [tuple(carries[2 * i : 2 * i + 2]) for i in range(n)] if bi else carries
    return tuple(per_layer), out


class _LayerParams(CellOptions):
  """An `LSTM` layer's parameters (`{'cell': ...}`), created or fetched without running the
  layer: for `StackedLSTM`'s one cuDNN call, so its parameter tree is the layers' own."""

  @nn.compact
  def __call__(self, in_features: int) -> dict:
    return LSTMCell(self.features, **cell_options(self), name="cell").parameters(in_features)


class _PairParams(CellOptions):
  """A `Bidirectional` pair's parameters, forward then backward (cuDNN's order)."""

  @nn.compact
  def __call__(self, in_features: int) -> list[dict]:
    opts = cell_options(self)
    return [
      _LayerParams(self.features, **opts, name=side)(in_features)
      for side in ("forward_rnn", "backward_rnn")
    ]
