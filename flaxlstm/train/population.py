"""Populations: many runs of one structure trained as one compiled program.

`train_population(specs, workdirs)` trains P runs that differ only in numbers, the seed
and the continuous hyperparameters (`MEMBER_KEYS`), as one jitted step over a leading member
axis. Each member keeps its own early stopping (a stopped member is frozen, its best params
kept) and writes its own standard workdir (`config.json`, `metrics.json`, `scalers.json`,
checkpoints, plots): a member's workdir is indistinguishable from the single run's, and
`flaxlstm evaluate`/`predict`, or a `flaxlstm train` resume, read it as one. The members
train in the one training loop (loop.py: `run_loop`, a session per member) driven by a
`PopulationEngine`. On CPU member k's numbers are those of `train_and_evaluate(specs[k])`
to the bit, early-stopping step included (tests/train/test_population.py; the dropout
sweep's runs, BENCHMARKS.md): each member runs its single run's program. Under `vmap`
(accelerators, below) they agree to float tolerance.

Runs whose structure differs (shapes, layer sizes, lookback, which optional terms are on)
form separate populations: `groups(specs)`. Zero vs non-zero of a member hyperparameter is
structure: a dropout mask that is drawn or not, a penalty term that is there or not, and so
a member with dropout 0 draws the same random numbers as its single run.

How the step runs the members: `jax.shard_map` gives each device its members (the member
axis is sharded over a 1-D `("pop",)` mesh); on each device `lax.map` runs them one after
another, each a `lax.cond` that skips frozen members (a plain scan, one member per
iteration: under `vmap`, even over a chunk of one, the cond would become a select that
computes a frozen member's step too). On CPU one member at a time is the fastest layout
(experiments/benchmarks/population_step.py, BENCHMARKS.md "Populations"): a member's
fused-LSTM residuals stay in cache between its forward and backward pass, which they
cannot for P members at once under `vmap` (fresh memory, and page faults, for P times the
activations on every step). On an accelerator the opposite holds: a member of the default
experiment is far too small to fill a GPU and its step is a chain of small kernels, so a
device's members run all at once, vmapped (the fused kernel's population rule,
nn/kernels/lstm_fused.py), and a frozen member is masked there, not skipped. The `chunk`
argument overrides that choice (benchmarks).

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
import dataclasses
import functools
import json
import logging
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxlstm import config as config_lib
from flaxlstm.config.specs import RunSpec
from flaxlstm.data import io, windows
from flaxlstm.errors import InputError
from flaxlstm.forecast import baselines
from flaxlstm.nn import kernels
from flaxlstm.train import workdir as workdir_lib
from flaxlstm.train.assembly import Setup, assemble, build_model
from flaxlstm.train.checkpoint import Checkpoints, LoopState
from flaxlstm.train.loop import Engine, claim_workdir, run_loop
from flaxlstm.train.optim import make_optimizer
from flaxlstm.train.preemption import StopRequest
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
  """The members' shared data, model and compiled functions (one structure).

  `chunk`: members per `lax.map` iteration on a device; None: 1 on CPU, all of a device's
  members elsewhere (the module docstring)."""

  def __init__(self, setups: list[Setup], mesh: Mesh, chunk: int | None = None):
    self.setups, self.mesh, self._chunk = setups, mesh, chunk
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
    return self.base.model.clone(spec=mspec)

  def chunk(self) -> int:
    """Members per `lax.map` iteration on a device (see the module docstring)."""
    if self._chunk is not None:
      return self._chunk
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

      # Traced as members of a population: a kernel with no batching rule (cuDNN) is not
      # picked (nn/kernels: `select`).
      with kernels.members_batched():
        return jax.lax.cond(active, lambda _: step(state, inputs, y), frozen, None)

    return jax.jit(self._per_device(member, 6), donate_argnums=0)

  def make_predict(self):
    model = self.base.model

    def member(params, inputs, active):
      apply = lambda: model.apply({"params": params}, **inputs, deterministic=True)
      with kernels.members_batched():
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
    # What `assemble` fitted to the data (`fit_batch`, `fit_season`), which every member
    # shares: their batch sizes and seasons are equal (`group_key`).
    spec = dataclasses.replace(
      spec,
      train=dataclasses.replace(spec.train, batch_size=first.spec.train.batch_size),
      data=dataclasses.replace(spec.data, seasonal_period=first.spec.data.seasonal_period),
    )
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
  chunk: int | None = None,
) -> list[dict]:
  """Trains `specs` (ConfigDicts or RunSpecs of one group, see `groups`) as one population,
  member k in `workdirs[k]`, its members sharded over `devices` (default: all); returns
  each member's final metrics, or `{"error": message}` for a member that failed on its own
  (more non-finite steps than `train.max_nonfinite_steps`: it stops, as its single run
  would, and the others go on).

  `stop`: the stop request to obey (one shared by the populations a runner trains in
  threads); by default SIGTERM/SIGINT, when called from the main thread. `chunk`: members
  per `lax.map` iteration on a device (default: the module docstring's choice)."""
  specs = [
    config_lib.validate(s) if isinstance(s, RunSpec) else config_lib.to_spec(s) for s in specs
  ]
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
    engine = PopulationEngine(_Population(setups, _pop_mesh(devices), chunk))
    return run_loop(
      setups, list(workdirs), restored, data_now, engine, quiet=quiet, stop=stop, step_back=True
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


class PopulationEngine(Engine):
  """The members' state stacked on a member axis, stepped by one compiled program
  (`_Population`); checkpoints written off the loop's thread (`_Saver`)."""

  isolate_failures = True

  def __init__(self, pop: _Population):
    self.pop = pop
    self.n = len(pop.setups)
    self.predict_fn = make_predict_fn(pop.base.model)  # a member's own predictions
    self.step_fn, self.pop_predict = pop.make_step(), pop.make_predict()
    self.queued: list[_QueuedSaves] = []  # filled by `wrap_ckpts`, one per member
    self.saver = _Saver(self.queued, self.n)
    self._batch: tuple[int, Any] | None = None
    self._host: Any = None
    self._baselines: dict | None = None

  def wrap_ckpts(self, ckpts: Checkpoints) -> Any:
    queued = _QueuedSaves(ckpts)
    self.queued.append(queued)
    return queued

  def init_state(self, restored):
    if restored[0] is None:
      return self.pop.init()
    return self.pop.stack([r[1] for r in restored])

  def prefetch(self, step, active):
    self._batch = (step, self.pop.batch(step, active))

  def step(self, state, step, active):
    pop = self.pop
    if self._batch is None or self._batch[0] != step:
      self.prefetch(step, active)
    assert self._batch is not None
    batch = self._batch[1]
    return self.step_fn(
      state, pop.hp, pop.seeds, *jax.device_put(batch + (pop.flags(active),), pop.sharding)
    )

  def host_metrics(self, metrics):
    host = jax.device_get(metrics)
    return [{key: v[k] for key, v in host.items()} for k in range(self.n)]

  def checkpoint(self, state, sessions, live, evaluated, clock):
    host = jax.device_get(state)  # one copy for the validations and the saves
    if evaluated and live:
      on = [k in live for k in range(self.n)]
      starts = sessions[live[0]].evaluator.starts  # the same windows for every member
      pred = self.pop.predict(self.pop_predict, state.params, starts, on)
      for k in live:
        sessions[k].evaluator.record(sessions[k].loop, _member(host.params, k), pred[k])
    elapsed = clock()
    for k in live:
      sessions[k].loop.wall_time_s += elapsed
      sessions[k].ckpts.save(sessions[k].loop, _member(host, k))
    self.saver.submit()

  def flush(self):
    self.saver.flush()

  def close(self):
    self.saver.close()

  def final_params(self, state, k):
    if self._host is None:
      self._host = jax.device_get(state)
    return _member(self._host.params, k)

  def baselines(self):
    base = self.pop.base
    if self._baselines is None:  # the members share the data: computed once
      self._baselines = baselines.baseline_metrics(base.data, base.spec.data.seasonal_period)
    return self._baselines


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
  integrity digest of two saves per member and evaluation took over a third of a tiny
  population's run on the loop's thread (BENCHMARKS.md, "Figures that lived in the
  code's docstrings"). `submit`
  hands each member's queued saves (best, then latest) to a thread pool as one job, so they
  are written while the devices train on; it first waits for the previous evaluation's
  jobs, so a member's saves stay in order and one evaluation's at most are in flight.
  `flush` waits for them all (before a stop, and before the best params are read back) and
  raises a failed save's error in the loop's thread.
  """

  def __init__(self, members: list[_QueuedSaves], n_members: int):
    self.members = members
    self.pending: list[concurrent.futures.Future] = []
    workers = max(1, min(n_members, os.cpu_count() or 1, 8))
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
