r"""The xLSTM family's layers and blocks, as the `xlstm` package builds them: `SLSTM`, the
sLSTM layer, and `SLSTMBlock`, the block around it (pre-norm, residual, gated
feed-forward).

`SLSTM(features, num_heads, conv1d_kernel_size=4)` over `(*batch, T, features)`:

.. math::

    \tilde x = \mathrm{SiLU}(\mathrm{conv}(x)), \quad
    [\tilde\imath, \tilde f] = [P_i \tilde x, P_f \tilde x], \quad
    [\tilde z, \tilde o] = [P_z x, P_o x], \quad
    h = \mathrm{sLSTM}([\tilde\imath, \tilde f, \tilde z, \tilde o]), \quad
    y = \mathrm{GroupNorm}_{\text{heads}}(\mathrm{dropout}(h))

`conv` is a causal depthwise convolution over time (`CausalConv`, kernel
`conv1d_kernel_size`; 0: none, then the gates read `x`), `P` head-wise projections
(block-diagonal, one `(DH, DH)` block per head; no bias: the cell has one), and the cell
`SLSTMCell` (flaxlstm/nn/cells/slstm.py, `project_inputs=False`). The group norm normalizes
each head's outputs on their own, scaled by `1 + w` (`w` starts at zero). Parameters:
`conv` (`kernel (K, 1, H)`, `bias (H,)`), `igate`, `fgate`, `zgate`, `ogate` (`kernel (NH,
DH, DH)`), `cell` (`recurrent_kernel`, `bias`) and `norm` (`scale (H,)`);
`flaxlstm.nn.convert.from_xlstm_slstm_layer` maps the `xlstm` package's state dicts onto
them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

from flaxlstm.nn import kernels
from flaxlstm.nn.cells.base import option_fields, options_of
from flaxlstm.nn.cells.mlstm import ALL_MLSTM_OPTIONS, MLSTMCell, MLSTMOptions
from flaxlstm.nn.cells.slstm import ALL_SLSTM_OPTIONS, SLSTMCell, SLSTMOptions
from flaxlstm.nn.dropout import Dropout, is_active
from flaxlstm.nn.layers import run_layer, start_layer
from flaxlstm.nn.remat import remat_call
from flaxlstm.nn.residual import residual_boundary
from flaxlstm.nn.stack_layout import block_runs

Array = jax.Array


class CausalConv(nn.Module):
  """A causal depthwise convolution over time: `y_t = b + sum_k w_k x_{t - K + 1 + k}`, per
  feature (`kernel (K, 1, H)`, `bias (H,)`: `flax.linen.Conv`'s depthwise layout and init).

  Written as K shifted multiply-adds instead of `lax.conv`: for the few taps here
  (K = 4) that is elementwise work, where XLA:CPU's depthwise convolution, and above all
  its backward, costs a large part of an sLSTM layer's step
  (`experiments/benchmarks/slstm_step.py`)."""

  kernel_size: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, history: Array | None = None) -> Array:
    """`x (..., T, H)`; `history (..., K - 1, H)`: the inputs before `x` (streaming: the
    previous call's `tail`), zeros when None."""
    h, k = x.shape[-1], self.kernel_size
    kernel = self.param("kernel", initializers.lecun_normal(), (k, 1, h))
    bias = self.param("bias", initializers.zeros_init(), (h,))
    dt = self.dtype or kernel.dtype
    x = x.astype(dt)
    t = x.shape[-2]
    padded = self.extend(x, history)
    y = sum(padded[..., j : j + t, :] * kernel[j, 0].astype(dt) for j in range(k))
    return y + bias.astype(dt)

  @nn.nowrap
  def extend(self, x: Array, history: Array | None) -> Array:
    """`x` behind its `K - 1` rows of history (zeros when None)."""
    k = self.kernel_size
    if history is None:
      return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(k - 1, 0), (0, 0)])
    return jnp.concatenate([history.astype(x.dtype), x], axis=-2)

  @nn.nowrap
  def tail(self, x: Array, history: Array | None, lengths: Array | None = None) -> Array:
    """The `K - 1` inputs a next call reads as its history: each sequence's last `K - 1`
    rows before its length (`lengths (B,)`, None: T), history included."""
    k, t = self.kernel_size, x.shape[-2]
    padded = self.extend(x, history)  # row i + K - 1 is x's row i
    if lengths is None:
      return padded[..., t:, :]
    idx = lengths[:, None] + jnp.arange(k - 1)[None, :]  # (B, K - 1) into the padded rows
    return jnp.take_along_axis(padded, idx[..., None], axis=-2)


