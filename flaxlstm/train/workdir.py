"""Run directories: who owns one (the lock), what one is, what it was trained on, and how
its files are read and written without ever damaging it.

The trust model: a run directory holds data, never code. Everything flaxlstm reads from one
is JSON, CSV, PNG or an orbax checkpoint (arrays plus JSON metadata); nothing is unpickled
or imported. Experiment, sweep and tune files (``.py``) are code by design and live outside
run directories.

The rules this module gives the commands:
- Exactly one process writes a run directory at a time: `Lock`, an exclusive ``flock`` on
  ``.flaxlstm.lock``. The kernel drops the lock when its process dies (even by kill -9),
  so a stale lock file never blocks.
- A command that refuses changes nothing: it checks while holding the lock and gives the
  lock back exactly as it found it (`Lock.release(keep=False)`).
- A directory that is not a flaxlstm run is not trained into (`classify`): its files could
  share names with a run's and be overwritten.
- A run records which bytes it was trained on (`fingerprint`), so it is never silently
  scored on another file.
- Outputs never destroy inputs (`check_output`, `write_output`), and every file is written
  whole or not at all (`flaxlstm.fileio`).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from typing import Any

from flaxlstm import config as config_lib
from flaxlstm.errors import InputError, TrainingError
from flaxlstm.fileio import read_text, write_atomic

LOCK_NAME = ".flaxlstm.lock"
# Entries that make a directory a flaxlstm run: a run writes config.json first, and the
# checkpoints are what resume needs (a run whose config.json was lost is still a run).
RUN_MARKERS = ("config.json", "checkpoints")
# The files a run owns; `flaxlstm predict --out` never writes over one of them.
RUN_FILES = (
  "config.json",
  "scalers.json",
  "scalers.pkl",
  "metrics.json",
  "metrics.jsonl",
  LOCK_NAME,
  "learning_curves.png",
  "forecast_test.png",
)
RUN_DIRS = ("checkpoints", "tensorboard")
# Errors that mean "the disk cannot take more", whatever wrote: Python, orbax, TensorStore.
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")
_HASH_CHUNK = 1 << 20
log = logging.getLogger(__name__)


# ---- the lock ---------------------------------------------------------------------------------
class Lock:
  """An exclusive lock on a directory, held by one process.

  ``acquire`` takes ``flock(LOCK_EX | LOCK_NB)`` on ``<directory>/.flaxlstm.lock`` and writes
  who holds it (pid, host, command, time) into the file, so that a second process is told
  "in use by pid N on HOST". ``release(keep=False)`` puts the file back as it was (removed
  if this process created it), for a command that refused and must leave no trace.

  Filesystems without locks (some network mounts) get a one-line warning and no lock.
  """

  def __init__(self, directory: str | os.PathLike[str], command: str):
    self.directory = os.fspath(directory)
    self.path = os.path.join(self.directory, LOCK_NAME)
    self.command = command
    self._fd: int | None = None
    self._created = False
    self._previous = b""

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> Lock:
    """Takes the lock; raises InputError naming the holder if another process has it."""
    if self._fd is not None:
      return self
    for _ in range(10):  # retried only when the file is replaced under us (see below)
      try:
        created = False
        try:
          fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
          created = True
        except FileExistsError:
          fd = os.open(self.path, os.O_RDWR)
      except OSError as e:
        raise InputError(f"cannot lock {self.directory}: {e.strerror} ({self.path})") from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise busy_error(self.directory, holder) from None
      except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
          log.warning(
            f"cannot lock {self.directory} ({e.strerror}): this filesystem has no "
            "file locks, so nothing stops a second process from writing it"
          )
          return self
        raise
      # A holder that refused removes a lock file it created; if that happened between our
      # open and our flock, we hold a lock on a file nobody else can see: start again.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if not same:
        os.close(fd)
        continue
      self._fd, self._created = fd, created
      self._previous = b"" if created else _read_all(fd)
      _write_all(
        fd,
        json.dumps(
          {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
          }
        ).encode(),
      )
      return self
    raise InputError(f"cannot lock {self.directory}: its lock file keeps changing")

  def release(self, keep: bool = True) -> None:
    """Gives the lock back. ``keep=False``: restore the lock file as it was found."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      if not keep:
        if self._created:
          os.unlink(self.path)
        else:
          _write_all(fd, self._previous)
    except OSError:
      pass  # A lock file left behind holds no lock; never mask the real error for it.
    finally:
      os.close(fd)  # closing the descriptor drops the flock

  def __enter__(self) -> Lock:
    return self.acquire()

  def __exit__(self, exc_type, *exc_info: Any) -> None:
    # A command that failed gives the lock file back as it found it.
    self.release(keep=exc_type is None)


