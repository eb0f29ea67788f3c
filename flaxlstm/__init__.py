"""flaxlstm: fast, large LSTMs for time series in JAX/Flax.

The public API is the neural-network core; importing it stays light (no orbax, sklearn,
pandas or matplotlib), so researchers can drop the cell into their own models.
"""

from flaxlstm.cell import LSTMCell, from_flax_params, from_torch_lstm
from flaxlstm.layers import LSTM, Bidirectional, StackedLSTM, flip_sequences

__version__ = "0.1.0"

__all__ = [
    "LSTMCell",
    "LSTM",
    "StackedLSTM",
    "Bidirectional",
    "flip_sequences",
    "from_flax_params",
    "from_torch_lstm",
]
