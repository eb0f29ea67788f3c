"""Fault injection on `flaxlstm train`: SIGTERM, kill -9 at random moments, damaged
checkpoints, NaN batches, unusable workdirs, mismatched checkpoints, a second writer, a
sweep runner killed under its runs, and a disk that fills up mid-run. Real processes where
the fault needs one (signals, a second writer, output after the interpreter exits); the
CLI's `main` in this process otherwise (`_train_here`).

(Damaged and hostile run directories under evaluate/predict/train, case by case, are in
test_workdir_corpus.py.)"""

import contextlib
import errno
import glob
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax_helpers import fake_devices_env

from flaxlstm import cli
from flaxlstm import config as config_lib
from flaxlstm import train as train_lib
from flaxlstm.train import lock as lock_lib
from flaxlstm.train.assembly import Setup, assemble

# Every test here trains several runs to completion.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Long enough (a few seconds) to be interrupted; evaluations/checkpoints every 50 steps.
FAULT = [
  "--config.train.max_steps=300",
  "--config.train.eval_every_steps=25",
  "--config.train.log_every_steps=10",
  "--config.model.dropout=0.1",
  "--config.train.patience=0",
]

# Runs the CLI with every train step slowed by argv[1] seconds (the numbers are unchanged):
# a run that must still be training while other commands start beside it.
SLOW = """
import sys, time
from flaxlstm import cli
from flaxlstm.train.assembly import Setup
real = Setup.train_batch
def slow(self, step):
  time.sleep(float(sys.argv[1]))
  return real(self, step)
Setup.train_batch = slow
sys.exit(cli.main(sys.argv[2:]))
"""


def _cmd(tiny, workdir, *extra):
  return [
    sys.executable,
    "-m",
    "flaxlstm.cli",
    "train",
    "--quiet",
    "--config",
    tiny["exp"],
    "--workdir",
    str(workdir),
    *FAULT,
    *extra,
  ]


def _run(cmd, **kw):
  return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, **kw)


def _train_here(capsys, tiny, workdir, *extra) -> tuple[int, str]:
  """`flaxlstm train` as `_cmd` runs it, in this process (`cli.main`: the same exit code
  and stderr, without a new interpreter's start-up): the faults that need no signal or
  second process. Returns the exit code and what went to stderr."""
  capsys.readouterr()
  code = cli.main(_cmd(tiny, workdir, *extra)[3:])
  return code, capsys.readouterr().err


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
  run = assemble(config_lib.to_spec(config))
  return train_lib.restore_params(workdir, run.abstract_state().params)


