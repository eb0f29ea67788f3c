"""M4 Weekly: the packaged panel recipe (`--config panel:13`) against M4's published rows.

  python experiments/m4/weekly.py --seeds 0 1 2               # the test score (M4 protocol)
  python experiments/m4/weekly.py --validate --seeds 0        # the validation score
  python experiments/m4/weekly.py --validate 1 2 3 --seeds 0 1 2 \
      -- --config.data.lookback=39                           # a candidate at three origins

Protocol (M4, the dataset's README.md): one global model trained on every series' history
(`weekly_train.csv`, a production fit: `data.test_size=0`, each series' last 13 rows kept
for early stopping), forecasting each series' next 13 weeks with `flaxlstm predict`, scored
against `weekly_test.csv` with sMAPE, MASE (scale: the mean absolute one-step change of the
series' own training history) and OWA relative to Naive2 (9.161 sMAPE, 2.777 MASE on Weekly;
for weekly data Naive2 is the naive forecast, since the seasonality is 1).

Every choice (the recipe's settings, and anything passed after `--`) is made with
`--validate`, which cuts each series' last 13 training rows off as a stand-in test set and
runs the same protocol on the rest: `weekly_test.csv` is never read then. `--validate 1 2 3`
does so at three forecast origins (origin K: the 13 weeks that start K x 13 weeks before
the end of the training rows, the rows after them unused), each in WORKDIR/originK, and
prints their mean: one origin is a noisy judge. Series too short for an origin's history
are left out of its training file and its scores (`--min-history`; by default the 65
series with fewer than 78 weeks there). The test score is
computed once a recipe is frozen. Naive and seasonal naive (52 weeks) are scored beside it;
the naive forecast reproducing Naive2's published numbers checks the metric code.

A forecast with quantile columns (the recipe's quantile head) is also scored as intervals:
the coverage of its central 80% and 95% intervals and the 95% interval's MSIS (M4's
interval score), beside the naive forecast's random-walk intervals (`naive_bounds`).

With several seeds the script reports each seed, their mean and standard deviation, and the
median of the seeds' forecasts (an ensemble; each quantile's median for the intervals).
`--history N` trains on each series' last N rows only (a validation candidate; the recipe's
`data.recent_train_rows` does it in the data pipeline). Results go to
WORKDIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import pandas as pd

from flaxlstm import cli, host
from flaxlstm.forecast import metrics

HORIZON = 13
SEASON = 52  # Weeks per year, for the seasonal naive forecast only.
NAIVE2 = {"smape": 9.161, "mase": 2.777}  # M4's published Naive2 on Weekly.


def load(data_dir: pathlib.Path, origin: int) -> tuple[pd.DataFrame, pd.DataFrame]:
  """(history, the 13 weeks after it) per series: the training file and the test file at
  origin 0; at a validation origin k > 0 the history less its last k x 13 rows and the 13
  rows after that, without reading the test file."""
  train = pd.read_csv(data_dir / "weekly_train.csv", parse_dates=["ds"])
  train = train.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)
  if origin:
    back = train.groupby("unique_id").cumcount(ascending=False)
    kept, after = (
      back >= origin * HORIZON,
      back.between((origin - 1) * HORIZON, origin * HORIZON - 1),
    )
    return train[kept].reset_index(drop=True), train[after].reset_index(drop=True)
  test = pd.read_csv(data_dir / "weekly_test.csv", parse_dates=["ds"])
  return train, test.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


def matrix(frame: pd.DataFrame, ids: list[str], column: str = "y") -> np.ndarray:
  """The first `HORIZON` values of each series, in `ids` order: ``(series, HORIZON)``."""
  groups = frame.groupby("unique_id")[column]
  return np.stack([groups.get_group(i).to_numpy(np.float64)[:HORIZON] for i in ids])


# The intervals scored where a forecast has quantiles (a distribution head): central 80%
# and 95%, the latter also by M4's MSIS.
INTERVALS = {"80": (0.1, 0.9), "95": (0.025, 0.975)}
_Z = {"80": 1.2815516, "95": 1.9599640}  # standard normal quantiles of 0.9 and 0.975


def score(
  actual: np.ndarray,
  forecast: np.ndarray,
  scales: np.ndarray,
  bounds: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, float]:
  """sMAPE, MASE and OWA; with `bounds` (interval name -> (lower, upper)), each
  interval's coverage in percent and the 95% interval's MSIS."""
  s = metrics.smape(actual, forecast)
  m = metrics.mase(actual, forecast, scales)
  out = {"smape": s, "mase": m, "owa": metrics.owa(s, m, NAIVE2["smape"], NAIVE2["mase"])}
  for name, (lo, up) in (bounds or {}).items():
    out[f"cov{name}"] = float(100.0 * np.mean((actual >= lo) & (actual <= up)))
  if bounds and "95" in bounds:
    out["msis"] = metrics.msis(actual, *bounds["95"], scales, alpha=0.05)
  return out


def naive_bounds(history: pd.DataFrame, ids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The naive forecast's intervals as a random walk's: the last value plus or minus
  `z sigma sqrt(h)`, sigma the deviation of the series' one-step changes."""
  groups = history.groupby("unique_id")["y"]
  last, sigma = [], []
  for i in ids:
    y = groups.get_group(i).to_numpy(np.float64)
    last.append(y[-1])
    sigma.append(np.std(np.diff(y), ddof=1))
  spread = np.array(sigma)[:, None] * np.sqrt(np.arange(1, HORIZON + 1))[None]
  level = np.array(last)[:, None]
  return {k: (level - z * spread, level + z * spread) for k, z in _Z.items()}


def forecast_bounds(table: pd.DataFrame, ids: list[str]):
  """The forecast's interval bounds from its quantile columns, or None without them."""
  columns = {q: f"y_q{q:g}" for pair in INTERVALS.values() for q in pair}
  if not all(c in table.columns for c in columns.values()):
    return None
  return {
    k: (matrix(table, ids, columns[lo]), matrix(table, ids, columns[up]))
    for k, (lo, up) in INTERVALS.items()
  }


def baselines(history: pd.DataFrame, ids: list[str]) -> dict[str, np.ndarray]:
  """Naive (the last value) and seasonal naive (the last 52 weeks, where a series has them;
  the naive forecast otherwise), ``(series, HORIZON)`` each."""
  naive, seasonal = [], []
  for name in ids:
    y = history.loc[history.unique_id == name, "y"].to_numpy(np.float64)
    naive.append(np.full(HORIZON, y[-1]))
    if len(y) >= SEASON:
      h = np.arange(HORIZON)
      seasonal.append(y[len(y) - SEASON + h % SEASON])
    else:
      seasonal.append(naive[-1])
  return {"naive": np.stack(naive), "seasonal_naive": np.stack(seasonal)}


def train_and_forecast(
  data_path: pathlib.Path, workdir: pathlib.Path, seed: int, overrides: list[str]
) -> tuple[pd.DataFrame, float]:
  """Trains `panel:13` on `data_path` (a production fit) and forecasts every series."""
  run = workdir / f"seed{seed}"
  out = run / "forecast.csv"
  started = time.time()
  if not out.exists():
    train = ["train", "--quiet", "--config", f"panel:{HORIZON}", "--workdir", str(run)]
    train += [f"--config.data.path={data_path}", "--config.data.test_size=0"]
    train += [f"--config.seed={seed}", *overrides]
    print("flaxlstm " + " ".join(train[1:]), flush=True)
    if cli.main(train) != 0:
      sys.exit(f"training failed: {run}")
    predict = ["predict", "--workdir", str(run), "--data", str(data_path), "--out", str(out)]
    if cli.main(predict) != 0:
      sys.exit(f"predict failed: {run}")
    (run / "train_seconds.txt").write_text(f"{time.time() - started:.1f}\n")
  seconds = float((run / "train_seconds.txt").read_text())
  return pd.read_csv(out, parse_dates=["origin", "date"]), seconds


