"""Files written whole or not at all, and read with one-line errors.

Every file flaxlstm writes into a run directory goes through `write_atomic`: a temporary
sibling, fsync, then a rename, so a reader (or a crash) never sees half a file and a
failed write leaves no `*.tmp` behind. Every JSON or text file it reads back goes through
`read_json`/`read_text`, which name the file in a one-line InputError when it is missing,
a directory, not UTF-8 or not JSON.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
from typing import Any

from flaxlstm.errors import InputError

_TMP_NUMBERS = itertools.count()  # with the pid: temporary names no two writers share


def read_text(path: str | os.PathLike[str], what: str) -> str:
  """The UTF-8 text of a run file; InputError (one line, naming it) if it cannot be."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise InputError(f"{what} {path} is a directory, not a file")
  try:
    with open(path, "rb") as f:
      raw = f.read()
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
