"""Where the univariate recipe's linear highway starts, chosen on the validation split of
ETTh1, every horizon.

  flaxlstm sweep experiments/sweeps/univariate_start.py --workdir runs/sweep_univariate_start

The recipe (`ett_univariate:H`) is a level-free LSTM plus a linear map from the window
(`model.linear_skip`), which starts at zero. On its own, that linear map fitted in closed
form (a ridge on the level-free window) scores about as well as the trained recipe: the
LSTM adds little. `model.linear_skip_init='ridge'` starts training from that fit, and
`train.eval_at_start` scores the starting model, so early stopping keeps it unless
training beats it on validation. Compared here at the recipe's learning rate and at 1e-4
(a smaller step leaves more of the fit in place). results.md ranks them by validation loss.
"""


def get_sweep():
  return {
    "config": "ett_univariate:24",
    # The recipe's lookback for each horizon (96 up to 48 steps, 168 beyond).
    "zip": {"data.horizon": [24, 48, 168, 336, 720], "data.lookback": [96, 96, 168, 168, 168]},
    "grid": {"model.linear_skip_init": ["zeros", "ridge"], "train.learning_rate": [1e-3, 1e-4]},
    "overrides": ["train.eval_at_start=True"],
    "seeds": [0],
  }
