"""Wall time of whole sweeps three ways: sequential processes, `--parallel 2`, and
`--population` (issue: populations).

Each mode runs `flaxlstm sweep FILE --workdir <fresh dir> [--parallel 2 | --population]`
as a subprocess on a quiet machine, one mode after another, and is timed end to end
(process start-up, data, compiles, training, evaluation, plots, results). The results
tables are then compared: per setting, the mean test MSE over seeds of each mode against
sequential, in units of the seed spread (the std over seeds).

Where a sweep's sequential processes take too long to time (a GPU lease), `--estimate`
gives their wall time from a few measured ones: each run costs what its process spends
outside its training loop (the mode's wall time less the runs' `train_wall_time_s`, per
run) plus a loop of `a + b * steps` (least squares over the measured runs), summed over the
steps each run of the sweep took (its `results.csv`, from a population, say).

Usage:
  python experiments/benchmarks/population_sweep.py \
      --sweeps experiments/sweeps/dropout.py,experiments/sweeps/seeds.py --out BENCHMARKS.md
  python experiments/benchmarks/population_sweep.py --estimate runs/dropout/results.csv \
      --measured seeds.json,sample.json    # --json files holding sequential modes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

MODES = {"sequential": [], "parallel 2": ["--parallel", "2"], "population": ["--population"]}
START, END = "<!-- population-sweep:start -->", "<!-- population-sweep:end -->"


def run(sweep: str, mode: str, root: pathlib.Path) -> dict:
  workdir = root / f"{pathlib.Path(sweep).stem}-{mode.replace(' ', '')}"
  cmd = [sys.executable, "-m", "flaxlstm.cli", "sweep", sweep, "--workdir", str(workdir)]
  t0 = time.perf_counter()
  out = subprocess.run(cmd + MODES[mode] + ["--quiet"], capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if out.returncode:
    raise SystemExit(f"{mode} failed: {out.stderr[-1000:]}")
  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  return {"wall_s": wall, "rows": rows}


def pooled_std(t: dict) -> float:
  """The seed std of test MSE pooled over the settings (3 seeds per setting are too few
  for a setting's own std to be a yardstick)."""
  return (sum(v[1] ** 2 for v in t.values()) / len(t)) ** 0.5


def table(rows: list[dict]) -> dict:
  """{setting: (mean test MSE, std over seeds, mean val MSE)}."""
  import statistics

  by: dict[str, list[dict]] = {}
  for r in rows:
    key = ",".join(p for p in r["name"].split(",") if not p.startswith("seed="))
    by.setdefault(key, []).append(r)
  out = {}
  for key, rs in by.items():
    test = [float(r["test_mse"]) for r in rs]
    val = [float(r["val_mse"]) for r in rs]
    std = statistics.stdev(test) if len(test) > 1 else 0.0
    out[key] = (statistics.mean(test), std, statistics.mean(val))
  return out


def estimate_sequential(measured: list[dict], steps: list[int]) -> dict:
  """Sequential wall time of runs of `steps` optimizer steps, from `measured` sequential
  modes (this script's --json entries): see the module docstring."""
  import numpy as np

  loops = [(int(r["steps"]), float(r["train_wall_time_s"])) for m in measured for r in m["rows"]]
  outside = sum(m["wall_s"] for m in measured) - sum(w for _, w in loops)
  per_run = outside / len(loops)
  x = np.array([s for s, _ in loops], float)
  (a, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(x), x], 1), [w for _, w in loops], rcond=None)
  residual = max(abs(w - a - b * s) for s, w in loops)
  total = len(steps) * (per_run + a) + b * sum(steps)
  return dict(
    runs_measured=len(loops),
    outside_loop_s=per_run,
    loop_s=a,
    loop_ms_per_step=1e3 * b,
    largest_residual_s=residual,
    runs=len(steps),
    steps=sum(steps),
    estimate_s=total,
  )


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--sweeps", default="experiments/sweeps/dropout.py,experiments/sweeps/seeds.py")
  ap.add_argument("--modes", default=",".join(MODES))
  ap.add_argument("--out", default=None, help="BENCHMARKS.md: replace the block between markers")
  ap.add_argument("--json", default=None, help="write every mode's wall time and rows here")
  ap.add_argument(
    "--previous",
    default=None,
    help="a --json file of an earlier run: the modes not in --modes are taken from it "
    "(re-time one mode after a change that cannot affect the others)",
  )
  ap.add_argument(
    "--estimate",
    default=None,
    help="a sweep's results.csv: estimate its "
    "sequential wall time from --measured instead of timing anything",
  )
  ap.add_argument("--measured", default="", help="comma list of --json files (sequential modes)")
  ap.add_argument(
    "--keep-runs", action="store_true", help="keep the sweeps' workdirs (printed) to inspect"
  )
  args = ap.parse_args()
  if args.estimate:
    measured = [
      r
      for f in args.measured.split(",")
      for key, r in json.loads(pathlib.Path(f).read_text()).items()
      if key.endswith("|sequential")
    ]
    with open(args.estimate) as f:
      steps = [int(r["steps"]) for r in csv.DictReader(f)]
    print(json.dumps(estimate_sequential(measured, steps), indent=1))
    return
  root = pathlib.Path(tempfile.mkdtemp(prefix="population-sweep-"))
  try:
    results = time_modes(args, root)
  finally:
    if args.keep_runs:
      print(f"runs kept in {root}")
    else:
      shutil.rmtree(root, ignore_errors=True)
  write_block(args, results)


