"""The parameter layout of an xLSTM stack (`flaxlstm.nn.xlstm.XLSTMStack`): which blocks run
as one scanned run. A module of its own so that the converters (nn/convert.py) read the
same layout as the stack without importing the layers."""

from __future__ import annotations

from typing import Sequence


def block_runs(num_blocks: int, slstm_at: Sequence[int]) -> list[tuple[str, int, int]]:
  """The stack's blocks as runs `(kind, first index, length)`: each sLSTM block alone,
  consecutive mLSTM blocks together."""
  runs: list[tuple[str, int, int]] = []
  for i in range(num_blocks):
    kind = "slstm" if i in slstm_at else "mlstm"
    if kind == "mlstm" and runs and runs[-1][0] == "mlstm":
      runs[-1] = ("mlstm", runs[-1][1], runs[-1][2] + 1)
    else:
      runs.append((kind, i, 1))
  return runs
