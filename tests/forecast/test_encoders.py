"""The cell seam (architecture v3): a cell defined here, unknown to flaxlstm, runs through
`flaxlstm.RNN`, a stack and the `Forecaster` by config, with no edit to flaxlstm/; and the
encoder registry's own rules."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import flaxlstm
from flaxlstm import config as config_lib
from flaxlstm import train as train_lib
from flaxlstm.errors import InputError
from flaxlstm.forecast import encoders
from flaxlstm.nn.cells.base import CellOptions
from flaxlstm.train.assembly import assemble


class ToyCarry(NamedTuple):
  """The toy cell's own carry type: one state, fed back."""

  h: jax.Array


class ToyCell(CellOptions, nn.RNNCellBase):
  r"""A minimal gated unit (Zhou et al., 2016) with a `gain` on its candidate:
  :math:`f = \sigma(W_f x + U_f h + b_f)`, :math:`\tilde h = \tanh(W x + U (f h) + b)`,
  :math:`h' = (1 - f) h + f \cdot \mathrm{gain} \cdot \tilde h`. `gain` is its own option
  (a config key `model.<name>.gain` once registered); the initializers and dtypes are
  `CellOptions`'."""

  gain: float = 1.0

  @nn.compact
  def __call__(self, carry: ToyCarry, x: jax.Array) -> tuple[ToyCarry, jax.Array]:
    dense = lambda name, bias=True: nn.Dense(
      self.features, use_bias=bias, kernel_init=self.kernel_init, dtype=self.dtype, name=name
    )
    h = carry.h
    f = jax.nn.sigmoid(dense("wf")(x) + dense("uf", False)(h))
    candidate = jnp.tanh(dense("w")(x) + dense("u", False)(f * h))
    new = (1 - f) * h + f * self.gain * candidate
    return ToyCarry(new), new

  @nn.nowrap
  def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> ToyCarry:
    del rng
    return ToyCarry(jnp.zeros(input_shape[:-1] + (self.features,), self.param_dtype))

  @property
  def num_feature_axes(self) -> int:
    return 1


B, T, D, H = 3, 7, 2, 5
LENGTHS = np.array([7, 4, 1], np.int32)


def _x(seed=0):
  return np.random.default_rng(seed).standard_normal((B, T, D)).astype(np.float32)


def test_a_foreign_cell_runs_through_rnn_like_flax_rnn():
  x = _x()
  rnn = flaxlstm.RNN(ToyCell(H), return_carry=True)
  params = rnn.init(jax.random.key(0), x)
  carry, ys = rnn.apply(params, x, seq_lengths=LENGTHS)
  want_carry, want = nn.RNN(ToyCell(H), return_carry=True).apply(params, x, seq_lengths=LENGTHS)
  valid = (np.arange(T)[None, :] < LENGTHS[:, None])[..., None]
  np.testing.assert_allclose(ys, np.where(valid, want, 0), rtol=1e-5, atol=1e-6)
  assert isinstance(carry, ToyCarry)  # its own carry type, kept through the loop
  np.testing.assert_allclose(carry.h, want_carry.h, rtol=1e-5, atol=1e-6)
  # And the gradient flows to its parameters through flaxlstm's loop.
  grads = jax.grad(lambda p: rnn.apply(p, x, seq_lengths=LENGTHS)[1].sum())(params)
  assert all(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads))


def test_a_foreign_cell_stacks():
  stack = flaxlstm.StackedRNN(
    lambda h: ToyCell(h), features=(H, 4), dropout=0.2, return_sequences=False
  )
  x = _x()
  params = stack.init(jax.random.key(0), x, deterministic=True)
  assert jax.tree.map(jnp.shape, params["params"]["rnn_1"]["cell"]["wf"])["kernel"] == (H, 4)
  out = stack.apply(params, x, seq_lengths=LENGTHS, deterministic=True)
  assert out.shape == (B, 4)
  dropped = stack.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(dropped, stack.apply(params, x, deterministic=True))


@pytest.fixture
def toy_encoder():
  """ToyCell registered as the encoder "toy" for one test: one call, nothing in flaxlstm/."""
  encoders.register_cell("toy", ToyCell)
  yield
  encoders.ENCODERS.pop("toy")


@pytest.mark.slow  # trains to completion
@pytest.mark.parametrize("decoder", ["dense", "parallel", "recurrent"])
def test_a_foreign_cell_is_a_forecaster_encoder_by_config(tiny, tmp_path, toy_encoder, decoder):
  config = config_lib.load_config(
    tiny["exp"],
    [
      "model.encoder=toy",
      "model.toy.gain=0.5",  # the cell's own option is a config key at once
      "model.cell.kernel_init=lecun_normal",
      f"model.decoder={decoder}",
      f"model.segment_length={0 if decoder == 'dense' else 3}",  # two output segments
      "model.dropout=0.1",
      "train.max_steps=20",
    ],
  )
  spec = config_lib.to_spec(config)
  assert spec.model.options_of("toy") == {"gain": 0.5}
  metrics = train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert metrics["steps"] == 20 and np.isfinite(metrics["test"]["mse"])
  # The parameters are the toy cell's, in the stack's layers and (segments) the decoder.
  params = assemble(spec).abstract_state().params
  assert set(params["encoder"]["rnn_0"]["cell"]) == {"wf", "uf", "w", "u"}
  if decoder != "dense":
    assert set(params["decoder"]["cell"]) == {"wf", "uf", "w", "u"}


