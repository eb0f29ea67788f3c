"""The LTSF recipe with its decoder's output map starting at zero, so that the untrained
model is the naive forecast and `train.eval_at_start` scores it; with and without a linear
highway from the window. Chosen on the validation split of ETTh1, every horizon, seed 0.

  flaxlstm sweep experiments/sweeps/ltsf_naive_start.py --workdir runs/sweep_ltsf_naive_start

The dense decoder's head always started at zero with `model.predict_delta`; the segment
decoders' output map (the LTSF recipe's `parallel` decoder) started from the encoder's
kernel initializer, so the recipe's untrained model was not the naive forecast. Compared
against the recipe as it was (the `model.linear_skip=False` rows of ltsf_skip.py, the same
seed), and, with the highway, against ltsf_skip.py's rows from that initializer.
"""

import pathlib

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "ltsf" / "ett.py"


def get_sweep():
  return {
    "config": f"{RECIPE}:96",
    "grid": {"data.horizon": [96, 192, 336, 720], "model.linear_skip": [False, True]},
    "seeds": [0],
  }
