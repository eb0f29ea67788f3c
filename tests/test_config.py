"""Tests for flaxlstm.config: schema, experiment files, overrides, validation, JSON."""

import json
import pathlib
import subprocess
import sys

import pytest

from flaxlstm import config as config_lib
from flaxlstm.errors import InputError

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def _error(spec=None, overrides=()) -> str:
  """The one-line InputError message load_config raises."""
  with pytest.raises(InputError) as info:
    config_lib.load_config(spec, overrides)
  message = str(info.value)
  assert "\n" not in message
  return message


def _write(tmp_path, body: str) -> str:
  path = tmp_path / "exp.py"
  path.write_text("from flaxlstm import config as config_lib\n\n" + body)
  return str(path)


def test_defaults_validate():
  config_lib.validate(config_lib.default_config())
  config = config_lib.load_config(None)
  assert config.train.learning_rate == 1e-3 and config.data.target == ("OT",)


def test_import_is_light():
  # The CLI validates configs before paying for jax. flaxlstm/__init__ may import flax for
  # the nn API, so count only what importing config adds on top of the package.
  code = ("import json, sys, flaxlstm; before = set(sys.modules); import flaxlstm.config; "
          "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True)
  assert not {"jax", "flax", "orbax", "sklearn", "pandas"} & set(json.loads(out.stdout))


@pytest.mark.parametrize("name", ["ett.py", "ett.py:48", "seed_example1.py",
                                  "seed_example2.py", "seed_example3.py"])
def test_experiment_files_load(name):
  config = config_lib.load_config(str(EXPERIMENTS / name))
  assert config.data.horizon == (48 if name.endswith(":48") else 24)


def test_seed_recipes_build_on_each_other():
  one, two, three = (config_lib.load_config(str(EXPERIMENTS / f"seed_example{i}.py"))
                     for i in (1, 2, 3))
  assert one.model.features == (512, 256) and one.train.learning_rate == 1e-4
  assert (one.data.scaler, one.model.dropout) == ("none", 0.0)
  assert (two.data.scaler, two.model.dropout, two.model.recurrent_dropout,
          two.model.dense_dropout) == ("none", 0.2, 0.2, 0.5)
  assert (three.data.scaler, three.data.scale_target, three.model.dense_dropout) == (
      "standard", True, 0.5)


def test_ett_bad_arg():
  assert "'abc'" in _error(str(EXPERIMENTS / "ett.py:abc"))


@pytest.mark.parametrize("override, key, value", [
    ("train.restore_best=no", "train.restore_best", False),
    ("model.layer_norm=TRUE", "model.layer_norm", True),
    ("model.bidirectional=1", "model.bidirectional", True),
    ("train.batch_size=128", "train.batch_size", 128),
    ("train.learning_rate=1e-4", "train.learning_rate", 1e-4),
    ("train.weight_decay=0", "train.weight_decay", 0.0),
    ("data.path=/data/x.csv", "data.path", "/data/x.csv"),
    ("model.features=128,64", "model.features", (128, 64)),
    ("model.features=(128, 64)", "model.features", (128, 64)),
    ("model.features=[32]", "model.features", (32,)),
    ("model.features=256", "model.features", (256,)),
    ("data.split_fractions=0.6,0.2,0.2", "data.split_fractions", (0.6, 0.2, 0.2)),
    ("data.target=OT,HUFL", "data.target", ("OT", "HUFL")),
    ("data.features=('OT', \"HUFL\")", "data.features", ("OT", "HUFL")),
    ("data.features=", "data.features", ()),
    ("--config.data.augment.jitter=0.05", "data.augment.jitter", 0.05),
])
def test_overrides_parse(override, key, value):
  config = config_lib.load_config(None, [override])
  got = config_lib.flatten(config)[key]
  assert got == value and type(got) is type(value)


def test_split_rows_override():
  config = config_lib.load_config(None, ["data.split=rows", "data.split_rows=8640,11520"])
  assert config.data.split_rows == (8640, 11520)


def test_empty_default_tuple_inference():
  assert config_lib.parse_value("x", "1, 2.5, a", ()) == (1, 2.5, "a")


def test_unknown_key_suggests():
  assert _error(None, ["train.lr=0.1"]) == (
      "unknown config key 'train.lr' (did you mean 'train.learning_rate'?)")
  assert "did you mean 'model.features'" in _error(None, ["model.featurs=3"])


@pytest.mark.parametrize("override, expected", [
    ("train.batch_size=abc", "config key 'train.batch_size': expected int, got 'abc'"),
    ("train.batch_size=1.5", "expected int, got '1.5'"),
    ("train.learning_rate=fast", "expected float, got 'fast'"),
    ("train.restore_best=maybe", "expected bool, got 'maybe'"),
    ("model.features=64,x", "expected a tuple of int, got '64,x'"),
    ("train.batch_size", "expected key=value"),
    ("train=1", "'train' is a section"),
])
def test_bad_override_values(override, expected):
  assert expected in _error(None, [override])


@pytest.mark.parametrize("override, expected", [
    ("model.dropout=1.0", "config key 'model.dropout' = 1.0: must be in [0, 1)"),
    ("model.recurrent_dropout=-0.1", "'model.recurrent_dropout' = -0.1"),
    ("train.batch_size=0", "config key 'train.batch_size' = 0: must be > 0"),
    ("train.learning_rate=-1", "config key 'train.learning_rate' = -1.0: must be > 0"),
    ("train.learning_rate=nan", "must be finite"),
    ("data.scaler=foo", "config key 'data.scaler' = 'foo': must be one of standard"),
    ("data.lookback=0", "'data.lookback' = 0"),
    ("train.keep_best=0", "'train.keep_best' = 0"),
    ("model.features=64,0", "'model.features' = (64, 0)"),
    ("data.target=", "'data.target' = ()"),
    ("train.patience=-1", "'train.patience' = -1"),
    ("data.split_fractions=0.9,0.2,0.1", "'data.split_fractions'"),
    ("data.split_fractions=0.9,0.1,0", "'data.split_fractions'"),
    ("data.split_fractions=0.9,0.1", "'data.split_fractions'"),
    ("data.split=rows", "'data.split_rows' = ()"),
    ("data.split_rows=10,20", "only used with data.split='rows'"),
])
def test_out_of_range(override, expected):
  assert expected in _error(None, [override])


def test_stray_key_in_file(tmp_path):
  spec = _write(tmp_path, "def get_config():\n"
                          "  config = config_lib.default_config()\n"
                          "  config.train.lr = 0.1\n"
                          "  return config\n")
  message = _error(spec)
  assert "exp.py" in message and "unknown config key 'train.lr'" in message


def test_wrong_type_in_file(tmp_path):
  spec = _write(tmp_path, "def get_config():\n"
                          "  config = config_lib.default_config().to_dict()\n"
                          "  config['train']['batch_size'] = '32'\n"
                          "  return config\n")
  assert "config key 'train.batch_size': expected int, got '32'" in _error(spec)


def test_config_file_errors(tmp_path):
  assert "does not exist" in _error(str(tmp_path / "missing.py"))
  assert "defines no get_config" in _error(_write(tmp_path, "x = 1\n"))
  spec = _write(tmp_path, "def get_config():\n  raise RuntimeError('bad\\nthing')\n")
  assert "RuntimeError: bad thing" in _error(spec)
  assert "does not accept the argument '3'" in _error(spec + ":3")
  assert "failed to import: SyntaxError" in _error(_write(tmp_path, "def (:\n"))


def test_config_file_arg(tmp_path):
  spec = _write(tmp_path, "def get_config(arg=None):\n"
                          "  config = config_lib.default_config()\n"
                          "  config.model.features = tuple(int(n) for n in arg.split('-'))\n"
                          "  return config\n")
  config = config_lib.load_config(spec + ":128-64", ["train.batch_size=8"])
  assert config.model.features == (128, 64) and config.train.batch_size == 8


def test_json_round_trip(tmp_path):
  config = config_lib.load_config(str(EXPERIMENTS / "ett.py:48"),
                                  ["data.features=OT,HUFL", "model.features=32,16"])
  text = config_lib.config_to_json(config)
  back = config_lib.config_from_json(text)
  assert back.to_dict() == config.to_dict()
  assert back.model.features == (32, 16) and back.data.features == ("OT", "HUFL")
  path = tmp_path / "config.json"
  path.write_text(text)
  assert config_lib.load_config(str(path)).to_dict() == config.to_dict()


def test_json_errors():
  with pytest.raises(InputError, match="unknown config key 'train.lr'"):
    config_lib.config_from_json('{"train": {"lr": 0.1}}')
  with pytest.raises(InputError, match="malformed"):
    config_lib.config_from_json("{")
