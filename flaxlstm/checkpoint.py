"""Checkpoints with orbax: the latest full training state (for resume) and the best params.

Layout under `<workdir>/checkpoints/`:
  latest/<step>/   params + optimizer state + loop bookkeeping (JSON): what resume needs
  best/<step>/     params only, kept for the `keep_best` lowest validation losses

Orbax writes each step into a temporary folder and renames it when complete, so a process
killed mid-save never leaves a half-written checkpoint that looks finished.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flaxlstm.errors import InputError


@dataclasses.dataclass
class LoopState:
  """Host-side bookkeeping saved beside the arrays (resume continues exactly from it)."""
  step: int = 0                      # optimizer steps done
  best_val: float = float("inf")     # best validation loss so far
  best_step: int = -1                # step at which it was reached
  bad_evals: int = 0                 # evaluations since the last improvement (early stopping)
  stopped_early: bool = False        # early stopping ended the run
  nonfinite_steps: int = 0           # updates skipped for a non-finite loss or gradient
  wall_time_s: float = 0.0           # training time accumulated over all sessions


class Checkpoints:
  """The two orbax `CheckpointManager`s of a run (see module docstring)."""

  def __init__(self, directory: str, keep_best: int = 2):
    directory = os.path.abspath(directory)
    opts = dict(create=True, enable_async_checkpointing=False)
    # Two kept so that a crash while the newest is being finalized still leaves one.
    self.latest = ocp.CheckpointManager(
        os.path.join(directory, "latest"),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, **opts))
    self.best = ocp.CheckpointManager(
        os.path.join(directory, "best"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep_best, best_fn=lambda m: m["val_loss"], best_mode="min",
            keep_checkpoints_without_metrics=False, **opts))

  def save(self, loop: LoopState, state: Any) -> None:
    """Saves the full training `state` (a pytree) and `loop` as the latest checkpoint."""
    _drop_step(self.latest, loop.step)
    self.latest.save(loop.step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(dataclasses.asdict(loop))),
        force=True)
    self.latest.wait_until_finished()

  def save_best(self, step: int, params: Any, val_loss: float) -> None:
    _drop_step(self.best, step)
    self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                   metrics={"val_loss": float(val_loss)}, force=True)
    self.best.wait_until_finished()

  def restore(self, abstract_state: Any) -> tuple[LoopState, Any] | None:
    """The newest intact `(loop, state)`, or None when there is no checkpoint yet.

    A damaged step (truncated or missing files) is skipped with a warning and the next
    older one is tried; a checkpoint of another model (shapes differ) is an InputError.
    """
    def load(step):
      out = self.latest.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()))
      return LoopState(**out["loop"]), out["state"]
    return self._newest_intact(self.latest, "state", load, lambda raw: raw["state"]["params"],
                               abstract_state.params)

  def restore_best_params(self, abstract_params: Any) -> Any | None:
    def load(step):
      return self.best.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params)))["params"]
    steps = self.best.best_step()  # best first, then the other kept ones
    order = [steps] + [s for s in sorted(self.best.all_steps(), reverse=True) if s != steps]
    return self._newest_intact(self.best, "params", load, lambda raw: raw["params"],
                               abstract_params, order=order if steps is not None else [])

  def _newest_intact(self, manager, item, load, raw_params, abstract_params, order=None):
    steps = sorted(manager.all_steps(), reverse=True) if order is None else order
    damaged = []
    for step in steps:
      try:
        return load(step)
      except Exception as e:  # pylint: disable=broad-except
        where = os.path.join(str(manager.directory), str(step))
        mismatch = _mismatch(_read_raw(manager, step, item), raw_params, abstract_params)
        if mismatch:
          raise InputError(f"checkpoint {where} does not match this config ({mismatch}); "
                           "use a new --workdir") from None
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        print(f"warning: checkpoint {where} is damaged ({reason}); trying an older one",
              file=sys.stderr)
        damaged.append(step)
    if damaged:
      raise InputError(f"no intact checkpoint in {manager.directory} (damaged steps: "
                       f"{damaged}); remove it or use a new --workdir")
    return None



  def restore_latest_params(self, abstract_params: Any) -> Any | None:
    """Params of the latest full checkpoint (for runs that never reached a validation)."""
    step = self.latest.latest_step()
    if step is None:
      return None
    raw = self.latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.tree.map(lambda a, b: np.asarray(b, a.dtype), abstract_params,
                        raw["state"]["params"])

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _drop_step(manager, step: int) -> None:
  # A step can exist already when a run resumes from an older checkpoint than its newest
  # (killed between two saves, or the newest was damaged): the redone step replaces it.
  if step in manager.all_steps():
    manager.delete(step)


def _read_raw(manager, step: int, item: str):
  """Checkpoint `item` read without a target structure (None if it is unreadable)."""
  try:
    return manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore()}))
  except Exception:  # pylint: disable=broad-except
    return None


def _mismatch(raw, raw_params, abstract_params) -> str:
  """'' if an intact checkpoint's params fit `abstract_params`, else the first difference."""
  if raw is None:
    return ""
  try:
    saved = {jax.tree_util.keystr(p): np.shape(a)
             for p, a in jax.tree_util.tree_flatten_with_path(raw_params(raw))[0]}
  except (KeyError, TypeError):
    return ""
  wanted = {jax.tree_util.keystr(p): tuple(a.shape)
            for p, a in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
  for key in sorted(set(saved) | set(wanted)):
    if key not in saved:
      return f"param {key} is not in the checkpoint"
    if key not in wanted:
      return f"the checkpoint has param {key} that this model lacks"
    if tuple(saved[key]) != wanted[key]:
      return f"param {key} has shape {tuple(saved[key])} there, {wanted[key]} here"
  return ""
