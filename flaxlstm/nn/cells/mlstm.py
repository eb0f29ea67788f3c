r"""`MLSTMCell`: the mLSTM of xLSTM (Beck et al., 2024), a matrix memory per head written
with exponential input gates and read by a query; and its typed carry `MLSTMCarry(C, n, m)`.

Per step and head, from the query, key and value `q, k, v` (DH each; `k` scaled by
:math:`1/\sqrt{DH}`) and the gate pre-activations :math:`\tilde\imath, \tilde f` (one scalar
per head, :math:`[\tilde\imath, \tilde f] = W_g [q; k; v] + b_g`):

.. math::

    \begin{array}{ll}
    \log f = \log\sigma(\tilde f), \quad m_t = \max(\log f + m_{t-1},\ \tilde\imath) \\
    i' = \exp(\tilde\imath - m_t), \quad f' = \exp(\log f + m_{t-1} - m_t) \\
    C_t = f' C_{t-1} + i'\, k v^\top, \quad n_t = f' n_{t-1} + i'\, k \\
    \tilde h_t = C_t^\top q \,/\, (\max(|q^\top n_t|, \exp(-m_t)) + \epsilon)
    \end{array}

`m` is the stabilizer: it keeps the exponentials at most 1 and cancels out of
:math:`\tilde h` except through the normalizer's floor :math:`\exp(-m_t)`. The recurrence is
linear in `C` and `n`, so the whole sequence also has a closed form, quadratic in T
(`"parallel"`), and a chunked one, linear in T (`"chunkwise"`): both are in
flaxlstm/nn/kernels/mlstm.py, and the three forms agree.

**The empty state.** `initialize_carry` starts with `m = EMPTY` (a very negative number,
standing for minus infinity), so that the first step sets `m_1 = i~_1` and nothing of the
empty state enters the floor: then `m_t = max_j (i~_j + sum_{s=j+1..t} log f_s)`, exactly the
row maximum the parallel form (the `xlstm` package's training path) stabilizes with. (The
`xlstm` package's step starts from `m = 0` instead, which differs from its own parallel form
where the floor binds; a carry with `m = 0` is accepted here and means just that.)

Parameter layout (H = NH heads x DH, input size D):

  input_kernel  (D, 3H)      only with `project_inputs` (a standalone cell): x -> [q | k | v]
  gate_kernel   (3H, 2 NH)   [q; k; v] -> [i~ (NH) | f~ (NH)]
  gate_bias     (2 NH,)      input gates ~ N(0, 0.1), forget gates linspace(3, 6) over heads

The `MLSTM` layer (layers: flaxlstm/nn/xlstm.py) computes q, k, v itself (a causal
convolution and block-diagonal projections), so its cell runs with `project_inputs=False`:
the inputs are `[q | k | v]` and the cell adds the gates. The cell feeds nothing back to
its input, so recurrent dropout has nothing to mask.
"""

from __future__ import annotations

from typing import ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from flaxlstm.nn.cells.base import CellOptions, like, option_fields

Array = jax.Array

# The stabilizer of a state that holds nothing yet: minus infinity, kept finite so that no
# `inf - inf` can appear in a gradient. Any real `m` (a log of a gate product) is far above.
EMPTY = -1e30


class MLSTMCarry(NamedTuple):
  """The mLSTM's state, float32: the memory `C (*batch, NH, DH, DH)` (key index first), the
  normalizer `n (*batch, NH, DH)` and the stabilizer `m (*batch, NH)`."""

  C: Array
  n: Array
  m: Array


class MLSTMStepInputs(NamedTuple):
  """What one step reads (`MLSTMCell.project`): `q, k, v (*batch, NH, DH)` (`k` already
  scaled by 1/sqrt(DH)) in the compute dtype, and the gate pre-activations `i, f (*batch,
  NH)` in float32."""

  q: Array
  k: Array
  v: Array
  i: Array
  f: Array


class MLSTMOptions(CellOptions):
  """The mLSTM cell's options: those every cell takes (`CellOptions`; `recurrent_kernel_init`
  is unused, the mLSTM has no recurrent weights) and its own.

  Attributes (beyond `CellOptions`):
    num_heads: heads (divides `features`); each has a `DH x DH` memory.
    eps: added to the normalizer.
    chunk_size: steps per chunk of the chunkwise form (nn/kernels/mlstm.py): its cost per
      step grows with it, the number of sequential chunk steps shrinks.
  """

  num_heads: int = 4
  eps: float = 1e-6
  chunk_size: int = 64


MLSTM_OPTIONS = option_fields(MLSTMOptions, below=CellOptions)
ALL_MLSTM_OPTIONS = option_fields(MLSTMOptions)


def gate_bias_init(heads: int):
  """The gates' initial bias `(2 NH,)`: input gates ~ N(0, 0.1), forget gates evenly from 3
  to 6 over the heads (the `xlstm` package's: forget gates open at the start)."""

  def init(key, shape, dtype=jnp.float32):
    del shape
    i = 0.1 * jax.random.normal(key, (heads,), dtype)
    return jnp.concatenate([i, jnp.linspace(3.0, 6.0, heads, dtype=dtype)])

  return init


