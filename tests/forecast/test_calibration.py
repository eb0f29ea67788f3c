"""Rolling recalibration (forecast/calibration.py): it makes a miscalibrated spread
calibrated, keeps the median and the order of the quantiles, and reads only windows whose
targets were observed before each forecast, of the same series."""

import numpy as np
import pytest
from scipy import stats

from flaxlstm.forecast import calibration

LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
H = 4


class Normal:
  """Predictive normals with means `mu` and scales `sigma`, `(N, H, T)` each."""

  def __init__(self, mu, sigma):
    self.mu, self.sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)

  def quantiles(self, levels):
    z = stats.norm.ppf(np.asarray(levels, np.float64))
    return self.mu[..., None] + self.sigma[..., None] * z

  def point(self):
    return self.mu


def _panel(n, scale, rng, series=0):
  """`n` consecutive windows of one series whose targets have spread `scale` while the
  forecasts say 1: the source tuple and the distribution."""
  mu = rng.normal(size=(n, H, 1))
  y = mu + scale * rng.normal(size=(n, H, 1))
  dist = Normal(mu, np.ones_like(mu))
  starts = np.arange(n, dtype=np.int64) + 1000 * series
  return dist, y, starts, np.full(n, series, np.int64)


def test_a_too_narrow_spread_is_widened_to_nominal_coverage():
  rng = np.random.default_rng(0)
  dist, y, starts, series = _panel(3000, 2.0, rng)
  cal = calibration.recalibrate(dist, starts, series, (dist, y, starts, series), H, 400, LEVELS)
  assert not cal.calibrated[:200].any() and cal.calibrated[204:].all()  # 200 = 400 / 2
  late = slice(1000, None)  # every forecast here has its full 400 windows
  k = cal.factors[late, 0]
  np.testing.assert_allclose(k[:, LEVELS.index(0.5)], 1.0)
  others = [i for i, level in enumerate(LEVELS) if level != 0.5]
  assert np.abs(k[:, others] - 2.0).max() < 0.3  # the spread was half the truth
  q = cal.quantiles((0.1, 0.9))[late]
  inside = (q[..., 0] <= y[late]) & (y[late] <= q[..., 1])
  raw = dist.quantiles((0.1, 0.9))[late]
  raw_inside = (raw[..., 0] <= y[late]) & (y[late] <= raw[..., 1])
  assert abs(inside.mean() - 0.8) < 0.02 and raw_inside.mean() < 0.55


def test_the_median_stays_and_quantiles_do_not_cross():
  rng = np.random.default_rng(1)
  dist, y, starts, series = _panel(200, 1.0, rng)
  # Wild factors, wider at inner levels than at outer ones: sorting keeps them in order.
  factors = np.tile(np.array([0.1, 3.0, 5.0, 1.0, 5.0, 3.0, 0.1]), (200, 1, 1))
  cal = calibration.Recalibrated(dist, LEVELS, factors)
  grid = np.linspace(0.01, 0.99, 41)
  q = cal.quantiles(grid)
  assert (np.diff(q, axis=-1) >= 0).all()
  np.testing.assert_allclose(cal.quantiles((0.5,))[..., 0], dist.mu)
  np.testing.assert_allclose(cal.point(), dist.mu)
  # Unsorted levels come back in the order asked.
  np.testing.assert_allclose(cal.quantiles((0.9, 0.1)), cal.quantiles((0.1, 0.9))[..., ::-1])


def test_factors_of_one_leave_the_distribution_and_its_crps():
  rng = np.random.default_rng(2)
  dist, y, _, _ = _panel(50, 1.0, rng)
  cal = calibration.Recalibrated(dist, (0.1, 0.9), np.ones((50, 1, 2)))  # no 0.5 knot
  np.testing.assert_allclose(cal.quantiles(LEVELS), dist.quantiles(LEVELS), atol=1e-12)
  exact = dist.sigma * (  # the closed-form CRPS of a normal
    (z := (y - dist.mu) / dist.sigma) * (2 * stats.norm.cdf(z) - 1)
    + 2 * stats.norm.pdf(z)
    - 1 / np.sqrt(np.pi)
  )
  np.testing.assert_allclose(cal.crps(y), exact, rtol=0.02, atol=1e-3)


def test_a_forecast_reads_only_windows_observed_before_its_block():
  rng = np.random.default_rng(3)
  dist, y, starts, series = _panel(400, 2.0, rng)
  ratios = calibration.spread_ratios(dist, y, LEVELS)
  at = np.array([201, 202, 203], np.int64)  # block 200: windows starting <= 196 are observed
  before, _ = calibration.rolling_factors(ratios, starts, series, at, series[:3], H, 100, LEVELS)
  changed = ratios.copy()
  changed[starts > 196] *= 50.0  # targets not yet observed at row 200
  after, _ = calibration.rolling_factors(changed, starts, series, at, series[:3], H, 100, LEVELS)
  np.testing.assert_array_equal(before, after)
  changed[starts == 196] *= 50.0  # the newest observed window does count
  moved, _ = calibration.rolling_factors(changed, starts, series, at, series[:3], H, 100, LEVELS)
  assert not np.array_equal(before, moved)
  np.testing.assert_array_equal(before[0], before[2])  # one block, one set of factors


def test_too_few_windows_keep_the_head_and_series_do_not_mix():
  rng = np.random.default_rng(4)
  a = _panel(300, 2.0, rng, series=0)
  b = _panel(300, 0.5, rng, series=1)
  source = tuple(np.concatenate([x, z]) for x, z in zip(a[1:], b[1:]))
  ratios = calibration.spread_ratios(
    Normal(np.concatenate([a[0].mu, b[0].mu]), np.ones((600, H, 1))), source[0], LEVELS
  )
  starts, series = np.array([20, 290, 1290]), np.array([0, 0, 1])
  k, enough = calibration.rolling_factors(
    ratios, source[1], source[2], starts, series, H, 100, LEVELS
  )
  np.testing.assert_array_equal(k[0], 1.0)  # 17 windows observed: fewer than 50
  np.testing.assert_array_equal(enough, [False, True, True])
  top = LEVELS.index(0.9)
  assert k[1, 0, top] == pytest.approx(2.0, rel=0.15)  # series 0's spread
  assert k[2, 0, top] == pytest.approx(0.5, rel=0.15)  # series 1's own
