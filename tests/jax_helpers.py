"""JAX test helpers shared by test_cell.py and test_layers.py, and the environment of a
subprocess with fake CPU devices (`fake_devices_env`).

jit-cached apply: modules are hashable, so each (module, shapes) pair compiles once per
session; random parameters via `eval_shape` are much cheaper than `init`, whose random/QR
initializers compile anew for every shape (and they give nonzero biases too).
"""

import functools
import os

import jax
import numpy as np


def _split_static(kw):
  static = tuple(sorted((k, v) for k, v in kw.items() if isinstance(v, bool)))
  return static, {k: v for k, v in kw.items() if not isinstance(v, bool)}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jit_apply(module, static, variables, args, kw):
  return module.apply(variables, *args, **dict(static), **kw)


def run(module, variables, *args, **kw):
  """`module.apply(variables, *args, **kw)`, jitted (bool keywords are static); returns
  NumPy arrays, so that indexing results does not compile anything either."""
  static, kw = _split_static(kw)
  return np_tree(_jit_apply(module, static, variables, args, kw))


def np_tree(tree):
  return jax.tree.map(np.asarray, tree)


def param_shapes(module, *args, **kw):
  """The variables `module.init` would create, as shapes/dtypes only (nothing compiled)."""
  return jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kw))


def rand_params(module, *args, seed=0, scale=0.5, **kw):
  """Random variables with the structure `module.init` creates."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    a = scale * rng.standard_normal(s.shape)
    if "ln_scale" in jax.tree_util.keystr(path):
      a = 1.0 + a
    return jax.device_put(np.asarray(a, s.dtype))  # (jnp.asarray would compile a copy)

  return jax.tree_util.tree_map_with_path(fill, param_shapes(module, *args, **kw))


def fake_devices_env(n: int, **extra: str) -> dict[str, str]:
  """This process's environment for a subprocess with `n` fake CPU devices: the count is
  appended to the inherited XLA_FLAGS (conftest.py's compile flag stays), plus `extra`."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
  return {**os.environ, "XLA_FLAGS": flags.strip(), **extra}
