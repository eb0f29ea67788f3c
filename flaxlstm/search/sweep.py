"""Sweeps: expand a grid of config overrides into runs, run them, aggregate the results.

A sweep file (``experiments/sweeps/NAME.py``) defines ``get_sweep()`` returning a dict::

  def get_sweep():
    return {
        "config": "ett",                         # base experiment: a recipe or file.py[:arg]
        "overrides": ["train.max_epochs=20"],    # fixed overrides for every run (optional)
        "grid": {"model.dropout": [0.0, 0.2]},  # every combination of these (optional)
        "zip": {"train.optimizer": ["sgd", "adamw"],   # varied together, equal lengths
                "train.learning_rate": [0.05, 1e-3]},  # (optional)
        "seeds": [0, 1, 2],                      # each setting once per seed (default [0])
    }

Runs are the product grid x zip x seeds, at most `MAX_RUNS` (10,000: counted before anything
is expanded, so a grid of 10^8 runs is one line, not gigabytes; split a larger study into
several sweeps). Each run is named by its swept values, e.g.
``model.dropout=0.2,seed=1`` (tuples join with "-", other odd characters become "_"), and
trains in ``WORKDIR/<name>`` through the runner (runner.py: one process per run, skipped
once finished, failures listed, signals passed on, every run's config validated when the
file is loaded), or with ``--population`` in this process, each group of runs that differ
only in seed and continuous hyperparameters as one program (train/population.py).
Aggregation (results.py) writes ``results.csv`` (one row per run),
``results.md`` (mean ± std over seeds per setting) and ``<key>.png`` (val/test MSE vs each
swept key or zip group).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import pathlib
import re
from typing import Any

from flaxlstm import config as config_lib
from flaxlstm.errors import InputError
from flaxlstm.search import results, runner
from flaxlstm.search.runner import Run
from flaxlstm.train import lock as lock_lib

_SWEEP_KEYS = ("config", "overrides", "grid", "zip", "seeds")
# The most runs one sweep may have. Every run's config is built and validated when the file
# loads (milliseconds each), and a run is a process and a folder: far more than this is a
# grid written by mistake, whose expansion alone would fill the memory.
MAX_RUNS = 10_000


@dataclasses.dataclass
class Sweep:
  """A loaded sweep file: its base config, the expanded runs and the swept dimensions."""

  config: str
  runs: list[Run]
  # Swept dimensions: one key per grid key, all zip keys as one group (varied together).
  dims: list[tuple[str, ...]]


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
  """Imports a sweep file, checks it, expands it into runs and validates every run's
  config (see `check_runs`)."""
  path = pathlib.Path(path)
  where = f"sweep file '{path}'"
  spec_dict = config_lib.load_python(path, kind="sweep", function="get_sweep")
  try:
    sweep = expand(spec_dict)
    runner.check_runs(
      sweep.config,
      tuple(spec_dict.get("overrides", ())),
      [(r.name, r.overrides) for r in sweep.runs],
    )
  except InputError as e:
    raise InputError(f"{where}: {e}") from None
  return sweep


def expand(spec: dict[str, Any]) -> Sweep:
  """Expands a sweep dict (see the module docstring) into runs, in a stable order."""
  check_spec(spec)
  grid = {k: list(v) for k, v in spec.get("grid", {}).items()}
  zipped = {k: list(v) for k, v in spec.get("zip", {}).items()}
  seeds = list(spec.get("seeds", [0]))
  check_size(grid, zipped, seeds)
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
        swept = tuple(f"{k}={runner.format_value(v)}" for k, v in setting.items())
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
      if key not in schema:  # named as a config override is: renamed keys, close matches
        raise InputError(f"{part}: {config_lib.unknown_key_message(key, schema)}")
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


def check_size(grid: dict[str, list], zipped: dict[str, list], seeds: list[int]) -> None:
  """Refuses a sweep of more than `MAX_RUNS` runs, counted without expanding it."""
  zip_rows = len(next(iter(zipped.values()))) if zipped else 1  # zip lists: equal lengths
  count = math.prod(len(v) for v in grid.values()) * zip_rows * len(seeds)
  if count > MAX_RUNS:
    sizes = [f"{len(v)} {k}" for k, v in grid.items()]
    sizes += [f"{zip_rows} zipped"] if zipped else []
    sizes += [f"{len(seeds)} seed{'s' * (len(seeds) != 1)}"]
    raise InputError(
      f"the sweep has {count:,} runs ({' x '.join(sizes)}), more than the limit of "
      f"{MAX_RUNS:,} (flaxlstm.search.sweep.MAX_RUNS); sweep fewer values or split it"
    )


def run_name(setting: dict[str, Any], seed: int) -> str:
  """The run's folder name: its swept values and seed, e.g. `model.dropout=0.2,seed=1`."""
  parts = [f"{k}={runner.short_value(v)}" for k, v in setting.items()] + [f"seed={seed}"]
  return re.sub(r"[^A-Za-z0-9._,=+-]", "_", ",".join(parts))


def run_sweep(
  sweep: Sweep,
  workdir: str | os.PathLike[str],
  *,
  parallel: int = 1,
  quiet: bool = False,
  population: bool = False,
) -> dict[str, str]:
  """Trains the unfinished runs, `parallel` at a time, or with `population` in this
  process, each group of runs that differ only in seed and member hyperparameters as one
  program (runner.train_populations); returns {failed run: last error line}.

  Failures are also written to `workdir/failures.txt` (removed when none are left), and
  the results aggregated (`aggregate`). Holds
  the sweep directory's lock; SIGTERM/SIGINT are passed on to the runs, and once they
  have saved their checkpoints `Stopped` is raised.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with lock_lib.Lock(workdir, "flaxlstm sweep"), runner.Children() as children:
    failures = runner.train_runs(
      sweep.config,
      sweep.runs,
      workdir,
      children,
      parallel=parallel,
      quiet=quiet,
      population=population,
    )
    children.raise_if_stopped("sweep")
    runner.write_failures(workdir, sweep.runs, failures)
    aggregate(sweep, workdir)
  return failures


def aggregate(sweep: Sweep, workdir: str | os.PathLike[str]) -> Any:
  """Writes results.csv, results.md and one PNG per swept dimension; returns the table."""
  return results.sweep_tables(sweep.runs, sweep.dims, pathlib.Path(workdir))
