"""The cuDNN kernel of the LSTM layers: `implementation="cudnn"`.

`LSTM`, `StackedLSTM` (Linen and NNX) with `implementation="cudnn"` run each layer through
`jax.experimental.rnn.lstm`, cuDNN's LSTM on NVIDIA GPUs (the kernel Keras 3 on JAX and
PyTorch's `nn.LSTM` use there). Our parameters stay what they are (`input_kernel`,
`recurrent_kernel`, `bias`: the layout in cells/lstm.py); each call packs them into cuDNN's flat
weight vector with `convert.to_cudnn`, a differentiable `jax.numpy` function, so gradients
flow back to our parameters and checkpoints are the same whichever path trained them.

The same meaning, step for step:
  * gates i, f, g, o, `c' = f c + i g`, `h' = o tanh(c')`: cuDNN's LSTM equations;
  * cuDNN adds two biases and no forget bias; the packed `b_ih` is our `bias` plus
    `forget_bias` on the f block and `b_hh` is zero, so the gate pre-activations are ours;
  * `seq_lengths` become cuDNN's own sequence lengths: steps past a sequence's end output
    zeros and leave its carry alone, as on the fused path (empty sequences included);
  * `reverse=True` layers (the backward half of a `Bidirectional`) flip each sequence within
    its length before the call and back after it, as on the fused path;
  * `initial_carry` and the returned carry are cuDNN's `(h_0, c_0)` and `(h_n, c_n)`.

What cuDNN's JAX binding does not do, and what falls back (with one logged warning line per
reason) to the path `"auto"` picks, the fused custom VJP where it applies:
  * a compute dtype other than float32 (bfloat16: the binding raises for it);
  * recurrent dropout, when active (a mask on the fed-back `h` inside cuDNN's loop);
  * the LSTMP projection (`proj_features`), `layer_norm`, custom gate functions;
  * `remat` (cuDNN keeps its own reserve space for the backward pass);
  * a machine without a CUDA GPU (so a config written for the cluster also runs on a laptop);
  * a population's members under `vmap`: the kernel has no batching rule.
Input dropout is a mask on the inputs, applied before the call: supported. `unroll` has no
meaning there.

It stays opt-in: checked on an H200 (`experiments/benchmarks/gpu_check.sh`), it computes
what the fused path computes, but its train steps were slower than the fused path's
(BENCHMARKS.md, "On a GPU"), so `"auto"` keeps the fused path.

`emulate()` runs the same packing and the same call through
`jax.experimental.rnn.lstm_ref`, the plain-JAX reference of cuDNN's LSTM, on any backend:
the tests check this backend on CPU with it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import jax
import jax.extend
import jax.numpy as jnp
from jax.experimental import rnn

from flaxlstm.nn import convert
from flaxlstm.nn.cells.lstm import LSTMCarry
from flaxlstm.nn.kernels.registry import Call, Kernel, register

Array = jax.Array

_emulating = False


@contextlib.contextmanager
def emulate() -> Iterator[None]:
  """Within this block, `implementation="cudnn"` layers traced here call
  `jax.experimental.rnn.lstm_ref` instead of cuDNN, on any backend: the same packed weights,
  carries and lengths. A trace-time switch: a function jitted before the block keeps what
  it compiled."""
  global _emulating
  before, _emulating = _emulating, True
  try:
    yield
  finally:
    _emulating = before


def _on_cuda() -> bool:
  """A CUDA GPU is the default device and jaxlib has cuDNN's RNN kernels (not ROCm)."""
  if rnn.gpu_rnn is None or jax.devices()[0].platform != "gpu":
    return False
  try:
    version = jax.extend.backend.get_backend().platform_version.lower()
  except Exception:  # an API moved: do not refuse a GPU for it
    version = ""
  return "rocm" not in version


