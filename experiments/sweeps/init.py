"""(f) Input-kernel initialization (Glorot vs LeCun) x forget-gate bias 0 vs 1.

flaxlstm sweep experiments/sweeps/init.py --parallel 2
"""

from flaxlstm.recipes import ett


def get_sweep():
  return {
    "config": "ett",
    "overrides": list(ett.ZERO_START),
    "grid": {
      "model.cell.kernel_init": ["glorot_uniform", "lecun_normal"],
      "model.lstm.forget_bias": [0.0, 1.0],
    },
    "seeds": [0, 1, 2],
  }
