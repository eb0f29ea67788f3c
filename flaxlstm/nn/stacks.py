"""Stacks of recurrent layers: `StackedLSTM` (optionally bidirectional; one cuDNN call for
the whole stack where it can) and `StackedRNN`, a stack of `RNN` layers over any cell."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
from flax import linen as nn

from flaxlstm.nn import kernels
from flaxlstm.nn.cells.base import options_of
from flaxlstm.nn.cells.lstm import ALL_LSTM_OPTIONS, LSTMCell, LSTMOptions
from flaxlstm.nn.dropout import Dropout, is_active
from flaxlstm.nn.layers import LSTM, RNN, Bidirectional, concat, fold_batch

Array = jax.Array


class StackOptions(nn.Module, kw_only=True):
  """A stack's options, declared once for `StackedLSTM` and `StackedRNN`.

  Attributes:
    dropout: each layer's variational input dropout (Keras' `dropout`).
    recurrent_dropout: each layer's variational recurrent dropout.
    inter_layer_dropout: ordinary dropout on the outputs of every layer but the last
      (PyTorch `nn.LSTM`'s `dropout`).
    return_sequences: the top layer returns all steps, else its last output.
    return_carry: also return each layer's final carry, bottom to top: `(carries, out)`
      (a decoder starts from them). With `bidirectional`, each is a (forward, backward) pair.
    bidirectional: each layer is a `Bidirectional` pair (outputs concatenated: 2x width).
    unroll, remat, implementation: passed to every layer.
  """

  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  inter_layer_dropout: float = 0.0
  return_sequences: bool = True
  return_carry: bool = False
  bidirectional: bool = False
  unroll: int = 1
  remat: bool = False
  implementation: str = "auto"
  deterministic: bool | None = None

  @nn.nowrap
  def training(self, deterministic: bool | None) -> tuple[bool, bool | None]:
    """(whether a dropout mask is drawn, the merged `deterministic`)."""
    rates = (self.dropout, self.recurrent_dropout, self.inter_layer_dropout)
    if any(is_active(r) for r in rates):
      deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
      return not deterministic, deterministic
    return False, deterministic

  @nn.nowrap
  def layer_options(self) -> dict[str, Any]:
    """What every layer of the stack takes from it."""
    return dict(
      unroll=self.unroll,
      dropout=self.dropout,
      recurrent_dropout=self.recurrent_dropout,
      remat=self.remat,
      implementation=self.implementation,
    )

  @nn.nowrap
  def run_layers(
    self,
    make_layer: Callable[..., nn.Module],
    features: Sequence[int],
    inputs: Array,
    seq_lengths: Array | None,
    deterministic: bool | None,
    prefix: str,
  ):
    """The stack's body, called in its compact method (whose children the layers become):
    layer `i` is `make_layer(width, return_sequences=..., return_carry=...)`, named
    `{prefix}_{i}` (a `Bidirectional` pair: `bi{prefix}_{i}`), ordinary dropout between
    layers; returns `(carries, out)` with `return_carry`, else `out`."""
    if not features:
      raise ValueError(f"{type(self).__name__} needs at least one layer in `features`")
    x, carries, n = inputs, [], len(features)
    for i, h in enumerate(features):
      last = i == n - 1
      kw = dict(return_sequences=self.return_sequences or not last, return_carry=self.return_carry)
      layer: nn.Module
      if self.bidirectional:
        layer = Bidirectional(
          make_layer(h, parent=None, **kw),  # adopted by the pair
          make_layer(h, parent=None, **kw),
          name=f"bi{prefix}_{i}",
        )
      else:
        layer = make_layer(h, name=f"{prefix}_{i}", **kw)
      x = layer(x, seq_lengths=seq_lengths, deterministic=deterministic)
      if self.return_carry:
        carry, x = x
        carries.append(carry)
      if not last and is_active(self.inter_layer_dropout):
        x = Dropout(self.inter_layer_dropout)(x, deterministic=deterministic)
    return (tuple(carries), x) if self.return_carry else x


class StackedRNN(StackOptions):
  """A stack of `RNN` layers over any cell: `cell(width)` makes each layer's cell.

      StackedRNN(lambda h: nn.GRUCell(h), features=(128, 64))

  Layers are named `rnn_0`, `rnn_1`, ... (`birnn_i` pairs with `bidirectional`); the
  options are `StackOptions`.
  """

  cell: Callable[[int], nn.Module]
  features: Sequence[int] = (64,)

  @nn.compact
  def __call__(
    self, inputs: Array, *, seq_lengths: Array | None = None, deterministic: bool | None = None
  ):
    _, deterministic = self.training(deterministic)
    opts = self.layer_options()

    def make_layer(h: int, **kw) -> nn.Module:
      # Unbound, so that the layer adopts it as its `cell` (`rnn_i/cell/...`): made here,
      # Flax would make it a child of the stack, shared by name, as in `nn.RNN(GRUCell(h))`.
      return RNN(self.cell(h).clone(parent=None), keep_order=True, **opts, **kw)

    return self.run_layers(make_layer, self.features, inputs, seq_lengths, deterministic, "rnn")


class StackedLSTM(LSTMOptions, StackOptions):
  """A stack of `LSTM` layers (optionally bidirectional), e.g. `features=(512, 256)`.

  Attributes: `features`, the hidden size of each layer, bottom to top; the `LSTMOptions`
  (the cell's) and the `StackOptions` (`dropout`, `bidirectional`, ...). With
  `implementation="cudnn"`, a stack of one width with no dropout mask drawn is one cuDNN
  call for all its layers.
  """

  features: Sequence[int] = (512, 256)  # type: ignore[assignment]  # one width per layer

  @nn.compact
  def __call__(
    self, inputs: Array, *, seq_lengths: Array | None = None, deterministic: bool | None = None
  ):
    if not self.features:
      raise ValueError("StackedLSTM needs at least one layer in `features`")
    training, deterministic = self.training(deterministic)
    if self._one_cudnn_call(training):
      return self._cudnn_stack(inputs, seq_lengths)
    opts = {**self.layer_options(), **options_of(self, ALL_LSTM_OPTIONS)}

    def make_layer(h: int, **kw) -> nn.Module:
      return LSTM(h, **opts, **kw)

    return self.run_layers(make_layer, self.features, inputs, seq_lengths, deterministic, "lstm")

  @nn.nowrap
  def _cell(self, parent=None) -> LSTMCell:
    return LSTMCell(self.features[0], **options_of(self, ALL_LSTM_OPTIONS), parent=parent)

  @nn.nowrap
  def _one_cudnn_call(self, training: bool) -> bool:
    """Whether the whole stack runs as one cuDNN call: `kernels.select` picks cuDNN for its
    cell (one width) and no dropout mask is drawn; cuDNN then runs the layers without a
    round trip per layer. Otherwise every layer makes its own choice."""
    if self.implementation != "cudnn" or len(set(self.features)) != 1 or training:
      return False
    call = kernels.call_needs(recurrent_dropout=False, remat=self.remat)
    return kernels.select(self._cell(), "cudnn", call).name == "cudnn"

  @nn.nowrap
  def _cudnn_stack(self, inputs: Array, seq_lengths: Array | None):
    """The stack as one cuDNN call, on the parameters the layers would have (same names)."""
    h, n, bi = self.features[0], len(self.features), self.bidirectional
    batch_shape, x, lengths = fold_batch(inputs, seq_lengths)
    d = x.shape[-1]
    cells, width = [], d
    for i in range(n):
      if bi:
        cells += _PairParams(self._cell(), name=f"bilstm_{i}")(width)
      else:
        cells.append(_LayerParams(self._cell(), name=f"lstm_{i}")(width))
      width = (2 if bi else 1) * h
    cell = self._cell()
    zero = cell.initialize_carry(jax.random.key(0), (x.shape[0], d))
    carries, ys = kernels.cudnn.run_stack(
      cell, cells, [zero] * len(cells), x, lengths, bidirectional=bi
    )
    carries = [jax.tree.map(lambda a: a.reshape(batch_shape + a.shape[1:]), c) for c in carries]
    if self.return_sequences:
      out = ys.reshape(batch_shape + ys.shape[1:])
    else:  # each direction's own last output (the backward one's is at time 0)
      out = carries[-1][1] if not bi else concat(carries[-2][1], carries[-1][1])
    if not self.return_carry:
      return out
    per_layer = [tuple(carries[2 * i : 2 * i + 2]) for i in range(n)] if bi else carries
    return tuple(per_layer), out


class _LayerParams(nn.Module):
  """An `LSTM` layer's parameters (`{'cell': ...}`), created or fetched without running the
  layer: for `StackedLSTM`'s one cuDNN call, so its parameter tree is the layers' own."""

  cell: LSTMCell

  @nn.compact
  def __call__(self, in_features: int) -> dict:
    return self.cell.parameters(in_features)


class _PairParams(nn.Module):
  """A `Bidirectional` pair's parameters, forward then backward (cuDNN's order)."""

  cell: LSTMCell

  @nn.compact
  def __call__(self, in_features: int) -> list[dict]:
    return [
      _LayerParams(self.cell.clone(parent=None), name=side)(in_features)
      for side in ("forward_rnn", "backward_rnn")
    ]
