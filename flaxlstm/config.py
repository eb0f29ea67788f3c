"""Config schema, loading, command-line overrides and validation.

A config is an ``ml_collections.ConfigDict``. ``default_config()`` is the whole schema:
every key the code reads exists there with its default, and nothing else may exist.
An experiment file (big_vision style) defines ``get_config()`` or ``get_config(arg)`` and
starts from ``default_config()``::

  from flaxlstm import config as config_lib

  def get_config(arg=None):
    config = config_lib.default_config()
    config.model.features = (128,)
    return config

and is selected as ``path/to/file.py`` or ``path/to/file.py:arg``. Overrides such as
``train.learning_rate=3e-4`` are parsed to the type of the existing value.

This module stays light (no jax, flax, sklearn, pandas): the CLI validates a config before
paying for those imports, and nothing is written to a workdir before it validates.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import json
import math
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from flaxlstm.errors import InputError

# Choices of the string-valued keys. Code that maps a name to behaviour (e.g. initializer
# names to Flax initializers in the model) should cover exactly these names.
SPLITS = ("fractions", "rows", "ett")
SCALERS = ("standard", "robust", "minmax", "none")
FILLS = ("none", "ffill", "interpolate")
INITIALIZERS = ("glorot_uniform", "glorot_normal", "lecun_uniform", "lecun_normal",
                "he_uniform", "he_normal", "orthogonal")
DTYPES = ("float32", "bfloat16")
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "sgd")
LOSSES = ("mse", "mae", "huber")

# Element types of tuple keys whose default is empty, so an override such as
# `data.features=1,2` still yields column names rather than ints.
_ELEMENT_TYPES = {"data.features": str, "data.split_rows": int}


def default_config() -> ml_collections.ConfigDict:
  """Returns the full config schema with its defaults (unlocked, so files can edit it)."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Root of every random key (init, dropout, shuffling, augmentation).

  config.data = data = ml_collections.ConfigDict()
  data.path = ""  # CSV or Parquet file; "" = the bundled ETTh1.csv.
  data.date_column = "date"  # Timestamp column; "" = the table has none.
  data.features = ()  # Input columns; () = every column except the date column.
  data.target = ("OT",)  # Columns to forecast.
  data.lookback = 96  # Input window length (rows).
  data.horizon = 24  # Steps forecast per window.
  data.split = "fractions"  # "fractions" | "rows" | "ett" (12/4/4 months, see DESIGN.md).
  data.split_fractions = (0.7, 0.1, 0.2)  # Train/val/test shares of rows, in time order.
  # split="rows": row boundaries (train_end, val_end[, test_end]): train = [0, train_end),
  # val = [train_end, val_end), test = [val_end, test_end or the last row].
  data.split_rows = ()
  data.scaler = "standard"  # Fit on train rows: "standard" | "robust" | "minmax" | "none".
  data.scale_target = True  # Also scale the target columns (metrics reported both ways).
  data.fill = "none"  # Missing values: "none" (reject them) | "ffill" | "interpolate".
  data.seasonal_period = 24  # Rows per season, for the seasonal-naive baseline (24 = daily).
  # Train-time augmentation strengths; 0 = off. jitter: std of added noise; scaling: std of
  # a per-window scale factor around 1; magnitude_warp: std of a smooth per-window warp
  # curve around 1; window_slice: share of the window to crop and stretch back, in [0, 1).
  data.augment = ml_collections.ConfigDict(
      dict(jitter=0.0, scaling=0.0, magnitude_warp=0.0, window_slice=0.0))

  config.model = model = ml_collections.ConfigDict()
  model.features = (64,)  # Hidden units per stacked LSTM layer.
  model.dropout = 0.0  # Variational dropout on each LSTM layer's inputs.
  model.recurrent_dropout = 0.0  # Variational dropout on the recurrent state h.
  model.inter_layer_dropout = 0.0  # Dropout between stacked layers.
  model.dense_dropout = 0.0  # Dropout before the output head.
  model.forget_bias = 1.0  # Constant added to the forget gate; 1 keeps memory open early.
  model.kernel_init = "glorot_uniform"  # Input kernel initializer, one of INITIALIZERS.
  model.recurrent_init = "orthogonal"  # Recurrent kernel initializer, one of INITIALIZERS.
  model.proj_features = 0  # LSTMP projection of h to this many units; 0 = none.
  model.layer_norm = False  # Layer-normalize the gate pre-activations and the cell.
  model.bidirectional = False  # Read the lookback window both ways.
  model.dtype = "float32"  # Compute dtype: "float32" | "bfloat16" (params stay float32).
  model.remat = False  # Recompute activations in the backward pass to save memory.
  model.unroll = 1  # Time steps unrolled per scan iteration.
  model.predict_delta = False  # Predict the change from the last observed target value.
  model.linear_skip = False  # Add a linear map from the whole window (LSTNet's AR part).

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 32  # Global batch size (split over devices and hosts).
  train.eval_batch_size = 256  # Global batch size for val/test.
  train.max_epochs = 100  # Epoch budget.
  train.max_steps = 0  # Step budget; 0 = no limit (the epoch budget decides).
  train.learning_rate = 1e-3  # Peak learning rate.
  # "constant" | "cosine"; cosine decays to 1% of the peak over the budget: max_steps if > 0, else
  # max_epochs * steps_per_epoch.
  train.schedule = "constant"
  train.warmup_steps = 0  # Linear warmup from 0 to the peak learning rate.
  train.weight_decay = 1e-4  # Decoupled weight decay (AdamW; SGD adds it to the gradient).
  train.clip_norm = 1.0  # Clip gradients to this global norm; 0 = off.
  train.optimizer = "adamw"  # "adamw" | "sgd".
  train.momentum = 0.9  # SGD momentum.
  train.l1 = 0.0  # L1 penalty on kernels, added to the loss.
  train.l2 = 0.0  # L2 penalty on kernels, added to the loss.
  train.loss = "mse"  # "mse" | "mae" | "huber" (on scaled values).
  train.huber_delta = 1.0  # Huber transition point.
  train.patience = 10  # Evaluations without val improvement before stopping; 0 = never.
  train.min_delta = 0.0  # Smallest val-loss decrease that counts as an improvement.
  train.restore_best = True  # Evaluate and export the best checkpoint, not the last.
  train.keep_best = 2  # Best checkpoints kept on disk.
  train.eval_every_steps = 0  # Validate every N steps; 0 = once per epoch.
  train.log_every_steps = 50  # Train-metric logging interval.
  # Steps whose loss or gradient is NaN/inf are skipped (no update); more than this many
  # stops the run with an error naming the step.
  train.max_nonfinite_steps = 10

  # Device mesh (see flaxlstm/parallel.py); -1 = all remaining devices. The global batch is
  # split over data x fsdp; params and optimizer state are split over fsdp (FSDP) and the
  # LSTM gate axis over model.
  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1
  mesh.fsdp = 1
  mesh.model = 1
  return config


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any],
            prefix: str = "") -> dict[str, Any]:
  """Returns {"a.b.c": value} for every leaf of a (nested) config."""
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):  # ConfigDict isn't one.
      flat.update(flatten(value, f"{name}."))
    else:
      flat[name] = value
  return flat


