"""Sweeps: expand a grid of config overrides into runs, run them, aggregate the results.

A sweep file (``experiments/sweeps/NAME.py``) defines ``get_sweep()`` returning a dict::

  def get_sweep():
    return {
        "config": "experiments/ett.py",          # base experiment, may be "file.py:arg"
        "overrides": ["train.max_epochs=20"],    # fixed overrides for every run (optional)
        "grid": {"model.dropout": [0.0, 0.2]},  # every combination of these (optional)
        "zip": {"train.optimizer": ["sgd", "adamw"],   # varied together, equal lengths
                "train.learning_rate": [0.05, 1e-3]},  # (optional)
        "seeds": [0, 1, 2],                      # each setting once per seed (default [0])
    }

Runs are the product grid x zip x seeds. Each run is named by its swept values, e.g.
``model.dropout=0.2,seed=1`` (tuples join with "-", other odd characters become "_"), and
trains in ``WORKDIR/<name>`` as its own process::

  python -m flaxlstm.cli train --quiet --config BASE --workdir WORKDIR/<name> \
      --config.<override> ... --config.seed=<seed>

so a crash of one run cannot take down the others. A run with a ``metrics.json`` is done and
skipped on rerun (a killed sweep resumes; an unfinished run resumes from its checkpoint).
Failures are listed in ``WORKDIR/failures.txt`` with the last line of the run's stderr (full
logs in ``WORKDIR/logs/``). Aggregation writes ``results.csv`` (one row per run),
``results.md`` (mean ± std over seeds per setting) and ``<key>.png`` (val/test MSE vs each
swept key or zip group).

Every run's config (the base experiment, the fixed overrides, its swept values) is built
and validated when the file is loaded, so a typo is one error before anything trains, not
one failure per run. The runner holds the sweep directory's lock (a second runner on it is
refused) and passes SIGTERM/SIGINT on to its runs, each of which saves a checkpoint, then
waits for them. Runs are told to stop if the runner dies (Linux: even by kill -9), and a
rerun waits for a run still finishing its checkpoint rather than start a second writer.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

from flaxlstm import config as config_lib
from flaxlstm import workdir as workdir_lib
from flaxlstm.errors import InputError, Stopped

_SWEEP_KEYS = ("config", "overrides", "grid", "zip", "seeds")
# Metrics columns of results.csv, read from each run's metrics.json.
METRICS_COLUMNS = ("val_mse", "val_mae", "test_mse", "test_mae", "naive_test_mse",
                   "test_mse_vs_naive", "params_count", "epochs", "steps", "train_wall_time_s")
# Columns summarized (mean ± std over seeds) in results.md.
_SUMMARY = ("val_mse", "test_mse", "test_mae", "naive_test_mse")


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep."""
  name: str  # Folder name under the sweep workdir, e.g. "model.dropout=0.2,seed=1".
  setting: dict[str, Any]  # Swept key -> value (without the seed).
  seed: int
  overrides: tuple[str, ...]  # "key=value" strings: the fixed ones, the swept ones, seed.


@dataclasses.dataclass
class Sweep:
  """A loaded sweep file: its base config, the expanded runs and the swept dimensions."""
  config: str
  runs: list[Run]
  # Swept dimensions: one key per grid key, all zip keys as one group (varied together).
  dims: list[tuple[str, ...]]


