"""`flaxlstm train | evaluate | predict | sweep | tune` — a thin shell over the library.

  flaxlstm train [--config ett[:ARG] | FILE.py[:ARG]] [--workdir runs/x] [--resume]
                 [--force] [--allow-changed-data] [--quiet] [--config.section.key=value ...]
  flaxlstm evaluate --workdir runs/x [--allow-changed-data] [--refit-scalers] [--json]
  flaxlstm evaluate --workdir runs/a --workdir runs/b ...   (the mean of their forecasts)
  flaxlstm predict --workdir runs/x --data new.csv --out preds.csv [--all-windows]
                   [--overwrite] [--fill F] [--missing-dates M] [--freq OFFSET]
                   (several --workdir: the mean of their forecasts)
  flaxlstm sweep experiments/sweeps/NAME.py [--workdir runs/NAME] [--parallel N]
                 [--dry-run | --slurm | --aggregate-only] [--quiet]
  flaxlstm tune experiments/tune/NAME.py [--workdir runs/NAME] [--parallel N]
                [--trials N] [--dry-run] [--quiet]

Bad input (data, config, workdir) prints `error: <one line>` and exits with code 2; an
environment failure (a full disk, too many non-finite steps) exits with code 1. Warnings
from the library (the `flaxlstm` logger) are printed as `warning: <one line>`; what orbax
and asyncio log from their threads is printed after the command, unless it failed with its
own `error:` line (FLAXLSTM_DEBUG=1: as it comes); flaxlstm/console.py does that.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from typing import Sequence

from flaxlstm import console, host, score_tables
from flaxlstm.errors import RERUN, InputError, Stopped, TrainingError

# The packaged default experiment: what a new user gets, from whatever directory.
DEFAULT_EXPERIMENT = "ett"


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="flaxlstm", description="Train LSTM forecasters.")
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument(
    "--verbose", "-v", action="store_true", help="also print what the library logs at INFO level"
  )
  sub = p.add_subparsers(dest="command", required=True)
  t = sub.add_parser(
    "train",
    help="train (or resume) a run",
    parents=[common],
    epilog="Any config field can be overridden: --config.train.batch_size=64",
  )
  t.add_argument(
    "--config",
    default=None,
    help=f"a packaged recipe NAME[:ARG] ({DEFAULT_EXPERIMENT}, ett_univariate:"
    "168, ...; default: the packaged default experiment, "
    f"{DEFAULT_EXPERIMENT}), an experiment file.py[:ARG], or a run's "
    "config.json",
  )
  t.add_argument("--workdir", default=None, help="run directory (default: runs/<name>-<time>)")
  t.add_argument(
    "--resume",
    action="store_true",
    help="require an existing run in --workdir (rerunning resumes anyway)",
  )
  t.add_argument(
    "--force",
    action="store_true",
    help="train into a non-empty directory that is not a flaxlstm run "
    "(files with a run's names are overwritten)",
  )
  t.add_argument(
    "--allow-changed-data",
    action="store_true",
    help="resume or finish a run although its data file has changed since "
    "it was trained (recorded in metrics.json)",
  )
  t.add_argument(
    "--quiet",
    action="store_true",
    help="no progress bar or summary (warnings and errors still print)",
  )
  d = t.add_argument_group("multi-process (see launch/)")
  d.add_argument(
    "--distributed",
    action="store_true",
    help="call jax.distributed.initialize() with JAX's cluster auto-detection "
    "(SLURM, TPU VMs); implied under srun with several tasks",
  )
  d.add_argument("--coordinator", help="host:port of process 0 (explicit multi-process)")
  d.add_argument("--num_processes", type=int)
  d.add_argument("--process_id", type=int)
  d.add_argument("--local_devices", type=int, help="CPU devices per process (CPU only)")
  e = sub.add_parser(
    "evaluate", help="recompute a run's metrics.json and print its scores", parents=[common]
  )
  e.add_argument(
    "--workdir",
    required=True,
    action="append",
    help="the run; given several times, score the mean of the runs' forecasts (an "
    "ensemble, e.g. of seeds) and print it, writing nothing",
  )
  e.add_argument(
    "--json", action="store_true", help="print all of metrics.json, not the table of scores"
  )
  e.add_argument(
    "--allow-changed-data",
    action="store_true",
    help="score the data file although it is not the one the run was "
    "trained on (recorded in metrics.json)",
  )
  e.add_argument(
    "--refit-scalers",
    action="store_true",
    help="fit the scalers again on the training rows and save scalers.json "
    "(a run without one, or with a legacy scalers.pkl)",
  )
  pr = sub.add_parser("predict", help="forecast a new file with a trained run", parents=[common])
  pr.add_argument(
    "--workdir",
    required=True,
    action="append",
    help="the run; given several times, write the mean of the runs' forecasts (an ensemble)",
  )
  pr.add_argument("--data", required=True, help="CSV/Parquet with the run's columns")
  pr.add_argument("--out", required=True, help="where to write the forecasts (CSV)")
  pr.add_argument(
    "--all-windows",
    action="store_true",
    help="forecast from every position, not only from the end of the file",
  )
  pr.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  pr.add_argument(
    "--fill",
    help="missing values of --data: ffill or interpolate (default: the run's data.fill)",
  )
  pr.add_argument(
    "--missing-dates",
    help="dates --data skips: fill (with --fill) or keep (default: the run's data.missing_dates)",
  )
  pr.add_argument(
    "--freq",
    help="the frequency of --data's dates, a pandas offset (h, D, B, W-SUN, MS, ...): what "
    "--missing-dates fills to and forecasts are dated by (default: the run's data.freq, "
    "else inferred per series)",
  )
  tx = sub.add_parser("tirex", help="TiRex: convert its weights, forecast zero-shot")
  txs = tx.add_subparsers(dest="tirex_command", metavar="{convert,forecast}", required=True)
  conv = txs.add_parser(
    "convert",
    help="the published checkpoint (model.ckpt) -> plain arrays (.npz); needs torch",
    parents=[common],
  )
  conv.add_argument("checkpoint", help="TiRex's Lightning checkpoint (model.ckpt)")
  conv.add_argument("--out", required=True, help="the weights file to write (.npz)")
  conv.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  zs = txs.add_parser(
    "forecast", help="zero-shot forecasts of every series of a table", parents=[common]
  )
  zs.add_argument("--weights", required=True, help="a .npz from `flaxlstm tirex convert`")
  zs.add_argument("--data", required=True, help="CSV/Parquet, a long or a wide table")
  zs.add_argument("--horizon", required=True, type=int, help="steps to forecast")
  zs.add_argument("--out", required=True, help="where to write the forecasts (CSV)")
  zs.add_argument(
    "--id-column", default="unique_id", help="the series id column; '' for a wide table"
  )
  zs.add_argument("--date-column", default="ds", help="the timestamp column; '' for none")
  zs.add_argument("--date-format", default="", help="its strptime format ('' = inferred)")
  zs.add_argument(
    "--freq",
    default="",
    help="the dates' frequency, a pandas offset (h, D, B, MS, ...): what missing dates are "
    "filled to (as gaps TiRex masks) and forecasts are dated by ('' = inferred per series)",
  )
  zs.add_argument(
    "--target", default="y", help="the column(s) to forecast, comma-separated (default y)"
  )
  zs.add_argument("--batch-size", type=int, default=256, help="series per forward pass")
  zs.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  sw = sub.add_parser(
    "sweep",
    help="run a sweep file's grid of runs and aggregate them",
    description="See flaxlstm/search/sweep.py for the sweep file format.",
    parents=[common],
  )
  sw.add_argument("sweep_file", help="experiments/sweeps/NAME.py (defines get_sweep())")
  sw.add_argument("--workdir", default=None, help="sweep directory (default: runs/NAME)")
  sw.add_argument("--parallel", type=int, default=1, help="runs trained at a time")
  sw.add_argument(
    "--population",
    action="store_true",
    help="train runs that differ only in seed and continuous hyperparameters as one "
    "program, in this process (see flaxlstm/train/population.py)",
  )
  mode = sw.add_mutually_exclusive_group()
  mode.add_argument("--dry-run", action="store_true", help="print the run commands only")
  mode.add_argument(
    "--slurm",
    action="store_true",
    help="print and write WORKDIR/sweep.sbatch, a SLURM job array; run nothing",
  )
  mode.add_argument(
    "--aggregate-only",
    action="store_true",
    help="only (re)write results.csv, results.md and the plots",
  )
  sw.add_argument("--quiet", action="store_true", help="no per-run progress lines")
  tu = sub.add_parser(
    "tune",
    help="search hyperparameters (random or TPE) over a tune file",
    description="See flaxlstm/search/tune_file.py for the tune file format.",
    parents=[common],
  )
  tu.add_argument("tune_file", help="experiments/tune/NAME.py (defines get_tune())")
  tu.add_argument("--workdir", default=None, help="search directory (default: runs/NAME)")
  tu.add_argument(
    "--parallel",
    type=int,
    default=1,
    help="trials trained at a time, in rounds (TPE proposes each round from "
    "the results of the earlier ones)",
  )
  tu.add_argument(
    "--population",
    action="store_true",
    help="train each round of --parallel trials in this process as one population",
  )
  tu.add_argument(
    "--storage",
    default=None,
    help="share the search with other workers through Optuna: a journal file on a shared "
    "filesystem, or an RDB URL (sqlite:///..., postgresql://...); see flaxlstm/search/shared.py",
  )
  tu.add_argument(
    "--stale-after",
    type=float,
    default=120.0,
    help="with --storage: seconds without a heartbeat after which another worker's trial is "
    "retried (default 120)",
  )
  tu.add_argument(
    "--trials",
    type=int,
    default=None,
    help="trials in all, instead of the file's (a larger number extends a finished search)",
  )
  tu.add_argument(
    "--dry-run", action="store_true", help="print the trial commands known so far; run nothing"
  )
  tu.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
  return p


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.a.b=v` (or `--config.a.b v`) overrides from the other arguments."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config."):
      if "=" in a:
        overrides.append(a[len("--config.") :])
      elif i + 1 < len(argv):
        overrides.append(a[len("--config.") :] + "=" + argv[i + 1])
        i += 1
      else:
        raise InputError(f"{a} needs a value: {a}=VALUE")
    else:
      rest.append(a)
    i += 1
  return rest, overrides


def _evaluate_ensemble(args, train_lib) -> int:
  """`flaxlstm evaluate --workdir A --workdir B ...`: the mean of the runs' forecasts."""
  if args.allow_changed_data or args.refit_scalers:
    raise InputError(
      "--allow-changed-data and --refit-scalers apply to one run, not to an ensemble"
    )
  scores = train_lib.evaluate_ensemble(args.workdir)
  if args.json:
    print(json.dumps(scores, indent=2))
    return 0
  rows = [(f"member {k}", m) for k, m in enumerate(scores["members"])]
  print(score_tables.scores(rows + [(f"mean of {len(rows)}", scores)]))
  for k, m in enumerate(scores["members"]):
    print(f"member {k}: {m['workdir']}")
  return 0