def test_registry_rules_are_the_schemas(toy_encoder):
  # A kernel the encoder's cell does not offer is refused at once, naming what it offers.
  with pytest.raises(InputError, match="model.encoder='toy' offers auto, autodiff"):
    config_lib.to_spec(
      config_lib.load_config(None, ["model.encoder=toy", "model.cell.implementation=fused"])
    )
  # An unknown encoder names the registered ones.
  with pytest.raises(InputError, match="must be one of lstm, slstm, mlstm, xlstm, gru, tirex, toy"):
    config_lib.to_spec(config_lib.load_config(None, ["model.encoder=rwkv"]))
  # A registered name may not shadow a model key.
  with pytest.raises(ValueError, match="may not be named 'dropout'"):
    encoders.register_cell("dropout", ToyCell)


@pytest.mark.slow  # trains to completion
def test_the_gru_encoder_ships(tiny, tmp_path):
  metrics = train_lib.train_and_evaluate(
    config_lib.load_config(tiny["exp"], ["model.encoder=gru", "train.max_steps=10"]),
    str(tmp_path / "gru"),
  )
  assert np.isfinite(metrics["val"]["mse"])


@pytest.mark.slow  # trains to completion
@pytest.mark.parametrize("decoder", ["parallel", "dense"])
def test_the_slstm_encoder_trains_through_the_registry(tiny, tmp_path, decoder):
  """`model.encoder=slstm`: a stack of sLSTM cells, its options `model.slstm.*`, with any
  decoder (the parallel one steps the encoder's cell from its (c, n, m, h) carry)."""
  overrides = ["model.encoder=slstm", "model.slstm.num_heads=2", "train.max_steps=10"]
  if decoder == "parallel":
    overrides += ["model.decoder=parallel", "model.segment_length=3"]
  config = config_lib.load_config(tiny["exp"], overrides)
  metrics = train_lib.train_and_evaluate(config, str(tmp_path / "slstm"))
  assert metrics["steps"] == 10 and np.isfinite(metrics["val"]["mse"])
  params = assemble(config_lib.to_spec(config)).abstract_state().params
  assert params["encoder"]["rnn_0"]["cell"]["recurrent_kernel"].shape == (2, 4, 16)


@pytest.mark.slow  # trains to completion
def test_the_mlstm_and_xlstm_encoders_train_through_the_registry(tiny, tmp_path):
  """`model.encoder=mlstm`: a stack of mLSTM cells (the parallel decoder steps the cell from
  its (C, n, m) carry); `model.encoder=xlstm`: an `XLSTMStack`, read by the dense decoder;
  both by config alone. The stack's layout with an sLSTM block, from its abstract state
  (the blocks themselves are checked against the `xlstm` package in tests/nn)."""
  runs = {
    "mlstm": [
      "model.encoder=mlstm",
      "model.mlstm.num_heads=2",
      "model.decoder=parallel",
      "model.segment_length=3",
    ],
    "xlstm": [
      "model.encoder=xlstm",
      "model.decoder=dense",
      "model.hidden_sizes=16",
      "model.xlstm.num_blocks=1",
      "model.xlstm.num_heads=2",
    ],
  }
  for name, overrides in runs.items():
    config = config_lib.load_config(tiny["exp"], overrides + ["train.max_steps=3"])
    metrics = train_lib.train_and_evaluate(config, str(tmp_path / name), quiet=True)
    assert metrics["steps"] == 3 and np.isfinite(metrics["val"]["mse"]), name
  blocks = ["model.xlstm.num_blocks=3", "model.xlstm.slstm_at=1", "model.xlstm.slstm_num_heads=2"]
  config = config_lib.load_config(tiny["exp"], runs["xlstm"] + blocks)
  params = assemble(config_lib.to_spec(config)).abstract_state().params["encoder"]["stack"]
  # Blocks 0 and 2 are mLSTM runs of one block each (scanned: a leading axis of 1).
  assert set(params) == {"mlstm_0", "slstm_1", "mlstm_2", "post_norm"}
  assert params["mlstm_2"]["block"]["mlstm"]["cell"]["gate_kernel"].shape[0] == 1


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    (["model.encoder=xlstm", "model.decoder=parallel"], "must be 'dense'"),
    (["model.encoder=xlstm", "model.xlstm.slstm_at=4"], "block positions"),
    (["model.encoder=mlstm", "model.recurrent_dropout=0.1"], "feeds no state back"),
    (["model.encoder=mlstm", "model.mlstm.num_heads=3"], "multiples of model.mlstm.num_heads"),
  ],
)
def test_the_xlstm_family_encoders_refuse_what_they_cannot_run(tiny, overrides, message):
  with pytest.raises(InputError, match=message):
    config_lib.to_spec(config_lib.load_config(tiny["exp"], overrides))