def call_spec_file(path: pathlib.Path, kind: str, function: str) -> Any:
  """Imports a sweep/tune file and returns what its `function()` returns.

  Whatever the file does wrong (missing, syntax error, raising) is the user's input problem:
  an InputError naming the file, e.g. "tune file 'x.py' failed: NameError: ..."."""
  where = f"{kind} file '{path}'"
  if not path.is_file():
    raise InputError(f"{where} does not exist")
  spec = importlib.util.spec_from_file_location(
      f"_flaxlstm_{kind}_" + re.sub(r"\W", "_", str(path.resolve())), path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return getattr(module, function)()
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise InputError(f"{where} failed: {type(e).__name__}: {e}") from e


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
  """Imports a sweep file, checks it, expands it into runs and validates every run's
  config (see `check_runs`)."""
  path = pathlib.Path(path)
  where = f"sweep file '{path}'"
  spec_dict = call_spec_file(path, "sweep", "get_sweep")
  try:
    sweep = expand(spec_dict)
    check_runs(sweep.config, tuple(spec_dict.get("overrides", ())),
               [(r.name, r.overrides) for r in sweep.runs])
  except InputError as e:
    raise InputError(f"{where}: {e}") from None
  return sweep


def check_runs(base: str, fixed: Sequence[str],
               runs: Sequence[tuple[str, Sequence[str]]]) -> None:
  """Builds and validates the config of every run before any is launched: the base
  experiment with the fixed overrides, then each run's overrides, and that its data file
  exists. One InputError naming the base or the run, instead of N failed runs."""
  from flaxlstm import data as data_lib  # pandas: only for the runners, not for --help
  try:
    config_lib.load_config(base, list(fixed))
  except InputError as e:
    raise InputError(f"base config {base}: {e}") from None
  for name, overrides in runs:
    try:
      config = config_lib.load_config(base, list(overrides))
      path = data_lib.data_file(config.data.path)
    except InputError as e:
      raise InputError(f"run {name}: {e}") from None
    if not path.is_file():
      raise InputError(f"run {name}: data file not found: {path}")


def expand(spec: dict[str, Any]) -> Sweep:
  """Expands a sweep dict (see the module docstring) into runs, in a stable order."""
  check_spec(spec)
  grid = {k: list(v) for k, v in spec.get("grid", {}).items()}
  zipped = {k: list(v) for k, v in spec.get("zip", {}).items()}
  seeds = list(spec.get("seeds", [0]))
  fixed = tuple(spec.get("overrides", ()))
  zip_rows = list(zip(*zipped.values())) or [()]
  runs, names = [], set()
  for grid_values in itertools.product(*grid.values()):
    for zip_values in zip_rows:
      setting = dict(zip(grid, grid_values)) | dict(zip(zipped, zip_values))
      for seed in seeds:
        name = run_name(setting, seed)
        if name in names:
          raise InputError(f"two runs get the name '{name}'; make the swept values distinct")
        names.add(name)
        swept = tuple(f"{k}={format_value(v)}" for k, v in setting.items())
        runs.append(Run(name, setting, seed, fixed + swept + (f"seed={seed}",)))
  dims = [(k,) for k in grid] + ([tuple(zipped)] if zipped else [])
  return Sweep(spec["config"], runs, dims)


def check_spec(spec: Any) -> None:
  """Rejects malformed sweep dicts with a one-line message, before anything runs."""
  if not isinstance(spec, dict):
    raise InputError("get_sweep() must return a dict")
  unknown = sorted(set(spec) - set(_SWEEP_KEYS))
  if unknown:
    raise InputError(f"unknown sweep keys {unknown}; allowed: {list(_SWEEP_KEYS)}")
  if not isinstance(spec.get("config"), str) or not spec["config"]:
    raise InputError("'config' must name the base experiment file (path.py[:arg])")
  schema = config_lib.flatten(config_lib.default_config())
  grid, zipped = spec.get("grid", {}), spec.get("zip", {})
  for part, values in (("grid", grid), ("zip", zipped)):
    if not isinstance(values, dict):
      raise InputError(f"'{part}' must be a dict of config key -> list of values")
    for key, options in values.items():
      # Typos are caught here, not after an hour of runs; values are checked by each run.
      if key == "seed":  # Seeds are not a setting: results.md averages over them.
        raise InputError(f"{part}: sweep the seed with 'seeds', not '{key}'")
      if key not in schema:
        raise InputError(f"{part}: unknown config key '{key}'")
      if not isinstance(options, (list, tuple)) or not options:
        raise InputError(f"{part}: '{key}' must be a non-empty list of values")
  if set(grid) & set(zipped):
    raise InputError(f"keys both in grid and zip: {sorted(set(grid) & set(zipped))}")
  if len({len(v) for v in zipped.values()}) > 1:
    raise InputError("zip: all lists must have the same length")
  seeds = spec.get("seeds", [0])
  if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
    raise InputError("'seeds' must be a non-empty list of ints")
  if len(set(seeds)) != len(seeds):
    raise InputError("'seeds' has duplicates")
  if not all(isinstance(o, str) and "=" in o for o in spec.get("overrides", ())):
    raise InputError("'overrides' must be a list of 'key=value' strings")


def format_value(value: Any) -> str:
  """A value as override text, as `--config.key=` parses it back."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (tuple, list)):
    # A trailing comma keeps a one-element tuple a tuple: "64," is (64,).
    return ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "")
  return str(value)


def run_name(setting: dict[str, Any], seed: int) -> str:
  """The run's folder name: its swept values and seed, e.g. `model.dropout=0.2,seed=1`."""
  parts = [f"{k}={_short_value(v)}" for k, v in setting.items()] + [f"seed={seed}"]
  return re.sub(r"[^A-Za-z0-9._,=+-]", "_", ",".join(parts))


def _short_value(value: Any) -> str:
  """Value text for names and tables: tuples as "64-64" (commas separate the keys)."""
  if isinstance(value, (tuple, list)):
    return "-".join(_short_value(v) for v in value)
  return format_value(value)


# ---- running --------------------------------------------------------------------------------
def train_command(sweep: Sweep, run: Run, workdir: str | os.PathLike[str],
                  program: Sequence[str] = (sys.executable, "-m", "flaxlstm.cli")) -> list[str]:
  """The `flaxlstm train` command line of one run."""
  return [*program, "train", "--quiet", "--config", sweep.config,
          "--workdir", str(pathlib.Path(workdir) / run.name),
          *(f"--config.{o}" for o in run.overrides)]


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any] | None:
  """A run's metrics.json, or None if it is missing or damaged (then the run is not done:
  rerunning it rewrites the file)."""
  try:
    metrics = json.loads(pathlib.Path(path).read_bytes())
  except (OSError, ValueError):
    return None
  ok = isinstance(metrics, dict) and all(
      isinstance(metrics.get(s), dict) and isinstance(metrics[s].get("mse"), (int, float))
      for s in ("val", "test"))
  return metrics if ok else None


