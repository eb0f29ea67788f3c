"""Runs `flaxlstm.SLSTM` with its heads sharded over the mesh's model axis (8 fake CPU
devices, data x model = 2 x 4, 8 heads) and on one device; prints outputs, gradients and
the collectives XLA put inside the compiled time loops, as JSON.

Run by tests/nn/test_slstm.py in a fresh process: the device count is fixed at JAX start-up.
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


def main():
  layer = flaxlstm.SLSTM(H, num_heads=NH, conv1d_kernel_size=4)
  x = jax.random.normal(jax.random.key(0), (B, T, H))
  params = layer.init(jax.random.key(1), x)["params"]

  def loss(p, x):
    return jnp.mean(jnp.square(layer.apply({"params": p}, x)))

  fn = jax.jit(jax.value_and_grad(loss))
  single = fn(params, x)
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  shardings = jax.tree_util.tree_map_with_path(
    lambda path, leaf: NamedSharding(mesh, head_spec(path, leaf)), params
  )
  sharded_params = jax.device_put(params, shardings)
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  compiled = fn.lower(sharded_params, xs).compile()
  sharded = compiled(sharded_params, xs)
  kernel = sharded_params["cell"]["recurrent_kernel"]
  hlo = compiled.as_text()
  loops = loop_collectives(hlo)
  out = {
    "loss": [float(single[0]), float(sharded[0])],
    "grad_gap": max(
      float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
      for a, b in zip(jax.tree.leaves(single[1]), jax.tree.leaves(sharded[1]))
    ),
    "kernel_shards": len({s.device for s in kernel.addressable_shards}),
    "kernel_shard_shape": list(kernel.addressable_shards[0].data.shape),
    "loop_bodies": loops[0],
    "loop_collectives": loops[1],
    "collectives_outside": len(COLLECTIVE.findall(hlo)) - len(loops[1]),
  }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
