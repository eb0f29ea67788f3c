"""The LTSF recipe, frozen, on a file whose columns are random walks: can it lose to naive?

  python experiments/ltsf/random_walk.py                    # horizons 96..720, seeds 0, 1, 2
  python experiments/ltsf/random_walk.py --horizons 96 --seeds 0

Exchange rates and other series close to a random walk are where a recipe chosen on hourly
ETT slips: the naive forecast (the last value) is nearly the best there is, and a model
that learned ETT's daily cycles and trends forecasts structure that is not there. This
writes an LTSF-format file (`WORKDIR/random_walk.csv`: a `date` column, 8 columns, 7,588
daily rows, the shape of the LTSF exchange-rate file) whose columns are Gaussian random
walks from a fixed seed, so naive is the best forecast by construction, and runs
`experiments/ltsf/ett.py:H` on it as it ships (only `data.path` set; TSLib's 70/10/20
split, as on any non-ETT file). `--unscored-too` also runs each horizon with
`train.eval_at_start=False`: the recipe as it stood before it scored its untrained model
(which, forecasting the change from the last value with a head that starts at zero, is the
naive forecast).

Each run lives in `WORKDIR/<H>[_unscored]/seed<k>` (finished runs are read, not
retrained); the table goes to stdout as markdown.
"""

import argparse
import os
import pathlib
import statistics
import sys

import numpy as np
import pandas as pd

from flaxlstm import host

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "ett"))
from probabilistic_table import run  # noqa: E402  (train a run, or read it if finished)

RECIPE = str(HERE / "ett.py") + ":{h}"
ROWS, COLUMNS = 7_588, 8  # the LTSF exchange-rate file's shape


def write_random_walk(workdir: str, seed: int = 0) -> str:
  """Random walks with daily steps of 0.5% from a start of 1, under `workdir`."""
  rng = np.random.default_rng(seed)
  steps = rng.normal(scale=0.005, size=(ROWS, COLUMNS))
  frame = pd.DataFrame(1.0 + steps.cumsum(axis=0), columns=[f"s{k}" for k in range(COLUMNS)])
  frame.insert(0, "date", pd.date_range("1990-01-01", periods=ROWS, freq="D"))
  path = os.path.join(workdir, "random_walk.csv")
  os.makedirs(workdir, exist_ok=True)
  frame.to_csv(path, index=False)
  return path


def _ms(values: list[float]) -> str:
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="runs/ltsf_random_walk")
  ap.add_argument("--horizons", default="96,192,336,720")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--unscored-too", action="store_true")
  args = ap.parse_args()
  data = write_random_walk(args.workdir)
  variants = [("", [])]
  if args.unscored_too:
    variants.append(("_unscored", ["train.eval_at_start=False"]))
  rows = []
  for h in map(int, args.horizons.split(",")):
    for suffix, extra in variants:
      runs = []
      for seed in map(int, args.seeds.split(",")):
        path = os.path.join(args.workdir, f"{h}{suffix}", f"seed{seed}")
        runs.append(run(RECIPE.format(h=h), [f"seed={seed}", f"data.path={data}", *extra], path))
        print(f"h={h}{suffix} seed={seed} test MSE {runs[-1]['test']['mse']:.4f}", flush=True)
      base = runs[0]["baselines"]
      kept = sum(m["best_step"] == 0 for m in runs) if not suffix else "-"
      rows.append(
        f"| {h} | {'no' if suffix else 'yes'} | {_ms([m['test']['mse'] for m in runs])} | "
        f"{_ms([m['val']['mse'] for m in runs])} | {base['naive']['test']['mse']:.4f} | "
        f"{base['naive']['val']['mse']:.4f} | {base['linear']['test']['mse']:.4f} | "
        f"{base['dlinear']['test']['mse']:.4f} | {kept} |"
      )
  print(
    "\n| horizon | start scored | recipe test MSE | recipe val MSE | naive test | naive val | "
    "ridge test | DLinear test | naive start kept (seeds) |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  host.reuse_freed_memory()  # as the flaxlstm program does, before JAX starts
  main()
