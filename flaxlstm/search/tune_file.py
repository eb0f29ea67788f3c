"""The tune file: what a hyperparameter search is, checked before anything runs.

A tune file (``experiments/tune/NAME.py``) defines ``get_tune()`` returning a dict::

  def get_tune():
    return {
        "config": "ett",                         # base experiment: a recipe or file.py[:arg]
        "overrides": ["train.max_epochs=20"],    # fixed for every trial (optional)
        "space": {                               # config key -> where its values come from
            "model.hidden_sizes": {"choice": [(64,), (128,), (64, 64)]},  # one of these
            "model.dropout": {"uniform": [0.0, 0.5]},                  # float in [low, high]
            "train.learning_rate": {"loguniform": [1e-4, 1e-2]},      # float, log scale
            "train.batch_size": {"int": [32, 128], "step": 32},       # 32, 64, 96 or 128
        },                                       # ("int" also takes "log": True, step 1)
        "trials": 20,                            # trials in all (`--trials` overrides it)
        "metric": "val_mse",                     # minimized: "val_mse" (default) | "val_mae"
        "algorithm": "tpe",                      # "tpe" (default; needs optuna) | "random"
        "seed": 0,                               # seeds the search, not the runs (default 0)
    }

Every trial trains with the base config's seed (fix another in ``overrides``); searching the
seed would only fit noise. `load_tune` checks the base config, the fixed overrides and every
choice and both ends of every range once, so that a value no run can take is one error
before the search rather than the failure of each trial that draws it. How a search runs:
tune.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Any

from flaxlstm import config as config_lib
from flaxlstm.errors import InputError
from flaxlstm.search import runner
from flaxlstm.search import sweep as sweep_lib

_TUNE_KEYS = ("config", "overrides", "space", "trials", "metric", "algorithm", "seed")
KINDS = ("choice", "uniform", "loguniform", "int")
_OPTIONS = {"choice": (), "uniform": (), "loguniform": (), "int": ("step", "log")}
METRICS = ("val_mse", "val_mae")  # Never a test metric: picking on test leaks it.
ALGORITHMS = ("tpe", "random")


@dataclasses.dataclass(frozen=True)
class Dist:
  """Where one searched key's values come from (see the module docstring)."""

  kind: str  # One of KINDS.
  choices: tuple[Any, ...] = ()  # kind "choice".
  low: float = 0.0  # Other kinds: the range; for "int", high is the largest reachable value.
  high: float = 0.0
  step: int = 1  # kind "int".
  log: bool = False  # kind "int" (for "loguniform" always true).


@dataclasses.dataclass(frozen=True)
class Tune:
  """A loaded tune file."""

  config: str
  overrides: tuple[str, ...]
  space: dict[str, Dist]
  trials: int
  metric: str
  algorithm: str
  seed: int
  run_seed: int = 0  # The base config's seed, which every trial trains with.


def load_tune(path: str | os.PathLike[str], trials: int | None = None) -> Tune:
  """Imports a tune file, checks it and its base config; `trials` overrides the file's."""
  path = pathlib.Path(path)
  where = f"tune file '{path}'"
  spec_dict = config_lib.load_python(path, kind="tune", function="get_tune")
  if isinstance(spec_dict, dict) and trials is not None:
    spec_dict = spec_dict | {"trials": trials}
  try:
    tune = parse(spec_dict)
    # The base config and fixed overrides once, here, rather than in every failed trial;
    # then each choice and both ends of each range, so a value no run can take is one
    # error now rather than the failure of every trial that draws it.
    base = config_lib.load_config(tune.config, tune.overrides)
    runner.check_runs(
      tune.config,
      tune.overrides,
      [
        (
          f"space '{key}' value {runner.format_value(v)}",
          tune.overrides + (f"{key}={runner.format_value(v)}",),
        )
        for key, dist in tune.space.items()
        for v in _extremes(dist)
      ],
    )
  except InputError as e:
    raise InputError(f"{where}: {e}") from None
  if tune.algorithm == "tpe":
    import_optuna()  # Missing optuna is reported before anything runs.
  return dataclasses.replace(tune, run_seed=base.seed)


def _extremes(dist: Dist) -> tuple[Any, ...]:
  """The values that stand for a distribution in checks: every choice, or both ends."""
  if dist.kind == "choice":
    return dist.choices
  kind = int if dist.kind == "int" else float
  return (kind(dist.low), kind(dist.high))


