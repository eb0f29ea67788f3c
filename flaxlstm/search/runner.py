"""The one runner of sweeps and tune: `flaxlstm train` runs as subprocesses (or a SLURM
job array), their failures and their results on disk.

Each run trains in ``WORKDIR/<name>`` as its own process::

  python -m flaxlstm.cli train --quiet --config BASE --workdir WORKDIR/<name> \
      --config.<override> ...

so a crash of one run cannot take down the others. A run with a valid ``metrics.json`` is
done and skipped on rerun (a killed sweep resumes; an unfinished run resumes from its
checkpoint). Failures are listed in ``WORKDIR/failures.txt`` with the last line of the
run's stderr (full logs in ``WORKDIR/logs/``).

Every run's config is built and validated before any run starts (`check_runs`), so a typo
is one error, not one failure per run. The runner holds the search directory's lock (a
second runner on it is refused) and passes SIGTERM/SIGINT on to its runs (`Children`), each
of which saves a checkpoint, then waits for them. Runs are told to stop if the runner dies
(Linux: even by kill -9), and a rerun waits for a run still finishing its checkpoint rather
than start a second writer.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import json
import logging
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

from flaxlstm import config as config_lib
from flaxlstm import fileio
from flaxlstm.errors import InputError, Stopped
from flaxlstm.train import lock as lock_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep or a tune search."""

  name: str  # Folder name under the search workdir, e.g. "model.dropout=0.2,seed=1".
  setting: dict[str, Any]  # Searched key -> value (without the seed).
  seed: int
  overrides: tuple[str, ...]  # "key=value" strings: the fixed ones, the searched ones, seed.


def check_runs(base: str, fixed: Sequence[str], runs: Sequence[tuple[str, Sequence[str]]]) -> None:
  """Builds and validates the config of every run before any is launched: the base
  experiment with the fixed overrides, then each run's overrides, and that its data file
  exists. One InputError naming the base or the run, instead of N failed runs."""
  from flaxlstm.data import io  # pandas: only for the runners, not for --help

  try:
    config_lib.load_config(base, list(fixed))
  except InputError as e:
    raise InputError(f"base config {base}: {e}") from None
  for name, overrides in runs:
    try:
      config = config_lib.load_config(base, list(overrides))
      path = io.data_file(config.data.path)
    except InputError as e:
      raise InputError(f"run {name}: {e}") from None
    if not path.is_file():
      raise InputError(f"run {name}: data file not found: {path}")


def train_command(
  config: str,
  run: Run,
  workdir: str | os.PathLike[str],
  program: Sequence[str] = (sys.executable, "-m", "flaxlstm.cli"),
) -> list[str]:
  """The `flaxlstm train` command line of one run of base experiment `config`."""
  return [
    *program,
    "train",
    "--quiet",
    "--config",
    config,
    "--workdir",
    str(pathlib.Path(workdir) / run.name),
    *(f"--config.{o}" for o in run.overrides),
  ]


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any] | None:
  """A run's metrics.json, or None if it is missing or damaged (then the run is not done:
  rerunning it rewrites the file).

  A file too large to be a run's (over `fileio.MAX_JSON_BYTES`; a run's is kilobytes) or
  not a regular file (a FIFO would block) is not read: damaged too, said in one warning
  per file. Training the run again rewrites it (resuming from its checkpoint), or names
  what is wrong with the run directory.
  """
  try:
    raw = fileio.read_bytes(path)
  except (fileio.NotRegularFile, fileio.TooLarge) as e:
    _warn_once(
      os.fspath(path),
      f"{os.fspath(path)} is not read ({e.strerror}); its run counts as not done and is "
      "trained again",
    )
    return None
  except OSError:
    return None
  try:
    metrics = json.loads(raw)
  except ValueError:
    return None
  if not isinstance(metrics, dict):
    return None
  # A production fit (data.test_size=0) is done without test metrics: it scored no windows.
  scored = ("val",) if metrics.get("test_windows") == 0 else ("val", "test")
  ok = all(
    isinstance(metrics.get(s), dict) and isinstance(metrics[s].get("mse"), (int, float))
    for s in scored
  )
  return metrics if ok else None


_warned: set[str] = set()  # metrics files already warned about (read_metrics)
_warned_lock = threading.Lock()  # runs are launched and checked from several threads


def _warn_once(path: str, message: str) -> None:
  """Warns about `path` once per process: a runner checks a run's metrics several times
  (done?, still done after waiting for its lock?, its results row)."""
  with _warned_lock:
    if path in _warned:
      return
    _warned.add(path)
  log.warning(message)


