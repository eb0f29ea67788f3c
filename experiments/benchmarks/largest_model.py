"""The largest model, measured: the biggest LSTM, sLSTM and xLSTM stacks whose train step fits
a per-device memory budget, and how fast steps of 1M-1B parameters run.

One train step is forward + MSE loss on the outputs + backward + `optax.adamw` update, jitted,
the state (params, AdamW moments) donated, over random inputs and targets of the model's width
`w`. The families, all from flaxlstm's public layers, at a fixed depth (`--depth`):

- `lstm`: `flaxlstm.StackedLSTM(features=(w,) * depth)` (its `remat`: the time loop of every
  layer recomputed in ~sqrt(T) chunks in the backward pass);
- `slstm`: `XLSTMStack(w, num_blocks=depth, slstm_at=all blocks, slstm=dict(num_heads=4))`;
- `xlstm`: `XLSTMStack(w, num_blocks=depth, slstm_at=(1,), mlstm=dict(num_heads=4),
  slstm=dict(num_heads=4))`: mLSTM blocks, the second block an sLSTM block
  (`XLSTMStack`'s `remat`: every block recomputed in the backward pass).

Measurements (one JSON line each on stdout; progress on stderr; a markdown table at the end):

1. `"kind": "largest"`: for each family, number of devices (`--devices`), FSDP off/on and remat
   off/on, the largest width (a multiple of 64: heads and the mLSTM's 64-rounding divide it)
   whose step fits `--budget-gib` per device, and its parameter count. Memory is XLA's own
   account of the COMPILED step, per device: `memory_analysis()`'s argument + output + temp -
   alias bytes (alias: the donated state's outputs, written over its inputs). Nothing is
   allocated: params and optimizer state are `jax.ShapeDtypeStruct`s from `jax.eval_shape`,
   with their shardings. FSDP: params and AdamW state sharded over a mesh axis `fsdp` of all
   devices (`flaxlstm.parallel.state_shardings`); without it (`data` axis) they are
   replicated. The batch is split over the devices in both (`parallel.batch_sharding`). The
   search (`largest`) compiles at widths a quadratic fit to the probes so far predicts
   (memory ~ a w^2 + b w + c), with doubling and bisection as safeguards, until a width that
   fits and the one 64 above it, which does not, are found: 4-8 compiles per row.
   `replicated_param_fraction`: the share of the parameter bytes that the sharding rule
   leaves whole on every device (1.0 without FSDP). More than one device is emulated on the
   CPU (`--xla_force_host_platform_device_count`), in a subprocess of this script.
2. `"kind": "timing"`: steps of about 1M, 10M, 100M and 1B parameters (`--timing-params`),
   each family, one CPU device, at `--timing-batch` x `--timing-seq`: compile seconds, then
   the median (and best) of `--steps` steps after `--warmup`, from random weights (not the
   layers' initializers: their orthogonal ones cost a QR per gate block, minutes at these
   widths on a CPU). A size whose memory analysis needs more than `--ram-fraction` of this
   machine's free RAM (MemAvailable) is skipped, with the reason. FLOPs: `xla_flops` is
   XLA's count (`compiled.cost_analysis()["flops"]`), which counts the body of every while
   loop ONCE: the time loops' recurrent work counts for a single step, so it undercounts
   these models (the recurrent matmuls by a factor T);
   `loop_flops` (where this flaxlstm has `flaxlstm.train.flops.step_flops`) is XLA's count
   with each loop of known trip count counted that many times; `model_flops` is the usual
   6 * params * B * T (forward 2, backward 4 FLOPs per parameter and token, every parameter
   used once per token; the mLSTM's q-k-v mixing is not in it). Each is given with the rate
   it implies.
3. `"kind": "torch"` (`--torch`): PyTorch's `nn.LSTM(w, w, num_layers=depth)` under the same
   budget, B and T. Torch has no compile-time memory analysis on the CPU, so each width is a
   subprocess running one train step (forward, MSE, backward, `torch.optim.AdamW` with its
   defaults) that measures how far the step raises its peak RSS (VmHWM, what `ru_maxrss`
   reports) above its RSS before the model and data were made (after a tiny warm-up step,
   so thread pools and kernels are loaded); forward + backward and the AdamW step apart,
   the peak reset in between (/proc/self/clear_refs), as they peak on different things:
   activations (~w) in the first, params, grads and both moments (~w^2) in the second.
   Widths are probed only where they fit this machine's free RAM (`--torch-ram-fraction`).
   If the budget lies between two probes, more probes bisect it (`"method": "measured"`);
   otherwise a least-squares quadratic in w per phase is solved for the budget and the
   smaller answer taken (`"method": "extrapolated"`, with the widths it rests on;
   `--torch-verify` probes on toward the budget while the RAM allows). RSS counts what the
   allocator holds, XLA's analysis the buffers it plans: alike in kind, not to the byte.

Usage:
  python experiments/benchmarks/largest_model.py --json largest.jsonl        # the full table
  python experiments/benchmarks/largest_model.py --devices 1 --skip-timing   # the search alone
  python experiments/benchmarks/largest_model.py --skip-search --timing-params 1e6,1e7
  python experiments/benchmarks/largest_model.py --torch --skip-search --skip-timing
  python experiments/benchmarks/largest_model.py --fixed-width 1024 --skip-timing  # bytes at 1024
  python experiments/benchmarks/largest_model.py --table largest.jsonl       # table from a run
  python experiments/benchmarks/largest_model.py --quick                     # tiny (the test)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxlstm
from flaxlstm import parallel
from flaxlstm.nn.xlstm import XLSTMStack

FAMILIES = ("lstm", "slstm", "xlstm")
GiB = 2**30
STEP = 64  # widths are multiples of this
INIT_T = 8  # sequence length of the (abstract) init call: parameters do not depend on it
LR, WEIGHT_DECAY = 1e-3, 1e-4
# The tiny sizes of `--quick` (what the test runs): a budget of a few MiB.
QUICK = dict(
  budget_gib=8 / 1024,
  batch=8,
  seq=16,
  depth=2,
  timing_params="6e4,2.5e5",
  timing_batch=4,
  timing_seq=8,
  steps=2,
  warmup=1,
  max_width=1024,
  torch_widths="64,128,192",
)


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


# ---- the models and the train step -------------------------------------------------------------
def build_model(family: str, width: int, depth: int, remat: bool) -> Any:
  """One of the `FAMILIES` at this width and depth (see the module docstring)."""
  if width % STEP:
    raise ValueError(f"width {width} is not a multiple of {STEP}")
  if family == "lstm":
    return flaxlstm.StackedLSTM(features=(width,) * depth, remat=remat)
  if family == "slstm":
    return XLSTMStack(
      width, num_blocks=depth, slstm_at=tuple(range(depth)), slstm=dict(num_heads=4), remat=remat
    )
  if family == "xlstm":
    if depth < 2:
      raise ValueError("the xlstm family needs depth >= 2 (its second block is the sLSTM one)")
    return XLSTMStack(
      width,
      num_blocks=depth,
      slstm_at=(1,),
      mlstm=dict(num_heads=4),
      slstm=dict(num_heads=4),
      remat=remat,
    )
  raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")


def optimizer() -> optax.GradientTransformation:
  return optax.adamw(LR, weight_decay=WEIGHT_DECAY)


def init_fn(model: Any, tx: optax.GradientTransformation, width: int) -> Callable[[], Any]:
  """`() -> (params, opt_state)`, the train state (abstract under `jax.eval_shape`)."""

  def init():
    params = model.init(jax.random.key(0), jnp.zeros((1, INIT_T, width)))["params"]
    return params, tx.init(params)

  return init


def train_step(model: Any, tx: optax.GradientTransformation) -> Callable:
  """`(state, x, y) -> (state, loss)`: forward, MSE on the outputs, backward, AdamW."""

  def step(state, x, y):
    params, opt_state = state

    def loss_fn(p):
      return jnp.mean(jnp.square(model.apply({"params": p}, x) - y))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return step


def count_params(tree: Any) -> int:
  return int(sum(math.prod(a.shape) for a in jax.tree.leaves(tree)))


def param_count(family: str, width: int, depth: int) -> int:
  model = build_model(family, width, depth, remat=False)
  return count_params(jax.eval_shape(init_fn(model, optimizer(), width))[0])


def make_mesh(devices: int, fsdp: bool) -> Any:
  """`devices` of this process's devices: all on the `fsdp` axis, or all on `data`."""
  if devices > jax.device_count():
    raise ValueError(f"{devices} devices asked for, {jax.device_count()} available")
  cfg = types.SimpleNamespace(data=1 if fsdp else devices, fsdp=devices if fsdp else 1, model=1)
  return parallel.make_mesh(cfg, jax.devices()[:devices])


