"""TiRex forecast latency on CPU: flaxlstm's TiRex (`flaxlstm.pretrained.tirex`) vs NX-AI's
`tirex-ts` (PyTorch, its CPU backend), on the same random weights.

Both build the published model's shape (35M parameters: 12 sLSTM blocks of width 512,
patches of 32, context 2048). A call forecasts `--horizon` steps after `--batch` random-walk
contexts of 2048 steps (several rollout passes when the horizon is over one patch). Calls
are interleaved, the order turned every round (ours, theirs, theirs, ours, ...), and timed
after a warm-up call (ours: its jit compile, reported apart), in a process that reuses freed
memory as the `flaxlstm` program does (flaxlstm/host.py). Before timing, the two forecasts
are checked close: `tirex-ts` rounds its sLSTM to bfloat16 on CPU (we compute in float32),
so they agree to about 1e-2 of the series' scale, not to 1e-4 (the float32 comparison is a
test: tests/pretrained/test_tirex.py).

Needs the `refs` extra (torch, tirex-ts). Usage:
  python experiments/benchmarks/tirex_latency.py --batch 1 --calls 5
  python experiments/benchmarks/tirex_latency.py --batch 256 --calls 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from flaxlstm import host


def build(config, seed: int = 0):
  """`tirex-ts`' TiRex with its own random init, and ours on its weights."""
  import torch
  from tirex.models.tirex import TiRexZero

  from flaxlstm.pretrained import tirex

  torch.manual_seed(seed)
  ref = TiRexZero(backend="torch", model_config=config.to_tirex(), train_ctx_len=2048).eval()
  with torch.no_grad():  # its sLSTM cell's weights start as torch.empty: set them all
    for name, p in ref.named_parameters():
      if "norm" not in name:  # the norms keep their init (RMSNorm 1, group norm 1 + 0)
        p.copy_(torch.randn_like(p) * 0.02)
  state = {k: v.numpy() for k, v in ref.state_dict().items()}
  model, params = tirex.load_tirex(state, config)
  return ref, model, params


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--horizon", type=int, default=64)
  ap.add_argument("--calls", type=int, default=3)
  args = ap.parse_args()
  # As the `flaxlstm` program runs (before JAX starts; FLAXLSTM_RELEASE_HOST_MEMORY=1 measures
  # glibc's defaults); torch shares the process and the setting.
  reused = host.reuse_freed_memory()

  import torch

  from flaxlstm.pretrained import tirex

  config = tirex.TiRexConfig()
  ref, model, params = build(config)
  rng = np.random.default_rng(0)
  context = rng.normal(size=(args.batch, 2048)).cumsum(-1).astype(np.float32)
  fn = jax.jit(lambda p, c: tirex.forecast(model, p, c, args.horizon))

  t0 = time.perf_counter()
  ours = np.asarray(fn(params, context)[0])
  compile_s = time.perf_counter() - t0
  theirs = ref._forecast_quantiles(torch.tensor(context), prediction_length=args.horizon)[0]
  scale = float(np.std(context))
  gap = float(np.abs(ours - theirs.numpy()).max()) / scale

  calls = {
    "flaxlstm": lambda: jax.block_until_ready(fn(params, context)),
    "tirex-ts": lambda: ref._forecast_quantiles(
      torch.tensor(context), prediction_length=args.horizon
    ),
  }
  times: dict[str, list[float]] = {name: [] for name in calls}
  # The order turns every round, so that each peer follows the other as often as itself: the
  # call right after torch's can be the slower for it (slstm_step.py saw that).
  for k in range(args.calls):
    for name in list(calls)[:: 1 if k % 2 == 0 else -1]:
      t0 = time.perf_counter()
      calls[name]()
      times[name].append(time.perf_counter() - t0)
  row = {
    "batch": args.batch,
    "horizon": args.horizon,
    "torch_threads": torch.get_num_threads(),
    "first_call_s": round(compile_s, 2),
    "max_gap_over_scale": round(gap, 5),
    "allocator": "freed memory reused" if reused else "glibc malloc defaults",
  }
  for name, ts in times.items():
    row[f"{name}_best_s"] = round(min(ts), 4)
    row[f"{name}_median_s"] = round(statistics.median(ts), 4)
  row["speedup_median"] = round(row["tirex-ts_median_s"] / row["flaxlstm_median_s"], 2)
  print(json.dumps(row))


if __name__ == "__main__":
  main()
