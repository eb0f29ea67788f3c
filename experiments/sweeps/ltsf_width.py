"""The LTSF recipe at SegRNN's width: an LSTM of 512 units instead of 256. Chosen on the
validation split of ETTh1, every horizon, seed 0.

  flaxlstm sweep experiments/sweeps/ltsf_width.py --workdir runs/sweep_ltsf_width

The recipe took 256 units so that every horizon trains in a few minutes on 2 CPU cores;
SegRNN's own scripts use a GRU of 512 (d_model). Compared against the recipe's seed-0 runs
(the `model.linear_skip=True` rows of ltsf_naive_start.py, the same seed and code).
"""

import pathlib

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "ltsf" / "ett.py"


def get_sweep():
  return {
    "config": f"{RECIPE}:96",
    "grid": {"data.horizon": [96, 192, 336, 720], "model.hidden_sizes": [(512,)]},
    "seeds": [0],
  }
