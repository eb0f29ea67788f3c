"""Results of a search, from its runs' metrics.json: `results.csv` (one row per run),
`results.md` and the plots, for sweeps (mean ± std over seeds per setting, one plot per
swept key); a tune search's tables (tune_results.py) are built from the same rows."""

from __future__ import annotations

import math
import pathlib
import re
from typing import Any, Sequence

from flaxlstm import report
from flaxlstm.search.runner import Run, read_failures, read_metrics, short_value

# Metrics columns of results.csv, read from each run's metrics.json.
METRICS_COLUMNS = (
  "val_mse",
  "val_mae",
  "test_mse",
  "test_mae",
  "naive_test_mse",
  "test_mse_vs_naive",
  "params_count",
  "epochs",
  "steps",
  "train_wall_time_s",
)
# Columns summarized (mean ± std over seeds) in a sweep's results.md.
_SUMMARY = ("val_mse", "test_mse", "test_mae", "naive_test_mse")


def result_row(workdir: pathlib.Path, run: Run, failures: dict[str, str]) -> dict[str, Any]:
  """One results.csv row: the run's setting, seed and metrics (NaN until it has finished)."""
  row = {k: _table_value(v) for k, v in run.setting.items()}
  row.update(seed=run.seed, name=run.name)
  row.update({m: math.nan for m in METRICS_COLUMNS})
  path = workdir / run.name / "metrics.json"
  m = read_metrics(path)
  if m is not None:
    naive = m.get("baselines", {}).get("naive", {}).get("test", {}).get("mse", math.nan)
    test = m.get("test", {})  # none in a production fit (data.test_size=0)
    row.update(
      val_mse=m["val"]["mse"],
      val_mae=m["val"]["mae"],
      test_mse=test.get("mse", math.nan),
      test_mae=test.get("mae", math.nan),
      naive_test_mse=naive,
      test_mse_vs_naive=test.get("mse", math.nan) / naive if naive else math.nan,
      params_count=m.get("params_count"),
      epochs=m.get("epochs"),
      steps=m.get("steps"),
      train_wall_time_s=m.get("train_wall_time_s"),
    )
    row["status"] = "ok"
  elif path.exists():
    row["status"] = "damaged"  # metrics.json unreadable: rerunning the sweep rewrites it
  else:
    row["status"] = "failed" if run.name in failures else "missing"
  return row


def _table_value(value: Any) -> Any:
  """Scalars stay as they are (numeric axes); tuples become text such as "64-64"."""
  return short_value(value) if isinstance(value, (tuple, list)) else value


def sweep_tables(
  runs: Sequence[Run], dims: Sequence[tuple[str, ...]], workdir: pathlib.Path
) -> Any:
  """Writes results.csv, results.md and one PNG per swept dimension (`dims`: one key per
  grid key, the zip keys as one group); returns the table."""
  import pandas as pd  # only for the tables

  workdir.mkdir(parents=True, exist_ok=True)
  failures = read_failures(workdir)
  rows = [result_row(workdir, run, failures) for run in runs]
  # Counts stay integers in the CSV even when failed runs leave gaps.
  table = pd.DataFrame(rows).astype({"params_count": "Int64", "steps": "Int64"})
  table.to_csv(workdir / "results.csv", index=False)
  keys = [k for dim in dims for k in dim]
  (workdir / "results.md").write_text(_markdown(table, keys))
  for dim in dims:
    _plot(table, dim, keys, workdir / f"{_file_name('+'.join(dim))}.png")
  return table


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
  ok = table[table["status"] == "ok"]
  others = [k for k in keys if k not in dim]
  x_labels = list(
    dict.fromkeys("/".join(str(v) for v in row) for row in table[list(dim)].itertuples(index=False))
  )
  numeric = len(dim) == 1 and all(
    isinstance(v, (int, float)) and not isinstance(v, bool) for v in table[dim[0]]
  )
  fig = report.figure(figsize=(10, 4))
  for i, metric in enumerate(("val_mse", "test_mse")):
    ax = fig.add_subplot(1, 2, i + 1)
    line_groups = ok.groupby(others, sort=False, dropna=False) if others else [((), ok)]
    for line_key, group in line_groups:
      line_key = line_key if isinstance(line_key, tuple) else (line_key,)
      stats = group.groupby(list(dim), sort=False)[metric].agg(["mean", "std"]).reset_index()
      labels = ["/".join(str(v) for v in row) for row in stats[list(dim)].itertuples(index=False)]
      xs = stats[dim[0]] if numeric else [x_labels.index(label) for label in labels]
      label = ", ".join(f"{k}={v}" for k, v in zip(others, line_key)) or None
      ax.errorbar(
        xs, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3, label=label
      )
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
