"""Tests for flaxlstm.config: schema and specs, recipes and experiment files, overrides,
validation, renamed keys, JSON."""

import json
import subprocess
import sys

import pytest

from flaxlstm import config as config_lib
from flaxlstm.errors import InputError


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


def test_defaults_validate_and_round_trip_through_the_spec():
  spec = config_lib.to_spec(config_lib.default_config())
  assert spec == config_lib.RunSpec()
  assert config_lib.to_config(spec).to_dict() == config_lib.default_config().to_dict()
  config = config_lib.load_config(None)
  assert config.train.learning_rate == 1e-3 and config.data.target == ("OT",)


def test_cell_and_encoder_options_are_config_keys_by_name():
  """`model.cell.*` are the options every cell takes (and the kernel), `model.lstm.*` the
  LSTM's own: both read from the classes that declare them."""
  from flaxlstm.nn.cells import base, lstm

  config = config_lib.default_config()
  assert set(config.model.cell) == {f.name for f in base.COMMON_OPTIONS} | {"implementation"}
  assert set(config.model.lstm) == {f.name for f in lstm.LSTM_OPTIONS}
  assert config.model.cell.kernel_init == "glorot_uniform" and config.model.cell.dtype == ""
  assert config.model.lstm.proj_features is None and config.model.encoder == "lstm"
  spec = config_lib.to_spec(
    config_lib.load_config(
      None,
      [
        "model.cell.kernel_init=orthogonal",
        "model.lstm.proj_features=4",
        "model.cell.dtype=bfloat16",
      ],
    )
  )
  options = spec.model.cell_options
  assert options["kernel_init"] is base.INITIALIZERS["orthogonal"]
  assert options["dtype"] == base.DTYPES["bfloat16"]
  assert spec.model.options_of("lstm") == {"proj_features": 4}
  assert (
    config_lib.load_config(None, ["model.lstm.proj_features=none"]).model.lstm["proj_features"]
    is None
  )


def test_specs_are_valid_by_construction():
  with pytest.raises(InputError, match="config key 'data.lookback' = 0: must be > 0"):
    config_lib.DataSpec(lookback=0)
  # Choices are checked against their registries, by the schema (`to_spec` runs it).
  spec = config_lib.RunSpec(train=config_lib.TrainSpec(optimizer="rmsprop"))
  with pytest.raises(InputError, match="'train.optimizer' = 'rmsprop'"):
    config_lib.validate(spec)


@pytest.mark.parametrize("old, new", sorted(config_lib.RENAMED.items()))
def test_renamed_keys_name_the_new_key(old, new):
  assert _error(None, [f"{old}=1"]) == f"config key '{old}' was renamed to '{new}'"


def test_a_run_directory_of_an_earlier_version_is_read_with_its_keys_moved():
  old = config_lib.default_config().to_dict()
  model = old["model"]
  cell = model.pop("cell")
  del model["hidden_sizes"]
  model.update(
    features=[32, 16],
    forget_bias=0.0,
    kernel_init="lecun_normal",
    recurrent_init=cell["recurrent_kernel_init"],
    proj_features=0,
    layer_norm=True,
    dtype="float32",
  )
  config = config_lib.config_from_json(json.dumps(old))
  assert config.model.hidden_sizes == (32, 16)
  assert (
    config.model.lstm.forget_bias,
    config.model.cell.kernel_init,
    config.model.lstm.layer_norm,
  ) == (0.0, "lecun_normal", True)
  assert config.model.lstm.proj_features is None and config.model.cell.dtype == ""
  # A run of the version before the LSTM's options left `model.cell`.
  before_v3 = config_lib.default_config().to_dict()
  before_v3["model"]["cell"].update(forget_bias=0.5, proj_features=3, layer_norm=True)
  del before_v3["model"]["lstm"], before_v3["model"]["encoder"]
  config = config_lib.config_from_json(json.dumps(before_v3))
  assert dict(config.model.lstm) == {"forget_bias": 0.5, "proj_features": 3, "layer_norm": True}
  assert config.model.encoder == "lstm"


