"""Run directories: what one is, what it was trained on, and how its files are read and
written without ever damaging it. Who owns one (the lock, a command's claim) is
`flaxlstm.train.lock`.

The trust model: a run directory holds data, never code. Everything flaxlstm reads from one
is JSON, CSV, PNG or an orbax checkpoint (arrays plus JSON metadata); nothing is unpickled
or imported. Experiment, sweep and tune files (``.py``) are code by design and live outside
run directories.

The rules this module gives the commands:
- Exactly one process writes a run directory at a time, and a command that refuses
  changes nothing (`flaxlstm.train.lock`); `fail_if_busy` refuses before any work.
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
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

from flaxlstm import config as config_lib
from flaxlstm.errors import InputError, TrainingError
from flaxlstm.fileio import open_regular, read_text, special_kind, write_atomic
from flaxlstm.train.lock import LOCK_NAME, busy_error, lock_holder, make_dirs, remove_dirs

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
# The folders under checkpoints/ that training writes into (checkpoint.py's layout).
CHECKPOINT_DIRS = ("latest", "best", "integrity", "integrity/latest", "integrity/best")
# Errors that mean "the disk cannot take more", whatever wrote: Python, orbax, TensorStore.
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")
_HASH_CHUNK = 1 << 20


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
  """True if `path` is one of the files or folders of the run in `workdir` (also through a
  link, or a hard link to one of its files)."""
  path, workdir = os.path.realpath(path), os.path.realpath(workdir)
  rel = os.path.relpath(path, workdir)
  if rel == os.curdir:
    return True
  inside = not (rel == os.pardir or rel.startswith(os.pardir + os.sep))
  if inside and rel.split(os.sep)[0] in RUN_FILES + RUN_DIRS:
    return True
  return os.path.isfile(path) and any(
    _same_file(path, os.path.join(workdir, name)) for name in RUN_FILES
  )


def _same_file(a: str, b: str) -> bool:
  try:
    return os.path.samefile(a, b)
  except OSError:
    return False


# ---- what a run is, and what it was trained on ------------------------------------------------
def fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
  """``{"path": absolute path, "size": bytes, "sha256": hex}`` of a data file."""
  path = os.path.abspath(os.fspath(path))
  digest = hashlib.sha256()
  size = 0
  try:  # the path may come from a shared run's config.json: never a FIFO or /dev/zero
    with open_regular(path) as f:
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
  if kind != "missing":  # config.json: read_run_config says what is wrong with it
    check_entries(workdir, tuple(n for n in RUN_FILES if n != "config.json"))
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


def check_entries(workdir: str, files: tuple[str, ...] = RUN_FILES, folders: bool = True) -> None:
  """Refuses a workdir whose run `files` a command reads or replaces are not what a run
  writes: a file that is not a regular one (a FIFO or a link to /dev/zero would hang the
  read, a directory fails the replace after all the work), or (`folders`) a run folder that
  is not a folder (training's first save would fail after metrics.jsonl was cut back).
  Reads no file.

  The lock file is the lock's to check (`flaxlstm.train.lock`); the files inside
  checkpoints/ are checked when they are opened (`checkpoint.check_plain`).
  """
  for name in files:
    path = os.path.join(workdir, name)
    if name == LOCK_NAME or not os.path.lexists(path):
      continue
    kind = "a directory" if os.path.isdir(path) else special_kind(path)
    if kind:
      raise InputError(
        f"{path} is {kind}, not a regular file; flaxlstm reads and writes only regular "
        "files in a run directory (remove it, or use a new --workdir)"
      )
  names = [*RUN_DIRS, *(os.path.join("checkpoints", d) for d in CHECKPOINT_DIRS)]
  for name in names if folders else []:
    path = os.path.join(workdir, name)
    if os.path.lexists(path) and not os.path.isdir(path):
      raise InputError(
        f"{path} is not a directory, so the run in {workdir} cannot be resumed or "
        "checkpointed; remove it, or use a new --workdir"
      )


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
  out: str,
  *,
  inputs: tuple[str, ...] = (),
  workdir: str | None = None,
  trained_on: tuple[str, ...] = (),
  overwrite: bool = False,
) -> str:
  """Checks that `out` may be written; returns its absolute path. Writes nothing.

  Refused: one of `inputs` (same file, also through a link), a file of the run in
  `workdir` or the data it was `trained_on`, an existing file without `overwrite`, a
  directory, a path under a file, a place this process cannot write.
  """
  path = os.path.abspath(os.path.expanduser(out))
  if os.path.isdir(path):
    raise InputError(f"--out {out} is a directory; name a file")
  if os.path.lexists(path):
    for source in inputs:
      if _same_file(path, source):
        raise InputError(
          f"--out {out} is the input file {source}; writing it would destroy the input"
        )
    for source in trained_on:  # the run could no longer be evaluated or resumed
      if _same_file(path, source):
        raise InputError(
          f"--out {out} is the data file {source} the run in {workdir} was trained on; "
          "writing it would destroy the run's data"
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
    make_dirs(os.path.dirname(path), created)
    write_atomic(path, data, replace=overwrite)
  except FileExistsError:
    remove_dirs(created)
    raise InputError(
      f"--out {path} appeared while forecasting; pass --overwrite to replace it"
    ) from None
  except BaseException:
    remove_dirs(created)
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
