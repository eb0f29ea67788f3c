"""The cell protocol: what flaxlstm's layers need from a recurrent cell, and what they use
when a cell offers more.

**Any Flax cell works.** A Linen `nn.RNNCellBase` (`__call__(carry, x) -> (carry, y)`,
`initialize_carry(rng, input_shape)`, `num_feature_axes`) runs through `flaxlstm.RNN` as it
is: `LinenStep` calls the cell's own `__call__` on its variables inside the time loop, and
the autodiff kernel (`flaxlstm.nn.kernels.scan`) gives it `seq_lengths`, step masks,
variational dropout and remat. NNX cells run the same way through `NnxStep`.

**A flaxlstm cell offers more** (`LSTMCell`; sLSTM and mLSTM next), each optional:

- `parameters(in_features) -> p`: its parameters as a dict, created or fetched, and its
  step as pure functions of arrays, `project(p, x)` (the input side, which the layer
  computes for all time steps at once, hoisted out of the loop) and
  `recur(p, carry, zx, h_mask)` (one step from the projected input). Kernels run on these.
- `kernels`: the names of the fast time loops it offers (`flaxlstm.nn.kernels.KERNELS`,
  e.g. `("fused", "cudnn")` for the LSTM); `kernels.select` picks among them.
- `output_in_carry`: its output is the last field of its carry, so a layer that returns
  only the last output reads it from the final carry instead of from the outputs.
- a typed carry: a `NamedTuple` per cell (`LSTMCarry(c, h)`), whose field names say what
  each state is. A carry given by the user as a plain tuple is read into that type
  (`as_carry`), so `initial_carry=(c, h)` keeps working.

Recurrent (variational) dropout masks the state a cell feeds back: the last field of a
tuple carry (`h` in `(c, h)`, Flax's convention and ours) or the carry itself when it is
one array (`GRUCell`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

Array = jax.Array
Initializer = Callable[..., Array]

# Initializers and dtypes an option may name (in a config file): each option's choices,
# and the schema's values for them, come from these tables.
INITIALIZERS: dict[str, Initializer] = {
  "glorot_uniform": initializers.glorot_uniform(),
  "glorot_normal": initializers.glorot_normal(),
  "lecun_uniform": initializers.lecun_uniform(),
  "lecun_normal": initializers.lecun_normal(),
  "he_uniform": initializers.he_uniform(),
  "he_normal": initializers.he_normal(),
  "orthogonal": initializers.orthogonal(),
  "zeros": initializers.zeros_init(),
  "ones": initializers.ones_init(),
}
# "" is the compute dtype's default: that of the parameters.
DTYPES: dict[str, Any] = {"": None, "float32": jnp.float32, "bfloat16": jnp.bfloat16}


def option(
  default: Any, *, choices: Mapping[str, Any] | None = None, kind: type | None = None
) -> Any:
  """A cell option: its default, and for a config file the table its names come from
  (`choices`) or the type of a value that may be None (`kind`)."""
  metadata = {"choices": choices} if choices is not None else {"kind": kind} if kind else {}
  return dataclasses.field(default=default, metadata=metadata)


class CellOptions(nn.Module):
  """The width and the options every flaxlstm cell takes: initializers and dtypes.

  A cell's own options (the LSTM's `forget_bias`, sLSTM's heads) live on the cell's own
  options class, derived from this one (`flaxlstm.nn.cells.lstm.LSTMOptions`), so the
  layers made for one cell can take its options by name.

  Attributes:
    features: hidden size H.
    kernel_init, recurrent_kernel_init: initializers of the input and recurrent weights.
    bias_init: initializer of the bias.
    dtype: computation dtype (None: `param_dtype`); states a cell accumulates stay >= float32.
    param_dtype: dtype of the parameters.
  """

  features: int
  kernel_init: Initializer = option(INITIALIZERS["glorot_uniform"], choices=INITIALIZERS)
  recurrent_kernel_init: Initializer = option(INITIALIZERS["orthogonal"], choices=INITIALIZERS)
  bias_init: Initializer = option(INITIALIZERS["zeros"], choices=INITIALIZERS)
  dtype: Any = option(None, choices=DTYPES)
  param_dtype: Any = option(jnp.float32, choices=DTYPES)

  @property
  def compute_dtype(self) -> Any:
    """The dtype the cell computes in: `dtype`, else the parameters'."""
    return self.dtype or self.param_dtype