def is_done(workdir: str | os.PathLike[str], run: Run) -> bool:
  return read_metrics(pathlib.Path(workdir) / run.name / "metrics.json") is not None


def train_runs(
  config: str,
  runs: Sequence[Run],
  workdir: pathlib.Path,
  children: Children,
  *,
  parallel: int,
  quiet: bool,
  population: bool = False,
) -> dict[str, str]:
  """Trains the unfinished `runs` of base experiment `config` as `children` (or, with
  `population`, in this process as populations: `train_populations`); returns {failed
  run: last error line}.

  The caller holds the directory's lock. Runs not started when a signal came are left
  for the rerun; runs that stopped on it are not failures.
  """
  logs = workdir / "logs"
  logs.mkdir(parents=True, exist_ok=True)
  say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
  if population:
    return train_populations(config, runs, workdir, say)
  todo = [r for r in runs if not is_done(workdir, r)]
  say(
    f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already done, "
    f"{len(todo)} to train ({parallel} at a time)"
  )

  def launch(run: Run) -> tuple[int | None, float]:
    # A run an earlier runner started may still be finishing its checkpoint (that runner
    # was killed, its run told to stop): wait for it rather than start a second writer.
    if children.wait_for_lock(workdir / run.name, say) and is_done(workdir, run):
      return 0, 0.0
    t0 = time.perf_counter()
    with open(logs / f"{run.name}.log", "w") as out:
      # stderr to the same log: the last line of a failed run is its `error: ...` message.
      code = children.run(
        train_command(config, run, workdir),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
      )
    return code, time.perf_counter() - t0

  failures = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
    futures = {pool.submit(launch, r): r for r in todo}
    for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
      run = futures[future]
      code, seconds = future.result()
      if code is None:
        continue  # not started: a signal came first
      if code == 0:
        say(f"[{i}/{len(todo)}] ok      {run.name} ({seconds:.0f} s)")
      elif children.signum and code > 128:  # stopped by the signal passed on
        say(f"[{i}/{len(todo)}] stopped {run.name} (checkpoint saved)")
      else:
        failures[run.name] = f"exit {code}: {_last_line(logs / f'{run.name}.log')}"
        say(f"[{i}/{len(todo)}] FAILED  {run.name}: {failures[run.name]}")
  return failures


def train_populations(
  config: str, runs: Sequence[Run], workdir: pathlib.Path, say
) -> dict[str, str]:
  """Trains the unfinished `runs` in this process as populations (train/population.py);
  returns {failed run: error line}.

  The groups of compatible runs (`population.groups`) are shared out over the devices,
  cut only where a device's share requires it (`population_jobs`), and each device trains
  its populations one after another in its own thread, taking the next from a shared
  queue, largest first, when it is done. So no device waits for another's members: the
  lockstep of one population sharded over every device made a device wait out a member's
  step whenever an odd number of members was training, and left a core idle while the
  host wrote a population's results (on 2 CPU cores, BENCHMARKS.md). Neither the device
  nor the other members of a population change a member's numbers on CPU (each member
  runs its own single-run step); the split is still made from all of `runs`, finished or
  not, so that a rerun resumes each population with the members it had (on an
  accelerator a device's members are vmapped together).

  Each run's workdir is the one its `flaxlstm train` process would write; a population
  that fails (bad data, non-finite losses) fails each of its runs with its message.
  A signal stops the populations after their members have saved checkpoints (`Stopped`).
  """
  import jax  # only when training

  from flaxlstm.errors import Preempted, TrainingError
  from flaxlstm.train import population as population_lib
  from flaxlstm.train.preemption import StopRequest, stop_signals

  specs = [config_lib.to_spec(config_lib.load_config(config, list(r.overrides))) for r in runs]
  devices = jax.local_devices()
  done = {k for k, r in enumerate(runs) if is_done(workdir, r)}
  jobs = [
    [k for k in job if k not in done]
    for job in population_jobs(population_lib.groups(specs), len(devices))
  ]
  jobs = [job for job in jobs if job]
  say(
    f"sweep: {len(runs)} runs, {len(done)} already done, {len(runs) - len(done)} to train as "
    f"{len(jobs)} population{'s' if len(jobs) != 1 else ''} "
    f"({', '.join(str(len(j)) for j in jobs) or 0} members)"
    + (f" over {len(devices)} devices" if len(devices) > 1 else "")
  )
  failures: dict[str, str] = {}
  lock = threading.Lock()
  queue = list(enumerate(jobs, 1))
  stopped: list[int] = []  # the signals that stopped populations
  broken: list[bool] = []  # a worker raised (a bug): the others start nothing new

  def train(i: int, job: list[int], device: Any, stop: StopRequest) -> None:
    members = [runs[k] for k in job]
    t0 = time.perf_counter()
    try:
      out = population_lib.train_population(
        [specs[k] for k in job],
        [str(workdir / r.name) for r in members],
        devices=[device],
        stop=stop,
      )
    except Preempted as e:
      stopped.append(e.signum)
      return
    except (InputError, TrainingError) as e:
      with lock:
        for r in members:
          failures[r.name] = f"error: {e}"
        say(f"[{i}/{len(jobs)}] FAILED  {len(members)} runs: {e}")
      return
    with lock:
      for r, m in zip(members, out):
        if "error" in m:
          failures[r.name] = f"error: {m['error']}"
          say(f"[{i}/{len(jobs)}] FAILED  {r.name}: error: {m['error']}")
      ok = [r.name for r in members if r.name not in failures]
      seconds = time.perf_counter() - t0
      say(f"[{i}/{len(jobs)}] ok      {len(ok)} runs ({seconds:.0f} s): {some_names(ok)}")

  def worker(device: Any, stop: StopRequest) -> None:
    while True:
      with lock:
        if not queue or stop.signum or broken:
          return
        i, job = queue.pop(0)
      try:
        train(i, job, device, stop)
      except BaseException:
        broken.append(True)
        raise

  with stop_signals() as stop, concurrent.futures.ThreadPoolExecutor(len(devices)) as pool:
    futures = [pool.submit(worker, d, stop) for d in devices[: len(jobs)]]
    # Polled, not one blocking wait, so that the main thread keeps handling signals.
    while concurrent.futures.wait(futures, timeout=0.5).not_done:
      pass
    for f in futures:
      f.result()
  if stopped:
    raise Stopped(
      stopped[0],
      f"stopped by signal {stopped[0]}; the population's runs saved checkpoints, rerun the "
      "same command to resume",
    )
  return failures


