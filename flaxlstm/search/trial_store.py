"""The trial store: a search's workdir holds what it is and every trial it has proposed.

``tune.json`` holds the search (a different search in the same workdir is refused; a larger
``trials`` may extend it) and ``trials.jsonl`` each trial's values, written before the trial
starts, so a killed search knows what it was training. Trial i trains in
``WORKDIR/trial_00i`` as a run of the runner; its ``metrics.json`` there says it finished
and holds its metric.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import pathlib
from typing import Any, Sequence

from flaxlstm import fileio
from flaxlstm.errors import InputError
from flaxlstm.search import runner
from flaxlstm.search.runner import Run
from flaxlstm.search.tune_file import Dist, Tune

# What defines a search: a workdir that holds a search differing in any of these is refused
# (its trials would not be trials of this search). `trials` may change: it extends a search.
_IDENTITY = ("config", "overrides", "space", "metric", "algorithm", "seed")


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


def open_store(tune: Tune, workdir: str | os.PathLike[str], *, create: bool = True) -> list[Trial]:
  """Checks that `workdir` holds this search (writing tune.json if it is new, unless
  `create` is false) and returns its recorded trials."""
  workdir = pathlib.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise InputError(f"--workdir {workdir} is not a directory")
  path = workdir / "tune.json"
  identity = search_identity(tune)
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
    try:
      workdir.mkdir(parents=True, exist_ok=True)
      fileio.write_atomic(path, json.dumps(identity, indent=2) + "\n")
    except OSError as e:
      if e.errno in (errno.ENOSPC, errno.EDQUOT):  # the environment's: the CLI's disk-full line
        raise
      raise InputError(f"cannot create the search store {path}: {e.strerror}") from None
  return read_trials(tune, workdir)


def search_identity(tune: Tune) -> dict[str, Any]:
  """The search as JSON values (tuples become lists, as they come back from tune.json)."""
  ident = {k: getattr(tune, k) for k in _IDENTITY}
  ident["space"] = {k: _dist_spec(d) for k, d in tune.space.items()}
  return jsonable(ident)


def _dist_spec(dist: Dist) -> dict[str, Any]:
  """A distribution as a tune file writes it, with the defaults filled in."""
  if dist.kind == "choice":
    return {"choice": list(dist.choices)}
  if dist.kind == "int":
    return {"int": [dist.low, dist.high], "step": dist.step, "log": dist.log}
  return {dist.kind: [dist.low, dist.high]}


def jsonable(value: Any) -> Any:
  """`value` as it comes back from JSON (tuples become lists)."""
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
      value = dist.choices[[jsonable(c) for c in dist.choices].index(value)]
    values[key] = value
  return values


def record_trial(workdir: pathlib.Path, trial: Trial) -> None:
  """Appends a trial to trials.jsonl before it trains: a kill leaves it to be retrained."""
  with open(workdir / "trials.jsonl", "a") as f:
    f.write(
      json.dumps({"trial": trial.number, "name": trial.name, "params": jsonable(trial.params)})
      + "\n"
    )


def as_runs(tune: Tune, trials: Sequence[Trial]) -> list[Run]:
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
