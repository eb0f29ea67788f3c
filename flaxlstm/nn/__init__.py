"""The recurrent library: cells, kernels (time loops), layers, blocks, weight converters.

Imports nothing from the rest of flaxlstm: it is what researchers drop into their own
Flax models, and what the forecasting framework around it is built on.

    cells/     one module per cell (math, typed carry, parameters, the kernels it offers);
               base.py: the protocol any Flax cell follows
    kernels/   the time loops as pure functions of arrays, their registry and `select`
    layers.py  RNN over any cell; LSTM, Bidirectional
    stacks.py  StackedLSTM (one cuDNN call where it can), StackedRNN over any cell
    xlstm.py   the xLSTM family's layers as the `xlstm` package builds them (SLSTM, MLSTM,
               their blocks, XLSTMStack); stack_layout.py: which of a stack's blocks
               are scanned together (read by the converters too); remat.py: the
               per-block remat of its unrolled (sLSTM) blocks
    blocks.py  RevIN, segment embedding, the parallel and recurrent decoders
    residual.py residual_boundary: a residual stream's gradient written once per block
    convert.py Flax, PyTorch, cuDNN and xlstm weight layouts
    nnx.py     the same layers for Flax NNX, on the same kernels
"""

from flaxlstm.nn.cells import LSTMCarry, LSTMCell
from flaxlstm.nn.cells.mlstm import MLSTMCarry, MLSTMCell
from flaxlstm.nn.cells.slstm import SLSTMCarry, SLSTMCell
from flaxlstm.nn.convert import from_flax_params, from_torch_lstm
from flaxlstm.nn.layers import LSTM, RNN, Bidirectional, flip_sequences
from flaxlstm.nn.residual import residual_boundary
from flaxlstm.nn.stacks import StackedLSTM, StackedRNN
from flaxlstm.nn.xlstm import MLSTM, SLSTM, MLSTMBlock, SLSTMBlock, XLSTMStack

__all__ = [
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
  "residual_boundary",
  "from_flax_params",
  "from_torch_lstm",
]
