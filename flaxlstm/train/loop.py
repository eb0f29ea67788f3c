"""The training loop, one for every run: `train_and_evaluate(config, workdir)` trains one
run with it, and a population (population.py) trains its members with it.

`run_loop` steps an `Engine` (how the runs' state is stepped: one run on a device mesh,
`SingleEngine`, or a population's members on a member axis) and drives one `RunSession` per
run (session.py: its logs, validation and early stopping, checkpoints and final metrics).
A single run is the loop with one session.

Everything a step needs is a pure function of (spec, step): the batch (seed, epoch,
position in epoch), the augmentation draw and the dropout key. Resuming therefore needs only
the step, params, optimizer state and the early-stopping counters from the checkpoint: no
iterator or RNG state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections

from flaxlstm import config as config_lib
from flaxlstm.data import io
from flaxlstm.errors import RERUN, InputError, Preempted, TrainingError
from flaxlstm.report import Progress
from flaxlstm.train import flops
from flaxlstm.train import lock as lock_lib
from flaxlstm.train import workdir as workdir_lib
from flaxlstm.train.assembly import Setup, assemble
from flaxlstm.train.checkpoint import Checkpoints, LoopState
from flaxlstm.train.preemption import StopRequest, stop_signals
from flaxlstm.train.session import RunSession, closing
from flaxlstm.train.step import make_predict_fn, make_train_step

log = logging.getLogger(__name__)


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
  if isinstance(config, config_lib.RunSpec):
    spec = config_lib.validate(config)  # the registries' checks (`to_spec` runs them too)
  else:
    spec = config_lib.to_spec(config)
  spec = workdir_lib.with_absolute_data_path(spec)
  if jax.process_index() == 0:
    workdir_lib.fail_if_busy(workdir)  # at once, before the data is read
  setup = assemble(spec, devices)  # validates the data before anything is written
  data_now = workdir_lib.fingerprint(io.data_file(spec.data.path))
  claim, restored = claim_workdir(
    setup, workdir, data_now, resume=resume, force=force, allow_changed_data=allow_changed_data
  )
  try:
    engine = SingleEngine(setup)
    return run_loop([setup], [workdir], [restored], data_now, engine, quiet=quiet)[0]
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
) -> tuple[lock_lib.Claim | None, tuple[LoopState, object] | None]:
  """Locks `workdir` for `setup`'s run and restores its newest checkpoint (at most
  `max_step`); returns `(claim, restored or None)`. The caller `keep()`s the claim.

  Every check that can refuse runs first, under the lock (see `train_and_evaluate`); a
  refusal leaves the workdir as it was.
  """
  spec = setup.spec
  is_main = jax.process_index() == 0
  claim = lock_lib.Claim(workdir, "flaxlstm train") if is_main else None
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


class Engine:
  """How the loop steps its runs' state (`run_loop`): one run, or a population's members.

  `n` runs share one state; member k's params are `final_params(state, k)`. Subclasses
  implement the steps; the loop owns the bookkeeping of every run (sessions)."""

  n: int = 1
  isolate_failures = False  # a run's own failure (non-finite steps) stops only that run
  predict_fn: Callable  # the sessions' predictions (validation, final metrics)
  cost: flops.StepCost | None = None  # a step's FLOPs, once `compile` counted them

  def init_state(self, restored: Sequence[Any]) -> Any:
    """The state to start from: fresh, or the runs' restored `(loop, state)` pairs."""
    raise NotImplementedError

  def compile(self, state: Any, step: int) -> None:
    """Compiles the step before the loop's first (optional), and counts its FLOPs (`cost`):
    the first step's time is then a step's, not the compiler's."""
    del state, step

  def prefetch(self, step: int, active: list[bool]) -> None:
    """Prepares step `step`'s batches on the host ahead of the step (optional)."""
    del step, active

  def step(self, state: Any, step: int, active: list[bool]) -> tuple[Any, Any]:
    """Dispatches optimizer step `step` for the `active` runs: `(state, metrics)`."""
    raise NotImplementedError

  def host_metrics(self, metrics: Any) -> list[dict]:
    """One step's metrics, per run."""
    raise NotImplementedError

  def checkpoint(
    self,
    state: Any,
    sessions: list[RunSession],
    live: list[int],
    evaluated: bool,
    clock: Callable[[], float],
  ) -> None:
    """Validates the `live` runs (when `evaluated`: early stopping) and saves them;
    `clock()` is the training time since the last save, added to each saved run's wall
    time."""
    raise NotImplementedError

  def wrap_ckpts(self, ckpts: Checkpoints) -> Any:
    """A run's checkpoints as the engine saves them (a population queues its saves)."""
    return ckpts

  def flush(self) -> None:
    """Waits for saves in flight (before a stop, and before final params are read)."""

  def close(self) -> None:
    """Releases what the engine holds (closed when the loop ends, however it ends)."""

  def final_params(self, state: Any, k: int) -> Any:
    raise NotImplementedError

  def baselines(self) -> dict | None:
    """The baselines' metrics when shared by all runs (None: each run computes its own)."""
    return None