def test_import_is_light():
  # The CLI validates configs before paying for jax. flaxlstm/__init__ may import flax for
  # the nn API, so count only what importing config adds on top of the package.
  code = (
    "import json, sys, flaxlstm; before = set(sys.modules); import flaxlstm.config; "
    "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert not {"jax", "flax", "orbax", "sklearn", "pandas"} & set(json.loads(out.stdout))


@pytest.mark.parametrize(
  "name",
  [
    "ett",
    "ett:48",
    "ett_univariate:168",
    "ett_multivariate:48",
    "panel:48",
    "seed_example1",
    "seed_example2",
    "seed_example3",
  ],
)
def test_packaged_recipes_load_by_name(name):
  config = config_lib.load_config(name)
  assert config.data.horizon == int(name.split(":")[1]) if ":" in name else 24
  assert name.split(":")[0] in config_lib.recipe_names()


def test_a_packaged_recipe_is_found_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert config_lib.load_config("ett").data.split == "ett"
  assert "no packaged recipe named 'ettt'" in _error("ettt")


def test_seed_recipes_build_on_each_other():
  one, two, three = (config_lib.load_config(f"seed_example{i}") for i in (1, 2, 3))
  assert one.model.hidden_sizes == (512, 256) and one.train.learning_rate == 1e-4
  assert (one.data.scaler, one.model.dropout) == ("none", 0.0)
  assert (
    two.data.scaler,
    two.model.dropout,
    two.model.recurrent_dropout,
    two.model.dense_dropout,
  ) == ("none", 0.2, 0.2, 0.5)
  assert (three.data.scaler, three.data.scale_target, three.model.dense_dropout) == (
    "standard",
    True,
    0.5,
  )


def test_ett_bad_arg():
  assert "'abc'" in _error("ett:abc")


@pytest.mark.parametrize(
  "override, key, value",
  [
    ("train.restore_best=no", "train.restore_best", False),
    ("model.lstm.layer_norm=TRUE", "model.lstm.layer_norm", True),
    ("model.bidirectional=1", "model.bidirectional", True),
    ("train.batch_size=128", "train.batch_size", 128),
    ("train.learning_rate=1e-4", "train.learning_rate", 1e-4),
    ("train.weight_decay=0", "train.weight_decay", 0.0),
    ("data.path=/data/x.csv", "data.path", "/data/x.csv"),
    ("model.hidden_sizes=128,64", "model.hidden_sizes", (128, 64)),
    ("model.hidden_sizes=(128, 64)", "model.hidden_sizes", (128, 64)),
    ("model.hidden_sizes=[32]", "model.hidden_sizes", (32,)),
    ("model.hidden_sizes=256", "model.hidden_sizes", (256,)),
    ("data.split_fractions=0.6,0.2,0.2", "data.split_fractions", (0.6, 0.2, 0.2)),
    ("data.target=OT,HUFL", "data.target", ("OT", "HUFL")),
    ("data.features=('OT', \"HUFL\")", "data.features", ("OT", "HUFL")),
    ("data.features=", "data.features", ()),
    ("data.features=*", "data.features", ("*",)),
    ("data.target=*", "data.target", ("*",)),
    ("data.split=auto", "data.split", "auto"),
    ("data.split=tsl", "data.split", "tsl"),
    ("--config.data.augment.jitter=0.05", "data.augment.jitter", 0.05),
  ],
)
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
    "unknown config key 'train.lr' (did you mean 'train.learning_rate'?)"
  )
  assert "did you mean 'model.hidden_sizes'" in _error(None, ["model.hidden_sizs=3"])


@pytest.mark.parametrize(
  "override, expected",
  [
    ("train.batch_size=abc", "config key 'train.batch_size': expected int, got 'abc'"),
    ("train.batch_size=1.5", "expected int, got '1.5'"),
    ("train.learning_rate=fast", "expected float, got 'fast'"),
    ("train.restore_best=maybe", "expected bool, got 'maybe'"),
    ("model.hidden_sizes=64,x", "expected a tuple of int, got '64,x'"),
    ("train.batch_size", "expected key=value"),
    ("train=1", "'train' is a section"),
  ],
)
def test_bad_override_values(override, expected):
  assert expected in _error(None, [override])