def some_names(names: Sequence[str], limit: int = 3) -> str:
  """The first `limit` names and how many more: a progress line of a population of 500
  members stays one readable line (the results tables list them all)."""
  shown = ", ".join(names[:limit])
  return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def population_jobs(groups: list[list[int]], n_devices: int) -> list[list[int]]:
  """The populations to train, largest first: groups cut only where a device's share
  requires it.

  McNaughton's wrap-around rule: each device's share is at most `ceil(members /
  n_devices)` members; the groups, largest first, fill one share after another, and a group
  that overflows a share continues in the next. So the shares differ by at most one member
  and at most `n_devices - 1` groups are cut: every population pays a compile and its setup,
  so a group of seeds is not cut when whole groups already fill the devices evenly.
  """
  total = sum(map(len, groups))
  share = -(-total // max(n_devices, 1))
  jobs: list[list[int]] = []
  room = share  # left in the share being filled
  for group in sorted(groups, key=len, reverse=True):
    start = 0
    while start < len(group):
      if room == 0:
        room = share
      end = start + min(room, len(group) - start)
      jobs.append(group[start:end])
      room -= end - start
      start = end
  return sorted(jobs, key=len, reverse=True)


def format_value(value: Any) -> str:
  """A value as override text, as `--config.key=` parses it back."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (tuple, list)):
    # A trailing comma keeps a one-element tuple a tuple: "64," is (64,).
    return ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "")
  return str(value)


def short_value(value: Any) -> str:
  """Value text for names and tables: tuples as "64-64" (commas separate the keys)."""
  if isinstance(value, (tuple, list)):
    return "-".join(short_value(v) for v in value)
  return format_value(value)


# Set in each run's environment: a run started by a runner stops when the runner dies.
PARENT_ENV = "FLAXLSTM_RUNNER_PID"
_PR_SET_PDEATHSIG = 1


def follow_parent() -> None:
  """In a run started by a sweep or tune runner: get SIGTERM when the runner dies.

  Linux's PR_SET_PDEATHSIG; the run then checkpoints and exits as on preemption, so a
  kill -9 of the runner leaves no run training on unseen. Elsewhere this does nothing.
  """
  parent = os.environ.get(PARENT_ENV)
  if not parent or not sys.platform.startswith("linux"):
    return
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  except (OSError, AttributeError):
    return
  if str(os.getppid()) != parent:  # the runner died before we asked
    os.kill(os.getpid(), signal.SIGTERM)


class Children:
  """The runs a runner has started, and the signals it passes on to them.

  Use as a context manager (handlers are installed from the main thread only). Runs start
  in their own session, so a Ctrl-C in the terminal reaches the runner only and each run
  gets exactly one SIGINT from it: a run's first SIGINT checkpoints, a second aborts.
  """

  def __init__(self):
    self.signum = 0
    self._procs: set[subprocess.Popen] = set()
    self._lock = threading.Lock()
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> Children:
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc_info: Any) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}

  def _forward(self, signum: int, frame: Any) -> None:
    del frame
    self.signum = self.signum or signum
    with self._lock:
      procs = list(self._procs)
    for proc in procs:
      if proc.poll() is None:
        proc.send_signal(signum)

  def run(self, cmd: Sequence[str], **kwargs: Any) -> int | None:
    """Runs `cmd` to its end; None (not started) once a signal has come."""
    env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
    with self._lock:
      if self.signum:
        return None
      proc = subprocess.Popen(cmd, start_new_session=True, env=env, **kwargs)
      self._procs.add(proc)
    try:
      return proc.wait()
    finally:
      with self._lock:
        self._procs.discard(proc)

  def wait_for_lock(self, directory: pathlib.Path, say) -> bool:
    """Waits while another process holds `directory`'s lock; True if one did."""
    holder = lock_lib.lock_holder(directory)
    if holder is None:
      return False
    say(f"waiting for {holder} to release {directory}")
    while lock_lib.lock_holder(directory) is not None and not self.signum:
      time.sleep(0.2)
    return True

  def raise_if_stopped(self, what: str) -> None:
    if self.signum:
      raise Stopped(
        self.signum,
        f"{what} stopped by signal {self.signum}; the runs that "
        "were training saved checkpoints, rerun the same command to resume",
      )


def _last_line(path: pathlib.Path) -> str:
  lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
  return lines[-1] if lines else "(no output)"


def write_failures(workdir: pathlib.Path, runs: Sequence[Run], failures: dict[str, str]) -> None:
  """Lists failed runs in `workdir/failures.txt` in the order of `runs` (removed when
  none)."""
  path = workdir / "failures.txt"
  if not failures:
    path.unlink(missing_ok=True)
    return
  order = [r.name for r in runs if r.name in failures]  # run order, not finish order
  path.write_text("".join(f"{name}\t{failures[name]}\n" for name in order))


def read_failures(workdir: str | os.PathLike[str]) -> dict[str, str]:
  path = pathlib.Path(workdir) / "failures.txt"
  if not path.is_file():
    return {}
  text = path.read_text(errors="replace")
  return dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)


