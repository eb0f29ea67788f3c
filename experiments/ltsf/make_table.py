"""Trains the LTSF recipe (experiments/ltsf/ett.py) at every horizon and seed and writes the
benchmark table beside the published lookback-96 numbers.

  python experiments/ltsf/make_table.py                        # ETTh1, H in 96..720, seeds 0-2
  python experiments/ltsf/make_table.py --horizons 96 --seeds 0
  python experiments/ltsf/make_table.py --data ETTh2.csv --workdir runs/ltsf_etth2 --no-readme
  python experiments/ltsf/make_table.py --workdir runs/ltsf_slstm --table ltsf_slstm \
      --no-univariate --override model.encoder=slstm --override model.slstm.num_heads=4
  python experiments/ltsf/make_table.py --seeds 0,1,2,3,4,5,6,7,8 --ensemble 3 \
      --table ltsf_ensemble --no-univariate

Each run lives in `<workdir>/h<H>/seed<k>`; a finished run is read, not trained again. The
table (test MSE/MAE on the scaled values of all 7 columns, every window; mean ± std over
seeds) replaces the block between the markers in `experiments/README.md`. A second table
scores the same global models on `OT` alone beside the single-series recipe
(`ett_univariate:H`, trained here too) at the horizons both tables share, and says which one
validation picks. With `--ensemble K` a row scores the mean forecast of K consecutive seeds
(0-2, 3-5, ...; `flaxlstm.train.evaluate_ensemble`), mean ± std over those ensembles.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

from flaxlstm import config as config_lib
from flaxlstm import host
from flaxlstm import train as train_lib

HERE = pathlib.Path(__file__).parent
README = HERE.parent / "README.md"
RECIPE = HERE / "ett.py"
MARKERS = {
  "ltsf": ("<!-- ltsf-table:start -->", "<!-- ltsf-table:end -->"),
  "ltsf_ot": ("<!-- ltsf-ot-table:start -->", "<!-- ltsf-ot-table:end -->"),
  "ltsf_slstm": ("<!-- ltsf-slstm-table:start -->", "<!-- ltsf-slstm-table:end -->"),
  "ltsf_xlstm": ("<!-- ltsf-xlstm-table:start -->", "<!-- ltsf-xlstm-table:end -->"),
  "ltsf_ensemble": ("<!-- ltsf-ensemble-table:start -->", "<!-- ltsf-ensemble-table:end -->"),
}
# ETTh1, lookback 96, test MSE / MAE: the SegRNN repository's corrected table (which quotes
# the others from the iTransformer paper).
PUBLISHED = {
  "SegRNN": {96: (0.368, 0.395), 192: (0.408, 0.419), 336: (0.444, 0.440), 720: (0.446, 0.457)},
  "iTransformer": {
    96: (0.386, 0.405),
    192: (0.441, 0.436),
    336: (0.487, 0.458),
    720: (0.503, 0.491),
  },
  "PatchTST": {96: (0.414, 0.419), 192: (0.460, 0.445), 336: (0.501, 0.466), 720: (0.500, 0.488)},
  "DLinear": {96: (0.386, 0.400), 192: (0.437, 0.432), 336: (0.481, 0.459), 720: (0.519, 0.516)},
}
UNIVARIATE_HORIZONS = (336, 720)  # in both the LTSF set and the Informer univariate table


def run_one(config_spec: str, overrides: list[str], path: str) -> dict:
  metrics_file = os.path.join(path, "metrics.json")
  if os.path.isfile(metrics_file):  # finished: read it instead of restoring and re-evaluating
    with open(metrics_file) as f:
      return json.load(f)
  config = config_lib.load_config(config_spec, overrides)
  return train_lib.train_and_evaluate(config, path, quiet=True)


def ensembles(paths: list[str], runs: list[dict], size: int) -> list[dict]:
  """The runs in consecutive groups of `size` (seeds 0-2, 3-5, ...), each scored as the mean
  of its members' forecasts (`flaxlstm evaluate --workdir A --workdir B ...`), as metrics
  dicts `ltsf_table` reads: parameters and train time are the members' sums."""
  out = []
  for k in range(0, len(runs), size):
    members = runs[k : k + size]
    scores = train_lib.evaluate_ensemble(paths[k : k + size])
    out.append(
      {
        "val": scores["val"],
        "test": scores["test"],
        "baselines": members[0]["baselines"],
        "params_count": sum(m["params_count"] for m in members),
        "train_wall_time_s": sum(m["train_wall_time_s"] for m in members),
      }
    )
  return out


def _mean_std(values: list[float], digits: int = 3) -> str:
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def ltsf_table(results: dict[int, list[dict]]) -> str:
  names = list(PUBLISHED)
  lines = [
    "| horizon | flaxlstm MSE | flaxlstm MAE | val MSE | "
    + " | ".join(f"{n} MSE / MAE" for n in names)
    + " | naive MSE / MAE | linear MSE / MAE | beats | params | train time |",
    "|---" * (9 + len(names)) + "|",
  ]
  for h, runs in sorted(results.items()):
    mse = [m["test"]["mse"] for m in runs]
    mae = [m["test"]["mae"] for m in runs]
    base = runs[0]["baselines"]
    mean_mse = statistics.mean(mse)
    beaten = [n for n in names if h in PUBLISHED[n] and mean_mse < PUBLISHED[n][h][0]]
    published = [
      f"{PUBLISHED[n][h][0]:.3f} / {PUBLISHED[n][h][1]:.3f}" if h in PUBLISHED[n] else "-"
      for n in names
    ]
    lines.append(
      f"| {h} | {_mean_std(mse)} | {_mean_std(mae)} | "
      f"{_mean_std([m['val']['mse'] for m in runs])} | "
      + " | ".join(published)
      + f" | {base['naive']['test']['mse']:.3f} / {base['naive']['test']['mae']:.3f}"
      f" | {base['linear']['test']['mse']:.3f} / {base['linear']['test']['mae']:.3f}"
      f" | {', '.join(beaten) or 'none'} | {runs[0]['params_count']:,} | "
      f"{statistics.mean(m['train_wall_time_s'] for m in runs) / 60:.1f} min |"
    )
  return "\n".join(lines)