def _assert_same_run(workdir, ref):
  got, want = (json.load(open(os.path.join(d, "metrics.json"))) for d in (workdir, ref))
  for key in ("val", "test", "steps", "best_step"):
    assert got[key] == want[key], key
  for a, b in zip(jax.tree.leaves(_best_params(workdir)), jax.tree.leaves(_best_params(ref))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _latest_steps(workdir):
  # Finished steps only: a save under way is an orbax temporary folder ("25.orbax-...").
  return sorted(
    int(os.path.basename(p))
    for p in glob.glob(os.path.join(workdir, "checkpoints", "latest", "[0-9]*"))
    if os.path.basename(p).isdigit()
  )


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
  """The uninterrupted run every faulty run must reproduce exactly."""
  wd = tmp_path_factory.mktemp("faults") / "reference"
  assert cli.main(_cmd(tiny, wd)[3:]) == 0  # in this process, as `_train_here`
  return str(wd)


def test_sigterm_saves_and_exits_then_rerun_resumes_identically(tiny, reference, tmp_path, capsys):
  wd = tmp_path / "run"
  proc = subprocess.Popen(
    _cmd(tiny, wd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
  )
  _wait_for_log(str(wd), proc, min_lines=3)
  proc.send_signal(signal.SIGTERM)
  code = proc.wait(timeout=60)  # bounded: one step plus one checkpoint
  err = proc.stderr.read()
  assert code == 128 + signal.SIGTERM, err[-2000:]
  assert "checkpoint saved, rerun the same command to resume" in err
  stopped_at = int(err.split("at step ")[1].split(";")[0])
  assert stopped_at in _latest_steps(wd)
  assert not os.path.exists(wd / "metrics.json")  # not finished: no final metrics yet
  code, err = _train_here(capsys, tiny, wd)
  assert code == 0, err[-2000:]
  _assert_same_run(str(wd), reference)


def test_kill_9_at_random_moments_then_resume_is_bit_identical(tiny, reference, tmp_path, capsys):
  wd = tmp_path / "run"
  rng = np.random.default_rng(1234)
  for _ in range(3):
    proc = subprocess.Popen(
      _cmd(tiny, wd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
      _wait_for_log(str(wd), proc)
    except AssertionError:
      if proc.returncode == 0:  # it finished before we could kill it: fine
        break
      raise
    time.sleep(rng.uniform(0.0, 1.5))
    proc.kill()
    proc.wait()
  code, err = _train_here(capsys, tiny, wd)
  assert code == 0, err[-2000:]
  _assert_same_run(str(wd), reference)


def test_damaged_newest_checkpoint_falls_back_to_an_older_one(tiny, reference, tmp_path, capsys):
  wd = tmp_path / "run"
  code, err = _train_here(capsys, tiny, wd, "--config.train.max_steps=150")
  assert code == 0, err[-2000:]
  steps = _latest_steps(wd)
  assert steps == [125, 150]
  # Truncate every data file of the newest checkpoint, then train on to 300.
  for path in glob.glob(
    str(wd / "checkpoints" / "latest" / "150" / "state" / "**" / "*"), recursive=True
  ):
    if os.path.isfile(path):
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)
  code, err = _train_here(capsys, tiny, wd)
  assert code == 0, err[-2000:]
  assert "checkpoints/latest/150 is damaged" in err
  _assert_same_run(str(wd), reference)


def test_no_intact_checkpoint_is_a_clear_error(tiny, tmp_path, capsys):
  wd = tmp_path / "run"
  code, err = _train_here(capsys, tiny, wd, "--config.train.max_steps=100")
  assert code == 0, err[-2000:]
  for step in _latest_steps(wd):
    for path in glob.glob(str(wd / "checkpoints" / "latest" / str(step) / "state" / "*")):
      if os.path.isfile(path):
        os.remove(path)
  code, err = _train_here(capsys, tiny, wd, "--config.train.max_steps=100")
  assert code == 2
  assert err.strip().splitlines()[-1].startswith("error: no intact checkpoint in")


def _poison_step(monkeypatch, at: int):
  """A NaN in the training batch of step `at` (1-based)."""
  real = Setup.train_batch

  def poisoned(self, step):
    inputs, y = real(self, step)
    if step + 1 == at:
      inputs["x"] = inputs["x"].at[0, 0, 0].set(float("nan"))
    return inputs, y

  monkeypatch.setattr(Setup, "train_batch", poisoned)


def test_nan_batch_is_skipped_and_counted(tiny, tmp_path, capsys, monkeypatch):
  wd = tmp_path / "run"
  _poison_step(monkeypatch, 7)
  code, err = _train_here(capsys, tiny, wd, "--config.train.max_steps=100")
  assert code == 0, err[-2000:]
  metrics = json.load(open(wd / "metrics.json"))
  assert metrics["nonfinite_steps"] == 1
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(_best_params(str(wd))))
  assert np.isfinite(metrics["test"]["mse"])


def test_too_many_nan_steps_stop_the_run_naming_the_step(tiny, tmp_path, capsys, monkeypatch):
  wd = tmp_path / "run"
  _poison_step(monkeypatch, 7)
  extra = ("--config.train.max_steps=100", "--config.train.max_nonfinite_steps=0")
  code, err = _train_here(capsys, tiny, wd, *extra)
  assert code == 1
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: non-finite loss or gradients at step 7")
  assert "train.max_nonfinite_steps=0" in last


def test_unwritable_workdir_fails_before_training(tiny, tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  code, err = _train_here(capsys, tiny, blocker / "run")
  assert code == 2
  assert err.startswith("error: workdir ") and "is not writable" in err


def test_full_disk_is_refused_before_training(tiny, tmp_path, monkeypatch):
  import shutil

  monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 1024))
  with pytest.raises(Exception, match="MiB free, but checkpoints need about"):
    train_lib.train_and_evaluate(config_lib.load_config(tiny["exp"]), str(tmp_path / "run"))


def _tree_bytes(folder):
  return {
    str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(pathlib.Path(folder).rglob("*"))
    if p.is_file()
  }


def _one_error_line(stderr):
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
  return lines[0]


def test_checkpoint_of_another_model_is_refused(tiny, tmp_path, capsys):
  wd = tmp_path / "run"
  code, err = _train_here(capsys, tiny, wd, "--config.train.max_steps=50")
  assert code == 0, err[-2000:]
  # With config.json there, the config diff names the key ...
  other = ("--config.train.max_steps=50", "--config.model.hidden_sizes=16")
  code, err = _train_here(capsys, tiny, wd, *other)
  assert code == 2 and "model.hidden_sizes" in _one_error_line(err)
  # ... and without it, the checkpoint itself does not match: one line (no orbax
  # tracebacks from reads left running, which a real process would print as it exits),
  # and the run is exactly as it was.
  os.remove(wd / "config.json")
  before = _tree_bytes(wd)
  out = _run(_cmd(tiny, wd, *other))
  assert out.returncode == 2
  line = _one_error_line(out.stderr)
  assert "does not match this config (param" in line and "shape" in line
  assert _tree_bytes(wd) == before


def test_sigterm_is_honoured_when_every_step_evaluates(tiny, tmp_path, capsys):
  wd = tmp_path / "run"
  cmd = _cmd(tiny, wd, "--config.train.eval_every_steps=1", "--config.train.max_steps=30")
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  _wait_for_log(str(wd), proc, min_lines=2)
  proc.send_signal(signal.SIGTERM)
  code = proc.wait(timeout=60)
  err = proc.stderr.read()
  assert code == 128 + signal.SIGTERM, err[-2000:]
  stopped_at = int(err.split("at step ")[1].split(";")[0])
  assert stopped_at < 30 and stopped_at in _latest_steps(wd)
  code, err = _train_here(capsys, tiny, wd, *cmd[len(_cmd(tiny, wd)) :])
  assert code == 0, err[-2000:]
  metrics = json.load(open(wd / "metrics.json"))
  assert metrics["steps"] == 30
  lines = [(r["step"], r["split"]) for r in map(json.loads, open(wd / "metrics.jsonl"))]
  assert len(lines) == len(set(lines))  # each step logged once across the two sessions


def test_a_second_writer_is_refused_and_a_dead_ones_lock_does_not_block(
  tiny, reference, tmp_path, capsys
):
  wd = tmp_path / "run"
  first = subprocess.Popen(
    [sys.executable, "-c", SLOW, "0.05", *_cmd(tiny, wd)[3:]],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    cwd=ROOT,
  )
  _wait_for_log(str(wd), first)
  others = [
    subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for cmd in (
      _cmd(tiny, wd),
      [sys.executable, "-m", "flaxlstm.cli", "evaluate", "--workdir", str(wd)],
    )
  ]
  outs = [(p.wait(timeout=120), p.stderr.read()) for p in others]
  first.send_signal(signal.SIGTERM)
  assert first.wait(timeout=60) == 128 + signal.SIGTERM
  for code, err in outs:
    assert code == 2
    assert f"is in use by pid {first.pid} on" in _one_error_line(err)
  # The lock file still names the dead process; the kernel dropped its lock, so the
  # rerun takes over and ends exactly as the uninterrupted run.
  assert str(first.pid) in (wd / lock_lib.LOCK_NAME).read_text()
  code, err = _train_here(capsys, tiny, wd)
  assert code == 0, err[-2000:]
  _assert_same_run(str(wd), reference)


def _sweep_cmd(sweep_file, workdir):
  return [
    sys.executable,
    "-m",
    "flaxlstm.cli",
    "sweep",
    str(sweep_file),
    "--workdir",
    str(workdir),
    "--quiet",
  ]


def _wait_until(predicate, timeout=60, what="condition"):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    time.sleep(0.05)
  raise AssertionError(f"timed out waiting for {what}")


def test_sweep_runner_passes_sigterm_on_and_kill_9_leaves_no_second_writer(tiny, tmp_path):
  sweep_file = tmp_path / "one_run.py"
  sweep_file.write_text(
    "def get_sweep():\n  return "
    + repr(
      {
        "config": tiny["exp"],
        # Half the usual budget: long enough to be stopped twice, quicker to finish.
        "overrides": [o.removeprefix("--config.") for o in FAULT] + ["train.max_steps=150"],
        "seeds": [0],
      }
    )
    + "\n"
  )
  wd = tmp_path / "sweep"
  run_dir = wd / "seed=0"
  log_lines = lambda: (
    sum(1 for _ in open(run_dir / "metrics.jsonl")) if (run_dir / "metrics.jsonl").exists() else 0
  )

  # SIGTERM to the runner: passed on, the run saves a checkpoint, the runner waits for it.
  runner = subprocess.Popen(
    _sweep_cmd(sweep_file, wd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
  )
  _wait_until(lambda: log_lines() >= 2 or runner.poll() is not None, what="training")
  runner.send_signal(signal.SIGTERM)
  assert runner.wait(timeout=60) == 128 + signal.SIGTERM
  assert "sweep stopped by signal 15" in runner.stderr.read()
  assert lock_lib.lock_holder(run_dir) is None  # the run is not left training
  first_stop = _latest_steps(run_dir)[-1]
  assert not (run_dir / "metrics.json").exists()

  # kill -9 of the runner: its run is told to stop (the kernel's parent-death signal) and
  # saves a checkpoint; it never trains on beside the next runner.
  runner = subprocess.Popen(
    _sweep_cmd(sweep_file, wd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
  )
  seen = log_lines()
  _wait_until(lambda: log_lines() > seen + 1, what="the resumed run")
  runner.kill()
  runner.wait()
  _wait_until(lambda: lock_lib.lock_holder(run_dir) is None, what="the orphaned run")
  log = (wd / "logs" / "seed=0.log").read_text()
  assert "stopped by signal 15 at step" in log
  assert first_stop < _latest_steps(run_dir)[-1] < 150
  assert not (run_dir / "metrics.json").exists()

  out = _run(_sweep_cmd(sweep_file, wd))
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.load(open(run_dir / "metrics.json"))["steps"] == 150


# Runs the CLI with every metrics write after step argv[1] failing as on a full disk:
# used where this machine cannot mount a small tmpfs to fill for real.
FULL_DISK_INJECTOR = """
import errno, sys
from flaxlstm import cli, report
real = report.Reporter.log
def log(self, step, *args, **kwargs):
  if step > int(sys.argv[1]):
    raise OSError(errno.ENOSPC, "No space left on device", str(self.workdir / "metrics.jsonl"))
  return real(self, step, *args, **kwargs)
report.Reporter.log = log
sys.exit(cli.main(sys.argv[2:]))
"""


@contextlib.contextmanager
def _small_disk(folder):
  """A 24 MiB tmpfs at `folder` (True), or False where mounting is not allowed."""
  folder.mkdir()
  mounted = (
    subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(folder)], capture_output=True
    ).returncode
    == 0
  )
  try:
    yield mounted
  finally:
    if mounted:
      subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder):
  # Unbuffered: a buffered file that hit ENOSPC would try to flush its rest again on close,
  # and raise there (seen under load, when the run's own writes raced the filler's).
  with open(folder / "filler", "wb", buffering=0) as f:
    try:
      while True:
        f.write(b"\0" * (1 << 16))
    except OSError as e:
      assert e.errno == errno.ENOSPC


