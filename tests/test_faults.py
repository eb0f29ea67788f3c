"""Fault injection on real `flaxlstm train` processes: SIGTERM, kill -9 at random moments,
damaged checkpoints, NaN batches, unusable workdirs and mismatched checkpoints."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from flaxlstm import config as config_lib
from flaxlstm import train as train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Long enough (a few seconds) to be interrupted; evaluations/checkpoints every 50 steps.
FAULT = ["--config.train.max_steps=300", "--config.train.eval_every_steps=25",
         "--config.train.log_every_steps=10", "--config.model.dropout=0.1",
         "--config.train.patience=0"]

# Runs the CLI with a NaN put into the training batch of step argv[1] (1-based).
NAN_INJECTOR = """
import sys
from flaxlstm import cli, train
real = train.Run.train_batch
def poisoned(self, step):
  x, y, y_last = real(self, step)
  if step + 1 == int(sys.argv[1]):
    x = x.at[0, 0, 0].set(float("nan"))
  return x, y, y_last
train.Run.train_batch = poisoned
sys.exit(cli.main(sys.argv[2:]))
"""


def _cmd(tiny, workdir, *extra):
  return [sys.executable, "-m", "flaxlstm.cli", "train", "--quiet", "--config", tiny["exp"],
          "--workdir", str(workdir), *FAULT, *extra]


def _run(cmd, **kw):
  return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, **kw)


def _wait_for_log(workdir, proc, min_lines=1, timeout=120):
  """Waits until training is under way (metrics.jsonl has lines)."""
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"run ended early: {proc.stderr.read()[-2000:]}")
    if os.path.exists(path) and sum(1 for _ in open(path)) >= min_lines:
      return
    time.sleep(0.05)
  raise AssertionError("training did not start")


def _best_params(workdir):
  config = config_lib.config_from_json(open(os.path.join(workdir, "config.json")).read())
  run = train_lib.build_run(config)
  return train_lib.restore_params(workdir, config, run.abstract_state().params)


def _assert_same_run(workdir, ref):
  got, want = (json.load(open(os.path.join(d, "metrics.json"))) for d in (workdir, ref))
  for key in ("val", "test", "steps", "best_step"):
    assert got[key] == want[key], key
  for a, b in zip(jax.tree.leaves(_best_params(workdir)), jax.tree.leaves(_best_params(ref))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _latest_steps(workdir):
  return sorted(int(os.path.basename(p)) for p in
                glob.glob(os.path.join(workdir, "checkpoints", "latest", "[0-9]*")))


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
  """The uninterrupted run every faulty run must reproduce exactly."""
  wd = tmp_path_factory.mktemp("faults") / "reference"
  out = _run(_cmd(tiny, wd))
  assert out.returncode == 0, out.stderr[-2000:]
  return str(wd)


def test_sigterm_saves_and_exits_then_rerun_resumes_identically(tiny, reference, tmp_path):
  wd = tmp_path / "run"
  proc = subprocess.Popen(_cmd(tiny, wd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT)
  _wait_for_log(str(wd), proc, min_lines=3)
  proc.send_signal(signal.SIGTERM)
  code = proc.wait(timeout=60)  # bounded: one step plus one checkpoint
  err = proc.stderr.read()
  assert code == 128 + signal.SIGTERM, err[-2000:]
  assert "checkpoint saved, rerun the same command to resume" in err
  stopped_at = int(err.split("at step ")[1].split(";")[0])
  assert stopped_at in _latest_steps(wd)
  assert not os.path.exists(wd / "metrics.json")  # not finished: no final metrics yet
  out = _run(_cmd(tiny, wd))
  assert out.returncode == 0, out.stderr[-2000:]
  _assert_same_run(str(wd), reference)


def test_kill_9_at_random_moments_then_resume_is_bit_identical(tiny, reference, tmp_path):
  wd = tmp_path / "run"
  rng = np.random.default_rng(1234)
  for _ in range(3):
    proc = subprocess.Popen(_cmd(tiny, wd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
      _wait_for_log(str(wd), proc)
    except AssertionError:
      if proc.returncode == 0:  # it finished before we could kill it: fine
        break
      raise
    time.sleep(rng.uniform(0.0, 1.5))
    proc.kill()
    proc.wait()
  out = _run(_cmd(tiny, wd))
  assert out.returncode == 0, out.stderr[-2000:]
  _assert_same_run(str(wd), reference)


def test_damaged_newest_checkpoint_falls_back_to_an_older_one(tiny, reference, tmp_path):
  wd = tmp_path / "run"
  out = _run(_cmd(tiny, wd, "--config.train.max_steps=150"))
  assert out.returncode == 0, out.stderr[-2000:]
  steps = _latest_steps(wd)
  assert steps == [125, 150]
  # Truncate every data file of the newest checkpoint, then train on to 300.
  for path in glob.glob(str(wd / "checkpoints" / "latest" / "150" / "state" / "**" / "*"),
                        recursive=True):
    if os.path.isfile(path):
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)
  out = _run(_cmd(tiny, wd))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "checkpoints/latest/150 is damaged" in out.stderr
  _assert_same_run(str(wd), reference)


def test_no_intact_checkpoint_is_a_clear_error(tiny, tmp_path):
  wd = tmp_path / "run"
  out = _run(_cmd(tiny, wd, "--config.train.max_steps=100"))
  assert out.returncode == 0, out.stderr[-2000:]
  for step in _latest_steps(wd):
    for path in glob.glob(str(wd / "checkpoints" / "latest" / str(step) / "state" / "*")):
      if os.path.isfile(path):
        os.remove(path)
  out = _run(_cmd(tiny, wd, "--config.train.max_steps=100"))
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("error: no intact checkpoint in")


def test_nan_batch_is_skipped_and_counted(tiny, tmp_path):
  wd = tmp_path / "run"
  out = _run([sys.executable, "-c", NAN_INJECTOR, "7", *_cmd(tiny, wd)[3:],
              "--config.train.max_steps=100"])
  assert out.returncode == 0, out.stderr[-2000:]
  metrics = json.load(open(wd / "metrics.json"))
  assert metrics["nonfinite_steps"] == 1
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(_best_params(str(wd))))
  assert np.isfinite(metrics["test"]["mse"])


def test_too_many_nan_steps_stop_the_run_naming_the_step(tiny, tmp_path):
  wd = tmp_path / "run"
  out = _run([sys.executable, "-c", NAN_INJECTOR, "7", *_cmd(tiny, wd)[3:],
              "--config.train.max_steps=100", "--config.train.max_nonfinite_steps=0"])
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: non-finite loss or gradients at step 7")
  assert "train.max_nonfinite_steps=0" in last


def test_unwritable_workdir_fails_before_training(tiny, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  out = _run(_cmd(tiny, blocker / "run"))
  assert out.returncode == 2
  assert out.stderr.startswith("error: workdir ") and "is not writable" in out.stderr


def test_full_disk_is_refused_before_training(tiny, tmp_path, monkeypatch):
  import shutil
  monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 1024))
  with pytest.raises(Exception, match="MiB free, but checkpoints need about"):
    train_lib.train_and_evaluate(config_lib.load_config(tiny["exp"]), str(tmp_path / "run"))


def test_checkpoint_of_another_model_is_refused(tiny, tmp_path):
  wd = tmp_path / "run"
  out = _run(_cmd(tiny, wd, "--config.train.max_steps=50"))
  assert out.returncode == 0, out.stderr[-2000:]
  # With config.json there, the config diff names the key ...
  out = _run(_cmd(tiny, wd, "--config.train.max_steps=50", "--config.model.features=16"))
  assert out.returncode == 2 and "model.features" in out.stderr
  # ... and without it, the checkpoint itself does not match.
  os.remove(wd / "config.json")
  out = _run(_cmd(tiny, wd, "--config.train.max_steps=50", "--config.model.features=16"))
  assert out.returncode == 2
  assert "does not match this config (param" in out.stderr and "shape" in out.stderr