def step(carry: MLSTMCarry, x: MLSTMStepInputs, eps: float) -> tuple[MLSTMCarry, Array]:
  """One step of the recurrence (the module docstring): `(carry, h~ (*batch, NH, DH))`."""
  C, n, m = carry
  q, k, v = (a.astype(jnp.float32) for a in (x.q, x.k, x.v))
  log_f = jax.nn.log_sigmoid(x.f)
  m_new = jnp.maximum(log_f + m, x.i)
  f_gate = jnp.exp(log_f + m - m_new)[..., None]
  i_gate = jnp.exp(x.i - m_new)[..., None]
  C_new = f_gate[..., None] * C + i_gate[..., None] * (k[..., :, None] * v[..., None, :])
  n_new = f_gate * n + i_gate * k
  num = jnp.einsum("...d,...de->...e", q, C_new)
  den = jnp.maximum(jnp.abs(jnp.sum(q * n_new, -1)), jnp.exp(-m_new)) + eps
  return MLSTMCarry(C_new, n_new, m_new), num / den[..., None]


class MLSTMCell(MLSTMOptions, nn.RNNCellBase):
  """The mLSTM cell (equations and layout in the module docstring).

  A Flax `RNNCellBase`: `__call__(carry, x) -> (carry, h~)`, `initialize_carry(rng,
  input_shape)` (the empty state), and the pure step (`parameters`, `project`, `recur`) that
  flaxlstm's layers and kernels run on. Over a sequence the layers run it in one of three
  forms (`implementation`): "chunkwise" (the default, linear in T), "parallel" (quadratic
  in T), "recurrent" (this step under `lax.scan`).

  Attributes beyond `MLSTMOptions`: `project_inputs` (the cell owns `input_kernel`; False:
  the inputs are already `[q | k | v]`, as in the `MLSTM` layer).
  """

  project_inputs: bool = True

  # The cell protocol (flaxlstm/nn/cells/base.py): its sequence forms (nn/kernels/mlstm.py);
  # its output is not in its carry.
  kernels: ClassVar[tuple[str, ...]] = ("mlstm_chunkwise", "mlstm_parallel", "mlstm_recurrent")
  output_in_carry: ClassVar[bool] = False

  @property
  def head_dim(self) -> int:
    return self.features // self.num_heads

  @nn.compact
  def parameters(self, in_features: int) -> dict[str, Array]:
    """Creates (at init) or fetches this cell's parameters for inputs of `in_features`."""
    if self.features % self.num_heads:
      raise ValueError(f"MLSTMCell: num_heads={self.num_heads} must divide {self.features}")
    h, nh = self.features, self.num_heads
    p = {}
    if self.project_inputs:
      p["input_kernel"] = self.param(
        "input_kernel", self.kernel_init, (in_features, 3 * h), self.param_dtype
      )
    elif in_features != 3 * h:
      raise ValueError(f"MLSTMCell(project_inputs=False) takes [q | k | v], 3H = {3 * h} inputs")
    p["gate_kernel"] = self.param(
      "gate_kernel", initializers.zeros_init(), (3 * h, 2 * nh), self.param_dtype
    )
    p["gate_bias"] = self.param("gate_bias", gate_bias_init(nh), (2 * nh,), self.param_dtype)
    return p

  @nn.nowrap
  def project(self, p: Mapping[str, Array], x: Array) -> MLSTMStepInputs:
    """Every step's `MLSTMStepInputs` from `x (..., D)` at once (the input side)."""
    dt = self.compute_dtype
    x = x.astype(dt)
    if self.project_inputs:
      x = jnp.matmul(x, jnp.asarray(p["input_kernel"]).astype(dt))
    gates = jnp.matmul(x.astype(jnp.float32), jnp.asarray(p["gate_kernel"], jnp.float32))
    gates = gates + jnp.asarray(p["gate_bias"], jnp.float32)
    heads = lambda a: a.reshape(a.shape[:-1] + (self.num_heads, self.head_dim))
    q, k, v = (heads(a) for a in jnp.split(x, 3, axis=-1))
    k = k * jnp.asarray(self.head_dim**-0.5, dt)
    i, f = jnp.split(gates, 2, axis=-1)
    return MLSTMStepInputs(q, k, v, i, f)

  @nn.nowrap
  def recur(
    self,
    p: Mapping[str, Array],
    carry: MLSTMCarry,
    zx: MLSTMStepInputs,
    h_mask: Array | None = None,
  ) -> tuple[MLSTMCarry, Array]:
    """One step from its projected inputs (see `project`): `(carry, h~ (*batch, H))`."""
    del p
    if h_mask is not None:
      raise ValueError("the mLSTM feeds no state back to its input: no recurrent dropout")
    new, h = step(carry, zx, self.eps)
    return new, h.reshape(h.shape[:-2] + (self.features,)).astype(self.compute_dtype)

  def __call__(self, carry: MLSTMCarry, inputs: Array) -> tuple[MLSTMCarry, Array]:
    """One time step; the carry comes back in the container it came in."""
    p = self.parameters(inputs.shape[-1])
    new, y = self.recur(p, carry, self.project(p, inputs))
    return like(carry, new), y

  @nn.nowrap
  def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> MLSTMCarry:
    """The empty state (the module docstring) for inputs of `input_shape` = `(*batch, D)`."""
    del rng
    batch, nh, dh = tuple(input_shape[:-1]), self.num_heads, self.head_dim
    return MLSTMCarry(
      jnp.zeros(batch + (nh, dh, dh), jnp.float32),
      jnp.zeros(batch + (nh, dh), jnp.float32),
      jnp.full(batch + (nh,), EMPTY, jnp.float32),
    )

  @property
  def num_feature_axes(self) -> int:
    return 1


__all__ = ["EMPTY", "MLSTMCarry", "MLSTMCell", "MLSTMOptions", "MLSTMStepInputs", "step"]
