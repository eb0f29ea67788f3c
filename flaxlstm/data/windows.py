"""Windows and batches: THE batching API of training and evaluation.

Windows are never materialised for a whole split: a window is just the index ``i`` of its
first forecast row, with inputs ``[i - lookback, i)`` and targets ``[i, i + horizon)``, and
batches are gathered by fancy indexing when needed. Every training batch is a pure function
of ``(seed, step)`` (`batch_for_step`), so a resumed or multi-host run re-derives it
without iterator state; evaluation batches (`eval_batches`) are in order, padded to one
shape so a jitted step compiles once.
"""

from __future__ import annotations

import numpy as np

from flaxlstm.data.io import error
from flaxlstm.data.series import SeriesData

# Stream tag of the permutation random stream (augment.py has its own), so the streams
# stay independent even when (seed, epoch) and (seed, step) hold equal numbers.
PERMUTATION_STREAM = 0


def gather_inputs(data: SeriesData, starts: np.ndarray) -> np.ndarray:
  """Input windows ``x[i - lookback : i]`` for each start ``i``: ``(B, lookback, F)``.

  Starts may go up to ``n_rows`` (the forecast beyond the end of the data).
  """
  starts = np.asarray(starts, dtype=np.int64)
  rows = starts[:, None] + np.arange(-data.lookback, 0, dtype=np.int64)
  return data.x[rows]


def gather_windows(data: SeriesData, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Gathers a batch of windows by index, without materialising the split.

  Args:
    data: the prepared series.
    starts: int array ``(B,)`` of window indices (from ``window_starts``).

  Returns:
    ``x`` float32 ``(B, lookback, n_features)`` and ``y`` float32
    ``(B, horizon, n_targets)``, both scaled.
  """
  starts = np.asarray(starts, dtype=np.int64)
  rows = starts[:, None] + np.arange(data.horizon, dtype=np.int64)
  return gather_inputs(data, starts), data.y[rows]


def steps_per_epoch(n_windows: int, batch_size: int, drop_last: bool = True) -> int:
  """Number of train batches in one epoch."""
  if drop_last:
    return n_windows // batch_size
  return -(-n_windows // batch_size)


def epoch_batches(
  n_windows: int,
  batch_size: int,
  seed: int,
  epoch: int,
  shuffle: bool = True,
  drop_last: bool = True,
) -> np.ndarray:
  """Positions (into a split's ``window_starts``) of every batch of one epoch.

  The order is a pure function of ``(seed, epoch)``: each epoch gets its own permutation
  from ``np.random.default_rng([seed, 0, epoch])``, so a resumed run reproduces it.

  Args:
    n_windows: number of windows in the split.
    batch_size: windows per batch.
    seed: the config seed (non-negative).
    epoch: 0-based epoch number.
    shuffle: permute the windows; otherwise keep them in time order.
    drop_last: drop the final partial batch. Otherwise it is completed by wrapping around
      to the first positions of the same epoch order, so every batch has the same shape
      (jit compiles once) at the cost of a few windows seen twice that epoch.

  Returns:
    int64 ``(n_batches, batch_size)``; zero rows when ``n_windows < batch_size`` and
    ``drop_last``.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if shuffle:
    rng = np.random.default_rng([seed, PERMUTATION_STREAM, epoch])
    order = rng.permutation(n_windows).astype(np.int64)
  else:
    order = np.arange(n_windows, dtype=np.int64)
  n_batches = steps_per_epoch(n_windows, batch_size, drop_last)
  if n_windows == 0:
    return np.zeros((0, batch_size), np.int64)
  if not drop_last:
    order = np.resize(order, n_batches * batch_size)  # np.resize repeats cyclically.
  return order[: n_batches * batch_size].reshape(n_batches, batch_size)


def batch_for_step(
  starts: np.ndarray,
  batch_size: int,
  seed: int,
  step: int,
  shuffle: bool = True,
  drop_last: bool = True,
) -> np.ndarray:
  """Window starts of global train step ``step``: a pure function of (seed, step).

  ``epoch = step // steps_per_epoch`` and the batch is row ``step % steps_per_epoch``
  of ``epoch_batches(..., epoch)``, so a resumed run needs only the step number.

  Raises:
    InputError: if the split has fewer windows than one batch.
  """
  starts = np.asarray(starts, dtype=np.int64)
  per_epoch = steps_per_epoch(len(starts), batch_size, drop_last)
  if per_epoch == 0:
    raise error(
      f"the train split has {len(starts)} windows, fewer than one batch of "
      f"{batch_size}; lower the batch size or use more training rows"
    )
  epoch, index = divmod(step, per_epoch)
  positions = epoch_batches(len(starts), batch_size, seed, epoch, shuffle, drop_last)
  return starts[positions[index]]


def eval_batches(n_windows: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic in-order evaluation batches, last partial batch included.

  Every batch has the full ``batch_size`` so a jitted eval step compiles once: the last
  batch is padded by repeating the last real position, and ``mask`` marks which entries
  are real. Weight per-window metrics by ``mask`` (or drop the padding on the host).

  Returns:
    ``positions`` int64 ``(n_batches, batch_size)`` and ``mask`` bool of the same shape.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  n_batches = -(-n_windows // batch_size)
  flat = np.arange(n_batches * batch_size, dtype=np.int64)
  mask = flat < n_windows
  positions = np.minimum(flat, max(n_windows - 1, 0))
  return positions.reshape(n_batches, batch_size), mask.reshape(n_batches, batch_size)