def unsupported(cell: Any, call: Call) -> str | None:
  """Why `cell`'s layer cannot run on cuDNN for `call` (None: it can)."""
  if jnp.dtype(cell.compute_dtype) != jnp.float32:
    return f"compute dtype {jnp.dtype(cell.compute_dtype).name} is not supported"
  if call.recurrent_dropout:
    return "recurrent dropout is not supported"
  if cell.proj_features:
    return "proj_features (LSTMP) is not supported"
  if cell.layer_norm:
    return "layer_norm is not supported"
  if cell.gate_fn is not jax.nn.sigmoid or cell.activation_fn is not jnp.tanh:
    return "custom gate functions are not supported"
  if call.remat:
    return "remat is not supported"
  if call.batched:
    return "a population's vmap over members is not supported"
  if not _emulating and not _on_cuda():
    return "no CUDA GPU here"
  return None


def run_stack(
  cell: Any,
  cells: list[dict],
  carries: list[Any],
  x: Array,
  lengths: Array | None,
  *,
  bidirectional: bool = False,
) -> tuple[list[LSTMCarry], Array]:
  """One cuDNN call over a whole stack: batch-major `x` `(B, T, D)` -> `(carries, ys)`.

  `cells` (each cell's parameters) and `carries` (each one's `(c, h)`) are in cuDNN's
  pseudo-layer order: layer 0 (forward, then backward with `bidirectional`), layer 1, ...;
  every layer has `cell`'s width and options. `ys` `(B, T, H or 2H)` is the top layer's
  output, zero past each sequence's length; the carries come back in the same order.
  """
  b, t, d = x.shape
  dirs = 2 if bidirectional else 1
  w = convert.to_cudnn(cells, forget_bias=cell.forget_bias)
  c0 = jnp.stack([c for c, _ in carries]).astype(jnp.float32)
  h0 = jnp.stack([h for _, h in carries]).astype(jnp.float32)
  if lengths is None:
    lengths = jnp.full((b,), t, jnp.int32)
  # cuDNN takes no empty sequence: run those for one (zeroed) step and keep their initial
  # carry and zero outputs, as the fused path does.
  empty = lengths <= 0
  kernel = _reference if _emulating else rnn.lstm
  ys, h_n, c_n = kernel(
    x.astype(jnp.float32),
    h0,
    c0,
    w,
    jnp.maximum(lengths, 1).astype(jnp.int32),
    d,
    cell.features,
    len(cells) // dirs,  # num_layers
    0.0,  # cuDNN's own dropout: never (its mask would not come from our seed)
    bidirectional,
  )
  keep = empty[:, None]
  c_n, h_n = jnp.where(keep, c0, c_n), jnp.where(keep, h0, h_n)
  ys = jnp.where(keep[..., None], 0, ys)
  out = [
    LSTMCarry(c.astype(cell.state_dtype), h.astype(cell.compute_dtype)) for c, h in zip(c_n, h_n)
  ]
  return out, ys


def _reference(
  x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers, dropout, bidirectional
):
  """`rnn.lstm`'s signature over `rnn.lstm_ref`: unpack the flat weights, run the reference."""
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(
    weights, input_size, hidden_size, num_layers, bidirectional
  )
  return rnn.lstm_ref(
    x,
    h_0,
    c_0,
    w_ih,
    w_hh,
    b_ih,
    b_hh,
    seq_lengths,
    input_size,
    hidden_size,
    num_layers,
    dropout,
    bidirectional,
  )


class Cudnn(Kernel):
  """cuDNN's LSTM for one layer (a whole stack at once: `run_stack`, layers.py)."""

  name = "cudnn"
  opt_in = True  # slower than the fused loop where measured (the module docstring)
  strict = False  # falls back, with a warning, where it cannot run

  def unsupported(self, cell: Any, call: Call) -> str | None:
    return unsupported(cell, call)

  def run(self, cell, p, carry, x, lengths, *, h_mask=None, unroll=1, remat=False):
    del h_mask, unroll, remat  # not supported (`unsupported`) or no meaning here
    (carry,), ys = run_stack(cell, [p], [carry], x, lengths)
    return carry, ys


CUDNN = register(Cudnn())
