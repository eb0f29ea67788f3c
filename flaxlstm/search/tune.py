"""Hyperparameter search: propose trials (random or Optuna TPE), train them, keep the best.

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
seed would only fit noise. Trial i trains in ``WORKDIR/trial_00i`` exactly like a sweep run
(see runner.py): its own ``flaxlstm train`` process with the fixed overrides and its values,
its log in ``WORKDIR/logs/``, a failure listed in ``failures.txt`` without stopping the
search. Random search draws trial i from (seed, i) alone; TPE (Optuna's ``TPESampler``,
ask/tell, no database) proposes from every result so far. ``--parallel N`` trains in rounds
of N trials: each round proposes N trials (TPE from the results of the earlier rounds) and
starts when the previous round has finished; with ``--population`` each round trains in
this process as one population (train/population.py). ``--storage URL`` makes this process
one worker of a search shared by many through Optuna (shared.py).

The workdir is the store, so a killed search resumes: ``tune.json`` holds the search (a
different search in the same workdir is refused) and ``trials.jsonl`` each trial's values,
written before the trial starts. A rerun skips finished trials (``metrics.json`` present),
retrains recorded unfinished or failed ones with their recorded values, rebuilds the TPE
study from the finished ones and proposes only the rest; a larger ``--trials`` extends a
finished search. Results, rewritten after every round: ``results.csv`` (one row per trial),
``results.md`` (trials best first), ``best.json`` (the best trial's values, its override list
and the command that retrains it) and ``trials.png`` (metric per trial, running best).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shlex
import warnings
from typing import Any, Sequence

import numpy as np

from flaxlstm import config as config_lib
from flaxlstm import fileio
from flaxlstm.errors import InputError
from flaxlstm.search import results, runner
from flaxlstm.search import sweep as sweep_lib
from flaxlstm.search.runner import Run
from flaxlstm.train import workdir as workdir_lib

_TUNE_KEYS = ("config", "overrides", "space", "trials", "metric", "algorithm", "seed")
KINDS = ("choice", "uniform", "loguniform", "int")
_OPTIONS = {"choice": (), "uniform": (), "loguniform": (), "int": ("step", "log")}
METRICS = ("val_mse", "val_mae")  # Never a test metric: picking on test leaks it.
ALGORITHMS = ("tpe", "random")
# What defines a search: a workdir that holds a search differing in any of these is refused
# (its trials would not be trials of this search). `trials` may change: it extends a search.
_IDENTITY = ("config", "overrides", "space", "metric", "algorithm", "seed")
# results.md columns after the searched keys, and how their floats are shown.
_TABLE = {
  "val_mse": ".4f",
  "val_mae": ".4f",
  "test_mse": ".4f",
  "test_mae": ".4f",
  "params_count": "d",
  "epochs": ".3g",
  "train_wall_time_s": ".0f",
}


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


@dataclasses.dataclass(frozen=True)
class Trial:
  """One proposed setting of the searched keys; trains in WORKDIR/<name>."""

  number: int
  params: dict[str, Any]

  @property
  def name(self) -> str:
    return f"trial_{self.number:03d}"


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What `run_tune` did: trials in the search, how many failed, the best (best.json)."""

  trials: int
  failed: int
  best: dict[str, Any] | None


# ---- the tune file --------------------------------------------------------------------------
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
    _import_optuna()  # Missing optuna is reported before anything runs.
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


# ---- proposing trials -----------------------------------------------------------------------
def random_params(tune: Tune, number: int) -> dict[str, Any]:
  """Random search's trial `number`: a function of (seed, number) alone, so a resumed or
  extended search proposes the same trials as one that never stopped."""
  rng = np.random.default_rng([tune.seed, number])
  return {key: _sample(dist, rng) for key, dist in tune.space.items()}


