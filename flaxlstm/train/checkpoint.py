"""Checkpoints with orbax: the latest full training state (for resume) and the best params.

Layout under `<workdir>/checkpoints/`:
  latest/<step>/            params + optimizer state + loop bookkeeping (JSON): what resume needs
  best/<step>/              params only, kept for the `keep_best` lowest validation losses
  integrity/<kind>/<step>.json   size and SHA-256 of every file of that step

Orbax writes each step into a temporary folder and renames it when complete, so a process
killed mid-save never leaves a half-written checkpoint that looks finished. Orbax does not
checksum the array data, so a flipped bit would load silently: after each save the files
of the step are hashed into `integrity/`, and a step whose files no longer match is treated
as damaged (a step saved by an older flaxlstm, without a digest, is read unverified).

Reading never writes: evaluate and predict open the managers read-only, and a damaged or
mismatched step is found from its digest and orbax's metadata before any array is read, so
no failing restore leaves orbax's background reads behind.

A checkpoints folder someone shares is data, and what orbax or the digests read of it is
bounded: before a manager opens it, anything in it that is not a folder or a regular file
(a FIFO, a device, a link to /dev/zero) is refused, as is a metadata file (anything outside
the array data's `d/` folders, which orbax reads whole) over `fileio.MAX_JSON_BYTES`. A
step's files are hashed only once their sizes match the digest, so no more is read than it
recorded. Swapping files while a command runs is not defended against.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import shutil
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from flaxlstm import fileio
from flaxlstm.errors import InputError

log = logging.getLogger(__name__)
_INTEGRITY = "integrity"
# Orbax (OCDBT) keeps array data in folders named "d": their files grow with the model and
# are read in the ranges orbax's manifest names. Every other file is metadata, read whole.
_ARRAY_FOLDER = "d"


@dataclasses.dataclass
class LoopState:
  """Host-side bookkeeping saved beside the arrays (resume continues exactly from it)."""

  step: int = 0  # optimizer steps done
  best_val: float = float("inf")  # best validation loss so far
  best_step: int = -1  # step at which it was reached
  bad_evals: int = 0  # evaluations since the last improvement (early stopping)
  stopped_early: bool = False  # early stopping ended the run
  nonfinite_steps: int = 0  # updates skipped for a non-finite loss or gradient
  wall_time_s: float = 0.0  # training time accumulated over all sessions

  @classmethod
  def from_json(cls, raw: Any) -> LoopState:
    """Checks the saved bookkeeping field by field; ValueError if anything is off."""
    if not isinstance(raw, dict):
      raise ValueError("loop metadata is not a JSON object")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
      raise ValueError(f"loop metadata has unknown field {unknown[0]!r}")
    values = {}
    for name, value in raw.items():
      kind = type(names[name].default)
      if kind is bool:
        ok = isinstance(value, bool)
      elif kind is int:
        ok = (
          isinstance(value, int)
          and not isinstance(value, bool)
          and (value >= 0 or name == "best_step")
        )
      else:  # floats: best_val may be inf (nothing validated yet), never NaN
        ok = (
          isinstance(value, (int, float))
          and not isinstance(value, bool)
          and not math.isnan(value)
          and (value >= 0 or name == "best_val")
        )
      if not ok:
        raise ValueError(f"loop metadata field {name!r} has a bad value {value!r}")
      values[name] = value
    return cls(**values)


class Damaged(Exception):
  """A checkpoint step that cannot be trusted (message: why, one line)."""


class Mismatch(InputError):
  """An intact checkpoint of another model: refused, never skipped."""


class NoIntact(InputError):
  """Every kept step of a manager is damaged."""


class Checkpoints:
  """The two orbax `CheckpointManager`s of a run (see module docstring).

  `read_only=True` creates nothing and never deletes: for evaluate, predict, and for the
  checks train makes before its first write.
  """

  def __init__(self, directory: str, keep_best: int = 2, *, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    check_plain(self.directory)  # orbax reads step metadata as soon as a manager opens
    self.latest = self._manager("latest", ("state", "loop"), max_to_keep=2)
    self.best = self._manager(
      "best",
      ("params",),
      max_to_keep=keep_best,
      best_fn=lambda m: m["val_loss"],
      best_mode="min",
      keep_checkpoints_without_metrics=False,
    )

  def _manager(self, kind: str, items: tuple[str, ...], **options) -> Any:
    path = os.path.join(self.directory, kind)
    handlers = {
      "state": ocp.StandardCheckpointHandler,
      "params": ocp.StandardCheckpointHandler,
      "loop": ocp.JsonCheckpointHandler,
    }
    item_handlers = {name: handlers[name]() for name in items}
    if self.read_only:
      if not os.path.isdir(path):
        return None  # nothing saved yet; orbax would still want to look at the folder
      # Not orbax's read_only mode, which logs warnings on every open: a manager that is
      # never asked to save, and keeps everything (no max_to_keep), writes nothing.
      options.pop("max_to_keep")
      opts = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False, **options)
    else:
      # Two kept in latest/ so that a crash while the newest is finalized still leaves one.
      # cleanup_tmp_directories: a save cut short (kill -9, full disk) leaves an orbax
      # temporary folder; the next run removes it.
      opts = ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True, **options
      )
    return ocp.CheckpointManager(path, options=opts, item_handlers=item_handlers)

  # ---- saving ---------------------------------------------------------------------------------
  def save(self, loop: LoopState, state: Any) -> None:
    """Saves the full training `state` (a pytree) and `loop` as the latest checkpoint."""
    self._save(
      self.latest,
      "latest",
      loop.step,
      dict(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(dataclasses.asdict(loop))),
    )

  def save_best(self, step: int, params: Any, val_loss: float) -> None:
    self._save(
      self.best,
      "best",
      step,
      dict(params=ocp.args.StandardSave(params)),
      metrics={"val_loss": float(val_loss)},
    )

  def _save(self, manager, kind: str, step: int, items: dict, **kwargs) -> None:
    if self.read_only:
      raise RuntimeError("checkpoints opened read-only")
    _check_room(str(manager.directory), items)
    if step in manager.all_steps():
      # A step can exist already when a run resumes from an older checkpoint than its
      # newest (killed between two saves, or the newest was damaged): the redo replaces it.
      manager.delete(step)
    manager.save(step, args=ocp.args.Composite(**items), force=True, **kwargs)
    manager.wait_until_finished()
    if jax.process_index() == 0:  # every process's shards are final once save returns
      self._write_digest(manager, kind, step)

  def _write_digest(self, manager, kind: str, step: int) -> None:
    folder = os.path.join(self.directory, _INTEGRITY, kind)
    os.makedirs(folder, exist_ok=True)
    kept = {str(s) for s in manager.all_steps()}
    for name in os.listdir(folder):  # orbax has deleted the steps it no longer keeps
      if name.endswith(".json") and name[:-5] not in kept:
        os.remove(os.path.join(folder, name))
    fileio.write_atomic(
      os.path.join(folder, f"{step}.json"), json.dumps(_digest(_step_dir(manager, step)), indent=1)
    )

  def drop_after(self, step: int) -> None:
    """Deletes the steps after `step`, latest and best: a run restarted from an older step
    (a population whose members had saved different steps) saves them again."""
    for kind, manager in (("latest", self.latest), ("best", self.best)):
      for s in self.steps(kind):
        if s > step:
          manager.delete(s)

  # ---- reading --------------------------------------------------------------------------------
  def steps(self, kind: str = "latest") -> list[int]:
    manager = self.latest if kind == "latest" else self.best
    return [] if manager is None else sorted(manager.all_steps())

  def restore(
    self, abstract_state: Any, max_step: int | None = None
  ) -> tuple[LoopState, Any] | None:
    """The newest intact `(loop, state)` (of a step <= `max_step`, if given), or None when
    there is no checkpoint yet.

    A damaged step (files changed since they were saved, truncated, bad loop metadata) is
    skipped with a warning and the next older one is tried; a checkpoint of another model
    (shapes differ) is an InputError.
    """

    def load(step):
      loop = LoopState.from_json(self._loop_json(step))
      out = self.latest.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()
        ),
      )
      return loop, out["state"]

    order = None
    if max_step is not None and self.latest is not None:
      order = [s for s in sorted(self.latest.all_steps(), reverse=True) if s <= max_step]
    return self._newest_intact(
      "latest", "state", load, abstract_state.params, "params", order=order
    )

  def latest_loop(self) -> LoopState | None:
    """The bookkeeping of the newest intact latest step (None if there is none)."""
    return self._newest_intact(
      "latest", "loop", lambda s: LoopState.from_json(self._loop_json(s)), None, None
    )

  def restore_best_params(self, abstract_params: Any) -> Any | None:
    """Params of the best intact step (then the other kept ones, best first)."""

    def load(step):
      return self.best.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
      )["params"]

    return self._newest_intact(
      "best", "params", load, abstract_params, None, order=self._best_order()
    )

  def restore_latest_params(self, abstract_params: Any) -> Any | None:
    """Params of the newest intact full checkpoint (a run that never validated)."""

    def load(step):
      raw = self.latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))[
        "state"
      ]["params"]
      return jax.tree.map(lambda a, b: np.asarray(b, a.dtype), abstract_params, raw)

    return self._newest_intact("latest", "state", load, abstract_params, "params")

  def restore_params(self, abstract_params: Any, *, best: bool = True) -> Any | None:
    """The run's final params: the best ones if any best step is intact, else those of the
    latest checkpoint; with `best=False` (a run with `train.restore_best=False`) those of
    the latest checkpoint, else the best."""
    if not best:
      try:
        params = self.restore_latest_params(abstract_params)
      except NoIntact:
        params = None
      return self.restore_best_params(abstract_params) if params is None else params
    try:
      params = self.restore_best_params(abstract_params)
    except NoIntact:
      log.warning(
        f"no best checkpoint in {self.directory} is intact; using the newest intact latest one"
      )
      params = None
    return self.restore_latest_params(abstract_params) if params is None else params

  def _best_order(self) -> list[int]:
    if self.best is None or not self.best.all_steps():
      return []
    best = self.best.best_step()
    rest = [s for s in sorted(self.best.all_steps(), reverse=True) if s != best]
    return ([best] if best is not None else []) + rest

  def _loop_json(self, step: int) -> Any:
    path = os.path.join(_step_dir(self.latest, step), "loop", "metadata")
    return fileio.read_json(path, "checkpoint loop metadata")

  def _newest_intact(
    self,
    kind: str,
    item: str,
    load: Callable[[int], Any],
    abstract_params: Any,
    params_key: str | None,
    order: list[int] | None = None,
  ) -> Any:
    manager = self.latest if kind == "latest" else self.best
    if manager is None:
      return None
    steps = sorted(manager.all_steps(), reverse=True) if order is None else order
    damaged = []
    for step in steps:
      where = _step_dir(manager, step)
      try:
        self._verify(manager, kind, step)
        if abstract_params is not None:
          mismatch = _mismatch(manager, step, item, params_key, abstract_params)
          if mismatch:
            raise Mismatch(
              f"checkpoint {where} does not match this config ({mismatch}); use a new --workdir"
            )
        return load(step)
      except Mismatch:
        raise
      except Exception as e:  # orbax and TensorStore raise many types: all mean damaged
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
      log.warning(f"checkpoint {where} is damaged ({reason}); trying an older one")
      damaged.append(step)
    if damaged:
      raise NoIntact(
        f"no intact checkpoint in {manager.directory} (damaged steps: "
        f"{sorted(damaged)}); remove it or use a new --workdir"
      )
    return None

  def _verify(self, manager, kind: str, step: int) -> None:
    path = os.path.join(self.directory, _INTEGRITY, kind, f"{step}.json")
    if not os.path.exists(path):
      return  # saved by an older flaxlstm, or killed between finalize and digest
    recorded = fileio.read_json(path, "checkpoint digest")
    if not isinstance(recorded, dict):
      raise Damaged(f"its digest {path} is not a JSON object")
    folder = _step_dir(manager, step)
    sizes = _sizes(folder)
    # Sizes first: a file is hashed only when it has the size recorded for it, so no more
    # is read than the digest says (and a file grown to gigabytes is not read at all).
    changed = sorted(set(recorded) ^ set(sizes)) or sorted(
      k for k in sizes if str(recorded[k]).partition(":")[0] != str(sizes[k])
    )
    if not changed:
      current = _digest(folder, sizes)
      changed = sorted(k for k in recorded if recorded[k] != current[k])
    if changed:
      raise Damaged(f"{changed[0]} differs from its recorded SHA-256")

  def close(self) -> None:
    for manager in (self.latest, self.best):
      if manager is not None:
        manager.close()

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()


def _check_room(directory: str, items: dict) -> None:
  """Raises ENOSPC before a save that cannot fit, rather than let orbax start it.

  A save that fails halfway leaves TensorStore writes in flight after orbax has given up,
  and those print tracebacks from TensorStore's threads; a save that is never started
  fails cleanly. The size is the arrays' bytes (orbax compresses, so it needs less), plus
  room for the metadata.
  """
  needed = 2**20 + sum(
    getattr(leaf, "nbytes", 0)
    for arg in items.values()
    for leaf in jax.tree.leaves(getattr(arg, "item", None))
  )
  free = shutil.disk_usage(directory).free
  if free < needed:
    raise OSError(
      errno.ENOSPC,
      f"No space left on device: {free} bytes free, a checkpoint needs about {needed}",
      directory,
    )


def _step_dir(manager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def check_plain(directory: str) -> None:
  """Refuses a checkpoints `directory` that holds anything orbax or the digests could hang
  on or read without end: an entry that is not a folder or a regular file (also through a
  link), or a metadata file over `fileio.MAX_JSON_BYTES`. Reads no file.

  Links to folders are followed only for `directory`'s own entries (latest/ kept on another
  disk); orbax writes none deeper, and one there could lead the walk anywhere (to /).

  Raises:
    InputError: naming the first such path.
  """
  if not os.path.isdir(directory):
    return
  stack = [(directory, True)]
  while stack:
    folder, top = stack.pop()
    try:
      entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
      raise InputError(f"checkpoint folder {folder} cannot be listed: {e.strerror}") from None
    for entry in entries:
      path = entry.path
      if entry.is_dir():  # through a link too
        if entry.is_symlink() and not top:
          raise InputError(
            f"checkpoint folder {path} is a link to {os.path.realpath(path)}; flaxlstm "
            "never writes one there"
          )
        stack.append((path, False))
        continue
      kind = fileio.special_kind(path)
      if kind:
        raise InputError(
          f"checkpoint file {path} is {kind}, not a regular file; flaxlstm reads only "
          "regular files from a run directory"
        )
      try:
        size = os.stat(path).st_size
      except OSError:
        continue  # a dangling link: its step does not load, and is skipped as damaged
      if os.path.basename(folder) != _ARRAY_FOLDER and size > fileio.MAX_JSON_BYTES:
        raise InputError(
          f"checkpoint file {path} is {size} bytes, more than checkpoint metadata can be "
          f"({fileio.MAX_JSON_BYTES // 2**20} MiB); flaxlstm did not write it"
        )


def _sizes(folder: str) -> dict[str, int]:
  """{relative path: size} of every file under `folder`, from the directory (nothing read)."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, folder)] = os.stat(path).st_size
  return dict(sorted(out.items()))