class HeadwiseLinear(nn.Module):
  """`x (..., H)` through a block-diagonal map, one `(DH, DH)` block per head (`kernel
  (NH, DH, DH)`); small init, std sqrt(2 / 5 W) with W `init_features` (default H), as the
  `xlstm` package's projections; a bias `(H,)` with `use_bias`."""

  heads: int
  dtype: Any = None
  init_features: int | None = None
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: Array, *, head_major: bool = False) -> Array:
    """`x (..., H) -> (..., H)`; with `head_major`, `x` is already split by head, `(NH, N,
    DH)`, and so is the output (the fused sLSTM's layout: `SLSTM`)."""
    dh = x.shape[-1] if head_major else x.shape[-1] // self.heads
    h = self.heads * dh
    init = initializers.normal(math.sqrt(2 / (5 * (self.init_features or h))))
    kernel = self.param("kernel", init, (self.heads, dh, dh))
    dt = self.dtype or kernel.dtype
    # Heads first, one batched matmul `(NH, N, DH) @ (NH, DH, DH)`: XLA:CPU runs an einsum
    # with the head axis between the rows and the features several times slower (worst
    # for the mLSTM's 4-wide blocks; experiments/benchmarks/slstm_step.py measures it).
    if head_major:
      y = jnp.matmul(x.astype(dt), kernel.astype(dt))
    else:
      rows = jnp.swapaxes(x.reshape((-1, self.heads, dh)), 0, 1).astype(dt)
      y = jnp.swapaxes(jnp.matmul(rows, kernel.astype(dt)), 0, 1).reshape(x.shape)
    if self.use_bias:
      bias = self.param("bias", initializers.zeros_init(), (h,)).astype(y.dtype)
      y = y + (bias.reshape(self.heads, 1, dh) if head_major else bias)
    return y