def _sample(dist: Dist, rng: np.random.Generator) -> Any:
  if dist.kind == "choice":
    return dist.choices[int(rng.integers(len(dist.choices)))]
  if dist.kind == "int" and not dist.log:
    return int(dist.low + dist.step * rng.integers(int((dist.high - dist.low) // dist.step) + 1))
  if dist.kind == "int":  # Log scale: uniform in log over [low, high + 1), rounded down.
    value = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high + 1)))
    return int(min(math.floor(value), dist.high))
  if dist.log:
    return _tidy(dist, math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
  return _tidy(dist, rng.uniform(dist.low, dist.high))


def _tidy(dist: Dist, value: float) -> float:
  """A drawn float to 4 significant digits, within the range: finer differences do not
  matter, and commands and tables stay readable."""
  return min(max(float(f"{value:.4g}"), dist.low), dist.high)


class RandomSearch:
  """Proposes `random_params`; results do not steer it."""

  def __init__(self, tune: Tune):
    self.tune = tune

  def propose(self, number: int) -> dict[str, Any]:
    return random_params(self.tune, number)

  def report(self, trial: Trial, value: float | None) -> None:
    del trial, value


class TpeSearch:
  """Optuna's TPE through ask/tell, in memory: the store is the workdir, not a database.

  A resumed search reports every finished trial again (`report` adds trials it did not
  propose), which rebuilds the study where it stopped.
  """

  def __init__(self, tune: Tune, recorded: int):
    optuna = _import_optuna()
    self.tune, self._optuna = tune, optuna
    self._asked: dict[int, Any] = {}
    self.distributions = _distributions(optuna, tune.space)
    # Seeded by (seed, trials recorded so far): seeded by `seed` alone, a search resumed
    # during TPE's random start-up phase would propose trial 0's values again.
    sampler_seed = int(np.random.SeedSequence([tune.seed, recorded]).generate_state(1)[0])
    with warnings.catch_warnings():  # constant_liar is "experimental" in optuna 4.
      warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
      # constant_liar: trials of a round still training count as bad results, so the
      # proposals of one round spread out instead of piling onto the same spot.
      sampler = optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=True)
    self.study = optuna.create_study(direction="minimize", sampler=sampler)

  def propose(self, number: int) -> dict[str, Any]:
    asked = self.study.ask(self.distributions)
    self._asked[number] = asked
    return _from_optuna(self.tune.space, asked.params)

  def report(self, trial: Trial, value: float | None) -> None:
    """Tells the study a trial's result; None (failed, or a non-finite metric) is FAIL."""
    state = self._optuna.trial.TrialState
    asked = self._asked.pop(trial.number, None)
    if asked is not None:
      if value is None:
        self.study.tell(asked, state=state.FAIL)
      else:
        self.study.tell(asked, value)
      return
    self.study.add_trial(
      self._optuna.trial.create_trial(
        state=state.FAIL if value is None else state.COMPLETE,
        value=value,
        params=_to_optuna(self.tune.space, trial.params),
        distributions=self.distributions,
      )
    )


def make_search(tune: Tune, recorded: int) -> RandomSearch | TpeSearch:
  """The proposer of `tune.algorithm`; `recorded`: trials already in the store."""
  return TpeSearch(tune, recorded) if tune.algorithm == "tpe" else RandomSearch(tune)


def _import_optuna():
  try:
    import optuna
  except ImportError:
    raise InputError(
      "algorithm 'tpe' needs optuna: pip install 'flaxlstm[tune]' (or use algorithm 'random')"
    ) from None
  # Optuna logs every tell at INFO; the search prints its own progress lines.
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna


def _distributions(optuna, space: dict[str, Dist]) -> dict[str, Any]:
  """Optuna distributions of the space; a choice is the index of its value (optuna's
  categories must be scalars, and tuples such as model.hidden_sizes are not)."""
  d = optuna.distributions
  out = {}
  for key, dist in space.items():
    if dist.kind == "choice":
      out[key] = d.CategoricalDistribution(list(range(len(dist.choices))))
    elif dist.kind == "int":
      out[key] = d.IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
    else:
      out[key] = d.FloatDistribution(dist.low, dist.high, log=dist.log)
  return out


def _to_optuna(space: dict[str, Dist], params: dict[str, Any]) -> dict[str, Any]:
  return {
    k: space[k].choices.index(v) if space[k].kind == "choice" else v for k, v in params.items()
  }


def _from_optuna(space: dict[str, Dist], params: dict[str, Any]) -> dict[str, Any]:
  def value(dist: Dist, param: Any) -> Any:
    if dist.kind == "choice":
      return dist.choices[param]
    return param if dist.kind == "int" else _tidy(dist, param)

  return {k: value(space[k], params[k]) for k in space}


# ---- the store ------------------------------------------------------------------------------
def open_store(tune: Tune, workdir: str | os.PathLike[str], *, create: bool = True) -> list[Trial]:
  """Checks that `workdir` holds this search (writing tune.json if it is new, unless
  `create` is false) and returns its recorded trials."""
  workdir = pathlib.Path(workdir)
  path = workdir / "tune.json"
  identity = _identity(tune)
  if path.is_file():
    stored = fileio.read_json(path, "tune store")
    if not isinstance(stored, dict):
      raise InputError(f"tune store {path} is not a JSON object; it is damaged")
    changed = [k for k in _IDENTITY if stored.get(k) != identity[k]]
    if changed:
      raise InputError(
        f"'{workdir}' holds a search with another {', '.join(changed)}; use another --workdir"
      )
  elif create:
    workdir.mkdir(parents=True, exist_ok=True)
    fileio.write_atomic(path, json.dumps(identity, indent=2) + "\n")
  return read_trials(tune, workdir)


