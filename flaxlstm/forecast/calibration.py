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
last `N` windows whose targets were all observed at the forecast's origin (a window
starting at row :math:`s'` is observed from row :math:`s' + H` on), of the same series
(`model.recalibration_scope="series"`) or, on a panel whose series are each too short to
hold `N` windows, of any series, by date (`"panel"`): with
ratios :math:`r = (y - m) / (q_\tau - m)` over those windows' leads and values,
:math:`k_\tau` is their :math:`\tau`-quantile above the median and their
:math:`(1 - \tau)`-quantile below it. The median stays, so point forecasts and their
metrics do not change; factors are at least 0; quantiles are re-sorted so that none cross.
Factors are per target column and level, pooled over lead times; within a series they are
refreshed once per `H` rows (the forecasts of a block of `H` consecutive origins share the
block's first origin's factors, which is earlier, so nothing unobserved is read), across a
panel once per origin date. A forecast with fewer than `N / 2` such windows keeps its
factors at 1.

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


# The choices of model.recalibration_scope: which windows may calibrate a forecast.
SCOPES = ("series", "panel")


def _dates(data: Any) -> np.ndarray:
  if data.dates is None:
    raise ValueError("model.recalibration_scope='panel' needs the file's dates")
  return np.asarray(data.dates, "datetime64[ns]").astype(np.int64)


def origin_times(data: Any, starts: np.ndarray, scope: str) -> tuple[np.ndarray, np.ndarray]:
  """`(time, group)` of the forecasts of the windows at `starts` of `data` (a `SeriesData`):
  when each is made, and which windows may calibrate it. `"series"`: rows, the group its
  series, the origin rounded down to the start of its block of `horizon` rows so that a
  block's forecasts share its factors. `"panel"`: the file's dates (int64 nanoseconds),
  one group. A forecast past its series' end has an origin like any other."""
  starts = np.asarray(starts, np.int64)
  if scope == "series":
    return starts - starts % data.horizon - 1, data.row_series(starts - 1)
  return _dates(data)[starts - 1], np.zeros(len(starts), np.int64)


def known_times(data: Any, starts: np.ndarray, scope: str) -> tuple[np.ndarray, np.ndarray]:
  """`(time, group)` of complete windows at `starts`: when each one's last target is known
  (its last row, or that row's date), and its group, as `origin_times` counts them."""
  starts = np.asarray(starts, np.int64)
  last = starts + data.horizon - 1
  if scope == "series":
    return last, data.row_series(starts - 1)
  return _dates(data)[last], np.zeros(len(starts), np.int64)


def rolling_factors(
  ratios: np.ndarray,
  source_observed: np.ndarray,
  source_group: np.ndarray,
  origins: np.ndarray,
  groups: np.ndarray,
  n_windows: int,
  levels: Any,
) -> tuple[np.ndarray, np.ndarray]:
  """`(M, T, L)`: the factors of each forecast (made at `origins`, of `groups`), from the
  source windows (`ratios (n, H, T, L)`, each known from `source_observed`, of
  `source_group`): the last `n_windows` of its group known at its origin (module
  docstring); and `(M,)` whether each had at least half that many (else its factors are
  1). Times are any ordered integers (`origin_times`, `known_times`)."""
  source_observed = np.asarray(source_observed, np.int64)
  source_group = np.asarray(source_group, np.int64)
  order = np.argsort(source_observed, kind="stable")
  out = np.ones((len(origins), *ratios.shape[2:]))
  enough = np.zeros(len(origins), bool)
  cache: dict[tuple[int, int], np.ndarray | None] = {}
  need = max(1, -(-n_windows // 2))
  for j, key in enumerate(zip(np.asarray(groups).tolist(), np.asarray(origins).tolist())):
    if key not in cache:
      group, origin = key
      pool = order[(source_group[order] == group) & (source_observed[order] <= origin)]
      pool = pool[-n_windows:]
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


def fit_factors(
  starts: np.ndarray,
  source: tuple[Any, np.ndarray, np.ndarray],
  data: Any,
  n_windows: int,
  levels: Any,
  scope: str = "series",
) -> tuple[np.ndarray, np.ndarray]:
  """`rolling_factors` of the forecasts of `data`'s windows at `starts`, from `source`: the
  distributions, targets and starts of the windows that may calibrate them, the last
  `n_windows` of them known at each forecast's origin, within its `scope`."""
  src_dist, src_y, src_starts = source
  ratios = spread_ratios(src_dist, src_y, levels)
  observed, src_group = known_times(data, src_starts, scope)
  origins, groups = origin_times(data, starts, scope)
  return rolling_factors(ratios, observed, src_group, origins, groups, n_windows, levels)


def recalibrate(
  dist: Any,
  starts: np.ndarray,
  source: tuple[Any, np.ndarray, np.ndarray],
  data: Any,
  n_windows: int,
  levels: Any,
  scope: str = "series",
) -> Recalibrated:
  """`dist` (the forecasts of `data`'s windows at `starts`) recalibrated on `source`
  (`fit_factors`)."""
  factors, enough = fit_factors(starts, source, data, n_windows, levels, scope)
  return Recalibrated(dist, levels, factors, enough)
