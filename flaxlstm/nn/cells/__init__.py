"""Recurrent cells, one module per cell: its math (equations in the docstring), its typed
carry, its parameter layout and the kernels it offers. `base.py` is the protocol any cell
follows (Flax's own cells included) and what the layers read from a flaxlstm cell."""

from flaxlstm.nn.cells.base import CellOptions, LinenStep, NnxStep
from flaxlstm.nn.cells.lstm import LSTMCarry, LSTMCell, LSTMOptions
from flaxlstm.nn.cells.slstm import SLSTMCarry, SLSTMCell, SLSTMOptions

__all__ = [
  "CellOptions",
  "LSTMCarry",
  "LSTMCell",
  "LSTMOptions",
  "LinenStep",
  "NnxStep",
  "SLSTMCarry",
  "SLSTMCell",
  "SLSTMOptions",
]
