"""Weight converters: Flax, PyTorch and cuDNN LSTM parameters to and from `LSTMCell`'s layout.

The layout is documented once, in cells/lstm.py: `input_kernel` (D, 4H), `recurrent_kernel`
(R, 4H), one `bias` (4H,), optional `projection_kernel` (H, P); gates in the order i, f, g,
o, the order of PyTorch, cuDNN and Flax, so converting is a transpose and a concatenation,
never a permutation. `LSTMCell` adds `forget_bias` itself, so converters subtract it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flaxlstm.nn.cells.lstm import GATES
from flaxlstm.nn.stack_layout import block_runs


def _np(a) -> np.ndarray:
  return np.asarray(a, dtype=np.float32)


def _unfold_forget_bias(bias: np.ndarray, forget_bias: float) -> np.ndarray:
  # Our cell adds `forget_bias` itself; subtract it so the converted cell computes what the
  # source computed.
  bias = bias.copy()
  n = bias.shape[-1] // 4
  bias[n : 2 * n] -= forget_bias
  return bias


def from_flax_params(params: Mapping[str, Any], *, forget_bias: float = 1.0) -> dict:
  """Converts Flax `LSTMCell`/`OptimizedLSTMCell` params into `LSTMCell` params.

  `params` is the cell's own tree (`{'ii': {'kernel'}, ..., 'ho': {'kernel', 'bias'}}`);
  a tree wrapped in `{'params': ...}` is accepted too. Pass the `forget_bias` of the
  `LSTMCell` that will use the result (default: the cell's default, 1.0) and it will
  reproduce the Flax cell's outputs.
  """
  if "params" in params and "ii" not in params:
    params = params["params"]
  try:
    wi = np.concatenate([_np(params[f"i{g}"]["kernel"]) for g in GATES], axis=-1)
    wh = np.concatenate([_np(params[f"h{g}"]["kernel"]) for g in GATES], axis=-1)
    b = np.concatenate([_np(params[f"h{g}"]["bias"]) for g in GATES], axis=-1)
  except KeyError as e:
    raise ValueError(f"not Flax LSTM cell params: missing {e}") from None
  return {
    "input_kernel": jnp.asarray(wi),
    "recurrent_kernel": jnp.asarray(wh),
    "bias": jnp.asarray(_unfold_forget_bias(b, forget_bias)),
  }


def from_torch_lstm(
  state_dict: Mapping[str, Any], layer: int = 0, *, reverse: bool = False, forget_bias: float = 1.0
) -> dict:
  """Converts one layer of a PyTorch `nn.LSTM` state dict (NumPy arrays) to `LSTMCell` params.

  Reads `weight_ih_l{layer}` (4H, D), `weight_hh_l{layer}` (4H, R), `bias_ih_l{layer}`,
  `bias_hh_l{layer}` (4H,) and, for `proj_size > 0`, `weight_hr_l{layer}` (P, H);
  `reverse=True` reads the `_reverse` direction of a bidirectional LSTM. PyTorch's gate order
  is i, f, g, o like ours, so kernels are transposed and the two biases summed. Pass the
  `forget_bias` of the `LSTMCell` that will use the result. No torch import is needed: give
  `{k: v.numpy() for k, v in lstm.state_dict().items()}`.
  """
  sfx = f"_l{layer}" + ("_reverse" if reverse else "")
  try:
    wi, wh = _np(state_dict["weight_ih" + sfx]), _np(state_dict["weight_hh" + sfx])
  except KeyError as e:
    raise ValueError(f"not a PyTorch nn.LSTM state dict for layer {layer}: missing {e}") from None
  b = np.zeros(wi.shape[0], np.float32)
  for name in ("bias_ih", "bias_hh"):  # bias=False LSTMs have neither
    if name + sfx in state_dict:
      b = b + _np(state_dict[name + sfx])
  p = {
    "input_kernel": jnp.asarray(wi.T),
    "recurrent_kernel": jnp.asarray(wh.T),
    "bias": jnp.asarray(_unfold_forget_bias(b, forget_bias)),
  }
  if "weight_hr" + sfx in state_dict:
    p["projection_kernel"] = jnp.asarray(_np(state_dict["weight_hr" + sfx]).T)
  return p


# ---- cuDNN's flat weight vector (jax.experimental.rnn, Keras-on-JAX, PyTorch's cuDNN) -----
def _pseudo_layers(params: Any, bidirectional: bool) -> list[Mapping[str, Any]]:
  """Cell parameter dicts in cuDNN's order: layer 0 forward (then backward), layer 1, ..."""
  if isinstance(params, Mapping) and "input_kernel" in params:  # one cell
    return [params]
  if isinstance(params, Mapping) and "cell" in params:  # one LSTM layer
    return [params["cell"]]
  if isinstance(params, Mapping):  # a StackedLSTM tree
    if "params" in params and len(params) == 1:
      params = params["params"]
    prefix = "bilstm" if bidirectional else "lstm"
    n = sum(1 for k in params if re.fullmatch(rf"{prefix}_\d+", k))
    if n == 0:
      raise ValueError(f"not StackedLSTM params (bidirectional={bidirectional}): no {prefix}_0")
    if bidirectional:
      return [
        params[f"bilstm_{i}"][side]["cell"]
        for i in range(n)
        for side in ("forward_rnn", "backward_rnn")
      ]
    return [params[f"lstm_{i}"]["cell"] for i in range(n)]
  return list(params)  # already a sequence of cells, in cuDNN's order


def to_cudnn(params: Any, *, bidirectional: bool = False, forget_bias: float = 1.0) -> jax.Array:
  """Packs `LSTMCell` parameters into cuDNN's flat LSTM weight vector.

  `params`: one cell's dict, an `LSTM` layer's tree (`{'cell': ...}`), a `StackedLSTM` tree
  (`{'lstm_0': ..., 'lstm_1': ...}`, or `bilstm_i` pairs with `bidirectional=True`), or a
  sequence of cell dicts in cuDNN's pseudo-layer order (layer 0 forward, layer 0 backward,
  layer 1 forward, ...). Every layer must have the same hidden size (cuDNN's constraint).

  The layout is that of `jax.experimental.rnn` (its module docstring): all weight matrices
  first, `W_ih` (4H, D) then `W_hh` (4H, H) per pseudo-layer, row-major, then all biases,
  `b_ih` then `b_hh` (4H,) per pseudo-layer; gates i, f, g, o in both. Ours are the
  transposes (`input_kernel` (D, 4H)). cuDNN adds two biases and no forget bias, so the
  packed `b_ih` is our `bias` with `forget_bias` added to its f block and `b_hh` is zero:
  the gates see exactly the pre-activations our cell computes. Pass the `forget_bias` of
  the cells the parameters belong to.

  Written in `jax.numpy`, so it is differentiable: `implementation="cudnn"` packs inside the
  traced step and the gradients flow back to our own parameters.
  """
  cells = _pseudo_layers(params, bidirectional)
  width = {int(jnp.shape(c["bias"])[-1]) for c in cells}
  if len(width) != 1:
    raise ValueError(
      f"cuDNN needs one hidden size for every layer, got {sorted(w // 4 for w in width)}"
    )
  mats, biases = [], []
  for c in cells:
    if "projection_kernel" in c or "input_ln_scale" in c:
      raise ValueError("cuDNN's LSTM has no LSTMP projection and no layer norm")
    b = jnp.asarray(c["bias"], jnp.float32)
    n = b.shape[-1] // 4
    if forget_bias:
      b = b.at[n : 2 * n].add(forget_bias)
    mats += [
      jnp.asarray(c[k], jnp.float32).T.reshape(-1) for k in ("input_kernel", "recurrent_kernel")
    ]
    biases += [b, jnp.zeros_like(b)]
  return jnp.concatenate(mats + biases)


def from_cudnn(
  weights: Any,
  *,
  input_size: int,
  hidden_size: int,
  num_layers: int = 1,
  bidirectional: bool = False,
  forget_bias: float = 1.0,
) -> dict:
  """Unpacks cuDNN's flat LSTM weight vector into a `StackedLSTM` parameter tree.

  The inverse of `to_cudnn`: `{'lstm_i': {'cell': ...}}` (or `bilstm_i` pairs), whose
  `['lstm_0']` alone is an `LSTM` layer's tree. The two cuDNN biases are summed and
  `forget_bias` is subtracted from the f block, so `StackedLSTM(..., forget_bias=forget_bias)`
  with these parameters computes what cuDNN computes with `weights`.
  """
  w = np.asarray(weights, np.float32).reshape(-1)
  dirs = 2 if bidirectional else 1
  h4, pos = 4 * hidden_size, 0
  shapes = []
  for i in range(num_layers * dirs):
    d = input_size if i < dirs else dirs * hidden_size
    shapes.append((d, hidden_size))
  expected = sum(h4 * (d + h) + 2 * h4 for d, h in shapes)
  if w.size != expected:
    raise ValueError(
      f"cuDNN weights hold {w.size} values; an LSTM with input_size={input_size}, "
      f"hidden_size={hidden_size}, num_layers={num_layers}, bidirectional={bidirectional} "
      f"has {expected}"
    )

  def take(n: int) -> np.ndarray:
    nonlocal pos
    pos += n
    return w[pos - n : pos]

  kernels = [(take(h4 * d).reshape(h4, d).T, take(h4 * h).reshape(h4, h).T) for d, h in shapes]
  cells = [
    {
      "input_kernel": jnp.asarray(wi),
      "recurrent_kernel": jnp.asarray(wh),
      "bias": jnp.asarray(_unfold_forget_bias(take(h4) + take(h4), forget_bias)),
    }
    for wi, wh in kernels
  ]
  if not bidirectional:
    return {f"lstm_{i}": {"cell": c} for i, c in enumerate(cells)}
  return {
    f"bilstm_{i}": {
      "forward_rnn": {"cell": cells[2 * i]},
      "backward_rnn": {"cell": cells[2 * i + 1]},
    }
    for i in range(num_layers)
  }


# ---- the xlstm package's sLSTM layer (flaxlstm.nn.xlstm.SLSTM) -----------------------------
# Two quirks of its layout: the module it names `fgate` computes the INPUT gate's
# pre-activation and `igate` the forget gate's (its layer concatenates `fgate(x), igate(x),
# zgate(x), ogate(x)` as i, f, z, o), and its cell keeps the recurrent kernel and the bias in
# the layout of the kernel backend it was built for: "vanilla" (its CPU code: kernel
# `(NH, 4 DH, DH)`, bias gate-major) or "cuda" (its CUDA kernel's, which published
# checkpoints and TiRex use: kernel `(NH, DH, 4 DH)`, bias head-major `(NH, 4, DH)`).
_XLSTM_GATES = {"igate": "fgate", "fgate": "igate", "zgate": "zgate", "ogate": "ogate"}
_LAYOUTS = ("cuda", "vanilla")


def _check_layout(layout: str) -> None:
  if layout not in _LAYOUTS:
    raise ValueError(f"layout must be one of {', '.join(_LAYOUTS)}, got {layout!r}")


def from_xlstm_slstm_layer(
  state_dict: Mapping[str, Any], *, num_heads: int, layout: str = "cuda", prefix: str = ""
) -> dict:
  """An `xlstm.sLSTMLayer` state dict (NumPy arrays; `prefix` before its keys) as the
  params of `flaxlstm.nn.xlstm.SLSTM`; `layout` is the backend the dict was saved from
  ("cuda", or "vanilla" for the package's CPU backend). No torch import: pass
  `{k: v.numpy() for k, v in layer.state_dict().items()}`."""
  _check_layout(layout)

  def get(key: str) -> np.ndarray:
    try:
      return _np(state_dict[prefix + key])
    except KeyError:
      raise ValueError(f"not an xlstm sLSTMLayer state dict: missing {prefix + key!r}") from None

  r = get("slstm_cell._recurrent_kernel_")
  b = get("slstm_cell._bias_")
  nh = num_heads
  if layout == "vanilla":  # (NH, 4 DH, DH): head k's outputs e read its inputs d at [k, e, d]
    r = r.transpose(0, 2, 1)
  else:
    b = b.reshape(nh, 4, -1).transpose(1, 0, 2).reshape(-1)  # head-major -> gate-major
  params: dict[str, Any] = {
    "cell": {
      "recurrent_kernel": jnp.asarray(r.reshape(nh, r.shape[1], -1)),
      "bias": jnp.asarray(b),
    },
    "norm": {"scale": jnp.asarray(get("group_norm.weight"))},
  }
  for ours, theirs in _XLSTM_GATES.items():
    params[ours] = {"kernel": jnp.asarray(get(f"{theirs}.weight").transpose(0, 2, 1))}
  if prefix + "conv1d.conv.weight" in state_dict:
    params["conv"] = {
      "kernel": jnp.asarray(get("conv1d.conv.weight").transpose(2, 1, 0)),
      "bias": jnp.asarray(get("conv1d.conv.bias")),
    }
  return params


def to_xlstm_slstm_layer(params: Mapping[str, Any], *, layout: str = "cuda") -> dict:
  """`flaxlstm.nn.xlstm.SLSTM` params (with or without a `{'params': ...}` wrapper) as an
  `xlstm.sLSTMLayer` state dict of NumPy arrays, in `layout` (see `from_xlstm_slstm_layer`):
  the inverse of `from_xlstm_slstm_layer`."""
  _check_layout(layout)
  if "params" in params and len(params) == 1:
    params = params["params"]
  r = _np(params["cell"]["recurrent_kernel"])
  b = _np(params["cell"]["bias"])
  nh = r.shape[0]
  if layout == "vanilla":
    r = r.transpose(0, 2, 1)
  else:
    b = b.reshape(4, nh, -1).transpose(1, 0, 2).reshape(-1)
  out = {
    "slstm_cell._recurrent_kernel_": r,
    "slstm_cell._bias_": b,
    "group_norm.weight": _np(params["norm"]["scale"]),
  }
  for ours, theirs in _XLSTM_GATES.items():
    out[f"{theirs}.weight"] = _np(params[ours]["kernel"]).transpose(0, 2, 1)
  if "conv" in params:
    out["conv1d.conv.weight"] = _np(params["conv"]["kernel"]).transpose(2, 1, 0)
    out["conv1d.conv.bias"] = _np(params["conv"]["bias"])
  return out


def from_xlstm_slstm_block(
  state_dict: Mapping[str, Any], *, num_heads: int, layout: str = "cuda", prefix: str = ""
) -> dict:
  """An `xlstm` package `sLSTMBlock` state dict as `flaxlstm.nn.xlstm.SLSTMBlock` params:
  its layer (`from_xlstm_slstm_layer`), its two pre-norms and its gated feed-forward."""
  params: dict[str, Any] = {
    "slstm": from_xlstm_slstm_layer(
      state_dict, num_heads=num_heads, layout=layout, prefix=prefix + "xlstm."
    ),
    "norm": {"scale": jnp.asarray(_np(state_dict[prefix + "xlstm_norm.weight"]))},
  }
  if prefix + "ffn.proj_up.weight" in state_dict:
    params["ffn_norm"] = {"scale": jnp.asarray(_np(state_dict[prefix + "ffn_norm.weight"]))}
    params["ffn"] = {
      name: {"kernel": jnp.asarray(_np(state_dict[f"{prefix}ffn.{name}.weight"]).T)}
      for name in ("proj_up", "proj_down")
    }
  return params


# ---- the xlstm package's mLSTM layer, block and block stack (flaxlstm.nn.xlstm) ------------
# Its layout against ours (flaxlstm/nn/xlstm.py, `MLSTM`): the dense projections are torch
# Linears (`weight (out, in)`, ours `kernel (in, out)`); the q, k, v `LinearHeadwiseExpand`s
# hold `weight (NH, out, in)` (einsum "...hd,hod->...ho"), ours `kernel (NH, in, out)`; the
# cell's `igate` and `fgate` Linears `(3W -> NH)` are one `gate_kernel (3W, 2 NH)` and
# `gate_bias (2 NH,)`, input gates first; its `outnorm` (a multi-head layer norm scaled by
# `1 + weight`, as our `HeadNorm`) is the layer's `norm`; the causal convolution is the
# sLSTM's (a depthwise torch Conv1d, `weight (W, 1, K)`, ours `kernel (K, 1, W)`). Only the
# last axes move, so arrays stacked on leading axes (`XLSTMStack`'s runs) convert as well.
_MLSTM_DENSE = ("proj_up", "proj_down")
_MLSTM_HEADWISE = ("q_proj", "k_proj", "v_proj")
_MLSTM_GATES = ("mlstm_cell.igate", "mlstm_cell.fgate")


def _swap(a: np.ndarray, axis: int = -2) -> np.ndarray:
  return np.swapaxes(a, axis, -1)


def from_xlstm_mlstm_layer(state_dict: Mapping[str, Any], *, prefix: str = "") -> dict:
  """An `xlstm` package `mLSTMLayer` state dict (NumPy arrays; `prefix` before its keys) as
  the params of `flaxlstm.nn.xlstm.MLSTM`. The layer's `bias` (on the projections) and
  convolution (absent for `conv1d_kernel_size=0`) are read from the keys present. No torch
  import: pass `{k: v.numpy() for k, v in layer.state_dict().items()}`."""

  def get(key: str) -> np.ndarray:
    try:
      return _np(state_dict[prefix + key])
    except KeyError:
      raise ValueError(f"not an xlstm mLSTMLayer state dict: missing {prefix + key!r}") from None

  has = lambda key: prefix + key in state_dict
  params: dict[str, Any] = {}
  for name in _MLSTM_DENSE + _MLSTM_HEADWISE:
    params[name] = {"kernel": jnp.asarray(_swap(get(f"{name}.weight")))}
    if has(f"{name}.bias"):
      params[name]["bias"] = jnp.asarray(get(f"{name}.bias"))
  if has("conv1d.conv.weight"):
    params["conv"] = {
      "kernel": jnp.asarray(_swap(get("conv1d.conv.weight"), -3)),
      "bias": jnp.asarray(get("conv1d.conv.bias")),
    }
  params["cell"] = {
    "gate_kernel": jnp.asarray(
      np.concatenate([_swap(get(f"{g}.weight")) for g in _MLSTM_GATES], axis=-1)
    ),
    "gate_bias": jnp.asarray(np.concatenate([get(f"{g}.bias") for g in _MLSTM_GATES], axis=-1)),
  }
  params["norm"] = {"scale": jnp.asarray(get("mlstm_cell.outnorm.weight"))}
  params["learnable_skip"] = jnp.asarray(get("learnable_skip"))
  return params


def to_xlstm_mlstm_layer(params: Mapping[str, Any]) -> dict:
  """`flaxlstm.nn.xlstm.MLSTM` params (with or without a `{'params': ...}` wrapper) as an
  `xlstm` package `mLSTMLayer` state dict of NumPy arrays: the inverse of
  `from_xlstm_mlstm_layer`."""
  if "params" in params and len(params) == 1:
    params = params["params"]
  out: dict[str, np.ndarray] = {}
  for name in _MLSTM_DENSE + _MLSTM_HEADWISE:
    out[f"{name}.weight"] = _swap(_np(params[name]["kernel"]))
    if "bias" in params[name]:
      out[f"{name}.bias"] = _np(params[name]["bias"])
  if "conv" in params:
    out["conv1d.conv.weight"] = _swap(_np(params["conv"]["kernel"]), -3)
    out["conv1d.conv.bias"] = _np(params["conv"]["bias"])
  kernel, bias = _np(params["cell"]["gate_kernel"]), _np(params["cell"]["gate_bias"])
  for g, (w, b) in zip(
    _MLSTM_GATES, zip(np.split(kernel, 2, axis=-1), np.split(bias, 2, axis=-1), strict=True)
  ):
    out[f"{g}.weight"], out[f"{g}.bias"] = _swap(w), b
  out["mlstm_cell.outnorm.weight"] = _np(params["norm"]["scale"])
  out["learnable_skip"] = _np(params["learnable_skip"])
  return out


def from_xlstm_mlstm_block(state_dict: Mapping[str, Any], *, prefix: str = "") -> dict:
  """An `xlstm` package `mLSTMBlock` state dict as `flaxlstm.nn.xlstm.MLSTMBlock` params:
  its layer (`from_xlstm_mlstm_layer`) and its pre-norm."""
  key = prefix + "xlstm_norm.weight"
  if key not in state_dict:
    raise ValueError(f"not an xlstm mLSTMBlock state dict: missing {key!r}")
  return {
    "mlstm": from_xlstm_mlstm_layer(state_dict, prefix=prefix + "xlstm."),
    "norm": {"scale": jnp.asarray(_np(state_dict[key]))},
  }


def from_xlstm_block_stack(
  state_dict: Mapping[str, Any],
  *,
  num_blocks: int,
  slstm_at: Sequence[int] = (),
  num_heads_slstm: int | None = None,
  layout: str = "cuda",
  prefix: str = "",
) -> dict:
  """An `xlstm` package `xLSTMBlockStack` state dict as `flaxlstm.nn.xlstm.XLSTMStack`
  params (build the stack with the same `num_blocks` and `slstm_at`). Each run of
  consecutive mLSTM blocks is stacked on a leading axis under `mlstm_<first index>/block`
  (`from_xlstm_mlstm_block` per block), each sLSTM block goes under `slstm_<index>`
  (`from_xlstm_slstm_block`, with `num_heads_slstm` and the `layout` its backend saved),
  and `post_blocks_norm` is `post_norm`."""
  params: dict[str, Any] = {}
  for kind, start, length in block_runs(num_blocks, list(slstm_at)):
    if kind == "slstm":
      if num_heads_slstm is None:
        raise ValueError("from_xlstm_block_stack: the sLSTM blocks need num_heads_slstm")
      params[f"slstm_{start}"] = from_xlstm_slstm_block(
        state_dict,
        num_heads=num_heads_slstm,
        layout=layout,
        prefix=f"{prefix}blocks.{start}.",
      )
      continue
    blocks = [
      from_xlstm_mlstm_block(state_dict, prefix=f"{prefix}blocks.{i}.")
      for i in range(start, start + length)
    ]
    params[f"mlstm_{start}"] = {"block": jax.tree.map(lambda *a: jnp.stack(a), *blocks)}
  if prefix + "post_blocks_norm.weight" in state_dict:
    params["post_norm"] = {
      "scale": jnp.asarray(_np(state_dict[prefix + "post_blocks_norm.weight"]))
    }
  return params