@pytest.mark.parametrize(
  "override, expected",
  [
    ("model.dropout=1.0", "config key 'model.dropout' = 1.0: must be in [0, 1)"),
    ("model.recurrent_dropout=-0.1", "'model.recurrent_dropout' = -0.1"),
    ("train.batch_size=0", "config key 'train.batch_size' = 0: must be > 0"),
    ("train.learning_rate=-1", "config key 'train.learning_rate' = -1.0: must be > 0"),
    ("train.learning_rate=nan", "must be finite"),
    ("data.scaler=foo", "config key 'data.scaler' = 'foo': must be one of standard"),
    ("data.lookback=0", "'data.lookback' = 0"),
    ("train.keep_best=0", "'train.keep_best' = 0"),
    ("model.hidden_sizes=64,0", "'model.hidden_sizes' = (64, 0)"),
    ("data.target=", "'data.target' = ()"),
    ("train.patience=-1", "'train.patience' = -1"),
    ("data.split_fractions=0.9,0.2,0.1", "'data.split_fractions'"),
    ("data.split_fractions=0.9,0,0.1", "'data.split_fractions'"),
    ("data.split_fractions=0.9,0.1", "'data.split_fractions'"),
    ("data.split=rows", "'data.split_rows' = ()"),
    ("data.split_rows=10,20", "only used with data.split='rows'"),
    ("data.features=*,OT", "'*' (every numeric column) stands alone"),
    ("data.known=*", "'*' (every numeric column) is only for data.features and data.target"),
    ("data.split=all", "config key 'data.split' = 'all': must be one of fractions"),
    ("train.grad_accum_steps=3", "'train.grad_accum_steps' = 3: must divide train.batch_size=32"),
    ("train.grad_accum_steps=0", "config key 'train.grad_accum_steps' = 0: must be > 0"),
    ("train.peak_flops_per_device=-1", "'train.peak_flops_per_device' = -1.0: must be >= 0"),
    ("mesh.fsdp_min_size=-1", "config key 'mesh.fsdp_min_size' = -1: must be >= 0"),
    ("mesh.gather_dtype=float16", "'mesh.gather_dtype' = 'float16': must be '' (the"),
  ],
)
def test_out_of_range(override, expected):
  assert expected in _error(None, [override])


@pytest.mark.parametrize(
  "overrides, expected",
  [
    (
      ["data.split=holdout", "data.val_size=0"],
      "config key 'data.val_size' = 0: must be -1 (one horizon) or at least data.horizon=24",
    ),
    (
      ["data.split=holdout", "data.test_size=1"],
      "config key 'data.test_size' = 1: must be -1 (one horizon), 0 (no test split) or at "
      "least data.horizon=24",
    ),
    (["data.val_size=48"], "'data.val_size' = 48: is only used with data.split='holdout'"),
  ],
)
def test_holdout_sizes_out_of_range(overrides, expected):
  assert expected in _error(None, overrides)


def test_a_zero_test_share_is_a_production_fit():
  config = config_lib.load_config(None, ["data.split_fractions=0.9,0.1,0"])
  assert config.data.split_fractions == (0.9, 0.1, 0.0)


# README's long table, given to the default experiment (ETTh1's) on the command line.
LONG = ["data.path=panel.csv", "data.id_column=unique_id", "data.date_column=ds", "data.target=y"]


def test_a_wide_config_pointed_at_a_long_table_takes_its_defaults(tmp_path):
  ett = config_lib.load_config("ett")
  assert (ett.data.features, ett.data.split) == (("OT",), "ett")
  config = config_lib.load_config("ett", [f"--config.{o}" for o in LONG])
  assert (config.data.features, config.data.split) == ((), "holdout")
  assert (config.data.val_size, config.data.test_size) == (-1, -1)  # one horizon each
  assert config_lib.load_config(None, LONG).data.split == "holdout"
  # What the overrides set is kept; the rest of the recipe is untouched.
  config = config_lib.load_config(
    "ett", [*LONG, "data.features=y,promo", "data.split=rows", "data.split_rows=100,200"]
  )
  assert (config.data.features, config.data.split) == (("y", "promo"), "rows")
  assert (config.model.predict_delta, config.train.batch_size) == (True, 64)
  config = config_lib.load_config("ett", [*LONG, "data.test_size=0"])
  assert (config.data.split, config.data.test_size) == ("holdout", 0)
  # A config written for a long table, or a run's config.json, is taken as it is.
  spec = _write(
    tmp_path,
    "def get_config():\n"
    "  config = config_lib.default_config()\n"
    "  config.data.id_column, config.data.target = 'unique_id', ('y',)\n"
    "  config.data.features = ('y', 'promo')\n"
    "  return config\n",
  )
  config = config_lib.load_config(spec, ["data.date_column=ds"])
  assert (config.data.features, config.data.split) == (("y", "promo"), "fractions")
  saved = tmp_path / "config.json"
  saved.write_text(config_lib.config_to_json(config))
  again = config_lib.load_config(str(saved), ["data.target=y"])
  assert again.to_dict() == config.to_dict()


def test_stray_key_in_file(tmp_path):
  spec = _write(
    tmp_path,
    "def get_config():\n"
    "  config = config_lib.default_config()\n"
    "  config.train.lr = 0.1\n"
    "  return config\n",
  )
  message = _error(spec)
  assert "exp.py" in message and "unknown config key 'train.lr'" in message