def load_config_file(path: str | pathlib.Path,
                     arg: str | None = None) -> ml_collections.ConfigDict:
  """Runs ``get_config()`` (or ``get_config(arg)``) of a Python config file.

  No overrides and no validation: experiment files use this to extend a sibling file.

  Args:
    path: the ``.py`` file.
    arg: the part after ``:`` in ``file.py:arg``, passed to ``get_config``; None passes
      nothing.

  Returns:
    The ConfigDict the file builds.

  Raises:
    InputError: the file is missing, defines no usable ``get_config`` or fails inside.
  """
  path = pathlib.Path(path)
  where = f"config file '{path}'"
  if not path.is_file():
    raise InputError(f"{where} does not exist")
  # A name per file, so files loaded side by side (e.g. extending a sibling) don't collide.
  module_name = "_flaxlstm_config_" + re.sub(r"\W", "_", str(path.resolve()))
  spec = importlib.util.spec_from_file_location(module_name, path)
  if spec is None or spec.loader is None:
    raise InputError(f"{where} cannot be imported as Python")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # Whatever the file does wrong is the user's input problem.
    raise InputError(f"{where} failed to import: {_describe(e)}") from e
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise InputError(f"{where} defines no get_config()")
  args = () if arg is None else (arg,)
  try:
    inspect.signature(get_config).bind(*args)
  except TypeError:
    wanted = "no argument" if arg is None else f"the argument {arg!r}"
    raise InputError(f"{where}: get_config() does not accept {wanted}") from None
  try:
    config = get_config(*args)
  except InputError as e:  # The file's own complaint (e.g. a bad arg) is already worded.
    raise InputError(f"{where}: {e}") from e
  except Exception as e:
    raise InputError(f"{where}: get_config() raised {_describe(e)}") from e
  if isinstance(config, Mapping) and not isinstance(config, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(config)
  if not isinstance(config, ml_collections.ConfigDict):
    raise InputError(
        f"{where}: get_config() returned {type(config).__name__}, not a ConfigDict")
  return config


def load_config(spec: str | None,
                overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Builds, overrides and validates the config for a run.

  Args:
    spec: ``path.py``, ``path.py:arg`` or a ``config.json`` written by a run (to repeat
      it); None gives ``default_config()``.
    overrides: ``"a.b.c=value"`` strings, applied in order; a ``--config.`` prefix is
      accepted.

  Returns:
    The validated, locked config (values may change, keys may not be added).

  Raises:
    InputError: on any problem, with a one-line message naming the file, key and value.
  """
  if spec is None:
    config = default_config()
  elif spec.endswith(".json"):
    path = pathlib.Path(spec)
    try:
      text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
      raise InputError(f"config file '{spec}' cannot be read: {_describe(e)}") from None
    try:
      config = config_from_json(text)
    except InputError as e:
      raise InputError(f"config file '{spec}': {e}") from None
  else:
    match = re.fullmatch(r"(.+?\.py)(?::(.*))?", spec)
    if match is None:
      raise InputError(f"config file '{spec}': expected path.py, path.py:arg or a .json")
    config = load_config_file(match.group(1), match.group(2))
    # Stray keys are the file's fault; say so before the overrides muddy the waters.
    try:
      _check_keys(config)
    except InputError as e:
      raise InputError(f"config file '{match.group(1)}': {e}") from None
  for override in overrides:
    apply_override(config, override)
  validate(config)
  config.lock()
  return config


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Sets one ``"a.b.c=value"`` in place, parsing the value to the existing key's type."""
  key, sep, text = override.partition("=")
  key = key.strip().removeprefix("--").removeprefix("config.")
  if not sep or not key:
    raise InputError(f"bad config override {override!r}: expected key=value")
  flat = flatten(config)
  if key not in flat:
    if any(name.startswith(key + ".") for name in flat):
      raise InputError(f"config key '{key}' is a section; set one of its keys")
    raise InputError(unknown_key_message(key, flat))
  value = parse_value(key, text, flat[key])
  *parents, leaf = key.split(".")
  node = config
  for name in parents:
    node = node[name]
  node[leaf] = value


def parse_value(key: str, text: str, default: Any) -> Any:
  """Parses override text to the type of ``default`` (the value it replaces)."""
  text = text.strip()
  try:
    if not isinstance(default, tuple):
      return _parse_scalar(text, type(default))
    inner = text
    if len(inner) >= 2 and inner[0] + inner[-1] in ("()", "[]"):
      inner = inner[1:-1]
    items = [_unquote(item.strip()) for item in inner.split(",")]
    if items and not items[-1]:  # "64," is the one-tuple (64,); "" and "()" are empty.
      items.pop()
    element_type = _element_type(key, default)
    if element_type is None:
      return tuple(_infer(item) for item in items)
    return tuple(_parse_scalar(item, element_type) for item in items)
  except ValueError:
    raise InputError(
        f"config key '{key}': expected {_type_name(key, default)}, got {text!r}") from None


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises InputError (one line, naming key and value) unless the config is usable."""
  _check_keys(config)
  flat = flatten(config)
  for key, default in flatten(default_config()).items():
    _check_type(key, flat[key], default)

  def check(key: str, ok: bool, requirement: str) -> None:
    if not ok:
      raise InputError(f"config key '{key}' = {flat[key]!r}: {requirement}")

  def positive(key: str) -> None:
    check(key, flat[key] > 0, "must be > 0")

  def non_negative(key: str) -> None:
    check(key, flat[key] >= 0, "must be >= 0")

  def probability(key: str) -> None:
    check(key, 0 <= flat[key] < 1, "must be in [0, 1)")

  non_negative("train.max_nonfinite_steps")
  for axis in ("mesh.data", "mesh.fsdp", "mesh.model"):
    check(axis, flat[axis] == -1 or flat[axis] >= 1, "must be -1 (all remaining) or >= 1")

  def choice(key: str, choices: Sequence[str]) -> None:
    check(key, flat[key] in choices, f"must be one of {', '.join(choices)}")

  check("seed", 0 <= flat["seed"] < 2**31, "must be in [0, 2**31)")
  # Upper bounds keep absurd sizes from reaching JAX as overflow tracebacks.
  for key in ("train.batch_size", "train.eval_batch_size", "data.lookback", "data.horizon"):
    check(key, flat[key] <= 2**20, "must be <= 2**20")
  check("model.features", all(f <= 2**16 for f in flat["model.features"]),
        "layer sizes must be <= 65536")
  check("model.proj_features", flat["model.proj_features"] <= 2**16, "must be <= 65536")
  for key in ("data.lookback", "data.horizon", "data.seasonal_period", "train.batch_size",
              "train.eval_batch_size", "train.max_epochs", "train.log_every_steps",
              "train.learning_rate", "train.huber_delta"):
    positive(key)
  for key in ("train.max_steps", "train.warmup_steps", "train.patience",
              "train.weight_decay", "train.clip_norm", "train.l1", "train.l2",
              "train.min_delta", "train.eval_every_steps", "model.proj_features",
              "data.augment.jitter", "data.augment.scaling", "data.augment.magnitude_warp"):
    non_negative(key)
  for key in ("model.dropout", "model.recurrent_dropout", "model.inter_layer_dropout",
              "model.dense_dropout", "train.momentum", "data.augment.window_slice"):
    probability(key)
  check("train.keep_best", flat["train.keep_best"] >= 1, "must be >= 1")
  check("model.unroll", flat["model.unroll"] >= 1, "must be >= 1")
  choice("data.split", SPLITS)
  choice("data.scaler", SCALERS)
  choice("data.fill", FILLS)
  choice("model.kernel_init", INITIALIZERS)
  choice("model.recurrent_init", INITIALIZERS)
  choice("model.dtype", DTYPES)
  choice("train.schedule", SCHEDULES)
  choice("train.optimizer", OPTIMIZERS)
  choice("train.loss", LOSSES)
  features = flat["model.features"]
  check("model.features", bool(features) and all(n > 0 for n in features),
        "must be one or more layer sizes > 0")
  check("data.target", bool(flat["data.target"]), "must name at least one column")
  for key in ("data.features", "data.target"):
    names = flat[key]
    check(key, all(names) and len(set(names)) == len(names),
          "column names must be non-empty and distinct")
  fractions = flat["data.split_fractions"]
  check("data.split_fractions",
        len(fractions) == 3 and all(f > 0 for f in fractions) and sum(fractions) <= 1 + 1e-9,
        "must be three shares (train, val, test), each > 0, summing to at most 1")
  rows = flat["data.split_rows"]
  if flat["data.split"] == "rows":
    check("data.split_rows",
          len(rows) in (2, 3) and rows[0] > 0 and all(a < b for a, b in zip(rows, rows[1:])),
          "split='rows' needs increasing row boundaries (train_end, val_end[, test_end])")
  else:
    # Setting boundaries but forgetting split=rows would silently split by fractions.
    check("data.split_rows", not rows, "is only used with data.split='rows'")


# A run's config.json also says what the run was trained on (data file, size, SHA-256)
# under this key; it is not part of the config, and reading a config.json ignores it.
RUN_RECORD_KEY = "_run"


def config_to_json(config: ml_collections.ConfigDict,
                   run_record: Mapping[str, Any] | None = None) -> str:
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
  tuples, and keys added to the schema since the file was written get their defaults.
  A run record (``RUN_RECORD_KEY``) is ignored: see ``split_run_record``.
  """
  data = split_run_record(text)[0]
  config = default_config()
  schema = flatten(config)
  for key, value in flatten(data).items():
    if key not in schema:
      raise InputError(unknown_key_message(key, schema))
    if isinstance(schema[key], tuple) and isinstance(value, list):
      value = tuple(value)
    _check_type(key, value, schema[key])
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
  validate(config)
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


def _check_keys(config: ml_collections.ConfigDict) -> None:
  """Rejects keys outside the schema (typos like train.lr) and missing keys."""
  schema = flatten(default_config())
  flat = flatten(config)
  for key in flat:
    if key not in schema:
      raise InputError(unknown_key_message(key, schema))
  for key in schema:
    if key not in flat:
      raise InputError(
          f"config key '{key}' is missing (start from flaxlstm.config.default_config())")


def _check_type(key: str, value: Any, default: Any) -> None:
  """Rejects a value whose type differs from the schema default's, and non-finite floats."""
  if isinstance(default, tuple):
    element_type = _element_type(key, default)
    ok = isinstance(value, tuple) and (
        element_type is None or all(_is_a(v, element_type) for v in value))
  else:
    ok = _is_a(value, type(default))
  if not ok:
    raise InputError(
        f"config key '{key}': expected {_type_name(key, default)}, got {value!r}")
  values = value if isinstance(value, tuple) else (value,)
  if any(isinstance(v, float) and not math.isfinite(v) for v in values):
    raise InputError(f"config key '{key}' = {value!r}: must be finite")


def _is_a(value: Any, kind: type) -> bool:
  """isinstance, except that bools are not numbers and ints pass as floats."""
  if isinstance(value, bool) and kind is not bool:
    return False
  return isinstance(value, (int, float) if kind is float else kind)


def _element_type(key: str, default: tuple[Any, ...]) -> type | None:
  """The element type of a tuple key, or None when nothing says (then it is inferred)."""
  return type(default[0]) if default else _ELEMENT_TYPES.get(key)


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


def _type_name(key: str, default: Any) -> str:
  if isinstance(default, tuple):
    element_type = _element_type(key, default)
    return f"a tuple of {element_type.__name__}" if element_type else "a tuple"
  return type(default).__name__


def unknown_key_message(key: str, known: Mapping[str, Any]) -> str:
  """Names the unknown key and, when one is close, the key the user probably meant."""
  section, _, leaf = key.rpartition(".")
  # Abbreviations (lr, wd, bs) match the initials of snake_case names; difflib misses them.
  guesses = [name for name in known
             if name.rpartition(".")[0] == section
             and "".join(p[0] for p in name.rpartition(".")[2].split("_")) == leaf]
  guesses += difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
  message = f"unknown config key '{key}'"
  if guesses:
    message += f" (did you mean '{guesses[0]}'?)"
  return message


def _describe(error: BaseException) -> str:
  """Formats an exception on one line: the CLI prints messages as `error: <one line>`."""
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text}" if text else type(error).__name__
