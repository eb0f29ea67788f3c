"""The panel recipe, frozen, on a second panel it was not chosen on: a synthetic hourly panel
of the issue's size (400 series of 800 to 1,000 steps), `--config panel:48,24`.

  python experiments/panel/synthetic.py                # seed 0: generate, train, score
  python experiments/panel/synthetic.py --seed 1 --workdir runs/synthetic_panel

Each series: its own level (10 to 10,000) and scale, a daily and a weekly cycle of random
amplitude and phase, a local trend that drifts (a random walk on the slope), level shifts
at random times, and noise, some multiplicative. The generator's seed is the run's. The
recipe's default holdout: each series' last 48 hours test, the 48 before them validation.
Prints the test MAE and MSE in each series' own scaled units (the recipe's per-series
scaler) beside the naive and seasonal-naive forecasts (period 24), and the training time;
and the recipe's CRPS and the coverage of its 80% and 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import pandas as pd

from flaxlstm import cli, host


def write_panel(path: pathlib.Path, seed: int, n_series: int = 400) -> None:
  rng = np.random.default_rng(seed)
  parts = []
  for k in range(n_series):
    n = int(rng.integers(800, 1001))
    t = np.arange(n)
    level = 10 ** rng.uniform(1, 4)
    slope = np.cumsum(rng.normal(0, 2e-5, n)) + rng.normal(0, 5e-4)
    trend = np.cumsum(slope)
    shifts = np.zeros(n)
    for at in rng.integers(0, n, rng.poisson(1.0)):
      shifts[at:] += rng.normal(0, 0.1)
    daily = rng.uniform(0, 0.3) * np.sin(2 * np.pi * (t + rng.integers(24)) / 24)
    weekly = rng.uniform(0, 0.15) * np.sin(2 * np.pi * (t + rng.integers(168)) / 168)
    noise = rng.normal(0, rng.uniform(0.01, 0.08), n)
    y = level * np.exp(trend + shifts + daily + weekly + noise)
    start = pd.Timestamp("2021-01-01") + pd.Timedelta(hours=int(rng.integers(0, 2000)))
    ds = pd.date_range(start, periods=n, freq="h")
    parts.append(pd.DataFrame({"unique_id": f"s{k:03d}", "ds": ds, "y": y}))
  pd.concat(parts, ignore_index=True).to_csv(path, index=False)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seed", type=int, default=0, help="the panel's and the run's seed")
  p.add_argument("--workdir", type=pathlib.Path, default=None)
  args = p.parse_args(argv)
  workdir = args.workdir or pathlib.Path(f"runs/synthetic_panel_seed{args.seed}")
  workdir.mkdir(parents=True, exist_ok=True)
  data = workdir / "panel.csv"
  if not data.exists():
    write_panel(data, args.seed)
  run = workdir / "run"
  started = time.time()
  if not (run / "metrics.json").exists():
    command = ["train", "--quiet", "--config", "panel:48,24", "--workdir", str(run)]
    command += [f"--config.data.path={data}", f"--config.seed={args.seed}"]
    print("flaxlstm " + " ".join(command[1:]), flush=True)
    if cli.main(command) != 0:
      sys.exit("training failed")
    (workdir / "train_seconds.txt").write_text(f"{time.time() - started:.1f}\n")
  result = json.loads((run / "metrics.json").read_text())
  seconds = float((workdir / "train_seconds.txt").read_text())
  rows = {"panel:48,24": result["test"]}
  rows.update({name: m["test"] for name, m in result["baselines"].items()})
  print(f"synthetic hourly panel (seed {args.seed}), test split, {seconds:.0f} s to train:")
  for name, m in rows.items():
    extra = ""
    if "distribution" in m:  # a distribution head's: its CRPS and interval coverage
      d = m["distribution"]
      extra = f"  CRPS {d['crps']:.4f}  80% {100 * d['coverage_80']:.1f}%"
      extra += f"  95% {100 * d['coverage_95']:.1f}%"
    print(f"  {name:>15}: MAE {m['mae']:.4f}  MSE {m['mse']:.5f}{extra}")
  return 0


if __name__ == "__main__":
  host.reuse_freed_memory()  # as the flaxlstm program does, before JAX starts
  sys.exit(main())
