"""Devices and hosts: the mesh, how arrays are sharded over it, multi-host start-up.

One `jax.jit` train step serves every layout; what changes between pure data parallelism,
FSDP and gate-sharded ("model") LSTMs is only the `NamedSharding` of each array, which is
data computed here (`state_shardings`, `batch_sharding`), not code.

Mesh axes:
  data   replicas of the model, each on a slice of the global batch
  fsdp   also a slice of the batch, but params and optimizer state are split over it
         (ZeRO-3/FSDP style: each device holds 1/N, XLA all-gathers them when needed)
  model  the 4H gate axis of the LSTM kernels split across devices (very wide layers)
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxlstm.errors import InputError

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")
# Parameters whose last axis is the fused 4H gate axis (see nn/cells/lstm.py).
_GATE_AXIS_PARAMS = (
  "input_kernel",
  "recurrent_kernel",
  "bias",
  "input_ln_scale",
  "recurrent_ln_scale",
)


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int, int]:
  """Resolves `mesh.{data,fsdp,model}` (one of them may be -1: all remaining devices)."""
  sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.model)]
  if sizes.count(-1) > 1:
    raise InputError("at most one of mesh.data, mesh.fsdp, mesh.model may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise InputError(f"mesh: {n_devices} devices do not divide into {dict(zip(AXES, sizes))}")
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise InputError(
      f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
      f"but {n_devices} are available"
    )
  if min(sizes) > 1:
    # Measured with jax 0.10.2 on CPU: with all three axes split, XLA's partitioner gives
    # LSTM gradients that differ from one device's by ~10% (forward pass correct), while
    # every two-axis layout matches. Refuse rather than train on wrong gradients.
    raise InputError(
      f"mesh {dict(zip(AXES, sizes))}: splitting data, fsdp and model all "
      "at once is not supported (wrong gradients from XLA); use at most two"
    )
  data, fsdp, model = sizes
  return data, fsdp, model


def make_mesh(mesh_cfg, devices: list | None = None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  # jax.devices() is ordered by process, so each host's devices form a contiguous block
  # of the batch axes: a host's slice of the global batch is contiguous too.
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def batch_size_per_step(mesh: Mesh) -> int:
  """How many ways the batch axis is split (the global batch must be a multiple)."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) axis split over `data` x `fsdp`, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _leaf_spec(path, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Partition spec of one parameter-shaped array (params, Adam moments alike)."""
  spec: list[Any] = [None] * len(shape)
  name = str(getattr(path[-1], "key", getattr(path[-1], "name", ""))) if path else ""
  n_model, n_fsdp = mesh.shape["model"], mesh.shape["fsdp"]
  if n_model > 1 and name in _GATE_AXIS_PARAMS and shape and shape[-1] % n_model == 0:
    spec[-1] = "model"
  if n_fsdp > 1:
    # Split the largest free axis that divides evenly; small leftovers stay replicated.
    free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % n_fsdp == 0]
    if free:
      spec[max(free, key=lambda i: shape[i])] = "fsdp"
  return P(*spec)


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
  """A `NamedSharding` for every leaf of a train state (params, optimizer state, step).

  Optimizer moments mirror the parameter tree, so the same name/shape rule shards a
  parameter and its Adam moments identically.
  """
  return jax.tree_util.tree_map_with_path(
    lambda path, a: NamedSharding(mesh, _leaf_spec(path, tuple(np.shape(a)), mesh)), abstract_state
  )


def local_batch_slice(mesh: Mesh, global_batch: int) -> slice:
  """The rows of a global batch that this process's devices hold (contiguous)."""
  sharding = batch_sharding(mesh, 1)
  rows = [
    idx[0]
    for idx in sharding.addressable_devices_indices_map((global_batch,)).values()
    if idx is not None
  ]
  lo = min(r.start or 0 for r in rows)
  hi = max(global_batch if r.stop is None else r.stop for r in rows)
  return slice(lo, hi)


def host_to_global(mesh: Mesh, local: np.ndarray, global_batch: int) -> jax.Array:
  """Assembles the global batch array from this process's rows (`local_batch_slice`)."""
  sharding = batch_sharding(mesh, local.ndim)
  return jax.make_array_from_process_local_data(
    sharding, local, (global_batch,) + tuple(local.shape[1:])
  )


# ---- multi-host ------------------------------------------------------------------------------
def _env_says_multiprocess() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  # TPU VM pod slices: every worker sees the list of worker hostnames.
  return len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1


def initialize_distributed(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_devices: int | None = None,
  force: bool = False,
) -> bool:
  """Starts JAX's multi-controller runtime when this is one process of several.

  With explicit `coordinator`/`num_processes`/`process_id` (what `launch/local.sh` passes)
  they are used; otherwise (`force`, or a SLURM job with several tasks) JAX detects the
  SLURM or TPU VM cluster itself.
  On CPU, collectives go through gloo and `local_devices` sets the devices per process.
  Returns True if the distributed runtime was started.
  """
  if not force and not _env_says_multiprocess():
    return False
  # Only affects JAX's CPU backend (harmless on GPU/TPU hosts): CPU collectives via gloo.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if local_devices:
    jax.config.update("jax_num_cpu_devices", local_devices)
  jax.distributed.initialize(
    coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
  )
  return True
