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
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import itertools
import math
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Sequence

from flaxlstm import config as config_lib
from flaxlstm.errors import InputError

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
  """Imports a sweep file, checks it and expands it into runs."""
  path = pathlib.Path(path)
  where = f"sweep file '{path}'"
  spec_dict = call_spec_file(path, "sweep", "get_sweep")
  try:
    return expand(spec_dict)
  except InputError as e:
    raise InputError(f"{where}: {e}") from None


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


def is_done(workdir: str | os.PathLike[str], run: Run) -> bool:
  return (pathlib.Path(workdir) / run.name / "metrics.json").is_file()


def run_sweep(sweep: Sweep, workdir: str | os.PathLike[str], *, parallel: int = 1,
              quiet: bool = False) -> dict[str, str]:
  """Trains the unfinished runs, `parallel` at a time; returns {failed run: last error line}.

  Failures are also written to `workdir/failures.txt` (removed when none are left).
  """
  workdir = pathlib.Path(workdir)
  logs = workdir / "logs"
  logs.mkdir(parents=True, exist_ok=True)
  todo = [r for r in sweep.runs if not is_done(workdir, r)]
  say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
  say(f"sweep: {len(sweep.runs)} runs, {len(sweep.runs) - len(todo)} already done, "
      f"{len(todo)} to train ({parallel} at a time)")

  def launch(run: Run) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(logs / f"{run.name}.log", "w") as out:
      # stderr to the same log: the last line of a failed run is its `error: ...` message.
      code = subprocess.run(train_command(sweep, run, workdir), stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    return code, time.perf_counter() - t0

  failures = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
    futures = {pool.submit(launch, r): r for r in todo}
    for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
      run = futures[future]
      code, seconds = future.result()
      if code == 0:
        say(f"[{i}/{len(todo)}] ok      {run.name} ({seconds:.0f} s)")
        continue
      failures[run.name] = f"exit {code}: {_last_line(logs / f'{run.name}.log')}"
      say(f"[{i}/{len(todo)}] FAILED  {run.name}: {failures[run.name]}")
  write_failures(workdir, sweep, failures)
  return failures


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
  return dict(line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)


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
      f"#SBATCH --job-name={name}",
      f"#SBATCH --array=0-{n - 1}{throttle}",
      "#SBATCH --ntasks=1",
      "#SBATCH --cpus-per-task=4",
      "#SBATCH --time=04:00:00",
      f"#SBATCH --output={workdir}/logs/slurm-%A_%a.out",
      "set -euo pipefail",
      'case "$SLURM_ARRAY_TASK_ID" in',
  ]
  for i, run in enumerate(sweep.runs):
    done = shlex.quote(str(workdir / run.name / "metrics.json"))
    cmd = shlex.join(train_command(sweep, run, workdir, program=("flaxlstm",)))
    lines.append(f"  {i}) [ -f {done} ] || srun {cmd} ;;")
  lines += ['  *) echo "no run for task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac", ""]
  return "\n".join(lines)


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
  import json  # pylint: disable=g-import-not-at-top

  row = {k: _table_value(v) for k, v in run.setting.items()}
  row.update(seed=run.seed, name=run.name)
  row.update({m: math.nan for m in METRICS_COLUMNS})
  path = workdir / run.name / "metrics.json"
  if path.is_file():
    m = json.loads(path.read_text())
    naive = m.get("baselines", {}).get("naive", {}).get("test", {}).get("mse", math.nan)
    row.update(val_mse=m["val"]["mse"], val_mae=m["val"]["mae"], test_mse=m["test"]["mse"],
               test_mae=m["test"]["mae"], naive_test_mse=naive,
               test_mse_vs_naive=m["test"]["mse"] / naive if naive else math.nan,
               params_count=m.get("params_count"), epochs=m.get("epochs"),
               steps=m.get("steps"), train_wall_time_s=m.get("train_wall_time_s"))
    row["status"] = "ok"
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
