"""(b) Input dropout and recurrent (variational) dropout levels.

flaxlstm sweep experiments/sweeps/dropout.py --parallel 2
"""

from flaxlstm.recipes import ett


def get_sweep():
  return {
    "config": "ett",
    "overrides": list(ett.ZERO_START),
    "grid": {"model.dropout": [0.0, 0.2, 0.5], "model.recurrent_dropout": [0.0, 0.2, 0.5]},
    "seeds": [0, 1, 2],
  }
