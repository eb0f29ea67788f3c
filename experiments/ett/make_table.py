"""Trains the ETTh1 recipes at every horizon and writes the results table.

  python experiments/ett/make_table.py                       # all settings and horizons
  python experiments/ett/make_table.py --settings univariate --horizons 24,48

Each run lives in `<workdir>/<setting>_<horizon>`; a finished run is not trained again
(rerunning resumes), so the table can be rebuilt cheaply. The table (test MSE/MAE on the
scaled data, every window) replaces the block between the markers in
`experiments/README.md`.
"""

import argparse
import json
import os
import pathlib
import time

from flaxlstm import config as config_lib
from flaxlstm import train as train_lib

HERE = pathlib.Path(__file__).parent
README = HERE.parent / "README.md"
START, END = "<!-- ett-table:start -->", "<!-- ett-table:end -->"
# Informer (Zhou et al., AAAI 2021), Table 1, ETTh1 univariate MSE.
PAPER_MSE = {"LSTMa": {24: 0.114, 48: 0.193, 168: 0.236, 336: 0.590, 720: 0.683},
             "Informer": {24: 0.098, 48: 0.158, 168: 0.183, 336: 0.222, 720: 0.269}}


def run_one(setting: str, horizon: int, workdir: str) -> dict:
  config = config_lib.load_config(str(HERE / f"{setting}.py:{horizon}"))
  path = os.path.join(workdir, f"{setting}_{horizon}")
  t0 = time.perf_counter()
  metrics = train_lib.train_and_evaluate(config, path)
  metrics["session_wall_s"] = time.perf_counter() - t0
  return metrics


def table(results: dict) -> str:
  lines = ["| setting | horizon | LSTM MSE | LSTM MAE | naive MSE | naive MAE | linear MSE | "
           "linear MAE | LSTMa (paper) | Informer (paper) | LSTM beats both | train time |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for (setting, h), m in sorted(results.items()):
    t, base = m["test"], m["baselines"]
    best = min(base["naive"]["test"]["mse"], base["linear"]["test"]["mse"])
    paper = [f"{PAPER_MSE[k][h]:.3f}" if setting == "univariate" else "-"
             for k in ("LSTMa", "Informer")]
    lines.append(
        f"| {setting} | {h} | {t['mse']:.4f} | {t['mae']:.4f} | "
        f"{base['naive']['test']['mse']:.4f} | {base['naive']['test']['mae']:.4f} | "
        f"{base['linear']['test']['mse']:.4f} | {base['linear']['test']['mae']:.4f} | "
        f"{paper[0]} | {paper[1]} | {'yes' if t['mse'] < best else 'no'} | "
        f"{m['train_wall_time_s']:.0f} s |")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="runs/ett_table")
  ap.add_argument("--settings", default="univariate,multivariate")
  ap.add_argument("--horizons", default="24,48,168,336,720")
  args = ap.parse_args()
  results = {}
  for setting in args.settings.split(","):
    for h in map(int, args.horizons.split(",")):
      results[(setting, h)] = m = run_one(setting, h, args.workdir)
      print(setting, h, json.dumps({"test": m["test"]["mse"],
                                    "naive": m["baselines"]["naive"]["test"]["mse"],
                                    "linear": m["baselines"]["linear"]["test"]["mse"]}),
            flush=True)
  text = README.read_text() if README.exists() else f"{START}\n{END}\n"
  head, rest = text.split(START)
  _, tail = rest.split(END)
  README.write_text(f"{head}{START}\n{table(results)}\n{END}{tail}")
  print(table(results))


if __name__ == "__main__":
  main()
