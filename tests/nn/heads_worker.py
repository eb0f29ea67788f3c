"""Runs the xLSTM family with heads sharded over the mesh's model axis (8 fake CPU devices,
data x model = 2 x 4, 8 heads) and on one device, and prints, as JSON per family, the
losses, the largest gradient gap and the collectives XLA put inside the compiled loops:

- "slstm": `flaxlstm.SLSTM`, each head's recurrent weights on its model shard;
- "mlstm": the mLSTM's chunkwise form (`mlstm_sequence`), its inputs' head axis sharded;
- "lstm_data": the fused LSTM with its batch over all 8 devices (and how many all-gathers
  its compiled step has: its weight gradients must not gather the batch).

Run by tests/nn/test_heads_sharded.py in a fresh process: the device count is fixed at JAX
start-up.
"""

import json
import os
import re

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

import flaxlstm  # noqa: E402
from flaxlstm.nn.cells.mlstm import MLSTMCell  # noqa: E402
from flaxlstm.nn.kernels.mlstm import mlstm_sequence  # noqa: E402

B, T, H, NH = 4, 12, 32, 8
COLLECTIVE = re.compile(r"\b(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)\b")


def head_spec(path, leaf):
  """Each head's weights on its model shard: axis 0 of the (NH, ...) kernels."""
  del path
  return P("model") if leaf.ndim == 3 else P()


def loop_collectives(hlo: str) -> tuple[int, list[str]]:
  """How many while-loop bodies (the time loops) the compiled HLO has, and the
  collectives inside them."""
  bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
  found, seen = [], 0
  for name in bodies:
    m = re.search(r"\n%?" + re.escape(name) + r" [^\n]*\{\n(.*?)\n\}", hlo, re.S)
    if m:
      seen += 1
      found += COLLECTIVE.findall(m.group(1))
  return seen, found


def gap(a, b) -> float:
  """The largest gap between two trees' leaves, relative to each leaf's largest value."""
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / max(np.max(np.abs(np.asarray(x))), 1e-30))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def compare(fn, args, shardings) -> tuple[dict, str]:
  """`fn(*args)` (loss, grads) on one device and sharded: the gaps and the compiled HLO."""
  fn = jax.jit(fn)
  single = fn(*args)
  placed = jax.device_put(args, shardings)
  compiled = fn.lower(*placed).compile()
  sharded = compiled(*placed)
  hlo = compiled.as_text()
  loops = loop_collectives(hlo)
  out = {
    "loss": [float(single[0]), float(sharded[0])],
    "grad_gap": gap(single[1], sharded[1]),
    "loop_bodies": loops[0],
    "loop_collectives": loops[1],
    "collectives_outside": len(COLLECTIVE.findall(hlo)) - len(loops[1]),
  }
  return out, placed


def slstm(mesh) -> dict:
  layer = flaxlstm.SLSTM(H, num_heads=NH, conv1d_kernel_size=4)
  x = jax.random.normal(jax.random.key(0), (B, T, H))
  params = jax.jit(layer.init)(jax.random.key(1), x)["params"]

  def loss(p, x):
    return jnp.mean(jnp.square(layer.apply({"params": p}, x)))

  shardings = jax.tree_util.tree_map_with_path(
    lambda path, leaf: NamedSharding(mesh, head_spec(path, leaf)), params
  )
  fn = jax.value_and_grad(loss)
  out, placed = compare(fn, (params, x), (shardings, NamedSharding(mesh, P("data"))))
  kernel = placed[0]["cell"]["recurrent_kernel"]
  out["kernel_shards"] = len({s.device for s in kernel.addressable_shards})
  out["kernel_shard_shape"] = list(kernel.addressable_shards[0].data.shape)
  return out


def mlstm(mesh) -> dict:
  """The chunkwise form over T = 3 chunks and a ragged batch, from the empty state."""
  cell = MLSTMCell(H, num_heads=NH, chunk_size=4, project_inputs=False)
  x = jax.random.normal(jax.random.key(2), (B, T, 3 * H))
  p = cell.init(jax.random.key(3), x[:, 0], method=lambda c, a: c.parameters(a.shape[-1]))
  p = jax.tree.map(lambda a: a + 0.05, p["params"])  # gates that vary with the inputs
  lengths = jnp.array([T, 7, T, 3])

  def loss(x):
    inputs = cell.project(p, x)
    carry = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
    final, h = mlstm_sequence(inputs, carry, lengths, chunk_size=cell.chunk_size)
    return jnp.mean(jnp.square(h)) + jnp.mean(final.C)

  # Heads are the inputs' feature blocks: [q | k | v] each NH x DH, so the model axis
  # splits each of them (the projection reshapes it to (..., NH, DH)).
  fn = jax.value_and_grad(loss)
  out, placed = compare(fn, (x,), (NamedSharding(mesh, P("data", None, "model")),))
  out["input_shards"] = len({s.device for s in placed[0].addressable_shards})
  return out


def lstm_data(mesh) -> dict:
  """The fused LSTM with its batch split 8 ways: its weight gradients are sums over the
  batch, so each device should sum its own rows (no all-gather of the batch)."""
  layer = flaxlstm.LSTM(H)
  x = jax.random.normal(jax.random.key(4), (B * 2, T, 16))
  params = jax.jit(layer.init)(jax.random.key(5), x)

  def loss(p, x):
    return jnp.mean(jnp.square(layer.apply(p, x)))

  flat = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  del mesh  # the batch over all 8 devices
  fn = jax.value_and_grad(loss)
  out, _ = compare(fn, (params, x), (NamedSharding(flat, P()), NamedSharding(flat, P("data"))))
  hlo = (
    jax.jit(fn)
    .lower(
      jax.device_put(params, NamedSharding(flat, P())),
      jax.device_put(x, NamedSharding(flat, P("data"))),
    )
    .compile()
    .as_text()
  )
  out["all_gathers"] = len(re.findall(r"\ball-gather(?:-start)?\(", hlo))
  return out


def main():
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  print(json.dumps({"slstm": slstm(mesh), "mlstm": mlstm(mesh), "lstm_data": lstm_data(mesh)}))


if __name__ == "__main__":
  main()
