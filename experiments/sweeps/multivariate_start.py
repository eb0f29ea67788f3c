"""Where the multivariate recipe's linear highway starts, chosen on the validation split of
ETTh1, every horizon: the univariate_start.py comparison for `ett_multivariate:H` (all 7
columns in and out), at the recipe's learning rate.

  flaxlstm sweep experiments/sweeps/multivariate_start.py --workdir runs/sweep_multivariate_start
"""


def get_sweep():
  return {
    "config": "ett_multivariate:24",
    # The recipe's lookback for each horizon (96 up to 48 steps, 168 beyond).
    "zip": {"data.horizon": [24, 48, 168, 336, 720], "data.lookback": [96, 96, 168, 168, 168]},
    "grid": {"model.linear_skip_init": ["zeros", "ridge"]},
    "overrides": ["train.eval_at_start=True"],
    "seeds": [0],
  }
