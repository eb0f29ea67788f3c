"""flaxlstm: fast, large LSTMs for time series in JAX/Flax.

The public API is the neural-network core; importing it stays light (no orbax, sklearn,
pandas or matplotlib), so researchers can drop the cell into their own models.
"""

from flaxlstm.nn import (
  LSTM,
  MLSTM,
  RNN,
  SLSTM,
  Bidirectional,
  LSTMCarry,
  LSTMCell,
  MLSTMBlock,
  MLSTMCarry,
  MLSTMCell,
  SLSTMBlock,
  SLSTMCarry,
  SLSTMCell,
  StackedLSTM,
  StackedRNN,
  XLSTMStack,
  flip_sequences,
  from_flax_params,
  from_torch_lstm,
)

__version__ = "0.1.0"

__all__ = [  # the recurrent library's public API (flaxlstm.nn)
  "RNN",
  "LSTMCell",
  "LSTMCarry",
  "SLSTMCell",
  "SLSTMCarry",
  "SLSTM",
  "SLSTMBlock",
  "MLSTMCell",
  "MLSTMCarry",
  "MLSTM",
  "MLSTMBlock",
  "XLSTMStack",
  "LSTM",
  "StackedLSTM",
  "StackedRNN",
  "Bidirectional",
  "flip_sequences",
  "from_flax_params",
  "from_torch_lstm",
]
