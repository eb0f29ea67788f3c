"""Loading configs: experiment files, packaged recipes, a run's config.json, overrides.

An experiment file (big_vision style) defines ``get_config()`` or ``get_config(arg)`` and
starts from ``default_config()``::

  from flaxlstm import config as config_lib

  def get_config(arg=None):
    config = config_lib.default_config()
    config.model.hidden_sizes = (128,)
    return config

`load_config` takes ``path/to/file.py``, ``path/to/file.py:arg``, a packaged recipe's name
(``ett``, ``ett:48``: the files in ``flaxlstm/recipes/``) or a ``config.json`` written by a
run; overrides such as ``train.learning_rate=3e-4`` are parsed to the type of the existing
value. `load_python` is the one importer of experiment, sweep and tune files.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from flaxlstm import fileio
from flaxlstm.config import schema
from flaxlstm.errors import InputError

RECIPES_DIR = pathlib.Path(__file__).resolve().parents[1] / "recipes"
# A run's config.json also says what the run was trained on (data file, size, SHA-256)
# under this key; it is not part of the config, and reading a config.json ignores it.
RUN_RECORD_KEY = "_run"


def recipe_names() -> list[str]:
  """The packaged recipes, by the name `--config` takes."""
  return sorted(p.stem for p in RECIPES_DIR.glob("*.py") if not p.stem.startswith("_"))


def resolve_spec(spec: str) -> tuple[pathlib.Path, str | None]:
  """`file.py[:arg]` or a packaged recipe's `name[:arg]` -> (the file, arg or None)."""
  match = re.fullmatch(r"(.+?\.py)(?::(.*))?", spec)
  if match is not None:
    return pathlib.Path(match.group(1)), match.group(2)
  match = re.fullmatch(r"([A-Za-z_]\w*)(?::(.*))?", spec)
  if match is not None:
    path = RECIPES_DIR / f"{match.group(1)}.py"
    if not path.is_file() or match.group(1).startswith("_"):
      raise InputError(
        f"no packaged recipe named '{match.group(1)}' (packaged: "
        f"{', '.join(recipe_names())}); or give a path to a .py file"
      )
    return path, match.group(2)
  raise InputError(
    f"config file '{spec}': expected path.py, path.py:arg or a .json (or a packaged recipe's name)"
  )


def load_python(
  path: str | pathlib.Path, *, kind: str, function: str, args: tuple[Any, ...] = ()
) -> Any:
  """Imports a Python spec file (experiment, sweep or tune) and returns `function(*args)`.

  Whatever the file does wrong (missing, syntax error, no such function, raising, calling
  sys.exit) is the user's input problem: an InputError naming the file, e.g.
  "sweep file 'x.py' failed to import: NameError: ...".
  """
  path = pathlib.Path(path)
  where = f"{kind} file '{path}'"
  if not path.is_file():
    raise InputError(f"{where} does not exist")
  # A name per file, so files loaded side by side (e.g. extending a sibling) don't collide.
  module_name = f"_flaxlstm_{kind}_" + re.sub(r"\W", "_", str(path.resolve()))
  spec = importlib.util.spec_from_file_location(module_name, path)
  if spec is None or spec.loader is None:
    raise InputError(f"{where} cannot be imported as Python")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SystemExit as e:
    raise InputError(_exited(where, e, "while it was imported")) from None
  except Exception as e:  # Whatever the file does wrong is the user's input problem.
    raise InputError(f"{where} failed to import: {describe(e)}") from e
  fn = getattr(module, function, None)
  if not callable(fn):
    raise InputError(f"{where} defines no {function}()")
  try:
    inspect.signature(fn).bind(*args)
  except TypeError:
    wanted = "no argument" if not args else f"the argument {args[0]!r}"
    raise InputError(f"{where}: {function}() does not accept {wanted}") from None
  try:
    return fn(*args)
  except SystemExit as e:
    raise InputError(_exited(where, e, f"in {function}()")) from None
  except InputError as e:  # The file's own complaint (e.g. a bad arg) is already worded.
    raise InputError(f"{where}: {e}") from e
  except Exception as e:
    raise InputError(f"{where}: {function}() raised {describe(e)}") from e


