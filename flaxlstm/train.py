"""Training: optimizer, the jitted train/eval steps, and `train_and_evaluate(config, workdir)`.

One loop over optimizer steps. Everything a step needs is a pure function of
(config, step): the batch (seed, epoch, position in epoch), the augmentation draw and the
dropout key. Resuming therefore needs only the step, params, optimizer state and the
early-stopping counters from the checkpoint — no iterator or RNG state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxlstm import data as data_lib
from flaxlstm import models
from flaxlstm import parallel
from flaxlstm import workdir as workdir_lib
from flaxlstm.checkpoint import Checkpoints, LoopState, NoIntact
from flaxlstm.errors import InputError, Preempted, TrainingError
from flaxlstm.report import Progress, Reporter

Array = jax.Array
log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any


# ---- optimizer and loss ----------------------------------------------------------------------
def decay_mask(params: Any) -> Any:
  """True for weight matrices (decayed, penalized); False for biases and norm parameters."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: str(getattr(path[-1], "key", "")).endswith("kernel"), params)


def learning_rate_schedule(train_cfg, total_steps: int) -> optax.Schedule:
  lr, warmup = train_cfg.learning_rate, min(train_cfg.warmup_steps, max(total_steps - 1, 0))
  if train_cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=lr * 0.01)
  if warmup:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  return optax.constant_schedule(lr)


def make_optimizer(train_cfg, total_steps: int) -> optax.GradientTransformation:
  """`clip_by_global_norm` -> AdamW (decay masked to kernels) or SGD with momentum."""
  schedule = learning_rate_schedule(train_cfg, total_steps)
  if train_cfg.optimizer == "sgd":
    opt = optax.chain(
        optax.add_decayed_weights(train_cfg.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=train_cfg.momentum or None))
  else:
    opt = optax.adamw(schedule, weight_decay=train_cfg.weight_decay, mask=decay_mask)
  if train_cfg.clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(train_cfg.clip_norm), opt)
  return opt


def pointwise_loss(kind: str, pred: Array, target: Array, huber_delta: float = 1.0) -> Array:
  err = pred - target
  if kind == "mae":
    return jnp.abs(err)
  if kind == "huber":
    return optax.huber_loss(pred, target, delta=huber_delta)
  return jnp.square(err)


def penalty(params: Any, l1: float, l2: float) -> Array:
  """L1/L2 terms over the weight matrices (the same leaves weight decay applies to)."""
  leaves = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(decay_mask(params)))
            if m]
  total = jnp.zeros((), jnp.float32)
  if l1:
    total += l1 * sum(jnp.abs(p).sum() for p in leaves)
  if l2:
    total += l2 * sum(jnp.square(p).sum() for p in leaves)
  return total


# ---- steps -----------------------------------------------------------------------------------
def make_train_step(model: models.Forecaster, tx: optax.GradientTransformation, train_cfg,
                    seed: int, mesh, state_sharding) -> Callable:
  """The jitted train step `(state, x, y, y_last) -> (state, metrics)`; `state` is donated.

  The same function runs on one device or many: inputs are split over the mesh's batch
  axes, the state as `state_sharding` says (replicated, FSDP, gate-sharded); XLA inserts
  the collectives. Dropout keys are threefry-partitionable, so masks do not depend on the
  mesh either.
  """
  base_key = jax.random.key(seed)

  def train_step(state: TrainState, x, y, y_last):
    dropout_key = jax.random.fold_in(jax.random.fold_in(base_key, 1), state.step)

    def loss_fn(params):
      pred = model.apply({"params": params}, x, y_last, deterministic=False,
                         rngs={"dropout": dropout_key})
      data_loss = pointwise_loss(train_cfg.loss, pred, y, train_cfg.huber_delta).mean()
      return data_loss + penalty(params, train_cfg.l1, train_cfg.l2), data_loss

    (loss, data_loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite loss or gradient skips the update (params and optimizer state unchanged),
    # so NaNs never reach the weights; the host counts these steps and stops past a limit.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics = {"loss": data_loss, "total_loss": loss, "grad_norm": grad_norm,
               "nonfinite": ~finite}
    return TrainState(step=state.step + 1, params=keep(params, state.params),
                      opt_state=keep(opt_state, state.opt_state)), metrics

  b2, b3 = parallel.batch_sharding(mesh, 2), parallel.batch_sharding(mesh, 3)
  return jax.jit(train_step, donate_argnums=0,
                 in_shardings=(state_sharding, b3, b3, b2),
                 out_shardings=(state_sharding, parallel.replicated(mesh)))


