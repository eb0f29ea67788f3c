"""Populations: many runs of one structure trained as one compiled program.

`train_population(specs, workdirs)` trains P runs that differ only in numbers, the seed
and the continuous hyperparameters (`MEMBER_KEYS`), as one jitted step over a leading member
axis. Each member keeps its own early stopping (a stopped member is frozen, its best params
kept) and writes its own standard workdir (`config.json`, `metrics.json`, `scalers.json`,
checkpoints, plots): a member's workdir is indistinguishable from the single run's, and
`flaxlstm evaluate`/`predict`, or a `flaxlstm train` resume, read it as one. On CPU member
k's numbers are those of `train_and_evaluate(specs[k])` to the bit, early-stopping step
included (tests/train/test_population.py; 27 of 27 runs of the dropout sweep, over
1,000-3,000 steps each, BENCHMARKS.md): each member runs its single run's program. Under
`vmap` (accelerators, below) they agree to float tolerance.

Runs whose structure differs (shapes, layer sizes, lookback, which optional terms are on)
form separate populations: `groups(specs)`. Zero vs non-zero of a member hyperparameter is
structure: a dropout mask that is drawn or not, a penalty term that is there or not, and so
a member with dropout 0 draws the same random numbers as its single run.

How the step runs the members: `jax.shard_map` gives each device its members (the member
axis is sharded over a 1-D `("pop",)` mesh); on each device `lax.map` runs them one after
another, each a `lax.cond` that skips frozen members (a plain scan, one member per
iteration: under `vmap`, even over a chunk of one, the cond would become a select that
computes a frozen member's step too). Measured on 2 CPU cores
(experiments/benchmarks/population_step.py), one member at a time is the fastest layout:
a member's fused-LSTM residuals stay in cache between its forward and backward pass, which
they cannot for P members at once under `vmap` (fresh memory, and page faults, for P times
the activations on every step). On an accelerator the opposite holds: a member of the
default experiment is far too small to fill a GPU and its step is a chain of small
kernels, so a device's members run all at once, vmapped (the fused kernel's population
rule, nn/recurrence.py): on an H200, 12 members' step costs 0.10x of one model's per member
(BENCHMARKS.md), and a frozen member is masked there, not skipped. `population_chunk`
overrides that choice (benchmarks).

A sweep (`flaxlstm sweep --population`, search/runner.py) does not shard one population
over several devices: it shares the groups out over the devices, cutting one only where a
device's share needs it, and trains each population on its own device, in its own
thread, so that no device waits for another's members.

Resume: every member checkpoints into its own workdir at each evaluation; a rerun restores
all members at the newest step every member has (a kill -9 between two members' saves
leaves some one evaluation ahead: they step back to it).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxlstm import config as config_lib
from flaxlstm.config.schema import RunSpec
from flaxlstm.data import io, windows
from flaxlstm.errors import InputError, Preempted, TrainingError
from flaxlstm.forecast import baselines
from flaxlstm.nn import cudnn
from flaxlstm.report import Progress, Reporter
from flaxlstm.train import evaluation
from flaxlstm.train import workdir as workdir_lib
from flaxlstm.train.assembly import Setup, assemble, build_model
from flaxlstm.train.checkpoint import Checkpoints, LoopState
from flaxlstm.train.loop import TrainLog, claim_workdir, closing
from flaxlstm.train.optim import make_optimizer
from flaxlstm.train.preemption import StopRequest, stop_signals
from flaxlstm.train.step import make_predict_fn, train_step_fn

log = logging.getLogger(__name__)

# The continuous hyperparameters a member holds as a traced float32 (its own value).
MEMBER_KEYS = (
  "train.learning_rate",
  "train.weight_decay",
  "train.clip_norm",
  "train.l1",
  "train.l2",
  "model.dropout",
  "model.recurrent_dropout",
  "model.inter_layer_dropout",
  "model.dense_dropout",
)
# Free per member on the host: the seed (init, dropout and batch order) and augmentation.
_HOST_KEYS = ("seed",)
_HOST_PREFIXES = ("data.augment.",)
# Bookkeeping that does not change the program (logging), also free per member.
_FREE_KEYS = ("train.log_every_steps",)
# Members per `lax.map` iteration; None: 1 on CPU, all of a device's members elsewhere (see
# the module docstring).
population_chunk: int | None = None


def group_key(spec: RunSpec) -> str:
  """Runs with equal keys can be members of one population."""
  flat = config_lib.flatten(config_lib.to_config(spec))
  key = {}
  for name, value in flat.items():
    if name in _HOST_KEYS or name in _FREE_KEYS or name.startswith(_HOST_PREFIXES):
      continue
    key[name] = bool(value) if name in MEMBER_KEYS else value
  return json.dumps(key, sort_keys=True, default=str)


def groups(specs: Sequence[RunSpec]) -> list[list[int]]:
  """The indices of `specs` split into populations, in order of first appearance."""
  out: dict[str, list[int]] = {}
  for i, spec in enumerate(specs):
    out.setdefault(group_key(spec), []).append(i)
  return list(out.values())


def _member_value(spec: RunSpec, key: str) -> float:
  section, name = key.split(".")
  return float(getattr(getattr(spec, section), name))


def _pop_mesh(devices: list | None) -> Mesh:
  """Every device on one member axis; a population that does not fill the last row is
  padded with frozen members, which `lax.cond` skips."""
  return Mesh(np.array(list(jax.devices() if devices is None else devices)), ("pop",))


class _Population:
  """The members' shared data, model and compiled functions (one structure)."""

  def __init__(self, setups: list[Setup], mesh: Mesh):
    self.setups, self.mesh = setups, mesh
    base = setups[0]
    self.base = base
    n_dev = mesh.devices.size
    self.size = -(-len(setups) // n_dev) * n_dev  # padded with frozen copies of member 0
    pad = [0] * (self.size - len(setups))
    order = list(range(len(setups))) + pad
    values = {k: [_member_value(setups[i].spec, k) for i in order] for k in MEMBER_KEYS}
    # Only what differs between the members is traced: the rest stays the constant it is in
    # the single run's program (a traced constant compiles to other fused ops, which
    # rounds differently in the last bit).
    self.varying = tuple(k for k in MEMBER_KEYS if len(set(values[k])) > 1)
    hp = {k: np.array(values[k], np.float32) for k in self.varying}
    self.sharding = NamedSharding(mesh, P("pop"))
    self.hp = jax.device_put(hp, self.sharding)
    self.seeds = jax.device_put(
      np.array([setups[i].spec.seed for i in order], np.int32), self.sharding
    )

  def member_tx(self, hp: dict):
    """A member's train spec and optimizer, with its traced hyperparameters."""
    tspec = self.base.spec.train.with_values(
      **{k.split(".")[1]: hp[k] for k in self.varying if k.startswith("train.")}
    )
    return tspec, make_optimizer(tspec, self.base.total_steps, self.base.steps_per_epoch)

  def member_model(self, hp: dict):
    mspec = self.base.spec.model.with_values(
      **{k.split(".")[1]: hp[k] for k in self.varying if k.startswith("model.")}
    )
    if mspec.cell_options["implementation"] == "cudnn":
      # The members run under vmap (lax.map in chunks), and cuDNN's kernel has no batching
      # rule: the population takes the path "auto" picks (nn/cudnn.py).
      cudnn.warn_fallback("a population's vmap over members is not supported", "auto")
      cell = {**mspec.cell_options, "implementation": "auto"}
      mspec = mspec.with_values(cell=tuple(cell.items()))
    return self.base.model.clone(spec=mspec)

  def chunk(self) -> int:
    """Members per `lax.map` iteration on a device (see the module docstring)."""
    if population_chunk is not None:
      return population_chunk
    if self.mesh.devices.flat[0].platform == "cpu":
      return 1
    return self.size // self.mesh.devices.size

  def _per_device(self, fn, n_in: int):
    """`fn(*member_args)` over each device's members, `chunk()` at a time (`lax.map`)."""
    chunk = self.chunk()

    def local(*args):
      # One member per iteration is a plain scan: `batch_size=1` would vmap `fn` over a
      # chunk of one, and under vmap the `lax.cond` that skips a frozen member becomes a
      # select that computes both branches (a frozen member cost a full step).
      if chunk == 1:
        return jax.lax.map(lambda a: fn(*a), args)
      return jax.lax.map(lambda a: fn(*a), args, batch_size=chunk)

    return jax.shard_map(
      local, mesh=self.mesh, in_specs=(P("pop"),) * n_in, out_specs=P("pop"), check_vma=False
    )

  def init(self) -> Any:
    """Every member's initial state. Made one by one by a single compiled init (the
    optimizer state's structure does not depend on the hyperparameters) and stacked: that
    compiles in half the time of the init mapped over the member axis."""
    init = jax.jit(lambda seed: self.base.init_with(seed, self.base.tx))
    return self.stack([init(s.spec.seed) for s in self.setups])

  def make_step(self):
    def member(state, hp, seed, inputs, y, active):
      tspec, tx = self.member_tx(hp)
      step = train_step_fn(self.member_model(hp), tx, tspec, seed)

      def frozen(_):
        zero = jnp.zeros((), jnp.float32)
        off = jnp.zeros((), bool)
        return state, {"loss": zero, "total_loss": zero, "grad_norm": zero, "nonfinite": off}

      return jax.lax.cond(active, lambda _: step(state, inputs, y), frozen, None)

    return jax.jit(self._per_device(member, 6), donate_argnums=0)

  def make_predict(self):
    model = self.base.model

    def member(params, inputs, active):
      apply = lambda: model.apply({"params": params}, **inputs, deterministic=True)
      shape = jax.eval_shape(apply)
      # A stopped member's validation forecast is not read: skip it (see `_per_device`).
      return jax.lax.cond(active, apply, lambda: jnp.zeros(shape.shape, shape.dtype))

    fn = self._per_device(member, 3)
    return jax.jit(fn)

  def stack(self, trees: list[Any]) -> Any:
    trees = trees + [trees[0]] * (self.size - len(trees))
    return jax.device_put(
      jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *trees), self.sharding
    )

  def batch(self, step: int, active: list[bool]) -> tuple[dict, np.ndarray]:
    """Every member's `(inputs, y)` of step `step`, stacked on the host; a stopped member
    (not `active`, it skips the step) gets a copy of another's instead of its own."""
    first = active.index(True) if any(active) else 0
    own = {k: s.host_batch(step) for k, s in enumerate(self.setups) if active[k] or k == first}
    parts = [own.get(k, own[first]) for k in range(self.size)]
    inputs = {k: np.stack([p[0][k] for p in parts]) for k in parts[0][0]}
    return inputs, np.stack([p[1] for p in parts])

  def flags(self, members: list[bool]) -> np.ndarray:
    """Per-member flags padded to the population's size (a padding member is never on)."""
    return np.array(members + [False] * (self.size - len(members)))

  def predict(self, fn, params: Any, starts: np.ndarray, active: list[bool]) -> np.ndarray:
    """Scaled predictions of the `active` members, `(P, N, horizon, targets)` (zeros for
    the others)."""
    data, bs = self.base.data, self.base.spec.train.eval_batch_size
    positions, mask = windows.eval_batches(len(starts), bs)
    on = jax.device_put(self.flags(active), self.sharding)
    out = []
    for pos, real in zip(positions, mask):
      inputs = windows.model_inputs(data, starts[pos])
      stacked = {k: np.broadcast_to(v, (self.size,) + v.shape) for k, v in inputs.items()}
      out.append(np.asarray(fn(params, jax.device_put(stacked, self.sharding), on))[:, real])
    return np.concatenate(out, axis=1)


