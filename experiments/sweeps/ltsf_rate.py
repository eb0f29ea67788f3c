"""The LTSF recipe's learning rate and batch size, chosen on the validation split of ETTh1.

  flaxlstm sweep experiments/sweeps/ltsf_rate.py --workdir runs/sweep_ltsf_rate

The recipe (experiments/ltsf/ett.py) took SegRNN's lr 1e-3 and batch 256 and chose only the
schedule and the level handling at horizon 96 (ltsf_ett.py). At the long horizons its
validation loss is often best after the first epochs, which points at a step too large:
TSLib's SegRNN script for ETTh1 at lookback 96 uses lr 1e-4 (batch 32), SegRNN's own
scripts 3e-4 (batch 64) or 2e-4. This sweep compares those at horizons 192 and 720, the
two where the recipe is furthest behind SegRNN; results.md ranks them by validation loss.
lr 1e-4 (batch 256) was tried at 192 first and stopped after 12 of 20 epochs: under the
recipe's decay (x0.8 per epoch after 3) it was still at val MSE 0.994, against 0.973 (1e-3)
and 0.971 (3e-4), and falling by 0.001-0.003 an epoch. lr 3e-4 at batch 64 tied 1e-3 at
192 (0.973, best after 4 epochs), so only 1e-3 and 3e-4 at batch 256 went on to 720.
"""

import pathlib

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "ltsf" / "ett.py"


def get_sweep():
  return {
    "config": f"{RECIPE}:192",
    "grid": {"data.horizon": [192, 720], "train.learning_rate": [1e-3, 3e-4]},
    "overrides": ["train.batch_size=256"],
    "seeds": [0],
  }