def make_predict_fn(model: models.Forecaster, mesh=None) -> Callable:
  """Jitted `(params, x, y_last) -> predictions`, replicated so every host can read them."""
  out = None if mesh is None else parallel.replicated(mesh)
  return jax.jit(lambda params, x, y_last: model.apply(
      {"params": params}, x, y_last, deterministic=True), out_shardings=out)


def predict_windows(predict_fn: Callable, params: Any, data: data_lib.SeriesData,
                    starts: np.ndarray, batch_size: int, mesh=None) -> np.ndarray:
  """Scaled predictions `(N, horizon, n_targets)` for windows starting at `starts`.

  The last batch is padded to `batch_size` so that one compiled function serves all. With
  a `mesh`, each process gathers only its own rows of every batch.
  """
  out = []
  for lo in range(0, len(starts), batch_size):
    idx = starts[lo:lo + batch_size]
    n = len(idx)
    idx = np.concatenate([idx, np.repeat(idx[-1:], batch_size - n)])
    if mesh is None:
      x, y_last = data_lib.gather_inputs(data, idx), data.y[idx - 1]
    else:
      mine = idx[parallel.local_batch_slice(mesh, batch_size)]
      x = parallel.host_to_global(mesh, data_lib.gather_inputs(data, mine), batch_size)
      y_last = parallel.host_to_global(mesh, data.y[mine - 1], batch_size)
    out.append(np.asarray(predict_fn(params, x, y_last))[:n])
  return np.concatenate(out) if out else np.zeros((0, data.horizon, len(data.target_names)))


def split_metrics(data: data_lib.SeriesData, starts: np.ndarray, pred: np.ndarray) -> dict:
  """MSE/MAE/RMSE on the scaled values and (suffix `_original`) in the data's units."""
  _, y = data_lib.gather_windows(data, starts)
  scaled = data_lib.regression_metrics(y, pred)
  orig = data_lib.regression_metrics(data.inverse_targets(y), data.inverse_targets(pred))
  return {**scaled, **{f"{k}_original": v for k, v in orig.items()}}


def baseline_metrics(data: data_lib.SeriesData, period: int, splits=("val", "test")) -> dict:
  """Naive, seasonal-naive and linear (ridge on the window) forecasts scored on exactly
  the model's windows: whether the LSTM earns its keep is read off one table."""
  forecasters = {"naive": lambda s: data_lib.naive_forecast(data, s)}
  if data.lookback >= period:  # seasonal naive needs a full season of history
    forecasters["seasonal_naive"] = (
        lambda s: data_lib.seasonal_naive_forecast(data, s, period))
  linear = data_lib.linear_forecaster(data)
  if linear is not None:
    forecasters["linear"] = linear
  return {name: {split: split_metrics(data, data.window_starts(split),
                                      f(data.window_starts(split))) for split in splits}
          for name, f in forecasters.items()}


