"""Per-step recurrent matmul in a `lax.scan`: batch-major vs feature-major layout.

The LSTM's time loop multiplies a small state block by the same weight matrix at every
step. Batch-major (`h (B, K) @ W (K, N)`, what flaxlstm does) makes the weight the GEMM's
right operand; feature-major (`W^T (N, K) @ h^T (K, B)`) makes it the left one. XLA:CPU's
GEMM packs its operands differently in the two cases, so their speed differs by shape. This
times both, interleaved, best of `--reps`, at the seed and large benchmark shapes' per-step
dots (forward `[x, h] @ [W; U]` or `h @ U`, backward `dz @ U^T`):

  python experiments/benchmarks/step_dot_layout.py
"""

import argparse
import time

import jax
import jax.numpy as jnp

# (rows B, contraction K, columns N, scan steps T) of the benchmark shapes' per-step dots.
SHAPES = {
  "seed layer 1 fwd": (32, 520, 2048, 64),
  "seed layer 1 bwd": (32, 2048, 512, 64),
  "seed layer 2 fwd": (32, 256, 1024, 64),
  "seed layer 2 bwd": (32, 1024, 256, 64),
  "large layer 1 fwd": (64, 1056, 4096, 32),
  "large bwd": (64, 4096, 1024, 32),
}


def _timed(f, *args) -> float:
  t = time.perf_counter()
  jax.block_until_ready(f(*args))
  return time.perf_counter() - t


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--reps", type=int, default=15)
  args = ap.parse_args()
  batch_major = jax.jit(lambda a, w: jax.lax.scan(lambda c, x: (c, x @ w), 0.0, a)[1])
  feature_major = jax.jit(lambda a, w: jax.lax.scan(lambda c, x: (c, w @ x), 0.0, a)[1])
  print("| dot | B x K x N, T steps | batch-major GFLOP/s | feature-major GFLOP/s |")
  print("|---|---|---|---|")
  key = jax.random.key(0)
  for name, (b, k, n, t) in SHAPES.items():
    a = jax.random.normal(key, (t, b, k))
    w = jax.random.normal(key, (k, n))
    a_t, w_t = jnp.swapaxes(a, 1, 2) + 0, w.T + 0  # materialized, not views
    batch_major(a, w).block_until_ready()
    feature_major(a_t, w_t).block_until_ready()
    bm, fm = [], []
    for _ in range(args.reps):  # interleaved: machine drift hits both alike
      bm.append(_timed(batch_major, a, w))
      fm.append(_timed(feature_major, a_t, w_t))
    flops = 2 * b * k * n * t / 1e9
    print(
      f"| {name} | {b} x {k} x {n}, {t} | {flops / min(bm):.0f} | {flops / min(fm):.0f} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