def assemble_population(specs: Sequence[RunSpec], devices: list | None = None) -> list[Setup]:
  """One `Setup` per member on one device (the first of `devices`), sharing the prepared
  data (read and scaled once)."""
  if len({group_key(s) for s in specs}) != 1:
    raise InputError("a population's runs must differ only in seed and the member keys")
  first = assemble(specs[0], list(jax.devices() if devices is None else devices)[:1])
  first.abstract_state()  # traced once, shared: every member has the same structure
  first.data.window_index("train")
  setups = [first]
  for spec in specs[1:]:
    setups.append(
      dataclasses.replace(
        first,
        spec=spec,
        model=build_model(spec, first.data),
        tx=make_optimizer(spec.train, first.total_steps, first.steps_per_epoch),
        _abstract=first._abstract,
        _index=first._train_index,
      )
    )
  return setups


def train_population(
  specs: Sequence[RunSpec | Any],
  workdirs: Sequence[str],
  *,
  resume: bool | None = None,
  quiet: bool = True,
  devices: list | None = None,
  force: bool = False,
  stop: StopRequest | None = None,
) -> list[dict]:
  """Trains `specs` (ConfigDicts or RunSpecs of one group, see `groups`) as one population,
  member k in `workdirs[k]`, its members sharded over `devices` (default: all); returns
  each member's final metrics, or `{"error": message}` for a member that failed on its own
  (more non-finite steps than `train.max_nonfinite_steps`: it stops, as its single run
  would, and the others go on).

  `stop`: the stop request to obey (one shared by the populations a runner trains in
  threads); by default SIGTERM/SIGINT, when called from the main thread."""
  specs = [s if isinstance(s, RunSpec) else config_lib.to_spec(s) for s in specs]
  specs = [workdir_lib.with_absolute_data_path(s) for s in specs]
  if len(specs) != len(workdirs) or not specs:
    raise InputError("train_population needs one workdir per run")
  if len({os.path.abspath(w) for w in workdirs}) != len(workdirs):
    raise InputError("two members of a population share a workdir")
  if jax.process_count() > 1:
    raise InputError("populations run in one process (members shard over its devices)")
  for w in workdirs:
    workdir_lib.fail_if_busy(w)
  setups = assemble_population(specs, devices)
  data_now = workdir_lib.fingerprint(io.data_file(specs[0].data.path))
  claims: list[Any] = []
  try:
    # All members restart from the oldest of their newest checkpoints (0: a member has
    # none, all start afresh).
    common = min(_checkpoint_step(w) for w in workdirs)
    restored = []
    for setup, w in zip(setups, workdirs):
      claim, r = claim_workdir(setup, w, data_now, resume=resume, force=force, max_step=common)
      claims.append(claim)
      restored.append(r)
    got = {0 if r is None else r[0].step for r in restored}
    if len(got) > 1:  # a member's step at `common` is damaged: no step all members share
      raise InputError(
        f"the members' checkpoints are at different steps {sorted(got)}; resume them one by "
        "one with flaxlstm train, or use new workdirs"
      )
  except BaseException:
    for claim in claims:
      if claim is not None:
        claim.abandon()
    raise
  try:
    return _train(
      setups, list(workdirs), restored, data_now, devices=devices, quiet=quiet, stop=stop
    )
  finally:
    for claim in claims:
      if claim is not None:
        claim.keep()


def _checkpoint_step(workdir: str) -> int:
  """The step of the newest checkpoint in a run's `workdir`; 0 if it has none."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return 0
  with Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True) as ckpts:
    loop = ckpts.latest_loop()
  return 0 if loop is None else loop.step


def _train(
  setups: list[Setup],
  workdirs: list[str],
  restored: list,
  data_now: dict,
  *,
  devices,
  quiet,
  stop: StopRequest | None,
) -> list[dict]:
  pop = _Population(setups, _pop_mesh(devices))
  base = pop.base
  n = len(setups)
  with contextlib.ExitStack() as stack:
    reporters, ckpts, evaluators, logs = [], [], [], []
    loops = [LoopState() if r is None else r[0] for r in restored]
    progress = closing(stack, Progress(base.total_steps, enabled=not quiet, desc=f"train x{n}"))
    single_predict = make_predict_fn(base.model)
    for setup, w, loop in zip(setups, workdirs, loops):
      reporter = closing(stack, Reporter(w))
      reporter.truncate_after(loop.step)
      reporter.write_config(config_lib.to_config(setup.spec), {"data": data_now})
      setup.data.save_scalers(os.path.join(w, "scalers.json"))
      own = closing(stack, Checkpoints(os.path.join(w, "checkpoints"), setup.spec.train.keep_best))
      own.drop_after(loop.step)  # a member that was ahead steps back with the others
      ck = _QueuedSaves(own)
      reporters.append(reporter)
      ckpts.append(ck)
      evaluators.append(evaluation.Evaluator(setup, single_predict, reporter, ck))  # type: ignore[arg-type]
      logs.append(TrainLog(setup, reporter, _Silent(), evaluators[-1].every))  # type: ignore[arg-type]
    if restored[0] is None:
      state = pop.init()
    else:
      state = pop.stack([r[1] for r in restored])
    saver = closing(stack, _Saver(ckpts))
    step_fn, predict_fn = pop.make_step(), pop.make_predict()
    evaluate_every = evaluators[0]
    val_starts = evaluate_every.starts
    if stop is None:
      stop = stack.enter_context(stop_signals())
    step = loops[0].step
    progress.update(step)
    t0 = time.perf_counter()

    failed: dict[int, str] = {}  # members stopped by their own error (non-finite losses)

    def active() -> list[bool]:
      return [
        not lp.stopped_early and lp.step < base.total_steps and k not in failed
        for k, lp in enumerate(loops)
      ]

    def save(members: list[int], host: Any) -> None:
      nonlocal t0
      elapsed, t0 = time.perf_counter() - t0, time.perf_counter()
      for k in members:
        loops[k].wall_time_s += elapsed
        ckpts[k].save(loops[k], _member(host, k))

    def record_train(metrics: Any, on: list[bool]) -> None:
      """Logs one step's train metrics of the members that ran it (`on`)."""
      host_m = jax.device_get(metrics)
      for k in range(n):
        if on[k] and k not in failed:
          loops[k].step += 1
          try:
            logs[k](loops[k], {key: v[k] for key, v in host_m.items()})
          except TrainingError as e:  # this member fails as its single run would; not the rest
            failed[k] = str(e)
            log.warning(f"{workdirs[k]}: {e}")
      progress.update(1)

    # One step runs ahead of the host: step t+1 is dispatched before step t's metrics are
    # read, so the host's work of a step (the members' logs, the next batch) overlaps the
    # devices' instead of leaving them idle. A member that fails at step t (non-finite
    # losses) has run step t+1 too; it is neither recorded nor saved again. An evaluation,
    # a stop and the last step read everything first.
    pending = None
    batch = pop.batch(step, active())
    while any(active()):
      on = active()
      state, metrics = step_fn(
        state, pop.hp, pop.seeds, *jax.device_put(batch + (pop.flags(on),), pop.sharding)
      )
      step += 1
      if pending is not None:
        record_train(*pending)
      if step < base.total_steps:
        batch = pop.batch(step, active())
      pending = (metrics, on)
      evaluated = evaluate_every.due(step)
      stopping = stop.agreed()
      if evaluated or stopping:
        record_train(*pending)
        pending = None
        live = [k for k in range(n) if on[k] and k not in failed]
        host = jax.device_get(state)
        if evaluated:
          pred = pop.predict(predict_fn, state.params, val_starts, [k in live for k in range(n)])
          for k in live:
            evaluators[k].record(loops[k], _member(host.params, k), pred[k])
        save(live, host)
        saver.submit()
      if stopping:
        saver.flush()
        raise Preempted(stop.signum, step)
    if pending is not None:  # the last active member failed at the step before
      record_train(*pending)
    progress.close()
    saver.flush()  # the best checkpoints are read back next
    host = jax.device_get(state)
    shared = baselines.baseline_metrics(base.data, base.spec.data.seasonal_period)
    out = []
    for k, setup in enumerate(setups):
      if k in failed:
        out.append({"error": failed[k]})
        continue
      params = evaluators[k].final_params(_member(host.params, k))
      metrics, test_pred = evaluation.final_metrics(setup, params, single_predict, shared)
      metrics.update(evaluation.summary(setup, loops[k], params), data=data_now)
      reporters[k].write_json("metrics.json", metrics)
      evaluation.write_plots(reporters[k], setup, test_pred)
      out.append(metrics)
    return out