def _train(args, overrides: list[str]) -> int:
  from flaxlstm import config as config_lib  # imported late: `--help` stays instant
  from flaxlstm import parallel
  from flaxlstm.search import runner

  runner.follow_parent()  # a run of a sweep or tune stops when its runner dies
  spec = DEFAULT_EXPERIMENT if args.config is None else args.config
  config = config_lib.load_config(spec, overrides)
  # Before anything asks JAX for its devices: join the other processes, if any.
  if args.distributed or args.coordinator or args.num_processes:
    distributed = parallel.initialize_distributed(
      args.coordinator, args.num_processes, args.process_id, args.local_devices, force=True
    )
  else:
    distributed = parallel.initialize_distributed()
  from flaxlstm import train as train_lib

  workdir = args.workdir
  if workdir is None:
    name = os.path.splitext(os.path.basename(spec.split(":")[0]))[0]
    workdir = os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
  try:
    metrics = train_lib.train_and_evaluate(
      config,
      workdir,
      resume=True if args.resume else None,
      quiet=args.quiet,
      force=args.force,
      allow_changed_data=args.allow_changed_data,
    )
  except (Stopped, TrainingError) as e:
    if args.workdir is None:  # the same command would start afresh in a new folder
      raise _naming_workdir(e, workdir) from None
    raise
  finally:
    if distributed:  # leave together, or the last one out waits on the coordinator
      import jax

      jax.distributed.shutdown()
  import jax

  if not args.quiet and jax.process_index() == 0:
    print(score_tables.summary(metrics))
    print(f"run written to {workdir}")
  return 0