def parse(spec: Any) -> Tune:
  """Checks a tune dict (see the module docstring) and fills in the defaults."""
  if not isinstance(spec, dict):
    raise InputError("get_tune() must return a dict")
  unknown = sorted(set(spec) - set(_TUNE_KEYS))
  if unknown:
    raise InputError(f"unknown tune keys {unknown}; allowed: {list(_TUNE_KEYS)}")
  # The base experiment and fixed overrides mean the same as in a sweep file.
  sweep_lib.check_spec({k: spec[k] for k in ("config", "overrides") if k in spec})
  overrides = tuple(spec.get("overrides", ()))
  space = spec.get("space")
  if not isinstance(space, dict) or not space:
    raise InputError("'space' must be a non-empty dict of config key -> distribution")
  schema = config_lib.flatten(config_lib.default_config())
  fixed = {
    o.partition("=")[0].strip().removeprefix("--").removeprefix("config.") for o in overrides
  }
  dists = {}
  for key, dist in space.items():
    if key == "seed":
      raise InputError("space: searching 'seed' only fits noise; fix it in 'overrides'")
    if key not in schema:
      raise InputError(f"space: {config_lib.unknown_key_message(str(key), schema)}")
    if key in fixed:
      raise InputError(f"space: '{key}' is also fixed in 'overrides'")
    dists[key] = _parse_dist(key, dist, schema[key])
  trials = spec.get("trials")
  if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
    raise InputError(f"'trials' must be an int >= 1, got {trials!r}")
  metric = spec.get("metric", "val_mse")
  if metric not in METRICS:
    raise InputError(
      f"'metric' must be one of {list(METRICS)} (never a test metric), got {metric!r}"
    )
  algorithm = spec.get("algorithm", "tpe")
  if algorithm not in ALGORITHMS:
    raise InputError(f"'algorithm' must be one of {list(ALGORITHMS)}, got {algorithm!r}")
  seed = spec.get("seed", 0)
  if not _is_int(seed) or seed < 0:
    raise InputError(f"'seed' must be an int >= 0, got {seed!r}")
  return Tune(spec["config"], overrides, dists, trials, metric, algorithm, seed)


def _parse_dist(key: str, dist: Any, default: Any) -> Dist:
  """Checks one entry of 'space'; `default` (the schema value) says which kinds fit the key."""
  where = f"space: '{key}'"
  kinds = [k for k in KINDS if isinstance(dist, dict) and k in dist]
  if len(kinds) != 1:
    raise InputError(f"{where} must be a dict with exactly one of {list(KINDS)}, got {dist!r}")
  kind = kinds[0]
  unknown = sorted(set(dist) - {kind, *_OPTIONS[kind]})
  if unknown:
    raise InputError(
      f"{where}: unknown options {unknown} for '{kind}' (allowed: {list(_OPTIONS[kind])})"
    )
  values = dist[kind]
  if kind == "choice":
    if not isinstance(values, (list, tuple)) or not values:
      raise InputError(f"{where}: 'choice' must be a non-empty list of values")
    texts = [runner.format_value(v) for v in values]  # Trials pass values as text.
    if len(set(texts)) != len(texts):
      raise InputError(f"{where}: 'choice' has duplicate values")
    return Dist("choice", choices=tuple(values))  # Values are checked by each trial's run.
  # Ranges draw numbers; a float drawn for an int key would fail every trial.
  if not _is_number(default) or (kind != "int" and not isinstance(default, float)):
    wanted = "ints" if kind == "int" else "floats"
    raise InputError(
      f"{where} holds {type(default).__name__} values, '{kind}' draws {wanted}; use 'choice'"
    )
  is_bound = _is_int if kind == "int" else _is_number
  if (
    not isinstance(values, (list, tuple))
    or len(values) != 2
    or not all(is_bound(v) for v in values)
    or not values[0] < values[1]
  ):
    bounds = "ints" if kind == "int" else "numbers"
    raise InputError(
      f"{where}: '{kind}' must be [low, high], {bounds} with low < high, got {values!r}"
    )
  low, high = values
  if kind == "loguniform" and low <= 0:
    raise InputError(f"{where}: 'loguniform' needs low > 0, got {low!r}")
  if kind != "int":
    return Dist(kind, low=low, high=high, log=kind == "loguniform")
  step, log = dist.get("step", 1), dist.get("log", False)
  if not _is_int(step) or step < 1:
    raise InputError(f"{where}: 'step' must be an int >= 1, got {step!r}")
  if not isinstance(log, bool):
    raise InputError(f"{where}: 'log' must be true or false, got {log!r}")
  if log and (step != 1 or low < 1):
    raise InputError(f"{where}: 'log' needs low >= 1 and step 1")
  # The largest value on the grid low, low + step, ...: what both samplers can draw.
  return Dist("int", low=low, high=low + (high - low) // step * step, step=step, log=log)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def import_optuna():
  """Optuna, which algorithm 'tpe' needs; its absence is the tune file's error, not a
  traceback (optuna is an optional dependency)."""
  try:
    import optuna
  except ImportError:
    raise InputError(
      "algorithm 'tpe' needs optuna: pip install 'flaxlstm[tune]' (or use algorithm 'random')"
    ) from None
  # Optuna logs every tell at INFO; the search prints its own progress lines.
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna
