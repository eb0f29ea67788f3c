"""Forecast distributions on ETTh1 (univariate, horizon 24): how the recipe was chosen, and
its table against split-conformal intervals.

  python experiments/ett/probabilistic_table.py               # selection + 3-seed table
  python experiments/ett/probabilistic_table.py --data ETTh2.csv --workdir runs/p2 --no-readme

1. Selection (seed 0, validation split only): every head (Gaussian, Student-t, quantile),
   with and without volatility scaling, on the recipe's base. The rule: among the settings
   whose validation 80% and 95% intervals cover within 3 points of nominal, the lowest
   validation CRPS; if none, the lowest calibration error. The recipe file
   (experiments/ett/probabilistic.py) holds the choice.
2. The recipe and the point recipe (`ett_univariate:24`), seeds 0, 1, 2. The point runs give
   the split-conformal baseline around the point LSTM (calibrated on the validation
   windows, per lead time) and the point MSE the median is held to.

Each run lives in `<workdir>/<name>/seed<k>`; finished runs are read, not retrained. The
tables replace the blocks between the markers in `experiments/README.md`.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import statistics

from flaxlstm import config as config_lib
from flaxlstm import train as train_lib

HERE = pathlib.Path(__file__).parent
README = HERE.parent / "README.md"
RECIPE = HERE / "probabilistic.py"
MARKERS = {
  "select": ("<!-- prob-select:start -->", "<!-- prob-select:end -->"),
  "table": ("<!-- prob-table:start -->", "<!-- prob-table:end -->"),
}
HEADS = ("gaussian", "student_t", "quantile")


def run(config_name: str, overrides: list[str], path: str) -> dict:
  metrics_file = os.path.join(path, "metrics.json")
  if os.path.isfile(metrics_file):
    with open(metrics_file) as f:
      return json.load(f)
  config = config_lib.load_config(config_name, overrides)
  return train_lib.train_and_evaluate(config, path, quiet=True)


def calibration_error(d: dict) -> float:
  return max(abs(d["coverage_80"] - 0.8), abs(d["coverage_95"] - 0.95))


def select(workdir: str, data: list[str]) -> tuple[str, list[str]]:
  lines = [
    "| model.head | volatility_scaling | val CRPS | val coverage 50 / 80 / 95 | chosen |",
    "|---|---|---|---|---|",
  ]
  rows = []
  for head in HEADS:
    for vol in (False, True):
      over = data + ["seed=0", f"model.head={head}", f"model.volatility_scaling={vol}"]
      m = run("ett_univariate:24", over, os.path.join(workdir, "select", f"{head}_vol{int(vol)}"))
      rows.append((head, vol, m["val"]["distribution"]))
  calibrated = [r for r in rows if calibration_error(r[2]) <= 0.03]
  pool = calibrated or rows
  key = (lambda r: r[2]["crps"]) if calibrated else (lambda r: calibration_error(r[2]))
  best = min(pool, key=key)
  for head, vol, d in rows:
    cov = " / ".join(f"{100 * d[f'coverage_{c}']:.1f}%" for c in (50, 80, 95))
    mark = "**yes**" if (head, vol) == best[:2] else ""
    lines.append(f"| {head} | {vol} | {d['crps']:.4f} | {cov} | {mark} |")
  return "\n".join(lines), [f"model.head={best[0]}", f"model.volatility_scaling={best[1]}"]


def _ms(values, digits=4, pct=False):
  values = [100 * v for v in values] if pct else values
  unit = "%" if pct else ""
  d = 1 if pct else digits
  if len(values) == 1:
    return f"{values[0]:.{d}f}{unit}"
  return f"{statistics.mean(values):.{d}f} ± {statistics.stdev(values):.{d}f}{unit}"


def table(prob: list[dict], point: list[dict]) -> str:
  lines = [
    "| forecast | test CRPS | test pinball | 50% coverage | 80% coverage | 95% coverage | "
    "80% width | median MSE | median MAE |",
    "|---|---|---|---|---|---|---|---|---|",
  ]

  def row(name, dists, mse=None, mae=None):
    cells = [_ms([d["crps"] for d in dists]), _ms([d["pinball"] for d in dists])]
    cells += [_ms([d[f"coverage_{c}"] for d in dists], pct=True) for c in (50, 80, 95)]
    cells += [_ms([d["width_80"] for d in dists])]
    cells += [_ms(mse) if mse else "-", _ms(mae) if mae else "-"]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")

  row(
    "recipe (`probabilistic.py:24`)",
    [m["test"]["distribution"] for m in prob],
    [m["test"]["mse"] for m in prob],
    [m["test"]["mae"] for m in prob],
  )
  row(
    "split conformal around the point LSTM",
    [m["conformal"]["model"]["test"] for m in point],
    [m["test"]["mse"] for m in point],
    [m["test"]["mae"] for m in point],
  )
  row("split conformal around the recipe's median", [m["conformal"]["model"]["test"] for m in prob])
  row(
    "split conformal around the naive forecast",
    [m["conformal"]["naive"]["test"] for m in point[:1]],
  )
  return "\n".join(lines)


def _replace(text: str, which: str, block: str) -> str:
  start, end = MARKERS[which]
  head, rest = text.split(start)
  _, tail = rest.split(end)
  return f"{head}{start}\n{block}\n{end}{tail}"


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="runs/prob_table")
  ap.add_argument("--data", default="", help="an ETT-format file (default: bundled ETTh1)")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--no-readme", action="store_true")
  args = ap.parse_args()
  data = [f"data.path={args.data}"] if args.data else []
  chosen_table, chosen = select(args.workdir, data)
  print(chosen_table)
  spec = importlib.util.spec_from_file_location("recipe", RECIPE)
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  frozen = recipe.get_config("24")
  got = [
    f"model.head={frozen.model.head}",
    f"model.volatility_scaling={frozen.model.volatility_scaling}",
  ]
  if got != chosen:
    print(f"note: the selection now picks {chosen}; the recipe file holds {got}")
  prob, point = [], []
  for seed in map(int, args.seeds.split(",")):
    prob.append(
      run(
        f"{RECIPE}:24", data + [f"seed={seed}"], os.path.join(args.workdir, "recipe", f"seed{seed}")
      )
    )
    point.append(
      run(
        "ett_univariate:24",
        data + [f"seed={seed}"],
        os.path.join(args.workdir, "point", f"seed{seed}"),
      )
    )
    print(
      "seed",
      seed,
      json.dumps(
        {k: prob[-1]["test"]["distribution"][k] for k in ("crps", "coverage_80", "coverage_95")}
      ),
      flush=True,
    )
  result = table(prob, point)
  print(result)
  if not args.no_readme:
    text = README.read_text()
    README.write_text(_replace(_replace(text, "select", chosen_table), "table", result))


if __name__ == "__main__":
  main()
