"""Runs multi-device scenarios in a fresh process with 8 fake CPU devices.

Called by tests/test_parallel.py (the device count must be fixed before JAX starts, so
these cannot run inside the pytest process). Prints one JSON object.

  python tests/parallel_worker.py layouts EXPERIMENT.py
  python tests/parallel_worker.py elastic EXPERIMENT.py WORKDIR
  python tests/parallel_worker.py large EXPERIMENT.py DUMP_DIR
"""

import glob
import importlib.util
import json
import os
import re
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from flaxlstm import config as config_lib  # noqa: E402
from flaxlstm import train as train_lib  # noqa: E402
from flaxlstm.errors import InputError  # noqa: E402
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
      "mesh.fsdp_min_size=0",  # every array FSDP can split is split (1/8 of the state)
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


def _two_steps(exp: str, devices: int, overrides: list[str], compiler_options=None) -> dict:
  """Two train steps of `exp` with `overrides` on the first `devices` devices: the losses,
  the params, their partition specs and the compiled program's text."""
  spec = config_lib.to_spec(config_lib.load_config(exp, overrides))
  run = assemble(spec, jax.devices()[:devices])
  state = run.init_state()
  step = make_train_step(
    run.model, run.tx, spec.train, spec.seed, run.mesh, run.state_sharding(), spec.mesh.gather_dtype
  )
  compiled = step.lower(state, *run.train_batch(0)).compile(compiler_options)
  losses = []
  for i in range(2):
    state, m = compiled(state, *run.train_batch(i))
    losses.append(float(m["loss"]))
  shardings = run.state_sharding().params
  return {
    "losses": losses,
    "params": [np.asarray(p).ravel().tolist() for p in jax.tree.leaves(state.params)],
    "specs": {
      jax.tree_util.keystr(path): str(s.spec)
      for path, s in jax.tree_util.tree_leaves_with_path(shardings)
    },
    "shapes": [list(p.shape) for p in jax.tree.leaves(state.params)],
    "hlo": compiled.as_text(),
  }


def _all_gathers(hlo: str) -> list[tuple[str, list[int]]]:
  """(dtype, dims) of every all-gather in an HLO module's text."""
  return [
    (dtype, [int(d) for d in dims.split(",") if d])
    for dtype, dims in re.findall(r"= (\w+)\[([\d,]*)\]\S* all-gather\(", hlo)
  ]


def large(exp: str, dump: str):
  """FSDP with and without the size threshold and with bfloat16 gathers, against one device
  (an LSTM), and an sLSTM's heads over the model axis (1 x 1 x 8: one head per device) against one
  device, with the collectives in its compiled time loops."""
  # Width 16: one of the widths where XLA's gradients were wrong on 2 x 2 x 2 with the
  # recurrent kernel split over fsdp too (parallel.py, `_whole_over_fsdp`). SGD: an update
  # proportional to the gradient (Adam's first steps divide near-zero gradients by their
  # own size, which turns rounding noise into full-size steps).
  lstm = ["model.hidden_sizes=16,", "train.optimizer=sgd"]
  fsdp = ["mesh.data=1", "mesh.fsdp=8"]
  out = {"single": _two_steps(exp, 1, lstm)}
  out["fsdp"] = _two_steps(exp, 8, lstm + fsdp + ["mesh.fsdp_min_size=0"])
  # 1000 elements: the recurrent kernel (16 x 64) is split, the rest (at most 128) is not.
  out["fsdp_threshold"] = _two_steps(exp, 8, lstm + fsdp + ["mesh.fsdp_min_size=1000"])
  # XLA:CPU runs a bfloat16 collective in float32 (it converts around it late in its
  # pipeline), so the dtype the partitioner gave each all-gather is read from the module
  # dumped right after SPMD partitioning; the compiled text is kept to show the CPU's.
  options = {"xla_dump_to": dump, "xla_dump_hlo_pass_re": "spmd-partitioning"}
  bf16 = ["mesh.fsdp_min_size=0", "mesh.gather_dtype=bfloat16"]
  out["fsdp_bf16"] = _two_steps(exp, 8, lstm + fsdp + bf16, options)
  (partitioned,) = glob.glob(os.path.join(dump, "*train_step*after_spmd-partitioning*"))
  out["fsdp_bf16"]["partitioned_gathers"] = _all_gathers(open(partitioned).read())
  out["fsdp_bf16"]["compiled_gathers"] = _all_gathers(out["fsdp_bf16"]["hlo"])
  # Micro-batches of 4 rows cannot split over 8 devices.
  try:
    assemble(config_lib.to_spec(config_lib.load_config(exp, ["train.grad_accum_steps=4"])))
    out["accum_error"] = ""
  except InputError as e:
    out["accum_error"] = str(e)
  slstm = ["model.encoder=slstm", "model.hidden_sizes=32,", "model.slstm.num_heads=8"]
  slstm += ["train.optimizer=sgd"]
  out["slstm_single"] = _two_steps(exp, 1, slstm)
  out["slstm_heads"] = _two_steps(exp, 8, slstm + ["mesh.data=1", "mesh.model=8"])
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nn", "heads_worker.py")
  heads = importlib.util.spec_from_file_location("heads_worker", path)
  module = importlib.util.module_from_spec(heads)
  heads.loader.exec_module(module)
  bodies, collectives = module.loop_collectives(out["slstm_heads"]["hlo"])
  out["slstm_heads"].update(loop_bodies=bodies, loop_collectives=collectives)
  # data x fsdp x model = 2 x 2 x 2, every parameter split: the xLSTM family (an mLSTM and
  # an sLSTM block), and the LSTM.
  three = ["mesh.data=2", "mesh.fsdp=2", "mesh.model=2", "mesh.fsdp_min_size=0"]
  xlstm = ["model.encoder=xlstm", "model.decoder=dense", "model.hidden_sizes=32"]
  xlstm += ["model.xlstm.num_blocks=2", "model.xlstm.slstm_at=1", "model.xlstm.num_heads=8"]
  xlstm += ["model.xlstm.slstm_num_heads=8", "train.optimizer=sgd"]
  out["xlstm_single"] = _two_steps(exp, 1, xlstm)
  out["xlstm_222"] = _two_steps(exp, 8, xlstm + three)
  out["lstm_222"] = _two_steps(exp, 8, lstm + three)
  for r in out.values():
    if isinstance(r, dict):
      r.pop("hlo")
  return out


if __name__ == "__main__":
  mode, args = sys.argv[1], sys.argv[2:]
  print(json.dumps({"layouts": layouts, "elastic": elastic, "large": large}[mode](*args)))
