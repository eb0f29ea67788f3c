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
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


@dataclasses.dataclass
class LoopState:
  """Host-side bookkeeping saved beside the arrays (resume continues exactly from it)."""
  step: int = 0                      # optimizer steps done
  best_val: float = float("inf")     # best validation loss so far
  best_step: int = -1                # step at which it was reached
  bad_evals: int = 0                 # evaluations since the last improvement (early stopping)
  stopped_early: bool = False        # early stopping ended the run
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
    self.latest.save(loop.step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(dataclasses.asdict(loop))),
        force=True)
    self.latest.wait_until_finished()

  def save_best(self, step: int, params: Any, val_loss: float) -> None:
    self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                   metrics={"val_loss": float(val_loss)}, force=True)
    self.best.wait_until_finished()

  def restore(self, abstract_state: Any) -> tuple[LoopState, Any] | None:
    """The latest `(loop, state)`, or None when there is no checkpoint yet."""
    step = self.latest.latest_step()
    if step is None:
      return None
    out = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()))
    return LoopState(**out["loop"]), out["state"]

  def restore_best_params(self, abstract_params: Any) -> Any | None:
    step = self.best.best_step()
    if step is None:
      return None
    out = self.best.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))
    return out["params"]

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
