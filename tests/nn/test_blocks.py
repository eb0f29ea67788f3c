"""The forecasting blocks (nn/blocks.py) and the Forecaster options built from them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from flaxlstm.config.specs import ModelSpec
from flaxlstm.forecast.model import Forecaster
from flaxlstm.nn.blocks import ParallelDecoder, RecurrentDecoder, RevIN, SegmentEmbedding
from flaxlstm.nn.cells.lstm import LSTMCell


def _x(shape, seed=0, scale=3.0, shift=5.0):
  return shift + scale * jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("affine", [False, True])
def test_revin_normalizes_each_window_and_inverts_exactly(affine):
  x = _x((3, 40, 4))
  revin = RevIN(4, affine=affine)
  params = revin.init(jax.random.key(0), x, method=RevIN.normalize)
  if affine:  # move the affine away from the identity, so the test sees it
    params = {"params": {"scale": jnp.full((4,), 2.0), "bias": jnp.full((4,), 0.5)}}
  x_hat, stats = revin.apply(params, x, method=RevIN.normalize)
  expected = (x - x.mean(1, keepdims=True)) / jnp.sqrt(x.var(1, keepdims=True) + 1e-5)
  if affine:
    expected = 2.0 * expected + 0.5
  np.testing.assert_allclose(x_hat, expected, atol=1e-5)
  back = revin.apply(params, x_hat, stats, method=RevIN.denormalize)
  np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-4)
  # Outputs for a subset of the columns map back with those columns' statistics.
  back_cols = revin.apply(params, x_hat[..., [3, 1]], stats, (3, 1), method=RevIN.denormalize)
  np.testing.assert_allclose(back_cols, x[..., [3, 1]], rtol=1e-5, atol=1e-4)


def test_segment_embedding_embeds_each_segment_alone():
  x = _x((2, 12, 3))
  module = SegmentEmbedding(segment_length=4, features=5)
  params = module.init(jax.random.key(0), x)
  out = module.apply(params, x)
  assert out.shape == (2, 3, 5)
  # Changing segment 0 changes embedding 0 only.
  out2 = module.apply(params, x.at[:, :4].add(1.0))
  assert not np.allclose(out2[:, 0], out[:, 0])
  np.testing.assert_array_equal(out2[:, 1:], out[:, 1:])
  with pytest.raises(ValueError, match="does not split into segments of 5"):
    module.clone(segment_length=5).init(jax.random.key(0), x)


@pytest.mark.parametrize("n_series", [0, 3])
def test_parallel_decoder_equals_one_cell_step_per_segment(n_series):
  """The shared-`h` shortcut computes exactly what m independent LSTM steps compute."""
  b, d, m, s = 6, 8, 4, 5
  carry = (_x((b, d), 1, 1.0, 0.0), jnp.tanh(_x((b, d), 2, 1.0, 0.0)))
  series = jnp.arange(b) % 3 if n_series else None
  dec = ParallelDecoder(
    LSTMCell(d), n_segments=m, segment_length=s, out_features=2, n_series=n_series,
    series_features=3 if n_series else 0,
  )  # fmt: skip
  params = dec.init(jax.random.key(0), carry, series)
  y = dec.apply(params, carry, series)
  assert y.shape == (b, m * s, 2)

  p = params["params"]
  cell = LSTMCell(d)
  pos = p["position_embedding"]
  ref = []
  for j in range(m):
    inp = jnp.broadcast_to(pos[j], (b, d))
    if n_series:
      inp = jnp.concatenate([inp, p["series_embedding"][series]], axis=-1)
    _, h = cell.apply({"params": p["cell"]}, carry, inp)
    ref.append(h @ p["output"]["kernel"] + p["output"]["bias"])
  ref = jnp.stack(ref, 1).reshape(b, m * s, 2)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_parallel_decoder_runs_any_cell_one_step_per_segment():
  """A cell without the LSTM's split step (Flax's GRU) decodes by its own `__call__`."""
  b, d, m, s = 4, 6, 3, 2
  carry = jnp.tanh(_x((b, d), 1, 1.0, 0.0))
  known = _x((b, m, 2), 3, 1.0, 0.0)
  dec = ParallelDecoder(nn.GRUCell(d), n_segments=m, segment_length=s, out_features=1)
  params = dec.init(jax.random.key(0), carry, None, known)
  y = dec.apply(params, carry, None, known)
  p = params["params"]
  ref = []
  for j in range(m):
    inp = jnp.concatenate([jnp.broadcast_to(p["position_embedding"][j], (b, d)), known[:, j]], -1)
    _, h = nn.GRUCell(d).apply({"params": p["cell"]}, carry, inp)
    ref.append(h @ p["output"]["kernel"] + p["output"]["bias"])
  np.testing.assert_allclose(y, jnp.stack(ref, 1).reshape(b, m * s, 1), rtol=1e-5, atol=1e-5)


def test_recurrent_decoder_feeds_back_its_segments():
  b, d = 3, 8
  carry = (jnp.zeros((b, d)), _x((b, d), 1, 1.0, 0.0))
  dec = RecurrentDecoder(LSTMCell(d), n_segments=3, segment_length=4, out_features=1)
  params = dec.init(jax.random.key(0), carry)
  y = dec.apply(params, carry)
  assert y.shape == (b, 12, 1)
  # The first segment is read off the encoder state alone.
  p = params["params"]["output"]
  np.testing.assert_allclose(y[:, :4, 0], carry[1] @ p["kernel"] + p["bias"], rtol=1e-5)


SEGMENT = dict(channels="independent", segment_length=8, decoder="parallel", hidden_sizes=(16,))


def _forecaster(horizon=12, n=3, **kw):
  return Forecaster(horizon=horizon, n_targets=n, spec=ModelSpec(**kw), target_columns=(0, 1, 2))


@pytest.mark.parametrize("decoder", ["dense", "parallel", "recurrent"])
def test_with_predict_delta_every_untrained_decoder_is_the_naive_forecast(decoder):
  # Every decoder's output map (and the highway) starts at zero: train.eval_at_start then
  # scores the naive forecast, which early stopping keeps unless training beats it.
  x = _x((4, 32, 3))
  model = _forecaster(**dict(SEGMENT, decoder=decoder, predict_delta=True, linear_skip=True))
  y_last = x[:, -1] + 0.5  # the last target need not be the last input
  y = model.apply(model.init(jax.random.key(0), x, y_last), x, y_last)
  np.testing.assert_array_equal(y, jnp.broadcast_to(y_last[:, None], (4, 12, 3)))


@pytest.mark.parametrize(
  "kw",
  [
    dict(SEGMENT),
    dict(SEGMENT, decoder="recurrent"),
    dict(channels="independent", hidden_sizes=(16,)),
    dict(SEGMENT, linear_skip=True),
  ],
)
def test_independent_channels_forecast_each_column_from_its_own_past(kw):
  x = _x((4, 32, 3))
  model = _forecaster(**kw)
  params = model.init(jax.random.key(0), x, x[:, -1])
  y = model.apply(params, x, x[:, -1])
  assert y.shape == (4, 12, 3)
  # Without a series embedding the model cannot tell columns apart: permuting the input
  # columns permutes the outputs, and a column's forecast ignores the other columns.
  perm = jnp.array([2, 0, 1])
  np.testing.assert_allclose(
    model.apply(params, x[..., perm], x[:, -1, perm]), y[..., perm], atol=1e-5
  )
  y2 = model.apply(params, x.at[..., 1].add(1.0), x[:, -1])
  np.testing.assert_array_equal(y2[..., [0, 2]], y[..., [0, 2]])


def test_series_embedding_tells_the_columns_apart():
  x = jnp.broadcast_to(_x((4, 32, 1)), (4, 32, 3))  # three identical columns
  model = _forecaster(**SEGMENT, series_embedding=4)
  params = model.init(jax.random.key(0), x, x[:, -1])
  y = model.apply(params, x, x[:, -1])
  assert not np.allclose(y[..., 0], y[..., 1])


def test_revin_forecaster_is_equivariant_to_level_and_scale():
  """RevIN without affine: forecasting a*x + b gives a*forecast(x) + b per window."""
  x = _x((4, 32, 3))
  model = _forecaster(**SEGMENT, revin=True)
  params = model.init(jax.random.key(0), x, x[:, -1])
  y = model.apply(params, x, x[:, -1])
  y2 = model.apply(params, 10.0 * x - 7.0, x[:, -1])
  np.testing.assert_allclose(y2, 10.0 * y - 7.0, rtol=1e-4, atol=1e-3)


def test_segment_encoder_runs_the_fused_recurrence(monkeypatch):
  """The segment model's encoder takes the fused custom-VJP path, over L / S steps."""
  from flaxlstm.nn.kernels import lstm_fused

  calls = []
  real = lstm_fused._fused_recurrence

  def spy(w, b, u, c, h, x, *rest):
    calls.append(x.shape)  # time-major segment embeddings (L / S, B * C, d)
    return real(w, b, u, c, h, x, *rest)

  monkeypatch.setattr(lstm_fused, "_fused_recurrence", spy)
  x = _x((4, 32, 3))
  model = _forecaster(**SEGMENT)
  params = model.init(jax.random.key(0), x, x[:, -1])
  jax.grad(lambda p: model.apply(p, x, x[:, -1]).sum())(params)
  assert calls and all(shape == (32 // 8, 4 * 3, 16) for shape in calls)


def test_stacked_lstm_returns_every_layers_final_carry():
  from flaxlstm.nn.layers import LSTM
  from flaxlstm.nn.stacks import StackedLSTM

  x = _x((3, 10, 4))
  stack = StackedLSTM(features=(6, 5), return_sequences=False, return_carry=True)
  params = stack.init(jax.random.key(0), x)
  carries, out = stack.apply(params, x)
  assert [c[0].shape for c in carries] == [(3, 6), (3, 5)]
  np.testing.assert_array_equal(carries[-1][1], out)  # h of the top layer is the output
  plain = StackedLSTM(features=(6, 5), return_sequences=False)
  np.testing.assert_array_equal(plain.apply(params, x), out)  # same tree, same outputs
  bottom = LSTM(6, return_carry=True).apply({"params": params["params"]["lstm_0"]}, x)
  np.testing.assert_array_equal(bottom[0][0], carries[0][0])


def test_exponential_schedule_keeps_the_peak_then_decays_per_epoch():
  from flaxlstm.config.specs import TrainSpec
  from flaxlstm.train.optim import learning_rate_schedule

  spec = TrainSpec(schedule="exponential", epoch_decay=0.5, decay_after_epochs=2)
  lr = learning_rate_schedule(spec, total_steps=100, steps_per_epoch=10)
  got = [float(lr(s)) for s in (0, 19, 20, 29, 30, 45)]
  np.testing.assert_allclose(got, [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 1.25e-4], rtol=1e-6)


@pytest.mark.parametrize(
  "kw",
  [
    dict(hidden_sizes=(16,)),
    dict(segment_length=4, decoder="parallel", hidden_sizes=(16,)),
    dict(segment_length=4, decoder="recurrent", hidden_sizes=(16,)),
    dict(segment_length=4, decoder="parallel", hidden_sizes=(16,), revin=True),
  ],
)
def test_covariates_reach_encoder_and_decoder(kw):
  """Known-in-advance values over the horizon change the forecast (the decoder reads
  them), as do those over the lookback and the static values (the encoder reads them);
  series ids pick a series embedding."""
  b, length, horizon = 4, 16, 10
  x = _x((b, length, 1))
  known = _x((b, length + horizon, 3), seed=1)
  static = _x((b, 2), seed=2)
  series = jnp.array([0, 1, 2, 1])
  embedding = 0 if kw.get("decoder") == "recurrent" else 4  # it reads no series embedding
  model = Forecaster(
    horizon=horizon,
    n_targets=1,
    spec=ModelSpec(series_embedding=embedding, **kw),
    target_columns=(0,),
    n_series=3,
  )
  params = model.init(jax.random.key(0), x, x[:, -1], known, static, series)
  y = model.apply(params, x, x[:, -1], known, static, series)
  assert y.shape == (b, horizon, 1)

  def changed(**inputs):
    args = {"known": known, "static": static, "series": series, **inputs}
    return not np.allclose(model.apply(params, x, x[:, -1], **args), y)

  assert changed(known=known.at[:, length + horizon - 1].add(1.0))  # the last future step
  assert changed(known=known.at[:, 0].add(1.0))
  assert changed(static=static + 1.0)
  assert changed(series=jnp.array([1, 1, 2, 1])) == bool(embedding)