def test_wrong_type_in_file(tmp_path):
  spec = _write(
    tmp_path,
    "def get_config():\n"
    "  config = config_lib.default_config().to_dict()\n"
    "  config['train']['batch_size'] = '32'\n"
    "  return config\n",
  )
  assert "config key 'train.batch_size': expected int, got '32'" in _error(spec)


def test_config_file_errors(tmp_path):
  assert "does not exist" in _error(str(tmp_path / "missing.py"))
  assert "defines no get_config" in _error(_write(tmp_path, "x = 1\n"))
  spec = _write(tmp_path, "def get_config():\n  raise RuntimeError('bad\\nthing')\n")
  assert "RuntimeError: bad thing" in _error(spec)
  assert "does not accept the argument '3'" in _error(spec + ":3")
  assert "failed to import: SyntaxError" in _error(_write(tmp_path, "def (:\n"))


def test_config_file_arg(tmp_path):
  spec = _write(
    tmp_path,
    "def get_config(arg=None):\n"
    "  config = config_lib.default_config()\n"
    "  config.model.hidden_sizes = tuple(int(n) for n in arg.split('-'))\n"
    "  return config\n",
  )
  config = config_lib.load_config(spec + ":128-64", ["train.batch_size=8"])
  assert config.model.hidden_sizes == (128, 64) and config.train.batch_size == 8


def test_json_round_trip(tmp_path):
  config = config_lib.load_config("ett:48", ["data.features=OT,HUFL", "model.hidden_sizes=32,16"])
  text = config_lib.config_to_json(config)
  back = config_lib.config_from_json(text)
  assert back.to_dict() == config.to_dict()
  assert back.model.hidden_sizes == (32, 16) and back.data.features == ("OT", "HUFL")
  path = tmp_path / "config.json"
  path.write_text(text)
  assert config_lib.load_config(str(path)).to_dict() == config.to_dict()


def test_json_errors():
  with pytest.raises(InputError, match="unknown config key 'train.lr'"):
    config_lib.config_from_json('{"train": {"lr": 0.1}}')
  with pytest.raises(InputError, match="malformed"):
    config_lib.config_from_json("{")


def _other_value(f, section):
  """A config value of option `f` of `model.<section>` other than its default."""
  default = config_lib.default_config().model[section][f.name]
  if "choices" in f.metadata:
    # The last of the table: for initializers "ones", which fits a bias too.
    return [name for name in f.metadata["choices"] if name and name != default][-1]
  if f.metadata.get("kind") is int:
    return 4
  return (not default) if isinstance(default, bool) else default + 0.5


def test_every_cell_option_travels_from_the_config_to_the_cell(monkeypatch):
  """The options are one object from the config to every layer: set in `model.cell` and
  `model.lstm`, each reaches the LSTMCell the Forecaster builds, with nothing copied by
  hand on the way."""
  import jax
  import jax.numpy as jnp

  from flaxlstm.forecast.model import Forecaster
  from flaxlstm.nn.cells import base, lstm
  from flaxlstm.nn.layers import LSTM

  fields = {"cell": base.COMMON_OPTIONS, "lstm": lstm.LSTM_OPTIONS}
  overrides = {(sec, f.name): _other_value(f, sec) for sec, fs in fields.items() for f in fs}
  spec = config_lib.to_spec(
    config_lib.load_config(None, [f"model.{s}.{k}={v}" for (s, k), v in overrides.items()])
  )
  built = []
  make_cell = LSTM.make_cell
  monkeypatch.setattr(LSTM, "make_cell", lambda self: built.append(make_cell(self)) or built[-1])
  Forecaster(horizon=2, n_targets=1, spec=spec.model).init(
    jax.random.key(0), jnp.ones((1, 8, 1)), jnp.ones((1, 1))
  )
  assert built
  for sec, fs in fields.items():
    for f in fs:
      value = overrides[sec, f.name]
      want = f.metadata["choices"][value] if "choices" in f.metadata else value
      assert getattr(built[0], f.name) == want, f.name


def test_a_run_from_before_missing_dates_were_checked_reads_rows_as_steps():
  # Such a run read a series' rows as its steps whatever their dates, and so its
  # evaluate and predict go on doing; a config that says, or a new one, keeps the check.
  old = config_lib.default_config().to_dict()
  del old["data"]["missing_dates"], old["data"]["freq"]
  config = config_lib.config_from_json(json.dumps(old))
  assert (config.data.missing_dates, config.data.freq) == ("keep", "")
  assert config_lib.default_config().data.missing_dates == "error"
  now = config_lib.default_config().to_dict()
  assert config_lib.config_from_json(json.dumps(now)).data.missing_dates == "error"
