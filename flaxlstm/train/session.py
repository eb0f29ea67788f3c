"""A run's session: what one run writes while it trains, for the loop (loop.py) to drive.

A single run has one session and a population one per member; the loop treats them alike.
A session opens the run's outputs (config.json, scalers.json, the metrics log truncated to
the step it resumes from, its checkpoints), validates and early-stops through its
`Evaluator`, logs its train loss (`TrainLog`), and at the end writes metrics.json and the
plots. Nothing here runs a step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, TypeVar

from flaxlstm import config as config_lib
from flaxlstm.errors import TrainingError
from flaxlstm.report import Reporter
from flaxlstm.train import evaluation
from flaxlstm.train.assembly import Setup
from flaxlstm.train.checkpoint import Checkpoints, LoopState
from flaxlstm.train.flops import StepCost

T = TypeVar("T")


def closing(stack: contextlib.ExitStack, thing: T) -> T:
  """Closes `thing` when `stack` unwinds. If an error is already on its way out, a
  failure to close (a flush on a full disk) must not replace it."""

  def exit_(exc_type, exc, tb) -> bool:
    try:
      thing.close()  # type: ignore[attr-defined]
    except Exception:  # closing is best effort once something has failed
      if exc_type is None:
        raise
    return False

  stack.push(exit_)
  return thing


class TrainLog:
  """The train-loss log (every `train.log_every_steps` and at each evaluation) and the
  count of skipped, non-finite steps (past `train.max_nonfinite_steps` the run stops).

  With the step's `cost` (its FLOPs, train/flops.py; set by the loop once the step is
  compiled), each train line also has `flops_per_step`, the achieved `flops_per_s` over
  the steps since the line before, and `mfu` where the devices' peak is known. The clock
  runs from the last line or `restart_clock` (after compiling, evaluating and saving), so
  it times steps only.
  """

  def __init__(self, setup: Setup, reporter: Reporter, eval_every: int):
    self.setup, self.reporter = setup, reporter
    self.eval_every = eval_every
    self.loss_sum, self.loss_n = 0.0, 0
    self.cost: StepCost | None = None
    self._clock = (0, time.perf_counter())  # (step, time) the throughput counts from

  def restart_clock(self, step: int) -> None:
    """Counts the throughput from step `step`, done now."""
    self._clock = (step, time.perf_counter())

  def __call__(self, loop: LoopState, m: dict) -> float | None:
    """Records step `loop.step`'s metrics `m`; returns the train loss it logged, if any."""
    spec = self.setup.spec.train
    if bool(m["nonfinite"]):
      loop.nonfinite_steps += 1
      self.reporter.log(loop.step, "train", {"nonfinite_steps": loop.nonfinite_steps})
      if loop.nonfinite_steps > spec.max_nonfinite_steps:
        raise TrainingError(
          f"non-finite loss or gradients at step {loop.step} (update skipped; "
          f"{loop.nonfinite_steps} such steps > train.max_nonfinite_steps="
          f"{spec.max_nonfinite_steps}); the last checkpoint holds finite params"
        )
    else:
      self.loss_sum, self.loss_n = self.loss_sum + m["loss"], self.loss_n + 1
    if self.loss_n and (loop.step % spec.log_every_steps == 0 or loop.step % self.eval_every == 0):
      train_loss = float(self.loss_sum) / self.loss_n
      values = {"loss": train_loss, "grad_norm": float(m["grad_norm"])}
      if self.cost is not None:  # the floats above waited for this step: it is done
        (first, then), now = self._clock, time.perf_counter()
        values.update(self.cost.metrics(loop.step - first, now - then))
        self._clock = (loop.step, now)
      self.reporter.log(
        loop.step, "train", values, epoch=(loop.step - 1) // self.setup.steps_per_epoch
      )
      self.loss_sum, self.loss_n = 0.0, 0
      return train_loss
    return None


@dataclasses.dataclass
class RunSession:
  """One run's outputs while it trains (the module docstring)."""

  setup: Setup
  workdir: str
  loop: LoopState
  reporter: Reporter
  ckpts: Any  # `Checkpoints`, or a population member's queued saves
  evaluator: evaluation.Evaluator
  log: TrainLog
  data_now: dict

  @classmethod
  def open(
    cls,
    stack: contextlib.ExitStack,
    setup: Setup,
    workdir: str,
    loop: LoopState,
    data_now: dict,
    predict_fn: Callable,
    *,
    is_main: bool = True,
    wrap_ckpts: Callable[[Checkpoints], Any] | None = None,
    step_back: bool = False,
  ) -> RunSession:
    """Opens the run's outputs in `workdir` (closed when `stack` unwinds), resuming at
    `loop`. `step_back`: delete checkpoints newer than `loop.step` (a population member
    that had saved one evaluation ahead of the others). `wrap_ckpts` wraps the checkpoints
    (a population queues its saves off the loop's thread)."""
    reporter = closing(stack, Reporter(workdir, enabled=is_main))
    reporter.truncate_after(loop.step)  # drop what was logged after the checkpoint
    record: dict[str, Any] = {"data": data_now}
    if setup.data.dates is not None:  # what predict compares a new file's frequencies with
      record["frequencies"] = setup.data.frequencies
    reporter.write_config(config_lib.to_config(setup.spec), record)
    if is_main:
      setup.data.save_scalers(os.path.join(workdir, "scalers.json"))
    ckpts = closing(
      stack, Checkpoints(os.path.join(workdir, "checkpoints"), setup.spec.train.keep_best)
    )
    if step_back:
      ckpts.drop_after(loop.step)
    saver = wrap_ckpts(ckpts) if wrap_ckpts is not None else ckpts
    evaluator = evaluation.Evaluator(setup, predict_fn, reporter, saver)
    log = TrainLog(setup, reporter, evaluator.every)
    return cls(setup, workdir, loop, reporter, saver, evaluator, log, data_now)

  @property
  def active(self) -> bool:
    return not self.loop.stopped_early and self.loop.step < self.setup.total_steps

  def throughput(self) -> dict[str, float]:
    """metrics.json's `flops_per_step` and the mean `flops_per_s` and `mfu` of the logged
    train lines (of every attempt: metrics.jsonl holds a resumed run's whole log); empty
    without them (a population's members)."""
    if not self.reporter.enabled:
      return {}
    lines = [
      r for r in self.reporter.read_metrics() if r.get("split") == "train" and "flops_per_s" in r
    ]
    if not lines:
      return {}
    out = {"flops_per_step": lines[-1]["flops_per_step"]}
    for key in ("flops_per_s", "mfu"):
      values = [r[key] for r in lines if key in r]
      if values:
        out[key] = sum(values) / len(values)
    return out

  def finish(
    self, params: Any, predict_fn: Callable, baselines: dict | None = None
  ) -> dict[str, Any]:
    """Scores the run's final params (the best checkpoint's with `train.restore_best`) and
    writes metrics.json and the plots; returns the metrics."""
    setup = self.setup
    params = self.evaluator.final_params(params)
    metrics, test_pred, test_dist = evaluation.final_metrics(setup, params, predict_fn, baselines)
    metrics.update(evaluation.summary(setup, self.loop, params), data=self.data_now)
    metrics.update(self.throughput())
    self.reporter.write_json("metrics.json", metrics)
    evaluation.write_plots(self.reporter, setup, test_pred, test_dist)
    return metrics