def test_full_disk_mid_run_is_one_line_keeps_the_checkpoint_and_resumes(
  tiny, reference, tmp_path, capsys
):
  with _small_disk(tmp_path / "disk") as real:
    wd = tmp_path / "disk" / "run"
    if real:  # the run fills a real filesystem: orbax, TensorBoard and our own writes
      proc = subprocess.Popen(
        _cmd(tiny, wd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
      )
      _wait_until(lambda: _latest_steps(wd) or proc.poll() is not None, what="a checkpoint")
      _fill(tmp_path / "disk")
      code = proc.wait(timeout=120)
      err = proc.stderr.read()
    else:
      out = _run([sys.executable, "-c", FULL_DISK_INJECTOR, "110", *_cmd(tiny, wd)[3:]])
      code, err = out.returncode, out.stderr
    assert code == 1, err[-3000:]
    line = _one_error_line(err)
    assert line.startswith(f"error: disk full in {wd}") and "rerun the same command" in line
    saved = _latest_steps(wd)
    assert saved and f"checkpoint is step {saved[-1]}" in line
    if real:
      os.remove(tmp_path / "disk" / "filler")
    code, err = _train_here(capsys, tiny, wd)
    assert code == 0, err[-2000:]
    _assert_same_run(str(wd), reference)
    steps = lambda d: [
      (r["step"], r["split"]) for r in map(json.loads, open(os.path.join(d, "metrics.jsonl")))
    ]
    assert steps(wd) == steps(reference)  # no line twice, none missing


def test_population_sweep_on_two_devices_stops_on_sigterm_and_resumes(tiny, reference, tmp_path):
  # Three runs on two host devices: populations of 2 and 1 (`runner.population_jobs`), each
  # device training its own in its own thread. One SIGTERM stops both after their members
  # have saved checkpoints; the rerun resumes them, and seed 0 ends where its single run
  # (`reference`, the same flags) does.
  sweep_file = tmp_path / "seeds.py"
  spec = {
    "config": tiny["exp"],
    "overrides": [o.removeprefix("--config.") for o in FAULT],
    "seeds": [0, 1, 2],
  }
  sweep_file.write_text(f"def get_sweep():\n  return {spec!r}\n")
  wd = tmp_path / "sweep"
  env = fake_devices_env(2)
  cmd = _sweep_cmd(sweep_file, wd) + ["--population"]
  log_lines = lambda run: (
    sum(1 for _ in open(wd / run / "metrics.jsonl")) if (wd / run / "metrics.jsonl").exists() else 0
  )
  runs = ["seed=0", "seed=1", "seed=2"]
  proc = subprocess.Popen(
    cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
  )
  _wait_until(
    lambda: all(log_lines(r) >= 3 for r in runs) or proc.poll() is not None,
    timeout=180,
    what="both populations training",
  )
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 128 + signal.SIGTERM, proc.stderr.read()[-2000:]
  assert "stopped by signal 15" in proc.stderr.read()
  for r in runs:
    assert _latest_steps(wd / r) and not (wd / r / "metrics.json").exists(), r
    assert lock_lib.lock_holder(wd / r) is None

  out = _run([c for c in cmd if c != "--quiet"], env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "to train as 2 populations (2, 1 members) over 2 devices" in out.stdout
  for r in runs:
    assert json.load(open(wd / r / "metrics.json"))["steps"] == 300
  got = json.load(open(wd / "seed=0" / "metrics.json"))
  want = json.load(open(os.path.join(reference, "metrics.json")))
  for split in ("val", "test"):
    np.testing.assert_allclose(got[split]["mse"], want[split]["mse"], rtol=1e-4)