# ---- run setup -------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
  """Everything built from a config: data, model, optimizer, compiled steps."""
  config: Any
  data: data_lib.SeriesData
  model: models.Forecaster
  tx: optax.GradientTransformation
  steps_per_epoch: int
  total_steps: int
  mesh: Any
  _abstract: Any = dataclasses.field(default=None, repr=False)

  def _init_fn(self) -> Callable[[], TrainState]:
    x, _ = data_lib.gather_windows(self.data, self.data.window_starts("train")[:1])
    y_last = self.data.y[:1]

    def init():
      key = jax.random.fold_in(jax.random.key(self.config.seed), 0)
      params = self.model.init(key, x, y_last, deterministic=True)["params"]
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.tx.init(params))
    return init

  def abstract_state(self) -> Any:
    """Shapes, dtypes and target shardings of the train state (no memory allocated)."""
    if self._abstract is None:  # traced once: init is not free for large models
      shapes = jax.eval_shape(self._init_fn())
      self._abstract = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
          parallel.state_shardings(self.mesh, shapes))
    return self._abstract

  def state_sharding(self) -> Any:
    return jax.tree.map(lambda a: a.sharding, self.abstract_state())

  def train_batch(self, step: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(x, y, y_last)` of optimizer step `step`, as global arrays split over the mesh.

    A pure function of (seed, step): the epoch's shuffle, the batch's windows and the
    augmentation draw. Each process gathers only its own rows of the global batch, except
    that augmentation is drawn for the whole batch so that it does not depend on how many
    processes share it.
    """
    cfg, data = self.config, self.data
    bs = cfg.train.batch_size
    epoch, pos = divmod(step, self.steps_per_epoch)
    train_starts = data.window_starts("train")
    order = data_lib.epoch_batches(len(train_starts), bs, cfg.seed, epoch)
    starts = train_starts[order[pos]]
    mine = parallel.local_batch_slice(self.mesh, bs)
    aug = cfg.data.augment
    if any(aug[k] for k in aug):
      x, y = data_lib.gather_windows(data, starts)
      x = data_lib.augment(x, aug, data_lib.augment_rng(cfg.seed, step))[mine]
      y = y[mine]
    else:
      x, y = data_lib.gather_windows(data, starts[mine])
    y_last = data.y[starts[mine] - 1]
    return tuple(parallel.host_to_global(self.mesh, a, bs) for a in (x, y, y_last))

  def init_state(self) -> TrainState:
    """Fresh parameters, created directly in their shards (no full copy on one device)."""
    return jax.jit(self._init_fn(), out_shardings=self.state_sharding())()


def build_run(config, devices: list | None = None,
              scalers: data_lib.FittedScalers | None = None) -> Run:
  """Data, model, optimizer and step counts of `config`; writes nothing.

  `scalers`: a finished run's saved scalers, used instead of fitting new ones.
  """
  # Random bits independent of how arrays are sharded: dropout masks are then the same on
  # any mesh (the default in current JAX; set so older versions agree).
  jax.config.update("jax_threefry_partitionable", True)
  mesh = parallel.make_mesh(config.mesh, devices)
  n_split = parallel.batch_size_per_step(mesh)
  for key in ("batch_size", "eval_batch_size"):
    if config.train[key] % n_split:
      raise InputError(f"train.{key}={config.train[key]} must be a multiple of the "
                       f"{n_split} devices the batch is split over (mesh.data x mesh.fsdp)")
  data = data_lib.prepare(config.data, scalers=scalers)
  n_train = len(data.window_starts("train"))
  bs = config.train.batch_size
  if n_train < bs:
    raise InputError(f"train.batch_size={bs} is larger than the {n_train} training windows")
  steps_per_epoch = n_train // bs
  total = steps_per_epoch * config.train.max_epochs
  if config.train.max_steps:
    total = min(total, config.train.max_steps)
  model = models.forecaster_from_config(
      config.model, horizon=data.horizon, n_targets=len(data.target_names))
  return Run(config, data, model, make_optimizer(config.train, total), steps_per_epoch, total,
             mesh)


# Keys a resumed run may change: raising the budget continues training.
_BUDGET_KEYS = ("train.max_steps", "train.max_epochs")


def with_absolute_data_path(config):
  """A copy of `config` whose `data.path` is absolute ("" stays: the bundled ETTh1).

  What a run records: its config.json then names the same file from any directory, and a
  rerun from elsewhere with the same relative path is told the file differs.
  """
  config = config.copy_and_resolve_references()
  if config.data.path:
    config.data.path = str(data_lib.data_file(config.data.path))
  return config


def _check_workdir(workdir: str, config, run: Run, *, resume: bool | None, force: bool,
                   data_now: dict, allow_changed_data: bool) -> str:
  """Every refusal that needs no checkpoint: what the directory is, its config, its data,
  the free space. Reads only. Returns a warning to print ('' if none)."""
  kind = workdir_lib.classify(workdir)
  if kind == "foreign" and not force:
    raise InputError(f"workdir {workdir} is not empty and holds no flaxlstm run (it has "
                     f"{workdir_lib.foreign_entries(workdir)}); use an empty or new "
                     "--workdir, or pass --force to train into it (files with a run's names "
                     "are then overwritten)")
  warning = ""
  if os.path.lexists(os.path.join(workdir, "config.json")):
    old, record = workdir_lib.read_run_config(workdir)
    if old.data.path and not os.path.isabs(old.data.path):
      # Written by an older flaxlstm, which stored the path as given: the best reading of
      # it is the one the old code made, relative to the working directory.
      old.data.path = os.path.abspath(old.data.path)
    diffs = [d for d in workdir_lib.config_diff(config, old)
             if d.split(":")[0] not in _BUDGET_KEYS]
    if diffs:
      raise InputError(f"workdir {workdir} holds a run with another config ({diffs[0]}); "
                       "use a new --workdir")
    warning = workdir_lib.check_same_data(record, data_now, workdir=workdir,
                                          allow_changed=allow_changed_data)
  elif resume:
    raise InputError(f"nothing to resume: {workdir} has no config.json")
  # Two latest full states + the best params, with headroom for logs and plots.
  state_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(run.abstract_state()))
  workdir_lib.check_free_space(
      workdir, int(2.5 * state_bytes * (2 + config.train.keep_best)) + 2**24)
  return warning


def _agree(error: BaseException | None) -> None:
  """Raises on every process if any process refused (the others would otherwise wait
  forever in the next collective for the one that left)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    failed = multihost_utils.process_allgather(np.int32(error is not None))
    if error is None and np.any(failed):
      raise InputError(f"process {int(np.argmax(failed))} refused the workdir (see its "
                       "error)")
  if error is not None:
    raise error


# ---- the loop --------------------------------------------------------------------------------
def train_and_evaluate(config, workdir: str, *, resume: bool | None = None,
                       quiet: bool = True, devices: list | None = None, force: bool = False,
                       allow_changed_data: bool = False) -> dict:
  """Trains a forecaster as `config` says, in `workdir`; returns the final metrics.

  Reruns in the same workdir resume from the latest checkpoint and end with the same numbers
  as an uninterrupted run. `resume=True` insists on an existing run; `resume=False` refuses
  to reuse a workdir that holds checkpoints. The budget (`train.max_steps`,
  `train.max_epochs`) may be raised on resume to train longer. `devices` defaults to all.

  Nothing is written before every check that can refuse has passed, under the workdir's
  lock: the data, the directory (`force` allows a non-empty one that is not a run), the
  config and data the run was trained on (`allow_changed_data` accepts other bytes), the
  free space and the checkpoint.
  """
  config = with_absolute_data_path(config)
  is_main = jax.process_index() == 0
  if is_main and (holder := workdir_lib.lock_holder(workdir)):  # fail fast, before the data
    raise InputError(f"{workdir} is in use by {holder}; wait for it to finish, or use "
                     "another --workdir")
  run = build_run(config, devices)  # validates the data before anything is written
  data_now = workdir_lib.fingerprint(data_lib.data_file(config.data.path))
  claim = workdir_lib.Claim(workdir, "flaxlstm train") if is_main else None
  try:
    error = None
    try:
      if claim is not None:
        claim.open()
      warning = _check_workdir(workdir, config, run, resume=resume, force=force,
                               data_now=data_now, allow_changed_data=allow_changed_data)
    except InputError as e:
      error = e
    _agree(error)
    with Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True) as ckpts:
      restored = ckpts.restore(run.abstract_state())  # onto this mesh, whatever it was saved on
    if restored is not None and resume is False:
      raise InputError(f"workdir {workdir} already holds a run; resume it or use a new "
                       "--workdir")
  except BaseException:
    if claim is not None:
      claim.abandon()
    raise
  # ---- every check passed: from here on the workdir is written ----
  if warning and is_main:
    log.warning(warning)
  try:
    return _train(run, workdir, restored, data_now, quiet=quiet)
  finally:
    if claim is not None:
      claim.keep()


def _train(run: Run, workdir: str, restored, data_now: dict, *, quiet: bool) -> dict:
  """The loop of `train_and_evaluate`, once the workdir is checked and claimed."""
  config, data, tcfg = run.config, run.data, run.config.train
  is_main = jax.process_index() == 0
  reporter = Reporter(workdir, enabled=is_main)
  loop, state = restored if restored is not None else (LoopState(), None)
  saved = loop.step if restored is not None else None
  ckpts = progress = None
  hint = lambda: (f"the newest intact checkpoint is step {saved}; free space and rerun the "
                  "same command to resume" if saved is not None else
                  "no checkpoint was saved yet; free space and rerun the same command")
  try:
    reporter.truncate_after(loop.step)  # drop what was logged after the checkpoint
    reporter.write_config(config, {"data": data_now})
    if is_main:
      data.save_scalers(os.path.join(workdir, "scalers.json"))
    ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), tcfg.keep_best)
    if state is None:
      state = run.init_state()
    train_step = make_train_step(run.model, run.tx, tcfg, config.seed, run.mesh,
                                 run.state_sharding())
    predict_fn = make_predict_fn(run.model, run.mesh)
    val_starts = data.window_starts("val")
    val_y = jnp.asarray(data_lib.gather_windows(data, val_starts)[1])
    eval_every = tcfg.eval_every_steps or run.steps_per_epoch
    progress = Progress(run.total_steps, enabled=is_main and not quiet, desc="train")
    progress.update(loop.step)
    loss_sum, loss_n = 0.0, 0
    t0 = time.perf_counter()
    with _stop_signals() as stop:
      while not loop.stopped_early and loop.step < run.total_steps:
        state, m = train_step(state, *run.train_batch(loop.step))
        loop.step += 1
        if bool(m["nonfinite"]):
          loop.nonfinite_steps += 1
          reporter.log(loop.step, "train", {"nonfinite_steps": loop.nonfinite_steps})
          if loop.nonfinite_steps > tcfg.max_nonfinite_steps:
            raise TrainingError(
                f"non-finite loss or gradients at step {loop.step} (update skipped; "
                f"{loop.nonfinite_steps} such steps > train.max_nonfinite_steps="
                f"{tcfg.max_nonfinite_steps}); the last checkpoint holds finite params")
        else:
          loss_sum, loss_n = loss_sum + m["loss"], loss_n + 1
        epoch = (loop.step - 1) // run.steps_per_epoch
        if loss_n and (loop.step % tcfg.log_every_steps == 0 or loop.step % eval_every == 0):
          train_loss = float(loss_sum) / loss_n
          reporter.log(loop.step, "train", {"loss": train_loss,
                                            "grad_norm": float(m["grad_norm"])}, epoch=epoch)
          progress.update(0, loss=f"{train_loss:.4f}")
          loss_sum, loss_n = 0.0, 0
        progress.update(1)

        evaluated = loop.step % eval_every == 0 or loop.step == run.total_steps
        if evaluated:
          pred = predict_windows(predict_fn, state.params, data, val_starts,
                                 tcfg.eval_batch_size, run.mesh)
          val_loss = float(pointwise_loss(tcfg.loss, jnp.asarray(pred), val_y,
                                          tcfg.huber_delta).mean())
          reporter.log(loop.step, "val", {"loss": val_loss,
                                          **split_metrics(data, val_starts, pred)}, epoch=epoch)
          if np.isfinite(val_loss) and val_loss < loop.best_val - tcfg.min_delta:
            loop.best_val, loop.best_step, loop.bad_evals = val_loss, loop.step, 0
            ckpts.save_best(loop.step, state.params, val_loss)
          else:
            loop.bad_evals += 1
          if tcfg.patience and loop.bad_evals >= tcfg.patience:
            loop.stopped_early = True
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

    params = state.params
    if tcfg.restore_best:
      try:
        best = ckpts.restore_best_params(run.abstract_state().params)
      except NoIntact as e:
        log.warning(f"{e}; scoring the last params instead of the best")
        best = None
      if best is not None:
        params = best
    metrics, test_pred = final_metrics(run, params, predict_fn)
    metrics.update(_summary(run, loop, params), data=data_now)
    reporter.write_json("metrics.json", metrics)
    write_plots(reporter, data, test_pred)
    return metrics
  except Exception as e:
    if workdir_lib.is_disk_full(e):
      raise workdir_lib.disk_full_error(e, workdir, hint()) from None
    raise
  finally:
    _close_all(progress, ckpts, reporter)


def _summary(run: Run, loop: LoopState, params: Any) -> dict:
  """The training summary fields of metrics.json, from the loop's bookkeeping."""
  return dict(steps=loop.step, epochs=loop.step / run.steps_per_epoch,
              best_step=loop.best_step, stopped_early=loop.stopped_early,
              nonfinite_steps=loop.nonfinite_steps, train_wall_time_s=loop.wall_time_s,
              params_count=int(sum(p.size for p in jax.tree.leaves(params))))


def _close_all(*closeables) -> None:
  """Closes each (None skipped); if an error is already on its way out, closing errors
  (a flush on a full disk) must not replace it, else the first one is raised."""
  failing = sys.exc_info()[1] is not None
  first = None
  for c in closeables:
    if c is None:
      continue
    try:
      c.close()
    except Exception as e:  # closing is best effort once something has failed
      first = first or e
  if first is not None and not failing:
    raise first


class _StopRequest:
  """Set by SIGTERM/SIGINT; `agreed()` is True once every process has seen a signal."""

  def __init__(self):
    self.signum = 0

  def agreed(self) -> bool:
    if jax.process_count() == 1:
      return bool(self.signum)
    # All processes must stop after the same step, or the others would wait forever in the
    # next step's collectives: agree on "any process was signalled".
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.int32(self.signum))))


@contextlib.contextmanager
def _stop_signals():
  """Turns SIGTERM/SIGINT into a stop request checked after each step (a second SIGINT
  interrupts at once). Handlers are only installed from the main thread."""
  stop = _StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield stop
    return

  def handler(signum, frame):
    if stop.signum and signum == signal.SIGINT:
      raise KeyboardInterrupt
    stop.signum = signum

  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield stop
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def final_metrics(run: Run, params: Any, predict_fn: Callable) -> tuple[dict, np.ndarray]:
  """Val/test metrics and baselines, and the test predictions (for the plots)."""
  out = {}
  for split in ("val", "test"):
    starts = run.data.window_starts(split)
    pred = predict_windows(predict_fn, params, run.data, starts,
                           run.config.train.eval_batch_size, run.mesh)
    out[split] = split_metrics(run.data, starts, pred)
  out["baselines"] = baseline_metrics(run.data, run.config.data.seasonal_period)
  return out, pred


def write_plots(reporter: Reporter, data: data_lib.SeriesData, test_pred: np.ndarray) -> None:
  """Learning curves and test forecasts vs actuals (process 0; no device work here)."""
  if not reporter.enabled:
    return
  starts = data.window_starts("test")
  _, y = data_lib.gather_windows(data, starts)
  naive = data_lib.naive_forecast(data, starts)
  reporter.plot_learning_curves()
  reporter.plot_forecast(
      data.inverse_targets(y), data.inverse_targets(test_pred), name="forecast_test.png",
      title=f"test set: {', '.join(data.target_names)}", target_name=data.target_names[0],
      baselines={"naive": data.inverse_targets(naive)},
      dates=None if data.dates is None else data.dates[starts])


# ---- evaluate / predict from a finished workdir ----------------------------------------------
def restore_params(workdir: str, config, abstract_params: Any) -> Any:
  """The run's best params (else those of its newest intact checkpoint); reads only."""
  del config  # the checkpoints say which steps are kept
  with Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True) as ckpts:
    params = ckpts.restore_params(abstract_params)
  if params is None:
    raise InputError(f"{workdir} holds no checkpoint")
  return params


def run_scalers(workdir: str) -> data_lib.FittedScalers:
  """The run's saved scalers (scalers.json); a legacy scalers.pkl is refused unread."""
  path = os.path.join(workdir, "scalers.json")
  if not os.path.lexists(path):
    legacy = os.path.join(workdir, "scalers.pkl")
    if os.path.lexists(legacy):
      return data_lib.load_scalers(legacy)  # refuses, saying how to re-create them
    raise InputError(f"{workdir} has no scalers.json; re-create it with `flaxlstm evaluate "
                     f"--workdir {workdir} --refit-scalers`")
  return data_lib.load_scalers(path)