def option_fields(cls: type, below: type | None = None) -> tuple[dataclasses.Field, ...]:
  """The option fields `cls` declares, in order, without `features` and Flax's own fields;
  with `below`, only those `below` does not have (a cell's own options)."""
  skip = {"features", "parent", "name"}
  if below is not None:
    skip |= {f.name for f in dataclasses.fields(below)}
  return tuple(f for f in dataclasses.fields(cls) if f.name not in skip)


COMMON_OPTIONS: tuple[dataclasses.Field, ...] = option_fields(CellOptions)


def options_of(module: Any, fields: tuple[dataclasses.Field, ...]) -> dict[str, Any]:
  """The values of `fields` on `module`, to hand to the cell or layer below it."""
  return {f.name: getattr(module, f.name) for f in fields}


# ---- carries -----------------------------------------------------------------------------------
def feedback(carry: Any) -> Array:
  """The state a cell feeds back to its next step (see the module docstring)."""
  return carry[-1] if isinstance(carry, tuple) else carry


def with_feedback(carry: Any, h: Array) -> Any:
  """`carry` with its fed-back state replaced by `h`."""
  if not isinstance(carry, tuple):
    return h
  fields = list(carry)
  fields[-1] = h
  return type(carry)(*fields) if hasattr(carry, "_fields") else tuple(fields)


def as_carry(template: Any, carry: Any) -> Any:
  """`carry` (a tuple, list or any tree with the same leaves) in the structure and dtypes
  of `template`, the cell's own carry: a user's `(c, h)` becomes an `LSTMCarry`."""
  leaves = jax.tree.leaves(carry)
  want = jax.tree.leaves(template)
  if len(leaves) != len(want):
    raise ValueError(f"initial_carry has {len(leaves)} arrays; the cell's carry has {len(want)}")
  cast = [jnp.asarray(a).astype(t.dtype) for a, t in zip(leaves, want)]
  return jax.tree.unflatten(jax.tree.structure(template), cast)


def like(given: Any, carry: Any) -> Any:
  """`carry` in the container type of `given`: a cell stepped inside `flax.linen.RNN` from a
  plain tuple must return a plain tuple (`lax.scan` requires the same carry type)."""
  if type(given) is tuple and type(carry) is not tuple:
    return tuple(carry)
  return carry


# ---- any Flax cell as pure math ---------------------------------------------------------------
def is_split(cell: Any) -> bool:
  """Whether `cell` offers its step as pure functions (`parameters`, `project`, `recur`)."""
  return all(hasattr(cell, name) for name in ("parameters", "project", "recur"))


class _Step:
  """A Flax cell without pure step functions, as one: `recur` calls the cell's own step
  on its variables `p`. Nothing is hoisted (`project` is the identity): the cell's whole
  step runs inside the loop, as in `nn.RNN`. Recurrent dropout masks its fed-back state."""

  output_in_carry = False
  kernels: tuple[str, ...] = ()

  def project(self, p: Any, x: Array) -> Array:
    del p
    return x

  def recur(self, p: Any, carry: Any, x: Array, h_mask: Array | None = None) -> tuple[Any, Array]:
    if h_mask is not None:
      carry = with_feedback(carry, feedback(carry) * h_mask)
    out: Any = self.call(p, carry, x)
    new, y = out
    return like(carry, new), y

  def call(self, p: Any, carry: Any, x: Array) -> Any:
    raise NotImplementedError


class LinenStep(_Step):
  """A Linen cell as pure math: `p` is its variables (`{'params': ...}`), applied to the
  unbound cell."""

  def __init__(self, cell: nn.Module):
    self.cell = cell.clone(parent=None)

  def call(self, p: Any, carry: Any, x: Array) -> Any:
    return self.cell.apply(p, carry, x)


class NnxStep(_Step):
  """An NNX cell as pure math: `p` is its state (`nnx.split`), merged and called. What the
  cell mutates while it steps (RNG counters, statistics) is not carried out of the loop:
  the cells this is for hold parameters only."""

  def __init__(self, graphdef: Any):
    self.graphdef = graphdef

  def call(self, p: Any, carry: Any, x: Array) -> Any:
    from flax import nnx  # NNX only when an NNX cell is used

    return nnx.merge(self.graphdef, p)(carry, x)
