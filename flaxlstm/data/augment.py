"""Augmentation of training input windows: jitter, scaling, magnitude warp, window slice.

Only inputs are augmented, never targets or val/test windows. Each step's draw is a pure
function of (seed, step) (`augment_rng`), like its batch.
"""

from __future__ import annotations

import numpy as np

from flaxlstm.config.specs import AugmentSpec

# Stream tag of the augmentation random stream (windows.py has the permutation's).
AUGMENT_STREAM = 1


def augment_rng(seed: int, step: int) -> np.random.Generator:
  """The augmentation generator of a train step: a pure function of (seed, step).

  The global step already determines the epoch, so (seed, step) is (seed, epoch, step).
  """
  return np.random.default_rng([seed, AUGMENT_STREAM, step])


def _catmull_rom(knots: np.ndarray, length: int) -> np.ndarray:
  """Smooth (C1) cubic curve through evenly spaced knots, sampled at ``length`` points.

  knots: ``(B, K, F)``; returns ``(B, length, F)``. Used instead of scipy's CubicSpline to
  keep the module numpy-only; for magnitude warping any smooth interpolant will do.
  """
  n_knots = knots.shape[1]
  u = np.linspace(0.0, n_knots - 1, length)
  seg = np.minimum(np.floor(u).astype(np.int64), n_knots - 2)
  t = (u - seg)[None, :, None]
  idx = lambda k: np.clip(seg + k, 0, n_knots - 1)  # Clamped ends repeat the edge knot.
  p0, p1, p2, p3 = (knots[:, idx(k), :] for k in (-1, 0, 1, 2))
  return 0.5 * (
    (2 * p1)
    + (-p0 + p2) * t
    + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
    + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
  )


def is_on(spec: AugmentSpec) -> bool:
  """True if any augmentation is switched on."""
  return any((spec.jitter, spec.scaling, spec.magnitude_warp, spec.window_slice))


def augment(x: np.ndarray, spec: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
  """Randomly perturbs a batch of train INPUT windows ``(B, lookback, F)``.

  Only inputs are augmented: the targets stay the true future, so the model learns to
  forecast reality from a perturbed past (robustness), not to forecast perturbations.
  Never apply this to val/test windows.

  Applied in this order, each skipped (no random draws) when its strength is 0:

  - ``window_slice`` r: crop a random contiguous ``(1 - r)`` of the lookback and
    linearly resample it back to ``lookback`` steps (a time-stretch; note the crop can
    drop the most recent steps, so keep r small).
  - ``magnitude_warp`` s: multiply by a smooth random curve through 6 evenly spaced
    knots ~ N(1, s), one curve per window and feature.
  - ``scaling`` s: multiply each window's feature by a factor ~ N(1, s).
  - ``jitter`` s: add Gaussian noise N(0, s) to every value.

  Args:
    x: float input windows ``(B, lookback, F)``, scaled.
    spec: the strengths (``data.augment``; 0 means off).
    rng: e.g. ``augment_rng(seed, step)``; results are deterministic given its state.

  Returns:
    The augmented batch (float32), or ``x`` itself when everything is off.
  """
  if not is_on(spec):
    return x
  x = np.asarray(x, dtype=np.float32)
  batch, length, n_features = x.shape
  if spec.window_slice and length > 1:
    crop = max(2, int(round(length * (1.0 - spec.window_slice))))
    first = rng.integers(0, length - crop + 1, size=batch)
    pos = first[:, None] + np.linspace(0.0, crop - 1, length)[None, :]  # (B, L)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, length - 1)
    w = (pos - lo)[:, :, None].astype(np.float32)
    x = (
      np.take_along_axis(x, lo[:, :, None], axis=1) * (1 - w)
      + np.take_along_axis(x, hi[:, :, None], axis=1) * w
    )
  if spec.magnitude_warp:
    knots = rng.normal(1.0, spec.magnitude_warp, size=(batch, 6, n_features))
    x = x * _catmull_rom(knots, length).astype(np.float32)
  if spec.scaling:
    x = x * rng.normal(1.0, spec.scaling, size=(batch, 1, n_features)).astype(np.float32)
  if spec.jitter:
    x = x + rng.normal(0.0, spec.jitter, size=x.shape).astype(np.float32)
  return x.astype(np.float32, copy=False)
