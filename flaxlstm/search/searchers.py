"""Proposing trials: seeded random search and Optuna's TPE, and the conversions between a
tune file's space and Optuna's distributions (shared.py's workers use them too).

Random search draws trial i from (seed, i) alone; TPE (Optuna's ``TPESampler``, ask/tell,
no database) proposes from every result so far, and a resumed search rebuilds its study
from the finished trials in the store.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from flaxlstm.search.trial_store import Trial
from flaxlstm.search.tune_file import Dist, Tune, import_optuna


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
    optuna = import_optuna()
    self.tune, self._optuna = tune, optuna
    self._asked: dict[int, Any] = {}
    self.distributions = optuna_distributions(optuna, tune.space)
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
    return from_optuna(self.tune.space, asked.params)

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
        params=to_optuna(self.tune.space, trial.params),
        distributions=self.distributions,
      )
    )


def make_search(tune: Tune, recorded: int) -> RandomSearch | TpeSearch:
  """The proposer of `tune.algorithm`; `recorded`: trials already in the store."""
  return TpeSearch(tune, recorded) if tune.algorithm == "tpe" else RandomSearch(tune)


def optuna_distributions(optuna, space: dict[str, Dist]) -> dict[str, Any]:
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


def to_optuna(space: dict[str, Dist], params: dict[str, Any]) -> dict[str, Any]:
  """A trial's values as Optuna params (a choice as its index)."""
  return {
    k: space[k].choices.index(v) if space[k].kind == "choice" else v for k, v in params.items()
  }


def from_optuna(space: dict[str, Dist], params: dict[str, Any]) -> dict[str, Any]:
  """Optuna params back to a trial's values, floats tidied as random search's are."""

  def value(dist: Dist, param: Any) -> Any:
    if dist.kind == "choice":
      return dist.choices[param]
    return param if dist.kind == "int" else _tidy(dist, param)

  return {k: value(space[k], params[k]) for k in space}
