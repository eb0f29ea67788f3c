"""The LTSF recipe trained on the mean absolute error instead of the squared error (its
early stopping then follows validation MAE). Chosen on the validation split of ETTh1 by val
MSE, every horizon, seed 0.

  flaxlstm sweep experiments/sweeps/ltsf_loss.py --workdir runs/sweep_ltsf_loss

An L1 loss is a common choice among LTSF models (an absolute error is less swayed by the
rare large changes of ETT's load columns); the recipe trains on MSE. Compared against the
recipe's seed-0 runs (experiments/ltsf/make_table.py, the same seed and code).
"""

import pathlib

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "ltsf" / "ett.py"


def get_sweep():
  return {
    "config": f"{RECIPE}:96",
    "grid": {"data.horizon": [96, 192, 336, 720], "train.loss": ["mae"]},
    "seeds": [0],
  }
