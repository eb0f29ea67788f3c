"""Devices and hosts: the mesh, how arrays are sharded over it, multi-host start-up.

One `jax.jit` train step serves every layout; what changes between pure data parallelism,
FSDP and gate-sharded ("model") LSTMs is only the `NamedSharding` of each array, which is
data computed here (`state_shardings`, `batch_sharding`), not code.

Mesh axes:
  data   replicas of the model, each on a slice of the global batch
  fsdp   also a slice of the batch, but params and optimizer state are split over it
         (ZeRO-3/FSDP style: each device holds 1/N, XLA all-gathers them when needed)
  model  the 4H gate axis of the LSTM kernels split across devices (very wide layers); the
         heads of the xLSTM family's head-major kernels (sLSTM recurrence, head-wise maps)

Which axis of a parameter an axis splits follows what the parameter is (`_leaf_spec`): the
LSTM's gate axis is its kernels' last, the sLSTM's heads are its recurrent kernel's first.
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
# Parameters of an LSTM cell whose last axis is the fused 4H gate axis (nn/cells/lstm.py).
_GATE_AXIS_PARAMS = (
  "input_kernel",
  "recurrent_kernel",
  "bias",
  "input_ln_scale",
  "recurrent_ln_scale",
)
# The xLSTM family's head-wise maps (nn/xlstm.py: `HeadwiseLinear`, kernel `(NH, DH, DH)`,
# one block per head), by the names its layers give them.
_HEADWISE_MAPS = ("igate", "fgate", "zgate", "ogate", "q_proj", "k_proj", "v_proj")


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


def _key_name(entry: Any) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", ""))))


def _heads_first(siblings: dict[str, tuple[int, ...]]) -> bool:
  """Whether the cell holding these parameters has a head-major recurrent kernel: the
  sLSTM's `(NH, DH, 4 DH)`, two axes more than its `(4H,)` bias, where the LSTM's `(D, 4H)`
  kernel has one more (nn/cells/slstm.py, lstm.py). Ranks relative to the bias still tell
  them apart when a scan over layers adds a leading axis to both."""
  kernel = siblings.get("recurrent_kernel")
  if kernel is None:
    return False
  bias = siblings.get("bias")
  return len(kernel) == len(bias) + 2 if bias is not None else len(kernel) >= 3


def _model_axis(path, shape: tuple[int, ...], siblings: dict[str, tuple[int, ...]]) -> int | None:
  """The axis of a parameter-shaped array that the `model` axis splits, or None.

  - An LSTM cell's gate-axis parameters: their last axis (4H; each device computes its
    gates' columns). The same for any cell's `input_kernel` (the mLSTM's `[q | k | v]`
    columns: its kernels reshard them to heads outside their loops).
  - The sLSTM cell's recurrent kernel `(NH, DH, 4 DH)` and the head-wise maps' `(NH, DH,
    DH)`: the head axis, so each device runs its heads' recurrence with no communication
    inside the time loop. The sLSTM's `bias` and `input_kernel` are gate-major (`[i | f |
    z | o]`, each of all heads): split, a device would hold other heads' gates, so they
    stay whole on the model axis.
  - Anything else (dense layers, norms, other biases): None.
  """
  name = _key_name(path[-1]) if path else ""
  parent = _key_name(path[-2]) if len(path) > 1 else ""
  if name == "kernel" and parent in _HEADWISE_MAPS and len(shape) >= 3:
    return len(shape) - 3
  if _heads_first(siblings):
    return len(shape) - 3 if name == "recurrent_kernel" else None
  if name == "input_kernel" or (name in _GATE_AXIS_PARAMS and "recurrent_kernel" in siblings):
    return len(shape) - 1 if shape else None
  return None


def _whole_over_fsdp(
  path, spec: list[Any], mesh: Mesh, siblings: dict[str, tuple[int, ...]]
) -> bool:
  """Whether a parameter that FSDP could split stays whole over `fsdp`: an LSTM's recurrent
  kernel `(H, 4H)` already split over `model`, on a mesh with data, fsdp and model all
  split. Measured with jax 0.10.2 on CPU: there XLA's partitioner gives the LSTM gradients
  that differ from one device's at some widths (H 8 and 16 of those tried: 4 to 64), the
  forward pass correct, while every two-axis layout and this one with the kernel whole over
  fsdp match (tests/parallel_worker.py). It costs that kernel's FSDP saving on such meshes:
  each device holds 1/model of it rather than 1/(model x fsdp)."""
  name = _key_name(path[-1]) if path else ""
  lstm = name == "recurrent_kernel" and not _heads_first(siblings)
  return lstm and "model" in spec and min(mesh.shape.values()) > 1


def _leaf_spec(
  path,
  shape: tuple[int, ...],
  mesh: Mesh,
  siblings: dict[str, tuple[int, ...]] | None = None,
  fsdp_min_size: int = 0,
) -> P:
  """Partition spec of one parameter-shaped array (params, Adam moments alike);
  `siblings`: the shapes of the arrays beside it (its cell's other parameters)."""
  spec: list[Any] = [None] * len(shape)
  n_model, n_fsdp = mesh.shape["model"], mesh.shape["fsdp"]
  if n_model > 1:
    axis = _model_axis(path, shape, siblings or {})
    if axis is not None and shape[axis] % n_model == 0:
      spec[axis] = "model"
  if (
    n_fsdp > 1
    and math.prod(shape) >= fsdp_min_size
    and not _whole_over_fsdp(path, spec, mesh, siblings or {})
  ):
    # Split the largest free axis that divides evenly; small leftovers stay replicated.
    free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % n_fsdp == 0]
    if free:
      spec[max(free, key=lambda i: shape[i])] = "fsdp"
  return P(*spec)


def state_shardings(mesh: Mesh, abstract_state: Any, fsdp_min_size: int = 0) -> Any:
  """A `NamedSharding` for every leaf of a train state (params, optimizer state, step).

  Optimizer moments mirror the parameter tree, so the same rule (a leaf's name, shape and
  its siblings' shapes) shards a parameter and its Adam moments identically.
  `fsdp_min_size`: arrays with fewer elements are not split over `fsdp` (`mesh.fsdp_min_size`).
  """
  leaves = jax.tree_util.tree_leaves_with_path(abstract_state)
  groups: dict[tuple, dict[str, tuple[int, ...]]] = {}
  for path, a in leaves:
    groups.setdefault(tuple(path[:-1]), {})[_key_name(path[-1]) if path else ""] = tuple(
      np.shape(a)
    )

  def sharding(path, a):
    siblings = groups.get(tuple(path[:-1]), {})
    spec = _leaf_spec(path, tuple(np.shape(a)), mesh, siblings, fsdp_min_size)
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def split_over_fsdp(shardings: Any) -> Any:
  """Per leaf of a tree of `NamedSharding`s: whether it is split over `fsdp` (what the
  step casts to `mesh.gather_dtype`)."""

  def split(s: NamedSharding) -> bool:
    return any(e == "fsdp" or (isinstance(e, tuple) and "fsdp" in e) for e in s.spec)

  return jax.tree.map(split, shardings)


def gathered(sharding: NamedSharding) -> NamedSharding:
  """`sharding` with its split over `fsdp` undone: what an all-gather over `fsdp` makes."""

  def drop(entry: Any) -> Any:
    if isinstance(entry, tuple):
      rest = tuple(a for a in entry if a != "fsdp")
      return rest if len(rest) > 1 else (rest[0] if rest else None)
    return None if entry == "fsdp" else entry

  return NamedSharding(sharding.mesh, P(*(drop(e) for e in sharding.spec)))


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