def is_done(workdir: str | os.PathLike[str], run: Run) -> bool:
  return read_metrics(pathlib.Path(workdir) / run.name / "metrics.json") is not None


def run_sweep(sweep: Sweep, workdir: str | os.PathLike[str], *, parallel: int = 1,
              quiet: bool = False) -> dict[str, str]:
  """Trains the unfinished runs, `parallel` at a time; returns {failed run: last error line}.

  Failures are also written to `workdir/failures.txt` (removed when none are left), and
  the results aggregated (`aggregate`). Holds
  the sweep directory's lock; SIGTERM/SIGINT are passed on to the runs, and once they
  have saved their checkpoints `Stopped` is raised.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.Lock(workdir, "flaxlstm sweep"), Children() as children:
    failures = train_runs(sweep, workdir, children, parallel=parallel, quiet=quiet)
    children.raise_if_stopped("sweep")
    write_failures(workdir, sweep, failures)
    aggregate(sweep, workdir)
  return failures


def train_runs(sweep: Sweep, workdir: pathlib.Path, children: Children, *, parallel: int,
               quiet: bool) -> dict[str, str]:
  """Trains the unfinished runs of `sweep` as `children`; {failed run: last error line}.

  The caller holds the directory's lock. Runs not started when a signal came are left
  for the rerun; runs that stopped on it are not failures.
  """
  logs = workdir / "logs"
  logs.mkdir(parents=True, exist_ok=True)
  todo = [r for r in sweep.runs if not is_done(workdir, r)]
  say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
  say(f"sweep: {len(sweep.runs)} runs, {len(sweep.runs) - len(todo)} already done, "
      f"{len(todo)} to train ({parallel} at a time)")

  def launch(run: Run) -> tuple[int | None, float]:
    # A run an earlier runner started may still be finishing its checkpoint (that runner
    # was killed, its run told to stop): wait for it rather than start a second writer.
    if children.wait_for_lock(workdir / run.name, say) and is_done(workdir, run):
      return 0, 0.0
    t0 = time.perf_counter()
    with open(logs / f"{run.name}.log", "w") as out:
      # stderr to the same log: the last line of a failed run is its `error: ...` message.
      code = children.run(train_command(sweep, run, workdir), stdout=out,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return code, time.perf_counter() - t0

  failures = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
    futures = {pool.submit(launch, r): r for r in todo}
    for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
      run = futures[future]
      code, seconds = future.result()
      if code is None:
        continue  # not started: a signal came first
      if code == 0:
        say(f"[{i}/{len(todo)}] ok      {run.name} ({seconds:.0f} s)")
      elif children.signum and code > 128:  # stopped by the signal passed on
        say(f"[{i}/{len(todo)}] stopped {run.name} (checkpoint saved)")
      else:
        failures[run.name] = f"exit {code}: {_last_line(logs / f'{run.name}.log')}"
        say(f"[{i}/{len(todo)}] FAILED  {run.name}: {failures[run.name]}")
  return failures


# Set in each run's environment: a run started by a runner stops when the runner dies.
PARENT_ENV = "FLAXLSTM_RUNNER_PID"
_PR_SET_PDEATHSIG = 1


def follow_parent() -> None:
  """In a run started by a sweep or tune runner: get SIGTERM when the runner dies.

  Linux's PR_SET_PDEATHSIG; the run then checkpoints and exits as on preemption, so a
  kill -9 of the runner leaves no run training on unseen. Elsewhere this does nothing.
  """
  parent = os.environ.get(PARENT_ENV)
  if not parent or not sys.platform.startswith("linux"):
    return
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  except (OSError, AttributeError):
    return
  if str(os.getppid()) != parent:  # the runner died before we asked
    os.kill(os.getpid(), signal.SIGTERM)


class Children:
  """The runs a runner has started, and the signals it passes on to them.

  Use as a context manager (handlers are installed from the main thread only). Runs start
  in their own session, so a Ctrl-C in the terminal reaches the runner only and each run
  gets exactly one SIGINT from it: a run's first SIGINT checkpoints, a second aborts.
  """

  def __init__(self):
    self.signum = 0
    self._procs: set[subprocess.Popen] = set()
    self._lock = threading.Lock()
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> Children:
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._forward)
                        for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc_info: Any) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}

  def _forward(self, signum: int, frame: Any) -> None:
    del frame
    self.signum = self.signum or signum
    with self._lock:
      procs = list(self._procs)
    for proc in procs:
      if proc.poll() is None:
        proc.send_signal(signum)

  def run(self, cmd: Sequence[str], **kwargs: Any) -> int | None:
    """Runs `cmd` to its end; None (not started) once a signal has come."""
    env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
    with self._lock:
      if self.signum:
        return None
      proc = subprocess.Popen(cmd, start_new_session=True, env=env, **kwargs)
      self._procs.add(proc)
    try:
      return proc.wait()
    finally:
      with self._lock:
        self._procs.discard(proc)

  def wait_for_lock(self, directory: pathlib.Path, say) -> bool:
    """Waits while another process holds `directory`'s lock; True if one did."""
    holder = workdir_lib.lock_holder(directory)
    if holder is None:
      return False
    say(f"waiting for {holder} to release {directory}")
    while workdir_lib.lock_holder(directory) is not None and not self.signum:
      time.sleep(0.2)
    return True

  def raise_if_stopped(self, what: str) -> None:
    if self.signum:
      raise Stopped(self.signum, f"{what} stopped by signal {self.signum}; the runs that "
                    "were training saved checkpoints, rerun the same command to resume")


