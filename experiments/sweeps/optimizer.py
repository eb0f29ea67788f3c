"""(d) Gradient clipping on/off x SGD (momentum 0.9) vs AdamW.

SGD needs a larger learning rate than AdamW, so the optimizer and its rate are zipped.

  flaxlstm sweep experiments/sweeps/optimizer.py --parallel 2
"""

from flaxlstm.recipes import ett


def get_sweep():
  return {
    "config": "ett",
    "overrides": list(ett.ZERO_START),
    "grid": {"train.clip_norm": [0.0, 1.0]},  # 0 = no clipping
    "zip": {"train.optimizer": ["sgd", "adamw"], "train.learning_rate": [3e-2, 1e-3]},
    "seeds": [0, 1, 2],
  }