def dry_run_lines(config: str, runs: Sequence[Run], workdir: str | os.PathLike[str]) -> list[str]:
  """The command of every run; finished runs appear as comments."""
  lines = []
  for run in runs:
    cmd = shlex.join(train_command(config, run, workdir))
    lines.append(f"# done: {cmd}" if is_done(workdir, run) else cmd)
  return lines


def slurm_script(
  config: str, runs: Sequence[Run], workdir: str | os.PathLike[str], *, name: str, parallel: int = 0
) -> str:
  """A SLURM job array: task i trains run i (`sbatch WORKDIR/sweep.sbatch`).

  Each task is one single-process run, so this does not go through launch/slurm.sbatch
  (which starts one multi-node distributed run). Finished runs exit at once.
  """
  workdir = pathlib.Path(workdir)
  n = len(runs)
  throttle = f"%{parallel}" if parallel > 0 else ""
  lines = [
    "#!/bin/bash",
    f"# Sweep {name}: {n} runs, task i trains run i. Submit from the directory the paths",
    "# below are relative to; afterwards aggregate with `flaxlstm sweep ... --aggregate-only`.",
    f"#SBATCH --job-name={_sbatch_quote(name)}",
    f"#SBATCH --array=0-{n - 1}{throttle}",
    "#SBATCH --ntasks=1",
    "#SBATCH --cpus-per-task=4",
    "#SBATCH --time=04:00:00",
    f"#SBATCH --output={_sbatch_quote(str(workdir / 'logs' / 'slurm-%A_%a.out'))}",
    "set -euo pipefail",
    'case "$SLURM_ARRAY_TASK_ID" in',
  ]
  for i, run in enumerate(runs):
    done = shlex.quote(str(workdir / run.name / "metrics.json"))
    cmd = shlex.join(train_command(config, run, workdir, program=("flaxlstm",)))
    lines.append(f"  {i}) [ -f {done} ] || srun {cmd} ;;")
  lines += ['  *) echo "no run for task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac", ""]
  return "\n".join(lines)


def _sbatch_quote(value: str) -> str:
  """An #SBATCH option value: sbatch splits these lines at blanks unless double-quoted."""
  if any(c in value for c in '"\n\\'):
    raise InputError(
      f"{value!r} cannot be written into an sbatch directive (it holds a "
      "quote, backslash or newline); choose another --workdir or name"
    )
  return f'"{value}"' if any(c.isspace() for c in value) or not value else value