class _QueuedSaves:
  """A member's `Checkpoints` whose saves are queued for a `_Saver`; reads pass through."""

  def __init__(self, ckpts: Checkpoints):
    self.ckpts = ckpts
    self.queued: list[Callable[[], None]] = []

  def save(self, loop: LoopState, state: Any) -> None:
    # A copy: the loop goes on counting while the save waits its turn.
    self.queued.append(functools.partial(self.ckpts.save, dataclasses.replace(loop), state))

  def save_best(self, step: int, params: Any, val_loss: float) -> None:
    self.queued.append(functools.partial(self.ckpts.save_best, step, params, val_loss))

  def __getattr__(self, name: str) -> Any:
    return getattr(self.ckpts, name)


class _Saver:
  """Writes the members' checkpoints off the training loop's thread.

  Saving is most of what an evaluation costs a population: orbax's writes, fsyncs and the
  integrity digest take about 40 ms per save, two per member and evaluation (12 tiny
  members on 2 CPU cores, an evaluation every 50 steps: 12.5 s of a 32 s run). `submit`
  hands each member's queued saves (best, then latest) to a thread pool as one job, so they
  are written while the devices train on; it first waits for the previous evaluation's
  jobs, so a member's saves stay in order and one evaluation's at most are in flight.
  `flush` waits for them all (before a stop, and before the best params are read back) and
  raises a failed save's error in the loop's thread.
  """

  def __init__(self, members: list[_QueuedSaves]):
    self.members = members
    self.pending: list[concurrent.futures.Future] = []
    workers = max(1, min(len(members), os.cpu_count() or 1, 8))
    self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="flaxlstm-save")

  def submit(self) -> None:
    self.flush()
    for m in self.members:
      jobs, m.queued = m.queued, []
      if jobs:
        self.pending.append(self.pool.submit(_run_in_order, jobs))

  def flush(self) -> None:
    pending, self.pending = self.pending, []
    for job in pending:
      job.result()

  def close(self) -> None:
    try:
      self.flush()
    finally:
      self.pool.shutdown()


def _run_in_order(jobs: list[Callable[[], None]]) -> None:
  for job in jobs:
    job()


def _member(tree: Any, k: int) -> Any:
  return jax.tree.map(lambda a: a[k], tree)


class _Silent:
  """A progress bar that shows nothing: the population has one bar for all members."""

  def update(self, *args, **kwargs) -> None:
    del args, kwargs