def _identity(tune: Tune) -> dict[str, Any]:
  """The search as JSON values (tuples become lists, as they come back from tune.json)."""
  ident = {k: getattr(tune, k) for k in _IDENTITY}
  ident["space"] = {k: _dist_spec(d) for k, d in tune.space.items()}
  return _jsonable(ident)


def _dist_spec(dist: Dist) -> dict[str, Any]:
  """A distribution as a tune file writes it, with the defaults filled in."""
  if dist.kind == "choice":
    return {"choice": list(dist.choices)}
  if dist.kind == "int":
    return {"int": [dist.low, dist.high], "step": dist.step, "log": dist.log}
  return {dist.kind: [dist.low, dist.high]}


def _jsonable(value: Any) -> Any:
  return json.loads(json.dumps(value))


def read_trials(tune: Tune, workdir: str | os.PathLike[str]) -> list[Trial]:
  """The trials recorded in `workdir/trials.jsonl`, in order, with values as in the space."""
  path = pathlib.Path(workdir) / "trials.jsonl"
  if not path.is_file():
    return []
  trials = []
  for i, line in enumerate(path.read_bytes().splitlines()):
    where = f"'{path}' line {i + 1}"
    try:
      record = json.loads(line.decode("utf-8"))
      params = _from_json(tune.space, record["params"])
    except (ValueError, KeyError, TypeError):
      raise InputError(f"{where} is not a trial of this search's space") from None
    if record.get("trial") != i:
      raise InputError(f"{where} should record trial {i}")
    trials.append(Trial(i, params))
  return trials


def _from_json(space: dict[str, Dist], params: dict[str, Any]) -> dict[str, Any]:
  """Recorded values back to the space's values (a choice (64,) was stored as [64])."""
  if set(params) != set(space):
    raise ValueError("keys differ")
  values = {}
  for key, dist in space.items():
    value = params[key]
    if dist.kind == "choice":
      value = dist.choices[[_jsonable(c) for c in dist.choices].index(value)]
    values[key] = value
  return values


def _record(workdir: pathlib.Path, trial: Trial) -> None:
  """Appends a trial to trials.jsonl before it trains: a kill leaves it to be retrained."""
  with open(workdir / "trials.jsonl", "a") as f:
    f.write(
      json.dumps({"trial": trial.number, "name": trial.name, "params": _jsonable(trial.params)})
      + "\n"
    )


def _runs(tune: Tune, trials: Sequence[Trial]) -> list[Run]:
  """The trials as runs of the runner, which trains, skips and tabulates them."""
  return [
    Run(
      t.name,
      dict(t.params),
      tune.run_seed,
      tune.overrides + tuple(f"{k}={runner.format_value(v)}" for k, v in t.params.items()),
    )
    for t in trials
  ]


def value_of(tune: Tune, workdir: pathlib.Path, trial: Trial) -> float | None:
  """The trial's metric, None when it has no finite one (failed or unfinished)."""
  metrics = runner.read_metrics(workdir / trial.name / "metrics.json")
  if metrics is None:
    return None
  split, _, name = tune.metric.partition("_")
  value = metrics[split].get(name)
  return value if isinstance(value, (int, float)) and math.isfinite(value) else None


# ---- running --------------------------------------------------------------------------------
def run_tune(
  tune: Tune,
  workdir: str | os.PathLike[str],
  *,
  parallel: int = 1,
  quiet: bool = False,
  population: bool = False,
  storage: str | None = None,
  stale_after: float = 120.0,
) -> Outcome:
  """Runs the search to `tune.trials` trials, `parallel` per round (with `population`,
  each round trains in this process as one population); writes the results.

  Holds the search directory's lock; SIGTERM/SIGINT are passed on to the trials training,
  which save checkpoints, and then `Stopped` is raised (the rerun resumes them). With
  `storage`, this is one worker of a search shared through Optuna (see `shared.py`).
  """
  workdir = pathlib.Path(workdir)
  if storage is not None:
    from flaxlstm.search import shared

    return shared.run_worker(
      tune,
      workdir,
      storage,
      parallel=parallel,
      quiet=quiet,
      population=population,
      stale_after=stale_after,
    )
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.Lock(workdir, "flaxlstm tune"), runner.Children() as children:
    return _run_tune(tune, workdir, children, parallel=parallel, quiet=quiet, population=population)


