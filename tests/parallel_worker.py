"""Runs multi-device scenarios in a fresh process with 8 fake CPU devices.

Called by tests/test_parallel.py (the device count must be fixed before JAX starts, so
these cannot run inside the pytest process). Prints one JSON object.

  python tests/parallel_worker.py layouts EXPERIMENT.py
  python tests/parallel_worker.py elastic EXPERIMENT.py WORKDIR
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from flaxlstm import config as config_lib  # noqa: E402
from flaxlstm import train as train_lib  # noqa: E402
from flaxlstm.train.assembly import assemble  # noqa: E402
from flaxlstm.train.step import make_train_step  # noqa: E402

LAYOUTS = {  # name -> (devices, mesh.data, mesh.fsdp, mesh.model)
  "single": (1, 1, 1, 1),
  "data8": (8, 8, 1, 1),
  "fsdp8": (8, 1, 8, 1),
  "data4_model2": (8, 4, 1, 2),
  "fsdp4_model2": (8, 1, 4, 2),
}


def _train_steps(exp: str, layout: str, steps: int = 6):
  n, data, fsdp, model = LAYOUTS[layout]
  config = config_lib.load_config(
    exp,
    [
      f"mesh.data={data}",
      f"mesh.fsdp={fsdp}",
      f"mesh.model={model}",
      "model.dropout=0.2",
      "model.recurrent_dropout=0.2",
      "data.augment.jitter=0.05",
    ],
  )
  spec = config_lib.to_spec(config)
  run = assemble(spec, jax.devices()[:n])
  state = run.init_state()
  step = make_train_step(run.model, run.tx, spec.train, spec.seed, run.mesh, run.state_sharding())
  losses = []
  for i in range(steps):
    state, m = step(state, *run.train_batch(i))
    losses.append(float(m["loss"]))
  # Bytes each device holds for params + optimizer state, vs the whole state.
  per_device = {}
  total = 0
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    total += leaf.nbytes
    for shard in leaf.addressable_shards:
      per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
  params = [np.asarray(p).ravel().tolist() for p in jax.tree.leaves(state.params)]
  return {
    "losses": losses,
    "params": params,
    "total_bytes": total,
    "max_device_bytes": max(per_device.values()),
    "devices": len(per_device),
  }


def layouts(exp: str):
  return {name: _train_steps(exp, name) for name in LAYOUTS}


def elastic(exp: str, workdir: str):
  """Train 10 steps on 8 devices (FSDP), then resume on 2 (data parallel) up to 20."""
  first = config_lib.load_config(exp, ["mesh.data=1", "mesh.fsdp=-1", "train.max_steps=10"])
  train_lib.train_and_evaluate(first, workdir, devices=jax.devices())
  second = config_lib.load_config(exp, ["mesh.data=1", "mesh.fsdp=-1", "train.max_steps=20"])
  resumed = train_lib.train_and_evaluate(second, workdir, devices=jax.devices()[:2])
  straight = train_lib.train_and_evaluate(second, workdir + "_straight", devices=jax.devices())
  return {"resumed": resumed, "straight": straight}


if __name__ == "__main__":
  mode, args = sys.argv[1], sys.argv[2:]
  print(json.dumps(layouts(*args) if mode == "layouts" else elastic(*args)))
