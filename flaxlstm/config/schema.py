"""The config schema: the specs (specs.py) as a `ml_collections.ConfigDict` and back, and
the checks that read the registries.

`default_config()` builds the ConfigDict that experiment files edit from the specs' defaults
and the registries' options; `to_spec(config)` validates a ConfigDict and turns it back
into a `RunSpec`, which is what the code takes (data, model, trainer, mesh): no module
declares a default of its own.

The model's option sections come from the registries, not from a list here: `model.cell.*`
are the options every cell takes (`flaxlstm.nn.cells.base.CellOptions`) and the layers'
`implementation` (a kernel of `flaxlstm.nn.kernels.KERNELS`); `model.<encoder>.*` are each
registered encoder's own (`model.lstm.forget_bias`, ...: forecast/encoders.py). A new
encoder's options are config keys at once. Choice tables (scalers, fills, splits, losses,
optimizers, encoders, decoders, heads) live with the code that uses them; `validate` reads
them there, and runs each chosen encoder's, decoder's and head's own rules.

Messages name the key and the value: ``config key 'data.lookback' = 0: must be > 0``.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from flaxlstm.config.specs import (
  AugmentSpec,
  Checker,
  DataSpec,
  MeshSpec,
  ModelSpec,
  RunSpec,
  TrainSpec,
)
from flaxlstm.errors import InputError

# Keys of earlier versions: a config naming one is told the new name (and a run directory
# written by an earlier version is read with its keys moved, see `migrate`).
RENAMED = {
  "model.features": "model.hidden_sizes",
  "model.forget_bias": "model.lstm.forget_bias",
  "model.kernel_init": "model.cell.kernel_init",
  "model.recurrent_init": "model.cell.recurrent_kernel_init",
  "model.proj_features": "model.lstm.proj_features",
  "model.layer_norm": "model.lstm.layer_norm",
  "model.dtype": "model.cell.dtype",
  # The LSTM's own options left the options every cell takes (architecture v3).
  "model.cell.forget_bias": "model.lstm.forget_bias",
  "model.cell.proj_features": "model.lstm.proj_features",
  "model.cell.layer_norm": "model.lstm.layer_norm",
}


# ---- the model's option sections, from the registries -----------------------------------------
def model_sections() -> dict[str, tuple[dataclasses.Field, ...]]:
  """`model.cell` and each registered encoder's own section: name -> its option fields."""
  from flaxlstm.forecast import encoders  # the registry lives with the encoders

  sections = {"cell": encoders.cell_fields()}
  sections.update({name: enc.options for name, enc in encoders.ENCODERS.items() if enc.options})
  return sections


def _config_value(f: dataclasses.Field, value: Any) -> Any:
  """An option as the config holds it: a name for an initializer or dtype."""
  choices = f.metadata.get("choices")
  if choices is not None:
    return next(name for name, v in choices.items() if v is value or v == value)
  if value is None:
    return config_dict.placeholder(f.metadata["kind"])
  return value


def _section(fields: tuple[dataclasses.Field, ...], values: Mapping[str, Any]):
  return ml_collections.ConfigDict(
    {f.name: _config_value(f, values.get(f.name, f.default)) for f in fields}
  )


def _options_from_config(
  fields: tuple[dataclasses.Field, ...], config: Any, prefix: str
) -> tuple[tuple[str, Any], ...]:
  """A section's options as (name, value) pairs, names resolved through their tables; only
  those that differ from their defaults, so that a spec has one form (`RunSpec()` is the
  default config's spec) and the code reads the defaults from where they are declared."""
  out = []
  for f in fields:
    value = config[f.name]
    choices = f.metadata.get("choices")
    if choices is not None:
      if value not in choices:
        shown = ", ".join(repr(n) if not n else n for n in choices)
        raise InputError(f"config key '{prefix}{f.name}' = {value!r}: must be one of {shown}")
      value = choices[value]
    if not (value is f.default or (type(value) is type(f.default) and value == f.default)):
      out.append((f.name, value))
  return tuple(out)


# ---- spec <-> ConfigDict ----------------------------------------------------------------------
def default_config() -> ml_collections.ConfigDict:
  """The whole schema with its defaults (unlocked, so experiment files can edit it)."""
  return to_config(RunSpec())


def to_config(spec: Any) -> ml_collections.ConfigDict:
  """A spec (a `RunSpec` or one of its sections) as the ConfigDict that `to_spec` reads."""
  config = ml_collections.ConfigDict()
  for f in dataclasses.fields(spec):
    value = getattr(spec, f.name)
    if dataclasses.is_dataclass(value):
      config[f.name] = to_config(value)
    elif isinstance(spec, ModelSpec) and f.name == "cell":
      config.cell = _section(model_sections()["cell"], spec.cell_options)
    elif isinstance(spec, ModelSpec) and f.name == "encoders":
      for name, fields in model_sections().items():
        if name != "cell":
          config[name] = _section(fields, spec.options_of(name))
    else:
      config[f.name] = value
  return config