class SingleEngine(Engine):
  """One run on its device mesh: the jitted train step, validation on the mesh, and
  checkpoints saved by every process (each writes its own shards)."""

  def __init__(self, setup: Setup):
    self.setup = setup
    spec = setup.spec
    self.train_step = make_train_step(
      setup.model,
      setup.tx,
      spec.train,
      spec.seed,
      setup.mesh,
      setup.state_sharding(),
      spec.mesh.gather_dtype,
    )
    self.compiled: Any = None
    self._batch: tuple[int, Any] | None = None  # (step, its batch), built to compile with
    self.predict_fn = make_predict_fn(setup.model, setup.mesh)

  def init_state(self, restored):
    return self.setup.init_state() if restored[0] is None else restored[0][1]

  def compile(self, state, step):
    # Compiled ahead of time, and this executable runs every step: counting its FLOPs
    # compiles nothing twice (jit would compile its own on the first call).
    spec, mesh = self.setup.spec, self.setup.mesh
    batch = self.setup.train_batch(step)
    self._batch = (step, batch)  # the step runs on it: each batch is built once
    self.compiled = self.train_step.lower(state, *batch).compile()
    self.cost = flops.step_cost(
      self.compiled,
      mesh.size,
      spec.train.peak_flops_per_device,
      mesh.devices.flat[0].device_kind,
      flops.compute_dtype(spec.model),
    )

  def step(self, state, step, active):
    if self.compiled is None:
      self.compile(state, step)
    if self._batch is not None and self._batch[0] == step:
      batch, self._batch = self._batch[1], None
    else:
      batch = self.setup.train_batch(step)
    return self.compiled(state, *batch)

  def host_metrics(self, metrics):
    return [metrics]

  def checkpoint(self, state, sessions, live, evaluated, clock):
    (session,) = sessions
    if evaluated:
      session.evaluator(session.loop, state.params)
    session.loop.wall_time_s += clock()
    session.ckpts.save(session.loop, state)

  def final_params(self, state, k):
    return state.params


