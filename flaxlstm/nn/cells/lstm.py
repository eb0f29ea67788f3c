"""`LSTMCell`: a fused-gate LSTM cell, and its typed carry `LSTMCarry(c, h)`.

Parameter layout (one cell, hidden size H, input size D, optional projection size P):

  input_kernel       (D, 4H)   x-side weights of the four gates, side by side
  recurrent_kernel   (R, 4H)   h-side weights; R = P with a projection, else H
  bias               (4H,)     one bias per gate unit (PyTorch's b_ih + b_hh)
  projection_kernel  (H, P)    only with `proj_features` (LSTMP)
  input_ln_scale, recurrent_ln_scale (4H,), cell_ln_scale, cell_ln_bias (H,)
                               only with `layer_norm`

Gate order along the 4H axis is **i, f, g, o** (input, forget, cell candidate, output): the
order of PyTorch's `nn.LSTM`, cuDNN and Flax's cells, so converting weights is a transpose
and a concatenation, never a permutation (converters: `flaxlstm/nn/convert.py`).

Fast paths it offers (`kernels`): `"fused"`, a custom-VJP time loop
(`flaxlstm/nn/kernels/lstm_fused.py`), for float32 cells with the standard gates and no
layer norm or projection; `"cudnn"`, NVIDIA's kernel, opt-in
(`flaxlstm/nn/kernels/cudnn.py`). Any configuration also runs on the autodiff loop.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from flaxlstm.nn.cells.base import CellOptions, Initializer, like, option, option_fields

Array = jax.Array

GATES = ("i", "f", "g", "o")
_LN_EPS = 1e-5


class LSTMCarry(NamedTuple):
  """The LSTM's state: the cell state `c` `(*batch, H)` (at least float32) and the output
  `h` `(*batch, R)` fed back to the next step."""

  c: Array
  h: Array


# The carry's old name: a `(c, h)` pair.
Carry = LSTMCarry


def per_gate(init: Initializer, n_gates: int = 4) -> Initializer:
  """Applies `init` to each gate's (fan_in, H) block separately and concatenates them.

  Fan-in/fan-out statistics and orthogonality then hold per gate, as in Flax's cells (and
  as in the PyTorch weights one converts from), rather than for the fused (fan_in, 4H)
  matrix, whose orthogonal initialization would couple the gates.
  """

  def init_fn(key, shape, dtype=jnp.float32):
    *lead, width = shape
    block = tuple(lead) + (width // n_gates,)
    keys = jax.random.split(key, n_gates)
    return jnp.concatenate([init(k, block, dtype) for k in keys], axis=-1)

  return init_fn


def _layer_norm(z: Array, scale: Array, groups: int, bias: Array | None = None) -> Array:
  """Normalizes each of `groups` equal slices of the last axis on its own (in float32)."""
  shape = z.shape
  zg = z.astype(jnp.float32).reshape(shape[:-1] + (groups, shape[-1] // groups))
  mean = zg.mean(-1, keepdims=True)
  var = jnp.square(zg - mean).mean(-1, keepdims=True)
  out = ((zg - mean) * jax.lax.rsqrt(var + _LN_EPS)).reshape(shape) * scale
  if bias is not None:
    out = out + bias
  return out.astype(z.dtype)


class LSTMOptions(CellOptions):
  """The LSTM cell's options: those every cell takes (`CellOptions`) and its own.

  `LSTMCell`, and the LSTM layers made for it (`LSTM`, `StackedLSTM`), derive from this
  class, so each takes these options by name and hands them to the cell below unchanged.
  The forecasting config reads the common ones as `model.cell.*` and the LSTM's own as
  `model.lstm.*`.

  Attributes (beyond `CellOptions`):
    forget_bias: constant added to the forget-gate pre-activation (see `LSTMCell`).
    proj_features: LSTMP projection of `h` to this many units; None: no projection.
    layer_norm: layer-normalize the gate pre-activations and the cell state.
  """

  forget_bias: float = 1.0
  proj_features: int | None = option(None, kind=int)
  layer_norm: bool = False


# The LSTM's own options (beyond `CellOptions`), and all of its options, in order.
LSTM_OPTIONS = option_fields(LSTMOptions, below=CellOptions)
ALL_LSTM_OPTIONS = option_fields(LSTMOptions)


class LSTMCell(LSTMOptions, nn.RNNCellBase):
  r"""LSTM cell with fused gates: one matmul for the input side, one for the recurrent side.

  .. math::

      \begin{array}{ll}
      z = W x + U h + b  \quad (\text{blocks } z_i, z_f, z_g, z_o) \\
      i = \sigma(z_i), \quad f = \sigma(z_f + \text{forget\_bias}), \quad
      g = \tanh(z_g), \quad o = \sigma(z_o) \\
      c' = f \odot c + i \odot g \\
      h' = o \odot \tanh(c') \quad (\text{LSTMP: } h' = (o \odot \tanh(c')) P)
      \end{array}

  With `layer_norm=True` the input and recurrent pre-activations are layer-normalized per
  gate and `c'` is normalized before the output `tanh` (Ba et al., 2016).

  `forget_bias` is a constant added to the forget-gate pre-activation, so the gate starts
  mostly open (Jozefowicz et al., 2015; Keras' `unit_forget_bias`) without changing the
  parameters; `forget_bias=0.0` makes this cell compute exactly what Flax's `LSTMCell` and
  `OptimizedLSTMCell` compute with the same (converted) parameters.

  Mixed precision: `dtype` is the computation dtype (e.g. `jnp.bfloat16`); parameters stay
  in `param_dtype`, and the cell state `c` is carried in at least float32 so long sequences
  do not accumulate rounding error.

  The carry is `(c, h)` with shapes `(*batch, H)` and `(*batch, R)` (R = `proj_features`
  or H); the output `y` is the new `h`. The cell works unchanged inside `flax.linen.RNN`;
  `flaxlstm.LSTM` runs the same math faster by hoisting the input projection out of the
  time loop.

  Attributes beyond `LSTMOptions`: `projection_init` (the LSTMP kernel's initializer),
  `gate_fn` and `activation_fn` (sigmoid and tanh; the fused time loop needs these two),
  `carry_init` (the initial carry).
  """

  projection_init: Initializer = initializers.glorot_uniform()
  gate_fn: Callable[[Array], Array] = jax.nn.sigmoid
  activation_fn: Callable[[Array], Array] = jnp.tanh
  carry_init: Initializer = initializers.zeros_init()

  # The cell protocol (flaxlstm/nn/cells/base.py): the fast time loops it offers, and its
  # output is its carry's last field, h.
  kernels: ClassVar[tuple[str, ...]] = ("fused", "cudnn")
  output_in_carry: ClassVar[bool] = True

  # ---- parameters -------------------------------------------------------------------------
  @nn.compact
  def parameters(self, in_features: int) -> dict[str, Array]:
    """Creates (at init) or fetches this cell's parameters for inputs of `in_features`."""
    h4 = 4 * self.features
    rec_in = self.proj_features or self.features
    p = {
      "input_kernel": self.param(
        "input_kernel", per_gate(self.kernel_init), (in_features, h4), self.param_dtype
      ),
      "recurrent_kernel": self.param(
        "recurrent_kernel", per_gate(self.recurrent_kernel_init), (rec_in, h4), self.param_dtype
      ),
      "bias": self.param("bias", self.bias_init, (h4,), self.param_dtype),
    }
    if self.proj_features:
      p["projection_kernel"] = self.param(
        "projection_kernel",
        self.projection_init,
        (self.features, self.proj_features),
        self.param_dtype,
      )
    if self.layer_norm:
      ones = initializers.ones_init()
      p["input_ln_scale"] = self.param("input_ln_scale", ones, (h4,), self.param_dtype)
      p["recurrent_ln_scale"] = self.param("recurrent_ln_scale", ones, (h4,), self.param_dtype)
      p["cell_ln_scale"] = self.param("cell_ln_scale", ones, (self.features,), self.param_dtype)
      p["cell_ln_bias"] = self.param(
        "cell_ln_bias", initializers.zeros_init(), (self.features,), self.param_dtype
      )
    return p

  # ---- pure math (no Flax scope access: safe inside lax.scan / custom_vjp) ---------------
  @property
  def state_dtype(self):
    # The cell state is never carried below float32 (mixed-precision invariant).
    return jnp.promote_types(self.compute_dtype, jnp.float32)

  @nn.nowrap
  def project(self, p: Mapping[str, Array], x: Array) -> Array:
    """Input-side pre-activations `W x + b` (+ forget bias) for any leading shape of `x`.

    This is the part of the cell that does not depend on the recurrence, so `LSTM` computes
    it for all time steps at once as one large matmul.
    """
    dt = self.compute_dtype
    z = jnp.matmul(x.astype(dt), p["input_kernel"].astype(dt))
    if self.layer_norm:
      z = _layer_norm(z, p["input_ln_scale"], 4)
    bias = jnp.asarray(p["bias"])  # params may arrive as NumPy (device_get, checkpoints)
    if self.forget_bias:
      bias = bias.at[self.features : 2 * self.features].add(self.forget_bias)
    return z + bias.astype(dt)

  @nn.nowrap
  def recur(
    self, p: Mapping[str, Array], carry: Carry, zx: Array, h_mask: Array | None = None
  ) -> tuple[Carry, Array]:
    """One step from input pre-activations `zx` (see `project`). `h_mask` scales the h fed
    back (variational recurrent dropout: one mask per sequence, the same at every step)."""
    c, h = carry
    h_in = h if h_mask is None else h * h_mask
    return self.activate(p, c, zx + self.recurrent_preactivations(p, h_in))

  @nn.nowrap
  def recurrent_preactivations(self, p: Mapping[str, Array], h: Array) -> Array:
    """The recurrent side `U h` of the gate pre-activations (layer-normalized if set)."""
    dt = self.compute_dtype
    zh = jnp.matmul(h.astype(dt), p["recurrent_kernel"].astype(dt))
    if self.layer_norm:
      zh = _layer_norm(zh, p["recurrent_ln_scale"], 4)
    return zh

  @nn.nowrap
  def activate(self, p: Mapping[str, Array], c: Array, z: Array) -> tuple[Carry, Array]:
    """The gates from the full pre-activations `z = W x + U h + b`: `c, z -> (c', h'), h'`.

    Split from `recur` so that a caller who knows `z` cheaper (the parallel decoder, whose
    steps share one `h`) can reuse the exact gate math.
    """
    dt = self.compute_dtype
    n = self.features
    i = self.gate_fn(z[..., :n])
    f = self.gate_fn(z[..., n : 2 * n])
    g = self.activation_fn(z[..., 2 * n : 3 * n])
    o = self.gate_fn(z[..., 3 * n :])
    new_c = f.astype(c.dtype) * c + (i * g).astype(c.dtype)
    c_out = new_c
    if self.layer_norm:
      c_out = _layer_norm(new_c, p["cell_ln_scale"], 1, p["cell_ln_bias"])
    new_h = o * self.activation_fn(c_out.astype(dt))
    if self.proj_features:
      new_h = jnp.matmul(new_h, p["projection_kernel"].astype(dt))
    return LSTMCarry(new_c, new_h), new_h

  # ---- RNNCellBase API ---------------------------------------------------------------------
  def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
    """One time step: `(c, h), x -> (c', h'), h'`. Batch dims are all but the last. The
    carry comes back in the container it came in (a plain tuple inside `flax.linen.RNN`
    started from one, else an `LSTMCarry`)."""
    p = self.parameters(inputs.shape[-1])
    new, y = self.recur(p, carry, self.project(p, inputs))
    return like(carry, new), y

  @nn.nowrap
  def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> Carry:
    """Zero (by `carry_init`) carry for inputs of `input_shape` = `(*batch, features_in)`."""
    batch = tuple(input_shape[:-1])
    key_c, key_h = jax.random.split(rng)
    c = self.carry_init(key_c, batch + (self.features,), self.state_dtype)
    h = self.carry_init(key_h, batch + (self.proj_features or self.features,), self.compute_dtype)
    return LSTMCarry(c, h)

  @property
  def num_feature_axes(self) -> int:
    return 1
