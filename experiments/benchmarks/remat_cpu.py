"""Where `jax.checkpoint` saves memory on XLA:CPU: inside a loop, not between unrolled blocks.

The same stack of `--layers` blocks (each `--depth` matmuls with tanh, width `--width`, batch
`--rows`), gradient of a mean square, compiled on the CPU; XLA's own account of the
temporaries (`memory_analysis().temp_size_in_bytes`) with and without `jax.checkpoint` around
each block, for the blocks

- unrolled (a Python loop: one block after another in the program), and
- under `lax.scan` over stacked weights (one block, looped);

and how many `tanh` ops the program has before XLA's passes and after them: with
`jax.checkpoint` JAX emits the forward again for the backward pass (twice the forward's
count, behind optimization barriers), and what XLA keeps of that shows whether the
recomputation survived or was merged back into the forward (common-subexpression
elimination once the barriers are lowered).

Why it matters here: `XLSTMStack` runs consecutive mLSTM blocks under `nn.scan` and each
sLSTM block unrolled, and its `remat` (per-block `nn.remat`) lowered the xLSTM stacks'
memory but not the sLSTM stacks' (BENCHMARKS.md, "The largest model, measured").

Usage:
  python experiments/benchmarks/remat_cpu.py --rows 4096 --width 512 --layers 6 --depth 6
"""

from __future__ import annotations

import argparse
import re

import jax
import jax.numpy as jnp


def measure(
  rows: int, width: int, layers: int, depth: int, scanned: bool, remat: bool
) -> tuple[float, int, int]:
  """Temporaries in MiB, and the `tanh` ops before and after XLA's passes."""

  def block(w, x):
    for _ in range(depth):
      x = jnp.tanh(x @ w)
    return x

  f = jax.checkpoint(block) if remat else block

  def loss(ws, x):
    if scanned:
      x, _ = jax.lax.scan(lambda x, w: (f(w, x), None), x, ws)
    else:
      for i in range(layers):
        x = f(ws[i], x)
    return jnp.mean(x**2)

  ws = jax.ShapeDtypeStruct((layers, width, width), jnp.float32)
  x = jax.ShapeDtypeStruct((rows, width), jnp.float32)
  lowered = jax.jit(jax.grad(loss)).lower(ws, x)
  compiled = lowered.compile()
  before = lowered.as_text().count("stablehlo.tanh")
  after = len(re.findall(r"\} tanh\(", compiled.as_text()))
  return compiled.memory_analysis().temp_size_in_bytes / 2**20, before, after


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--rows", type=int, default=4096)
  ap.add_argument("--width", type=int, default=512)
  ap.add_argument("--layers", type=int, default=6)
  ap.add_argument("--depth", type=int, default=6)
  args = ap.parse_args(argv)
  one = args.rows * args.width * 4 / 2**20
  print(f"one activation: {one:.1f} MiB; {args.layers} blocks of {args.depth} matmuls\n")
  print("| blocks | remat | temp MiB | tanh ops before XLA | after XLA |")
  print("|---|---|---:|---:|---:|")
  for scanned in (False, True):
    for remat in (False, True):
      mib, before, after = measure(args.rows, args.width, args.layers, args.depth, scanned, remat)
      name = "under `lax.scan`" if scanned else "unrolled"
      print(f"| {name} | {'yes' if remat else 'no'} | {mib:.1f} | {before} | {after} |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
