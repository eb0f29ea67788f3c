"""The benchmark scripts run end to end on their tiny shape (not timing tests)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "train_step.py"


@pytest.mark.slow
def test_benchmark_runs_on_tiny_shape(tmp_path):
  out, js = tmp_path / "BENCH.md", tmp_path / "bench.jsonl"
  # Peers that are not installed are skipped by the script itself, with a note.
  proc = subprocess.run(
    [
      sys.executable,
      str(SCRIPT),
      "--shape",
      "tiny",
      "--steps",
      "2",
      "--warmup",
      "1",
      "--gemm-size",
      "256",
      # Two peers are enough to check the script's machinery (the others' imports, Keras'
      # above all, cost the suite more than the whole run).
      "--peers",
      "flaxlstm,flax",
      "--out",
      str(out),
      "--json",
      str(js),
    ],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(line) for line in js.read_text().splitlines()]
  timed = {r["peer"]: r for r in rows if "peer" in r}
  assert "flaxlstm" in timed
  for r in timed.values():
    assert r["median_s"] > 0 and r["gflops"] > 0 and "flaxlstm_speedup" in r
  text = out.read_text()
  assert "| flaxlstm |" in text and "Command:" in text and "Machine:" in text


@pytest.mark.slow
def test_kernel_ab_runs_against_a_git_revision():
  script = SCRIPT.parent / "ab_kernels.py"
  proc = subprocess.run(
    [sys.executable, str(script), "--rev", "HEAD", "--shape", "tiny", "--steps", "2"],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=SCRIPT.parents[2],
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][1:]  # no header
  assert [r.split(" | ")[0] for r in rows] == ["| working tree", "| HEAD"], rows
  for row in rows:
    assert float(row.split(" | ")[1]) > 0  # a best step time was measured


def _load(name: str):
  spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow  # trains to completion
def test_gpu_check_runs_on_cpu_with_the_emulated_kernel(tmp_path, monkeypatch):
  """gpu_check.py's correctness pass, shrunk, with `cudnn.emulate()` standing in for the
  GPU: every path agrees with the CPU reference and cuDNN is reported as run."""
  gpu_check = _load("gpu_check")
  monkeypatch.setattr(gpu_check, "B", 3)
  monkeypatch.setattr(gpu_check, "T", 5)
  monkeypatch.setattr(gpu_check, "CASES", {"tiny": ((4,), False)})
  out = tmp_path / "correctness.md"
  assert gpu_check.main(["--emulate", "--out", str(out)]) == 0
  rows = [r for r in out.read_text().splitlines() if r.startswith("| tiny")]
  assert len(rows) == len(gpu_check.RUNS)
  gated = [r for r in rows if r.endswith("| yes |")]
  assert len(gated) == 3 and all(
    "| cudnn | highest | float32 | yes |" in r for r in rows if "| cudnn | highest" in r
  )


def test_gpu_check_summary_reads_the_benchmark_rows(tmp_path):
  gpu_check = _load("gpu_check")
  times = {"flaxlstm": 2.0, "flaxlstm_cudnn": 1.0, "flaxlstm_bf16": 0.5, "torch": 1.5}
  times |= {"torch_bf16": 1.0, "keras": 1.2}
  js = tmp_path / "bench.jsonl"
  js.write_text(
    "".join(json.dumps({"shape": "large", "peer": p, "min_s": t}) + "\n" for p, t in times.items())
  )
  assert gpu_check.main(["--summarize", str(js), "--out", str(tmp_path / "s.md")]) == 0
  row = [r for r in (tmp_path / "s.md").read_text().splitlines() if r.startswith("| large")][0]
  # cuDNN is the faster path; 1.5 / 1.0 vs torch; bf16 2x the best fp32; torch bf16 1.5x.
  assert row == "| large | 2.0000 | 1.0000 | cudnn | 1.50x | 2.00x | 1.50x | 1.2000 |"


def test_sequential_estimate_scales_measured_runs_by_their_steps():
  # Runs that cost 10 s outside their loop and a loop of 2 s + 5 ms per step, exactly.
  sweep = _load("population_sweep")
  rows = [{"steps": s, "train_wall_time_s": 2 + 0.005 * s} for s in (1000, 1500, 3000)]
  measured = [{"wall_s": 3 * 10 + sum(r["train_wall_time_s"] for r in rows), "rows": rows}]
  got = sweep.estimate_sequential(measured, [800, 1200])
  assert got["outside_loop_s"] == pytest.approx(10)
  assert got["loop_ms_per_step"] == pytest.approx(5)
  assert got["estimate_s"] == pytest.approx(2 * (10 + 2) + 0.005 * 2000)
