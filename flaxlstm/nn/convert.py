"""Weight converters: Flax and PyTorch LSTM parameters into `LSTMCell`'s layout.

The layout is documented once, in cell.py: `input_kernel` (D, 4H), `recurrent_kernel`
(R, 4H), one `bias` (4H,), optional `projection_kernel` (H, P); gates in the order i, f, g,
o, the order of PyTorch, cuDNN and Flax, so converting is a transpose and a concatenation,
never a permutation. `LSTMCell` adds `forget_bias` itself, so converters subtract it.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from flaxlstm.nn.cell import GATES


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
