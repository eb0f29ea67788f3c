"""Correctness of flaxlstm's LSTM paths on a CUDA GPU, against the CPU (run by gpu_check.sh).

For each case (stack widths, bidirectional, ragged `seq_lengths`) it computes the top
layer's outputs, every layer's final carry, and the gradients of a loss with respect to the
parameters and the inputs:

* on the CPU, fused path, matmul precision "highest": the reference;
* on the GPU with `implementation` "fused", "autodiff" and "cudnn" (cuDNN's kernel: the
  compiled program must hold cuDNN's RNN custom call, else the row says it fell back).

Each is run at matmul precision "highest" (no TF32; cuDNN is then told to avoid it too)
and must agree with the reference to `--rtol`; the same at the default precision, and with
bfloat16 compute, is reported for information (TF32 and bf16 round on purpose).

`--emulate` runs the whole check on the CPU with `cudnn.emulate()` standing in for the
GPU's kernel (what the test suite does to keep this script working).

Usage:
  python experiments/benchmarks/gpu_check.py --out gpu_correctness.md
  python experiments/benchmarks/gpu_check.py --summarize bench.jsonl --out summary.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from flaxlstm import StackedLSTM
from flaxlstm.nn.kernels import cudnn

B, T, D = 16, 32, 8
CASES = {  # name: (widths, bidirectional)
  "two_layers_64": ((64, 64), False),
  "bidirectional_64": ((64, 64), True),
  "widths_64_32": ((64, 32), False),
}


def _loss_fn(model, lengths):
  def value(params, x):
    carries, y = model.apply({"params": params}, x, seq_lengths=lengths)
    loss = jnp.mean(jnp.sin(y)) + sum(jnp.mean(a**2) for a in jax.tree.leaves(carries))
    return loss, (carries, y)

  return jax.value_and_grad(value, argnums=(0, 1), has_aux=True)


def _max_rel_err(a, b) -> float:
  """Largest |a - b| relative to the largest |b| of the same array, over all arrays."""
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    worst = max(worst, float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12)))
  return worst


# (implementation, matmul precision, compute dtype); only the float32 "highest" runs gate.
RUNS = (
  ("fused", "highest", None),
  ("autodiff", "highest", None),
  ("cudnn", "highest", None),
  ("fused", "default", None),
  ("cudnn", "default", None),
  ("auto", "default", jnp.bfloat16),  # bf16 runs the autodiff path (fused needs float32)
)


def check(device, emulate: bool, rtol: float) -> tuple[list[dict], bool]:
  cpu = jax.devices("cpu")[0]
  rng = np.random.default_rng(0)
  rows, ok = [], True
  for name, (widths, bi) in CASES.items():
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B).astype(np.int32)
    lengths[0] = T
    model = StackedLSTM(widths, bidirectional=bi, return_carry=True)
    with jax.default_device(cpu), jax.default_matmul_precision("highest"):
      params = jax.jit(model.init)(jax.random.key(0), x)["params"]
      ref = jax.jit(_loss_fn(model, lengths))(params, x)
    for impl, precision, dtype in RUNS:
      m = StackedLSTM(widths, bidirectional=bi, return_carry=True, implementation=impl, dtype=dtype)
      fn = jax.jit(_loss_fn(m, jnp.asarray(lengths)))
      args = jax.device_put((params, x), device)
      ctx = cudnn.emulate() if emulate else contextlib.nullcontext()
      with ctx, jax.default_matmul_precision(precision if precision == "highest" else None):
        compiled = fn.lower(*args).compile()
        out = compiled(*args)
      if emulate:
        ran_cudnn = impl == "cudnn"
      else:
        ran_cudnn = "cudnn_rnn" in (compiled.as_text() or "")
      err = _max_rel_err(out, ref)
      passed = err <= rtol if precision == "highest" and dtype is None else None
      if impl == "cudnn" and not ran_cudnn:
        passed = False  # asked for cuDNN, ran something else
      ok = ok and passed is not False
      rows.append(
        {
          "case": name,
          "implementation": impl,
          "precision": precision,
          "dtype": "float32" if dtype is None else "bfloat16",
          "ran_cudnn": bool(ran_cudnn),
          "max_rel_err": err,
          "passed": passed,
        }
      )
      print(json.dumps(rows[-1]), flush=True)
  return rows, ok


def correctness_markdown(rows: list[dict], device, rtol: float) -> str:
  lines = [
    f"Device: {device.device_kind} ({jax.__version__}); reference: CPU, fused, precision "
    f"highest; B={B}, T={T}, D={D}, ragged seq_lengths; gate rtol {rtol:g} (highest, float32)",
    "",
    "| case | implementation | precision | dtype | cuDNN kernel | max rel. error | passed |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    passed = {True: "yes", False: "**no**", None: "(info)"}[r["passed"]]
    lines.append(
      f"| {r['case']} | {r['implementation']} | {r['precision']} | {r['dtype']} | "
      f"{'yes' if r['ran_cudnn'] else 'no'} | {r['max_rel_err']:.1e} | {passed} |"
    )
  return "\n".join(lines) + "\n"


def summarize(jsonl: str) -> str:
  """The issue's targets from train_step.py's rows: flaxlstm's best fp32 path vs PyTorch's
  cuDNN LSTM, bf16 vs fp32, and which of fused / cuDNN wins at each shape."""
  rows = [json.loads(line) for line in open(jsonl) if line.strip()]
  by = {(r["shape"], r["peer"]): r for r in rows if "peer" in r}
  lines = [
    "| shape | fused s | cudnn s | faster path | best fp32 vs torch fp32 (min) | "
    "flaxlstm bf16 vs fp32 | torch bf16 vs fp32 | keras s |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for shape in dict.fromkeys(r["shape"] for r in rows if "peer" in r):

    def t(peer, shape=shape):
      r = by.get((shape, peer))
      return r["min_s"] if r else float("nan")

    fused, cud, torch = t("flaxlstm"), t("flaxlstm_cudnn"), t("torch")
    best = min(fused, cud)
    lines.append(
      f"| {shape} | {fused:.4f} | {cud:.4f} | {'cudnn' if cud < fused else 'fused'} | "
      f"{torch / best:.2f}x | {best / t('flaxlstm_bf16'):.2f}x | "
      f"{torch / t('torch_bf16'):.2f}x | {t('keras'):.4f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default=None, help="write the markdown table here")
  ap.add_argument("--rtol", type=float, default=1e-4)
  ap.add_argument("--emulate", action="store_true", help="CPU only, cudnn.emulate()")
  ap.add_argument("--summarize", default=None, help="train_step.py JSON lines to summarize")
  args = ap.parse_args(argv)
  if args.summarize:
    text = summarize(args.summarize)
  else:
    if args.emulate:
      device = jax.devices("cpu")[0]
    else:
      gpus = [d for d in jax.devices() if d.platform == "gpu"]
      if not gpus:
        print("error: no GPU visible to JAX (use --emulate for the CPU stand-in)")
        return 2
      device = gpus[0]
    rows, ok = check(device, args.emulate, args.rtol)
    text = correctness_markdown(rows, device, args.rtol)
    if not ok:
      text += "\nFAILED: an implementation disagrees with the CPU reference (see above)\n"
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return 0 if args.summarize or ok else 1


if __name__ == "__main__":
  sys.exit(main())
