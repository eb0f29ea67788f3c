"""Files written whole or not at all, and read with one-line errors.

Every file flaxlstm writes into a run directory goes through `write_atomic`: a temporary
sibling, fsync, then a rename, so a reader (or a crash) never sees half a file and a
failed write leaves no `*.tmp` behind. Every JSON or text file it reads back goes through
`read_json`/`read_text`, which name the file in a one-line InputError when it is missing,
a directory, not UTF-8 or not JSON.

A run directory someone shares is data, and it may hold anything: every read of one opens
only regular files (`open_regular`: a FIFO would block forever, a link to /dev/zero never
ends, and opening a device can act on it) and reads a bounded number of bytes
(`read_bytes`: a run's JSON files are small, a 3 GiB one is not a run's).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import stat
from typing import Any, BinaryIO

from flaxlstm.errors import InputError

_TMP_NUMBERS = itertools.count()  # with the pid: temporary names no two writers share
# The most a run's JSON file (config, scalers, metrics, a checkpoint's digest or orbax
# metadata) is read: real ones are kilobytes, a few megabytes for the largest models.
MAX_JSON_BYTES = 64 * 2**20
_KINDS = (
  (stat.S_ISFIFO, "a FIFO"),
  (stat.S_ISCHR, "a character device"),
  (stat.S_ISBLK, "a block device"),
  (stat.S_ISSOCK, "a socket"),
  (stat.S_ISDIR, "a directory"),
)


class NotRegularFile(OSError):
  """A path that is not a regular file: reading it could block forever or never end.

  An OSError, so that the handlers that turn a failed read into one line ("X cannot be
  read: <strerror>") say why without knowing about it.
  """


class TooLarge(OSError):
  """A file larger than what is read of its kind (`read_bytes`)."""


def special_kind(path: str | os.PathLike[str]) -> str:
  """'' if `path` is a regular file, a directory or missing; else what it is, for
  messages ("a FIFO", "a character device (a link to /dev/zero)")."""
  try:
    mode = os.stat(path).st_mode  # through links: a link is what it points to
  except OSError:
    return ""
  if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
    return ""
  return _describe(os.fspath(path), mode)


def _describe(path: str, mode: int) -> str:
  kind = next((name for test, name in _KINDS if test(mode)), "not a file")
  if os.path.islink(path):
    kind += f" (a link to {os.path.realpath(path)})"
  return kind


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
  """Opens `path` for reading if it is a regular file (also through a link), without ever
  blocking on it.

  Raises:
    OSError: as `open` (FileNotFoundError, IsADirectoryError, ...); NotRegularFile for a
      FIFO, a device or a socket, which is never read.
  """
  path = os.fspath(path)
  mode = os.stat(path).st_mode
  if stat.S_ISDIR(mode):
    raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
  if not stat.S_ISREG(mode):  # refused before open: opening a device can act on it
    raise NotRegularFile(errno.EINVAL, f"it is {_describe(path, mode)}, not a regular file", path)
  # O_NONBLOCK: if it was swapped for a FIFO since the stat, open must not wait for a
  # writer; the fstat below then refuses it. Regular files ignore the flag.
  fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
  try:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
      raise NotRegularFile(errno.EINVAL, f"it is {_describe(path, mode)}, not a regular file", path)
    return os.fdopen(fd, "rb")
  except BaseException:
    os.close(fd)
    raise


def read_bytes(path: str | os.PathLike[str], limit: int = MAX_JSON_BYTES) -> bytes:
  """The bytes of a regular file of at most `limit` bytes.

  Raises:
    OSError: as `open_regular`; TooLarge past `limit` (found from its size, before
      reading, and while reading for a file that grows).
  """
  with open_regular(path) as f:
    size = os.fstat(f.fileno()).st_size
    raw = f.read(limit + 1) if size <= limit else b""
    if size > limit or len(raw) > limit:
      raise TooLarge(
        errno.EFBIG,
        f"it is {max(size, len(raw))} bytes, over the {_amount(limit)} limit for such a file",
        os.fspath(path),
      )
  return raw


def _amount(n: int) -> str:
  return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


def read_text(path: str | os.PathLike[str], what: str, limit: int = MAX_JSON_BYTES) -> str:
  """The UTF-8 text of a run file of at most `limit` bytes; InputError (one line, naming
  it) if it cannot be."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise InputError(f"{what} {path} is a directory, not a file")
  try:
    raw = read_bytes(path, limit)
  except FileNotFoundError:
    raise InputError(f"{what} {path} does not exist") from None
  except OSError as e:
    raise InputError(f"{what} {path} cannot be read: {e.strerror}") from None
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise InputError(f"{what} {path} is not UTF-8 text (byte {e.start}); it is damaged") from None


def read_json(path: str | os.PathLike[str], what: str) -> Any:
  """A run's JSON file, parsed; InputError (one line, naming it) if it is damaged."""
  text = read_text(path, what)
  try:
    return json.loads(text)
  except ValueError as e:
    raise InputError(f"{what} {os.fspath(path)} is not valid JSON ({e}); it is damaged") from None


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, replace: bool = True) -> None:
  """Writes `path` whole or not at all: a temporary sibling, fsync, then a rename.

  On any failure the temporary file is removed and `path` is untouched. The file gets
  the permissions `open` would give it (the umask applies), unlike `mkstemp`'s 0600.
  `replace=False`: raise FileExistsError rather than replace an existing `path` (the
  temporary file is hard-linked into place, which fails if the name is taken; filesystems
  without hard links fall back to a check, then a rename).
  """
  path = os.fspath(path)
  if isinstance(data, str):
    data = data.encode("utf-8")
  tmp = os.path.join(
    os.path.dirname(os.path.abspath(path)),
    f".{os.path.basename(path)}.{os.getpid()}.{next(_TMP_NUMBERS)}.tmp",
  )
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    if replace:
      os.replace(tmp, path)
      return
    try:
      os.link(tmp, path)
    except FileExistsError:
      raise
    except OSError:
      if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, "File exists", path) from None
      os.replace(tmp, path)
  finally:
    try:
      os.unlink(tmp)
    except OSError:
      pass
