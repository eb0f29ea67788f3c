"""`flaxlstm.nnx`: the LSTM for Flax NNX (`from flaxlstm import nnx as lnnx`).

The modules live in `flaxlstm/nn/nnx.py`, beside the Linen layers whose code they run.
"""

from flaxlstm.nn.nnx import (  # noqa: F401
  LSTM,
  RNN,
  Bidirectional,
  LinenCell,
  LSTMCell,
  MLSTMCell,
  SLSTMCell,
  StackedLSTM,
  flip_sequences,
  from_nnx_cell,
  linen_to_nnx,
  load_params,
  nnx_to_linen,
)