def _naming_workdir(error: Stopped | TrainingError, workdir: str) -> Exception:
  """`error` with its resume hint naming the timestamped workdir the CLI chose."""
  text = str(error).replace(RERUN, f"{RERUN} with --workdir {shlex.quote(workdir)}")
  if isinstance(error, Stopped):
    return Stopped(error.signum, text)
  return TrainingError(text)


def _name_and_workdir(spec_file: str, args) -> tuple[str, str]:
  """A sweep/tune's name (its file's stem) and workdir (default runs/<name>); checks
  --parallel."""
  if args.parallel < 1:
    raise InputError(f"--parallel must be >= 1, got {args.parallel}")
  if args.command == "sweep" and args.population and args.parallel > 1:
    raise InputError("--population trains one program in this process; drop --parallel")
  name = os.path.splitext(os.path.basename(spec_file))[0]
  return name, args.workdir or os.path.join("runs", name)


def _population_devices(args) -> None:
  """With --population on CPU, one host device per core (`host.population_devices`)."""
  if getattr(args, "population", False):
    host.population_devices()


def _sweep(args) -> int:
  from flaxlstm.search import runner  # imported late: `--help` stays instant
  from flaxlstm.search import sweep as sweep_lib

  _population_devices(args)
  sweep = sweep_lib.load_sweep(args.sweep_file)
  name, workdir = _name_and_workdir(args.sweep_file, args)
  if args.dry_run:
    print("\n".join(runner.dry_run_lines(sweep.config, sweep.runs, workdir)))
    return 0
  if args.slurm:
    script = runner.slurm_script(
      sweep.config,
      sweep.runs,
      workdir,
      name=name,
      parallel=args.parallel if args.parallel > 1 else 0,
    )
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    with open(os.path.join(workdir, "sweep.sbatch"), "w") as f:
      f.write(script)
    print(script, end="")
    print(f"# written to {os.path.join(workdir, 'sweep.sbatch')}", file=sys.stderr)
    return 0
  if args.aggregate_only:
    from flaxlstm.train import lock as lock_lib

    os.makedirs(workdir, exist_ok=True)
    with lock_lib.Lock(workdir, "flaxlstm sweep --aggregate-only"):
      sweep_lib.aggregate(sweep, workdir)
    failures = {}
  else:
    failures = sweep_lib.run_sweep(
      sweep, workdir, parallel=args.parallel, quiet=args.quiet, population=args.population
    )
  if not args.quiet:
    print(f"results in {os.path.join(workdir, 'results.md')}")
  if failures:
    print(
      f"error: {len(failures)} of {len(sweep.runs)} runs failed "
      f"(see {os.path.join(workdir, 'failures.txt')})",
      file=sys.stderr,
    )
    return 1
  return 0


