"""Shared test helpers: a plain-NumPy LSTM in PyTorch's weight layout, and a tiny series
with an experiment file that trains on it in seconds.

Besides fixtures, one hook and one environment setting. The hook marks every case of a
parametrized test but the first `slow` (the inner loop runs one case of each), and
collects the slow tests first: with pytest-xdist (README's `-n 2`) tests are handed out in
collection order, and a long test left for the end would run alone on one core while the
other idles. The test process and the processes it starts share a persistent compilation
cache (`_compile_cache`), and compile with LLVM's optimizations off (below).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

# Tests compile hundreds of small programs and run each for a few steps, so compiling, not
# running, is most of their time: XLA's CPU backend at optimization level 0 skips LLVM's
# optimization passes, which compiles much faster and runs tiny shapes about as fast.
# Floating-point semantics are the same at every level (XLA:CPU does not enable fast math).
# Appended, so that a device count given from outside is kept (and once: xdist's workers
# inherit the controller's environment); the processes tests start inherit it, and those
# that set a device count append theirs.
_O0 = "--xla_backend_optimization_level=0"
if _O0 not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_O0}".strip()


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def np_lstm_step(x, c, h, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, h_mask=None):
  """One step of PyTorch's `nn.LSTM` equations in float64 NumPy.

  Layout as in PyTorch: `w_ih` (4H, D), `w_hh` (4H, R), `b_ih`/`b_hh` (4H,), optional
  `w_hr` (P, H); gates are stacked in the order i, f, g, o. `h_mask` multiplies the h fed
  back (recurrent dropout). Returns `(c', h')`.
  """
  x, c, h = (np.asarray(a, np.float64) for a in (x, c, h))
  h_in = h if h_mask is None else h * h_mask
  z = x @ np.asarray(w_ih, np.float64).T + h_in @ np.asarray(w_hh, np.float64).T
  if b_ih is not None:
    z = z + b_ih
  if b_hh is not None:
    z = z + b_hh
  i, f, g, o = np.split(z, 4, axis=-1)
  i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
  c_new = f * c + i * g
  h_new = o * np.tanh(c_new)
  if w_hr is not None:
    h_new = h_new @ np.asarray(w_hr, np.float64).T
  return c_new, h_new


def np_lstm_layer(
  x,
  w_ih,
  w_hh,
  b_ih=None,
  b_hh=None,
  w_hr=None,
  *,
  c0=None,
  h0=None,
  reverse=False,
  x_mask=None,
  h_mask=None,
):
  """Runs `np_lstm_step` over `x` `(B, T, D)`; returns `(ys (B, T, R), (c, h))`.

  `reverse` runs from the last step to the first and returns the outputs in input order.
  `x_mask` (B, D) multiplies the inputs of every step (input dropout).
  """
  x = np.asarray(x, np.float64)
  b, t, _ = x.shape
  hid = np.asarray(w_hh).shape[0] // 4
  rec = np.asarray(w_hh).shape[1]
  c = np.zeros((b, hid)) if c0 is None else np.asarray(c0, np.float64)
  h = np.zeros((b, rec)) if h0 is None else np.asarray(h0, np.float64)
  if x_mask is not None:
    x = x * np.asarray(x_mask, np.float64)[:, None, :]
  ys = np.zeros((b, t, rec))
  steps = range(t - 1, -1, -1) if reverse else range(t)
  for s in steps:
    c, h = np_lstm_step(x[:, s], c, h, w_ih, w_hh, b_ih, b_hh, w_hr, h_mask)
    ys[:, s] = h
  return ys, (c, h)


def torch_layer_weights(state_dict, layer=0, reverse=False):
  """The `np_lstm_layer` weight arguments of one layer/direction of a torch state dict."""
  sfx = f"_l{layer}" + ("_reverse" if reverse else "")
  return (
    state_dict["weight_ih" + sfx],
    state_dict["weight_hh" + sfx],
    state_dict.get("bias_ih" + sfx),
    state_dict.get("bias_hh" + sfx),
    state_dict.get("weight_hr" + sfx),
  )


def random_torch_state_dict(
  seed, input_size, hidden, num_layers=2, proj_size=0, bidirectional=False, bias=True, scale=0.5
):
  """A random `nn.LSTM(...).state_dict()` (as NumPy float32 arrays), no torch needed."""
  rng = np.random.default_rng(seed)
  rec = proj_size or hidden
  directions = ("", "_reverse") if bidirectional else ("",)
  sd = {}
  for k in range(num_layers):
    d_in = input_size if k == 0 else rec * len(directions)
    for dr in directions:
      sfx = f"_l{k}{dr}"
      rnd = lambda *shape: (scale * rng.standard_normal(shape)).astype(np.float32)
      sd["weight_ih" + sfx] = rnd(4 * hidden, d_in)
      sd["weight_hh" + sfx] = rnd(4 * hidden, rec)
      if bias:
        sd["bias_ih" + sfx] = rnd(4 * hidden)
        sd["bias_hh" + sfx] = rnd(4 * hidden)
      if proj_size:
        sd["weight_hr" + sfx] = rnd(proj_size, hidden)
  return sd


def fused_to_torch(p, forget_bias=0.0):
  """Our fused `LSTMCell` params -> `np_lstm_layer` weight arguments (PyTorch layout)."""
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  b = p["bias"].copy()
  n = b.shape[0] // 4
  b[n : 2 * n] += forget_bias
  return (
    p["input_kernel"].T,
    p["recurrent_kernel"].T,
    b,
    None,
    p["projection_kernel"].T if "projection_kernel" in p else None,
  )


class NumpyLSTM:
  """Namespace handed to tests by the `np_ref` fixture."""

  step = staticmethod(np_lstm_step)
  layer = staticmethod(np_lstm_layer)
  torch_layer_weights = staticmethod(torch_layer_weights)
  random_torch_state_dict = staticmethod(random_torch_state_dict)
  fused_to_torch = staticmethod(fused_to_torch)


@pytest.fixture(scope="session")
def np_ref():
  """Plain-NumPy reference LSTM (PyTorch layout) and weight helpers."""
  return NumpyLSTM


TINY = """
from flaxlstm import config as config_lib

