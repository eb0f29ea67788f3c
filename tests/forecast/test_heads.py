"""Distribution heads, their scores and the split-conformal baseline, against scipy and
brute force; the heads inside the Forecaster (decoders, channels, levels)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from flaxlstm.config.specs import ModelSpec
from flaxlstm.forecast import baselines, heads
from flaxlstm.forecast.metrics import HeadDistribution, distribution_metrics
from flaxlstm.forecast.model import Forecaster

LEVELS = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)


def _crps_by_integral(cdf, y):
  """CRPS = int (F(x) - 1{x >= y})^2 dx, numerically."""
  below = integrate.quad(lambda x: cdf(x) ** 2, -np.inf, y)[0]
  above = integrate.quad(lambda x: (1 - cdf(x)) ** 2, y, np.inf)[0]
  return below + above


def test_likelihoods_equal_scipy():
  rng = np.random.default_rng(0)
  y = rng.normal(size=50)
  loc, scale, df = rng.normal(size=50), rng.uniform(0.1, 3, 50), rng.uniform(2.1, 30, 50)
  g = heads.GaussianHead().loss(jnp.stack([loc, scale], -1), y)
  np.testing.assert_allclose(g, -stats.norm.logpdf(y, loc, scale), rtol=1e-5, atol=1e-6)
  t = heads.StudentTHead().loss(jnp.stack([loc, scale, df], -1), y)
  np.testing.assert_allclose(t, -stats.t.logpdf(y, df, loc, scale), rtol=1e-4, atol=1e-5)


def test_student_t_quantiles_equal_scipy_few_values_exactly_many_from_the_table():
  rng = np.random.default_rng(0)
  levels = (np.arange(100) + 0.5) / 200  # the lower half of the CRPS grid
  for n, rtol in ((50, 1e-12), (4 * heads.T_PPF_KNOTS, 5e-7)):  # exact, then the table
    df = np.concatenate([[2.0, 1e6], 2 + rng.gamma(2.0, 5.0, n - 2)])
    np.testing.assert_allclose(
      heads.t_ppf(levels, df), stats.t.ppf(levels, df[:, None]), rtol=rtol, atol=1e-12
    )
  params = np.stack(
    [rng.normal(size=9000), rng.uniform(0.1, 2, 9000), 2 + rng.gamma(2, 5, 9000)], -1
  )
  got = heads.StudentTHead().quantiles(params, LEVELS)  # mirrored about the median
  z = (got - params[:, :1]) / params[:, 1:2]
  np.testing.assert_allclose(z, stats.t.ppf(LEVELS, params[:, 2:3]), rtol=5e-7, atol=1e-9)


@pytest.mark.parametrize("y", [-2.5, 0.3, 4.0])
def test_closed_form_crps_equals_the_integral(y):
  g = np.array([0.5, 1.7])
  crps = heads.GaussianHead().crps(g, np.float64(y))
  assert crps == pytest.approx(_crps_by_integral(stats.norm(0.5, 1.7).cdf, y), rel=1e-6)
  t = np.array([-0.2, 0.8, 3.5])
  crps = heads.StudentTHead().crps(t, np.float64(y))
  assert crps == pytest.approx(_crps_by_integral(stats.t(3.5, -0.2, 0.8).cdf, y), rel=1e-6)


def test_quantile_crps_approaches_the_exact_score():
  # Quantiles of N(0, 1) at many levels: the grid CRPS of the quantile head is close to
  # the Gaussian closed form (the tails beyond the outermost levels are cut flat).
  levels = tuple(np.linspace(0.005, 0.995, 199))
  head = heads.QuantileHead(levels)
  y = np.linspace(-3, 3, 13)
  q = np.broadcast_to(stats.norm.ppf(levels), (13, len(levels)))
  exact = heads.GaussianHead().crps(np.stack([np.zeros(13), np.ones(13)], -1), y)
  np.testing.assert_allclose(head.crps(q, y), exact, rtol=0.02)


def test_quantiles_never_cross_and_the_untrained_head_is_a_unit_normal():
  head = heads.QuantileHead(LEVELS)
  raw = 30 * jax.random.normal(jax.random.key(0), (200, len(LEVELS)))
  q = np.asarray(head.constrain(raw))
  assert (np.diff(q, axis=-1) >= 0).all()  # softplus may underflow to 0, never below
  np.testing.assert_array_equal(q[:, 3], raw[:, 3])  # the median is free
  start = np.asarray(head.constrain(jnp.zeros((1, len(LEVELS)))))[0]
  np.testing.assert_allclose(start, stats.norm.ppf(LEVELS), atol=1e-5)
  # and the pinball loss has finite gradients everywhere
  grad = jax.grad(lambda r: head.loss(head.constrain(r), jnp.zeros(200)).sum())(raw)
  assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize(
  "head", [heads.GaussianHead(), heads.StudentTHead(), heads.QuantileHead(LEVELS)]
)
def test_affine_maps_the_distribution(head):
  """The distribution of `shift + scale * y` has quantiles `shift + scale * q` (negative
  scales reverse them); CRPS scales with |scale|."""
  raw = jax.random.normal(jax.random.key(1), (5, head.n_params))
  params = np.asarray(head.constrain(raw), np.float64)
  shift, scale = np.linspace(-2, 2, 5), np.array([0.5, 2.0, 1.0, 3.0, 0.1])
  moved = head.affine(params, shift, scale)
  levels = np.array([0.1, 0.5, 0.9])
  np.testing.assert_allclose(
    head.quantiles(moved, levels),
    shift[:, None] + scale[:, None] * head.quantiles(params, levels),
    rtol=1e-6,
  )
  y = np.linspace(-1, 1, 5)
  np.testing.assert_allclose(
    head.crps(moved, shift + scale * y), scale * head.crps(params, y), rtol=1e-6
  )
  if isinstance(head, heads.QuantileHead):
    flipped = head.affine(params, shift, -scale)
    assert (np.diff(flipped, axis=-1) >= 0).all()


def test_conformal_quantiles_cover_and_its_crps_is_exact():
  rng = np.random.default_rng(0)
  cal = rng.standard_t(4, size=(2000, 3, 1))
  test_err = rng.standard_t(4, size=(4000, 3, 1))
  point = rng.normal(size=(4000, 3, 1))
  dist = baselines.Conformal(point, cal)
  m = distribution_metrics(dist, point + test_err, np.full(point.shape, 2.0), LEVELS)
  for c in (50, 80, 95):
    assert abs(m[f"coverage_{c}"] - c / 100) < 0.02
  assert len(m["per_lead"]["coverage_80"]) == 3
  assert m["crps_original"] == pytest.approx(2 * m["crps"])
  # CRPS of the empirical distribution by brute force on a small sample
  small = baselines.Conformal(point[:7], cal[:50])
  y = point[:7] + test_err[:7]
  x = point[:7, None] + cal[None, :50]  # (7, 50, 3, 1) samples
  brute = np.abs(x - y[:, None]).mean(1) - 0.5 * np.abs(cal[:50, None] - cal[None, :50]).mean(
    (0, 1)
  )
  np.testing.assert_allclose(small.crps(y), brute, rtol=1e-10, atol=1e-12)


def test_coverage_and_width_by_brute_force():
  rng = np.random.default_rng(1)
  params = np.stack([rng.normal(size=(40, 4, 2)), rng.uniform(0.2, 1, (40, 4, 2))], -1)
  y = rng.normal(size=(40, 4, 2))
  dist = HeadDistribution(heads.GaussianHead(), params)
  m = distribution_metrics(dist, y, np.ones(y.shape), LEVELS)
  lo = params[..., 0] + params[..., 1] * stats.norm.ppf(0.1)
  hi = params[..., 0] + params[..., 1] * stats.norm.ppf(0.9)
  assert m["coverage_80"] == pytest.approx(((lo <= y) & (y <= hi)).mean())
  assert m["width_80"] == pytest.approx((hi - lo).mean())
  np.testing.assert_allclose(m["per_lead"]["coverage_80"], ((lo <= y) & (y <= hi)).mean((0, 2)))


# ---- inside the Forecaster ---------------------------------------------------------------
CASES = {
  "dense": {},
  "parallel": dict(decoder="parallel", segment_length=4),
  "recurrent": dict(decoder="recurrent", segment_length=4),
  "independent": dict(channels="independent", series_embedding=3),
  # the log volatility joins the encoder's inputs, per column (one per row when independent)
  "volatility_input": dict(volatility_scaling=True, volatility_input=True),
  "independent_volatility_input": dict(
    channels="independent", volatility_scaling=True, volatility_input=True
  ),
}


@pytest.mark.parametrize("head", ["gaussian", "student_t", "quantile"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_head_with_every_decoder(head, case):
  spec = ModelSpec(hidden_sizes=(8,), head=head, predict_delta=True, **CASES[case])
  model = Forecaster(horizon=8, n_targets=2, spec=spec, target_columns=(0, 1))
  x = jax.random.normal(jax.random.key(0), (3, 16, 2))
  variables = model.init(jax.random.key(1), x, x[:, -1])
  out = model.apply(variables, x, x[:, -1])
  assert out.shape == (3, 8, 2, model.head.n_params)
  # Level-free: shifting the window shifts the distribution's location, nothing else.
  moved = model.apply(variables, x + 5.0, x[:, -1] + 5.0)
  levels = (0.1, 0.5, 0.9)
  q, q_moved = (HeadDistribution(model.head, o).quantiles(levels) for o in (out, moved))
  np.testing.assert_allclose(q_moved, q + 5.0, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("head", ["gaussian", "quantile"])
@pytest.mark.parametrize("option", ["revin", "volatility_scaling"])
def test_levels_restored_on_location_and_scale(head, option):
  """RevIN (and volatility scaling with predict_delta) make the model equivariant: a window
  shifted and scaled by (c, k) gets a forecast distribution shifted and scaled the same."""
  extra = {"revin": True} if option == "revin" else {"predict_delta": True, option: True}
  spec = ModelSpec(hidden_sizes=(8,), head=head, **extra)
  model = Forecaster(horizon=6, n_targets=1, spec=spec, target_columns=(0,))
  x = jax.random.normal(jax.random.key(2), (4, 12, 1))
  variables = model.init(jax.random.key(3), x, x[:, -1])
  out = model.apply(variables, x, x[:, -1])
  scaled = model.apply(variables, 3.0 * x + 2.0, 3.0 * x[:, -1] + 2.0)
  levels = (0.05, 0.5, 0.95)
  q, q2 = (HeadDistribution(model.head, o).quantiles(levels) for o in (out, scaled))
  np.testing.assert_allclose(q2, 3.0 * q + 2.0, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("channels", ["mixed", "independent"])
def test_volatility_input_tells_the_model_each_columns_volatility(channels):
  """With `volatility_input`, scaling a window is no longer invisible: the encoder reads
  each column's log volatility. Scaling one column changes only that column's forecast when
  the channels are independent, and the forecast in volatility units otherwise."""
  spec = ModelSpec(
    hidden_sizes=(8,),
    head="gaussian",
    predict_delta=True,
    volatility_scaling=True,
    volatility_input=True,
    channels=channels,
  )
  model = Forecaster(horizon=4, n_targets=2, spec=spec, target_columns=(0, 1))
  x = jax.random.normal(jax.random.key(4), (3, 12, 2))
  variables = model.init(jax.random.key(5), x, x[:, -1])
  kernel = variables["params"]["encoder"]["lstm_0"]["cell"]["input_kernel"]
  assert kernel.shape[0] == (2 if channels == "independent" else 4)  # values + log-vol
  # The head starts at zero (the naive forecast, whatever the input): move every weight.
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(6), len(leaves))
  variables = jax.tree.unflatten(
    tree, [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)]
  )
  out = model.apply(variables, x, x[:, -1])
  k = jnp.asarray([3.0, 1.0])  # column 0 three times as volatile
  scaled = model.apply(variables, x * k, x[:, -1] * k)
  # Without the input this would be exact equivariance: column 0's scale times 3.
  assert not np.allclose(scaled[..., 0, 1], 3.0 * out[..., 0, 1], rtol=1e-3)
  if channels == "independent":  # column 1 saw the same window and the same volatility
    np.testing.assert_allclose(scaled[..., 1, :], out[..., 1, :], rtol=1e-5, atol=1e-6)


# ---- the log-normal head (positive targets) ---------------------------------------------
def test_lognormal_likelihood_quantiles_and_crps_equal_scipy():
  rng = np.random.default_rng(3)
  mu, sigma = rng.normal(size=40), rng.uniform(0.1, 2, 40)
  y = rng.lognormal(mu, sigma)
  head, params = heads.LogNormalHead(), np.stack([mu, sigma], -1)
  dist = stats.lognorm(sigma, scale=np.exp(mu))
  np.testing.assert_allclose(head.loss(jnp.asarray(params), y), -dist.logpdf(y), rtol=1e-4)
  levels = np.array([0.025, 0.5, 0.9])
  np.testing.assert_allclose(head.quantiles(params, levels), dist.ppf(levels[:, None]).T)
  np.testing.assert_allclose(head.point(params), dist.median())
  for k in (0, 7):  # the closed form against the integral, also below the support
    one = stats.lognorm(sigma[k], scale=np.exp(mu[k]))
    for target in (y[k], 0.5 * y[k], 3.0 * y[k], -1.0):
      exact = _crps_by_integral(lambda x, d=one: d.cdf(x) if x > 0 else 0.0, target)
      assert head.crps(params[k], np.float64(target)) == pytest.approx(exact, rel=1e-5)


def test_lognormal_scales_but_the_config_refuses_shifts():
  head = heads.LogNormalHead()
  params = np.asarray(head.constrain(jax.random.normal(jax.random.key(4), (5, 2))), np.float64)
  scale = np.array([0.5, 2.0, 1.0, 3.0, 0.1])
  moved = head.affine(params, np.zeros(5), scale)
  levels = np.array([0.1, 0.5, 0.9])
  np.testing.assert_allclose(
    head.quantiles(moved, levels), scale[:, None] * head.quantiles(params, levels), rtol=1e-6
  )
  # a masked-out target of 0 leaves the loss finite, its gradient too
  grad = jax.grad(lambda p: head.loss(p, jnp.zeros(5)).sum())(jnp.asarray(params))
  assert np.isfinite(np.asarray(grad)).all()
