"""Interleaved A/B of the fused LSTM kernels: the working tree against a git revision.

Builds flaxlstm's benchmark train step (`train_step.make_flaxlstm`) twice in one process:
once with the fused LSTM kernel (`flaxlstm/nn/kernels/lstm_fused.py`) as it is now, and once
with the fused forward/backward functions of that file at `--rev` (loaded from `git show`;
`flaxlstm/nn/recurrence.py` before architecture v3, `flaxlstm/kernels.py` before v2). It
then times them step by step, interleaved, optionally with PyTorch beside them. On a shared
machine, this is the comparison to trust for a kernel change: load hits both variants
alike. Reported per variant: best and median step time, page faults per step and XLA's
temporary memory.

Usage:
  python experiments/benchmarks/ab_kernels.py --rev 6c7636a --shape seed --steps 20 --torch
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step as bench  # noqa: E402  (the shapes and peers of the main benchmark)

from flaxlstm.nn.kernels import lstm_fused as kernels  # noqa: E402

# Where the fused recurrence lives, newest layout first.
_KERNEL_PATHS = (
  "flaxlstm/nn/kernels/lstm_fused.py",
  "flaxlstm/nn/recurrence.py",
  "flaxlstm/kernels.py",
)


def kernels_at(rev: str):
  """The fused recurrence at git revision `rev`, imported as a standalone module."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for path in _KERNEL_PATHS:
    shown = subprocess.run(
      ["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True
    )
    if shown.returncode == 0:
      break
  else:
    raise SystemExit(f"no fused recurrence at {rev} ({', '.join(_KERNEL_PATHS)})")
  source = shown.stdout
  with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location(f"kernels_{rev}", f.name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  os.unlink(f.name)
  return module


def build(shape: bench.Shape, x, y, old) -> dict:
  """Train steps keyed by variant; `old`'s functions are swapped in only while tracing."""
  peers = {"working tree": bench.make_flaxlstm(shape, x, y)}
  current = kernels._fused_forward, kernels._fused_backward
  kernels._fused_forward, kernels._fused_backward = old._fused_forward, old._fused_backward
  try:
    peers["rev"] = bench.make_flaxlstm(shape, x, y)  # compiled here, so the swap sticks
  finally:
    kernels._fused_forward, kernels._fused_backward = current
  return peers


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--rev", required=True, help="git revision to compare against")
  ap.add_argument("--shape", default="seed", choices=sorted(bench.SHAPES))
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--torch", action="store_true", help="time PyTorch nn.LSTM beside them")
  args = ap.parse_args(argv)
  shape = bench.SHAPES[args.shape]
  rng = np.random.default_rng(0)
  x = rng.standard_normal((shape.batch, shape.time, shape.features), np.float32)
  y = rng.standard_normal((shape.batch, 1), np.float32)
  peers = build(shape, x, y, kernels_at(args.rev))
  peers[args.rev] = peers.pop("rev")
  if args.torch:
    peers["torch"] = bench.TorchPeer(shape, x, y)
  times, faults = bench.time_interleaved(peers, max(shape.warmup, 1), args.steps)
  print(f"{args.shape}: {args.steps} interleaved steps\n")
  print("| variant | best s | median s | page faults / step | memory |")
  print("|---|---|---|---|---|")
  for name, peer in peers.items():
    print(
      f"| {name} | {min(times[name]):.4f} | {statistics.median(times[name]):.4f} | "
      f"{statistics.median(faults[name]):.0f} | {bench._fmt_mem(peer.memory)} |"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
