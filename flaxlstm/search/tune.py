"""Hyperparameter search: propose trials (random or Optuna TPE), train them, keep the best.

A tune file defines the search (tune_file.py documents the format). Trial i trains in
``WORKDIR/trial_00i`` exactly like a sweep run (see runner.py): its own ``flaxlstm train``
process with the fixed overrides and its values, its log in ``WORKDIR/logs/``, a failure
listed in ``failures.txt`` without stopping the search. The trials are proposed by random
search or TPE (searchers.py). ``--parallel N`` trains in rounds of N trials: each round
proposes N trials (TPE from the results of the earlier rounds) and starts when the previous
round has finished; with ``--population`` each round trains in this process as one
population (train/population.py). ``--storage URL`` makes this process one worker of a
search shared by many through Optuna (shared.py).

The workdir is the store (trial_store.py), so a killed search resumes: a rerun skips
finished trials (``metrics.json`` present), retrains recorded unfinished or failed ones with
their recorded values, rebuilds the TPE study from the finished ones and proposes only the
rest; a larger ``--trials`` extends a finished search. The results (tune_results.py) are
rewritten after every round.
"""

from __future__ import annotations

import os
import pathlib
import shlex

from flaxlstm.search import runner, shared, trial_store, tune_results
from flaxlstm.search.searchers import make_search, random_params
from flaxlstm.search.trial_store import Outcome, Trial
from flaxlstm.search.tune_file import Tune
from flaxlstm.train import lock as lock_lib


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
  with lock_lib.Lock(workdir, "flaxlstm tune"), runner.Children() as children:
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
  trials = trial_store.open_store(tune, workdir)
  say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
  search = make_search(tune, len(trials))
  values = {
    t.number: trial_store.value_of(tune, workdir, t)
    for t, run in zip(trials, trial_store.as_runs(tune, trials))
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
        trial_store.record_trial(workdir, trial)
      trials += batch
    failed = runner.train_runs(
      tune.config,
      trial_store.as_runs(tune, batch),
      workdir,
      children,
      parallel=parallel,
      quiet=True,
      population=population,
    )
    children.raise_if_stopped("tune")  # the stopped trials are recorded: rerun resumes them
    for trial in batch:
      values[trial.number] = value = trial_store.value_of(tune, workdir, trial)
      search.report(trial, value)
      failures.pop(trial.name, None)
      if trial.name in failed:
        failures[trial.name] = failed[trial.name]
      say(_progress_line(tune, trial, values, failures, len(values), max(tune.trials, len(trials))))
    # train_runs listed this round's failures only; list the whole search's.
    runner.write_failures(workdir, trial_store.as_runs(tune, trials), failures)
    # After every round: watch a long search.
    tune_results.aggregate(tune, workdir, trials, failures)
    ran = True
  if not ran:  # Nothing left to train: rewrite the results from the store.
    tune_results.aggregate(tune, workdir, trials, failures)
  best = tune_results.read_best(workdir)
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
  trials = trial_store.open_store(tune, workdir, create=False)
  lines = runner.dry_run_lines(tune.config, trial_store.as_runs(tune, trials), workdir)
  rest = range(len(trials), tune.trials)
  if tune.algorithm == "random":
    planned = trial_store.as_runs(tune, [Trial(n, random_params(tune, n)) for n in rest])
    lines += [shlex.join(runner.train_command(tune.config, r, workdir)) for r in planned]
  elif rest:
    lines.append(f"# {len(rest)} more trials, proposed by TPE from the results as they come")
  return lines
