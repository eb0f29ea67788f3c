"""Choosing the LTSF recipe (experiments/ltsf/ett.py) on the validation split of ETTh1.

  flaxlstm sweep experiments/sweeps/ltsf_ett.py --workdir runs/sweep_ltsf

Compares the learning-rate schedule and how the level is removed (RevIN or the last value)
at horizon 96; results.md ranks the runs by validation loss, which is what chose the recipe.
"""

import pathlib

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "ltsf" / "ett.py"


def get_sweep():
  return {
    "config": f"{RECIPE}:96",
    "grid": {"train.schedule": ["cosine", "exponential"]},
    "zip": {"model.revin": [True, False], "model.predict_delta": [False, True]},
    "seeds": [0],
  }
