"""The shared, valid experiment of the malformed-input corpus (see cases.json).

Trains a tiny model on valid.csv next to this file; each case breaks one thing, through
its own data file (--config.data.path=...) or another override. `base.py:FILE` reads FILE
from this folder instead.
"""

import pathlib

from flaxlstm import config as config_lib

HERE = pathlib.Path(__file__).resolve().parent


def get_config(arg=None):
  c = config_lib.default_config()
  c.data.path = str(HERE / (arg or "valid.csv"))
  c.data.target = ("y",)
  c.data.lookback, c.data.horizon, c.data.seasonal_period = 24, 6, 12
  c.model.hidden_sizes = (8,)
  c.train.batch_size, c.train.eval_batch_size = 16, 64
  c.train.max_steps, c.train.eval_every_steps, c.train.log_every_steps = 4, 2, 2
  return c
