"""(e) Standardizing the target (fit on the train rows) vs forecasting it in raw units.

Metrics are compared on the scaled values either way (metrics.json has both).

  flaxlstm sweep experiments/sweeps/target_scaling.py --parallel 2
"""

from flaxlstm.recipes import ett


def get_sweep():
  return {
    "config": "ett",
    "overrides": list(ett.ZERO_START),
    "grid": {"data.scale_target": [True, False]},
    "seeds": [0, 1, 2],
  }
