"""One search shared by many workers: `flaxlstm tune FILE --storage URL`.

The distributed engine is Optuna's: every worker (a SLURM array task, a shell loop on
several machines) opens the same study in the same storage and repeats ask -> train ->
tell until the search has its `trials`. Storage:

* a file path: Optuna's journal file storage (`JournalFileBackend`), for a shared
  filesystem (NFS, Lustre): appends under a file lock, no server;
* an RDB URL (`sqlite:///search.db`, `postgresql://...`): Optuna's `RDBStorage`.

The workers share the search directory (``--workdir``, also on the shared filesystem):
`tune.json` (the same search, or a worker is refused), one folder per trial, exactly as a
local search's, and the results, which every worker rewrites when it stops. The study is
named after the search's identity, so one storage can hold many searches.

No trial is lost or run twice:
* Optuna numbers trials atomically, and a trial trains in `trial_<number>`.
* While a worker trains a trial it touches `heartbeats/<trial>` every `HEARTBEAT_S`.
  Any worker that finds a RUNNING trial whose heartbeat is older than `stale_after` seconds
  (its worker was killed) marks it FAIL and enqueues the same values as a retry that
  trains in the *same* folder, so it resumes from the killed trial's checkpoint. The FAIL
  is a state change the storage applies once: of two workers that find the same stale
  trial, only the first enqueues a retry.
* A worker asks only while the trials so far (retries counted once) are fewer than
  `trials`; one that loses the race for the last trial gives it back (PRUNED, not counted).

Proposals: algorithm "random" draws trial i from (seed, i) as a local search does, whichever
worker trains it; TPE's sampler is seeded by (seed, trials in the study), so its proposals
depend on the order in which the workers' results arrive.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pathlib
import threading
import time
import warnings
from typing import Any, Iterator

import numpy as np

from flaxlstm.errors import InputError
from flaxlstm.search import runner, searchers, trial_store, tune_results
from flaxlstm.search.trial_store import Outcome, Trial
from flaxlstm.search.tune_file import Tune, import_optuna

HEARTBEAT_S = 5.0  # how often a training worker touches its trials' heartbeat files
_NAME = "flaxlstm_name"  # user attr: the trial folder (a retry trains in its original's)
_NUMBER = "flaxlstm_number"  # user attr: the trial number shown (the original's for a retry)
_STALE = "flaxlstm_stale"  # user attr: a FAILed trial that was retried (not counted)
_OVER = "flaxlstm_over_budget"  # user attr: asked past the budget, given back
_ERROR = "flaxlstm_error"  # user attr: a failed trial's last error line


def open_storage(optuna, url: str) -> Any:
  """Optuna storage for `url`: an RDB URL (`dialect://...`) or a journal file path."""
  if "://" in url:
    try:
      return optuna.storages.RDBStorage(url)
    except Exception as e:  # sqlalchemy's many types: a bad URL or an unreachable server
      first = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise InputError(f"--storage {url}: cannot open the database ({first})") from None
  path = pathlib.Path(url)
  if path.is_dir() or not path.parent.is_dir():
    raise InputError(f"--storage {url}: not a file in an existing directory")
  journal = optuna.storages.journal
  try:
    # Opened for appending as the workers will (Optuna creates a missing file this way),
    # so an unwritable path is one line here rather than a traceback at the first write.
    with open(path, "ab"):
      pass
    return optuna.storages.JournalStorage(journal.JournalFileBackend(str(path)))
  except OSError as e:
    raise InputError(f"--storage {url}: cannot write the journal file ({e.strerror})") from None


@contextlib.contextmanager
def _removed_if_refused(url: str) -> Iterator[None]:
  """Removes the journal file this worker created if the search is then refused: a refused
  command leaves nothing behind (an existing journal, other workers' too, is kept)."""
  path = None if "://" in url else pathlib.Path(url)
  new = path is not None and not path.exists()
  try:
    yield
  except BaseException:
    # Only while still empty: another worker may have begun writing to it meanwhile.
    if new and path is not None and path.is_file() and path.stat().st_size == 0:
      path.unlink()
    raise


def study_name(tune: Tune) -> str:
  identity = json.dumps(trial_store.search_identity(tune), sort_keys=True)
  return "flaxlstm-" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def run_worker(
  tune: Tune,
  workdir: pathlib.Path,
  storage_url: str,
  *,
  parallel: int,
  quiet: bool,
  population: bool,
  stale_after: float,
) -> Outcome:
  """One worker: ask, train and tell rounds of `parallel` trials until the search is full."""
  optuna = import_optuna()
  say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
  # The same search in this workdir, or refused, before the storage is created.
  trial_store.open_store(tune, workdir, create=False)
  with _removed_if_refused(storage_url):
    storage = open_storage(optuna, storage_url)
    trial_store.open_store(tune, workdir)
    study = optuna.create_study(
      study_name=study_name(tune), storage=storage, direction="minimize", load_if_exists=True
    )
  distributions = searchers.optuna_distributions(optuna, tune.space)
  state = optuna.trial.TrialState
  say(f"tune worker: study {study.study_name}, {tune.trials} trials, {parallel} per round")
  with runner.Children() as children:
    while True:
      _retry_stale(optuna, study, storage, workdir, stale_after, say)
      study.sampler = _sampler(optuna, tune, len(study.get_trials(deepcopy=False)))
      batch = _ask(optuna, study, tune, distributions, parallel)
      if not batch:
        # Full. Trials other workers are training may still fail over to us if those
        # workers die: stay until none is running.
        if not study.get_trials(deepcopy=False, states=(state.RUNNING,)):
          break
        time.sleep(_interval(stale_after))
        continue
      trials = [t for _, t in batch]
      with _heartbeats(workdir, [t.name for t in trials], _interval(stale_after)):
        failed = runner.train_runs(
          tune.config,
          trial_store.as_runs(tune, trials),
          workdir,
          children,
          parallel=parallel,
          quiet=True,
          population=population,
        )
      children.raise_if_stopped("tune worker")  # the trials stay RUNNING: retried later
      for asked, trial in batch:
        value = trial_store.value_of(tune, workdir, trial)
        if value is None:
          asked.set_user_attr(_ERROR, failed.get(trial.name, "no metric"))
          study.tell(asked, state=state.FAIL)
        else:
          study.tell(asked, value)
        shown = "FAILED " + failed.get(trial.name, "") if value is None else f"{value:.4g}"
        say(f"{trial.name}  {tune.metric}={shown}")
  trials, failures = _finished(optuna, study, tune, workdir)
  runner.write_failures(workdir, trial_store.as_runs(tune, trials), failures)
  tune_results.aggregate(tune, workdir, trials, failures)
  best = tune_results.read_best(workdir)
  return Outcome(len(trials), len(failures), best)


def _sampler(optuna, tune: Tune, n_trials: int) -> Any:
  if tune.algorithm == "random":
    return _random_sampler(optuna, tune)
  seed = int(np.random.SeedSequence([tune.seed, n_trials]).generate_state(1)[0])
  with warnings.catch_warnings():  # constant_liar is "experimental" in optuna 4
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    # constant_liar: the trials other workers are training count as bad results, so that
    # concurrent proposals spread out.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _counts(t: Any) -> bool:
  """Whether a study trial takes a place in the budget (retried and given-back ones do not)."""
  return not t.user_attrs.get(_STALE) and not t.user_attrs.get(_OVER)


def _ask(optuna, study, tune: Tune, distributions: dict, n: int) -> list[tuple[Any, Trial]]:
  state = optuna.trial.TrialState
  batch: list[tuple[Any, Trial]] = []
  for _ in range(n):
    current = study.get_trials(deepcopy=False)
    waiting = any(t.state == state.WAITING for t in current)
    if not waiting and sum(_counts(t) for t in current) >= tune.trials:
      break
    asked = study.ask(distributions)
    if _NAME not in asked.user_attrs:  # a new trial, not a retry: is there still room?
      before = [
        t for t in study.get_trials(deepcopy=False) if t.number < asked.number and _counts(t)
      ]
      if len(before) >= tune.trials:
        asked.set_user_attr(_OVER, True)
        study.tell(asked, state=state.PRUNED)
        break
    number = int(asked.user_attrs.get(_NUMBER, asked.number))
    batch.append((asked, Trial(number, searchers.from_optuna(tune.space, asked.params))))
  return batch


def _retry_stale(optuna, study, storage, workdir: pathlib.Path, stale_after: float, say) -> None:
  """FAILs the RUNNING trials whose worker stopped beating and enqueues their retries."""
  state = optuna.trial.TrialState
  now = time.time()
  for t in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
    number = int(t.user_attrs.get(_NUMBER, t.number))
    name = Trial(number, {}).name
    beat = workdir / "heartbeats" / name
    last = t.datetime_start.timestamp() if t.datetime_start else now
    if beat.exists():
      last = max(last, beat.stat().st_mtime)
    if now - last <= stale_after:
      continue
    try:
      storage.set_trial_user_attr(t._trial_id, _STALE, True)
      storage.set_trial_state_values(t._trial_id, state=state.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
      continue  # another worker got there first (or it just finished)
    study.enqueue_trial(t.params, user_attrs={_NAME: name, _NUMBER: number})
    say(f"{name}: its worker stopped {now - last:.0f} s ago; retrying it")


def _interval(stale_after: float) -> float:
  return min(HEARTBEAT_S, stale_after / 4)


@contextlib.contextmanager
def _heartbeats(workdir: pathlib.Path, names: list[str], every: float) -> Iterator[None]:
  folder = workdir / "heartbeats"
  folder.mkdir(exist_ok=True)
  paths = [folder / n for n in names]
  done = threading.Event()

  def beat() -> None:
    while True:
      for p in paths:
        p.touch()
      if done.wait(every):
        return

  thread = threading.Thread(target=beat, daemon=True)
  thread.start()
  try:
    yield
  finally:
    done.set()
    thread.join()


def _finished(optuna, study, tune: Tune, workdir: pathlib.Path) -> tuple[list[Trial], dict]:
  """The search's trials (a retry in its original's place), in number order."""
  state = optuna.trial.TrialState
  by_number: dict[int, Trial] = {}
  failures: dict[str, str] = {}
  for t in study.get_trials(deepcopy=False):
    if not _counts(t) or t.state == state.WAITING:
      continue
    number = int(t.user_attrs.get(_NUMBER, t.number))
    trial = Trial(number, searchers.from_optuna(tune.space, t.params))
    by_number[number] = trial
    if t.state == state.FAIL:
      failures[trial.name] = str(t.user_attrs.get(_ERROR, "failed (its worker's logs/)"))
    else:
      failures.pop(trial.name, None)
  return [by_number[n] for n in sorted(by_number)], failures


def _random_sampler(optuna, tune: Tune) -> Any:
  """Optuna sampler for algorithm "random": trial i's values are `random_params(tune, i)`,
  the same as a local search's, whichever worker asks for trial i."""

  class FromNumber(optuna.samplers.BaseSampler):
    def infer_relative_search_space(self, study, trial) -> dict:
      return {}

    def sample_relative(self, study, trial, search_space) -> dict:
      return {}

    def sample_independent(self, study, trial, name, distribution) -> Any:
      values = searchers.random_params(tune, trial.number)
      return searchers.to_optuna(tune.space, values)[name]

  return FromNumber()
