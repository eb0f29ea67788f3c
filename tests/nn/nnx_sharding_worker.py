"""Trains a small NNX model with `nnx.with_partitioning` kernels on 8 fake CPU devices (a
4 x 2 data x model mesh) and on one device; prints both loss curves as JSON.

Run by tests/nn/test_nnx.py in a fresh process: the device count is fixed at JAX start-up.
"""

import json
import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from flaxlstm import nnx as lnnx  # noqa: E402

B, T, D, H = 16, 8, 3, 8


class Model(nnx.Module):
  def __init__(self, rngs, sharded):
    wrap = (lambda init, axes: nnx.with_partitioning(init, axes)) if sharded else (lambda i, a: i)
    self.lstm = lnnx.LSTM(
      D,
      H,
      rngs=rngs,
      return_sequences=False,
      kernel_init=wrap(nnx.initializers.glorot_uniform(), (None, "model")),
      recurrent_kernel_init=wrap(nnx.initializers.orthogonal(), (None, "model")),
      bias_init=wrap(nnx.initializers.zeros_init(), ("model",)),
    )
    self.head = nnx.Linear(H, 1, rngs=rngs)

  def __call__(self, x):
    return self.head(self.lstm(x))[..., 0]


def train(mesh):
  x = jax.random.normal(jax.random.key(0), (B, T, D))
  y = jnp.sum(x[:, -2:, 0], axis=1)
  if mesh is not None:
    x = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    y = jax.device_put(y, NamedSharding(mesh, PartitionSpec("data")))
  model = Model(nnx.Rngs(0), sharded=mesh is not None)
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, x, y)) for _ in range(8)]
  return losses, model


def main():
  single, _ = train(None)
  auto = (jax.sharding.AxisType.Auto,) * 2
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=auto)
  with jax.set_mesh(mesh):
    sharded, model = train(mesh)
    spec = model.lstm.cell.input_kernel[...].sharding.spec
  print(json.dumps({"single": single, "mesh": sharded, "sharded_kernel": list(spec)}))


if __name__ == "__main__":
  main()