def to_spec(config: ml_collections.ConfigDict | Mapping[str, Any]) -> RunSpec:
  """Validates a config and returns it as a `RunSpec`.

  Raises:
    InputError: an unknown, renamed or missing key, a value of the wrong type or out of
      range, a choice that is not registered or whose rules the config breaks; one line
      naming the key and the value.
  """
  check_keys(config)
  flat = flatten(config)
  for key, default in flatten(default_config()).items():
    check_type(key, flat[key], default)
  return validate(_from_config(RunSpec, config, ""))


def _from_config(cls: type, config: Any, prefix: str) -> Any:
  """A spec of class `cls` from its ConfigDict section (checked by the spec itself)."""
  values = {}
  for f in dataclasses.fields(cls):
    kind = _SUBSPECS.get((cls, f.name))
    if kind is not None:
      values[f.name] = _from_config(kind, config[f.name], f"{prefix}{f.name}.")
    elif cls is ModelSpec and f.name == "cell":
      values[f.name] = _options_from_config(model_sections()["cell"], config.cell, "model.cell.")
    elif cls is ModelSpec and f.name == "encoders":
      sections = (
        (name, _options_from_config(fields, config[name], f"model.{name}."))
        for name, fields in model_sections().items()
        if name != "cell"
      )
      values[f.name] = tuple((name, options) for name, options in sections if options)
    else:
      raw = config[f.name]
      values[f.name] = tuple(raw) if isinstance(raw, list) else raw
  return cls(**values)  # checks itself


# Which fields of which spec are specs themselves.
_SUBSPECS = {
  (DataSpec, "augment"): AugmentSpec,
  (RunSpec, "data"): DataSpec,
  (RunSpec, "model"): ModelSpec,
  (RunSpec, "train"): TrainSpec,
  (RunSpec, "mesh"): MeshSpec,
}


# ---- the checks that read the registries --------------------------------------------------------
def validate(spec: RunSpec) -> RunSpec:
  """Checks `spec`'s choices against the tables beside their code and runs the chosen
  encoder's, decoder's and head's own rules; returns `spec`.

  The tables are imported here, when a config is validated, not when the config package is:
  sweeps validate configs before they start anything, and the data tables bring pandas.
  """
  # Imported by module path, not through their packages' __init__ (which import the
  # training loop, which imports the config).
  import flaxlstm.data.calendar as calendar
  import flaxlstm.data.io as io
  import flaxlstm.data.scaling as scaling
  import flaxlstm.data.splits as splits
  import flaxlstm.data.steps as steps
  import flaxlstm.forecast.calibration as calibration
  import flaxlstm.forecast.decoders as decoders
  import flaxlstm.forecast.encoders as encoders
  import flaxlstm.forecast.heads as heads
  import flaxlstm.forecast.model as model
  import flaxlstm.train.optim as optim

  sections = types.SimpleNamespace(
    data=Checker("data.", spec.data),
    model=Checker("model.", spec.model),
    train=Checker("train.", spec.train),
  )
  d, m, t = sections.data, sections.model, sections.train
  d.choice("split", splits.SPLITS)
  d.choice("scaler", scaling.SCALERS)
  d.choice("scaler_scope", scaling.SCOPES)
  d.choice("fill", io.FILLS)
  d.choice("missing_dates", steps.MISSING_DATES)
  if spec.data.freq:
    d.check(
      "freq",
      steps.valid_freq(spec.data.freq),
      f"{spec.data.freq!r} is not a pandas frequency (such as 'h', 'D', 'B', 'W-SUN', 'MS')",
    )
  for name in spec.data.calendar:
    d.check(
      "calendar",
      name in calendar.CALENDAR,
      f"{name!r} is not one of {', '.join(calendar.CALENDAR)}",
    )
  if spec.data.split == "dates":
    d.check(
      "split_dates",
      splits.increasing_dates(spec.data.split_dates),
      "split='dates' needs increasing timestamps (train_end, val_end[, test_end])",
    )
  m.choice("encoder", encoders.ENCODERS)
  m.choice("channels", model.CHANNELS)
  m.choice("linear_skip_init", model.LINEAR_SKIP_INITS)
  m.choice("decoder", decoders.DECODERS)
  m.choice("head", heads.HEADS)
  m.choice("recalibration_scope", calibration.SCOPES)
  t.choice("schedule", optim.SCHEDULES)
  t.choice("optimizer", optim.OPTIMIZERS)
  t.choice("loss", optim.LOSSES)
  encoders.ENCODERS[spec.model.encoder].check(spec, sections)
  decoders.DECODERS[spec.model.decoder].check(spec, sections)
  heads.HEADS[spec.model.head].check(spec, sections)
  return spec


# ---- keys and types ------------------------------------------------------------------------
# Element types of tuple keys whose default is empty, so an override such as
# `data.features=1,2` still yields column names rather than ints.
ELEMENT_TYPES = {"data.features": str, "data.split_rows": int, "model.xlstm.slstm_at": int}


