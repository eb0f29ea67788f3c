"""What the `flaxlstm` command prints on stderr besides its own lines, and why.

The command reports a failure in one line (`error: ...`, see flaxlstm/cli.py), but the
libraries under it write to stderr on their own, from threads the command does not run:

- The library's own warnings (the `flaxlstm` logger): `log_to_stderr` prints them as
  `warning: <one line>`, like the `error:` lines (`_OneLine`), to whatever `sys.stderr`
  is at the time (`_Stderr`: tests and notebooks replace it).
- orbax (through absl) and asyncio log from background threads: when a write fails (a
  full disk) each of orbax's writer threads logs the failure with a traceback, and asyncio
  logs the tasks it dropped, some only at exit. `_Held` keeps those records until the
  command ends: printed after a command that succeeded (`replay_held`), dropped after one
  that failed with its own `error:` line.
- TensorStore's own threads (not started by Python) print tracebacks ending in "Event
  loop is closed" straight to stderr when orbax closes its event loop with writes still in
  flight, before and even after the command's error. `held_stderr` and `hold_until_exit`
  filter stderr (`_QuietForeignThreads`) to hold exactly those like the records above.

FLAXLSTM_DEBUG=1 turns the holding off: everything is printed as it comes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Iterator


class _OneLine(logging.Formatter):
  """`warning: <message>` on one line, like the `error:` lines."""

  def format(self, record: logging.LogRecord) -> str:
    return f"{record.levelname.lower()}: {' '.join(record.getMessage().split())}"


class _Stderr(logging.StreamHandler):
  """Writes to whatever `sys.stderr` is at the time (tests and notebooks replace it)."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value


class _Held(logging.Handler):
  """Keeps the records of libraries that log from background threads (orbax through absl,
  asyncio) until the command ends.

  When a write fails (a full disk), orbax's writer threads each log the failure with a
  traceback, and asyncio logs the tasks it dropped, some only at exit; the command itself
  reports the failure in one line. So: printed after a command that succeeded, dropped
  after one that failed with its own `error:` line. FLAXLSTM_DEBUG=1 prints them as they
  come.
  """

  def __init__(self):
    super().__init__()
    self.records: list[logging.LogRecord] = []

  def emit(self, record: logging.LogRecord) -> None:
    self.records.append(record)

  def replay(self) -> None:
    formatter = logging.Formatter(logging.BASIC_FORMAT)
    for record in self.records:
      print(formatter.format(record), file=sys.stderr)
    self.records = []


_HELD = _Held()
_BACKGROUND_LOGGERS = ("absl", "asyncio")
_LOOP_CLOSED = "RuntimeError: Event loop is closed"


class _QuietForeignThreads:
  """`sys.stderr` while the CLI runs: everything passes, except one kind of traceback.

  When orbax gives up on a failed save (a full disk) it closes its event loop while
  TensorStore writes are still in flight; as each completes, TensorStore's own threads
  (not started by Python, so named "Dummy-N") print a traceback ending in "Event loop is
  closed", straight to stderr, before and even after the command's one-line error. Those
  are held like the records above; any other output, from any thread, passes unchanged.
  """

  def __init__(self, stream):
    self.stream = stream
    self._pending: dict[int, list[str]] = {}

  def write(self, text: str) -> int:
    thread = threading.current_thread()
    ident = thread.ident or 0
    buffer = self._pending.get(ident)
    if buffer is None:
      if not (thread.name.startswith("Dummy-") and text.startswith("Traceback")):
        return self.stream.write(text)
      buffer = self._pending[ident] = []
    buffer.append(text)
    block = "".join(buffer)
    last = block.splitlines()[-1] if block.strip() else ""
    if block.endswith("\n") and last and not last.startswith((" ", "Traceback")):
      del self._pending[ident]  # the exception line: the traceback is complete
      if last == _LOOP_CLOSED:
        _HELD.emit(
          logging.LogRecord("tensorstore", logging.ERROR, "", 0, "%s", (block.rstrip(),), None)
        )
      else:
        self.stream.write(block)
    return len(text)

  def flush(self) -> None:
    self.stream.flush()

  def __getattr__(self, name: str):
    return getattr(self.stream, name)


def log_to_stderr() -> None:
  """Prints the `flaxlstm` logger's warnings as one line each, and holds what the
  background loggers record (unless FLAXLSTM_DEBUG). Calling it again changes nothing but
  dropping records still held from an earlier command."""
  logger = logging.getLogger("flaxlstm")
  if not any(isinstance(h, _Stderr) for h in logger.handlers):
    handler = _Stderr()
    handler.setFormatter(_OneLine())
    logger.addHandler(handler)
  logger.setLevel(logging.WARNING)  # --verbose: INFO, set once the arguments are read
  logger.propagate = False
  if os.environ.get("FLAXLSTM_DEBUG"):
    return
  _HELD.records = []
  for name in _BACKGROUND_LOGGERS:
    background = logging.getLogger(name)
    if _HELD not in background.handlers:
      background.addHandler(_HELD)
    background.propagate = False


@contextlib.contextmanager
def held_stderr() -> Iterator[None]:
  """Filters `sys.stderr` (`_QuietForeignThreads`) while one command runs, then puts back
  the stream it found; one already filtered (`hold_until_exit`) is not filtered twice."""
  stderr = sys.stderr
  if not isinstance(stderr, _QuietForeignThreads) and not os.environ.get("FLAXLSTM_DEBUG"):
    sys.stderr = _QuietForeignThreads(stderr)
  try:
    yield
  finally:
    sys.stderr = stderr


def hold_until_exit() -> None:
  """Filters `sys.stderr` for the rest of the process: the `flaxlstm` program's, since some
  of TensorStore's tracebacks arrive during interpreter shutdown."""
  if not os.environ.get("FLAXLSTM_DEBUG"):
    sys.stderr = _QuietForeignThreads(sys.stderr)


def replay_held() -> None:
  """Prints what was held (after a command that succeeded: nothing in it was reported)."""
  _HELD.replay()
