"""Scale-out: one train step on 1 vs 8 devices (data parallel, FSDP, gate-sharded), elastic
resume 8 -> 2 devices, two real processes (gloo) vs one, and the launch scripts."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from flaxlstm import config as config_lib
from flaxlstm import parallel
from flaxlstm import train as train_lib
from flaxlstm.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "parallel_worker.py")


def _worker(*args):
  out = subprocess.run(
    [sys.executable, WORKER, *args], capture_output=True, text=True, timeout=600, cwd=ROOT
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def layouts(tiny):
  return _worker("layouts", tiny["exp"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["data8", "fsdp8", "data4_model2", "fsdp4_model2"])
def test_layouts_give_the_same_losses_and_params_as_one_device(layouts, name):
  ref, got = layouts["single"], layouts[name]
  assert got["devices"] == 8
  np.testing.assert_allclose(got["losses"], ref["losses"], rtol=2e-5, atol=1e-6)
  for a, b in zip(got["params"], ref["params"]):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


@pytest.mark.slow
def test_fsdp_holds_an_eighth_of_the_state_per_device(layouts):
  fsdp, data = layouts["fsdp8"], layouts["data8"]
  # Replicated: every device holds everything; FSDP: about 1/8 (tiny leftovers such as a
  # bias whose length 8 does not divide stay replicated).
  assert data["max_device_bytes"] == data["total_bytes"]
  assert fsdp["max_device_bytes"] <= 1.2 * fsdp["total_bytes"] / 8


def _gap(got, ref):
  """The largest gap of two runs' params, each relative to the reference leaf's largest."""
  return max(float(np.max(np.abs(np.subtract(a, b))) / np.max(np.abs(b))) for a, b in zip(got, ref))


@pytest.mark.slow  # one fresh process with 8 fake devices for every case below
def test_fsdp_threshold_bf16_gathers_heads_on_the_model_axis_and_2x2x2_equal_one_device(
  tiny, tmp_path
):
  out = _worker("large", tiny["exp"], str(tmp_path / "dump"))
  single = out["single"]
  for name in ("fsdp", "fsdp_threshold"):
    np.testing.assert_allclose(out[name]["losses"], single["losses"], rtol=1e-5)
    assert _gap(out[name]["params"], single["params"]) < 1e-5, name
  kernel = "['encoder']['lstm_0']['cell']['recurrent_kernel']"
  bias = "['encoder']['lstm_0']['cell']['bias']"
  assert "fsdp" in out["fsdp"]["specs"][kernel] and "fsdp" in out["fsdp"]["specs"][bias]
  # mesh.fsdp_min_size=1000: only the kernel of 16 x 64 elements is split.
  split = [k for k, v in out["fsdp_threshold"]["specs"].items() if "fsdp" in v]
  assert split == [kernel]

  # bfloat16 gathers: every split parameter is gathered in bfloat16 and none in float32,
  # the loss within bfloat16's rounding of the weights.
  bf16 = out["fsdp_bf16"]
  specs = list(bf16["specs"].values())  # in the order of the shapes (the params' leaves)
  split_dims = [sorted(shape) for shape, spec in zip(bf16["shapes"], specs) if "fsdp" in spec]
  assert len(split_dims) == 4  # the cell's three arrays and the head's kernel
  gathers = [(dtype, sorted(dims)) for dtype, dims in bf16["partitioned_gathers"]]
  for dims in split_dims:
    assert ("bf16", dims) in gathers and ("f32", dims) not in gathers, dims
  np.testing.assert_allclose(bf16["losses"], single["losses"], rtol=5e-3)
  assert bf16["losses"] != single["losses"]  # the cast happened

  assert "train.grad_accum_steps=4" in out["accum_error"] and "8 devices" in out["accum_error"]

  # The sLSTM's heads over the model axis: each device runs 1 of the 8 heads (1 x 1 x 8), with no
  # collective inside the time loops (forward and backward).
  heads, one = out["slstm_heads"], out["slstm_single"]
  np.testing.assert_allclose(heads["losses"], one["losses"], rtol=1e-5)
  assert _gap(heads["params"], one["params"]) < 1e-5
  cell = "['encoder']['rnn_0']['cell']"
  assert heads["specs"][cell + "['recurrent_kernel']"] == str(P("model", None, None))
  assert "model" not in heads["specs"][cell + "['bias']"]
  assert "model" not in heads["specs"][cell + "['input_kernel']"]
  assert heads["loop_bodies"] >= 2 and heads["loop_collectives"] == []

  # All three axes split (2 x 2 x 2): the xLSTM family matches one device, every parameter
  # split; so does the LSTM, its recurrent kernel split over model only.
  three, one = out["xlstm_222"], out["xlstm_single"]
  np.testing.assert_allclose(three["losses"], one["losses"], rtol=1e-5)
  assert _gap(three["params"], one["params"]) < 1e-5
  assert any("fsdp" in v and "model" in v for v in three["specs"].values()), three["specs"]
  three, one = out["lstm_222"], out["single"]
  np.testing.assert_allclose(three["losses"], one["losses"], rtol=1e-5)
  assert _gap(three["params"], one["params"]) < 1e-5
  assert three["specs"][kernel] == str(P(None, "model"))
  assert three["specs"]["['encoder']['lstm_0']['cell']['input_kernel']"] == str(P("fsdp", "model"))


def test_mesh_errors_are_clear():
  mesh = lambda d, f, m: ml_collections.ConfigDict(dict(data=d, fsdp=f, model=m))
  assert parallel.mesh_shape(mesh(-1, 2, 1), 8) == (4, 2, 1)
  with pytest.raises(InputError, match="needs 6 devices, but 8"):
    parallel.mesh_shape(mesh(3, 2, 1), 8)
  with pytest.raises(InputError, match="do not divide"):
    parallel.mesh_shape(mesh(-1, 3, 1), 8)
  assert parallel.mesh_shape(mesh(2, 2, 2), 8) == (2, 2, 2)


@pytest.mark.slow
def test_elastic_resume_from_8_devices_onto_2(tiny, tmp_path):
  out = _worker("elastic", tiny["exp"], str(tmp_path / "run"))
  resumed, straight = out["resumed"], out["straight"]
  assert resumed["steps"] == straight["steps"] == 20
  for split in ("val", "test"):
    np.testing.assert_allclose(resumed[split]["mse"], straight[split]["mse"], rtol=1e-5)


@pytest.mark.slow
def test_two_processes_match_one_and_resume_in_one(tiny, tmp_path):
  # Two processes of 4 devices each (gloo) against this process's one device: data
  # parallel over 8 devices gives one device's numbers (test_layouts_...), so the reference
  # and the resume run here, where the tiny run is already compiled.
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  env = {**os.environ, "LOCAL_DEVICES": "4", "PYTHON": sys.executable}
  out = subprocess.run(
    [
      "bash",
      os.path.join(ROOT, "launch", "local.sh"),
      "2",
      "--config",
      tiny["exp"],
      "--workdir",
      two,
      "--quiet",
      "--config.train.max_steps=10",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
    env=env,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.count("+ ") == 2  # the script prints each command it runs
  config = lambda steps: config_lib.load_config(tiny["exp"], [f"train.max_steps={steps}"])
  reference = train_lib.train_and_evaluate(config(10), one)
  for split in ("val", "test"):
    np.testing.assert_allclose(_metrics(two)[split]["mse"], reference[split]["mse"], rtol=2e-5)
  # Only process 0 writes metrics: each step is logged once.
  with open(os.path.join(two, "metrics.jsonl")) as f:
    steps = [(r["step"], r["split"]) for r in map(json.loads, f)]
  assert len(steps) == len(set(steps))
  # The checkpoint of the two-process run continues in one process (here, one device).
  resumed = train_lib.train_and_evaluate(config(20), two)
  reference = train_lib.train_and_evaluate(config(20), one)
  assert resumed["steps"] == 20
  np.testing.assert_allclose(resumed["test"]["mse"], reference["test"]["mse"], rtol=2e-5)


@pytest.mark.parametrize(
  "script, args, expected",
  [
    ("local.sh", ["3", "--dry-run", "--workdir", "runs/x"], "--num_processes 3 --process_id 2"),
    (
      "slurm.sbatch",
      ["--workdir", "runs/x"],
      "srun --kill-on-bad-exit=1 flaxlstm train --distributed --workdir runs/x",
    ),
    (
      "tpu_vm.sh",
      ["my-tpu", "zone-a", "--dry-run", "--workdir", "runs/x"],
      "--worker=all --command cd ~/flaxlstm && GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
      "flaxlstm train --distributed --workdir runs/x",
    ),
  ],
)
def test_launch_scripts_print_their_command_in_dry_run(script, args, expected):
  env = {**os.environ, "DRY_RUN": "1"}
  out = subprocess.run(
    ["bash", os.path.join(ROOT, "launch", script), *args],
    capture_output=True,
    text=True,
    timeout=60,
    env=env,
  )
  assert out.returncode == 0, out.stderr
  assert expected in out.stdout
