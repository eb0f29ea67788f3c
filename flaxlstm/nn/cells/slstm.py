r"""`SLSTMCell`: the sLSTM of xLSTM (Beck et al., 2024), exponential gating with a
stabilizer and a normalizer state, its recurrence block-diagonal over heads; and its typed
carry `SLSTMCarry(c, n, m, h)`.

Per step, with pre-activations :math:`[\tilde\imath, \tilde f, \tilde z, \tilde o] = W x +
R h + b` (R block-diagonal: head k's outputs read only head k's `h`):

.. math::

    \begin{array}{ll}
    \log f = \log\sigma(\tilde f) \ \ (\text{forget\_gate="sigmoid"}) \quad\text{or}\quad
      \log f = \tilde f \ \ (\text{"exp"}) \\
    m_t = \max(\log f + m_{t-1},\ \tilde\imath) \quad (m_t = \tilde\imath \text{ while }
      n_{t-1} = 0) \\
    i' = \exp(\tilde\imath - m_t), \quad f' = \exp(\log f + m_{t-1} - m_t) \\
    c_t = f' c_{t-1} + i' \tanh(\tilde z), \quad n_t = f' n_{t-1} + i', \quad
    h_t = \sigma(\tilde o)\, c_t / n_t
    \end{array}

The stabilizer `m` keeps the exponentials finite without changing `h` (c and n scale
alike). `gate_soft_cap` bounds the input and forget pre-activations by
:math:`\mathrm{cap} \tanh(x / \mathrm{cap})`. `c`, `n`, `m` are carried in float32 whatever
the compute dtype (bf16 matmuls, float32 states: the references' mixed precision).

Parameter layout (hidden size H = NH heads x DH, input size D):

  input_kernel       (D, 4H)        only with `project_inputs` (a standalone cell)
  recurrent_kernel   (NH, DH, 4 DH) head k: its DH inputs to its [i | f | z | o] outputs
  bias               (4H,)          gate-major: [i (H) | f (H) | z (H) | o (H)]

Gate order along 4H is i, f, z, o, each block head-major (head k's DH units together),
the order of the `xlstm` package's vanilla kernel; its CUDA layout (and TiRex's) keeps the
recurrent kernel as here and the bias head-major (`flaxlstm.nn.convert`).

The sLSTM layer of the `xlstm` package (layers: `SLSTM`) computes the gate
pre-activations itself (a causal convolution and head-wise projections), so its cell runs
with `project_inputs=False`: the inputs are the 4H pre-activations and only the bias is
added.
"""

from __future__ import annotations

from typing import ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxlstm.nn.cells.base import CellOptions, like, option, option_fields
from flaxlstm.nn.cells.lstm import per_gate

Array = jax.Array

# forget_gate's choices and forget_bias_init's (see `SLSTMOptions`).
FORGET_GATES = {"sigmoid": "sigmoid", "exp": "exp"}
FORGET_BIAS_INITS = {"powerlaw": "powerlaw", "linspace": "linspace", "zeros": "zeros"}


class SLSTMCarry(NamedTuple):
  """The sLSTM's state, each `(*batch, H)`: cell `c`, normalizer `n`, stabilizer `m` (all
  float32) and the output `h` fed back (last, as in every flaxlstm carry)."""

  c: Array
  n: Array
  m: Array
  h: Array


class SLSTMOptions(CellOptions):
  """The sLSTM cell's options: those every cell takes (`CellOptions`) and its own.

  Attributes (beyond `CellOptions`):
    num_heads: heads of the block-diagonal recurrence (divides `features`).
    forget_gate: "sigmoid" (log f = log sigma(f~), the paper's) or "exp" (log f = f~).
    forget_bias_init: the forget gate's bias at init: "powerlaw" (the `xlstm` package's
      `powerlaw_blockdependent`: from +5 down to -7 across each head's units, steeper for
      blocks higher in a stack, `block_position`), "linspace" (3 to 6 across each head),
      or "zeros".
    block_position: where the block sits in a stack, 0 (first) to 1 (last), for the
      power-law initializer.
    gate_soft_cap: bound the input and forget pre-activations to (-cap, cap) smoothly;
      None: no cap.
  """

  num_heads: int = 4
  forget_gate: str = option("sigmoid", choices=FORGET_GATES)
  forget_bias_init: str = option("powerlaw", choices=FORGET_BIAS_INITS)
  block_position: float = 0.0
  gate_soft_cap: float | None = option(None, kind=float)


