"""The parallel decoder's shortcut, measured: `U h + b` once per sample vs once per segment.

`flaxlstm.nn.blocks.ParallelDecoder` runs one LSTM step per output segment from the
encoder's final carry. All `m` steps share that carry, so the recurrent matmul `U h` is
computed once per sample and the input side once per (series, position) pair; the
reference code (SegRNN's) repeats the carry `m` times and runs `B * m` full LSTM steps.
Both compute the same numbers (tests/nn/test_blocks.py); this times forward + backward of
each at the LTSF recipe's shapes (B = 256 windows x 7 columns, d = 256, S = 24).

  python experiments/benchmarks/parallel_decoder.py [--steps 10]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from flaxlstm.nn.blocks import ParallelDecoder
from flaxlstm.nn.cells.lstm import LSTMCell


def naive(params, carry, series, m, s):
  """The reference: every (sample, segment) is a full LSTM step on a repeated carry."""
  p = params["params"]
  cell = LSTMCell(carry[0].shape[-1])
  b = carry[0].shape[0]
  pos = jnp.broadcast_to(p["position_embedding"][None], (b, m, p["position_embedding"].shape[-1]))
  ser = jnp.broadcast_to(
    p["series_embedding"][series][:, None], (b, m, p["series_embedding"].shape[-1])
  )
  inputs = jnp.concatenate([pos, ser], -1).reshape(b * m, -1)
  rep = jax.tree.map(lambda a: jnp.repeat(a, m, axis=0), carry)
  _, h = cell.apply({"params": p["cell"]}, rep, inputs)
  y = h @ p["output"]["kernel"] + p["output"]["bias"]
  return y.reshape(b, m * s, 1)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=10)
  args = ap.parse_args()
  b, d, s, n_series = 256 * 7, 256, 24, 7
  print("| horizon | segments m | shared-h decoder (ms) | per-segment steps (ms) | speedup |")
  print("|---|---|---|---|---|")
  for horizon in (96, 336, 720):
    m = horizon // s
    dec = ParallelDecoder(
      LSTMCell(d), n_segments=m, segment_length=s, out_features=1, n_series=n_series,
      series_features=128,
    )  # fmt: skip
    key = jax.random.key(0)
    carry = (jax.random.normal(key, (b, d)), jnp.tanh(jax.random.normal(key, (b, d))))
    series = jnp.arange(b) % n_series
    params = dec.init(key, carry, series)
    ours = lambda p, c, dec=dec, series=series: dec.apply(p, c, series)
    ref = lambda p, c, series=series, m=m: naive(p, c, series, m, s)
    times = {}
    for name, f in (("ours", ours), ("naive", ref)):
      step = jax.jit(jax.grad(lambda p, c, f=f: jnp.sum(f(p, c) ** 2)))
      jax.block_until_ready(step(params, carry))
      ts = []
      for _ in range(args.steps):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, carry))
        ts.append(time.perf_counter() - t0)
      times[name] = statistics.median(ts) * 1e3
    print(
      f"| {horizon} | {m} | {times['ours']:.1f} | {times['naive']:.1f} | "
      f"{times['naive'] / times['ours']:.2f}x |"
    )


if __name__ == "__main__":
  main()
