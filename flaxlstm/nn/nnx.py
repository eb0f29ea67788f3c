"""The layers for Flax NNX: `RNN` over any cell, `LSTMCell`, `LSTM`, `StackedLSTM`,
`Bidirectional`, converters.

    from flaxlstm import nnx as lnnx
    layer = lnnx.LSTM(3, 64, rngs=nnx.Rngs(0))
    y = layer(x)                          # (B, T, 3) -> (B, T, 64)
    y = nnx.RNN(layer.cell)(x)            # the same outputs, step by step

These are the Linen layers' NNX twins, not copies: the parameters are held as `nnx.Param`s
with the Linen names and shapes (layout and gate order in `flaxlstm.nn.cells.lstm`), and the
computation is the Linen layers' own: `LSTMCell`'s gate math (`project`, `recur`) and
`flaxlstm.nn.layers.run_layer` (hoisted input projection, the kernel `kernels.select`
picks, `initial_carry`, `seq_lengths`, variational dropout, remat). `RNN` runs any other
NNX cell (`nnx.GRUCell`, your own) through the same loop, its step called on its state.
So every speed trick and every fix lands in both at once, and parameters convert by
renaming nothing (`linen_to_nnx`, `nnx_to_linen`).

Dropout draws from the `dropout` stream of the `rngs` given at construction (forked, as
`nnx.Dropout` does); `deterministic=True`, or `model.eval()`, turns it off.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.linen import initializers

from flaxlstm.nn import convert
from flaxlstm.nn.cells import lstm as linen_cell
from flaxlstm.nn.cells.base import NnxStep
from flaxlstm.nn.layers import flip_sequences, layer_options, run_layer

Array = jax.Array
Carry = Any  # a cell's carry (`LSTMCarry(c, h)` for the LSTM)


def _param(init: Callable, key: Array, shape: tuple[int, ...], dtype, gates: int = 0) -> nnx.Param:
  """`nnx.Param` from `init`, per gate when `gates` (as the Linen cell's `per_gate`); an
  initializer wrapped by `nnx.with_partitioning` (or any metadata) keeps its metadata."""
  probe = init(key, shape, dtype)
  metadata: dict = {}
  if isinstance(probe, nnx.VariableMetadata):
    metadata = dict(probe.metadata)
    raw = lambda k, s, d=dtype: init(k, s, d).raw_value
  else:
    raw = init
  value = linen_cell.per_gate(raw, gates)(key, shape, dtype) if gates else probe
  if isinstance(value, nnx.VariableMetadata):
    value = value.raw_value
  return nnx.Param(value, **metadata)


class LSTMCell(nnx.RNNCellBase):
  r"""The flaxlstm LSTM cell as an `nnx.RNNCellBase` (equations in `flaxlstm.LSTMCell`):

  .. math::

      z = W x + U h + b, \quad i, f, o = \sigma(z_i), \sigma(z_f + \text{forget\_bias}),
      \sigma(z_o), \quad g = \tanh(z_g), \quad c' = f c + i g, \quad h' = o \tanh(c')

  Parameters (`nnx.Param`): `input_kernel (in, 4H)`, `recurrent_kernel (H or P, 4H)`,
  `bias (4H,)`, and with the options `projection_kernel (H, P)` and the layer-norm scales,
  exactly the Linen cell's. `__call__(carry, x) -> (carry, y)` works inside `nnx.RNN`.
  """

  def __init__(
    self,
    in_features: int,
    features: int,
    *,
    rngs: nnx.Rngs,
    forget_bias: float = 1.0,
    proj_features: int | None = None,
    layer_norm: bool = False,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    kernel_init: Callable = initializers.glorot_uniform(),
    recurrent_kernel_init: Callable = initializers.orthogonal(),
    bias_init: Callable = initializers.zeros_init(),
    projection_init: Callable = initializers.glorot_uniform(),
    carry_init: Callable = initializers.zeros_init(),
  ):
    self.in_features, self.features = in_features, features
    self.forget_bias, self.proj_features, self.layer_norm = forget_bias, proj_features, layer_norm
    self.dtype, self.param_dtype, self.carry_init = dtype, param_dtype, carry_init
    h4, rec_in = 4 * features, proj_features or features
    self.input_kernel = _param(kernel_init, rngs.params(), (in_features, h4), param_dtype, 4)
    self.recurrent_kernel = _param(
      recurrent_kernel_init, rngs.params(), (rec_in, h4), param_dtype, 4
    )
    self.bias = _param(bias_init, rngs.params(), (h4,), param_dtype)
    if proj_features:
      self.projection_kernel = _param(
        projection_init, rngs.params(), (features, proj_features), param_dtype
      )
    if layer_norm:
      ones, zeros = initializers.ones_init(), initializers.zeros_init()
      self.input_ln_scale = nnx.Param(ones(rngs.params(), (h4,), param_dtype))
      self.recurrent_ln_scale = nnx.Param(ones(rngs.params(), (h4,), param_dtype))
      self.cell_ln_scale = nnx.Param(ones(rngs.params(), (features,), param_dtype))
      self.cell_ln_bias = nnx.Param(zeros(rngs.params(), (features,), param_dtype))

  @property
  def math(self) -> linen_cell.LSTMCell:
    """The Linen cell, unbound: only its pure gate math and dtypes are used."""
    return linen_cell.LSTMCell(
      self.features,
      forget_bias=self.forget_bias,
      proj_features=self.proj_features,
      layer_norm=self.layer_norm,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      carry_init=self.carry_init,
      parent=None,
    )

  def params(self) -> dict[str, Array]:
    """The parameters as the Linen cell's dict (the same names), as arrays."""
    names = ["input_kernel", "recurrent_kernel", "bias"]
    if self.proj_features:
      names.append("projection_kernel")
    if self.layer_norm:
      names += ["input_ln_scale", "recurrent_ln_scale", "cell_ln_scale", "cell_ln_bias"]
    return {n: getattr(self, n)[...] for n in names}

  def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
    math, p = self.math, self.params()
    new, y = math.recur(p, carry, math.project(p, inputs))
    return (tuple(new) if type(carry) is tuple else new), y

  def initialize_carry(  # type: ignore[override]
    self, input_shape: tuple[int, ...], rngs: nnx.Rngs | nnx.RngStream | None = None
  ) -> Carry:
    if isinstance(rngs, nnx.Rngs):
      key = rngs.carry()
    elif isinstance(rngs, nnx.RngStream):
      key = rngs()
    else:  # the default carry is zeros: no randomness needed
      key = jax.random.key(0)
    return self.math.initialize_carry(key, input_shape)

  @property
  def num_feature_axes(self) -> int:
    return 1


class LinenCell(nnx.RNNCellBase):
  """A flaxlstm Linen cell (one offering the pure step: `parameters`, `project`, `recur`)
  as an NNX cell: its parameters held as `nnx.Param`s under the Linen names, its math the
  Linen cell's own. `RNN` runs it on the cell's kernels (the sLSTM's fused loop), and it
  steps inside `nnx.RNN` too.

      cell = lnnx.LinenCell(flaxlstm.SLSTMCell(64, num_heads=4), in_features=8, rngs=rngs)
  """

  def __init__(self, cell: Any, in_features: int, *, rngs: nnx.Rngs):
    self.in_features, self.features = in_features, cell.features
    self._cell = cell.clone(parent=None)
    init = self._cell.init(rngs.params(), in_features, method="parameters")["params"]
    self.names = tuple(init)
    for name, value in init.items():
      setattr(self, name, nnx.Param(value))

  @property
  def math(self) -> Any:
    """The Linen cell, unbound: only its pure step and dtypes are used."""
    return self._cell

  def params(self) -> dict[str, Array]:
    return {n: getattr(self, n)[...] for n in self.names}

  def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
    math, p = self.math, self.params()
    new, y = math.recur(p, carry, math.project(p, inputs))
    return (tuple(new) if type(carry) is tuple else new), y

  def initialize_carry(  # type: ignore[override]
    self, input_shape: tuple[int, ...], rngs: nnx.Rngs | nnx.RngStream | None = None
  ) -> Carry:
    del rngs  # flaxlstm's cells start from zeros
    return self.math.initialize_carry(jax.random.key(0), input_shape)

  @property
  def num_feature_axes(self) -> int:
    return 1


def SLSTMCell(in_features: int, features: int, *, rngs: nnx.Rngs, **options: Any) -> LinenCell:  # noqa: N802
  """The sLSTM cell (`flaxlstm.SLSTMCell`, its options as keywords) as an NNX cell."""
  from flaxlstm.nn.cells.slstm import SLSTMCell as LinenSLSTMCell

  return LinenCell(LinenSLSTMCell(features, **options), in_features, rngs=rngs)


def MLSTMCell(in_features: int, features: int, *, rngs: nnx.Rngs, **options: Any) -> LinenCell:  # noqa: N802
  """The mLSTM cell (`flaxlstm.MLSTMCell`, its options as keywords) as an NNX cell; `lnnx.RNN`
  runs it in its chunkwise form (`implementation` picks another)."""
  from flaxlstm.nn.cells.mlstm import MLSTMCell as LinenMLSTMCell

  return LinenCell(LinenMLSTMCell(features, **options), in_features, rngs=rngs)


class RNN(nnx.Module):
  """One recurrent layer over any NNX cell, running `flaxlstm.RNN`'s code: a drop-in for
  `nnx.RNN` (same call: `initial_carry`, `seq_lengths`, `return_carry`, `time_major`,
  `reverse`, `keep_order`).

  A flaxlstm cell (`LSTMCell`) runs its fast kernel; any other cell (`nnx.GRUCell`, your
  own) runs its own step inside the autodiff loop, on its state (`nnx.split`). On top of
  `nnx.RNN`: variational `dropout`/`recurrent_dropout` (drawn from the `dropout` stream of
  `rngs`), `remat`, `return_sequences`, `implementation`, and zero outputs past each
  sequence's end. The default carry is the cell's `initialize_carry` with a fixed key
  (zeros for the usual cells).
  """

  def __init__(
    self,
    cell: nnx.Module,
    *,
    rngs: nnx.Rngs | None = None,
    return_sequences: bool = True,
    return_carry: bool = False,
    reverse: bool = False,
    keep_order: bool = False,
    time_major: bool = False,
    unroll: int = 1,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    remat: bool = False,
    implementation: str = "auto",
    deterministic: bool = False,
  ):
    self.cell = cell
    self.return_sequences, self.return_carry, self.reverse = return_sequences, return_carry, reverse
    self.keep_order, self.time_major = keep_order, time_major
    self.unroll, self.remat, self.implementation = unroll, remat, implementation
    self.dropout, self.recurrent_dropout = dropout, recurrent_dropout
    self.deterministic = deterministic
    self.rngs = nnx.data(None)
    if dropout or recurrent_dropout:
      if rngs is None:
        raise ValueError("dropout needs rngs (its 'dropout' stream)")
      self.rngs = rngs["dropout"].fork()

  def _step(self) -> tuple[Any, Any, Callable]:
    """The cell's pure step, its parameters and its default carry (cells/base.py)."""
    cell = self.cell
    if isinstance(cell, (LSTMCell, LinenCell)):
      math = cell.math
      return math, cell.params(), lambda shape: math.initialize_carry(jax.random.key(0), shape)
    graphdef, state = nnx.split(cell)
    make = lambda shape: cell.initialize_carry(shape, nnx.Rngs(carry=0))  # type: ignore[attr-defined]
    return NnxStep(graphdef), state, make

  def __call__(
    self,
    inputs: Array,
    *,
    initial_carry: Carry | None = None,
    seq_lengths: Array | None = None,
    return_carry: bool | None = None,
    time_major: bool | None = None,
    reverse: bool | None = None,
    keep_order: bool | None = None,
    deterministic: bool | None = None,
  ):
    deterministic = self.deterministic if deterministic is None else deterministic
    rng = None
    if (self.dropout or self.recurrent_dropout) and not deterministic:
      rng = self.rngs
    step, p, make_carry = self._step()
    carry, out = run_layer(
      step,
      p,
      inputs,
      make_carry=make_carry,
      initial_carry=initial_carry,
      seq_lengths=seq_lengths,
      reverse=self.reverse if reverse is None else reverse,
      keep_order=self.keep_order if keep_order is None else keep_order,
      time_major=self.time_major if time_major is None else time_major,
      feature_axes=getattr(self.cell, "num_feature_axes", 1),
      dropout_rng=rng,
      **layer_options(self),
    )
    return_carry = self.return_carry if return_carry is None else return_carry
    return (carry, out) if return_carry else out


class LSTM(RNN):
  """One LSTM layer over `(*batch, time, in_features)`: `RNN(LSTMCell(in_features,
  features, ...))`, outputs always in input order, running `flaxlstm.LSTM`'s code.

  `self.cell` is its `LSTMCell`, so `nnx.RNN(layer.cell)` computes the same outputs one
  step at a time. Options as `flaxlstm.LSTM` (`return_sequences`, `return_carry`,
  `reverse`, `unroll`, `dropout`, `recurrent_dropout`, `remat`, `implementation`), and the
  cell's options as keywords. Call with `initial_carry=`, `seq_lengths=`, `deterministic=`.
  """

  def __init__(
    self,
    in_features: int,
    features: int,
    *,
    rngs: nnx.Rngs,
    return_sequences: bool = True,
    return_carry: bool = False,
    reverse: bool = False,
    unroll: int = 1,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    remat: bool = False,
    implementation: str = "auto",
    deterministic: bool = False,
    **cell_options: Any,
  ):
    super().__init__(
      LSTMCell(in_features, features, rngs=rngs, **cell_options),
      rngs=rngs,
      return_sequences=return_sequences,
      return_carry=return_carry,
      reverse=reverse,
      keep_order=True,
      unroll=unroll,
      dropout=dropout,
      recurrent_dropout=recurrent_dropout,
      remat=remat,
      implementation=implementation,
      deterministic=deterministic,
    )


class Bidirectional(nnx.Module):
  """Runs `forward_rnn` and `backward_rnn` (with `reverse=True`) and concatenates (or
  `merge_fn`s) their outputs, the backward ones in input order (as `flaxlstm.Bidirectional`)."""

  def __init__(
    self,
    forward_rnn: LSTM,
    backward_rnn: LSTM,
    merge_fn: Callable[[Array, Array], Array] = lambda a, b: jnp.concatenate([a, b], axis=-1),
  ):
    self.forward_rnn, self.backward_rnn, self.merge_fn = forward_rnn, backward_rnn, merge_fn

  def __call__(self, inputs, *, seq_lengths=None, deterministic=None, initial_carry=None):
    fwd_carry, bwd_carry = (None, None) if initial_carry is None else initial_carry
    kw = dict(seq_lengths=seq_lengths, deterministic=deterministic)
    fwd = self.forward_rnn(inputs, initial_carry=fwd_carry, **kw)
    bwd = self.backward_rnn(inputs, initial_carry=bwd_carry, reverse=True, **kw)
    if self.forward_rnn.return_carry:
      (cf, yf), (cb, yb) = fwd, bwd
      return (cf, cb), self.merge_fn(yf, yb)
    return self.merge_fn(fwd, bwd)


class StackedLSTM(nnx.Module):
  """A stack of `LSTM` layers, `features=(512, 256)` bottom to top (as
  `flaxlstm.StackedLSTM`): `dropout`/`recurrent_dropout` in every layer,
  `inter_layer_dropout` between layers, optionally `bidirectional`."""

  def __init__(
    self,
    in_features: int,
    features: Sequence[int],
    *,
    rngs: nnx.Rngs,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    inter_layer_dropout: float = 0.0,
    return_sequences: bool = True,
    bidirectional: bool = False,
    unroll: int = 1,
    remat: bool = False,
    implementation: str = "auto",
    deterministic: bool = False,
    **cell_options: Any,
  ):
    if not features:
      raise ValueError("StackedLSTM needs at least one layer in `features`")
    layers: list[nnx.Module] = []
    width = in_features
    for i, h in enumerate(features):
      kw = dict(
        rngs=rngs,
        return_sequences=return_sequences or i < len(features) - 1,
        unroll=unroll,
        dropout=dropout,
        recurrent_dropout=recurrent_dropout,
        remat=remat,
        implementation=implementation,
        deterministic=deterministic,
        **cell_options,
      )
      if bidirectional:
        layers.append(Bidirectional(LSTM(width, h, **kw), LSTM(width, h, **kw)))
        width = 2 * h
      else:
        layers.append(LSTM(width, h, **kw))
        width = h
    self.layers = nnx.List(layers)
    self.between = nnx.Dropout(
      inter_layer_dropout,
      deterministic=deterministic,
      rngs=rngs if inter_layer_dropout else None,  # no RNG state when there is no dropout
    )

  def __call__(self, inputs, *, seq_lengths=None, deterministic=None):
    x = inputs
    for i, layer in enumerate(self.layers):
      x = layer(x, seq_lengths=seq_lengths, deterministic=deterministic)
      if i < len(self.layers) - 1:
        x = self.between(x, deterministic=deterministic)
    return x


# ---- converters -----------------------------------------------------------------------------
def load_params(cell: LSTMCell, params: Mapping[str, Any]) -> LSTMCell:
  """Sets `cell`'s parameters from a Linen `LSTMCell` params dict (also the output of
  `flaxlstm.from_flax_params` / `from_torch_lstm`); returns `cell`. Shapes must match."""
  own = cell.params()
  if set(params) != set(own):
    raise ValueError(f"expected parameters {sorted(own)}, got {sorted(params)}")
  for name, value in params.items():
    if jnp.shape(value) != own[name].shape:
      raise ValueError(f"{name}: expected shape {own[name].shape}, got {jnp.shape(value)}")
    getattr(cell, name)[...] = jnp.asarray(value, own[name].dtype)
  return cell


def linen_to_nnx(module: nnx.Module, linen_params: Mapping[str, Any]) -> nnx.Module:
  """Loads a Linen layer's variables into the matching NNX layer, in place; the inverse of
  `nnx_to_linen`.

  `linen_params` is what the Linen layer's `init` returns, `{'params': tree}` (the bare
  tree is accepted too). The trees correspond name for name: `LSTM`'s `{'cell': {...}}`;
  `StackedLSTM`'s `{'lstm_i' | 'bilstm_i': ...}` to `layers[i]`; `Bidirectional`'s
  `forward_rnn` / `backward_rnn`.
  """
  if "params" in linen_params and len(linen_params) == 1:
    linen_params = linen_params["params"]
  if isinstance(module, LSTMCell):
    load_params(module, linen_params)
  elif isinstance(module, RNN) and isinstance(module.cell, LSTMCell):  # LSTM included
    load_params(module.cell, linen_params["cell"])
  elif isinstance(module, Bidirectional):
    linen_to_nnx(module.forward_rnn, linen_params["forward_rnn"])
    linen_to_nnx(module.backward_rnn, linen_params["backward_rnn"])
  elif isinstance(module, StackedLSTM):
    for i, layer in enumerate(module.layers):
      prefix = "bilstm" if isinstance(layer, Bidirectional) else "lstm"
      linen_to_nnx(layer, linen_params[f"{prefix}_{i}"])
  else:
    raise TypeError(f"not a flaxlstm NNX module: {type(module).__name__}")
  return module


def nnx_to_linen(module: nnx.Module) -> dict:
  """The Linen variables of an NNX layer, `{'params': tree}`: what the Linen layer's `init`
  returns and its `apply` takes, so `linen_to_nnx` and this are inverses (a round trip
  gives the same arrays back)."""
  return {"params": _linen_tree(module)}


def _linen_tree(module: nnx.Module) -> dict:
  """The Linen params tree of an NNX layer, without the `{'params': ...}` wrapper."""
  if isinstance(module, LSTMCell):
    return module.params()
  if isinstance(module, RNN) and isinstance(module.cell, LSTMCell):  # LSTM included
    return {"cell": module.cell.params()}
  if isinstance(module, Bidirectional):
    return {
      "forward_rnn": _linen_tree(module.forward_rnn),
      "backward_rnn": _linen_tree(module.backward_rnn),
    }
  if isinstance(module, StackedLSTM):
    return {
      f"{'bilstm' if isinstance(layer, Bidirectional) else 'lstm'}_{i}": _linen_tree(layer)
      for i, layer in enumerate(module.layers)
    }
  raise TypeError(f"not a flaxlstm NNX module: {type(module).__name__}")


def from_nnx_cell(flax_cell: nnx.Module, *, forget_bias: float = 1.0) -> dict:
  """Params of Flax's `nnx.OptimizedLSTMCell` or `nnx.LSTMCell` as `LSTMCell` params.

  Pass the `forget_bias` of the cell that will use them (see `flaxlstm.from_flax_params`):
  `forget_bias=0.0` cells then compute exactly what the Flax cell computes."""
  state = nnx.to_pure_dict(nnx.state(flax_cell, nnx.Param))
  if "dense_i" in state:  # OptimizedLSTMCell: fused (in, 4H) kernels, gates i, f, g, o
    bias = convert._unfold_forget_bias(np.asarray(state["dense_h"]["bias"]), forget_bias)
    return {
      "input_kernel": jnp.asarray(state["dense_i"]["kernel"]),
      "recurrent_kernel": jnp.asarray(state["dense_h"]["kernel"]),
      "bias": jnp.asarray(bias),
    }
  renamed = {("if" if k == "if_" else k): v for k, v in state.items()}
  return convert.from_flax_params(renamed, forget_bias=forget_bias)


__all__ = [
  "RNN",
  "LinenCell",
  "SLSTMCell",
  "MLSTMCell",
  "LSTMCell",
  "LSTM",
  "StackedLSTM",
  "Bidirectional",
  "flip_sequences",
  "load_params",
  "linen_to_nnx",
  "nnx_to_linen",
  "from_nnx_cell",
]