def lock_holder(directory: str | os.PathLike[str]) -> str | None:
  """Who holds `directory`'s lock right now ("pid N on HOST ..."), or None if nobody does.

  Probes without creating anything: a directory without a lock file is not locked.
  """
  path = os.path.join(os.fspath(directory), LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return _read_holder(fd)
  except OSError:
    return None
  finally:
    os.close(fd)  # also drops the shared lock if it was taken
  return None


def _read_holder(fd: int) -> str:
  try:
    info = json.loads(_read_all(fd) or b"{}")
    return (
      f"pid {int(info['pid'])} on {info.get('host', '?')} "
      f"({info.get('command', 'flaxlstm')}, since {info.get('since', '?')})"
    )
  except (ValueError, KeyError, TypeError, OSError):
    return "another process"  # it has the lock but has not written its name yet


def _read_all(fd: int) -> bytes:
  os.lseek(fd, 0, os.SEEK_SET)
  chunks = []
  while chunk := os.read(fd, 65536):
    chunks.append(chunk)
  return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  while data:
    data = data[os.write(fd, data) :]


class Claim:
  """A training command's hold on its workdir: created if missing, locked, and given back
  untouched if the command refuses.

  ``open()`` creates the directory (and any missing parents) and takes the `Lock`;
  ``abandon()`` (a refusal) releases the lock restoring its file and removes the folders
  ``open`` created, so the parent looks as before; ``keep()`` (the command went ahead)
  releases it normally. Only the process that writes (process 0) claims.
  """

  def __init__(self, workdir: str, command: str):
    self.workdir = workdir
    self.lock = Lock(workdir, command)
    self._created: list[str] = []

  def open(self) -> Claim:
    if os.path.lexists(self.workdir) and not os.path.isdir(self.workdir):
      raise InputError(f"workdir {self.workdir} is not a directory")
    try:
      _make_dirs(self.workdir, self._created)
    except OSError as e:
      self.abandon()
      raise InputError(f"workdir {self.workdir} is not writable: {e.strerror}") from None
    try:
      self.lock.acquire()
    except BaseException:
      self.abandon()
      raise
    return self

  def abandon(self) -> None:
    self.lock.release(keep=False)
    _remove_dirs(self._created)
    self._created = []

  def keep(self) -> None:
    self.lock.release(keep=True)
    self._created = []


def _make_dirs(path: str, created: list[str]) -> None:
  """Creates `path` and its missing parents, appending each folder made to `created`."""
  missing, path = [], os.path.abspath(path)
  while not os.path.lexists(path):
    missing.append(path)
    path = os.path.dirname(path)
  for folder in reversed(missing):
    os.mkdir(folder)
    created.append(folder)


def _remove_dirs(created: list[str]) -> None:
  """Removes folders `_make_dirs` made, deepest first, while they are still empty: never
  what someone else has put there since."""
  for folder in reversed(created):
    try:
      os.rmdir(folder)
    except OSError:
      break


# ---- what a directory is ---------------------------------------------------------------------
def classify(directory: str | os.PathLike[str]) -> str:
  """ "missing", "empty", "run" (a flaxlstm run) or "foreign" (anything else).

  Raises:
    InputError: the path exists but is not a directory, or cannot be listed.
  """
  directory = os.fspath(directory)
  if not os.path.lexists(directory):
    return "missing"
  if not os.path.isdir(directory):
    raise InputError(f"workdir {directory} is not a directory")
  try:
    entries = set(os.listdir(directory)) - {LOCK_NAME}
  except OSError as e:
    raise InputError(f"workdir {directory} cannot be listed: {e.strerror}") from None
  if not entries:
    return "empty"
  return "run" if entries & set(RUN_MARKERS) else "foreign"


def foreign_entries(directory: str) -> str:
  """A short listing of a directory's entries, for messages."""
  names = sorted(set(os.listdir(directory)) - {LOCK_NAME})
  shown = ", ".join(names[:5])
  return shown + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")


def owned_by_run(path: str, workdir: str) -> bool:
  """True if `path` is one of the files or folders of the run in `workdir`."""
  path, workdir = os.path.realpath(path), os.path.realpath(workdir)
  rel = os.path.relpath(path, workdir)
  if rel == os.curdir:
    return True
  if rel == os.pardir or rel.startswith(os.pardir + os.sep):
    return False  # outside the workdir
  first = rel.split(os.sep)[0]
  return first in RUN_FILES or first in RUN_DIRS


# ---- what a run is, and what it was trained on ------------------------------------------------
def fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
  """``{"path": absolute path, "size": bytes, "sha256": hex}`` of a data file."""
  path = os.path.abspath(os.fspath(path))
  digest = hashlib.sha256()
  size = 0
  try:
    with open(path, "rb") as f:
      while chunk := f.read(_HASH_CHUNK):
        digest.update(chunk)
        size += len(chunk)
  except OSError as e:
    raise InputError(f"cannot read data file {path}: {e.strerror}") from None
  return {"path": path, "size": size, "sha256": digest.hexdigest()}


def describe_change(recorded: dict[str, Any], current: dict[str, Any]) -> str:
  """'' if both fingerprints name the same bytes, else what differs, for a message."""
  if (recorded.get("size"), recorded.get("sha256")) == (current["size"], current["sha256"]):
    return ""
  return (
    f"{recorded.get('size')} -> {current['size']} bytes, sha256 "
    f"{str(recorded.get('sha256'))[:12]} -> {current['sha256'][:12]}"
  )


def read_run_config(workdir: str) -> tuple[Any, dict[str, Any] | None]:
  """A run's config and its run record (None for a run of an older flaxlstm).

  Raises:
    InputError: no config.json, or one that is a directory, not UTF-8, not JSON or not a
      flaxlstm config; a malformed run record.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.lexists(path):
    raise InputError(f"{workdir} is not a flaxlstm run: no config.json")
  text = read_text(path, "run config")
  try:
    config = config_lib.config_from_json(text)
    record = config_lib.split_run_record(text)[1]
  except InputError as e:
    raise InputError(f"{path} is not a flaxlstm run config ({e})") from None
  if record is not None and not _valid_record(record):
    raise InputError(
      f"{path}: '{config_lib.RUN_RECORD_KEY}' must hold data.path, "
      "data.size and data.sha256; the file is damaged"
    )
  return config, record


def _valid_record(record: Any) -> bool:
  data = record.get("data") if isinstance(record, dict) else None
  return (
    isinstance(data, dict)
    and isinstance(data.get("path"), str)
    and isinstance(data.get("size"), int)
    and isinstance(data.get("sha256"), str)
  )


def config_diff(new: Any, old: Any) -> list[str]:
  """'key: old in workdir vs new now' for each differing config key (sorted)."""
  a = config_lib.flatten(json.loads(config_lib.config_to_json(new)))
  b = config_lib.flatten(json.loads(config_lib.config_to_json(old)))
  return [
    f"{k}: {b.get(k)!r} in workdir vs {a.get(k)!r} now"
    for k in sorted(set(a) | set(b))
    if a.get(k) != b.get(k)
  ]


# Keys a resumed run may change: raising the budget continues training.
_BUDGET_KEYS = ("train.max_steps", "train.max_epochs")


def with_absolute_data_path(spec: config_lib.RunSpec) -> config_lib.RunSpec:
  """`spec` with `data.path` absolute ("" stays: the bundled ETTh1).

  What a run records: its config.json then names the same file from any directory, and a
  rerun from elsewhere with the same relative path is told the file differs.
  """
  from flaxlstm.data import io  # pandas: only once a run is being set up

  if not spec.data.path:
    return spec
  data = dataclasses.replace(spec.data, path=str(io.data_file(spec.data.path)))
  return dataclasses.replace(spec, data=data)


def check_for_training(
  workdir: str,
  spec: config_lib.RunSpec,
  *,
  state_bytes: int,
  resume: bool | None,
  force: bool,
  data_now: dict[str, Any],
  allow_changed_data: bool,
) -> str:
  """Every refusal of `train` that needs no checkpoint: what the directory is, the config
  and the data of the run in it, the free space. Reads only. Returns a warning to print
  ('' if none)."""
  kind = classify(workdir)
  if kind == "foreign" and not force:
    raise InputError(
      f"workdir {workdir} is not empty and holds no flaxlstm run (it has "
      f"{foreign_entries(workdir)}); use an empty or new --workdir, or pass "
      "--force to train into it (files with a run's names are then "
      "overwritten)"
    )
  warning = ""
  if os.path.lexists(os.path.join(workdir, "config.json")):
    old, record = read_run_config(workdir)
    if old.data.path and not os.path.isabs(old.data.path):
      # Written by an older flaxlstm, which stored the path as given: the best reading of
      # it is the one the old code made, relative to the working directory.
      old.data.path = os.path.abspath(old.data.path)
    diffs = [
      d for d in config_diff(config_lib.to_config(spec), old) if d.split(":")[0] not in _BUDGET_KEYS
    ]
    if diffs:
      raise InputError(
        f"workdir {workdir} holds a run with another config ({diffs[0]}); use a new --workdir"
      )
    warning = check_same_data(record, data_now, workdir=workdir, allow_changed=allow_changed_data)
  elif resume:
    raise InputError(f"nothing to resume: {workdir} has no config.json")
  # Two latest full states + the best params, with headroom for logs and plots.
  check_free_space(workdir, int(2.5 * state_bytes * (2 + spec.train.keep_best)) + 2**24)
  return warning


def agree(error: BaseException | None) -> None:
  """Raises on every process if any process refused (the others would otherwise wait
  forever in the next collective for the one that left)."""
  import jax  # only the trainer calls this, with jax loaded

  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils

    failed = multihost_utils.process_allgather(np.int32(error is not None))
    if error is None and np.any(failed):
      raise InputError(f"process {int(np.argmax(failed))} refused the workdir (see its error)")
  if error is not None:
    raise error


def fail_if_busy(workdir: str) -> None:
  """Refuses at once if another process holds `workdir` (before the data is even read)."""
  holder = lock_holder(workdir)
  if holder is not None:
    raise busy_error(workdir, holder)


def busy_error(directory: str, holder: str) -> InputError:
  """The one message for a directory another process holds."""
  return InputError(
    f"{directory} is in use by {holder}; wait for it to finish, or use another --workdir"
  )


def check_free_space(workdir: str, needed_bytes: int) -> None:
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):  # check space where the workdir will be created
    existing = os.path.dirname(existing)
  free = shutil.disk_usage(existing).free
  if free < needed_bytes:
    raise InputError(
      f"workdir {workdir} has {free / 2**20:.0f} MiB free, but checkpoints "
      f"need about {needed_bytes / 2**20:.0f} MiB"
    )


def check_same_data(
  record: dict[str, Any] | None, current: dict[str, Any], *, workdir: str, allow_changed: bool
) -> str:
  """Compares the data a run recorded with the file as it is now.

  Returns '' when they match (or the run recorded nothing), else a warning to print when
  `allow_changed`; raises InputError when they differ and `allow_changed` is false.
  """
  if record is None:
    return ""
  change = describe_change(record["data"], current)
  if not change:
    return ""
  where = current["path"]
  if record["data"]["path"] != where:
    where = f"{where} (trained on {record['data']['path']})"
  if not allow_changed:
    raise InputError(
      f"data file {where} is not the one {workdir} was trained on ({change}); "
      "use the original file, or pass --allow-changed-data to recompute on "
      "these bytes"
    )
  return (
    f"data file {where} changed since {workdir} was trained ({change}); "
    "recomputing on these bytes as --allow-changed-data asks"
  )


# ---- outputs that never destroy inputs ----------------------------------------------------------
def check_output(
  out: str, *, inputs: tuple[str, ...] = (), workdir: str | None = None, overwrite: bool = False
) -> str:
  """Checks that `out` may be written; returns its absolute path. Writes nothing.

  Refused: one of `inputs` (same file, also through a link), a file of the run in
  `workdir`, an existing file without `overwrite`, a directory, a path under a file, a
  place this process cannot write.
  """
  path = os.path.abspath(os.path.expanduser(out))
  if os.path.isdir(path):
    raise InputError(f"--out {out} is a directory; name a file")
  if os.path.lexists(path):
    for source in inputs:
      if os.path.exists(source) and os.path.exists(path) and os.path.samefile(path, source):
        raise InputError(
          f"--out {out} is the input file {source}; writing it would destroy the input"
        )
    if workdir is not None and owned_by_run(path, workdir):
      raise InputError(f"--out {out} is a file of the run in {workdir}; name another file")
    if not overwrite:
      raise InputError(f"--out {out} exists; pass --overwrite to replace it")
  elif workdir is not None and owned_by_run(path, workdir):
    raise InputError(f"--out {out} is inside the run's own folders in {workdir}; name another file")
  parent = os.path.dirname(path)
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise InputError(f"--out {out} is under {parent}, which is a file, not a directory")
  try:  # access() says yes to root even where the filesystem says no: try it
    fd, probe = tempfile.mkstemp(dir=parent, prefix=".flaxlstm-probe.")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise InputError(f"--out {out} cannot be written: {parent}: {e.strerror}") from None
  return path


def write_output(path: str, data: bytes | str, *, overwrite: bool) -> None:
  """Writes a checked output (`check_output`) whole, creating missing folders.

  Without `overwrite`, a file that appeared since the check is not replaced.
  """
  created: list[str] = []
  try:
    _make_dirs(os.path.dirname(path), created)
    write_atomic(path, data, replace=overwrite)
  except FileExistsError:
    _remove_dirs(created)
    raise InputError(
      f"--out {path} appeared while forecasting; pass --overwrite to replace it"
    ) from None
  except BaseException:
    _remove_dirs(created)
    raise


# ---- disk full -------------------------------------------------------------------------------
def is_disk_full(error: BaseException | None) -> bool:
  """True if `error`, or one it was raised from, means the disk (or quota) is full.

  Python raises OSError(ENOSPC); orbax and TensorStore raise their own types whose message
  says "No space left on device".
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
      return True
    if any(text in str(error) for text in _FULL_TEXTS):
      return True
    error = error.__cause__ or error.__context__
  return False


def disk_full_error(error: BaseException, workdir: str, resume_hint: str) -> TrainingError:
  """The one-line error for a full disk (exit 1: the environment, not the input)."""
  where = ""
  e: BaseException | None = error
  while e is not None:
    if isinstance(e, OSError) and e.filename:
      where = f", writing {e.filename}"
      break
    e = e.__cause__ or e.__context__
  return TrainingError(f"disk full in {workdir} (No space left on device{where}); {resume_hint}")
