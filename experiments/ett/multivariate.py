"""ETTh1 multivariate (Informer protocol): all 7 columns in, all 7 forecast; the argument
is the horizon.

  flaxlstm train --config experiments/ett/multivariate.py:48 --workdir runs/ett_m48

Same split, scaling and metrics as `univariate.py` (MSE/MAE averaged over the 7 scaled
columns).
"""

import pathlib

from flaxlstm import config as config_lib

COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")


def get_config(arg: str | None = None):
  config = config_lib.load_config_file(pathlib.Path(__file__).with_name("univariate.py"),
                                       arg or "24")
  config.data.features = COLUMNS
  config.data.target = COLUMNS
  return config
