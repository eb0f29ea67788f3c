"""The ETT recipes, frozen, on a period of ETTh1 that no recipe was chosen or scored on.

  python experiments/ett/later_period.py                      # everything, seeds 0, 1, 2
  python experiments/ett/later_period.py --parts probabilistic --seeds 0
  python experiments/ett/later_period.py --parts univariate --horizons 336,720

ETT's protocol reads only the first 14,400 rows of ETTh1 (12 / 4 / 4 months of 30 days);
the file has 17,420. This writes its LAST 14,400 rows as an ETT-format file
(`WORKDIR/ETTh1_later.csv`), so that the same split falls 3,020 rows (about 4 months)
later. Its test rows (2018-02-26 to 2018-06-26) lie past everything any recipe was
chosen on (ETTh1's validation months) or scored on (ETTh1's test months). This machine has
no other ETT file, so this is the nearest check of "unchanged on data it was not tuned on"
it can run. It is not a held-out file: the series is the same transformer's, and the
training months overlap ETTh1's.

Each recipe runs as it ships, only `data.path` set:
- `univariate`: the Informer-protocol recipe (`ett_univariate:H`, H in 24..720) against
  the naive forecast and the ridge on the same windows;
- `probabilistic`: `experiments/ett/probabilistic.py:24`, the coverage of its 50/80/95%
  intervals (goal band for 80%: 75-85%);
- `ltsf`: `experiments/ltsf/ett.py:H` (lookback 96, all 7 columns) against naive, ridge and
  DLinear.

Each run lives in `WORKDIR/<part>_<H>/seed<k>` (finished runs are read, not retrained) and
the tables go to stdout as markdown. ETTh1 is CC BY-ND 4.0: the shifted file is written for
this run only and not distributed.
"""

import argparse
import os
import pathlib
import statistics

import pandas as pd
from probabilistic_table import run  # this folder's: train a run, or read it if finished

from flaxlstm import host
from flaxlstm.data.io import bundled_dataset_path

HERE = pathlib.Path(__file__).resolve().parent
PARTS = {
  "univariate": ("ett_univariate:{h}", (24, 48, 168, 336, 720)),
  "probabilistic": (str(HERE / "probabilistic.py") + ":{h}", (24,)),
  "ltsf": (str(HERE.parent / "ltsf" / "ett.py") + ":{h}", (96, 192, 336, 720)),
}
ETT_ROWS = 14_400  # what ETT's 12/4/4-month split reads (hourly rows)


def write_later_file(workdir: str) -> str:
  """ETTh1's last `ETT_ROWS` rows, as they are in the bundled file, under `workdir`."""
  frame = pd.read_csv(bundled_dataset_path("ETTh1"))
  path = os.path.join(workdir, "ETTh1_later.csv")
  os.makedirs(workdir, exist_ok=True)
  frame.iloc[len(frame) - ETT_ROWS :].to_csv(path, index=False)
  return path


def _ms(values: list[float], digits: int = 4, pct: bool = False) -> str:
  scale, unit = (100, "%") if pct else (1, "")
  values = [scale * v for v in values]
  if len(values) == 1:
    return f"{values[0]:.{digits}f}{unit}"
  return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}{unit}"


def point_table(part: str, results: dict[int, list[dict]]) -> str:
  names = ("naive", "linear") + (("dlinear",) if part == "ltsf" else ())
  lines = [
    "| horizon | recipe test MSE | recipe val MSE | "
    + " | ".join(f"{n} test MSE" for n in names)
    + " | recipe beats |",
    "|---" * (4 + len(names)) + "|",
  ]
  for h, runs in sorted(results.items()):
    mse = [m["test"]["mse"] for m in runs]
    base = runs[0]["baselines"]
    beats = [n for n in names if statistics.mean(mse) < base[n]["test"]["mse"]]
    lines.append(
      f"| {h} | {_ms(mse)} | {_ms([m['val']['mse'] for m in runs])} | "
      + " | ".join(f"{base[n]['test']['mse']:.4f}" for n in names)
      + f" | {', '.join(beats) or 'none'} |"
    )
  return "\n".join(lines)


def interval_table(results: dict[int, list[dict]]) -> str:
  """The recipe's scores per split; with recalibration also the head's own quantiles."""
  lines = [
    "| horizon | split | quantiles | CRPS | 50% coverage | 80% coverage | 95% coverage "
    "| 80% width |",
    "|---|---|---|---|---|---|---|---|",
  ]
  kinds = (("distribution", "as forecast"), ("distribution_uncalibrated", "head alone"))
  for h, runs in sorted(results.items()):
    for split in ("val", "test"):
      for key, name in kinds:
        if not all(key in m[split] for m in runs):
          continue
        d = [m[split][key] for m in runs]
        cov = [_ms([x[f"coverage_{c}"] for x in d], 1, pct=True) for c in (50, 80, 95)]
        lines.append(
          f"| {h} | {split} | {name} | {_ms([x['crps'] for x in d])} | "
          + " | ".join(cov)
          + f" | {_ms([x['width_80'] for x in d])} |"
        )
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="runs/ett_later")
  ap.add_argument("--parts", default=",".join(PARTS))
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--horizons", help="a subset of each part's horizons, e.g. 336,720")
  args = ap.parse_args()
  data = write_later_file(args.workdir)
  seeds = [int(s) for s in args.seeds.split(",")]
  for part in args.parts.split(","):
    spec, horizons = PARTS[part]
    if args.horizons:
      horizons = tuple(h for h in horizons if str(h) in args.horizons.split(","))
    results: dict[int, list[dict]] = {}
    for h in horizons:
      for seed in seeds:
        path = os.path.join(args.workdir, f"{part}_{h}", f"seed{seed}")
        m = run(spec.format(h=h), [f"seed={seed}", f"data.path={data}"], path)
        results.setdefault(h, []).append(m)
        print(f"{part} h={h} seed={seed} test MSE {m['test']['mse']:.4f}", flush=True)
    print(f"\n### {part}\n")
    print(interval_table(results) if part == "probabilistic" else point_table(part, results))
    print(flush=True)


if __name__ == "__main__":
  host.reuse_freed_memory()  # as the flaxlstm program does, before JAX starts
  main()
