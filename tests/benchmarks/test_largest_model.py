"""experiments/benchmarks/largest_model.py at tiny sizes (not timing tests): XLA's memory
number grows with the width, the search stops between a width that fits and the next one,
FSDP lowers the per-device bytes on 8 (emulated) devices, and the rows make a table."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "benchmarks" / "largest_model.py"


@pytest.fixture(scope="module")
def lm():
  spec = importlib.util.spec_from_file_location("largest_model", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_memory_grows_with_width_and_the_search_brackets_the_budget(lm, monkeypatch):
  small, big = (lm.memory_row("lstm", w, depth=1, batch=2, seq=4) for w in (64, 128))
  assert big["params"] > small["params"] > 0
  assert big["per_device_bytes"] > small["per_device_bytes"] > 0
  # The step's arguments hold params and both AdamW moments (float32), donated: aliased.
  assert small["argument_bytes"] >= 3 * 4 * small["params"]
  assert small["alias_bytes"] >= 3 * 4 * small["params"]

  # The search on these two compiled numbers (no more compiles: anything else would fail).
  known = {64: small, 128: big}
  monkeypatch.setattr(lm, "memory_row", lambda family, w, *a, **k: known[w])
  budget = (small["per_device_bytes"] + big["per_device_bytes"]) / 2
  row = lm.largest("lstm", 1, 2, 4, budget, guess=64)
  assert (row["width"], row["next_width"]) == (64, 128)
  assert row["per_device_bytes"] <= budget < row["next_per_device_bytes"]
  table = lm.markdown([row])
  assert "| lstm | 1 | no | no | 64 | 33k |" in table, table


def test_a_timed_step_reports_time_and_flops(lm):
  row = lm.timing("lstm", 2e4, depth=1, batch=2, seq=4, steps=2, warmup=1)
  assert row["width"] == 64 and row["params"] == 8 * 64 * 64 + 4 * 64
  assert row["step_s"] > 0 and row["compile_s"] > 0
  assert row["xla_flops"] > 0 and row["model_flops"] == 6 * row["params"] * 2 * 4
  assert "| lstm | 33k | 64 |" in lm.markdown([row])


@pytest.mark.parametrize("guess", [None, 1000])
def test_the_search_finds_the_last_fitting_width(lm, monkeypatch, guess):
  """Against brute force, on memory curves like the real ones (and one with a jump)."""
  curves = [
    lambda w: 512 * w * w + 524288 * w + 1e6,
    lambda w: 15000 * w * w + 3e5 * w,
    lambda w: 512 * w * w * (1.3 if w > 3000 else 1.0) + 1e5 * w,
    lambda w: 1e6 * w,
  ]
  for curve in curves:
    calls: list[int] = []

    def fake(family, w, *args, curve=curve, calls=calls, **kw):
      calls.append(w)
      return {"width": w, "params": w * w, "per_device_bytes": int(curve(w)), "compile_s": 0}

    monkeypatch.setattr(lm, "memory_row", fake)
    monkeypatch.setattr(lm, "log", lambda msg: None)
    for budget in (2**34, 2**30, 2**23):
      calls.clear()
      row = lm.largest("lstm", 4, 16, 256, budget, guess=guess)
      fitting = [w for w in range(64, 32769, 64) if curve(w) <= budget]
      assert row["width"] == (max(fitting) if fitting else None), (budget, calls)
      assert len(calls) <= 8, calls


def test_torch_row_measures_between_probes_and_extrapolates_otherwise(lm, monkeypatch):
  monkeypatch.setattr(lm, "available_bytes", lambda: 2**40)
  monkeypatch.setattr(lm, "log", lambda msg: None)
  # The two phases of a step's peak RSS: forward + backward (activations ~ w) and the AdamW
  # step (params, grads and moments ~ w^2); the peak is the larger.
  fwd_bwd = lambda w: 256.0 * w * w + 6e5 * w + 5e7
  step = lambda w: 640.0 * w * w + 1e4 * w + 5e7
  peak = lambda w: max(fwd_bwd(w), step(w))

  def probe(w, depth, batch, seq):
    return {"width": w, "bytes_fwd_bwd": fwd_bwd(w), "bytes_step": step(w), "bytes": peak(w)}

  widths = [256, 512, 768, 1024]
  last_fitting = lambda budget: max(w for w in range(64, 32769, 64) if peak(w) <= budget)
  row = lm.torch_largest(4, 16, 256, 2**29, widths, probe=probe)  # 512 MiB: between probes
  exact = last_fitting(2**29)
  assert (row["method"], row["width"], row["next_width"]) == ("measured", exact, exact + 64)
  row = lm.torch_largest(4, 16, 256, 2**34, widths, probe=probe)  # 16 GiB: past them
  assert row["method"] == "extrapolated" and row["binding_phase"] == "bytes_step"
  assert row["fit_bytes_step"]["per_w2"] == pytest.approx(640)
  assert row["width"] == last_fitting(2**34)
  assert "EXTRAPOLATED" in lm.markdown([row])


@pytest.mark.slow  # one subprocess with 8 emulated devices: ~10 s
def test_fsdp_lowers_the_per_device_bytes_on_8_devices(lm, tmp_path, capsys):
  out = tmp_path / "rows.jsonl"
  args = [
    "--quick",
    "--devices",
    "8",
    "--families",
    "lstm",
    "--fixed-width",
    "128",
    "--remat",
    "off",
  ]
  assert lm.main(args + ["--skip-timing", "--json", str(out)]) == 0
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["kind"] for r in rows] == ["machine", "memory", "memory"]
  rows = rows[1:]
  assert all(r["devices"] == 8 for r in rows)
  plain, sharded = sorted(rows, key=lambda r: r["fsdp"])
  assert not plain["fsdp"] and sharded["fsdp"]
  assert sharded["per_device_bytes"] < plain["per_device_bytes"]
  # Params and AdamW state split 8 ways: about an eighth of the arguments (the batch is
  # split in both).
  assert sharded["argument_bytes"] < plain["argument_bytes"] / 4
  assert sharded["replicated_param_fraction"] == 0.0
  assert math.isclose(plain["replicated_param_fraction"], 1.0)
  assert "| lstm | 128 |" in capsys.readouterr().out
