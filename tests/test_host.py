"""flaxlstm/host.py: the process-wide allocator setting does what it says (a compiled step
stops faulting in its temporaries) and can be switched off; the population device count."""

import json
import os
import subprocess
import sys

import pytest

from flaxlstm import host

# A jitted gradient with 16 MB temporaries (and few FLOPs): the page faults of 6 calls,
# after 30 calls in which the heap settles (it grows while its free blocks fragment).
_FAULTS = """
import json, resource, sys
from flaxlstm import host
took = host.reuse_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(jnp.tanh(x @ w) @ w) ** 2)))
x, w = jnp.full((16384, 256), 0.01), jnp.full((256, 256), 0.01)
for _ in range(30):
  f(w, x).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
  f(w, x).block_until_ready()
print(json.dumps([took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0]))
"""


def _faults(env: dict[str, str]) -> tuple[bool, int]:
  out = subprocess.run(
    [sys.executable, "-c", _FAULTS],
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
  )
  took, faults = json.loads(out.stdout.strip().splitlines()[-1])
  return took, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reuse_freed_memory_stops_the_per_step_page_faults():
  took, faults = _faults({host.OPT_OUT: ""})
  off, faults_off = _faults({host.OPT_OUT: "1"})
  assert took and not off
  # Without it each call faults its temporaries in again (thousands of 4 KB pages, fewer
  # with huge pages); with it the pages are reused.
  assert faults_off > 6 * 1000
  assert faults < faults_off / 20


def test_population_devices_sets_a_count_once(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1")
  host.population_devices()
  flags = os.environ["XLA_FLAGS"]
  assert flags.startswith("--xla_cpu_foo=1 --xla_force_host_platform_device_count=")
  assert int(flags.rsplit("=", 1)[1]) >= 1
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
  host.population_devices()  # an explicit count is kept
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