class HeadNorm(nn.Module):
  """Each head's outputs normalized on their own (in float32), scaled by `1 + scale`
  (`scale (H,)` starts at zero): the `xlstm` package's multi-head layer norm."""

  heads: int
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", initializers.zeros_init(), (x.shape[-1],))
    xg = x.astype(jnp.float32).reshape(x.shape[:-1] + (self.heads, x.shape[-1] // self.heads))
    mean = xg.mean(-1, keepdims=True)
    var = jnp.square(xg - mean).mean(-1, keepdims=True)
    out = ((xg - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
    return (out * (1.0 + scale)).astype(x.dtype)


GATES = ("igate", "fgate", "zgate", "ogate")


class SLSTMLayerOptions(SLSTMOptions):
  """The sLSTM layer's options, declared once for `SLSTM` and `SLSTMBlock`: the
  `SLSTMOptions` (`features`, the layer's width in and out; `num_heads`, `forget_gate`,
  ...: the cell's), and
    conv1d_kernel_size: the causal convolution's width (0: no convolution).
    dropout: on the cell's outputs before the group norm (the `xlstm` package's).
    recurrent_dropout: variational dropout of the fed-back `h`.
    unroll, remat, implementation: how the time loop runs (`flaxlstm.LSTM`'s).
    deterministic: disables dropout; can also be passed to `__call__`.
  """

  conv1d_kernel_size: int = 4
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  unroll: int = 1
  remat: bool = False
  implementation: str = "auto"
  deterministic: bool | None = None


LAYER_OPTIONS = option_fields(SLSTMLayerOptions)


class SLSTM(SLSTMLayerOptions):
  """The sLSTM layer of the `xlstm` package (the module docstring), as a Flax layer.

  Attributes: the `SLSTMLayerOptions`, and `return_carry`: also return the cell's final
  `SLSTMCarry`, `(carry, y)`.
  """

  return_carry: bool = False

  @nn.compact
  def __call__(
    self,
    x: Array,
    *,
    initial_carry: Any = None,
    seq_lengths: Array | None = None,
    deterministic: bool | None = None,
  ):
    h, heads = self.features, self.num_heads
    if x.shape[-1] != h:
      raise ValueError(f"SLSTM({h}) reads inputs of width {h}, got {x.shape[-1]}")
    cell = SLSTMCell(h, **options_of(self, ALL_SLSTM_OPTIONS), project_inputs=False, name="cell")
    dt = cell.compute_dtype
    drop = is_active(self.dropout) or is_active(self.recurrent_dropout)
    training = drop and not nn.merge_param("deterministic", self.deterministic, deterministic)
    loop = dict(
      make_carry=lambda shape: cell.initialize_carry(jax.random.key(0), shape),
      initial_carry=initial_carry,
      seq_lengths=seq_lengths,
      recurrent_dropout=self.recurrent_dropout,
      dropout_rng=(lambda: self.make_rng("dropout")) if training else None,
    )

    def conv(inputs: Array) -> Array:
      if self.conv1d_kernel_size == 0:
        return inputs
      return nn.silu(CausalConv(self.conv1d_kernel_size, dt, name="conv")(inputs))

    gate = lambda name, inputs, **kw: HeadwiseLinear(heads, dt, name=name)(inputs, **kw)
    # A kernel that runs the loop on head-major pre-activations (the fused one: `run_heads`)
    # gets them straight from the head-wise projections, `(NH, T, B, DH)` per gate, instead
    # of through the gate-major `(B, T, 4H)` the other kernels read and back.
    call = kernels.call_needs(
      recurrent_dropout=training and is_active(self.recurrent_dropout), remat=self.remat
    )
    kernel = kernels.select(cell, self.implementation, call)
    run_heads = None if self.remat else getattr(kernel, "run_heads", None)
    if run_heads is None:
      x_conv = conv(x)
      pre = jnp.concatenate(
        [gate("igate", x_conv), gate("fgate", x_conv), gate("zgate", x), gate("ogate", x)], -1
      )
      carry, ys = run_layer(
        cell,
        cell.parameters(4 * h),
        pre,
        **loop,
        unroll=self.unroll,
        remat=self.remat,
        implementation=self.implementation,
      )
    else:
      batch_shape, xb, lengths, carry, h_mask = start_layer(x, **loop)
      b, t = xb.shape[:2]
      # Rows in (step, sample) order per head: `(B, T, H) -> (NH, T * B, DH)`.
      rows = lambda a: jnp.transpose(a.reshape(b, t, heads, -1), (2, 1, 0, 3)).reshape(
        heads, t * b, -1
      )
      xc = rows(conv(xb))
      xr = rows(xb)
      # The four gates' kernels side by side, one matmul per input (one without the
      # convolution): fewer, wider GEMMs than one per gate, and no concatenation of their
      # outputs. `init` calls the gates' modules, which create their parameters.
      if self.is_initializing():
        zx = jnp.concatenate(
          [
            gate("igate", xc, head_major=True),
            gate("fgate", xc, head_major=True),
            gate("zgate", xr, head_major=True),
            gate("ogate", xr, head_major=True),
          ],
          -1,
        )
      else:
        w = [self.variables["params"][n]["kernel"].astype(dt) for n in GATES]
        if self.conv1d_kernel_size == 0:
          zx = jnp.matmul(xr.astype(dt), jnp.concatenate(w, -1))
        else:
          zx = jnp.concatenate(
            [
              jnp.matmul(xc.astype(dt), jnp.concatenate(w[:2], -1)),
              jnp.matmul(xr.astype(dt), jnp.concatenate(w[2:], -1)),
            ],
            -1,
          )
      zx = zx.reshape(heads, t, b, -1)
      p = cell.parameters(4 * h)
      carry, ys = run_heads(cell, p, carry, zx, lengths, h_mask=h_mask, unroll=self.unroll)
      carry = jax.tree.map(lambda a: a.reshape(batch_shape + a.shape[1:]), carry)
      ys = ys.reshape(batch_shape + ys.shape[1:])
    ys = Dropout(self.dropout)(ys, deterministic=not training)
    y = HeadNorm(heads, name="norm")(ys)
    return (carry, y) if self.return_carry else y


class ResidualLayerNorm(nn.Module):
  """Layer norm over the last axis, scaled by `1 + scale` (`scale` starts at zero), no
  bias: the `xlstm` package's pre-norm."""

  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", initializers.zeros_init(), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + self.eps) * (1.0 + scale)).astype(x.dtype)


# The feed-forward's activations (the `xlstm` package's names; "gelu" is the exact one).
ACTIVATIONS = {
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "swish": jax.nn.silu,
  "relu": jax.nn.relu,
}


class GatedFeedForward(nn.Module):
  """`down(act(gate) * up)` with `[gate, up] = proj_up(x)`, no biases: the `xlstm` package's
  gated feed-forward. Its width is `proj_factor * features` rounded up to a multiple of 64."""

  proj_factor: float = 1.3
  activation: str = "gelu"
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
    h = x.shape[-1]
    up = math.ceil(self.proj_factor * h / 64) * 64
    gate, value = jnp.split(nn.Dense(2 * up, use_bias=False, name="proj_up")(x), 2, axis=-1)
    y = nn.Dense(h, use_bias=False, name="proj_down")(ACTIVATIONS[self.activation](gate) * value)
    return Dropout(self.dropout)(y, deterministic=deterministic)


class SLSTMBlock(SLSTMLayerOptions):
  """The sLSTM block of the `xlstm` package (post-up-projection): `x + SLSTM(norm(x))`, then
  `x + GatedFeedForward(norm(x))` (no feed-forward with `ffn_proj_factor=0`). Both residual
  inputs pass `residual_boundary` (nn/residual.py: deep stacks' gradients on the CPU).

  Attributes: the `SLSTMLayerOptions` (its layer's; `features` is the block's width), and
    ffn_proj_factor, ffn_activation: the feed-forward's width factor and activation.
    ffn_dropout: on the feed-forward's output.
  """

  ffn_proj_factor: float = 1.3
  ffn_activation: str = "gelu"
  ffn_dropout: float = 0.0

  @nn.compact
  def __call__(
    self, x: Array, *, seq_lengths: Array | None = None, deterministic: bool | None = None
  ) -> Array:
    layer = SLSTM(**options_of(self, LAYER_OPTIONS), features=self.features, name="slstm")
    x = residual_boundary(x)
    x = x + layer(
      ResidualLayerNorm(name="norm")(x), seq_lengths=seq_lengths, deterministic=deterministic
    )
    if self.ffn_proj_factor:
      ffn = GatedFeedForward(
        self.ffn_proj_factor, self.ffn_activation, self.ffn_dropout, name="ffn"
      )
      x = residual_boundary(x)
      x = x + ffn(ResidualLayerNorm(name="ffn_norm")(x), deterministic=deterministic is not False)
    return x


def up_width(features: int, proj_factor: float, multiple: int = 64) -> int:
  """The mLSTM layer's inner width: `proj_factor * features` rounded up to a multiple of 64
  (the `xlstm` package's rule)."""
  return math.ceil(proj_factor * features / multiple) * multiple


class MLSTMLayerOptions(MLSTMOptions):
  """The mLSTM layer's options, declared once for `MLSTM`, `MLSTMBlock` and `XLSTMStack`:
  the `MLSTMOptions` (`features`: the layer's width in and out, here; `num_heads`, `eps`,
  `chunk_size`: its cell's, which runs `up_width(features, proj_factor)` wide), and
    conv1d_kernel_size: the causal convolution's width (0: none).
    qkv_proj_blocksize: the block size of the block-diagonal q, k, v projections.
    proj_factor: the inner width over `features` (rounded up to a multiple of 64).
    use_bias: biases on the up/down and q, k, v projections (the `xlstm` package's `bias`).
    dropout: on the layer's output.
    num_blocks: blocks in the stack the layer sits in (its down-projection's init).
    remat, implementation: "chunkwise" (default), "parallel" or "recurrent"
      (`MLSTMCell`); remat recomputes the sequence form in the backward pass.
    deterministic: disables dropout; can also be passed to `__call__`.
  """

  conv1d_kernel_size: int = 4
  qkv_proj_blocksize: int = 4
  proj_factor: float = 2.0
  use_bias: bool = False
  dropout: float = 0.0
  num_blocks: int = 1
  remat: bool = False
  implementation: str = "auto"
  deterministic: bool | None = None


MLSTM_LAYER_OPTIONS = option_fields(MLSTMLayerOptions)


class MLSTM(MLSTMLayerOptions):
  r"""The mLSTM layer of the `xlstm` package, as a Flax layer. Over `(*batch, T, features)`,
  with inner width `W = up_width(features, proj_factor)`:

  .. math::

      [x_m, z] = U x, \quad \tilde x = \mathrm{SiLU}(\mathrm{conv}(x_m)), \quad
      q = P_q \tilde x,\ k = P_k \tilde x,\ v = P_v x_m \\
      y = D\,\big((\mathrm{GroupNorm}_{\text{heads}}(\mathrm{mLSTM}(q, k, v))
        + s \odot \tilde x) \odot \mathrm{SiLU}(z)\big)

  `U` (`proj_up`, `features -> 2W`) and `D` (`proj_down`) dense, `P` block-diagonal
  (`HeadwiseLinear`, blocks of `qkv_proj_blocksize`), `conv` causal depthwise, `s` the
  learnable skip (`learnable_skip (W,)`, ones), the cell `MLSTMCell` (`project_inputs=False`).
  Parameters: `proj_up`, `conv`, `q_proj`, `k_proj`, `v_proj`, `cell` (`gate_kernel`,
  `gate_bias`), `norm`, `learnable_skip`, `proj_down`; `flaxlstm.nn.convert.
  from_xlstm_mlstm_layer` maps the `xlstm` package's state dicts onto them.

  Attributes: the `MLSTMLayerOptions`, and `return_carry`: also return the layer's final
  `MLSTMLayerCarry` (the cell's `MLSTMCarry` and the convolution's last `K - 1` inputs),
  `(carry, y)`. Given back as `initial_carry`, the next call continues the sequence
  exactly: a long sequence streamed through the layer in pieces gives the outputs of one
  call (an `MLSTMCarry` alone starts the convolution from zeros).
  """

  return_carry: bool = False

  @nn.compact
  def __call__(
    self,
    x: Array,
    *,
    initial_carry: Any = None,
    seq_lengths: Array | None = None,
    deterministic: bool | None = None,
  ):
    d = self.features
    if x.shape[-1] != d:
      raise ValueError(f"MLSTM({d}) reads inputs of width {d}, got {x.shape[-1]}")
    inner = up_width(d, self.proj_factor)
    if inner % self.qkv_proj_blocksize or inner % self.num_heads:
      raise ValueError(
        f"MLSTM: the inner width {inner} must be a multiple of qkv_proj_blocksize="
        f"{self.qkv_proj_blocksize} and num_heads={self.num_heads}"
      )
    cell = MLSTMCell(
      inner, **options_of(self, ALL_MLSTM_OPTIONS), project_inputs=False, name="cell"
    )
    dt = cell.compute_dtype
    small = initializers.normal(math.sqrt(2 / (5 * d)))
    dense = lambda width, init, name: nn.Dense(
      width,
      use_bias=self.use_bias,
      kernel_init=init,
      dtype=dt,
      param_dtype=self.param_dtype,
      name=name,
    )
    x_m, z = jnp.split(dense(2 * inner, small, "proj_up")(x), 2, axis=-1)
    cell_carry, history = initial_carry, None
    if isinstance(initial_carry, MLSTMLayerCarry):
      cell_carry, history = initial_carry.cell, initial_carry.conv
    # SiLU after the convolution, and on `x_m` itself without one (the `xlstm` package's
    # mLSTM layer; its sLSTM layer, unlike it, feeds an unconvolved `x` as it is).
    x_conv, tail = x_m, None
    if self.conv1d_kernel_size > 0:
      conv = CausalConv(self.conv1d_kernel_size, dt, name="conv")
      x_conv = conv(x_m, history)
      if self.return_carry:
        tail = conv.tail(x_m, history, seq_lengths)
    x_conv = nn.silu(x_conv)
    proj = lambda name, inputs: HeadwiseLinear(
      inner // self.qkv_proj_blocksize, dt, init_features=d, use_bias=self.use_bias, name=name
    )(inputs)
    qkv = jnp.concatenate([proj("q_proj", x_conv), proj("k_proj", x_conv), proj("v_proj", x_m)], -1)
    carry, h = run_layer(
      cell,
      cell.parameters(3 * inner),
      qkv,
      make_carry=lambda shape: cell.initialize_carry(jax.random.key(0), shape),
      initial_carry=cell_carry,
      seq_lengths=seq_lengths,
      remat=self.remat,
      implementation=self.implementation,
    )
    h = HeadNorm(self.num_heads, name="norm")(h)
    skip = self.param("learnable_skip", initializers.ones_init(), (inner,), self.param_dtype)
    h = (h + skip.astype(dt) * x_conv) * nn.silu(z)
    wang = initializers.normal(2 / self.num_blocks / math.sqrt(d))
    y = dense(d, wang, "proj_down")(h)
    training = is_active(self.dropout) and not nn.merge_param(
      "deterministic", self.deterministic, deterministic
    )
    y = Dropout(self.dropout)(y, deterministic=not training)
    return (MLSTMLayerCarry(carry, tail), y) if self.return_carry else y


class MLSTMLayerCarry(NamedTuple):
  """The `MLSTM` layer's state between calls: its cell's `MLSTMCarry` and its causal
  convolution's last `K - 1` inputs `(*batch, K - 1, W)` (None without a convolution)."""

  cell: Any
  conv: Any


class MLSTMBlock(MLSTMLayerOptions):
  """The mLSTM block of the `xlstm` package: `x + MLSTM(norm(x))` (pre-norm, residual; no
  feed-forward; its input passes `residual_boundary`). Attributes: the `MLSTMLayerOptions`
  (`features` is the block's width)."""

  @nn.compact
  def __call__(
    self, x: Array, *, seq_lengths: Array | None = None, deterministic: bool | None = None
  ) -> Array:
    layer = MLSTM(**options_of(self, MLSTM_LAYER_OPTIONS), features=self.features, name="mlstm")
    x = residual_boundary(x)
    return x + layer(
      ResidualLayerNorm(name="norm")(x), seq_lengths=seq_lengths, deterministic=deterministic
    )


class _ScannedMLSTM(nn.Module):
  """A run of alike mLSTM blocks under `nn.scan` (the stack's body for one block)."""

  block: Any

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Array | None, deterministic: bool | None):
    return self.block(x, seq_lengths=seq_lengths, deterministic=deterministic), None


class XLSTMStack(nn.Module):
  """A stack of xLSTM blocks, the `xlstm` package's `xLSTMBlockStack` (the paper's
  xLSTM[a:b]): `num_blocks` blocks of width `features`, `MLSTMBlock`s except at `slstm_at`
  (`SLSTMBlock`s: head-wise recurrence and a gated feed-forward), then a layer norm.

  Consecutive mLSTM blocks are alike, so each run of them is one block under `nn.scan`
  (parameters stacked on a leading axis of the run's length, under `mlstm_<first index>`):
  compile time does not grow with depth. `remat` recomputes each block in the backward pass
  (per-block activation memory only). sLSTM blocks sit under `slstm_<index>`, each with
  its power-law forget-gate init for its position in the stack.

  Attributes:
    features, num_blocks, slstm_at: width, depth and the sLSTM blocks' positions.
    mlstm: `MLSTMLayerOptions` of the mLSTM blocks, as a dict (`num_heads`, `proj_factor`,
      `chunk_size`, `implementation`, ...).
    slstm: `SLSTMLayerOptions` and feed-forward options of the sLSTM blocks, as a dict.
    remat: per-block rematerialization.
    post_norm: the final layer norm.
  """

  features: int
  num_blocks: int = 2
  slstm_at: Sequence[int] = ()
  mlstm: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  slstm: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  remat: bool = False
  post_norm: bool = True

  @nn.compact
  def __call__(
    self, x: Array, *, seq_lengths: Array | None = None, deterministic: bool | None = None
  ) -> Array:
    bad = [i for i in self.slstm_at if not 0 <= i < self.num_blocks]
    if bad:
      raise ValueError(f"XLSTMStack: slstm_at {bad} outside the {self.num_blocks} blocks")
    for kind, start, length in block_runs(self.num_blocks, self.slstm_at):
      if kind == "slstm":
        position = start / max(self.num_blocks - 1, 1)
        block = SLSTMBlock(
          self.features,
          **{"block_position": position, **self.slstm},
          name=f"slstm_{start}",
        )
        if self.remat and not self.is_initializing():
          # Unrolled, so not `nn.remat`, which XLA:CPU undoes here (nn/remat.py).
          det = self.slstm.get("deterministic") if deterministic is None else deterministic
          drops = ("dropout", "recurrent_dropout", "ffn_dropout")
          stochastic = det is False and any(self.slstm.get(k, 0.0) for k in drops)
          x = remat_call(
            block, x, seq_lengths=seq_lengths, deterministic=deterministic, stochastic=stochastic
          )
        else:
          x = block(x, seq_lengths=seq_lengths, deterministic=deterministic)
        continue
      body_cls = nn.remat(_ScannedMLSTM, static_argnums=(3,)) if self.remat else _ScannedMLSTM
      run = nn.scan(
        body_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast),
        length=length,
      )
      body = MLSTMBlock(self.features, **{"num_blocks": self.num_blocks, **self.mlstm}, parent=None)
      x, _ = run(body, name=f"mlstm_{start}")(x, seq_lengths, deterministic)
    if self.post_norm:
      x = ResidualLayerNorm(name="post_norm")(x)
    return x


__all__ = [
  "MLSTM",
  "MLSTMLayerCarry",
  "MLSTMBlock",
  "SLSTM",
  "SLSTMBlock",
  "CausalConv",
  "GatedFeedForward",
  "HeadNorm",
  "HeadwiseLinear",
  "XLSTMStack",
  "block_runs",
  "up_width",
]
