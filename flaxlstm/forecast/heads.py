r"""Output heads: what the forecaster predicts for each (lead time, target) value.

A head turns the decoder's raw outputs `(..., P)` into the parameters of a predictive
distribution, and says how to train and score it:

- `constrain(raw)`: raw outputs -> valid parameters (scales > 0, ordered quantiles), in
  the model's normalized units;
- `affine(params, shift, scale)`: the distribution of `shift + scale * y`, which is how
  `predict_delta` (shift = the last value) and RevIN (the window's mean and std) map a
  distribution back to the data's units: on its location and scale, never on a point;
- `loss(params, y)`: the elementwise training loss (negative log-likelihood, or pinball);
- `point`, `quantiles`, `crps`: the median, the quantile function at given levels and the
  continuous ranked probability score, on the host in float64 (metrics, `predict`);
- its rules: `check(spec, c)` on the config (which losses, scalers and levels it takes;
  the schema reads it, config/schema.py) and `check_data(data)` on the training data.

`HEADS` is the registry (`model.head`); a new head is one class and one entry.

Heads shipped (`model.head`):

- `"point"`: the plain forecast, trained by `train.loss` (P = 0: the output is the value).
- `"gaussian"`: :math:`\mathcal N(\mu, \sigma^2)`, :math:`\sigma = \mathrm{softplus}(r_1) +
  \sigma_{\min}`. CRPS in closed form (Gneiting & Raftery, 2007).
- `"student_t"`: location, scale and degrees of freedom :math:`\nu = 2 +
  \mathrm{softplus}(r_2)` learned per value (DeepAR's Student-t output); :math:`\nu > 2`
  keeps the variance, and so the CRPS, finite. CRPS in closed form (Jordan, Krüger &
  Lerch, 2019).
- `"quantile"`: the quantiles at `model.quantiles`, trained by the pinball loss. They cannot
  cross: the level nearest 0.5 is free and every other one is its neighbour's value plus
  (above) or minus (below) a softplus increment. CRPS is twice the pinball loss averaged
  over a fine grid of levels, the quantile function interpolated linearly between the
  learned levels (flat beyond the outermost ones).

- `"lognormal"`: for positive targets, :math:`\log y \sim \mathcal N(\mu, \sigma^2)`. It fits
  where the model's targets stay positive: `data.scaler="maxabs"` (scale only) or `"none"`,
  no `predict_delta` and no RevIN (a log-normal shifted by a level is no longer one; the
  config refuses them, and training data with a target <= 0 is refused by name). CRPS in
  closed form (Baran & Lerch, 2015).

No count head (negative binomial, Poisson) is shipped: its likelihood is defined on the
raw counts, and every head here is trained on the model's scaled targets.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxlstm.errors import InputError

Array = Any  # a jax or numpy array

# The smallest Gaussian / Student-t scale, in normalized units: a floor that keeps the
# log-likelihood bounded when a window is perfectly predictable (a constant series).
MIN_SCALE = 1e-4
# CRPS of the quantile head: the pinball loss averaged over this many levels, the midpoints
# of [0, 1] cut in equal parts (a midpoint Riemann sum of CRPS = 2 * int_0^1 pinball).
CRPS_GRID = 200
# The central intervals scored by `forecast.metrics` (coverage and width).
INTERVALS = (0.5, 0.8, 0.95)


def _xp(a: Array):
  return jnp if isinstance(a, jax.Array) else np


def _softplus_inverse(x: float) -> float:
  return x + math.log(-math.expm1(-x))


def pinball(y: Array, q: Array, level: Array) -> Array:
  r"""The pinball (quantile) loss :math:`\rho_\tau(y - q) = \max(\tau (y - q), (\tau - 1)(y
  - q))`, elementwise; `level` broadcasts against `q`."""
  xp = _xp(q)
  err = y - q
  return xp.maximum(level * err, (level - 1) * err)


class _Rules:
  """A head's rules; the defaults are a distribution head's."""

  @classmethod
  def build(cls, levels: tuple[float, ...]) -> Any:
    """The head for `model.quantiles` = `levels` (only the quantile head reads them)."""
    del levels
    return cls()

  @classmethod
  def check(cls, spec: Any, c: Any) -> None:
    """The config's rules (`spec` a `RunSpec`; `c.model`, `c.data`, `c.train` checkers)."""
    # A distribution head trains by its own loss; a point loss would be ignored.
    c.train.check(
      "loss",
      spec.train.loss == "mse",
      f"is the point head's loss; model.head={spec.model.head!r} trains by its own "
      "(likelihood or pinball)",
    )

  def check_data(self, data: Any) -> None:
    """Refuses training data the head cannot model (`data`: a `SeriesData`)."""
    del data


