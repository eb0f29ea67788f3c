"""Configs: the specs (one frozen dataclass per section, specs.py), the schema that turns a
ConfigDict into them and checks it against the registries (schema.py), and how configs are
loaded (loading.py).

  config = flaxlstm.config.load_config("ett:48", ["train.max_epochs=20"])
  spec = flaxlstm.config.to_spec(config)   # a RunSpec: what the trainer takes

Light to import (no pandas, sklearn, orbax or matplotlib): sweeps validate every run's
config before they start anything.
"""

from flaxlstm.config.loading import (
  RUN_RECORD_KEY,
  apply_override,
  config_from_json,
  config_to_json,
  load_config,
  load_config_file,
  load_python,
  parse_value,
  recipe_names,
  resolve_spec,
  split_run_record,
)
from flaxlstm.config.schema import (
  RENAMED,
  check_keys,
  default_config,
  flatten,
  to_config,
  to_spec,
  unknown_key_message,
  validate,
)
from flaxlstm.config.specs import AugmentSpec, DataSpec, MeshSpec, ModelSpec, RunSpec, TrainSpec

__all__ = [
  "RUN_RECORD_KEY",
  "RENAMED",
  "AugmentSpec",
  "DataSpec",
  "MeshSpec",
  "ModelSpec",
  "RunSpec",
  "TrainSpec",
  "apply_override",
  "check_keys",
  "config_from_json",
  "config_to_json",
  "default_config",
  "flatten",
  "load_config",
  "load_config_file",
  "load_python",
  "parse_value",
  "recipe_names",
  "resolve_spec",
  "split_run_record",
  "to_config",
  "to_spec",
  "unknown_key_message",
  "validate",
]