def flatten(
  config: ml_collections.ConfigDict | Mapping[str, Any], prefix: str = ""
) -> dict[str, Any]:
  """Returns {"a.b.c": value} for every leaf of a (nested) config."""
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):  # ConfigDict isn't one.
      flat.update(flatten(value, f"{name}."))
    else:
      flat[name] = value
  return flat


def check_keys(config: ml_collections.ConfigDict | Mapping[str, Any]) -> None:
  """Rejects keys outside the schema (typos like train.lr, renamed keys) and missing keys."""
  schema = flatten(default_config())
  flat = flatten(config)
  for key in flat:
    if key not in schema:
      raise InputError(unknown_key_message(key, schema))
  for key in schema:
    if key not in flat:
      raise InputError(
        f"config key '{key}' is missing (start from flaxlstm.config.default_config())"
      )


def check_type(key: str, value: Any, default: Any) -> None:
  """Rejects a value whose type differs from the schema default's, and non-finite floats.

  ConfigDict checks types on assignment but lets a bool pass for an int and any list for
  a tuple; these are the checks it does not make.
  """
  if isinstance(default, tuple):
    element_type = element_type_of(key, default)
    ok = isinstance(value, (tuple, list)) and (
      element_type is None or all(_is_a(v, element_type) for v in value)
    )
  elif default is None:  # an optional value (a placeholder): None or its type
    ok = value is None or _is_a(value, _placeholder_type(key))
  else:
    ok = _is_a(value, type(default))
  if not ok:
    raise InputError(f"config key '{key}': expected {type_name(key, default)}, got {_shown(value)}")
  values = value if isinstance(value, (tuple, list)) else (value,)
  if any(isinstance(v, float) and not math.isfinite(v) for v in values):
    raise InputError(f"config key '{key}' = {_shown(value)}: must be finite")


def _shown(value: Any) -> str:
  return repr(tuple(value)) if isinstance(value, list) else repr(value)


def _placeholder_type(key: str) -> type:
  section, _, leaf = key.rpartition(".")
  node = default_config()
  for name in section.split("."):
    node = node[name]
  return node.get_type(leaf)


def _is_a(value: Any, kind: type) -> bool:
  """isinstance, except that bools are not numbers and ints pass as floats."""
  if isinstance(value, bool) and kind is not bool:
    return False
  return isinstance(value, (int, float) if kind is float else kind)


def element_type_of(key: str, default: tuple[Any, ...]) -> type | None:
  """The element type of a tuple key, or None when nothing says (then it is inferred)."""
  return type(default[0]) if default else ELEMENT_TYPES.get(key)


def type_name(key: str, default: Any) -> str:
  if isinstance(default, tuple):
    element_type = element_type_of(key, default)
    return f"a tuple of {element_type.__name__}" if element_type else "a tuple"
  if default is None:
    return f"{_placeholder_type(key).__name__} or None"
  return type(default).__name__


def unknown_key_message(key: str, known: Mapping[str, Any]) -> str:
  """Names the unknown key and the key the user probably meant: its new name if it was
  renamed, else a close match."""
  import difflib

  if key in RENAMED:
    return f"config key '{key}' was renamed to '{RENAMED[key]}'"
  section, _, leaf = key.rpartition(".")
  # Abbreviations (lr, wd, bs) match the initials of snake_case names; difflib misses them.
  guesses = [
    name
    for name in known
    if name.rpartition(".")[0] == section
    and "".join(p[0] for p in name.rpartition(".")[2].split("_")) == leaf
  ]
  guesses += difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
  message = f"unknown config key '{key}'"
  if guesses:
    message += f" (did you mean '{guesses[0]}'?)"
  return message


def migrate(data: dict[str, Any]) -> dict[str, Any]:
  """A config dict written by an earlier version (a run's config.json) with its renamed
  keys moved to their new names (`RENAMED`), values converted where their meaning moved,
  and keys added since set to what that version did where that differs from their default."""
  flat = flatten(data)
  if "data" in data and "data.missing_dates" not in flat:
    # Written before dates were checked for gaps: that run read rows as steps, whatever
    # their dates, and reads them so again (flaxlstm/data/steps.py).
    data = {**data, "data": {**data["data"], "missing_dates": "keep"}}
    flat = flatten(data)
  if not any(key in flat for key in RENAMED):
    return data
  moved: dict[str, Any] = {}
  for key, value in flat.items():
    if key == "model.proj_features":
      value = value or None  # 0 meant "no projection"; the cell says None
    elif key == "model.dtype" and value == "float32":
      value = ""  # the compute dtype of float32 params, as the default now says
    moved[RENAMED.get(key, key)] = value
  nested: dict[str, Any] = {}
  for key, value in moved.items():
    *parents, leaf = key.split(".")
    node = nested
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return nested