def _run_tune(
  tune: Tune,
  workdir: pathlib.Path,
  children: runner.Children,
  *,
  parallel: int,
  quiet: bool,
  population: bool = False,
) -> Outcome:
  trials = open_store(tune, workdir)
  say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
  search = make_search(tune, len(trials))
  values = {
    t.number: value_of(tune, workdir, t)
    for t, run in zip(trials, _runs(tune, trials))
    if runner.is_done(workdir, run)
  }
  for trial in trials:  # Rebuilds the TPE study from the finished trials.
    if trial.number in values:
      search.report(trial, values[trial.number])
  # Recorded but unfinished (killed, or failed last time): retrained with the same values.
  pending = [t for t in trials if t.number not in values and t.number < tune.trials]
  failures = {
    k: v for k, v in runner.read_failures(workdir).items() if k in {t.name for t in pending}
  }
  say(
    f"tune: {tune.algorithm}, {tune.trials} trials ({len(values)} done, {len(pending)} "
    f"to retrain), minimizing {tune.metric}, {parallel} at a time"
  )
  ran = False
  while True:
    batch, pending = pending[:parallel], pending[parallel:]
    if not batch:
      batch = [
        Trial(n, search.propose(n))
        for n in range(len(trials), min(tune.trials, len(trials) + parallel))
      ]
      if not batch:
        break
      for trial in batch:
        _record(workdir, trial)
      trials += batch
    failed = runner.train_runs(
      tune.config,
      _runs(tune, batch),
      workdir,
      children,
      parallel=parallel,
      quiet=True,
      population=population,
    )
    children.raise_if_stopped("tune")  # the stopped trials are recorded: rerun resumes them
    for trial in batch:
      values[trial.number] = value = value_of(tune, workdir, trial)
      search.report(trial, value)
      failures.pop(trial.name, None)
      if trial.name in failed:
        failures[trial.name] = failed[trial.name]
      say(_progress_line(tune, trial, values, failures, len(values), max(tune.trials, len(trials))))
    # train_runs listed this round's failures only; list the whole search's.
    runner.write_failures(workdir, _runs(tune, trials), failures)
    aggregate(tune, workdir, trials, failures)  # After every round: watch a long search.
    ran = True
  if not ran:  # Nothing left to train: rewrite the results from the store.
    aggregate(tune, workdir, trials, failures)
  best = _read_best(workdir)
  if best is not None:
    say(
      f"best: {best['name']} {tune.metric}={best['value']:.4g} "
      f"(see {workdir / 'results.md'} and best.json)"
    )
  return Outcome(len(trials), len(failures), best)


def _progress_line(
  tune: Tune,
  trial: Trial,
  values: dict[int, float | None],
  failures: dict[str, str],
  done: int,
  total: int,
) -> str:
  head = f"[{done}/{total}]"
  if trial.name in failures:
    return f"{head} FAILED  {trial.name}: {failures[trial.name]}"
  value = values[trial.number]
  finite = {n: v for n, v in values.items() if v is not None}
  best = min(finite, key=lambda n: (finite[n], n)) if finite else None
  shown = "nan" if value is None else f"{value:.4g}"
  tail = f"  (best {finite[best]:.4g}, {Trial(best, {}).name})" if best is not None else ""
  return f"{head} ok      {trial.name}  {tune.metric}={shown}{tail}"


def dry_run_lines(tune: Tune, workdir: str | os.PathLike[str]) -> list[str]:
  """The command of every known trial (finished ones as comments); writes nothing."""
  trials = open_store(tune, workdir, create=False)
  lines = runner.dry_run_lines(tune.config, _runs(tune, trials), workdir)
  rest = range(len(trials), tune.trials)
  if tune.algorithm == "random":
    planned = _runs(tune, [Trial(n, random_params(tune, n)) for n in rest])
    lines += [shlex.join(runner.train_command(tune.config, r, workdir)) for r in planned]
  elif rest:
    lines.append(f"# {len(rest)} more trials, proposed by TPE from the results as they come")
  return lines


# ---- results --------------------------------------------------------------------------------
def aggregate(
  tune: Tune, workdir: str | os.PathLike[str], trials: Sequence[Trial], failures: dict[str, str]
) -> Any:
  """Writes results.csv, results.md, best.json and trials.png; returns the table."""
  import pandas as pd  # only for the tables

  workdir = pathlib.Path(workdir)
  runs = _runs(tune, trials)
  rows = [
    {"trial": t.number} | results.result_row(workdir, run, failures) for t, run in zip(trials, runs)
  ]
  columns = ["trial", "name", *tune.space, *results.METRICS_COLUMNS, "status"]
  table = pd.DataFrame(rows, columns=columns).astype(
    {"params_count": "Int64", "steps": "Int64"}
  )  # Integers even with failed rows.
  table.to_csv(workdir / "results.csv", index=False)
  ranked = _ranked(tune, table)
  (workdir / "results.md").write_text(_markdown(tune, table, ranked))
  _write_best(tune, workdir, trials, runs, ranked)
  _plot(tune, table, workdir / "trials.png")
  return table