def evaluate(args: argparse.Namespace, origin: int, workdir: pathlib.Path) -> dict[str, dict]:
  """Trains and scores every seed at one origin (0: the test file; k > 0: the holdout k
  horizons before the end of the training rows); the results, also in workdir."""
  workdir.mkdir(parents=True, exist_ok=True)
  history, future = load(args.data_dir, origin)
  # A validation origin leaves the shortest series (80 weeks) too few rows for the recipe's
  # lookback (4 horizons), a training window's horizon and the early-stopping rows (6
  # horizons in all): scored without them, the baselines too.
  min_history = args.min_history if args.min_history >= 0 else 6 * HORIZON * (origin > 0)
  left_out = 0
  if min_history:
    lengths = history.groupby("unique_id").size()
    short = lengths.index[lengths < min_history]
    history, future = history[~history.unique_id.isin(short)], future[~future.unique_id.isin(short)]
    left_out = len(short)
  ids = sorted(history.unique_id.unique())
  if (
    sorted(future.unique_id.unique()) != ids
    or (future.groupby("unique_id").size() != HORIZON).any()
  ):
    sys.exit("the history and the 13 weeks after it name different series")
  actual = matrix(future, ids)
  scales = np.array(
    [metrics.mase_scale(history.loc[history.unique_id == i, "y"].to_numpy()) for i in ids]
  )
  # The file the recipe trains on: the whole history, or the history less the holdout.
  data_path = workdir / "history.csv"
  if not data_path.exists():
    kept = history
    if args.history:
      kept = history[history.groupby("unique_id").cumcount(ascending=False) < args.history]
    kept.to_csv(data_path, index=False, date_format="%Y-%m-%d")

  base = baselines(history, ids)
  results: dict[str, dict] = {name: score(actual, f, scales) for name, f in base.items()}
  forecasts, all_bounds = [], []
  for seed in args.seeds:
    table, seconds = train_and_forecast(data_path, workdir, seed, list(args.overrides))
    table = table.sort_values(["unique_id", "step"])
    if sorted(table.unique_id.unique()) != ids:
      sys.exit(f"seed {seed}: the forecast does not cover every series")
    f, bounds = matrix(table, ids), forecast_bounds(table, ids)
    forecasts.append(f)
    all_bounds.append(bounds)
    results[f"seed{seed}"] = {**score(actual, f, scales, bounds), "seconds": seconds}
  if all_bounds[0] is not None:  # the naive forecast's intervals, beside the model's
    results["naive"] = score(actual, base["naive"], scales, naive_bounds(history, ids))
  seeds = [results[f"seed{s}"] for s in args.seeds]
  for key in seeds[0]:  # the scores, then the seconds
    values = np.array([r[key] for r in seeds])
    results.setdefault("mean", {})[key] = float(values.mean())
    results.setdefault("std", {})[key] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
  if len(forecasts) > 1:
    median = lambda arrays: np.median(np.stack(arrays), axis=0)
    pooled = None
    if all_bounds[0] is not None:  # each bound's median over the seeds
      pooled = {k: tuple(median([b[k][j] for b in all_bounds]) for j in (0, 1)) for k in INTERVALS}
    results["median_of_seeds"] = score(actual, median(forecasts), scales, pooled)
  results["_args"] = {
    "origin": origin,
    "series": len(ids),
    "left_out": left_out,
    "history": args.history,
    "seeds": args.seeds,
    "overrides": list(args.overrides),
  }
  (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  split = "test (weekly_test.csv)"
  if origin:
    first, last = origin * HORIZON, (origin - 1) * HORIZON + 1
    split = f"validation origin {origin} (training weeks {first} to {last} from the end)"
  print(f"M4 Weekly, {split}, {len(ids)} series ({left_out} too short left out):")
  for name, r in results.items():
    if name.startswith("_"):
      continue
    extra = "".join(f"  {k} {r[k]:.1f}" for k in ("cov80", "cov95", "msis") if k in r)
    extra += f"  {r['seconds']:.0f} s" if "seconds" in r else ""
    print(f"  {name:>16}: sMAPE {r['smape']:.3f}  MASE {r['mase']:.3f}  OWA {r['owa']:.3f}{extra}")
  return results


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data-dir", default="/work/shared/datasets/m4", type=pathlib.Path)
  p.add_argument("--workdir", default=None, type=pathlib.Path, help="default: runs/m4_weekly[_val]")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  p.add_argument(
    "--validate",
    type=int,
    nargs="*",
    default=None,
    metavar="K",
    help="score on holdouts of training rows instead of the test file: at each origin K, "
    "the 13 weeks that start K x 13 weeks before the end of the training rows (no K: 1, "
    "the last 13)",
  )
  p.add_argument(
    "--history",
    type=int,
    default=0,
    help="train on each series' last N rows only (0 = all); the MASE scale uses them all",
  )
  p.add_argument(
    "--min-history",
    type=int,
    default=-1,
    help="leave out the series with fewer rows of history (default: 78 at a validation "
    "origin, none on the test file)",
  )
  p.add_argument("overrides", nargs="*", help="config overrides for the recipe, after --")
  args = p.parse_args(argv)
  origins = [0] if args.validate is None else args.validate or [1]
  if args.validate and (min(origins) < 1 or len(set(origins)) != len(origins)):
    p.error("--validate takes distinct origins K >= 1")
  workdir = args.workdir or pathlib.Path("runs/m4_weekly" + ("_val" if origins != [0] else ""))
  results = {
    k: evaluate(args, k, workdir if len(origins) == 1 else workdir / f"origin{k}") for k in origins
  }
  if len(origins) > 1:
    # Every origin's OWA relative to the naive forecast's there: origins differ in how
    # hard they are (the naive OWA ranges over them), and the mean should not be ruled by
    # the hardest.
    print(f"Mean over origins {', '.join(map(str, origins))}:")
    for name in ("naive", "mean", "median_of_seeds"):
      if all(name in r for r in results.values()):
        owa = np.mean([r[name]["owa"] for r in results.values()])
        rel = np.mean([r[name]["owa"] / r["naive"]["owa"] for r in results.values()])
        print(f"  {name:>16}: OWA {owa:.3f}  relative to naive {rel:.3f}")
  return 0


if __name__ == "__main__":
  host.reuse_freed_memory()  # as the flaxlstm program does, before JAX starts
  sys.exit(main())