def _last_line(path: pathlib.Path) -> str:
  lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
  return lines[-1] if lines else "(no output)"


def write_failures(workdir: pathlib.Path, sweep: Sweep, failures: dict[str, str]) -> None:
  """Lists failed runs in `workdir/failures.txt` in sweep order (removed when none)."""
  path = workdir / "failures.txt"
  if not failures:
    path.unlink(missing_ok=True)
    return
  order = [r.name for r in sweep.runs if r.name in failures]  # sweep order, not finish order
  path.write_text("".join(f"{name}\t{failures[name]}\n" for name in order))


def read_failures(workdir: str | os.PathLike[str]) -> dict[str, str]:
  path = pathlib.Path(workdir) / "failures.txt"
  if not path.is_file():
    return {}
  text = path.read_text(errors="replace")
  return dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)


def dry_run_lines(sweep: Sweep, workdir: str | os.PathLike[str]) -> list[str]:
  """The command of every run; finished runs appear as comments."""
  lines = []
  for run in sweep.runs:
    cmd = shlex.join(train_command(sweep, run, workdir))
    lines.append(f"# done: {cmd}" if is_done(workdir, run) else cmd)
  return lines


def slurm_script(sweep: Sweep, workdir: str | os.PathLike[str], *, name: str,
                 parallel: int = 0) -> str:
  """A SLURM job array: task i trains run i (`sbatch WORKDIR/sweep.sbatch`).

  Each task is one single-process run, so this does not go through launch/slurm.sbatch
  (which starts one multi-node distributed run). Finished runs exit at once.
  """
  workdir = pathlib.Path(workdir)
  n = len(sweep.runs)
  throttle = f"%{parallel}" if parallel > 0 else ""
  lines = [
      "#!/bin/bash",
      f"# Sweep {name}: {n} runs, task i trains run i. Submit from the directory the paths",
      "# below are relative to; afterwards aggregate with `flaxlstm sweep ... --aggregate-only`.",
      f"#SBATCH --job-name={_sbatch_quote(name)}",
      f"#SBATCH --array=0-{n - 1}{throttle}",
      "#SBATCH --ntasks=1",
      "#SBATCH --cpus-per-task=4",
      "#SBATCH --time=04:00:00",
      f"#SBATCH --output={_sbatch_quote(str(workdir / 'logs' / 'slurm-%A_%a.out'))}",
      "set -euo pipefail",
      'case "$SLURM_ARRAY_TASK_ID" in',
  ]
  for i, run in enumerate(sweep.runs):
    done = shlex.quote(str(workdir / run.name / "metrics.json"))
    cmd = shlex.join(train_command(sweep, run, workdir, program=("flaxlstm",)))
    lines.append(f"  {i}) [ -f {done} ] || srun {cmd} ;;")
  lines += ['  *) echo "no run for task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac", ""]
  return "\n".join(lines)


def _sbatch_quote(value: str) -> str:
  """An #SBATCH option value: sbatch splits these lines at blanks unless double-quoted."""
  if any(c in value for c in '"\n\\'):
    raise InputError(f"{value!r} cannot be written into an sbatch directive (it holds a "
                     "quote, backslash or newline); choose another --workdir or name")
  return f'"{value}"' if any(c.isspace() for c in value) or not value else value


# ---- aggregation ----------------------------------------------------------------------------
def aggregate(sweep: Sweep, workdir: str | os.PathLike[str]) -> "pandas.DataFrame":
  """Writes results.csv, results.md and one PNG per swept dimension; returns the table."""
  import pandas as pd  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  failures = read_failures(workdir)
  rows = [result_row(workdir, run, failures) for run in sweep.runs]
  # Counts stay integers in the CSV even when failed runs leave gaps.
  table = pd.DataFrame(rows).astype({"params_count": "Int64", "steps": "Int64"})
  table.to_csv(workdir / "results.csv", index=False)
  keys = [k for dim in sweep.dims for k in dim]
  (workdir / "results.md").write_text(_markdown(table, keys))
  for dim in sweep.dims:
    _plot(table, dim, keys, workdir / f"{_file_name('+'.join(dim))}.png")
  return table


def result_row(workdir: pathlib.Path, run: Run, failures: dict[str, str]) -> dict[str, Any]:
  """One results.csv row: the run's setting, seed and metrics (NaN until it has finished)."""
  row = {k: _table_value(v) for k, v in run.setting.items()}
  row.update(seed=run.seed, name=run.name)
  row.update({m: math.nan for m in METRICS_COLUMNS})
  path = workdir / run.name / "metrics.json"
  m = read_metrics(path)
  if m is not None:
    naive = m.get("baselines", {}).get("naive", {}).get("test", {}).get("mse", math.nan)
    row.update(val_mse=m["val"]["mse"], val_mae=m["val"]["mae"], test_mse=m["test"]["mse"],
               test_mae=m["test"]["mae"], naive_test_mse=naive,
               test_mse_vs_naive=m["test"]["mse"] / naive if naive else math.nan,
               params_count=m.get("params_count"), epochs=m.get("epochs"),
               steps=m.get("steps"), train_wall_time_s=m.get("train_wall_time_s"))
    row["status"] = "ok"
  elif path.exists():
    row["status"] = "damaged"  # metrics.json unreadable: rerunning the sweep rewrites it
  else:
    row["status"] = "failed" if run.name in failures else "missing"
  return row


def _table_value(value: Any) -> Any:
  """Scalars stay as they are (numeric axes); tuples become text such as "64-64"."""
  return _short_value(value) if isinstance(value, (tuple, list)) else value


def _markdown(table, keys: list[str]) -> str:
  """Mean ± std over seeds per setting, in sweep order."""
  ok = table[table["status"] == "ok"]
  header = keys + ["runs"] + list(_SUMMARY)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  groups = ok.groupby(keys, sort=False, dropna=False) if keys else [((), ok)]
  for values, group in groups:
    values = values if isinstance(values, tuple) else (values,)
    cells = [str(v) for v in values] + [str(len(group))]
    cells += [_mean_std(group[m]) for m in _SUMMARY]
    lines.append("| " + " | ".join(cells) + " |")
  failed = int((table["status"] != "ok").sum())
  if failed:
    lines += ["", f"{failed} of {len(table)} runs have no results (see results.csv)."]
  return "\n".join(lines) + "\n"


def _mean_std(values) -> str:
  values = values.dropna()
  if values.empty:
    return "-"
  if len(values) == 1:
    return f"{values.iloc[0]:.4f}"
  return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def _plot(table, dim: tuple[str, ...], keys: list[str], path: pathlib.Path) -> None:
  """Val/test MSE (mean, std error bars over seeds) vs one swept dimension.

  One line per setting of the other swept keys. Non-numeric values (and zip groups) go on a
  categorical axis in sweep order.
  """
  from flaxlstm.report import _figure  # pylint: disable=g-import-not-at-top

  ok = table[table["status"] == "ok"]
  others = [k for k in keys if k not in dim]
  x_labels = list(dict.fromkeys(
      "/".join(str(v) for v in row) for row in table[list(dim)].itertuples(index=False)))
  numeric = len(dim) == 1 and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in table[dim[0]])
  fig = _figure(figsize=(10, 4))
  for i, metric in enumerate(("val_mse", "test_mse")):
    ax = fig.add_subplot(1, 2, i + 1)
    line_groups = ok.groupby(others, sort=False, dropna=False) if others else [((), ok)]
    for line_key, group in line_groups:
      line_key = line_key if isinstance(line_key, tuple) else (line_key,)
      stats = group.groupby(list(dim), sort=False)[metric].agg(["mean", "std"]).reset_index()
      labels = ["/".join(str(v) for v in row) for row in stats[list(dim)].itertuples(index=False)]
      xs = stats[dim[0]] if numeric else [x_labels.index(l) for l in labels]
      label = ", ".join(f"{k}={v}" for k, v in zip(others, line_key)) or None
      ax.errorbar(xs, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                  label=label)
    if not numeric:
      ax.set_xticks(range(len(x_labels)), x_labels, rotation=20)
    ax.set_xlabel(" / ".join(dim))
    ax.set_ylabel(metric.replace("_", " "))
    if others:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def _file_name(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._,=+-]", "_", text)
