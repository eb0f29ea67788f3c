"""`flaxlstm train | evaluate | predict | sweep | tune` — a thin shell over the library.

  flaxlstm train [--config experiments/ett.py[:ARG]] [--workdir runs/x] [--resume]
                 [--quiet] [--config.section.key=value ...]
  flaxlstm evaluate --workdir runs/x
  flaxlstm predict --workdir runs/x --data new.csv --out preds.csv [--all-windows]
  flaxlstm sweep experiments/sweeps/NAME.py [--workdir runs/NAME] [--parallel N]
                 [--dry-run | --slurm | --aggregate-only] [--quiet]
  flaxlstm tune experiments/tune/NAME.py [--workdir runs/NAME] [--parallel N]
                [--trials N] [--dry-run] [--quiet]

Bad input (data, config, workdir) prints `error: <one line>` and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from flaxlstm.errors import InputError, Preempted, TrainingError

DEFAULT_EXPERIMENT = "experiments/ett.py"


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="flaxlstm", description="Train LSTM forecasters.")
  sub = p.add_subparsers(dest="command", required=True)
  t = sub.add_parser("train", help="train (or resume) a run",
                     epilog="Any config field can be overridden: --config.train.batch_size=64")
  t.add_argument("--config", default=None,
                 help=f"experiment file[:arg] (default: {DEFAULT_EXPERIMENT} if present, "
                      "else the built-in defaults)")
  t.add_argument("--workdir", default=None, help="run directory (default: runs/<name>-<time>)")
  t.add_argument("--resume", action="store_true",
                 help="require an existing run in --workdir (rerunning resumes anyway)")
  t.add_argument("--quiet", action="store_true", help="no progress bar or summary")
  d = t.add_argument_group("multi-process (see launch/)")
  d.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() with JAX's cluster auto-detection "
                      "(SLURM, TPU VMs); implied under srun with several tasks")
  d.add_argument("--coordinator", help="host:port of process 0 (explicit multi-process)")
  d.add_argument("--num_processes", type=int)
  d.add_argument("--process_id", type=int)
  d.add_argument("--local_devices", type=int, help="CPU devices per process (CPU only)")
  e = sub.add_parser("evaluate", help="recompute and print metrics.json of a run")
  e.add_argument("--workdir", required=True)
  pr = sub.add_parser("predict", help="forecast a new file with a trained run")
  pr.add_argument("--workdir", required=True)
  pr.add_argument("--data", required=True, help="CSV/Parquet with the run's columns")
  pr.add_argument("--out", required=True, help="where to write the forecasts (CSV)")
  pr.add_argument("--all-windows", action="store_true",
                  help="forecast from every position, not only from the end of the file")
  sw = sub.add_parser("sweep", help="run a sweep file's grid of runs and aggregate them",
                      description="See flaxlstm/sweep.py for the sweep file format.")
  sw.add_argument("sweep_file", help="experiments/sweeps/NAME.py (defines get_sweep())")
  sw.add_argument("--workdir", default=None, help="sweep directory (default: runs/NAME)")
  sw.add_argument("--parallel", type=int, default=1, help="runs trained at a time")
  mode = sw.add_mutually_exclusive_group()
  mode.add_argument("--dry-run", action="store_true", help="print the run commands only")
  mode.add_argument("--slurm", action="store_true",
                    help="print and write WORKDIR/sweep.sbatch, a SLURM job array; run nothing")
  mode.add_argument("--aggregate-only", action="store_true",
                    help="only (re)write results.csv, results.md and the plots")
  sw.add_argument("--quiet", action="store_true", help="no per-run progress lines")
  tu = sub.add_parser("tune", help="search hyperparameters (random or TPE) over a tune file",
                      description="See flaxlstm/tune.py for the tune file format.")
  tu.add_argument("tune_file", help="experiments/tune/NAME.py (defines get_tune())")
  tu.add_argument("--workdir", default=None, help="search directory (default: runs/NAME)")
  tu.add_argument("--parallel", type=int, default=1,
                  help="trials trained at a time, in rounds (TPE proposes each round from "
                       "the results of the earlier ones)")
  tu.add_argument("--trials", type=int, default=None,
                  help="trials in all, instead of the file's (a larger number extends a "
                       "finished search)")
  tu.add_argument("--dry-run", action="store_true",
                  help="print the trial commands known so far; run nothing")
  tu.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
  return p


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.a.b=v` (or `--config.a.b v`) overrides from the other arguments."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config."):
      if "=" in a:
        overrides.append(a[len("--config."):])
      elif i + 1 < len(argv):
        overrides.append(a[len("--config."):] + "=" + argv[i + 1])
        i += 1
      else:
        raise InputError(f"{a} needs a value: {a}=VALUE")
    else:
      rest.append(a)
    i += 1
  return rest, overrides


def _summary(metrics: dict) -> str:
  lines = [f"{'':<16}{'val mse':>10}{'val mae':>10}{'test mse':>10}{'test mae':>10}"]
  rows = [("lstm", metrics)] + list(metrics.get("baselines", {}).items())
  for name, m in rows:
    lines.append(f"{name:<16}" + "".join(
        f"{m[s][k]:>10.4f}" for s in ("val", "test") for k in ("mse", "mae")))
  return "\n".join(lines)


def _train(args, overrides: list[str]) -> int:
  from flaxlstm import config as config_lib  # imported late: `--help` stays instant
  from flaxlstm import parallel
  spec = args.config
  if spec is None and os.path.exists(DEFAULT_EXPERIMENT):
    spec = DEFAULT_EXPERIMENT
  config = config_lib.load_config(spec, overrides)
  # Before anything asks JAX for its devices: join the other processes, if any.
  if args.distributed or args.coordinator or args.num_processes:
    distributed = parallel.initialize_distributed(
        args.coordinator, args.num_processes, args.process_id, args.local_devices, force=True)
  else:
    distributed = parallel.initialize_distributed()
  from flaxlstm import train as train_lib
  workdir = args.workdir
  if workdir is None:
    name = os.path.splitext(os.path.basename((spec or "default").split(":")[0]))[0]
    workdir = os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
  try:
    metrics = train_lib.train_and_evaluate(
        config, workdir, resume=True if args.resume else None, quiet=args.quiet)
  finally:
    if distributed:  # leave together, or the last one out waits on the coordinator
      import jax
      jax.distributed.shutdown()
  import jax
  if not args.quiet and jax.process_index() == 0:
    print(_summary(metrics))
    print(f"run written to {workdir}")
  return 0


def _name_and_workdir(spec_file: str, args) -> tuple[str, str]:
  """A sweep/tune's name (its file's stem) and workdir (default runs/<name>); checks
  --parallel."""
  if args.parallel < 1:
    raise InputError(f"--parallel must be >= 1, got {args.parallel}")
  name = os.path.splitext(os.path.basename(spec_file))[0]
  return name, args.workdir or os.path.join("runs", name)


def _sweep(args) -> int:
  from flaxlstm import sweep as sweep_lib  # imported late: `--help` stays instant
  sweep = sweep_lib.load_sweep(args.sweep_file)
  name, workdir = _name_and_workdir(args.sweep_file, args)
  if args.dry_run:
    print("\n".join(sweep_lib.dry_run_lines(sweep, workdir)))
    return 0
  if args.slurm:
    script = sweep_lib.slurm_script(sweep, workdir, name=name,
                                    parallel=args.parallel if args.parallel > 1 else 0)
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    with open(os.path.join(workdir, "sweep.sbatch"), "w") as f:
      f.write(script)
    print(script, end="")
    print(f"# written to {os.path.join(workdir, 'sweep.sbatch')}", file=sys.stderr)
    return 0
  failures = {} if args.aggregate_only else sweep_lib.run_sweep(
      sweep, workdir, parallel=args.parallel, quiet=args.quiet)
  sweep_lib.aggregate(sweep, workdir)
  if not args.quiet:
    print(f"results in {os.path.join(workdir, 'results.md')}")
  if failures:
    print(f"error: {len(failures)} of {len(sweep.runs)} runs failed "
          f"(see {os.path.join(workdir, 'failures.txt')})", file=sys.stderr)
    return 1
  return 0


def _tune(args) -> int:
  from flaxlstm import tune as tune_lib  # imported late: `--help` stays instant
  tune = tune_lib.load_tune(args.tune_file, trials=args.trials)
  _, workdir = _name_and_workdir(args.tune_file, args)
  if args.dry_run:
    print("\n".join(tune_lib.dry_run_lines(tune, workdir)))
    return 0
  outcome = tune_lib.run_tune(tune, workdir, parallel=args.parallel, quiet=args.quiet)
  failures = os.path.join(workdir, "failures.txt")
  if outcome.best is None:
    print(f"error: all {outcome.trials} trials failed (see {failures})", file=sys.stderr)
    return 1
  if outcome.failed:  # A search may stray into failing settings; the best still stands.
    print(f"warning: {outcome.failed} of {outcome.trials} trials failed (see {failures})",
          file=sys.stderr)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    if overrides and args.command != "train":
      raise InputError(f"--config.* overrides only apply to `train`, not `{args.command}`")
    if args.command == "train":
      return _train(args, overrides)
    if args.command == "sweep":
      return _sweep(args)
    if args.command == "tune":
      return _tune(args)
    from flaxlstm import train as train_lib
    if args.command == "evaluate":
      print(json.dumps(train_lib.evaluate(args.workdir), indent=2))
      return 0
    n = train_lib.predict_file(args.workdir, args.data, args.out,
                               all_windows=args.all_windows)
    print(f"wrote {n} forecasts to {args.out}")
    return 0
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except TrainingError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except Preempted as e:
    print(str(e), file=sys.stderr)
    return 128 + e.signum
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