def _exited(where: str, stop: SystemExit, when: str) -> str:
  """A file that calls sys.exit() (or exit()) would end flaxlstm with its code, 0 too, and
  nothing done: refused like any other error of the file."""
  return f"{where} called sys.exit({stop.code!r}) {when}; it must define its function and return"


def load_config_file(path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
  """Runs ``get_config()`` (or ``get_config(arg)``) of a Python config file.

  No overrides and no validation: experiment files use this to extend a sibling file.
  """
  config = load_python(
    path, kind="config", function="get_config", args=() if arg is None else (arg,)
  )
  where = f"config file '{pathlib.Path(path)}'"
  if isinstance(config, Mapping) and not isinstance(config, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(config)
  if not isinstance(config, ml_collections.ConfigDict):
    raise InputError(f"{where}: get_config() returned {type(config).__name__}, not a ConfigDict")
  return config


def load_config(spec: str | None, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Builds, overrides and validates the config for a run.

  Args:
    spec: ``path.py``, ``path.py:arg``, a packaged recipe ``name[:arg]``, or a
      ``config.json`` written by a run (to repeat it); None gives ``default_config()``.
    overrides: ``"a.b.c=value"`` strings, applied in order; a ``--config.`` prefix is
      accepted.

  Returns:
    The validated, locked config (values may change, keys may not be added).

  Raises:
    InputError: on any problem, with a one-line message naming the file, key and value.
  """
  if spec is None:
    config = schema.default_config()
  elif spec.endswith(".json"):
    path = pathlib.Path(spec)
    try:  # often a run's config.json, maybe in a run someone shared: bounded, plain files
      text = fileio.read_bytes(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
      raise InputError(f"config file '{spec}' cannot be read: {describe(e)}") from None
    try:
      config = config_from_json(text)
    except InputError as e:
      raise InputError(f"config file '{spec}': {e}") from None
  else:
    path, arg = resolve_spec(spec)
    config = load_config_file(path, arg)
    # Stray keys are the file's fault; say so before the overrides muddy the waters.
    try:
      schema.check_keys(config)
    except InputError as e:
      raise InputError(f"config file '{path}': {e}") from None
  wide = not config.data.id_column
  for override in overrides:
    apply_override(config, override)
  if wide and config.data.id_column:
    long_table_defaults(config, {override_key(o) for o in overrides})
  schema.to_spec(config)
  config.lock()
  return config


def long_table_defaults(config: ml_collections.ConfigDict, overridden: set[str]) -> None:
  """A config written for a wide table, pointed at a long one by overrides (they set
  `data.id_column`): the inputs and split it chose for its own table's columns and rows
  take a long table's defaults, unless the overrides set them too.

  The default experiment is ETTh1's: its input column (OT) is not a column of the user's
  table, and its 12/4/4-month split would refuse every series of a panel. On a long table
  `data.features=()` reads each series' own target, and `data.split="holdout"` keeps each
  series' last rows for val and test, however long the series is.
  """
  data = config.data
  if "data.features" not in overridden:
    data.features = ()
  if not overridden & {"data.split", "data.split_rows", "data.split_dates"}:
    data.split, data.split_rows, data.split_dates = "holdout", (), ()


def override_key(override: str) -> str:
  """The config key an ``"a.b.c=value"`` override sets."""
  return override.partition("=")[0].strip().removeprefix("--").removeprefix("config.")


# ---- overrides ---------------------------------------------------------------------------------
def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Sets one ``"a.b.c=value"`` in place, parsing the value to the existing key's type."""
  _, sep, text = override.partition("=")
  key = override_key(override)
  if not sep or not key:
    raise InputError(f"bad config override {override!r}: expected key=value")
  flat = schema.flatten(config)
  if key not in flat:
    if any(name.startswith(key + ".") for name in flat):
      raise InputError(f"config key '{key}' is a section; set one of its keys")
    raise InputError(schema.unknown_key_message(key, flat))
  *parents, leaf = key.split(".")
  node = config
  for name in parents:
    node = node[name]
  default = flat[key]
  kind = node.get_type(leaf) if default is None else None
  node[leaf] = parse_value(key, text, default, kind)


def parse_value(key: str, text: str, default: Any, kind: type | None = None) -> Any:
  """Parses override text to the type of ``default`` (the value it replaces); ``kind`` is
  the type of a key whose value is None now ("none" then means None)."""
  text = text.strip()
  try:
    if default is None or kind is not None:
      return None if text.lower() in ("none", "") else _parse_scalar(text, kind or str)
    if not isinstance(default, tuple):
      return _parse_scalar(text, type(default))
    inner = text
    if len(inner) >= 2 and inner[0] + inner[-1] in ("()", "[]"):
      inner = inner[1:-1]
    items = [_unquote(item.strip()) for item in inner.split(",")]
    if items and not items[-1]:  # "64," is the one-tuple (64,); "" and "()" are empty.
      items.pop()
    element_type = schema.element_type_of(key, default)
    if element_type is None:
      return tuple(_infer(item) for item in items)
    return tuple(_parse_scalar(item, element_type) for item in items)
  except ValueError:
    wanted = f"{kind.__name__} or None" if kind is not None else schema.type_name(key, default)
    raise InputError(f"config key '{key}': expected {wanted}, got {text!r}") from None


def _parse_scalar(text: str, kind: type) -> Any:
  """Parses one value to ``kind``; raises ValueError when it does not fit."""
  if kind is bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise ValueError(text)
  if kind in (int, float, str):
    return kind(text)
  raise ValueError(f"cannot parse {kind.__name__}")


def _infer(text: str) -> int | float | str:
  """Types an element of an empty-default tuple: int if possible, then float, then str."""
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def _unquote(text: str) -> str:
  """Drops one pair of matching quotes, so ("OT", "HUFL") works as a tuple override."""
  if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text[1:-1]
  return text


# ---- config.json ---------------------------------------------------------------------------------
def config_to_json(
  config: ml_collections.ConfigDict, run_record: Mapping[str, Any] | None = None
) -> str:
  """Serializes a config (tuples become JSON lists; config_from_json restores them).

  `run_record`: written under ``RUN_RECORD_KEY`` (a run's config.json).
  """
  data = config.to_dict()
  if run_record is not None:
    data[RUN_RECORD_KEY] = dict(run_record)
  return json.dumps(data, indent=2) + "\n"


def config_from_json(text: str) -> ml_collections.ConfigDict:
  """Parses config_to_json output back into a validated config.

  Values are laid onto ``default_config()``, so lists become tuples where the schema has
  tuples, and keys added to the schema since the file was written get their defaults; keys
  renamed since are moved (`schema.migrate`). A run record (``RUN_RECORD_KEY``) is
  ignored: see ``split_run_record``.
  """
  data = schema.migrate(split_run_record(text)[0])
  config = schema.default_config()
  known = schema.flatten(config)
  for key, value in schema.flatten(data).items():
    if key not in known:
      raise InputError(schema.unknown_key_message(key, known))
    if isinstance(known[key], tuple) and isinstance(value, list):
      value = tuple(value)
    schema.check_type(key, value, known[key])
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
  schema.to_spec(config)
  return config


def split_run_record(text: str) -> tuple[dict[str, Any], Any]:
  """A config.json's text as (config dict, run record or None); InputError if malformed."""
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise InputError(f"config JSON is malformed: {e}") from None
  if not isinstance(data, dict):
    raise InputError("config JSON must be an object")
  record = data.pop(RUN_RECORD_KEY, None)
  return data, record


def describe(error: BaseException) -> str:
  """Formats an exception on one line: the CLI prints messages as `error: <one line>`."""
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text}" if text else type(error).__name__
