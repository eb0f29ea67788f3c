"""(c) Decoupled weight decay, and L1/L2 penalties on the kernels (added to the loss).

flaxlstm sweep experiments/sweeps/regularization.py --parallel 2
"""

from flaxlstm.recipes import ett


def get_sweep():
  return {
    "config": "ett",
    "overrides": list(ett.ZERO_START),
    "grid": {"train.weight_decay": [0.0, 1e-4, 1e-2]},
    # No penalty, L1 alone, L2 alone: zipped, so the two are never combined.
    "zip": {"train.l1": [0.0, 1e-5, 0.0], "train.l2": [0.0, 0.0, 1e-4]},
    "seeds": [0, 1, 2],
  }
