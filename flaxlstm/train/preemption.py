"""SIGTERM and SIGINT (what SLURM and TPU preemption send) as a stop request that the loop
checks after every step: the step finishes, a checkpoint is written, the run exits."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

import jax
import numpy as np


class StopRequest:
  """Set by SIGTERM/SIGINT; `agreed()` is True once any process has seen a signal."""

  def __init__(self):
    self.signum = 0

  def agreed(self) -> bool:
    if jax.process_count() == 1:
      return bool(self.signum)
    # All processes must stop after the same step, or the others would wait forever in the
    # next step's collectives: agree on "any process was signalled".
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(self.signum))))


@contextlib.contextmanager
def stop_signals() -> Iterator[StopRequest]:
  """Turns SIGTERM/SIGINT into a `StopRequest` (a second SIGINT interrupts at once).
  Handlers are only installed from the main thread."""
  stop = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield stop
    return

  def handler(signum, frame):
    del frame
    if stop.signum and signum == signal.SIGINT:
      raise KeyboardInterrupt
    stop.signum = signum

  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield stop
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
