"""Who owns a run directory: the lock, and a training command's claim on its workdir.

- Exactly one process writes a run directory at a time: `Lock`, an exclusive ``flock`` on
  ``.flaxlstm.lock``. The kernel drops the lock when its process dies (even by kill -9),
  so a stale lock file never blocks.
- A command that refuses changes nothing: it checks while holding the lock and gives the
  lock back exactly as it found it (`Lock.release(keep=False)`), and a `Claim` removes
  the folders it created for the workdir.

Kept apart from `flaxlstm.train.workdir` (what a directory holds, and the refusals), which
uses it: ownership does not depend on what a run holds, so this module imports nothing from
flaxlstm but its errors and never imports workdir.py back.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import stat
import time
from typing import Any

from flaxlstm.errors import InputError

LOCK_NAME = ".flaxlstm.lock"
log = logging.getLogger(__name__)
# A lock file is read and written by every command on a run, maybe one someone shared: it
# is opened without following a link (the holder's name would be written into the link's
# target) and without waiting on a FIFO, and it must be a small regular file.
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MAX_LOCK_BYTES = 2**16  # the holder's pid, host, command and time: ~100 bytes
_KINDS = {
  stat.S_IFIFO: "a FIFO",
  stat.S_IFCHR: "a character device",
  stat.S_IFBLK: "a block device",
  stat.S_IFSOCK: "a socket",
}


class Lock:
  """An exclusive lock on a directory, held by one process.

  ``acquire`` takes ``flock(LOCK_EX | LOCK_NB)`` on ``<directory>/.flaxlstm.lock`` and writes
  who holds it (pid, host, command, time) into the file, so that a second process is told
  "in use by pid N on HOST". ``release(keep=False)`` puts the file back as it was (removed
  if this process created it), for a command that refused and must leave no trace.

  Filesystems without locks (some network mounts) get a one-line warning and no lock.
  """

  def __init__(self, directory: str | os.PathLike[str], command: str):
    self.directory = os.fspath(directory)
    self.path = os.path.join(self.directory, LOCK_NAME)
    self.command = command
    self._fd: int | None = None
    self._created = False
    self._previous = b""

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> Lock:
    """Takes the lock; raises InputError naming the holder if another process has it."""
    if self._fd is not None:
      return self
    for _ in range(10):  # retried only when the file is replaced under us (see below)
      try:
        created = False
        try:
          fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o644)
          created = True
        except FileExistsError:
          fd = os.open(self.path, os.O_RDWR | _OPEN_FLAGS)
      except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW: the holder's name would go into its target
          raise InputError(
            f"cannot lock {self.directory}: {self.path} is a symbolic link, not a lock "
            "file; remove it"
          ) from None
        raise InputError(f"cannot lock {self.directory}: {e.strerror} ({self.path})") from None
      problem = _not_a_lock(fd)
      if problem:
        os.close(fd)
        raise InputError(f"cannot lock {self.directory}: {self.path} is {problem}; remove it")
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise busy_error(self.directory, holder) from None
      except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
          log.warning(
            f"cannot lock {self.directory} ({e.strerror}): this filesystem has no "
            "file locks, so nothing stops a second process from writing it"
          )
          return self
        raise
      # A holder that refused removes a lock file it created; if that happened between our
      # open and our flock, we hold a lock on a file nobody else can see: start again.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if not same:
        os.close(fd)
        continue
      self._fd, self._created = fd, created
      self._previous = b"" if created else _read_all(fd)
      _write_all(
        fd,
        json.dumps(
          {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
          }
        ).encode(),
      )
      return self
    raise InputError(f"cannot lock {self.directory}: its lock file keeps changing")

  def release(self, keep: bool = True) -> None:
    """Gives the lock back. ``keep=False``: restore the lock file as it was found."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      if not keep:
        if self._created:
          os.unlink(self.path)
        else:
          _write_all(fd, self._previous)
    except OSError:
      pass  # A lock file left behind holds no lock; never mask the real error for it.
    finally:
      os.close(fd)  # closing the descriptor drops the flock

  def __enter__(self) -> Lock:
    return self.acquire()

  def __exit__(self, exc_type, *exc_info: Any) -> None:
    # A command that failed gives the lock file back as it found it.
    self.release(keep=exc_type is None)