def _digest(folder: str, sizes: dict[str, int] | None = None) -> dict[str, str]:
  """{relative path: "size:sha256"} of every file under `folder`, reading at most `sizes`
  (default: what the directory says) bytes of each, from regular files only."""
  out = {}
  for rel, size in (_sizes(folder) if sizes is None else sizes).items():
    h = hashlib.sha256()
    with fileio.open_regular(os.path.join(folder, rel)) as f:
      left = size
      while left and (chunk := f.read(min(1 << 20, left))):
        h.update(chunk)
        left -= len(chunk)
      actual = size - left + len(f.read(1))  # shorter or longer than it was: it differs
    out[rel] = f"{actual}:{h.hexdigest()}"
  return out


def _mismatch(manager, step: int, item: str, params_key: str | None, abstract_params: Any) -> str:
  """'' if the step's saved params fit `abstract_params`, else the first difference.

  Read from orbax's metadata (shapes only), so a checkpoint of another model is named
  without a restore that fails halfway through its reads.
  """
  meta = manager.item_metadata(step)[item]
  tree = getattr(meta, "tree", meta)
  if params_key is not None:
    tree = tree[params_key]
  saved = {
    jax.tree_util.keystr(p): tuple(a.shape)
    for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  wanted = {
    jax.tree_util.keystr(p): tuple(a.shape)
    for p, a in jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  }
  for key in sorted(set(saved) | set(wanted)):
    if key not in saved:
      return f"param {key} is not in the checkpoint"
    if key not in wanted:
      return f"the checkpoint has param {key} that this model lacks"
    if saved[key] != wanted[key]:
      return f"param {key} has shape {saved[key]} there, {wanted[key]} here"
  return ""
