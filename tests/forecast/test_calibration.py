"""Rolling recalibration (forecast/calibration.py): it makes a miscalibrated spread
calibrated, keeps the median and the order of the quantiles, and reads only windows whose
targets were observed before each forecast: of the same series, or of any series by date
(a panel)."""

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


class Data:
  """What recalibration reads of a `SeriesData`: series of `length` rows each, back to back,
  with hourly dates that start `lag` hours later for each next series."""

  def __init__(self, n_series, length, lag=0):
    self.horizon = H
    self.offsets = np.arange(n_series + 1) * length
    start = np.datetime64("2020-01-01T00", "ns")
    self.dates = np.concatenate(
      [
        start + np.arange(length) * np.timedelta64(1, "h") + i * lag * np.timedelta64(1, "h")
        for i in range(n_series)
      ]
    )

  def row_series(self, rows):
    return np.searchsorted(self.offsets, np.asarray(rows), side="right") - 1


def _windows(n, scale, rng, series=0, length=1000):
  """`n` consecutive windows of series `series` (rows from `series * length + 1`) whose
  targets have spread `scale` while the forecasts say 1: the distribution, the targets
  and the starts."""
  mu = rng.normal(size=(n, H, 1))
  y = mu + scale * rng.normal(size=(n, H, 1))
  starts = np.arange(n, dtype=np.int64) + series * length + 1
  return Normal(mu, np.ones_like(mu)), y, starts


def test_a_too_narrow_spread_is_widened_to_nominal_coverage():
  rng = np.random.default_rng(0)
  data = Data(1, 4000)
  dist, y, starts = _windows(3000, 2.0, rng, length=4000)
  cal = calibration.recalibrate(dist, starts, (dist, y, starts), data, 400, LEVELS)
  # A forecast at row s reads windows known at its block's origin: 200 of them (400 / 2)
  # from start 204 on (windows start at row 1; the block of rows 204-207 starts at 204).
  assert not cal.calibrated[: 204 - 1].any() and cal.calibrated[204 - 1 :].all()
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
  dist, y, _ = _windows(200, 1.0, rng)
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
  dist, y, _ = _windows(50, 1.0, rng)
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
  data = Data(1, 1000)
  dist, y, starts = _windows(400, 2.0, rng)
  ratios = calibration.spread_ratios(dist, y, LEVELS)
  observed, group = calibration.known_times(data, starts, "series")
  at = np.array([201, 202, 203], np.int64)  # block 200: windows starting <= 196 are known
  origins, groups = calibration.origin_times(data, at, "series")

  def factors(r):
    return calibration.rolling_factors(r, observed, group, origins, groups, 100, LEVELS)[0]

  before = factors(ratios)
  changed = ratios.copy()
  changed[starts > 196] *= 50.0  # targets not yet observed at row 200
  np.testing.assert_array_equal(before, factors(changed))
  changed[starts == 196] *= 50.0  # the newest observed window does count
  assert not np.array_equal(before, factors(changed))
  np.testing.assert_array_equal(before[0], before[2])  # one block, one set of factors


def test_too_few_windows_keep_the_head_and_series_do_not_mix():
  rng = np.random.default_rng(4)
  data = Data(2, 1000)
  a, b = _windows(300, 2.0, rng, series=0), _windows(300, 0.5, rng, series=1)
  dist = Normal(np.concatenate([a[0].mu, b[0].mu]), np.ones((600, H, 1)))
  source = (dist, np.concatenate([a[1], b[1]]), np.concatenate([a[2], b[2]]))
  starts = np.array([21, 291, 1291])
  forecasts = Normal(np.zeros((3, H, 1)), np.ones((3, H, 1)))
  cal = calibration.recalibrate(forecasts, starts, source, data, 100, LEVELS)
  np.testing.assert_array_equal(cal.factors[0], 1.0)  # 17 windows known: fewer than 50
  np.testing.assert_array_equal(cal.calibrated, [False, True, True])
  top = LEVELS.index(0.9)
  assert cal.factors[1, 0, top] == pytest.approx(2.0, rel=0.15)  # series 0's spread
  assert cal.factors[2, 0, top] == pytest.approx(0.5, rel=0.15)  # series 1's own


def test_across_a_panel_windows_count_by_date_and_series_mix():
  """Series of 30 windows each cannot hold 100, so each alone never recalibrates; across
  the panel every forecast reads the last 100 windows of any series known at its date."""
  rng = np.random.default_rng(5)
  # Series k's dates start 6k hours after series 0's; each holds 30 complete windows, and
  # the forecasts are the ones past each series' end, as `predict` makes them.
  data = Data(10, 30 + H, lag=6)
  parts = [_windows(30, 2.0, rng, series=k, length=30 + H) for k in range(10)]
  dist = Normal(np.concatenate([p[0].mu for p in parts]), np.ones((300, H, 1)))
  y, starts = np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
  source = (dist, y, starts)
  last = data.offsets[1:]  # the forecast after each series' end
  assert (last == np.array([p[2][-1] for p in parts]) + H).all()
  forecasts = Normal(np.zeros((10, H, 1)), np.ones((10, H, 1)))
  alone = calibration.recalibrate(forecasts, last, source, data, 100, LEVELS, "series")
  assert not alone.calibrated.any()
  panel = calibration.recalibrate(forecasts, last, source, data, 100, LEVELS, "panel")
  assert panel.calibrated.all()
  top = LEVELS.index(0.9)
  assert panel.factors[:, 0, top] == pytest.approx(2.0, rel=0.2)
  # What a forecast reads is fixed by its date: a later series' windows that end after it
  # are not read. Series 0's forecast (the earliest date) reads fewer than series 9's.
  origins, _ = calibration.origin_times(data, last, "panel")
  src_observed, _ = calibration.known_times(data, starts, "panel")
  known = [(src_observed <= o).sum() for o in origins]
  assert known == sorted(known) and known[0] < known[-1]
  changed = y.copy()
  changed[src_observed > origins[0]] += 100.0  # nothing series 0's forecast could know
  again = calibration.recalibrate(
    forecasts, last, (dist, changed, starts), data, 100, LEVELS, "panel"
  )
  np.testing.assert_array_equal(again.factors[0], panel.factors[0])
  assert not np.array_equal(again.factors[-1], panel.factors[-1])