def evaluate(workdir: str, *, allow_changed_data: bool = False,
             refit_scalers: bool = False) -> dict:
  """Recomputes a run's final metrics from its checkpoint; writes `metrics.json`.

  The data must be the bytes the run was trained on (`allow_changed_data`: score other
  bytes, and say so) and is scaled with the run's saved scalers; `refit_scalers` fits them
  again on the training rows instead (a run whose scalers.json is lost, or one saved as a
  pickle by an older flaxlstm) and saves them. metrics.json is rebuilt whole, the training
  summary from the checkpoint's bookkeeping, so a damaged one is simply replaced.
  """
  config, record = workdir_lib.read_run_config(workdir)
  lock = workdir_lib.Lock(workdir, "flaxlstm evaluate")
  with lock:
    data_now = workdir_lib.fingerprint(data_lib.data_file(config.data.path))
    warning = workdir_lib.check_same_data(record, data_now, workdir=workdir,
                                          allow_changed=allow_changed_data)
    if record is None:
      warning = (f"{workdir} records no data fingerprint (trained by an older flaxlstm); "
                 f"scoring {data_now['path']} as it is now")
    scalers = None if refit_scalers else run_scalers(workdir)
    run = build_run(config, scalers=scalers)
    with Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True) as ckpts:
      params = ckpts.restore_params(run.abstract_state().params)
      loop = ckpts.latest_loop()
    if params is None:
      raise InputError(f"{workdir} holds no checkpoint")
    if warning:
      log.warning(warning)
    metrics, _ = final_metrics(run, params, make_predict_fn(run.model, run.mesh))
    metrics.update(_summary(run, loop or LoopState(), params), data=data_now)
    reporter = Reporter(workdir, enabled=jax.process_index() == 0)
    if refit_scalers and reporter.enabled:
      run.data.save_scalers(os.path.join(workdir, "scalers.json"))
    reporter.write_json("metrics.json", metrics)
  return metrics


