"""Per-member cost of a population's train step vs one model's, and the fused kernel under
`jax.vmap` (issue: populations).

Two measurements, medians of interleaved rounds in one process (so drifts of a shared
machine hit every variant alike):

* `--shape ett`: the default experiment's whole train step (LSTM 64, batch 64, T 96, one
  feature, dense 24, AdamW with clipping), one model (`make_train_step`) vs a population of
  P members (train/population.py) run one member after another (`chunk=1`, the CPU
  default), all P at once under vmap with the fused kernel's population rule, and all at
  once with JAX's default batching of the fused kernel (the rule off: the kernel variant
  `FusedLSTM(population_rule=False)`, registered here as "fused_jax_batching" and chosen
  by `implementation=`).
* `--shape frozen`: what members that have stopped early cost. One step of a population of
  P members of the default experiment (the CPU layout, one member at a time) with every
  member training, with one, and with none, against one model's step; ms per step, not per
  member. A stopped member is skipped by a `lax.cond`, so it should cost next to nothing.
* `--shape seed`: the seed model's LSTM stack (512 -> 256, batch 32, T 64, 8 features),
  gradient of one model vs `jax.vmap` over P members' parameters and inputs (rule on and
  off) and `lax.map` over the members.

Usage:
  python experiments/benchmarks/population_step.py --shape ett,seed --members 12
  python experiments/benchmarks/population_step.py --shape frozen
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def _timed(fn, args, rounds):
  out = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out.append(time.perf_counter() - t0)
  return out


def _interleave(variants: dict, rounds: int, reps: int) -> dict:
  times: dict[str, list[float]] = {k: [] for k in variants}
  for fn, args, _ in variants.values():
    jax.block_until_ready(fn(*args))  # compile
  for _ in range(rounds):
    for name, (fn, args, _) in variants.items():
      times[name] += _timed(fn, args, reps)
  return {k: statistics.median(v) * 1e3 / variants[k][2] for k, v in times.items()}


# The fused LSTM kernel with JAX's default batching under vmap instead of its population
# rule: a variant registered under its own name, which a layer or config picks by name.
PLAIN_VMAP = "fused_jax_batching"


def _register_plain_vmap() -> None:
  from flaxlstm.nn import kernels
  from flaxlstm.nn.kernels import lstm_fused

  if PLAIN_VMAP not in kernels.KERNELS:
    kernels.register(lstm_fused.FusedLSTM(PLAIN_VMAP, population_rule=False))


def _default_experiment(members: int, implementation: str = "auto"):
  """`members` seeds of the default experiment as population setups, and the first one's
  single-model train step and first batch."""
  from flaxlstm import config as config_lib
  from flaxlstm.train import population
  from flaxlstm.train.step import make_train_step

  specs = [
    config_lib.to_spec(
      config_lib.load_config("ett", [f"seed={k}", f"model.cell.implementation={implementation}"])
    )
    for k in range(members)
  ]
  setups = population.assemble_population(specs)
  one = setups[0]
  step1 = make_train_step(
    one.model, one.tx, one.spec.train, one.spec.seed, one.mesh, one.state_sharding()
  )
  return setups, step1, one.train_batch(0)


def ett(members: int, rounds: int) -> dict:
  from flaxlstm.train import population

  _register_plain_vmap()
  setups, step1, batch1 = _default_experiment(members)
  plain_setups, _, _ = _default_experiment(members, PLAIN_VMAP)
  state1, _ = step1(setups[0].init_state(), *batch1)

  def single(state):
    return step1(state, *batch1)

  variants = {}
  holder = {"single": state1}
  for name, chunk, members_setups in (
    ("population, one member at a time", 1, setups),
    (f"population, {members} at once (vmap, fused rule)", members, setups),
    (f"population, {members} at once (vmap, JAX default batching)", members, plain_setups),
  ):
    mesh = population._pop_mesh(jax.devices()[:1])
    pop = population._Population(members_setups, mesh, chunk=chunk)
    step = pop.make_step()
    state = pop.init()
    inputs, y = jax.device_put(pop.batch(0, [True] * len(setups)), pop.sharding)
    flags = jax.device_put(np.ones(pop.size, bool), pop.sharding)
    state, m = step(state, pop.hp, pop.seeds, inputs, y, flags)  # compiles with this chunk
    holder[name] = state

    def run(name=name, step=step, pop=pop, inputs=inputs, y=y, flags=flags):
      holder[name], m = step(holder[name], pop.hp, pop.seeds, inputs, y, flags)
      return m

    variants[name] = (run, (), members)

  def run_single():
    holder["single"], m = single(holder["single"])
    return m

  variants = {"one model": (run_single, (), 1)} | variants
  return _interleave(variants, rounds, 5)


def seed(members: int, rounds: int) -> dict:
  from flaxlstm.nn.stacks import StackedLSTM

  _register_plain_vmap()
  b, t, d = 32, 64, 8
  model = StackedLSTM(features=(512, 256))
  key = jax.random.key(0)
  x1 = jax.random.normal(key, (b, t, d))
  xs = jax.random.normal(key, (members, b, t, d))
  p1 = model.init(key, x1)["params"]
  ps = jax.vmap(lambda k: model.init(k, x1)["params"])(jax.random.split(key, members))

  def grad_of(model):
    loss = lambda p, x: jnp.square(model.apply({"params": p}, x)[:, -1]).sum()
    return jax.grad(loss)

  grad = grad_of(model)
  variants = {"one model": (jax.jit(grad), (p1, x1), 1)}
  variants["lax.map over members"] = (
    jax.jit(lambda p, x: jax.lax.map(lambda a: grad(*a), (p, x))),
    (ps, xs),
    members,
  )
  for name, implementation in (
    ("vmap, fused rule", "fused"),
    ("vmap, JAX default batching", PLAIN_VMAP),
  ):
    g = grad_of(model.clone(implementation=implementation))
    variants[name] = (jax.jit(jax.vmap(g)).lower(ps, xs).compile(), (ps, xs), members)
  return _interleave(variants, rounds, 1)


def frozen(members: int, rounds: int) -> dict:
  from flaxlstm.train import population

  setups, step1, batch1 = _default_experiment(members)
  pop = population._Population(setups, population._pop_mesh(jax.devices()[:1]))
  step = pop.make_step()
  inputs, y = jax.device_put(pop.batch(0, [True] * members), pop.sharding)
  holder = {"one model": setups[0].init_state()}
  variants = {}

  def run_single():
    holder["one model"], m = step1(holder["one model"], *batch1)
    return m

  variants["one model"] = (run_single, (), 1)
  for name, training in (
    (f"{members} members, all training", members),
    (f"{members} members, one training", 1),
    (f"{members} members, none training", 0),
  ):
    holder[name] = pop.init()
    flags = jax.device_put(pop.flags([k < training for k in range(members)]), pop.sharding)

    def run(name=name, flags=flags):
      holder[name], m = step(holder[name], pop.hp, pop.seeds, inputs, y, flags)
      return m

    variants[name] = (run, (), 1)
  return _interleave(variants, rounds, 10)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--shape", default="ett,seed")
  ap.add_argument("--members", type=int, default=12)
  ap.add_argument("--rounds", type=int, default=5)
  args = ap.parse_args()
  for shape in args.shape.split(","):
    ms = {"ett": ett, "seed": seed, "frozen": frozen}[shape](args.members, args.rounds)
    base = ms["one model"]
    unit = "ms per step" if shape == "frozen" else "ms per member per step"
    print(f"\n{shape} shape, P={args.members} ({unit}; ratio to one model)")
    for name, v in ms.items():
      print(f"  {name:60s} {v:8.2f} ms  {v / base:5.2f}x")
    print(json.dumps({"shape": shape, "members": args.members, "ms_per_member": ms}))


if __name__ == "__main__":
  main()
