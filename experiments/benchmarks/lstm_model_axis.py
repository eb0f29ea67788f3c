"""What splitting an LSTM's gates over the mesh's `model` axis costs per time step.

An LSTM cell's gates mix every unit of `h`: split over `model` (each device computes its
columns of `[i | f | g | o]`, `flaxlstm.parallel`'s rule for the LSTM), every time step
needs the whole `h` of the previous step on every device, so XLA puts a collective inside
the time loop, forward and backward. The sLSTM and mLSTM split whole heads instead and need
none (tests/nn/test_heads_sharded.py). This script compiles one train step (forward, MSE,
backward, AdamW) of `flaxlstm.StackedLSTM` on 8 fake CPU devices, batch over `data`, gates
over `model`, and reports for each mesh:

- `loop_collectives`: the collectives XLA placed inside the compiled while-loop bodies (the
  time loops), by kind, and `loop_bytes`: the bytes they move per loop iteration (summed
  over the loop bodies: one forward and one backward loop per layer), read from the
  operands' shapes in the compiled HLO;
- `step_s`: the median step time. The 8 devices are emulated on this machine's cores, so
  this is not a device's speed: it shows the collectives' overhead (their synchronisation
  every time step), not what a GPU would do.

Usage:
  python experiments/benchmarks/lstm_model_axis.py --width 256 --batch 16 --seq 64 --depth 2
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import flaxlstm  # noqa: E402
from flaxlstm import parallel  # noqa: E402

MESHES = {"data 8": (8, 1, 1), "data 4 x model 2": (4, 1, 2), "data 2 x model 4": (2, 1, 4)}
MESHES["model 8"] = (1, 1, 8)
COLLECTIVE = re.compile(
  r"= (\w+)\[([\d,]*)\][^\n]*? (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)"
  r"(?:-start)?\("
)
BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1}


def loop_collectives(hlo: str) -> tuple[dict[str, int], int, int]:
  """Collectives inside the compiled while-loop bodies: count by kind, bytes per iteration
  of every loop together, and how many loop bodies there are."""
  kinds: dict[str, int] = {}
  moved = bodies = 0
  for name in set(re.findall(r"body=%?([\w.\-]+)", hlo)):
    m = re.search(r"\n%?" + re.escape(name) + r" [^\n]*\{\n(.*?)\n\}", hlo, re.S)
    if not m:
      continue
    bodies += 1
    for dtype, dims, kind in COLLECTIVE.findall(m.group(1)):
      kinds[kind] = kinds.get(kind, 0) + 1
      moved += BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d]))
  return kinds, moved, bodies


def measure(name: str, shape: tuple[int, int, int], args) -> dict:
  devices = np.asarray(jax.devices()[: int(np.prod(shape))]).reshape(shape)
  mesh = Mesh(devices, parallel.AXES)
  model = flaxlstm.StackedLSTM(features=(args.width,) * args.depth)
  tx = optax.adamw(1e-3)
  key = jax.random.key(0)
  x = jax.random.normal(key, (args.batch, args.seq, args.width))
  y = jax.random.normal(jax.random.key(1), (args.batch, args.seq, args.width))
  params = jax.jit(model.init)(key, x)["params"]
  state = (params, tx.init(params))
  shardings = parallel.state_shardings(mesh, state)
  state = jax.device_put(state, shardings)
  batch = parallel.batch_sharding(mesh, 3)
  x, y = jax.device_put(x, batch), jax.device_put(y, batch)

  def step(state, x, y):
    params, opt = state
    grads = jax.grad(lambda p: jnp.mean(jnp.square(model.apply({"params": p}, x) - y)))(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  jitted = jax.jit(step, out_shardings=shardings, donate_argnums=0)
  t0 = time.perf_counter()
  compiled = jitted.lower(state, x, y).compile()
  compile_s = time.perf_counter() - t0
  kinds, moved, bodies = loop_collectives(compiled.as_text())
  for _ in range(args.warmup):
    state = jax.block_until_ready(compiled(state, x, y))
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state = jax.block_until_ready(compiled(state, x, y))
    times.append(time.perf_counter() - t0)
  kernel_spec = next(
    s.spec
    for p, s in jax.tree_util.tree_leaves_with_path(shardings[0])
    if "recurrent_kernel" in jax.tree_util.keystr(p)
  )
  return {
    "mesh": name,
    "shape": dict(zip(parallel.AXES, shape)),
    "recurrent_kernel_spec": str(kernel_spec),
    "loop_bodies": bodies,
    "loop_collectives": kinds,
    "loop_bytes": moved,
    "compile_s": round(compile_s, 2),
    "step_s": statistics.median(times),
    "best_s": min(times),
  }


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--width", type=int, default=256)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--seq", type=int, default=64)
  ap.add_argument("--depth", type=int, default=2)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--meshes", default=",".join(MESHES), help="comma-separated names of MESHES")
  args = ap.parse_args(argv)
  rows = []
  for name in args.meshes.split(","):
    row = measure(name, MESHES[name], args)
    rows.append(row)
    print(json.dumps(row), flush=True)
  print(
    f"\nStackedLSTM width {args.width}, depth {args.depth}, B {args.batch}, T {args.seq}; "
    "8 fake CPU devices\n"
  )
  print(
    "| mesh | recurrent kernel | collectives in the time loops | bytes per iteration | "
    "compile s | step s (median / best) |"
  )
  print("|---|---|---|---:|---:|---|")
  for r in rows:
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(r["loop_collectives"].items())) or "none"
    print(
      f"| {r['mesh']} | `{r['recurrent_kernel_spec']}` | {kinds} ({r['loop_bodies']} loops) | "
      f"{r['loop_bytes']:,} | {r['compile_s']} | {r['step_s']:.4f} / {r['best_s']:.4f} |"
    )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
