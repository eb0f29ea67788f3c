"""Recurrences over a mesh. Heads over the model axis: the sLSTM's recurrence is
block-diagonal over heads and the mLSTM's memory is one matrix per head, so with heads
sharded the loss and the gradients equal one device's and XLA puts no collective inside
the compiled loops (the time loop's scans, forward and backward); resharding happens around
them. The batch over the data axis: the fused LSTM equals one device and never gathers the
batch (its weight gradients are per-device sums, then one all-reduce)."""

import json
import pathlib
import subprocess
import sys

import pytest
from jax_helpers import fake_devices_env


@pytest.mark.slow  # a fresh process with 8 fake devices
def test_sharded_recurrences_equal_one_device_with_no_collective_in_the_loop():
  worker = pathlib.Path(__file__).with_name("heads_worker.py")
  env = fake_devices_env(8)
  out = subprocess.run(
    [sys.executable, str(worker)], capture_output=True, text=True, env=env, timeout=300
  )
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  slstm, mlstm = result["slstm"], result["mlstm"]
  # The fused LSTM's weight gradients sum each device's own batch rows: no all-gather.
  assert result["lstm_data"]["all_gathers"] == 0, result["lstm_data"]
  assert slstm["kernel_shards"] == 8 and slstm["kernel_shard_shape"][0] == 2
  assert mlstm["input_shards"] == 8
  for name, r in result.items():
    assert r["loss"][0] == pytest.approx(r["loss"][1], rel=1e-6), name
    assert r["grad_gap"] < 1e-5, name  # relative to each gradient's largest value
    assert r["loop_bodies"] >= 2, name  # the forward and the backward scan were found
    assert r["loop_collectives"] == [], name
