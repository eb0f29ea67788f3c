"""Process-wide settings of the CPU host, made before JAX starts its backends.

- `reuse_freed_memory`: glibc's allocator keeps freed memory for the next step (the
  command line sets it first thing).
- `population_devices`: one host device per core, for populations.

Both act on the process, not on a computation, and both must come before JAX creates its
CPU client (its first computation, or `jax.devices()`); after that they change nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

OPT_OUT = "FLAXLSTM_RELEASE_HOST_MEMORY"

# glibc's `mallopt` parameters (malloc.h) and the values set.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = (
  (_M_ARENA_MAX, 1),  # every thread allocates from the main heap, which grows without limit
  (_M_MMAP_MAX, 0),  # every block comes from that heap, none from a mmap of its own
  (_M_TRIM_THRESHOLD, -1),  # and its free top is never handed back (mallopt(3): -1 disables)
)


def reuse_freed_memory() -> bool:
  """Has glibc's malloc keep freed memory in the process, for reuse; True where it took.

  Why: XLA:CPU allocates a compiled step's temporaries (tens to hundreds of MB for a train
  step) with malloc when the step starts and frees them when it ends. glibc serves blocks
  that large with a fresh `mmap` and unmaps them on free, and XLA's worker threads allocate
  from arenas of their own that hand freed memory back to the system as well. So every
  step faults its temporaries in again, one 4 KB page at a time, each page zeroed by the
  kernel: a large share of a CPU step (BENCHMARKS.md, "The allocator"). With one arena, no
  block of its own `mmap` and no trimming, the next step reuses the same pages.

  The cost: the process keeps its peak heap until it exits (freed memory is not returned to
  the system), and threads share the one arena's lock (a step allocates few large blocks).
  The environment variable `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (launch/) is the other
  remedy: fewer, larger pages, but still faulted in every step; it has to be set before
  Python starts, where this is a call.

  Call it before JAX's first computation (threads that have allocated keep their arenas):
  `flaxlstm`'s command line does, first thing; a script can at its top. It does nothing
  where the C library has no `mallopt` (macOS, musl), nor with FLAXLSTM_RELEASE_HOST_MEMORY=1.
  """
  if os.environ.get(OPT_OUT, "") not in ("", "0"):
    return False
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or None).mallopt
  except (AttributeError, OSError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  took = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
  log.debug("glibc malloc keeps freed memory: %s", took)
  return took


def population_devices() -> None:
  """One host device per core (unless XLA_FLAGS names a count), so that populations train
  on every core at once: each device trains its own members (search/runner.py), and
  XLA:CPU runs small recurrent matmuls on about one core, which measured clearly faster per
  member step than one device (experiments/benchmarks/population_step.py; BENCHMARKS.md)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags:
    return
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cores or 1}".strip()