def ot_table(results: dict[int, list[dict]], univariate: dict[int, list[dict]]) -> str:
  lines = [
    "| horizon | global (7 series) val MSE on OT | global test MSE / MAE on OT | "
    "single-series val MSE | single-series test MSE / MAE | validation picks |",
    "|---|---|---|---|---|---|",
  ]
  for h in sorted(univariate):
    glob = [m[split]["per_target"]["OT"] for m in results[h] for split in ("val", "test")]
    g_val, g_test = glob[0::2], glob[1::2]
    uni = univariate[h]
    u_val = statistics.mean(m["val"]["mse"] for m in uni)
    pick = "global" if statistics.mean(m["mse"] for m in g_val) < u_val else "single-series"
    lines.append(
      f"| {h} | {_mean_std([m['mse'] for m in g_val], 4)} | "
      f"{_mean_std([m['mse'] for m in g_test], 4)} / {_mean_std([m['mae'] for m in g_test], 4)} | "
      f"{_mean_std([m['val']['mse'] for m in uni], 4)} | "
      f"{_mean_std([m['test']['mse'] for m in uni], 4)} / "
      f"{_mean_std([m['test']['mae'] for m in uni], 4)} | {pick} |"
    )
  return "\n".join(lines)


def _replace(text: str, key: str, block: str) -> str:
  start, end = MARKERS[key]
  if start not in text:
    return text + f"\n{start}\n{block}\n{end}\n"
  head, rest = text.split(start)
  _, tail = rest.split(end)
  return f"{head}{start}\n{block}\n{end}{tail}"


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="runs/ltsf")
  ap.add_argument("--horizons", default="96,192,336,720")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument(
    "--data",
    default="",
    help="another LTSF-format file (default: bundled ETTh1; the OT table needs an ETT file, "
    "--no-univariate on others)",
  )
  ap.add_argument("--no-univariate", action="store_true", help="skip the OT comparison")
  ap.add_argument("--no-readme", action="store_true", help="print the tables only")
  ap.add_argument(
    "--override",
    action="append",
    default=[],
    help="a config override for every run, e.g. model.encoder=slstm (repeatable)",
  )
  ap.add_argument(
    "--table",
    default="ltsf",
    choices=("ltsf", "ltsf_slstm", "ltsf_xlstm", "ltsf_ensemble"),
    help="the README block to write (ltsf_slstm, ltsf_xlstm: another encoder's row beside "
    "the LSTM's; ltsf_ensemble: with --ensemble)",
  )
  ap.add_argument(
    "--ensemble",
    type=int,
    default=1,
    help="score the mean forecast of each K consecutive seeds (K divides the seed count) "
    "instead of each seed",
  )
  args = ap.parse_args()
  data = [f"data.path={os.path.abspath(args.data)}"] if args.data else []
  data += args.override
  horizons = [int(h) for h in args.horizons.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]
  if args.ensemble < 1 or len(seeds) % args.ensemble:
    ap.error(f"--ensemble {args.ensemble} does not divide the {len(seeds)} seeds")
  results: dict[int, list[dict]] = {}
  univariate: dict[int, list[dict]] = {}
  for h in horizons:
    paths = [os.path.join(args.workdir, f"h{h}", f"seed{seed}") for seed in seeds]
    for seed, path in zip(seeds, paths):
      t0 = time.perf_counter()
      m = run_one(f"{RECIPE}:{h}", [f"seed={seed}", *data], path)
      results.setdefault(h, []).append(m)
      summary = {k: round(m[k]["mse"], 4) for k in ("val", "test")}
      print(f"h={h} seed={seed}", json.dumps(summary), f"{time.perf_counter() - t0:.0f} s")
      sys.stdout.flush()
    if args.ensemble > 1:
      results[h] = ensembles(paths, results[h], args.ensemble)
      for k, m in enumerate(results[h]):
        summary = {s: round(m[s]["mse"], 4) for s in ("val", "test")}
        print(f"h={h} ensemble {k} (mean of {args.ensemble} seeds)", json.dumps(summary))
  for h in [h for h in UNIVARIATE_HORIZONS if h in results and not args.no_univariate]:
    for seed in seeds:
      path = os.path.join(args.workdir, f"univariate_h{h}", f"seed{seed}")
      univariate.setdefault(h, []).append(
        run_one(f"ett_univariate:{h}", [f"seed={seed}", *data], path)
      )
  blocks = {args.table: ltsf_table(results)}
  if univariate:
    blocks["ltsf_ot"] = ot_table(results, univariate)
  for block in blocks.values():
    print(block, end="\n\n")
  if not args.no_readme:
    text = README.read_text()
    for key, block in blocks.items():
      text = _replace(text, key, block)
    README.write_text(text)


if __name__ == "__main__":
  host.reuse_freed_memory()  # as the flaxlstm program does, before JAX starts
  main()