def run_loop(
  setups: Sequence[Setup],
  workdirs: Sequence[str],
  restored: Sequence[Any],
  data_now: dict,
  engine: Engine,
  *,
  quiet: bool = True,
  stop: StopRequest | None = None,
  step_back: bool = False,
) -> list[dict]:
  """THE loop: trains `engine`'s runs, run k in `workdirs[k]` resuming `restored[k]`
  (`(loop, state)` or None), once the workdirs are checked and claimed: from here on they
  are written. Returns each run's final metrics (`{"error": message}` for a run that failed
  on its own, with `engine.isolate_failures`).

  One step runs ahead of the host: step t+1 is dispatched before step t's metrics are read,
  so the host's work of a step (the logs, the next batch) overlaps the devices'. A run
  that fails at step t has run step t+1 too; it is neither recorded nor saved again. An
  evaluation, a stop and the last step read everything first.

  `stop`: the stop request to obey (one shared by the populations a runner trains in
  threads); by default SIGTERM/SIGINT. `step_back`: runs restored ahead of the others
  delete their newer checkpoints (a population resumes at the step every member has).
  """
  is_main = jax.process_index() == 0
  n = len(setups)
  total = setups[0].total_steps
  loops = [LoopState() if r is None else r[0] for r in restored]
  saved: int | None = loops[0].step if restored[0] is not None else None
  try:
    with contextlib.ExitStack() as stack:
      sessions = [
        RunSession.open(
          stack,
          setup,
          w,
          loop,
          data_now,
          engine.predict_fn,
          is_main=is_main,
          wrap_ckpts=engine.wrap_ckpts,
          step_back=step_back,
        )
        for setup, w, loop in zip(setups, workdirs, loops)
      ]
      state = engine.init_state(restored)
      closing(stack, engine)
      desc = "train" if n == 1 else f"train x{n}"
      # Early stopping may end the runs at any evaluation: the bar counts up to the budget
      # without claiming to know when they end (no ETA).
      stops_early = any(setup.spec.train.patience for setup in setups)
      progress = closing(
        stack,
        Progress(total, enabled=is_main and not quiet, desc=desc, up_to=stops_early),
      )
      if stop is None:
        stop = stack.enter_context(stop_signals())
      due = sessions[0].evaluator.due  # every run evaluates at the same steps
      step = loops[0].step
      progress.update(step)
      t0 = time.perf_counter()
      failed: dict[int, str] = {}
      if any(s.active for s in sessions):
        engine.compile(state, step)
      for session in sessions:
        session.log.cost = engine.cost
        session.log.restart_clock(step)

      def active() -> list[bool]:
        return [s.active and k not in failed for k, s in enumerate(sessions)]

      def clock() -> float:
        nonlocal t0
        elapsed, t0 = time.perf_counter() - t0, time.perf_counter()
        return elapsed

      def record(metrics: Any, on: list[bool]) -> None:
        """Logs one step's train metrics of the runs that ran it (`on`)."""
        per_run = engine.host_metrics(metrics)
        for k, session in enumerate(sessions):
          if not on[k] or k in failed:
            continue
          session.loop.step += 1
          try:
            loss = session.log(session.loop, per_run[k])
          except TrainingError as e:
            if not engine.isolate_failures:
              raise
            failed[k] = str(e)  # this run fails as its single run would; not the rest
            log.warning(f"{session.workdir}: {e}")
            continue
          if n == 1 and loss is not None:
            progress.update(0, loss=f"{loss:.4f}")
        progress.update(1)

      fresh = saved is None  # not resumed (a resumed run scored its start before)
      if fresh and any(s.spec.train.eval_at_start for s in setups) and any(active()):
        # train.eval_at_start: the starting model is scored (and saved as the best so far)
        # like any evaluation step's, so early stopping keeps it unless training beats it.
        engine.checkpoint(state, sessions, [k for k, on in enumerate(active()) if on], True, clock)
        saved = step
        for session in sessions:
          session.log.restart_clock(step)
      pending = None
      engine.prefetch(step, active())
      while any(active()):
        on = active()
        state, metrics = engine.step(state, step, on)
        step += 1
        if pending is not None:
          record(*pending)
        if step < total:
          engine.prefetch(step, active())
        pending = (metrics, on)
        evaluated = due(step)
        # Preemption is checked after every step, evaluation steps included: a run that
        # evaluates every step must still stop when asked.
        stopping = stop.agreed()
        if evaluated or stopping:
          record(*pending)
          pending = None
          live = [k for k in range(n) if on[k] and k not in failed]
          engine.checkpoint(state, sessions, live, evaluated, clock)
          saved = step
          for session in sessions:  # the throughput counts steps, not evaluations
            session.log.restart_clock(step)
        if stopping:
          engine.flush()
          raise Preempted(stop.signum, step)
      if pending is not None:  # the last active run failed at the step before
        record(*pending)
      progress.close()
      engine.flush()  # the best checkpoints are read back next
      out = []
      for k, session in enumerate(sessions):
        if k in failed:
          out.append({"error": failed[k]})
          continue
        params = engine.final_params(state, k)
        out.append(session.finish(params, engine.predict_fn, engine.baselines()))
      return out
  except Exception as e:
    if workdir_lib.is_disk_full(e):
      where = workdirs[0] if n == 1 else os.path.commonpath([os.path.abspath(w) for w in workdirs])
      hint = (
        f"the newest intact checkpoint is step {saved}; free space and {RERUN} to resume"
        if saved is not None
        else f"no checkpoint was saved yet; free space and {RERUN}"
      )
      raise workdir_lib.disk_full_error(e, where, hint) from None
    raise