def _ranked(tune: Tune, table):
  """Trials with a finite metric, best first (ties: the earlier trial)."""
  ok = table[(table["status"] == "ok") & table[tune.metric].notna()]
  return ok.sort_values([tune.metric, "trial"], kind="stable")


def _markdown(tune: Tune, table, ranked) -> str:
  header = ["rank", "trial", *tune.space, *_TABLE]
  lines = [
    f"{tune.algorithm} search, {len(table)} trials, by {tune.metric} (lower is better)",
    "",
    "| " + " | ".join(header) + " |",
    "|" + "---|" * len(header),
  ]
  for rank, row in enumerate(ranked.to_dict("records"), 1):
    cells = [str(rank), row["name"]] + [_cell(row[k], ".4g") for k in tune.space]
    cells += [_cell(row[k], _TABLE[k]) for k in _TABLE]
    lines.append("| " + " | ".join(cells) + " |")
  missing = table[~table["name"].isin(ranked["name"])]
  if len(missing):
    listed = ", ".join(f"{n} ({s})" for n, s in zip(missing["name"], missing["status"]))
    lines += ["", f"No {tune.metric} for {len(missing)} of {len(table)} trials: {listed}."]
  return "\n".join(lines) + "\n"


def _cell(value: Any, spec: str) -> str:
  import pandas as pd

  if pd.isna(value):
    return "-"
  return format(value, spec) if isinstance(value, float) else str(value)


def _write_best(
  tune: Tune, workdir: pathlib.Path, trials: Sequence[Trial], runs: Sequence[Run], ranked
) -> None:
  """best.json: the best trial and how to retrain it; removed while no trial has a metric."""
  path = workdir / "best.json"
  if ranked.empty:
    path.unlink(missing_ok=True)
    return
  row = ranked.iloc[0]
  index = [t.number for t in trials].index(int(row["trial"]))
  trial, run = trials[index], runs[index]
  # A fresh workdir, with progress output: rerunning into the trial's own folder would
  # only find it finished.
  command = [
    a
    for a in runner.train_command(
      tune.config, dataclasses.replace(run, name="best"), workdir, program=("flaxlstm",)
    )
    if a != "--quiet"
  ]
  best = {
    "trial": trial.number,
    "name": trial.name,
    "metric": tune.metric,
    "value": float(row[tune.metric]),
    "params": _jsonable(trial.params),
    "metrics": {k: float(row[k]) for k in ("val_mse", "val_mae", "test_mse", "test_mae")},
    "config": tune.config,
    "overrides": list(run.overrides),
    "command": shlex.join(command),
  }
  path.write_text(json.dumps(best, indent=2) + "\n")


def _read_best(workdir: pathlib.Path) -> dict[str, Any] | None:
  try:  # rewritten by every aggregate, so a damaged one only means "none yet"
    best = json.loads((workdir / "best.json").read_bytes())
  except (OSError, ValueError):
    return None
  return best if isinstance(best, dict) and "name" in best and "value" in best else None


def _plot(tune: Tune, table, path: pathlib.Path) -> None:
  """The metric of each trial and the running best; failed trials as red marks."""
  import matplotlib.ticker

  from flaxlstm import report

  numbers = table["trial"].to_numpy()
  values = table[tune.metric].where(table["status"] == "ok").to_numpy(float)
  fig = report.figure(figsize=(8, 4))
  ax = fig.add_subplot(1, 1, 1)
  ax.plot(numbers, values, "o", color="tab:blue", label=tune.metric)
  # fmin skips NaN, so a failed trial neither resets nor ends the running best.
  ax.step(numbers, np.fmin.accumulate(values), where="post", color="black", label="running best")
  failed = numbers[np.isnan(values)]
  if failed.size:
    ax.plot(
      failed,
      np.full(failed.size, 0.03),
      "x",
      color="tab:red",
      label="failed",
      transform=ax.get_xaxis_transform(),
    )
  finite = values[np.isfinite(values)]
  # One diverged trial can be 100x the rest; a log axis keeps the good ones apart.
  if finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
    ax.set_yscale("log")
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel("trial")
  ax.set_ylabel(tune.metric.replace("_", " "))
  ax.set_title(f"{tune.algorithm} search")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
