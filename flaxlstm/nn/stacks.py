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


def run_stack(
  make_layer: Callable[..., nn.Module],
  features: Sequence[int],
  inputs: Array,
  *,
  seq_lengths: Array | None,
  deterministic: bool | None,
  inter_layer_dropout: float,
  return_sequences: bool,
  return_carry: bool,
  bidirectional: bool,
  prefix: str,
):
  """A stack's body: layer `i` is `make_layer(width, return_sequences=...)` (named
  `{prefix}_{i}`, or a `Bidirectional` pair named `bi{prefix}_{i}`), ordinary dropout
  between layers; returns `(carries, out)` with `return_carry`, else `out`. Called in the
  stack's compact method, whose children the layers become."""
  x, carries, n = inputs, [], len(features)
  for i, h in enumerate(features):
    last = i == n - 1
    kw = dict(return_sequences=return_sequences or not last, return_carry=return_carry)
    layer: nn.Module
    if bidirectional:
      layer = Bidirectional(
        make_layer(h, parent=None, **kw),  # adopted by the pair
        make_layer(h, parent=None, **kw),
        name=f"bi{prefix}_{i}",
      )
    else:
      layer = make_layer(h, name=f"{prefix}_{i}", **kw)
    x = layer(x, seq_lengths=seq_lengths, deterministic=deterministic)
    if return_carry:
      carry, x = x
      carries.append(carry)
    if not last and is_active(inter_layer_dropout):
      x = Dropout(inter_layer_dropout)(x, deterministic=deterministic)
  return (tuple(carries), x) if return_carry else x


def _training(module: Any, deterministic: bool | None) -> tuple[bool, bool | None]:
  """(whether a dropout mask is drawn, the merged `deterministic`) for a stack."""
  rates = (module.dropout, module.recurrent_dropout, module.inter_layer_dropout)
  if any(is_active(r) for r in rates):
    deterministic = nn.merge_param("deterministic", module.deterministic, deterministic)
    return not deterministic, deterministic
  return False, deterministic


class StackedRNN(nn.Module):
  """A stack of `RNN` layers over any cell: `cell(width)` makes each layer's cell.

      StackedRNN(lambda h: nn.GRUCell(h), features=(128, 64))

  Layers are named `rnn_0`, `rnn_1`, ... (`birnn_i` pairs with `bidirectional`); options
  as `StackedLSTM`.
  """

  cell: Callable[[int], nn.Module]
  features: Sequence[int] = (64,)
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

  @nn.compact
  def __call__(
    self, inputs: Array, *, seq_lengths: Array | None = None, deterministic: bool | None = None
  ):
    if not self.features:
      raise ValueError("StackedRNN needs at least one layer in `features`")
    _, deterministic = _training(self, deterministic)
    opts: dict[str, Any] = dict(
      unroll=self.unroll,
      dropout=self.dropout,
      recurrent_dropout=self.recurrent_dropout,
      remat=self.remat,
      implementation=self.implementation,
      keep_order=True,
    )

    def make_layer(h: int, **kw) -> nn.Module:
      # Unbound, so that the layer adopts it as its `cell` (`rnn_i/cell/...`): made here,
      # Flax would make it a child of the stack, shared by name, as in `nn.RNN(GRUCell(h))`.
      return RNN(self.cell(h).clone(parent=None), **opts, **kw)

    return run_stack(
      make_layer,
      self.features,
      inputs,
      seq_lengths=seq_lengths,
      deterministic=deterministic,
      inter_layer_dropout=self.inter_layer_dropout,
      return_sequences=self.return_sequences,
      return_carry=self.return_carry,
      bidirectional=self.bidirectional,
      prefix="rnn",
    )


class StackedLSTM(LSTMOptions):
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
    unroll, remat, implementation: passed to every `LSTM` layer; so are the `LSTMOptions`.
      With `implementation="cudnn"`, a stack of one width with no dropout mask drawn is one
      cuDNN call for all its layers.
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
  implementation: str = "auto"
  deterministic: bool | None = None

  @nn.compact
  def __call__(
    self, inputs: Array, *, seq_lengths: Array | None = None, deterministic: bool | None = None
  ):
    if not self.features:
      raise ValueError("StackedLSTM needs at least one layer in `features`")
    training, deterministic = _training(self, deterministic)
    if self._one_cudnn_call(training):
      return self._cudnn_stack(inputs, seq_lengths)
    opts = dict(
      unroll=self.unroll,
      dropout=self.dropout,
      recurrent_dropout=self.recurrent_dropout,
      remat=self.remat,
      implementation=self.implementation,
      **options_of(self, ALL_LSTM_OPTIONS),
    )

    def make_layer(h: int, **kw) -> nn.Module:
      return LSTM(h, **opts, **kw)

    return run_stack(
      make_layer,
      self.features,
      inputs,
      seq_lengths=seq_lengths,
      deterministic=deterministic,
      inter_layer_dropout=self.inter_layer_dropout,
      return_sequences=self.return_sequences,
      return_carry=self.return_carry,
      bidirectional=self.bidirectional,
      prefix="lstm",
    )

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