class Built:
  """A compiled train step and what it needs to run: the abstract state and its shardings."""

  def __init__(
    self,
    family: str,
    width: int,
    depth: int,
    batch: int,
    seq: int,
    devices: int = 1,
    fsdp: bool = False,
    remat: bool = False,
  ):
    self.family, self.width, self.depth, self.batch, self.seq = family, width, depth, batch, seq
    self.devices, self.fsdp, self.remat = devices, fsdp, remat
    model = build_model(family, width, depth, remat)
    tx = self.tx = optimizer()
    self.mesh = make_mesh(devices, fsdp)
    self.init = init_fn(model, tx, width)
    abstract = jax.eval_shape(self.init)
    self.params = count_params(abstract[0])
    self.shardings = parallel.state_shardings(self.mesh, abstract)
    self.state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.shardings
    )
    self.data_sharding = parallel.batch_sharding(self.mesh, 3)
    data = jax.ShapeDtypeStruct((batch, seq, width), jnp.float32, sharding=self.data_sharding)
    jitted = jax.jit(
      train_step(model, tx),
      donate_argnums=0,
      out_shardings=(self.shardings, parallel.replicated(self.mesh)),
    )
    start = time.perf_counter()
    self.compiled = jitted.lower(self.state, data, data).compile()
    self.compile_s = time.perf_counter() - start

  def memory(self) -> dict:
    """Per-device bytes from XLA's memory analysis of the compiled step."""
    m = self.compiled.memory_analysis()
    if m is None:
      raise RuntimeError(f"no memory analysis from the {jax.default_backend()} backend")
    arg, out = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
    temp, alias = int(m.temp_size_in_bytes), int(m.alias_size_in_bytes)
    return {
      "per_device_bytes": arg + out + temp - alias,
      "argument_bytes": arg,
      "output_bytes": out,
      "temp_bytes": temp,
      "alias_bytes": alias,
    }

  def replicated_param_fraction(self) -> float:
    """The share of parameter bytes whose sharding leaves them whole on every device."""
    params, shardings = self.state[0], self.shardings[0]
    whole = total = 0
    for a, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
      n = math.prod(a.shape)
      total += n
      if all(axis is None for axis in s.spec):
        whole += n
    return whole / max(total, 1)

  def xla_flops(self) -> float:
    cost = self.compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
      cost = cost[0]
    return float((cost or {}).get("flops", float("nan")))

  def loop_flops(self) -> float | None:
    """`flaxlstm.train.flops.step_flops` (XLA's count with each loop of known trip count
    counted that many times), where this flaxlstm has it; else None."""
    try:  # not every flaxlstm has it
      flops = importlib.import_module("flaxlstm.train.flops")
    except ImportError:
      return None
    try:
      return float(flops.step_flops(self.compiled))
    except Exception as e:  # an optional column: never the reason a measurement is lost
      log(f"  no loop-aware FLOP count: {type(e).__name__}: {e}")
      return None

  def random_state(self) -> Any:
    """A train state of random weights: normal, scaled by 1/sqrt(fan-in), vectors zero.

    Not the layers' initializers: their orthogonal ones take a QR of every gate's block,
    which costs ~1 s at width 1024 on a CPU and grows like w^3 (minutes at 100M params,
    most of an hour at 1B). A step's time does not depend on the values."""
    leaves, treedef = jax.tree.flatten(self.state[0])

    def init():
      keys = jax.random.split(jax.random.key(0), len(leaves))
      made = [
        jax.random.normal(k, a.shape, a.dtype) / math.sqrt(a.shape[-2])
        if len(a.shape) >= 2
        else jnp.zeros(a.shape, a.dtype)
        for k, a in zip(keys, leaves)
      ]
      p = jax.tree.unflatten(treedef, made)
      return p, self.tx.init(p)

    return jax.jit(init, out_shardings=self.shardings)()

  def run(self, steps: int, warmup: int) -> tuple[list[float], float]:
    """Allocates the state and data, runs `warmup` steps, returns the times of `steps` and
    the last loss."""
    state = self.random_state()
    kx, ky = jax.random.split(jax.random.key(1))
    shape = (self.batch, self.seq, self.width)
    make = jax.jit(
      lambda: (jax.random.normal(kx, shape), jax.random.normal(ky, shape)),
      out_shardings=(self.data_sharding, self.data_sharding),
    )
    x, y = make()
    for _ in range(warmup):
      state, loss = self.compiled(state, x, y)
      jax.block_until_ready(loss)
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      state, loss = self.compiled(state, x, y)
      jax.block_until_ready((state, loss))
      times.append(time.perf_counter() - start)
    return times, float(loss)


