"""Recurrent layers over `(*batch, time, features)`: `RNN` over any cell, the LSTM's `LSTM`,
and `Bidirectional` (stacks of them: stacks.py).

Every layer runs `run_layer`: batch dims folded into one, padding zeroed, variational
dropout masks drawn, the sequence flipped for `reverse`, and the time loop of the kernel
`flaxlstm.nn.kernels.select` picks for the cell and the call (the LSTM's fused custom VJP,
cuDNN, or the autodiff loop that runs every cell). The NNX layers (nnx.py) run it too.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxlstm.nn import kernels
from flaxlstm.nn.cells.base import LinenStep, as_carry, feedback, is_split, options_of
from flaxlstm.nn.cells.lstm import ALL_LSTM_OPTIONS, LSTMCell, LSTMOptions
from flaxlstm.nn.dropout import dropout_mask, is_active

Array = jax.Array


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


def fold_batch(
  inputs: Array, seq_lengths: Array | None, feature_axes: int = 1
) -> tuple[tuple[int, ...], Array, Array | None]:
  """`(*batch, T, *features)` inputs -> `(batch_shape, x (B, T, *features), lengths (B,) or
  None)`, with the padding past each length zeroed: NaN/inf there would otherwise poison
  the gradients through the input projection, although the outputs ignore those steps."""
  if inputs.ndim < feature_axes + 1:
    raise ValueError(
      f"a recurrent layer expects (*batch, time, features) inputs, got shape {inputs.shape}"
    )
  split = inputs.ndim - feature_axes - 1
  batch_shape, t, rest = inputs.shape[:split], inputs.shape[split], inputs.shape[split + 1 :]
  x = inputs.reshape((-1, t) + rest)  # any number of batch dims -> one
  lengths = None
  if seq_lengths is not None:
    lengths = jnp.broadcast_to(jnp.asarray(seq_lengths), batch_shape).reshape((x.shape[0],))
    on = jnp.arange(t)[None, :] < lengths[:, None]
    x = jnp.where(on.reshape(on.shape + (1,) * len(rest)), x, 0)
  return batch_shape, x, lengths


def start_layer(
  inputs: Array,
  *,
  make_carry: Callable[[tuple[int, ...]], Any],
  initial_carry: Any = None,
  seq_lengths: Array | None = None,
  feature_axes: int = 1,
  dropout: float = 0.0,
  recurrent_dropout: float = 0.0,
  dropout_rng: Callable[[], Array] | None = None,
) -> tuple[tuple[int, ...], Array, Array | None, Any, Array | None]:
  """What every layer does before its time loop (`run_layer`'s arguments): batch dims
  folded into one and padding zeroed (`fold_batch`), the carry made or read, and the
  dropout masks drawn, input then recurrent. Returns `(batch_shape, x (B, T, ...), lengths,
  carry, h_mask)`."""
  batch_shape, x, lengths = fold_batch(inputs, seq_lengths, feature_axes)
  b, rest = x.shape[0], x.shape[2:]
  if initial_carry is None:
    carry = make_carry((b,) + rest)
  else:
    lead = len(batch_shape)
    given = jax.tree.map(lambda a: jnp.reshape(a, (b,) + jnp.shape(a)[lead:]), initial_carry)
    carry = as_carry(jax.eval_shape(lambda: make_carry((b,) + rest)), given)
  h_mask = None
  if dropout_rng is not None:
    if is_active(dropout):
      x = x * dropout_mask(dropout_rng(), dropout, (b, 1) + rest, x.dtype)
    if is_active(recurrent_dropout):
      fed = feedback(carry)
      h_mask = dropout_mask(dropout_rng(), recurrent_dropout, fed.shape, fed.dtype)
  return batch_shape, x, lengths, carry, h_mask


def run_layer(
  cell: Any,
  p: Any,
  inputs: Array,
  *,
  make_carry: Callable[[tuple[int, ...]], Any],
  initial_carry: Any = None,
  seq_lengths: Array | None = None,
  reverse: bool = False,
  keep_order: bool = True,
  time_major: bool = False,
  feature_axes: int = 1,
  dropout: float = 0.0,
  recurrent_dropout: float = 0.0,
  dropout_rng: Callable[[], Array] | None = None,
  unroll: int = 1,
  remat: bool = False,
  return_sequences: bool = True,
  implementation: str = "auto",
) -> tuple[Any, Array]:
  """One recurrent layer as a function of its cell's pure step, parameters and inputs:
  `(carry, out)`.

  `cell` offers the pure step (`project`, `recur`: a flaxlstm cell, or `LinenStep`/`NnxStep`
  around any Flax cell, flaxlstm/nn/cells/base.py) and `p` its parameters. `make_carry`
  gives the cell's default carry for the folded input shape `(B, *features)`; a given
  `initial_carry` is read into its structure. Dropout masks draw from `dropout_rng()`
  (None: deterministic). With `reverse`, outputs come back in input order when
  `keep_order`, else in processing order (`flax.linen.RNN`'s `keep_order`).
  """
  if time_major:
    inputs = jnp.moveaxis(inputs, 0, inputs.ndim - feature_axes - 1)
  batch_shape, x, lengths, carry, h_mask = start_layer(
    inputs,
    make_carry=make_carry,
    initial_carry=initial_carry,
    seq_lengths=seq_lengths,
    feature_axes=feature_axes,
    dropout=dropout,
    recurrent_dropout=recurrent_dropout,
    dropout_rng=dropout_rng,
  )
  b, t = x.shape[0], x.shape[1]

  if reverse:
    x = flip_sequences(x, lengths)
  call = kernels.call_needs(recurrent_dropout=h_mask is not None, remat=remat)
  kernel = kernels.select(cell, implementation, call)
  carry, ys = kernel.run(cell, p, carry, x, lengths, h_mask=h_mask, unroll=unroll, remat=remat)

  carry_out = jax.tree.map(lambda a: a.reshape(batch_shape + a.shape[1:]), carry)
  if return_sequences:
    if reverse and keep_order:
      ys = flip_sequences(ys, lengths)
    out = ys.reshape(batch_shape + ys.shape[1:])
    if time_major:
      out = jnp.moveaxis(out, len(batch_shape), 0)
  elif getattr(cell, "output_in_carry", False):
    out = feedback(carry_out)  # h at each sequence's own last step (masked steps keep it)
  else:  # the output of each sequence's last step, in processing order
    last = jnp.full((b,), t - 1) if lengths is None else jnp.maximum(lengths - 1, 0)
    out = ys[jnp.arange(b), last].reshape(batch_shape + ys.shape[2:])
  return carry_out, out


class LayerOptions(nn.Module, kw_only=True):
  """How a recurrent layer runs its cell, declared once for `RNN` and `LSTM` (and read by
  the NNX layers under the same names).

  Attributes:
    return_sequences: return all outputs `(*batch, T, ...)`; else only the last one (with
      `seq_lengths`, each sequence's own last output).
    return_carry: also return the final carry: `(carry, outputs)`.
    reverse: run from the end of each sequence to its start.
    unroll: `lax.scan` unroll factor.
    dropout: variational dropout on the inputs (one mask per sequence for all steps).
    recurrent_dropout: variational dropout on the fed-back state (Gal & Ghahramani, 2016).
    remat: recompute the loop in chunks in the backward pass, so saved activations grow
      like sqrt(T) rather than T (long sequences).
    implementation: the time loop: "auto" (the cell's fastest kernel that can run the call,
      else autodiff) or a kernel's name (`flaxlstm.nn.kernels.KERNELS`: "autodiff",
      "fused", "cudnn").
    deterministic: disables dropout; can also be passed to `__call__`.

  Dropout randomness comes from the `'dropout'` RNG stream only.
  """

  return_sequences: bool = True
  return_carry: bool = False
  reverse: bool = False
  unroll: int = 1
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  remat: bool = False
  implementation: str = "auto"
  deterministic: bool | None = None


# The options `run_layer` reads from a layer, Linen or NNX (the same attribute names).
LAYER_OPTIONS = (
  "dropout",
  "recurrent_dropout",
  "unroll",
  "remat",
  "return_sequences",
  "implementation",
)


def layer_options(layer: Any) -> dict[str, Any]:
  return {name: getattr(layer, name) for name in LAYER_OPTIONS}


def _linen_layer(
  layer: Any,
  cell: nn.Module,
  inputs: Array,
  *,
  initial_carry: Any,
  init_key: Array | None,
  seq_lengths: Array | None,
  deterministic: bool | None,
  reverse: bool,
  keep_order: bool,
  time_major: bool = False,
) -> tuple[Any, Array]:
  """A Linen layer's body: the cell's parameters (created at init), its dropout RNG, and
  `run_layer` on them."""
  axes = cell.num_feature_axes
  if inputs.ndim < axes + 1:
    raise ValueError(
      f"{type(layer).__name__} expects (*batch, time, features) inputs, got shape {inputs.shape}"
    )
  key = jax.random.key(0) if init_key is None else init_key
  make_carry = lambda shape: cell.initialize_carry(key, shape)
  step: Any
  if is_split(cell):
    step, p = cell, cell.parameters(inputs.shape[-1])
  else:
    if layer.is_initializing():  # a Flax cell creates its variables on its first call
      x0 = jnp.take(inputs, 0, axis=0 if time_major else inputs.ndim - axes - 1)
      cell(cell.initialize_carry(key, x0.shape), x0)
    step, p = LinenStep(cell), cell.variables
  rng = None
  if is_active(layer.dropout) or is_active(layer.recurrent_dropout):
    if not nn.merge_param("deterministic", layer.deterministic, deterministic):
      rng = lambda: layer.make_rng("dropout")
  return run_layer(
    step,
    p,
    inputs,
    make_carry=make_carry,
    initial_carry=initial_carry,
    seq_lengths=seq_lengths,
    reverse=reverse,
    keep_order=keep_order,
    time_major=time_major,
    feature_axes=axes,
    dropout_rng=rng,
    **layer_options(layer),
  )


class RNN(LayerOptions):
  """One recurrent layer over any cell: a drop-in for `flax.linen.RNN` that runs the cell's
  fast time loop when it has one.

      flaxlstm.RNN(flax.linen.GRUCell(64))(x)       # what nn.RNN(GRUCell(64)) computes
      flaxlstm.RNN(flaxlstm.LSTMCell(64))(x)        # the fused LSTM loop

  The parameter tree is `nn.RNN`'s, `{'cell': ...}`, and the call takes the same arguments
  (`initial_carry`, `init_key`, `seq_lengths`, `return_carry`, `time_major`, `reverse`,
  `keep_order`). A flaxlstm cell's input projection runs once for all steps, before the
  loop, and its kernel (`implementation`) is chosen for the call; any other Flax cell runs
  its own step inside the autodiff loop. On top of `nn.RNN`: variational `dropout` and
  `recurrent_dropout` (the `'dropout'` stream), `remat`, `return_sequences`, and outputs
  past each sequence's end set to zero (`nn.RNN` computes them on the padding; its final
  carry, like ours, is each sequence's own last one). `nn.RNN`'s lifted-transform options
  (`variable_axes`, `split_rngs`, ...) are not offered: the loop holds the cell's
  variables fixed, as `nn.RNN` does by default.

  Attributes:
    cell: the cell (any `nn.RNNCellBase`).
    keep_order: with `reverse`, return the outputs in input order (else in the order they
      were computed, as `nn.RNN`).
    time_major: inputs and outputs are `(T, *batch, *features)`.
    The `LayerOptions` (`return_sequences`, `dropout`, `implementation`, ...).
  """

  cell: nn.Module
  keep_order: bool = False
  time_major: bool = False

  @nn.compact
  def __call__(
    self,
    inputs: Array,
    *,
    initial_carry: Any = None,
    init_key: Array | None = None,
    seq_lengths: Array | None = None,
    return_carry: bool | None = None,
    time_major: bool | None = None,
    reverse: bool | None = None,
    keep_order: bool | None = None,
    deterministic: bool | None = None,
  ):
    carry, out = _linen_layer(
      self,
      self.cell,
      inputs,
      initial_carry=initial_carry,
      init_key=init_key,
      seq_lengths=seq_lengths,
      deterministic=deterministic,
      reverse=self.reverse if reverse is None else reverse,
      keep_order=self.keep_order if keep_order is None else keep_order,
      time_major=self.time_major if time_major is None else time_major,
    )
    return_carry = self.return_carry if return_carry is None else return_carry
    return (carry, out) if return_carry else out


class LSTM(LSTMOptions, LayerOptions):
  """One LSTM layer over `(*batch, time, features)`: `RNN(LSTMCell(features, ...))` with the
  cell's options as its own, and outputs always in input order.

  The parameter tree is exactly that of `flax.linen.RNN(LSTMCell(...))`: `{'cell': {...}}`,
  so parameters move freely between `LSTMCell`, `nn.RNN` and this layer with identical
  outputs. The `W x + b` matmul for all time steps runs once, before the loop, and the loop
  is the fused custom VJP where the cell allows it (kernels/lstm_fused.py).

  Attributes: the `LSTMOptions` (`features`, `forget_bias`, ...: the cell's) and the
  `LayerOptions` (`return_sequences`, `reverse`, `dropout`, `implementation`, ...).
  """

  def make_cell(self) -> LSTMCell:
    return LSTMCell(self.features, **options_of(self, ALL_LSTM_OPTIONS), name="cell")

  @nn.compact
  def __call__(
    self,
    inputs: Array,
    *,
    initial_carry: Any = None,
    seq_lengths: Array | None = None,
    deterministic: bool | None = None,
    reverse: bool | None = None,
  ):
    carry, out = _linen_layer(
      self,
      self.make_cell(),
      inputs,
      initial_carry=initial_carry,
      init_key=None,
      seq_lengths=seq_lengths,
      deterministic=deterministic,
      reverse=self.reverse if reverse is None else reverse,
      keep_order=True,
    )
    return (carry, out) if self.return_carry else out


def concat(a: Array, b: Array) -> Array:
  return jnp.concatenate([a, b], axis=-1)


class Bidirectional(nn.Module):
  """Runs `forward_rnn` and `backward_rnn` (called with `reverse=True`) and merges outputs.

  Works with `LSTM` and `RNN(..., keep_order=True)` layers; the backward outputs are in
  input order. With `return_sequences=False` layers, the merge is of the forward layer's
  last output and the backward layer's output at time 0 (its last step). If the layers
  have `return_carry=True`, returns `((forward_carry, backward_carry), merged)`.
  """

  forward_rnn: nn.Module
  backward_rnn: nn.Module
  merge_fn: Callable[[Array, Array], Array] = concat

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
