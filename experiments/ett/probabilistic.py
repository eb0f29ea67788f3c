"""ETTh1 univariate (Informer protocol) with forecast distributions; the argument is the
horizon.

  flaxlstm train --config experiments/ett/probabilistic.py:24 --workdir runs/prob_24
  flaxlstm train --config experiments/ett/probabilistic.py:24 --config.data.path=ETTh2.csv

The point recipe (`ett_univariate:H`: level-free LSTM + linear highway, AdamW, cosine,
early stopping on the validation loss, here the validation negative log-likelihood) with a
Student-t head (learned degrees of freedom) and volatility scaling: each window's changes
are measured in units of its own mean absolute step change, so the spread learned on the
training years follows the volatility of later years, and the encoder also reads the
window's log volatility, so the spread need not be exactly proportional to it. Each
forecast's spread is then recalibrated on the last month of windows whose targets were
observed before it (720 hourly windows; with 15-minute rows, `data.split=ettm`, a month is
2880). The choices were made on the validation split (experiments/README.md; `python
experiments/ett/probabilistic_table.py` reruns the selection).
"""

from flaxlstm.recipes import ett_univariate

HEAD = "student_t"


def get_config(arg: str | None = None):
  config = ett_univariate.get_config(arg or "24")
  config.model.head = HEAD
  # The point recipe's ridge start fits point forecasts, not distributions: the highway
  # starts at zero, as it did when the head and the scaling were chosen.
  config.model.linear_skip_init = "zeros"
  config.train.eval_at_start = False
  config.model.volatility_scaling = True
  config.model.volatility_input = True
  # The spread rescaled on the last month of windows observed before each forecast
  # (forecast/calibration.py): coverage drifts with the period, and the last month's miss
  # foretells the next one's.
  config.model.recalibration_windows = 720
  return config
