"""(e) Standardizing the target (fit on the train rows) vs forecasting it in raw units.

Metrics are compared on the scaled values either way (metrics.json has both).

  flaxlstm sweep experiments/sweeps/target_scaling.py --parallel 2
"""


def get_sweep():
  return {"config": "ett", "grid": {"data.scale_target": [True, False]}, "seeds": [0, 1, 2]}
