"""(a) Deep-narrow vs shallow-wide at equal parameter count: 4x64 vs 1xW.

flaxlstm sweep experiments/sweeps/deep_vs_wide.py --parallel 2
"""

import math

from flaxlstm.recipes import ett

INPUTS, HORIZON, DEEP = 1, 24, (64, 64, 64, 64)  # the ett recipe: OT in, 24 steps out


def params(features, inputs=INPUTS, horizon=HORIZON):
  """LSTM stack (fused 4-gate kernels + bias) plus the dense head."""
  total, d = 0, inputs
  for h in features:
    total, d = total + 4 * h * (d + h) + 4 * h, h
  return total + d * horizon + horizon


def equal_width():
  """The W of one layer with params((W,)) closest to params(DEEP): 4W^2 + (8+H)W + H = P."""
  a, b, c = 4, 4 * INPUTS + 4 + HORIZON, HORIZON - params(DEEP)
  return round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))


def get_sweep():
  return {
    "config": "ett",
    "overrides": list(ett.ZERO_START),
    "zip": {"model.hidden_sizes": [DEEP, (equal_width(),)]},
    "seeds": [0, 1, 2],
  }
