"""The benchmark scripts run end to end on their tiny shape (not timing tests)."""

from __future__ import annotations

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
