"""The input pipeline at scale: a synthetic long panel of 10,000 series x 2,000 steps.

  python experiments/benchmarks/panel_pipeline.py                  # 10k x 2k, both scopes
  python experiments/benchmarks/panel_pipeline.py --series 500 --length 400 --steps 5

Writes the panel once as Parquet (unique_id as a categorical, ds, y, a static `size`), then,
for each scaler scope in a fresh process (so peak RSS is the pipeline's alone):
- load: `assemble` reads, validates, sorts, splits, scales and indexes the table (rows/s);
- batches: `Setup.train_batch(step)`, the trainer's own batches (window positions from the
  panel shuffle, gathered windows, covariates, global arrays), per second;
- steps: the jitted train step of a global segment-LSTM (the LTSF recipe's model: hidden
  256, segments of 24, parallel decoder, a series embedding) on those batches, per second.
The pipeline keeps up when batches/s exceeds steps/s. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def write_panel(path: str, n_series: int, length: int, seed: int = 0) -> float:
  """A random panel: each series a daily cycle, a level and noise, starting at its own hour."""
  import pandas as pd

  rng = np.random.default_rng(seed)
  t = np.arange(length)
  start = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 2000, n_series), unit="h")
  level = rng.normal(0, 10, n_series)
  amp = rng.uniform(0.5, 3, n_series)
  y = level[:, None] + amp[:, None] * np.sin(
    2 * np.pi * (t[None] + rng.integers(0, 24, (n_series, 1))) / 24
  )
  y += rng.normal(0, 0.3, y.shape)
  ds = start.to_numpy()[:, None] + (t * np.timedelta64(1, "h"))[None]
  ids = pd.Categorical(np.repeat([f"s{i:05d}" for i in range(n_series)], length))
  frame = pd.DataFrame(
    {
      "unique_id": ids,
      "ds": ds.reshape(-1),
      "y": y.reshape(-1),
      "size": np.repeat(amp, length),
    }
  )
  t0 = time.perf_counter()
  frame.to_parquet(path, index=False)
  return time.perf_counter() - t0


def _config(path: str, scope: str, batch: int):
  from flaxlstm import config as config_lib

  c = config_lib.default_config()
  c.data.path = path
  c.data.id_column, c.data.date_column, c.data.target = "unique_id", "ds", ("y",)
  c.data.static = ("size",)
  c.data.calendar = ("hour", "dayofweek")
  c.data.lookback, c.data.horizon = 96, 24
  c.data.scaler_scope = scope
  c.model.series_embedding = 16
  c.model.predict_delta = True
  c.model.segment_length = 24
  c.model.decoder = "parallel"
  c.model.hidden_sizes = (256,)
  c.train.batch_size = batch
  c.train.max_epochs = 1
  return config_lib.to_spec(c)


def measure(path: str, scope: str, batch: int, steps: int) -> dict:
  """One scope, in this process: load, batches/s, train steps/s, peak RSS."""
  import jax

  from flaxlstm.train.assembly import assemble
  from flaxlstm.train.step import make_train_step

  spec = _config(path, scope, batch)
  t0 = time.perf_counter()
  setup = assemble(spec)
  load_s = time.perf_counter() - t0
  rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
  data = setup.data
  setup.train_batch(0)  # the first call builds the train index
  t0 = time.perf_counter()
  batches = [setup.train_batch(k) for k in range(steps)]
  jax.block_until_ready(batches)
  batch_s = (time.perf_counter() - t0) / steps
  state = setup.init_state()
  step = make_train_step(
    setup.model, setup.tx, spec.train, spec.seed, setup.mesh, setup.state_sharding()
  )
  state, m = step(state, *batches[0])  # compile
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for k in range(1, steps):
    state, m = step(state, *batches[k])
  jax.block_until_ready(m)
  step_s = (time.perf_counter() - t0) / (steps - 1)
  return dict(
    scope=scope,
    rows=data.n_rows,
    series=data.n_series,
    train_windows=len(data.window_index("train")),
    load_s=load_s,
    rows_per_s=data.n_rows / load_s,
    peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    rss_after_load_gib=rss_load,
    batches_per_s=1 / batch_s,
    steps_per_s=1 / step_s,
    params=int(sum(p.size for p in jax.tree.leaves(state.params))),
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--series", type=int, default=10_000)
  parser.add_argument("--length", type=int, default=2_000)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--scopes", default="global,series")
  parser.add_argument("--child", nargs=2, metavar=("PATH", "SCOPE"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(measure(args.child[0], args.child[1], args.batch, args.steps)))
    return 0
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "panel.parquet")
    write_s = write_panel(path, args.series, args.length)
    size = os.path.getsize(path) / 2**20
    print(
      f"panel: {args.series} series x {args.length} steps = {args.series * args.length:,} rows, "
      f"{size:.0f} MiB Parquet (written in {write_s:.1f} s)"
    )
    rows = []
    for scope in args.scopes.split(","):
      out = subprocess.run(
        [
          sys.executable,
          __file__,
          "--batch",
          str(args.batch),
          "--steps",
          str(args.steps),
          "--child",
          path,
          scope,
        ],
        check=True,
        capture_output=True,
        text=True,
      ).stdout
      rows.append(json.loads(out.strip().splitlines()[-1]))
  print()
  print(
    "| scaler scope | rows | train windows | load + validate + scale + index | rows/s | "
    "peak RSS | batches/s (B=%d) | train steps/s | ratio |" % args.batch
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(
      f"| {r['scope']} | {r['rows']:,} | {r['train_windows']:,} | {r['load_s']:.1f} s | "
      f"{r['rows_per_s'] / 1e6:.2f} M | {r['peak_rss_gib']:.2f} GiB | {r['batches_per_s']:.0f} | "
      f"{r['steps_per_s']:.1f} | {r['batches_per_s'] / r['steps_per_s']:.0f}x |"
    )
  print(f"\nmodel: {rows[0]['params']:,} params; command: python {' '.join(sys.argv)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