@dataclasses.dataclass(frozen=True)
class PointHead(_Rules):
  """The point forecast: the output is the value itself, trained by `train.loss`."""

  name: str = "point"
  n_params: int = 0

  @classmethod
  def check(cls, spec: Any, c: Any) -> None:
    del spec, c  # any point loss

  def constrain(self, raw: Array) -> Array:
    return raw

  def point(self, params: Array) -> Array:
    return params


@dataclasses.dataclass(frozen=True)
class GaussianHead(_Rules):
  r"""A normal distribution per value; parameters `(..., 2)` = (:math:`\mu`, :math:`\sigma`).

  Loss: :math:`\log\sigma + \tfrac12 z^2 + \tfrac12\log 2\pi`, :math:`z = (y - \mu) /
  \sigma`. CRPS: :math:`\sigma\,[z(2\Phi(z) - 1) + 2\varphi(z) - 1/\sqrt\pi]`.
  """

  name: str = "gaussian"
  n_params: int = 2

  def constrain(self, raw: Array) -> Array:
    return jnp.stack([raw[..., 0], jax.nn.softplus(raw[..., 1]) + MIN_SCALE], axis=-1)

  def affine(self, params: Array, shift: Array, scale: Array) -> Array:
    xp = _xp(params)
    return xp.stack([shift + scale * params[..., 0], xp.abs(scale) * params[..., 1]], axis=-1)

  def loss(self, params: Array, y: Array) -> Array:
    z = (y - params[..., 0]) / params[..., 1]
    return jnp.log(params[..., 1]) + 0.5 * jnp.square(z) + 0.5 * math.log(2 * math.pi)

  def point(self, params: Array) -> Array:
    return params[..., 0]

  def quantiles(self, params: np.ndarray, levels: Any) -> np.ndarray:
    from scipy import stats

    z = stats.norm.ppf(np.asarray(levels, np.float64))
    return params[..., :1] + params[..., 1:2] * z

  def crps(self, params: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy import stats

    loc, scale = params[..., 0], params[..., 1]
    z = (y - loc) / scale
    return scale * (
      z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi)
    )


# Knots of `t_ppf`'s table over 1/df in [0, 1/2].
T_PPF_KNOTS = 2049


def t_ppf(levels: np.ndarray, df: np.ndarray) -> np.ndarray:
  """`(*df.shape, L)`: the standard Student-t's quantiles at `levels` (all <= 1/2) for
  each degrees of freedom `df`.

  Exact (an inverse incomplete beta per value) for few values. For many, as when a run's
  every window is scored at the CRPS grid's levels, that is most of the evaluation, so the
  quantiles are read off a table over w = 1/df in [0, 1/2] (df >= 2, the head's range;
  w = 0 is the normal), linear in w between `T_PPF_KNOTS` knots: within 2e-7 of the exact
  value, relatively, below the float32 resolution of the parameters, and about 8x faster
  (tests/forecast/test_heads.py compares the two)."""
  from scipy import special

  levels = np.asarray(levels, np.float64)
  df = np.asarray(df, np.float64)
  if df.size < 4 * T_PPF_KNOTS or (df < 2).any():
    return special.stdtrit(df[..., None], levels)
  w = np.linspace(0.0, 0.5, T_PPF_KNOTS)
  table = np.concatenate(
    [special.ndtri(levels)[None], special.stdtrit(1.0 / w[1:, None], levels)], axis=0
  )
  pos = (1.0 / df) * ((T_PPF_KNOTS - 1) / 0.5)
  i = np.minimum(pos.astype(np.int64), T_PPF_KNOTS - 2)
  f = (pos - i)[..., None]
  return table[i] * (1.0 - f) + table[i + 1] * f