def get_config(arg=None):
  c = config_lib.default_config()
  c.data.path = {path!r}
  c.data.target = ("y",)
  c.data.lookback, c.data.horizon, c.data.seasonal_period = 24, 6, 12
  c.model.hidden_sizes = (8,)
  c.train.batch_size, c.train.eval_batch_size = 16, 64
  c.train.max_steps, c.train.eval_every_steps, c.train.log_every_steps = 40, 10, 5
  c.train.learning_rate = 1e-2
  return c
"""


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
  """A small seasonal series and an experiment file that trains on it in seconds."""
  root = tmp_path_factory.mktemp("tiny")
  rng = np.random.default_rng(0)
  t = np.arange(600)
  y = np.sin(2 * np.pi * t / 12) + 0.1 * rng.normal(size=t.size) + 0.002 * t
  x = np.cos(2 * np.pi * t / 12) + 0.1 * rng.normal(size=t.size)
  frame = pd.DataFrame(
    {"date": pd.date_range("2020-01-01", periods=t.size, freq="h"), "x": x, "y": y}
  )
  csv = root / "series.csv"
  frame.to_csv(csv, index=False)
  exp = root / "tiny.py"
  exp.write_text(TINY.format(path=str(csv)))
  return {"csv": str(csv), "exp": str(exp), "root": root}


def pytest_collection_modifyitems(config, items):
  """Every case of a parametrized test but its first is `slow`: the inner loop
  (`-m "not slow"`) checks each property once, on its first (simplest) case, and README's
  full run checks every case. Then the `slow` tests first (stable otherwise): see the
  module docstring."""
  seen = set()
  for item in items:
    if getattr(item, "callspec", None) is None:
      continue
    key = (item.nodeid.split("::")[0], item.originalname)
    if key in seen:
      item.add_marker(pytest.mark.slow)
    seen.add(key)
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def _compile_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the session: this process and the processes
  the tests start (`flaxlstm train`, sweeps, tune workers, multi-device workers) compile
  each tiny program once rather than once per run or per process. Most tests build the
  same train steps again (a resumed run, a population against its single runs), and
  reading a cached executable takes milliseconds where compiling takes seconds; the numbers
  are the same (the fault and resume tests compare such runs bit for bit). This process
  first compiled before this fixture ran (test modules build arrays on import), which
  settles jax's cache as off, so it is reset here."""
  import jax
  from jax._src import compilation_cache

  assert jax.config.jax_compilation_cache_dir is None  # not configured from outside
  cache_dir = str(tmp_path_factory.mktemp("xla_cache"))
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  compilation_cache.reset_cache()
  env = {
    "JAX_COMPILATION_CACHE_DIR": cache_dir,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }
  before = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield
  for k, v in before.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