# The sLSTM's own options (beyond `CellOptions`), and all of its options, in order.
SLSTM_OPTIONS = option_fields(SLSTMOptions, below=CellOptions)
ALL_SLSTM_OPTIONS = option_fields(SLSTMOptions)


def forget_bias(kind: str, heads: int, head_dim: int, block_position: float = 0.0) -> Array:
  """The forget gate's initial bias `(heads * head_dim,)` (see `SLSTMOptions`)."""
  if kind == "zeros":
    per_head = jnp.zeros((head_dim,))
  elif kind == "linspace":
    per_head = jnp.linspace(3.0, 6.0, head_dim)
  else:  # powerlaw: the xlstm package's powerlaw_blockdependent
    t = jnp.arange(head_dim) / max(head_dim - 1, 1)
    per_head = -(-5.0 + 12.0 * t ** (0.3 + 1.3 * block_position))
  return jnp.tile(per_head, heads).astype(jnp.float32)


def block_diagonal(init, heads: int, head_dim: int):
  """An initializer of the `(NH, DH, 4 DH)` recurrent kernel: `init` on each head's each
  gate's `(DH, DH)` block, as `per_gate` does for a dense kernel."""

  def init_fn(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, heads)
    return jnp.stack([per_gate(init)(k, (head_dim, 4 * head_dim), dtype) for k in keys])

  return init_fn