@dataclasses.dataclass(frozen=True)
class StudentTHead(_Rules):
  r"""A Student-t per value; parameters `(..., 3)` = (:math:`\mu`, :math:`\sigma`,
  :math:`\nu`), :math:`\nu > 2`.

  Loss: :math:`-\log\Gamma(\tfrac{\nu+1}2) + \log\Gamma(\tfrac\nu2) + \tfrac12\log(\nu\pi)
  + \log\sigma + \tfrac{\nu+1}2\log(1 + z^2/\nu)`. CRPS: :math:`\sigma\,[z(2F_\nu(z) - 1)
  + 2 f_\nu(z)\tfrac{\nu + z^2}{\nu - 1} - \tfrac{2\sqrt\nu\,B(\frac12, \nu -
  \frac12)}{(\nu - 1) B(\frac12, \frac\nu2)^2}]`.
  """

  name: str = "student_t"
  n_params: int = 3

  def constrain(self, raw: Array) -> Array:
    scale = jax.nn.softplus(raw[..., 1]) + MIN_SCALE
    df = 2.0 + jax.nn.softplus(raw[..., 2])
    return jnp.stack([raw[..., 0], scale, df], axis=-1)

  def affine(self, params: Array, shift: Array, scale: Array) -> Array:
    xp = _xp(params)
    return xp.stack(
      [shift + scale * params[..., 0], xp.abs(scale) * params[..., 1], params[..., 2]], axis=-1
    )

  def loss(self, params: Array, y: Array) -> Array:
    loc, scale, df = params[..., 0], params[..., 1], params[..., 2]
    z = (y - loc) / scale
    return (
      jax.scipy.special.gammaln(df / 2)
      - jax.scipy.special.gammaln((df + 1) / 2)
      + 0.5 * jnp.log(df * math.pi)
      + jnp.log(scale)
      + (df + 1) / 2 * jnp.log1p(jnp.square(z) / df)
    )

  def point(self, params: Array) -> Array:
    return params[..., 0]

  def quantiles(self, params: np.ndarray, levels: Any) -> np.ndarray:
    levels = np.asarray(levels, np.float64)
    # The t's inverse CDF is costly (an inverse incomplete beta per value) and odd about the
    # median: compute it at the lower half's levels only and mirror it.
    lower, inverse = np.unique(np.minimum(levels, 1 - levels), return_inverse=True)
    z = t_ppf(lower, np.asarray(params[..., 2], np.float64))[..., inverse.reshape(-1)]
    z = np.where(levels > 0.5, -z, z)
    return params[..., :1] + params[..., 1:2] * z

  def crps(self, params: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy import special, stats

    loc, scale, df = params[..., 0], params[..., 1], params[..., 2]
    z = (y - loc) / scale
    tail = (
      2
      * np.sqrt(df)
      * special.beta(0.5, df - 0.5)
      / ((df - 1) * np.square(special.beta(0.5, df / 2)))
    )
    return scale * (
      z * (2 * stats.t.cdf(z, df) - 1) + 2 * stats.t.pdf(z, df) * (df + z**2) / (df - 1) - tail
    )


@dataclasses.dataclass(frozen=True)
class LogNormalHead(_Rules):
  r"""A log-normal per value, for positive targets; parameters `(..., 2)` = (:math:`\mu`,
  :math:`\sigma`) of :math:`\log y`, :math:`\sigma = \mathrm{softplus}(r_1) + \sigma_{\min}`.

  Loss: :math:`\log y + \log\sigma + \tfrac12 z^2 + \tfrac12\log 2\pi`, :math:`z = (\log y -
  \mu) / \sigma`. Median :math:`e^\mu` (the point forecast); quantiles :math:`e^{\mu +
  \sigma\Phi^{-1}(\tau)}`. CRPS: :math:`y\,[2\Phi(z) - 1] - 2e^{\mu + \sigma^2/2}\,[\Phi(z -
  \sigma) + \Phi(\sigma/\sqrt2) - 1]`. Scaling by :math:`s > 0` adds :math:`\log s` to
  :math:`\mu`; a shift has no log-normal image (`ModelSpec.check` rules shifts out).
  """

  name: str = "lognormal"
  n_params: int = 2

  @classmethod
  def check(cls, spec: Any, c: Any) -> None:
    super().check(spec, c)
    # A log-normal shifted by a level is no longer one (nor positive): only scaling maps it
    # to another.
    for key in ("predict_delta", "revin"):
      c.model.check(
        key,
        not getattr(spec.model, key),
        "shifts the forecast by a level: model.head="
        "'lognormal' forecasts positive values as they are (set it to False)",
      )
    c.data.check(
      "scaler",
      spec.data.scaler in ("maxabs", "none") or not spec.data.scale_target,
      "must keep positive targets positive for model.head='lognormal': 'maxabs' or "
      "'none' (or data.scale_target=False)",
    )

  def check_data(self, data: Any) -> None:
    """The likelihood needs every target it is trained or scored on > 0."""
    bad = ~(data.y > 0)
    if bad.any():
      row, col = (int(i) for i in np.argwhere(bad)[0])
      # A wide CSV's rows are the file's lines, after the header (a long table's are sorted).
      line = f" (line {row + 2})" if data.source.endswith(".csv") and not data.series_ids else ""
      raise InputError(
        f"{data.source}: column {data.target_names[col]!r} has {data.y_raw[row, col]:g} at "
        f"row {row}{line}, and {int(bad.sum()) - 1} more values <= 0; model.head='lognormal' "
        "needs positive targets"
      )

  def constrain(self, raw: Array) -> Array:
    return jnp.stack([raw[..., 0], jax.nn.softplus(raw[..., 1]) + MIN_SCALE], axis=-1)

  def affine(self, params: Array, shift: Array, scale: Array) -> Array:
    del shift  # zero: no level is removed under this head (see the class docstring)
    xp = _xp(params)
    return xp.stack([params[..., 0] + xp.log(xp.abs(scale)), params[..., 1]], axis=-1)

  def loss(self, params: Array, y: Array) -> Array:
    # Targets are positive (checked on the data); a masked-out entry may hold a 0, whose
    # log would turn its (discarded) loss and gradient into NaN.
    log_y = jnp.log(jnp.where(y > 0, y, 1.0))
    z = (log_y - params[..., 0]) / params[..., 1]
    return log_y + jnp.log(params[..., 1]) + 0.5 * jnp.square(z) + 0.5 * math.log(2 * math.pi)

  def point(self, params: Array) -> Array:
    return _xp(params).exp(params[..., 0])

  def quantiles(self, params: np.ndarray, levels: Any) -> np.ndarray:
    from scipy import stats

    z = stats.norm.ppf(np.asarray(levels, np.float64))
    return np.exp(params[..., :1] + params[..., 1:2] * z)

  def crps(self, params: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy import stats

    mu, sigma = params[..., 0], params[..., 1]
    y = np.asarray(y, np.float64)
    # y <= 0 (outside the support): the CDF is 0 there, and the limit z -> -inf applies.
    z = np.where(y > 0, (np.log(np.where(y > 0, y, 1.0)) - mu) / sigma, -np.inf)
    return y * (2 * stats.norm.cdf(z) - 1) - 2 * np.exp(mu + sigma**2 / 2) * (
      stats.norm.cdf(z - sigma) + stats.norm.cdf(sigma / math.sqrt(2)) - 1
    )


@dataclasses.dataclass(frozen=True)
class QuantileHead(_Rules):
  """Non-crossing quantiles at `levels`; parameters `(..., Q)` are the quantiles, ascending.

  The raw output at the level nearest 0.5 is that quantile; each level above adds a
  softplus increment to the one below it, each level below subtracts one from the one above.
  Increments start at a standard normal's gaps between the levels (an offset inside the
  softplus), so the untrained head is a unit normal around its median.
  """

  levels: tuple[float, ...]
  name: str = "quantile"

  @classmethod
  def build(cls, levels: tuple[float, ...]) -> Any:
    return cls(tuple(levels))

  @classmethod
  def check(cls, spec: Any, c: Any) -> None:
    super().check(spec, c)
    c.model.check(
      "quantiles", len(spec.model.quantiles) >= 2, "the quantile head needs at least two levels"
    )

  @property
  def n_params(self) -> int:
    return len(self.levels)

  @property
  def _anchor(self) -> int:
    return int(np.argmin(np.abs(np.asarray(self.levels) - 0.5)))

  def _offsets(self) -> np.ndarray:
    from scipy import stats

    z = stats.norm.ppf(np.asarray(self.levels, np.float64))
    gaps = np.abs(np.diff(z))  # gap k sits between levels k and k + 1
    return np.array([_softplus_inverse(float(g)) for g in gaps], np.float32)

  def constrain(self, raw: Array) -> Array:
    m = self._anchor
    increments = jax.nn.softplus(
      jnp.concatenate([raw[..., :m], raw[..., m + 1 :]], axis=-1) + self._offsets()
    )
    median = raw[..., m : m + 1]
    below = median - jnp.cumsum(increments[..., :m][..., ::-1], axis=-1)[..., ::-1]
    above = median + jnp.cumsum(increments[..., m:], axis=-1)
    return jnp.concatenate([below, median, above], axis=-1)

  def affine(self, params: Array, shift: Array, scale: Array) -> Array:
    xp = _xp(params)
    q = shift[..., None] + scale[..., None] * params
    # A negative scale (RevIN's learned affine can flip sign) reverses the order.
    return xp.where((scale < 0)[..., None], q[..., ::-1], q)

  def loss(self, params: Array, y: Array) -> Array:
    levels = jnp.asarray(self.levels, params.dtype)
    return pinball(y[..., None], params, levels).mean(axis=-1)

  def point(self, params: Array) -> Array:
    if 0.5 in self.levels:
      return params[..., self.levels.index(0.5)]
    return self.quantiles(np.asarray(params, np.float64), (0.5,))[..., 0]

  def quantiles(self, params: np.ndarray, levels: Any) -> np.ndarray:
    """Linear interpolation between the learned levels, flat beyond the outermost ones."""
    known = np.asarray(self.levels, np.float64)
    levels = np.clip(np.asarray(levels, np.float64), known[0], known[-1])
    hi = np.clip(np.searchsorted(known, levels, side="left"), 1, len(known) - 1)
    lo = hi - 1
    w = (levels - known[lo]) / (known[hi] - known[lo])
    return params[..., lo] * (1 - w) + params[..., hi] * w

  def crps(self, params: np.ndarray, y: np.ndarray) -> np.ndarray:
    grid = (np.arange(CRPS_GRID) + 0.5) / CRPS_GRID
    q = self.quantiles(params, grid)
    return 2 * pinball(y[..., None], q, grid).mean(axis=-1)


Head = PointHead | GaussianHead | StudentTHead | LogNormalHead | QuantileHead

# The registry of model.head: name -> head class.
HEADS: dict[str, Any] = {
  cls.name: cls for cls in (PointHead, GaussianHead, StudentTHead, LogNormalHead, QuantileHead)
}


def make(name: str, levels: tuple[float, ...] = ()) -> Head:
  """The head called `name` (`model.head`); `levels` are the quantile head's."""
  if name not in HEADS:
    raise ValueError(f"unknown head {name!r}: expected one of {', '.join(HEADS)}")
  return HEADS[name].build(tuple(levels))
