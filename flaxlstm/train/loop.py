"""`train_and_evaluate(config, workdir)`: the training loop.

One loop over optimizer steps. Everything a step needs is a pure function of (spec, step):
the batch (seed, epoch, position in epoch), the augmentation draw and the dropout key.
Resuming therefore needs only the step, params, optimizer state and the early-stopping
counters from the checkpoint: no iterator or RNG state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TypeVar

import jax
import ml_collections

from flaxlstm import config as config_lib
from flaxlstm.data import io
from flaxlstm.errors import InputError, Preempted, TrainingError
from flaxlstm.report import Progress, Reporter
from flaxlstm.train import evaluation
from flaxlstm.train import workdir as workdir_lib
from flaxlstm.train.assembly import Setup, assemble
from flaxlstm.train.checkpoint import Checkpoints, LoopState
from flaxlstm.train.preemption import stop_signals
from flaxlstm.train.step import make_predict_fn, make_train_step

log = logging.getLogger(__name__)
T = TypeVar("T")


def train_and_evaluate(
  config: ml_collections.ConfigDict | config_lib.RunSpec,
  workdir: str,
  *,
  resume: bool | None = None,
  quiet: bool = True,
  devices: list | None = None,
  force: bool = False,
  allow_changed_data: bool = False,
) -> dict:
  """Trains a forecaster as `config` (a ConfigDict or a `RunSpec`) says, in `workdir`;
  returns the final metrics.

  Reruns in the same workdir resume from the latest checkpoint and end with the same numbers
  as an uninterrupted run. `resume=True` insists on an existing run; `resume=False` refuses
  to reuse a workdir that holds checkpoints. The budget (`train.max_steps`,
  `train.max_epochs`) may be raised on resume to train longer. `devices` defaults to all.

  Nothing is written before every check that can refuse has passed, under the workdir's
  lock: the data, the directory (`force` allows a non-empty one that is not a run), the
  config and data the run was trained on (`allow_changed_data` accepts other bytes), the
  free space and the checkpoint.
  """
  spec = config if isinstance(config, config_lib.RunSpec) else config_lib.to_spec(config)
  spec = workdir_lib.with_absolute_data_path(spec)
  if jax.process_index() == 0:
    workdir_lib.fail_if_busy(workdir)  # at once, before the data is read
  setup = assemble(spec, devices)  # validates the data before anything is written
  data_now = workdir_lib.fingerprint(io.data_file(spec.data.path))
  claim, restored = claim_workdir(
    setup, workdir, data_now, resume=resume, force=force, allow_changed_data=allow_changed_data
  )
  try:
    return _train(setup, workdir, restored, data_now, quiet=quiet)
  finally:
    if claim is not None:
      claim.keep()


def claim_workdir(
  setup: Setup,
  workdir: str,
  data_now: dict,
  *,
  resume: bool | None = None,
  force: bool = False,
  allow_changed_data: bool = False,
  max_step: int | None = None,
) -> tuple[workdir_lib.Claim | None, tuple[LoopState, object] | None]:
  """Locks `workdir` for `setup`'s run and restores its newest checkpoint (at most
  `max_step`); returns `(claim, restored or None)`. The caller `keep()`s the claim.

  Every check that can refuse runs first, under the lock (see `train_and_evaluate`); a
  refusal leaves the workdir as it was.
  """
  spec = setup.spec
  is_main = jax.process_index() == 0
  claim = workdir_lib.Claim(workdir, "flaxlstm train") if is_main else None
  try:
    error = None
    warning = None
    try:
      if claim is not None:
        claim.open()
      state_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(setup.abstract_state()))
      warning = workdir_lib.check_for_training(
        workdir,
        spec,
        state_bytes=state_bytes,
        resume=resume,
        force=force,
        data_now=data_now,
        allow_changed_data=allow_changed_data,
      )
    except InputError as e:
      error = e
    workdir_lib.agree(error)
    restored = None
    try:
      with Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True) as ckpts:
        restored = ckpts.restore(setup.abstract_state(), max_step=max_step)
    except InputError as e:
      error = e
    # Also a barrier: whether checkpoints/latest exists decides which orbax collectives a
    # process enters, and process 0 creates it right after this. A process still looking
    # would see it, enter other barriers than process 0, and fail (seen in CI).
    workdir_lib.agree(error)
    if restored is not None and resume is False:
      raise InputError(f"workdir {workdir} already holds a run; resume it or use a new --workdir")
  except BaseException:
    if claim is not None:
      claim.abandon()  # a refusal leaves the workdir as it was
    raise
  if warning and is_main:
    log.warning(warning)
  if is_main:
    log.info(
      f"{workdir}: resuming from step {restored[0].step}"
      if restored is not None
      else f"{workdir}: training from scratch, {setup.total_steps} steps"
    )
  return claim, restored


def _train(setup: Setup, workdir: str, restored, data_now: dict, *, quiet: bool) -> dict:
  """The loop, once the workdir is checked and claimed: from here on it is written."""
  spec, data = setup.spec, setup.data
  is_main = jax.process_index() == 0
  loop, state = restored if restored is not None else (LoopState(), None)
  saved = loop.step if restored is not None else None
  try:
    with contextlib.ExitStack() as stack:
      reporter = closing(stack, Reporter(workdir, enabled=is_main))
      reporter.truncate_after(loop.step)  # drop what was logged after the checkpoint
      reporter.write_config(config_lib.to_config(spec), {"data": data_now})
      if is_main:
        data.save_scalers(os.path.join(workdir, "scalers.json"))
      ckpts = closing(
        stack, Checkpoints(os.path.join(workdir, "checkpoints"), spec.train.keep_best)
      )
      state = setup.init_state() if state is None else state
      train_step = make_train_step(
        setup.model, setup.tx, spec.train, spec.seed, setup.mesh, setup.state_sharding()
      )
      predict_fn = make_predict_fn(setup.model, setup.mesh)
      evaluate = evaluation.Evaluator(setup, predict_fn, reporter, ckpts)
      progress = closing(
        stack, Progress(setup.total_steps, enabled=is_main and not quiet, desc="train")
      )
      train_log = TrainLog(setup, reporter, progress, evaluate.every)
      stop = stack.enter_context(stop_signals())
      progress.update(loop.step)
      t0 = time.perf_counter()
      while not loop.stopped_early and loop.step < setup.total_steps:
        state, m = train_step(state, *setup.train_batch(loop.step))
        loop.step += 1
        train_log(loop, m)
        evaluated = evaluate.due(loop.step)
        if evaluated:
          evaluate(loop, state.params)
        # Preemption is checked after every step, evaluation steps included: a run that
        # evaluates every step must still stop when asked.
        stopping = stop.agreed()
        if evaluated or stopping:
          loop.wall_time_s += time.perf_counter() - t0
          t0 = time.perf_counter()
          ckpts.save(loop, state)
          saved = loop.step
        if stopping:
          raise Preempted(stop.signum, loop.step)
      progress.close()
      params = evaluate.final_params(state.params)
      metrics, test_pred = evaluation.final_metrics(setup, params, predict_fn)
      metrics.update(evaluation.summary(setup, loop, params), data=data_now)
      reporter.write_json("metrics.json", metrics)
      evaluation.write_plots(reporter, setup, test_pred)
      return metrics
  except Exception as e:
    if workdir_lib.is_disk_full(e):
      hint = (
        f"the newest intact checkpoint is step {saved}; free space and rerun the same "
        "command to resume"
        if saved is not None
        else "no checkpoint was saved yet; free space and rerun the same command"
      )
      raise workdir_lib.disk_full_error(e, workdir, hint) from None
    raise


class TrainLog:
  """The train-loss log (every `train.log_every_steps` and at each evaluation) and the
  count of skipped, non-finite steps (past `train.max_nonfinite_steps` the run stops)."""

  def __init__(self, setup: Setup, reporter: Reporter, progress: Progress, eval_every: int):
    self.setup, self.reporter, self.progress = setup, reporter, progress
    self.eval_every = eval_every
    self.loss_sum, self.loss_n = 0.0, 0

  def __call__(self, loop: LoopState, m: dict) -> None:
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
      self.reporter.log(
        loop.step,
        "train",
        {"loss": train_loss, "grad_norm": float(m["grad_norm"])},
        epoch=(loop.step - 1) // self.setup.steps_per_epoch,
      )
      self.progress.update(0, loss=f"{train_loss:.4f}")
      self.loss_sum, self.loss_n = 0.0, 0
    self.progress.update(1)


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
