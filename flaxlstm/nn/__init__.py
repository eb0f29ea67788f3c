"""The LSTM library: cell, time loop, layers, weight converters.

Imports nothing from the rest of flaxlstm: it is what researchers drop into their own
Flax models, and what the forecasting framework around it is built on.
"""

from flaxlstm.nn.cell import LSTMCell
from flaxlstm.nn.convert import from_flax_params, from_torch_lstm
from flaxlstm.nn.layers import LSTM, Bidirectional, StackedLSTM, flip_sequences

__all__ = [
  "LSTMCell",
  "LSTM",
  "StackedLSTM",
  "Bidirectional",
  "flip_sequences",
  "from_flax_params",
  "from_torch_lstm",
]