def lock_holder(directory: str | os.PathLike[str]) -> str | None:
  """Who holds `directory`'s lock right now ("pid N on HOST ..."), or None if nobody does.

  Probes without creating anything: a directory without a lock file is not locked.
  """
  path = os.path.join(os.fspath(directory), LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
  except OSError:
    return None
  if _not_a_lock(fd):  # holds no lock; taking it is refused, naming what it is
    os.close(fd)
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return _read_holder(fd)
  except OSError:
    return None
  finally:
    os.close(fd)  # also drops the shared lock if it was taken
  return None


def _read_holder(fd: int) -> str:
  try:
    info = json.loads(_read_all(fd) or b"{}")
    return (
      f"pid {int(info['pid'])} on {info.get('host', '?')} "
      f"({info.get('command', 'flaxlstm')}, since {info.get('since', '?')})"
    )
  except (ValueError, KeyError, TypeError, OSError):
    return "another process"  # it has the lock but has not written its name yet


def _not_a_lock(fd: int) -> str:
  """'' if `fd` is a regular file of a lock's size; else what it is, for a message."""
  st = os.fstat(fd)
  if not stat.S_ISREG(st.st_mode):
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a file")
    return f"{kind}, not a regular file"
  if st.st_size > _MAX_LOCK_BYTES:
    return f"{st.st_size} bytes, not a lock file"
  return ""


def _read_all(fd: int) -> bytes:
  """The lock file's bytes (it was checked to be a small regular file)."""
  os.lseek(fd, 0, os.SEEK_SET)
  chunks: list[bytes] = []
  left = _MAX_LOCK_BYTES + 1
  while left > 0 and (chunk := os.read(fd, min(65536, left))):
    chunks.append(chunk)
    left -= len(chunk)
  return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  while data:
    data = data[os.write(fd, data) :]


class Claim:
  """A training command's hold on its workdir: created if missing, locked, and given back
  untouched if the command refuses.

  ``open()`` creates the directory (and any missing parents) and takes the `Lock`;
  ``abandon()`` (a refusal) releases the lock restoring its file and removes the folders
  ``open`` created, so the parent looks as before; ``keep()`` (the command went ahead)
  releases it normally. Only the process that writes (process 0) claims.
  """

  def __init__(self, workdir: str, command: str):
    self.workdir = workdir
    self.lock = Lock(workdir, command)
    self._created: list[str] = []

  def open(self) -> Claim:
    if os.path.lexists(self.workdir) and not os.path.isdir(self.workdir):
      raise InputError(f"workdir {self.workdir} is not a directory")
    try:
      make_dirs(self.workdir, self._created)
    except OSError as e:
      self.abandon()
      raise InputError(f"workdir {self.workdir} is not writable: {e.strerror}") from None
    try:
      self.lock.acquire()
    except BaseException:
      self.abandon()
      raise
    return self

  def abandon(self) -> None:
    self.lock.release(keep=False)
    remove_dirs(self._created)
    self._created = []

  def keep(self) -> None:
    self.lock.release(keep=True)
    self._created = []


def make_dirs(path: str, created: list[str]) -> None:
  """Creates `path` and its missing parents, appending each folder made to `created` (also
  what `workdir.write_output` uses for the folders of an output)."""
  missing, path = [], os.path.abspath(path)
  while not os.path.lexists(path):
    missing.append(path)
    path = os.path.dirname(path)
  for folder in reversed(missing):
    os.mkdir(folder)
    created.append(folder)


def remove_dirs(created: list[str]) -> None:
  """Removes folders `make_dirs` made, deepest first, while they are still empty: never
  what someone else has put there since."""
  for folder in reversed(created):
    try:
      os.rmdir(folder)
    except OSError:
      break


def busy_error(directory: str, holder: str) -> InputError:
  """The one message for a directory another process holds."""
  return InputError(
    f"{directory} is in use by {holder}; wait for it to finish, or use another --workdir"
  )