def predict_file(workdir: str, data_path: str, out_path: str, *,
                 all_windows: bool = False, overwrite: bool = False) -> int:
  """Forecasts `data_path` with a trained run; writes a CSV in original units.

  By default one forecast: the `horizon` steps after the file's last row. With
  `all_windows`, a forecast from every position that has `lookback` rows of history
  (back-testing), with the actual values beside it when the file has the targets.
  Returns the number of forecasts written. Reads the run, writes only `out_path`: never
  over `data_path` or a file of the run, never over an existing file unless `overwrite`.
  """
  import pandas as pd  # host-side only; keeps `import flaxlstm.train` light for workers
  out = workdir_lib.check_output(out_path, inputs=(data_path,), workdir=workdir,
                                 overwrite=overwrite)
  config, _ = workdir_lib.read_run_config(workdir)
  scalers = run_scalers(workdir)
  data = data_lib.prepare_inference(config.data, scalers, path=data_path)
  if config.model.predict_delta and not data.has_targets:
    raise InputError(f"{data_path} lacks the target column(s) {list(data.target_names)}, "
                     "which this model (model.predict_delta) needs as inputs")
  model = models.forecaster_from_config(
      config.model, horizon=data.horizon, n_targets=len(data.target_names))
  x0 = np.zeros((1, data.lookback, len(data.feature_names)), np.float32)
  y0 = np.zeros((1, len(data.target_names)), np.float32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x0, y0))["params"]
  params = restore_params(workdir, config, abstract)
  n = len(data.x)
  if all_windows:
    starts = np.arange(data.lookback, n + 1, dtype=np.int64)
  else:
    starts = np.array([n], np.int64)
  pred = data.inverse_targets(predict_windows(
      make_predict_fn(model), params, data, starts, config.train.eval_batch_size))
  rows = []
  step_delta = None
  if data.dates is not None and n > 1:
    step_delta = pd.Series(data.dates).diff().median()
  for w, start in enumerate(starts):
    origin = data.dates[start - 1] if data.dates is not None else int(start - 1)
    for h in range(data.horizon):
      row = {"origin": origin, "step": h + 1}
      if step_delta is not None:
        row["date"] = pd.Timestamp(origin) + (h + 1) * step_delta
      for k, name in enumerate(data.target_names):
        row[name] = float(pred[w, h, k])
        if data.has_targets and all_windows:
          row[f"{name}_actual"] = (float(data.y_raw[start + h, k]) if start + h < n
                                   else float("nan"))
      rows.append(row)
  text = pd.DataFrame(rows).to_csv(index=False)
  try:
    workdir_lib.write_output(out, text, overwrite=overwrite)
  except OSError as e:
    if workdir_lib.is_disk_full(e):
      raise TrainingError(f"disk full writing --out {out_path}; nothing was written") from None
    raise InputError(f"cannot write --out {out_path}: {e.strerror}") from None
  return len(starts)
