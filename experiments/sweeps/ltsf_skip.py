"""A linear highway for the LTSF recipe, chosen on the validation split of ETTh1.

  flaxlstm sweep experiments/sweeps/ltsf_skip.py --workdir runs/sweep_ltsf_skip

The recipe (experiments/ltsf/ett.py) has no linear map from the window. With independent
channels that map is NLinear's model (one linear map from a column's level-free window to
its future, shared by the columns), which DLinear's paper found hard to beat at long
horizons. Compared at every horizon, seed 0: the recipe, the recipe plus the map from
a zero start, and plus the map starting at its ridge fit (`model.linear_skip_init=ridge`,
the start scored by `train.eval_at_start`). results.md ranks them by validation loss.
"""

import pathlib

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "ltsf" / "ett.py"


def get_sweep():
  return {
    "config": f"{RECIPE}:96",
    "grid": {"data.horizon": [96, 192, 336, 720]},
    "zip": {
      "model.linear_skip": [False, True, True],
      "model.linear_skip_init": ["zeros", "zeros", "ridge"],
    },
    "overrides": ["train.eval_at_start=True"],
    "seeds": [0],
  }
