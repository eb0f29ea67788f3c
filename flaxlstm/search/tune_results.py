"""A tune search's results, rewritten from its trials' metrics after every round:
``results.csv`` (one row per trial), ``results.md`` (trials best first), ``best.json`` (the
best trial's values, its override list and the command that retrains it) and ``trials.png``
(metric per trial, running best).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shlex
from typing import Any, Sequence

import numpy as np

from flaxlstm.search import results, runner, trial_store
from flaxlstm.search.runner import Run
from flaxlstm.search.trial_store import Trial
from flaxlstm.search.tune_file import Tune

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


def aggregate(
  tune: Tune, workdir: str | os.PathLike[str], trials: Sequence[Trial], failures: dict[str, str]
) -> Any:
  """Writes results.csv, results.md, best.json and trials.png; returns the table."""
  import pandas as pd  # only for the tables

  workdir = pathlib.Path(workdir)
  runs = trial_store.as_runs(tune, trials)
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
    "params": trial_store.jsonable(trial.params),
    "metrics": {k: float(row[k]) for k in ("val_mse", "val_mae", "test_mse", "test_mae")},
    "config": tune.config,
    "overrides": list(run.overrides),
    "command": shlex.join(command),
  }
  path.write_text(json.dumps(best, indent=2) + "\n")


def read_best(workdir: pathlib.Path) -> dict[str, Any] | None:
  """best.json, None while there is none."""
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
