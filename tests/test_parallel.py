"""Scale-out: one train step on 1 vs 8 devices (data parallel, FSDP, gate-sharded), elastic
resume 8 -> 2 devices, two real processes (gloo) vs one, and the launch scripts."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from flaxlstm import parallel
from flaxlstm.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "parallel_worker.py")
EIGHT = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def _worker(*args):
  out = subprocess.run(
    [sys.executable, WORKER, *args], capture_output=True, text=True, timeout=600, cwd=ROOT
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def _cli(*args, env=None):
  out = subprocess.run(
    [sys.executable, "-m", "flaxlstm.cli", "train", "--quiet", *args],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
    env=env,
  )
  assert out.returncode == 0, out.stderr[-3000:]


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


def test_mesh_errors_are_clear():
  mesh = lambda d, f, m: ml_collections.ConfigDict(dict(data=d, fsdp=f, model=m))
  assert parallel.mesh_shape(mesh(-1, 2, 1), 8) == (4, 2, 1)
  with pytest.raises(InputError, match="needs 6 devices, but 8"):
    parallel.mesh_shape(mesh(3, 2, 1), 8)
  with pytest.raises(InputError, match="do not divide"):
    parallel.mesh_shape(mesh(-1, 3, 1), 8)
  with pytest.raises(InputError, match="at most two"):
    parallel.mesh_shape(mesh(2, 2, 2), 8)


@pytest.mark.slow
def test_elastic_resume_from_8_devices_onto_2(tiny, tmp_path):
  out = _worker("elastic", tiny["exp"], str(tmp_path / "run"))
  resumed, straight = out["resumed"], out["straight"]
  assert resumed["steps"] == straight["steps"] == 20
  for split in ("val", "test"):
    np.testing.assert_allclose(resumed[split]["mse"], straight[split]["mse"], rtol=1e-5)


@pytest.mark.slow
def test_two_processes_match_one_and_resume_in_one(tiny, tmp_path):
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  env = {**os.environ, "LOCAL_DEVICES": "4", "PYTHON": sys.executable, "XLA_FLAGS": ""}
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
  _cli("--config", tiny["exp"], "--workdir", one, "--config.train.max_steps=10", env=EIGHT)
  for split in ("val", "test"):
    np.testing.assert_allclose(_metrics(two)[split]["mse"], _metrics(one)[split]["mse"], rtol=1e-5)
  # Only process 0 writes metrics: each step is logged once.
  with open(os.path.join(two, "metrics.jsonl")) as f:
    steps = [(r["step"], r["split"]) for r in map(json.loads, f)]
  assert len(steps) == len(set(steps))
  # The checkpoint of the two-process run continues in one process (8 devices).
  for wd in (two, one):
    _cli("--config", tiny["exp"], "--workdir", wd, "--config.train.max_steps=20", env=EIGHT)
  assert _metrics(two)["steps"] == 20
  np.testing.assert_allclose(_metrics(two)["test"]["mse"], _metrics(one)["test"]["mse"], rtol=1e-5)


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