def _tune(args) -> int:
  # imported late: `--help` stays instant
  from flaxlstm.search import tune as tune_lib
  from flaxlstm.search import tune_file

  _population_devices(args)
  tune = tune_file.load_tune(args.tune_file, trials=args.trials)
  _, workdir = _name_and_workdir(args.tune_file, args)
  if args.dry_run:
    print("\n".join(tune_lib.dry_run_lines(tune, workdir)))
    return 0
  if args.stale_after <= 0:
    raise InputError(f"--stale-after must be > 0, got {args.stale_after}")
  outcome = tune_lib.run_tune(
    tune,
    workdir,
    parallel=args.parallel,
    quiet=args.quiet,
    population=args.population,
    storage=args.storage,
    stale_after=args.stale_after,
  )
  failures = os.path.join(workdir, "failures.txt")
  if outcome.best is None:
    print(f"error: all {outcome.trials} trials failed (see {failures})", file=sys.stderr)
    return 1
  if outcome.failed:  # A search may stray into failing settings; the best still stands.
    print(
      f"warning: {outcome.failed} of {outcome.trials} trials failed (see {failures})",
      file=sys.stderr,
    )
  return 0


def _predict(args, train_lib) -> int:
  runs = args.workdir[0] if len(args.workdir) == 1 else args.workdir
  n = train_lib.predict_file(
    runs,
    args.data,
    args.out,
    all_windows=args.all_windows,
    overwrite=args.overwrite,
    fill=args.fill,
    missing_dates=args.missing_dates,
    freq=args.freq,
  )
  from flaxlstm.train import workdir as workdir_lib

  horizon = workdir_lib.read_run_config(args.workdir[0])[0].data.horizon  # one row per step
  print(f"wrote {n} forecast{'s' * (n != 1)} ({n * horizon} rows) to {args.out}")
  return 0