class SLSTMCell(SLSTMOptions, nn.RNNCellBase):
  """The sLSTM cell (equations and layout in the module docstring).

  A Flax `RNNCellBase`: `__call__(carry, x) -> (carry, h)`, `initialize_carry(rng,
  input_shape)` (zeros), and the pure step (`parameters`, `project`, `recur`) that
  flaxlstm's layers and kernels run on.

  Attributes beyond `SLSTMOptions`: `project_inputs` (the cell owns the input kernel `W`;
  False: the inputs are already the 4H pre-activations, as in the `SLSTM` layer).
  """

  project_inputs: bool = True

  # The cell protocol (flaxlstm/nn/cells/base.py): its fused loop (nn/kernels/slstm_fused.py,
  # asked for as "fused"), and its output is its carry's last field, h.
  kernels: ClassVar[tuple[str, ...]] = ("slstm_fused",)
  output_in_carry: ClassVar[bool] = True

  @property
  def head_dim(self) -> int:
    return self.features // self.num_heads

  @nn.compact
  def parameters(self, in_features: int) -> dict[str, Array]:
    """Creates (at init) or fetches this cell's parameters for inputs of `in_features`."""
    if self.features % self.num_heads:
      raise ValueError(f"SLSTMCell: num_heads={self.num_heads} must divide {self.features}")
    h, nh, dh = self.features, self.num_heads, self.head_dim
    p = {}
    if self.project_inputs:
      p["input_kernel"] = self.param(
        "input_kernel", per_gate(self.kernel_init), (in_features, 4 * h), self.param_dtype
      )
    elif in_features != 4 * h:
      raise ValueError(f"SLSTMCell(project_inputs=False) takes 4H = {4 * h} inputs")
    p["recurrent_kernel"] = self.param(
      "recurrent_kernel",
      block_diagonal(self.recurrent_kernel_init, nh, dh),
      (nh, dh, 4 * dh),
      self.param_dtype,
    )

    def bias_init(key, shape, dtype=jnp.float32):
      b = self.bias_init(key, shape, dtype)
      f = forget_bias(self.forget_bias_init, nh, dh, self.block_position)
      return b.at[h : 2 * h].set(f.astype(dtype))

    p["bias"] = self.param("bias", bias_init, (4 * h,), self.param_dtype)
    return p

  @nn.nowrap
  def project(self, p: Mapping[str, Array], x: Array) -> Array:
    """The input side `W x + b` (or `x + b` without `project_inputs`) for all steps."""
    dt = self.compute_dtype
    bias = jnp.asarray(p["bias"]).astype(dt)
    if not self.project_inputs:
      return x.astype(dt) + bias
    return jnp.matmul(x.astype(dt), jnp.asarray(p["input_kernel"]).astype(dt)) + bias

  @nn.nowrap
  def recurrent_preactivations(self, p: Mapping[str, Array], h: Array) -> Array:
    """`R h`, head by head: `(*batch, H) -> (*batch, 4H)` gate-major."""
    dt = self.compute_dtype
    nh, dh = self.num_heads, self.head_dim
    heads = h.astype(dt).reshape(h.shape[:-1] + (nh, dh))
    r = jnp.einsum("...kd,kde->...ke", heads, jnp.asarray(p["recurrent_kernel"]).astype(dt))
    r = r.reshape(h.shape[:-1] + (nh, 4, dh))
    return jnp.swapaxes(r, -3, -2).reshape(h.shape[:-1] + (4 * self.features,))

  @nn.nowrap
  def recur(
    self, p: Mapping[str, Array], carry: SLSTMCarry, zx: Array, h_mask: Array | None = None
  ) -> tuple[SLSTMCarry, Array]:
    """One step from the input pre-activations `zx` (see `project`)."""
    c, n, m, h = carry
    h_in = h if h_mask is None else h * h_mask
    return self.activate(carry, zx + self.recurrent_preactivations(p, h_in))

  @nn.nowrap
  def activate(self, carry: SLSTMCarry, z: Array) -> tuple[SLSTMCarry, Array]:
    """The gates and states from the full pre-activations `z = W x + R h + b`."""
    c, n, m, _ = carry
    z = z.astype(jnp.float32)  # the gate math in float32, as the states
    ii, ff, zz, oo = jnp.split(z, 4, axis=-1)
    if self.gate_soft_cap is not None:
      cap = self.gate_soft_cap
      ii, ff = cap * jnp.tanh(ii / cap), cap * jnp.tanh(ff / cap)
    log_f = jax.nn.log_sigmoid(ff) if self.forget_gate == "sigmoid" else ff
    log_fm = log_f + m
    # No history yet (n = 0): the stabilizer starts at the input gate, as the references.
    m_new = jnp.where(n == 0, ii, jnp.maximum(ii, log_fm))
    # exp(<= 0) <= 1 already; the references clamp anyway (it matters only when n = 0).
    i_gate = jnp.minimum(jnp.exp(ii - m_new), 1.0)
    f_gate = jnp.minimum(jnp.exp(log_fm - m_new), 1.0)
    c_new = f_gate * c + i_gate * jnp.tanh(zz)
    n_new = f_gate * n + i_gate
    h_new = (jax.nn.sigmoid(oo) * c_new / n_new).astype(self.compute_dtype)
    return SLSTMCarry(c_new, n_new, m_new, h_new), h_new

  def __call__(self, carry: SLSTMCarry, inputs: Array) -> tuple[SLSTMCarry, Array]:
    """One time step; the carry comes back in the container it came in."""
    p = self.parameters(inputs.shape[-1])
    new, y = self.recur(p, carry, self.project(p, inputs))
    return like(carry, new), y

  @nn.nowrap
  def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> SLSTMCarry:
    """Zeros for inputs of `input_shape` = `(*batch, features_in)`."""
    del rng
    shape = tuple(input_shape[:-1]) + (self.features,)
    zero = jnp.zeros(shape, jnp.float32)
    return SLSTMCarry(zero, zero, zero, jnp.zeros(shape, self.compute_dtype))

  @property
  def num_feature_axes(self) -> int:
    return 1


__all__ = ["SLSTMCarry", "SLSTMCell", "SLSTMOptions", "forget_bias"]
