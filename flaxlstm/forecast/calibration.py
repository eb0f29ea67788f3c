r"""Rolling recalibration of predictive distributions (`model.recalibration_windows`).

A distribution head learns its spread on the training years. When a later period is calmer
or wilder in ways the window's own volatility does not show, its intervals cover too little
or too much, and the miss persists: coverage on one month predicts coverage on the next.
Recalibration follows it, as online split conformal does (Gibbs and Candès, 2021, adapt
the level; here the spread is rescaled, as in conformalized quantile regression, Romano
et al., 2019):

For a forecast with median :math:`m` and quantile :math:`q_\tau` at level :math:`\tau`,
the recalibrated quantile is

.. math:: q'_\tau = m + k_\tau (q_\tau - m),

where :math:`k_\tau` is the factor that would have made level :math:`\tau` exact on the
last `N` windows of the same series whose targets were all observed at the forecast's
origin (a window starting at row :math:`s'` is observed from row :math:`s' + H` on): with
ratios :math:`r = (y - m) / (q_\tau - m)` over those windows' leads and values,
:math:`k_\tau` is their :math:`\tau`-quantile above the median and their
:math:`(1 - \tau)`-quantile below it. The median stays, so point forecasts and their
metrics do not change; factors are at least 0; quantiles are re-sorted so that none cross.
Factors are per target column and level, pooled over lead times, and refreshed once per
`H` rows (the forecasts of a block of `H` consecutive origins share the block's first
origin's factors, which is earlier, so nothing unobserved is read). A forecast with fewer
than `N / 2` such windows keeps its factors at 1.

Nothing here is fitted on test targets before they are observed: a test window's factors
come from validation windows and from test windows that ended before its origin, as they
would in production.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flaxlstm.forecast import heads

# Below this |q - m| (in scaled units) a quantile sits on its median: its ratio says nothing.
_EPS = 1e-9


def spread_ratios(dist: Any, y: np.ndarray, levels: Any) -> np.ndarray:
  """`(N, H, T, L)`: each target's offset from the median in units of the quantile's
  offset, :math:`(y - m) / (q_\\tau - m)`, at each level of `levels` (NaN where the
  quantile sits on the median). `dist` has `quantiles(levels) -> (N, H, T, L)`."""
  q = dist.quantiles(np.asarray(levels, np.float64))
  m = dist.quantiles((0.5,))
  d = q - m
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(np.abs(d) > _EPS, (np.asarray(y, np.float64)[..., None] - m) / d, np.nan)


def spread_factors(ratios: np.ndarray, levels: Any) -> np.ndarray:
  """`(T, L)`: the factor per target and level that makes each level exact on `ratios`
  `(n, H, T, L)` (pooled over windows and leads); 1 at the median."""
  levels = np.asarray(levels, np.float64)
  flat = ratios.reshape(-1, *ratios.shape[2:])  # (n * H, T, L)
  # Above the median the quantile holds where r <= k: the tau-quantile of r; below it,
  # where r >= k (the offset is negative): the (1 - tau)-quantile.
  probs = np.where(levels > 0.5, levels, 1 - levels)
  k = np.ones(flat.shape[1:])
  for i, (level, p) in enumerate(zip(levels, probs)):
    if level != 0.5:
      col = flat[..., i]
      k[:, i] = np.nanquantile(col, p, axis=0) if np.isfinite(col).any() else 1.0
  return np.maximum(np.nan_to_num(k, nan=1.0), 0.0)


def rolling_factors(
  ratios: np.ndarray,
  source_starts: np.ndarray,
  source_series: np.ndarray,
  starts: np.ndarray,
  series: np.ndarray,
  horizon: int,
  n_windows: int,
  levels: Any,
) -> tuple[np.ndarray, np.ndarray]:
  """`(M, T, L)`: the factors of each forecast (window `starts`, of `series`), from the
  source windows (`ratios (n, H, T, L)` at `source_starts` of `source_series`): the last
  `n_windows` of the same series observed by its block's first origin (module docstring);
  and `(M,)` whether each had enough of them (else its factors are 1)."""
  source_starts = np.asarray(source_starts, np.int64)
  source_series = np.asarray(source_series, np.int64)
  out = np.ones((len(starts), *ratios.shape[2:]))
  enough = np.zeros(len(starts), bool)
  cache: dict[tuple[int, int], np.ndarray | None] = {}
  need = max(1, -(-n_windows // 2))
  for j, (s, sid) in enumerate(zip(np.asarray(starts, np.int64), np.asarray(series, np.int64))):
    block = int(s - s % horizon)
    key = (int(sid), block)
    if key not in cache:
      # Observed at row `block`: windows that start at or before `block - horizon`.
      pool = np.flatnonzero((source_series == sid) & (source_starts <= block - horizon))
      pool = pool[np.argsort(source_starts[pool], kind="stable")][-n_windows:]
      cache[key] = spread_factors(ratios[pool], levels) if len(pool) >= need else None
    factors = cache[key]
    if factors is not None:
      out[j], enough[j] = factors, True
  return out, enough


class Recalibrated:
  """A predictive distribution with its spread rescaled per forecast: `factors (N, T, L)`
  at `levels` (interpolated linearly in the level between them, 1 at the median, flat
  beyond the outermost). The same interface as `metrics.HeadDistribution`."""

  def __init__(self, dist: Any, levels: Any, factors: np.ndarray, calibrated: Any = None):
    # `calibrated (N,)`: which forecasts had the windows to calibrate on (the rest keep
    # factors of 1); all of them if not given.
    self.calibrated = np.ones(len(factors), bool) if calibrated is None else calibrated
    levels = np.asarray(levels, np.float64)
    factors = np.asarray(factors, np.float64)
    if 0.5 not in levels:  # the median is a knot: its factor is 1
      at = int(np.searchsorted(levels, 0.5))
      levels = np.insert(levels, at, 0.5)
      factors = np.insert(factors, at, 1.0, axis=-1)
    self.dist, self.levels, self.factors = dist, levels, factors

  def _factors_at(self, levels: np.ndarray) -> np.ndarray:
    """`(N, 1, T, Q)`: the factors at `levels`, broadcast over lead times."""
    flat = self.factors.reshape(-1, self.factors.shape[-1])
    at = np.stack([np.interp(levels, self.levels, f) for f in flat])
    return at.reshape(self.factors.shape[0], 1, self.factors.shape[1], len(levels))

  def quantiles(self, levels: Any) -> np.ndarray:
    levels = np.atleast_1d(np.asarray(levels, np.float64))
    q = self.dist.quantiles(levels)
    m = self.dist.quantiles((0.5,))
    out = m + self._factors_at(levels) * (q - m)
    # Sorting keeps them non-crossing where neighbouring levels' factors differ a lot; for
    # increasing `levels` a sorted quantile function is still a quantile function.
    order = np.argsort(levels)
    out_sorted = np.sort(out[..., order], axis=-1)
    return out_sorted[..., np.argsort(order)]

  def point(self) -> np.ndarray:
    return self.dist.point()

  def crps(self, y: np.ndarray) -> np.ndarray:
    """CRPS as twice the mean pinball loss over a fine grid of levels (as the quantile
    head's): the recalibrated distribution has no closed form."""
    grid = (np.arange(heads.CRPS_GRID) + 0.5) / heads.CRPS_GRID
    q = self.quantiles(grid)
    return 2 * heads.pinball(np.asarray(y, np.float64)[..., None], q, grid).mean(axis=-1)


def recalibrate(
  dist: Any,
  starts: np.ndarray,
  series: np.ndarray,
  source: tuple[Any, np.ndarray, np.ndarray, np.ndarray],
  horizon: int,
  n_windows: int,
  levels: Any,
) -> Recalibrated:
  """`dist` (the forecasts at `starts` of `series`) recalibrated on `source`: the
  distributions, targets, starts and series of the windows that may calibrate them."""
  src_dist, src_y, src_starts, src_series = source
  ratios = spread_ratios(src_dist, src_y, levels)
  factors, enough = rolling_factors(
    ratios, src_starts, src_series, starts, series, horizon, n_windows, levels
  )
  return Recalibrated(dist, levels, factors, enough)