def time_modes(args, root: pathlib.Path) -> dict:
  results = {}
  if args.previous:
    for key, r in json.loads(pathlib.Path(args.previous).read_text()).items():
      sweep, mode = key.split("|")
      results[(sweep, mode)] = r
  for sweep in args.sweeps.split(","):
    for mode in filter(None, args.modes.split(",")):
      r = run(sweep, mode, root)
      results[(sweep, mode)] = r
      print(f"{sweep} {mode}: {r['wall_s']:.0f} s, {len(r['rows'])} runs", flush=True)
  return results


def write_block(args, results: dict) -> None:
  modes = [m for m in MODES if any((s, m) in results for s in args.sweeps.split(","))]
  lines = [
    START,
    f"`python experiments/benchmarks/population_sweep.py` ({os.cpu_count()} CPU cores; each "
    "mode a fresh `flaxlstm sweep` process, timed end to end).",
    "",
    "| sweep | runs | mode | wall time | vs sequential | largest shift of a setting's mean "
    "test MSE from sequential, in pooled seed stds | runs stopped at sequential's step | "
    "best setting by val MSE |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for sweep in args.sweeps.split(","):
    seq = results.get((sweep, "sequential"))
    ref = table(seq["rows"]) if seq else None
    for mode in modes:
      r = results[(sweep, mode)]
      ratio = f"{r['wall_s'] / seq['wall_s']:.2f}x" if seq else "-"
      shift, same = "-", "-"
      mine = table(r["rows"])
      if ref and mode != "sequential":
        scale = max(pooled_std(ref), 1e-12)
        shift = f"{max(abs(mine[k][0] - ref[k][0]) for k in ref) / scale:.2f}"
        steps = {x["name"]: x["steps"] for x in seq["rows"]}
        same = f"{sum(x['steps'] == steps[x['name']] for x in r['rows'])} of {len(r['rows'])}"
      best = min(mine, key=lambda k: mine[k][2]) if len(mine) > 1 else "-"
      name = pathlib.Path(sweep).stem
      lines.append(
        f"| {name} | {len(r['rows'])} | {mode} | {r['wall_s']:.0f} s | {ratio} | {shift} "
        f"| {same} | {best} |"
      )
  lines.append(END)
  block = "\n".join(lines)
  print(block)
  if args.json:
    dump = {f"{s}|{m}": r for (s, m), r in results.items()}
    pathlib.Path(args.json).write_text(json.dumps(dump, indent=1))
  if args.out:
    text = pathlib.Path(args.out).read_text()
    if START in text:
      head, rest = text.split(START, 1)
      text = head + block + rest.split(END, 1)[1]
    else:
      text = text.rstrip("\n") + "\n\n" + block + "\n"
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
