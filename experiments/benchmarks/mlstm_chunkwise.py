"""The mLSTM's chunkwise form: flaxlstm's vs `mlstm_kernels`' native JAX one, and memory in T.

One timed call is the forward and backward of the mLSTM over a whole sequence (the sum of
the outputs' squares as the loss), jitted, on the same inputs in both:

- `flaxlstm`: `flaxlstm.nn.kernels.mlstm.mlstm_sequence` (two passes: a `lax.scan` over
  chunks for the boundary states, then every chunk's outputs at once);
- `mlstm_kernels`: NX-AI's `mlstm_chunkwise__native_autograd` (pure JAX; a Python loop over
  chunks, unrolled into the graph).

Both start from `m = 0` (`mlstm_kernels`' convention), so their outputs agree (the largest
gap is printed). Memory is XLA's own account of the compiled forward+backward
(`memory_analysis()`: temporaries plus outputs), so it needs no allocator probe. Calls are
interleaved (A, B, A, B, ...); median and best of `--calls`.

Also timed: the recurrent step (`MLSTMCell`'s step, for streaming inference) after 1 and
after `--steps` steps, to show its cost does not grow with the steps before it.

Usage:
  python experiments/benchmarks/mlstm_chunkwise.py --lengths 1024,4096,16384 --calls 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from flaxlstm.nn.cells.mlstm import MLSTMCarry, MLSTMStepInputs, step
from flaxlstm.nn.kernels.mlstm import mlstm_sequence


def inputs(b: int, nh: int, t: int, dh: int, seed: int = 0):
  """`q, k, v (B, NH, T, DH)`, `i, f (B, NH, T)`: `mlstm_kernels`' layout."""
  ks = jax.random.split(jax.random.key(seed), 5)
  q, k, v = (jax.random.normal(key, (b, nh, t, dh)) for key in ks[:3])
  i = jax.random.normal(ks[3], (b, nh, t))
  f = 3.0 + jax.random.normal(ks[4], (b, nh, t))
  return q, k, v, i, f


def ours(chunk: int):
  def run(q, k, v, i, f):
    b, nh, t, dh = q.shape
    heads_last = lambda a: jnp.moveaxis(a, 1, 2)  # (B, T, NH, ...)
    x = MLSTMStepInputs(
      heads_last(q), heads_last(k) * dh**-0.5, heads_last(v), heads_last(i), heads_last(f)
    )
    zero = MLSTMCarry(jnp.zeros((b, nh, dh, dh)), jnp.zeros((b, nh, dh)), jnp.zeros((b, nh)))
    _, h = mlstm_sequence(x, zero, chunk_size=chunk)
    return jnp.moveaxis(h, 2, 1)

  return run


def theirs(chunk: int):
  # The native forward's own file: importing `mlstm_kernels.jax.chunkwise` pulls in its
  # Triton kernels (`jax_triton`), which a CPU machine does not have.
  import importlib.util
  import pathlib

  import mlstm_kernels

  path = pathlib.Path(mlstm_kernels.__file__).parent / "jax/chunkwise/native/fw.py"
  spec = importlib.util.spec_from_file_location("mlstm_kernels_native_fw", path)
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)

  def run(q, k, v, i, f):
    return module.mlstm_chunkwise_fw(q, k, v, i, f, chunk_size=chunk)[0]

  return run


def fwd_bwd(fn):
  loss = lambda *a: jnp.sum(jnp.square(fn(*a)))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))


def measure(t: int, args, calls: int) -> dict:
  x = inputs(args.batch, args.heads, t, args.head_dim)
  peers = {"flaxlstm": ours(args.chunk)}
  # `mlstm_kernels` unrolls its loop over chunks into the graph: its compile time grows
  # with T (minutes at T = 4096), so longer sequences time ours alone.
  if t <= args.peer_max_length:
    peers["mlstm_kernels"] = theirs(args.chunk)
  row: dict = {"T": t}
  steps = {}
  for name, fn in peers.items():
    start = time.perf_counter()
    compiled = fwd_bwd(fn).lower(*x).compile()
    row[f"{name}_compile_s"] = round(time.perf_counter() - start, 2)
    mem = compiled.memory_analysis()
    row[f"{name}_mib"] = round((mem.temp_size_in_bytes + mem.output_size_in_bytes) / 2**20, 1)
    jax.block_until_ready(compiled(*x))
    steps[name] = compiled
  times: dict[str, list[float]] = {name: [] for name in peers}
  for _ in range(calls):
    for name, compiled in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(compiled(*x))
      times[name].append(time.perf_counter() - start)
  for name, ts in times.items():
    row[f"{name}_median_s"] = round(statistics.median(ts), 4)
    row[f"{name}_best_s"] = round(min(ts), 4)
  if len(peers) == 2:
    a, b = (np.asarray(jax.jit(fn)(*x)) for fn in peers.values())
    row["max_gap"] = float(np.abs(a - b).max() / np.abs(b).max())
  return row


def recurrent_step(args) -> dict:
  """The step's time after 1 and after `args.steps` steps (same compiled step)."""
  b, nh, dh = args.batch, args.heads, args.head_dim
  one = lambda key, shape: jax.random.normal(key, shape)
  ks = jax.random.split(jax.random.key(1), 5)
  x = MLSTMStepInputs(
    one(ks[0], (b, nh, dh)),
    one(ks[1], (b, nh, dh)) * dh**-0.5,
    one(ks[2], (b, nh, dh)),
    one(ks[3], (b, nh)),
    3.0 + one(ks[4], (b, nh)),
  )
  fn = jax.jit(lambda c, x: step(c, x, 1e-6))
  carry = MLSTMCarry(jnp.zeros((b, nh, dh, dh)), jnp.zeros((b, nh, dh)), jnp.full((b, nh), -1e30))

  def timed(carry, n):
    ts = []
    for _ in range(n):
      start = time.perf_counter()
      carry, h = fn(carry, x)
      jax.block_until_ready(h)
      ts.append(time.perf_counter() - start)
    return carry, ts

  carry, first = timed(carry, 5)  # the first call compiles
  carry, mid = timed(carry, args.steps)
  return {
    "step_after_4_ms": round(statistics.median(first[1:]) * 1e3, 4),
    f"step_median_over_{args.steps}_ms": round(statistics.median(mid) * 1e3, 4),
    f"step_last_10_of_{args.steps}_ms": round(statistics.median(mid[-10:]) * 1e3, 4),
  }


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--lengths", default="1024,4096,16384")
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--head-dim", type=int, default=64)
  ap.add_argument("--chunk", type=int, default=64)
  ap.add_argument("--calls", type=int, default=5)
  ap.add_argument("--peer-max-length", type=int, default=4096)
  ap.add_argument("--steps", type=int, default=2000)
  args = ap.parse_args()
  print(json.dumps({"device": str(jax.devices()[0]), **vars(args)}))
  for t in (int(s) for s in args.lengths.split(",")):
    print(json.dumps(measure(t, args, args.calls)), flush=True)
  print(json.dumps(recurrent_step(args)))


if __name__ == "__main__":
  main()