def _tirex(args) -> int:
  from flaxlstm.pretrained import files

  if args.tirex_command == "convert":
    config = files.convert_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    print(
      f"wrote {args.out} (TiRex: {config.num_blocks} blocks of width {config.embedding_dim}, "
      f"patch {config.patch_size}, context {config.train_ctx_len})"
    )
    return 0
  columns = files.TableColumns(
    id_column=args.id_column,
    date_column=args.date_column,
    target=files.parse_target(args.target),
    date_format=args.date_format,
    freq=args.freq,
  )
  n, rows = files.forecast_file(
    args.weights,
    args.data,
    args.out,
    horizon=args.horizon,
    columns=columns,
    batch_size=args.batch_size,
    overwrite=args.overwrite,
  )
  print(f"wrote {n} forecast{'s' * (n != 1)} ({rows} rows) to {args.out}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one command; returns its exit code (0, 1, 2 or 128 + signal)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  console.log_to_stderr()
  with console.held_stderr():
    code = _main(argv)
  if code == 0:
    console.replay_held()
  return code


def entry() -> None:
  """The `flaxlstm` program: `main`, with stderr kept quiet of TensorStore's leftover
  tracebacks until the interpreter has exited (some arrive during shutdown)."""
  console.hold_until_exit()
  host.reuse_freed_memory()  # before JAX starts its threads (host.py says why)
  sys.exit(main())


def _main(argv: list[str]) -> int:
  try:
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    if args.verbose:
      logging.getLogger("flaxlstm").setLevel(logging.INFO)
    if overrides and args.command != "train":
      raise InputError(f"--config.* overrides only apply to `train`, not `{args.command}`")
    if args.command == "train":
      return _train(args, overrides)
    if args.command == "sweep":
      return _sweep(args)
    if args.command == "tune":
      return _tune(args)
    if args.command == "tirex":
      return _tirex(args)
    from flaxlstm import train as train_lib

    if args.command == "evaluate" and len(args.workdir) > 1:
      return _evaluate_ensemble(args, train_lib)
    if args.command == "evaluate":
      args.workdir = args.workdir[0]
      metrics = train_lib.evaluate(
        args.workdir, allow_changed_data=args.allow_changed_data, refit_scalers=args.refit_scalers
      )
      if args.json:
        print(json.dumps(metrics, indent=2))
      else:  # the table `train` ends with; every field is in metrics.json
        print(score_tables.summary(metrics))
        print(f"metrics written to {os.path.join(args.workdir, 'metrics.json')}")
      return 0
    return _predict(args, train_lib)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except TrainingError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except Stopped as e:
    print(str(e), file=sys.stderr)
    return 128 + e.signum
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130
  except OSError as e:
    from flaxlstm.train import workdir as workdir_lib

    if not workdir_lib.is_disk_full(e):
      raise
    where = f" writing {e.filename}" if e.filename else ""
    print(f"error: disk full{where}: {e.strerror}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  entry()