# ---- 1. the largest model under the budget --------------------------------------------------
def memory_row(
  family: str,
  width: int,
  depth: int,
  batch: int,
  seq: int,
  devices: int = 1,
  fsdp: bool = False,
  remat: bool = False,
) -> dict:
  """The compiled step's per-device memory at one width (nothing allocated)."""
  b = Built(family, width, depth, batch, seq, devices, fsdp, remat)
  return {
    "family": family,
    "width": width,
    "depth": depth,
    "batch": batch,
    "seq": seq,
    "devices": devices,
    "fsdp": fsdp,
    "remat": remat,
    "params": b.params,
    **b.memory(),
    "replicated_param_fraction": round(b.replicated_param_fraction(), 6),
    "compile_s": round(b.compile_s, 2),
  }


def next_width(
  probes: dict[int, int], budget: float, lo: int | None, hi: int | None, max_width: int
) -> int:
  """The next width to compile, given the probes so far (width -> bytes), the largest width
  known to fit (`lo`) and the smallest known not to (`hi`).

  Memory grows like a w^2 + b w + c (parameters and optimizer state ~ w^2, activations ~ w,
  the mLSTM's matrix states ~ w^2), so a quadratic through the three probes nearest the
  budget predicts the answer (clamped into the widths still open, so that a prediction just
  above a fitting width tries its neighbour). Safeguards: without a prediction the width
  doubles or halves, at most 4x per probe before the answer is bracketed, and every third
  probe after that bisects, so that a poor fit cannot creep 64 at a time.
  """
  snap = lambda w: max(STEP, min(max_width, int(w) // STEP * STEP))
  low = STEP if lo is None else lo + STEP  # the widths still open: [low, high]
  high = max_width if hi is None else hi - STEP
  near = sorted(probes, key=lambda w: abs(math.log(probes[w] / budget)))[:3]
  pred = None
  if len(near) >= 2:
    coeffs = np.polyfit(near, [probes[w] for w in near], min(2, len(near) - 1))
    coeffs[-1] -= budget
    roots = [float(r.real) for r in np.roots(coeffs) if abs(r.imag) < 1e-6 * abs(r) + 1e-9]
    roots = [r for r in roots if r > 0]
    if roots:
      pred = min(roots, key=lambda r: abs(r - near[0]))
  if lo is not None and hi is not None:
    mid = snap((lo + hi) // 2)
    if pred is None or len(probes) % 3 == 0:  # every third probe bisects: no slow creep
      return min(max(mid, low), high)
    return min(max(snap(pred), low), high)
  if lo is not None:  # not bracketed yet: at most 4x up (or 4x down) per probe
    return min(max(snap(pred), low), snap(4 * lo), high) if pred else min(snap(2 * lo), high)
  assert hi is not None
  return max(min(snap(pred), high), snap(hi / 4), low) if pred else max(snap(hi / 2), low)


def largest(
  family: str,
  depth: int,
  batch: int,
  seq: int,
  budget_bytes: float,
  devices: int = 1,
  fsdp: bool = False,
  remat: bool = False,
  max_width: int = 32768,
  guess: int | None = None,
) -> dict:
  """The largest width (a multiple of `STEP`, up to `max_width`) whose step fits the budget:
  compiles from `guess` (another layout's answer, else 256) on, at the widths `next_width`
  picks, until a fitting width and the one `STEP` above it (not fitting) are found."""
  probes: dict[int, dict] = {}
  start = time.perf_counter()

  def fits(w: int) -> bool:
    if w not in probes:
      probes[w] = memory_row(family, w, depth, batch, seq, devices, fsdp, remat)
      gib = probes[w]["per_device_bytes"] / GiB
      log(
        f"  {family} devices={devices} fsdp={fsdp} remat={remat} width {w}: {gib:.3f} GiB"
        f" per device, {probes[w]['params']:,} params, compile {probes[w]['compile_s']} s"
      )
    return probes[w]["per_device_bytes"] <= budget_bytes

  lo: int | None = None
  hi: int | None = None
  w = max(STEP, min(max_width, (guess or 256) // STEP * STEP))
  while True:
    if fits(w):
      lo = w if lo is None else max(lo, w)
    else:
      hi = w if hi is None else min(hi, w)
    if (lo is not None and hi is not None and hi - lo <= STEP) or lo == max_width or hi == STEP:
      break
    sizes = {v: p["per_device_bytes"] for v, p in probes.items()}
    w = next_width(sizes, budget_bytes, lo, hi, max_width)
  row: dict[str, Any] = {
    "kind": "largest",
    "family": family,
    "depth": depth,
    "batch": batch,
    "seq": seq,
    "devices": devices,
    "fsdp": fsdp,
    "remat": remat,
    "budget_bytes": int(budget_bytes),
    "compiles": len(probes),
    "search_s": round(time.perf_counter() - start, 1),
  }
  if lo is None:
    return {**row, "width": None, "note": f"not even width {STEP} fits"}
  found = probes[lo]
  row |= {k: found[k] for k in found if k not in row}
  if hi is None:
    row["note"] = f"capped: --max-width {max_width} fits"
  else:
    row["next_width"] = hi
    row["next_per_device_bytes"] = probes[hi]["per_device_bytes"]
  return row


def layouts(devices: int, fsdp: str, remat: str) -> list[tuple[bool, bool]]:
  """The (fsdp, remat) pairs to measure: FSDP only means something on several devices."""
  pick = {"off": [False], "on": [True], "both": [False, True]}
  fs = pick[fsdp] if devices > 1 else [False]
  return [(f, r) for f in fs for r in pick[remat]]


def search(
  args, devices: int, emit: Callable[[dict], None], guesses: dict[str, int] | None = None
) -> None:
  """Measurement 1 on `devices` devices of this process. A search starts from another
  layout's answer (the same FSDP, else the same remat), else from `guesses[family]`."""
  for family in args.families:
    found: dict[tuple[bool, bool], int] = {}
    for fsdp, remat in layouts(devices, args.fsdp, args.remat):
      guess = found.get((fsdp, not remat)) or found.get((not fsdp, remat))
      guess = guess or (guesses or {}).get(family)
      if args.fixed_width:
        row = {
          "kind": "memory",
          **memory_row(
            family, args.fixed_width, args.depth, args.batch, args.seq, devices, fsdp, remat
          ),
        }
      else:
        row = largest(
          family,
          args.depth,
          args.batch,
          args.seq,
          args.budget_gib * GiB,
          devices,
          fsdp,
          remat,
          max_width=args.max_width,
          guess=guess,
        )
        if row.get("width"):
          found[fsdp, remat] = row["width"]
      emit(row)


def search_in_subprocess(
  args, devices: int, emit: Callable[[dict], None], guesses: dict[str, int] | None = None
) -> None:
  """Measurement 1 on `devices` emulated CPU devices: this script again, in a process whose
  XLA_FLAGS ask for them (they must be set before jax starts)."""
  flags = os.environ.get("XLA_FLAGS", "")
  env = {
    **os.environ,
    "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
    "JAX_PLATFORMS": "cpu",
  }
  cmd = [sys.executable, os.path.abspath(__file__), "--child-devices", str(devices)]
  cmd += ["--budget-gib", repr(args.budget_gib), "--batch", str(args.batch)]
  cmd += ["--seq", str(args.seq), "--depth", str(args.depth), "--max-width", str(args.max_width)]
  cmd += ["--families", ",".join(args.families), "--fsdp", args.fsdp, "--remat", args.remat]
  if args.fixed_width:
    cmd += ["--fixed-width", str(args.fixed_width)]
  if guesses:
    cmd += ["--guesses", ",".join(f"{k}={v}" for k, v in guesses.items())]
  log(f"{devices} devices: a subprocess with {env['XLA_FLAGS']}")
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
  assert proc.stdout is not None
  try:
    for line in proc.stdout:
      if line.startswith("{"):
        emit(json.loads(line))
  finally:
    if proc.poll() is None and sys.exc_info()[0] is not None:
      proc.kill()  # interrupted: the child goes too
  if proc.wait():
    raise RuntimeError(f"the {devices}-device subprocess failed (exit {proc.returncode})")


# ---- 2. timed steps ---------------------------------------------------------------------------
def available_bytes() -> int:
  """MemAvailable (Linux), else the physical memory."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def width_for_params(family: str, depth: int, target: float, max_width: int = 65536) -> int:
  """The multiple of `STEP` whose parameter count is nearest `target` (in ratio)."""
  lo, hi = STEP, max_width  # parameter counts grow with the width: bisect
  while hi - lo > STEP:
    mid = (lo + hi) // 2 // STEP * STEP
    if param_count(family, mid, depth) <= target:
      lo = mid
    else:
      hi = mid
  err = lambda w: abs(math.log(param_count(family, w, depth) / target))
  return min((lo, hi), key=err)


def timing(
  family: str,
  target: float,
  depth: int,
  batch: int,
  seq: int,
  steps: int,
  warmup: int,
  ram_fraction: float = 0.8,
) -> dict:
  """Measurement 2: one family at about `target` parameters on one CPU device."""
  width = width_for_params(family, depth, target)
  b = Built(family, width, depth, batch, seq)
  mem = b.memory()
  row: dict[str, Any] = {
    "kind": "timing",
    "family": family,
    "target_params": target,
    "width": width,
    "params": b.params,
    "depth": depth,
    "batch": batch,
    "seq": seq,
    "compile_s": round(b.compile_s, 2),
    **mem,
  }
  free = available_bytes()
  need = mem["per_device_bytes"]  # the state (allocated first), data, temporaries
  if need > ram_fraction * free:
    row["skipped"] = (
      f"needs {need / GiB:.1f} GiB (XLA's memory analysis), this machine has "
      f"{free / GiB:.1f} GiB available; only {ram_fraction:.0%} of it is used"
    )
    return row
  log(f"  timing {family} width {width} ({b.params:,} params): {need / GiB:.2f} GiB")
  times, loss = b.run(steps, warmup)
  med = statistics.median(times)
  xla, loops = b.xla_flops(), b.loop_flops()
  model = 6.0 * b.params * batch * seq
  row |= {
    "steps": steps,
    "warmup": warmup,
    "step_s": med,
    "best_s": min(times),
    "loss": loss,  # the last step's, on random data and weights: finite if all went well
    "xla_flops": xla,
    "xla_gflops_per_s": xla / med / 1e9,
    "model_flops": model,
    "model_gflops_per_s": model / med / 1e9,
  }
  if loops is not None:
    row |= {"loop_flops": loops, "loop_gflops_per_s": loops / med / 1e9}
  return row


# ---- 3. PyTorch's nn.LSTM --------------------------------------------------------------------
def _peak_rss() -> int:
  """The peak RSS so far, bytes: /proc's VmHWM (resettable: `_reset_peak`), else
  `ru_maxrss`."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == "darwin" else peak * 1024  # KiB on Linux


def _rss() -> int:
  """The RSS now, bytes (Linux), else the peak so far."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return _peak_rss()


def _reset_peak() -> bool:
  """Sets the peak RSS (VmHWM) to the RSS now (Linux >= 4.0); False where it cannot."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def torch_probe(width: int, depth: int, batch: int, seq: int) -> dict:
  """In this (fresh) process: how far one nn.LSTM train step at `width` raises the peak RSS
  above the RSS before its model and data were made, for forward + backward
  (`bytes_fwd_bwd`) and for the AdamW step (`bytes_step`, its moments made there) apart,
  the peak RSS being reset between the two; `bytes` is the larger. Where the peak cannot be
  reset, `bytes` is the whole step's and the phases are not told apart."""
  import torch

  def make(w: int):
    model = torch.nn.LSTM(w, w, num_layers=depth, batch_first=True)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    return model, opt, torch.randn(batch, seq, w), torch.randn(batch, seq, w)

  def forward_backward(model, x, y) -> None:
    loss = torch.mean((model(x)[0] - y) ** 2)
    loss.backward()

  torch.manual_seed(0)
  model, opt, x, y = make(4)  # loads the kernels and starts the thread pools
  forward_backward(model, x, y)
  opt.step()
  del model, opt, x, y
  resettable = _reset_peak()
  idle = _rss() if resettable else _peak_rss()
  model, opt, x, y = make(width)
  forward_backward(model, x, y)
  fwd_bwd = _peak_rss() - idle
  out: dict[str, Any] = {"width": width, "idle_rss": idle, "bytes_fwd_bwd": fwd_bwd}
  if resettable:
    _reset_peak()
  opt.step()
  total = _peak_rss() - idle
  out["params"] = sum(p.numel() for p in model.parameters())
  out["bytes_step"] = total if resettable else None
  out["bytes"] = max(fwd_bwd, total)
  return out


def _torch_probe_subprocess(width: int, depth: int, batch: int, seq: int) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--torch-probe", str(width)]
  cmd += ["--depth", str(depth), "--batch", str(batch), "--seq", str(seq)]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:  # e.g. killed for memory
    raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_largest(
  depth: int,
  batch: int,
  seq: int,
  budget_bytes: float,
  widths: list[int],
  ram_fraction: float = 0.5,
  verify: bool = False,
  max_width: int = 32768,
  probe: Callable[[int, int, int, int], dict] = _torch_probe_subprocess,
) -> dict:
  """Measurement 3: nn.LSTM's largest width under the budget (module docstring).

  Probes `widths` (those predicted to fit `ram_fraction` of the free RAM); if the budget
  lies between two probes, more probes close the gap to `STEP` (`"method": "measured"`);
  with `verify`, probes also go on past the given widths while they fit the RAM. Otherwise
  a least-squares quadratic in w through the probes is solved for the budget
  (`"method": "extrapolated"`)."""
  start = time.perf_counter()
  measured: dict[int, dict] = {}
  skipped: list[int] = []
  free = available_bytes()
  limit = ram_fraction * free

  def phases() -> list[str]:
    split = all(m.get("bytes_step") is not None for m in measured.values())
    return ["bytes_fwd_bwd", "bytes_step"] if split else ["bytes"]

  def fit(key: str) -> np.ndarray:
    ws = sorted(measured)
    return np.polyfit(ws, [measured[w][key] for w in ws], min(2, len(ws) - 1))

  def predicted(w: int) -> float:
    if len(measured) >= 3:
      return max(float(np.polyval(fit(key), w)) for key in phases())
    # 1.5x (params, grads, m, v) and 16 floats per layer, step and unit (a measured 9).
    return 1.5 * 16.0 * depth * 8 * w * (w + 1) + 64.0 * depth * batch * seq * w

  def run(w: int) -> bool:
    measured[w] = probe(w, depth, batch, seq)
    log(f"  torch nn.LSTM width {w}: {measured[w]['bytes'] / GiB:.3f} GiB peak RSS growth")
    return measured[w]["bytes"] <= budget_bytes

  lo: int | None = None
  hi: int | None = None
  stopped = None
  try:
    for w in sorted(widths):
      if predicted(w) > limit:
        skipped.append(w)
      elif run(w):
        lo = w
      else:
        hi = w
        break
    while (lo is None or hi is None or hi - lo > STEP) and (verify or hi is not None):
      if lo == max_width or hi == STEP:
        break
      sizes = {v: m["bytes"] for v, m in measured.items()}
      w = next_width(sizes, budget_bytes, lo, hi, max_width)
      if hi is None and predicted(w) > limit:
        stopped = f"width {w} would need about {predicted(w) / GiB:.1f} GiB, over the RAM limit"
        break
      if run(w):
        lo = w if lo is None else max(lo, w)
      else:
        hi = w if hi is None else min(hi, w)
  except RuntimeError as e:  # a probe died: what was measured before it still stands
    stopped = f"the probe at width {w} failed ({e})"
  row: dict[str, Any] = {
    "kind": "torch",
    "family": "torch nn.LSTM",
    "depth": depth,
    "batch": batch,
    "seq": seq,
    "budget_bytes": int(budget_bytes),
    "torch": importlib.metadata.version("torch"),
    "probes": {str(w): measured[w]["bytes"] for w in sorted(measured)},
    "probe_phases": {
      str(w): [measured[w].get("bytes_fwd_bwd"), measured[w].get("bytes_step")]
      for w in sorted(measured)
    },
    "skipped_widths": skipped,
    "ram_limit_bytes": int(limit),
  }
  if stopped:
    row["stopped"] = stopped
  if lo is not None and hi is not None and hi - lo <= STEP:
    row |= {"method": "measured", "width": lo, "next_width": hi}
    row |= {"bytes": measured[lo]["bytes"], "next_bytes": measured[hi]["bytes"]}
  elif len(measured) >= 3:
    # Each phase's peak is a quadratic in w (weights ~ w^2, activations ~ w); the step's
    # peak is the larger of the two, so the answer is the smaller of their solutions.
    row["method"] = "extrapolated"
    w_star, binding = float("inf"), None
    for key in phases():
      coeffs = fit(key)
      roots = np.roots(coeffs - np.array([0.0] * (len(coeffs) - 1) + [budget_bytes]))
      real = [float(r.real) for r in roots if abs(r.imag) < 1e-9 and r.real > 0]
      resid = [abs(np.polyval(coeffs, w) / measured[w][key] - 1) for w in sorted(measured)]
      row[f"fit_{key}"] = {
        "per_w2": float(coeffs[0]) if len(coeffs) == 3 else 0.0,
        "per_w": float(coeffs[-2]),
        "const": float(coeffs[-1]),
        "max_rel_residual": float(max(resid)),
      }
      if real and max(real) < w_star:
        w_star, binding = max(real), key
    if binding is None:
      return {**row, "width": None, "note": "the quadratic fits have no positive solution"}
    width = int(w_star) // STEP * STEP
    row |= {"width": width, "bytes": predicted(width), "binding_phase": binding}
    # The w^2 term of params + grads + AdamW's two moments, float32, for comparison.
    row["expected_step_per_w2"] = 16.0 * depth * 8
  else:
    return {**row, "width": None, "note": "fewer than 3 probed widths fit this machine's RAM"}
  row["params"] = depth * 8 * row["width"] * (row["width"] + 1)  # w_ih, w_hh, b_ih, b_hh
  row["search_s"] = round(time.perf_counter() - start, 1)
  return row


# ---- the table --------------------------------------------------------------------------------
def _gib(n: float | None) -> str:
  return "-" if n is None else f"{n / GiB:.3g}"


def _count(n: float | None) -> str:
  if n is None:
    return "-"
  for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if n >= scale:
      return f"{n / scale:.3g}{unit}"
  return str(int(n))


def markdown(rows: list[dict]) -> str:
  """BENCHMARKS.md tables from the JSON lines (the rows of any of the measurements)."""
  out: list[str] = []
  for r in rows:
    if r.get("kind") == "machine":
      soft = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
      out += [f"Command: `{r['command']}`", "", f"Machine: {r['machine']}; {soft}", ""]
  found = [r for r in rows if r.get("kind") == "largest"]
  if found:
    r0 = found[0]
    out += [
      f"### Largest model under {r0['budget_bytes'] / GiB:.3g} GiB per device "
      f"(B={r0['batch']}, T={r0['seq']}, depth {r0['depth']})",
      "",
      "XLA's memory analysis of the compiled train step (forward, MSE, backward, AdamW; state"
      " donated): argument + output + temp - alias bytes per device. Widths are multiples of"
      f" {STEP}; `next` is the smallest width found not to fit.",
      "",
      "| family | devices | FSDP | remat | width | params | GiB/device | args | temp "
      "| next width (GiB) | replicated params | compiles |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in found:
      nxt = f"{r['next_width']} ({_gib(r['next_per_device_bytes'])})" if "next_width" in r else "-"
      rep = f"{r['replicated_param_fraction']:.1%}" if r["fsdp"] and r.get("width") else "-"
      out.append(
        f"| {r['family']} | {r['devices']} | {'yes' if r['fsdp'] else 'no'} "
        f"| {'yes' if r['remat'] else 'no'} | {r.get('width') or '-'} | {_count(r.get('params'))} "
        f"| {_gib(r.get('per_device_bytes'))} | {_gib(r.get('argument_bytes'))} "
        f"| {_gib(r.get('temp_bytes'))} | {nxt} "
        f"| {rep} "
        f"| {r['compiles']} |" + (f" {r['note']}" if "note" in r else "")
      )
    out.append("")
  torch_rows = [r for r in rows if r.get("kind") == "torch"]
  for r in torch_rows:
    if r.get("width") is None:
      out += [f"PyTorch nn.LSTM: no result ({r.get('note')}).", ""]
      continue
    how = "bisected between probes"
    if r["method"] != "measured":
      phase = {"bytes_step": "the AdamW step", "bytes_fwd_bwd": "forward + backward"}
      how = (
        f"EXTRAPOLATED from probes at widths {', '.join(r['probes'])} (a quadratic fit per"
        f" phase; the binding one: {phase.get(r['binding_phase'], 'the whole step')})"
      )
    out += [
      f"PyTorch {r['torch']} `nn.LSTM`, same depth, B, T and budget (peak RSS growth of one "
      f"train step in a subprocess, {how}): width {r['width']}, {_count(r['params'])} params, "
      f"{_gib(r['bytes'])} GiB.",
      "",
    ]
  memory = [r for r in rows if r.get("kind") == "memory"]
  if memory:
    out += [
      "| family | width | params | devices | FSDP | remat | GiB/device | args | temp |",
      "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in memory:
      out.append(
        f"| {r['family']} | {r['width']} | {_count(r['params'])} | {r['devices']} "
        f"| {'yes' if r['fsdp'] else 'no'} | {'yes' if r['remat'] else 'no'} "
        f"| {_gib(r['per_device_bytes'])} | {_gib(r['argument_bytes'])} "
        f"| {_gib(r['temp_bytes'])} |"
      )
    out.append("")
  order = {f: i for i, f in enumerate(FAMILIES)}
  timed = sorted(
    (r for r in rows if r.get("kind") == "timing"),
    key=lambda r: (order.get(r["family"], len(order)), r["params"]),
  )
  if timed:
    r0 = timed[0]
    out += [
      f"### Train step time, one CPU device (B={r0['batch']}, T={r0['seq']}, depth {r0['depth']})",
      "",
      "Median of the timed steps after warm-up. XLA GFLOP: `cost_analysis()`'s count, which"
      " counts each while loop's body once (the time loop's recurrence for one step: an"
      " undercount). Loops: the same count with every loop of known trip count counted that"
      " many times (`flaxlstm.train.flops.step_flops`). Model GFLOP: 6 x params x B x T.",
      "",
      "| family | params | width | step s | best s | compile s | GiB | XLA GFLOP | XLA GFLOP/s "
      "| loops GFLOP | loops GFLOP/s | model GFLOP | model GFLOP/s |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in timed:
      loops = "- | -"
      if "loop_flops" in r:
        loops = f"{r['loop_flops'] / 1e9:.4g} | {r['loop_gflops_per_s']:.3g}"
      if "skipped" in r:
        out.append(
          f"| {r['family']} | {_count(r['params'])} | {r['width']} | skipped: {r['skipped']} "
          f"| | {r['compile_s']} | {_gib(r['per_device_bytes'])} | | | | | | |"
        )
        continue
      out.append(
        f"| {r['family']} | {_count(r['params'])} | {r['width']} | {r['step_s']:.4g} "
        f"| {r['best_s']:.4g} | {r['compile_s']} | {_gib(r['per_device_bytes'])} "
        f"| {r['xla_flops'] / 1e9:.4g} | {r['xla_gflops_per_s']:.3g} "
        f"| {loops} "
        f"| {r['model_flops'] / 1e9:.4g} | {r['model_gflops_per_s']:.3g} |"
      )
    out.append("")
  return "\n".join(out)


def versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "torch"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def machine() -> str:
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next(
        (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model
      )
  except OSError:
    pass
  return f"{model}, {os.cpu_count()} CPU cores, {available_bytes() / GiB:.1f} GiB available"


# ---- main -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--quick", action="store_true", help="tiny sizes everywhere (the test)")
  ap.add_argument("--budget-gib", type=float, default=16.0, help="per-device memory budget")
  ap.add_argument("--batch", type=int, default=16, help="batch of the memory search")
  ap.add_argument("--seq", type=int, default=256, help="sequence length of the memory search")
  ap.add_argument("--depth", type=int, default=4, help="layers (lstm) or blocks (slstm, xlstm)")
  ap.add_argument("--families", default=",".join(FAMILIES))
  ap.add_argument("--devices", default="1,8", help="device counts of the memory search")
  ap.add_argument("--fsdp", default="both", choices=("off", "on", "both"))
  ap.add_argument("--remat", default="both", choices=("off", "on", "both"))
  ap.add_argument("--max-width", type=int, default=32768)
  ap.add_argument(
    "--fixed-width", type=int, default=0, help="no search: the memory at this width, every layout"
  )
  ap.add_argument("--timing-params", default="1e6,1e7,1e8,1e9")
  ap.add_argument("--timing-batch", type=int, default=8)
  ap.add_argument("--timing-seq", type=int, default=64)
  ap.add_argument("--steps", type=int, default=3, help="timed steps per size")
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--skip-search", action="store_true")
  ap.add_argument("--skip-timing", action="store_true")
  ap.add_argument("--torch", action="store_true", help="also PyTorch nn.LSTM's largest width")
  ap.add_argument("--torch-widths", default="256,512,768,1024", help="widths to probe")
  ap.add_argument(
    "--torch-verify",
    action="store_true",
    help="keep probing past --torch-widths while the RAM allows (slow: minutes a probe)",
  )
  ap.add_argument(
    "--torch-ram-fraction", type=float, default=0.5, help="of MemAvailable, for torch probes"
  )
  ap.add_argument(
    "--ram-fraction", type=float, default=0.8, help="of MemAvailable, for the timed JAX steps"
  )
  ap.add_argument("--json", default=None, help="append the JSON lines to this file too")
  ap.add_argument("--table", default=None, help="only print the table of this JSON-lines file")
  ap.add_argument("--child-devices", type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument("--guesses", default="", help=argparse.SUPPRESS)  # family=width,...
  ap.add_argument("--torch-probe", type=int, default=0, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.quick:
    defaults = {a.dest: a.default for a in ap._actions}
    for key, value in QUICK.items():
      if getattr(args, key) == defaults[key]:  # what is given explicitly wins
        setattr(args, key, value)
  args.families = [f for f in args.families.split(",") if f]
  args.guesses = {k: int(v) for k, v in (g.split("=") for g in args.guesses.split(",") if g)}
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  if args.torch_probe:
    print(json.dumps(torch_probe(args.torch_probe, args.depth, args.batch, args.seq)))
    return 0
  if args.table:
    with open(args.table) as f:
      print(markdown([json.loads(line) for line in f if line.startswith("{")]))
    return 0

  rows: list[dict] = []
  sink = open(args.json, "a") if args.json else None

  def emit(row: dict) -> None:
    rows.append(row)
    line = json.dumps(row)
    print(line, flush=True)
    if sink:
      sink.write(line + "\n")
      sink.flush()

  try:
    if args.child_devices:
      search(args, args.child_devices, emit, args.guesses)
      return 0
    emit(
      {
        "kind": "machine",
        "machine": machine(),
        "versions": versions(),
        "command": " ".join(["python", os.path.relpath(__file__), *(argv or sys.argv[1:])]),
      }
    )
    if not args.skip_search:
      for n in (int(d) for d in args.devices.split(",") if d):
        # Each device count's search starts from the last one's answers (no FSDP, no remat).
        guesses = {
          r["family"]: r["width"]
          for r in rows
          if r.get("kind") == "largest" and r.get("width") and not r["fsdp"] and not r["remat"]
        }
        if n <= jax.device_count():
          search(args, n, emit, guesses)
        else:
          search_in_subprocess(args, n, emit, guesses)
    if not args.skip_timing:
      targets = [float(t) for t in args.timing_params.split(",") if t]
      for target in targets:  # the largest (slowest, most memory) last
        for family in args.families:
          emit(
            timing(
              family,
              target,
              args.depth,
              args.timing_batch,
              args.timing_seq,
              args.steps,
              args.warmup,
              ram_fraction=args.ram_fraction,
            )
          )
    if args.torch:
      widths = [int(w) for w in args.torch_widths.split(",") if w]
      emit(
        torch_largest(
          args.depth,
          args.batch,
          args.seq,
          args.budget_gib * GiB,
          widths,
          ram_fraction=args.torch_ram_fraction,
          verify=args.torch_verify,
          max_width=args.max_width,
        )
      )
  finally:
    if sink:
      sink.close()
  print()
  print(markdown(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
