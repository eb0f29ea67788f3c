"""Windows and batches: THE batching API of training and evaluation.

Windows are never materialised for a whole split: a window is just the row ``i`` of its
first forecast value, with inputs ``[i - lookback, i)`` and targets ``[i, i + horizon)``,
and a split's windows are a `WindowIndex` (per series, a first row and a count), so even
10^8 windows of a large panel cost a few arrays of one number per series. Batches are
gathered by fancy indexing when needed. Every training batch is a pure function of
``(seed, step)`` (`batch_for_step`), so a resumed or multi-host run re-derives it without
iterator state; evaluation batches (`eval_batches`) are in order, padded to one shape so
a jitted step compiles once.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from flaxlstm.data.io import error
from flaxlstm.data.series import SeriesData, WindowIndex

# Stream tag of the permutation random stream (augment.py has its own), so the streams
# stay independent even when (seed, epoch) and (seed, step) hold equal numbers.
PERMUTATION_STREAM = 0


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer: a fast, well-mixed hash of uint64 values."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def shuffled_positions(
  positions: Any, n: int, seed: int, epoch: int, rounds: int = 6
) -> np.ndarray:
  """Position `positions` of epoch `epoch`'s shuffled order of ``0 .. n - 1``.

  A keyed permutation computed pointwise, so a batch costs O(batch) whatever ``n``: a
  balanced Feistel network on the smallest even number of bits covering ``n`` (a bijection
  of ``[0, 2^bits)``, keys from ``(seed, epoch)``), with cycle walking to stay in
  ``[0, n)`` (apply it again until the value is below ``n``; the walk stays a bijection
  and takes under 4 applications on average, as ``2^bits < 4n``).
  """
  positions = np.asarray(positions, dtype=np.uint64)
  bits = max(2, int(n - 1).bit_length())
  bits += bits % 2
  half = np.uint64(bits // 2)
  mask = np.uint64((1 << (bits // 2)) - 1)
  rng = np.random.default_rng([seed, PERMUTATION_STREAM, epoch])
  keys = rng.integers(0, 2**63, size=rounds, dtype=np.int64).astype(np.uint64)

  def permute(v: np.ndarray) -> np.ndarray:
    left, right = v >> half, v & mask
    for key in keys:
      left, right = right, left ^ (_mix(right ^ key) & mask)
    return (left << half) | right

  with np.errstate(over="ignore"):  # uint64 products wrap by design
    out = permute(positions)
    outside = out >= np.uint64(n)
    while outside.any():
      out[outside] = permute(out[outside])
      outside = out >= np.uint64(n)
  return out.astype(np.int64)


def model_inputs(
  data: SeriesData, starts: np.ndarray, future_known: np.ndarray | None = None
) -> dict[str, np.ndarray]:
  """What the model reads for windows starting at `starts` (the Forecaster's arguments).

  ``x (B, lookback, n_features)`` and ``y_last (B, n_targets)`` (the last observed
  target); with known covariates ``known (B, lookback + horizon, n_known)``; with static
  columns ``static (B, n_static)``; for a long table ``series (B,)`` (the model's series
  id; -1 for a series the run never saw).

  Args:
    future_known: ``(B, horizon, n_known)`` known values after the data's last row, for
      forecasts past the end (the rows are not in the file).
  """
  starts = np.asarray(starts, dtype=np.int64)
  out = {"x": gather_inputs(data, starts), "y_last": data.y[starts - 1]}
  if data.known is not None:
    if future_known is None:
      rows = data.input_rows(starts, np.arange(-data.lookback, data.horizon))
      out["known"] = data.known[rows]
    else:
      rows = data.input_rows(starts, np.arange(-data.lookback, 0))
      out["known"] = np.concatenate([data.known[rows], future_known], axis=1)
  if data.static is not None or data.series_ids:
    series = data.row_series(starts - 1)  # the row before a start is always the series'
    if data.static is not None:
      out["static"] = data.static[series]
    if data.series_ids:
      out["series"] = data.series_codes[series]
  return out


def gather_inputs(data: SeriesData, starts: np.ndarray) -> np.ndarray:
  """Input windows ``x[i - lookback : i]`` for each start ``i``: ``(B, lookback, F)``.

  Starts may go up to ``n_rows`` (the forecast beyond the end of the data).
  """
  return data.x[data.input_rows(starts, np.arange(-data.lookback, 0))]


def gather_windows(data: SeriesData, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Gathers a batch of windows by index, without materialising the split.

  Args:
    data: the prepared series.
    starts: int array ``(B,)`` of window indices (from ``window_starts``).

  Returns:
    ``x`` float32 ``(B, lookback, n_features)`` and ``y`` float32
    ``(B, horizon, n_targets)``, both scaled.
  """
  return gather_inputs(data, starts), gather_targets(data, starts)


def gather_targets(data: SeriesData, starts: np.ndarray) -> np.ndarray:
  """Target windows ``y[i : i + horizon]`` for each start ``i``: ``(B, horizon, targets)``."""
  starts = np.asarray(starts, dtype=np.int64)
  return data.y[starts[:, None] + np.arange(data.horizon, dtype=np.int64)]


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
  starts: WindowIndex | np.ndarray,
  batch_size: int,
  seed: int,
  step: int,
  shuffle: bool = True,
  drop_last: bool = True,
) -> np.ndarray:
  """Window starts of global train step ``step``: a pure function of (seed, step).

  ``epoch = step // steps_per_epoch`` and the batch is the ``step % steps_per_epoch``-th
  slice of that epoch's order, so a resumed run needs only the step number. The order of
  one series (a wide table) is ``epoch_batches``'s permutation, as it has always been, so
  earlier runs reproduce exactly; a panel's index may hold 10^8 windows, so its order is
  `shuffled_positions`, computed for the batch's positions only.

  Raises:
    InputError: if the split has fewer windows than one batch.
  """
  if isinstance(starts, WindowIndex) and starts.n_series > 1:
    n = len(starts)
    per_epoch = steps_per_epoch(n, batch_size, drop_last)
    if per_epoch == 0:
      raise error(
        f"the train split has {n} windows, fewer than one batch of {batch_size}; lower "
        "the batch size or use more training rows"
      )
    epoch, index = divmod(step, per_epoch)
    positions = (index * batch_size + np.arange(batch_size, dtype=np.int64)) % n
    if shuffle:
      positions = shuffled_positions(positions, n, seed, epoch)
    return starts.rows(positions)
  if isinstance(starts, WindowIndex):
    starts = starts.all_rows()
  starts = np.asarray(starts, dtype=np.int64)
  per_epoch = steps_per_epoch(len(starts), batch_size, drop_last)
  if per_epoch == 0:
    raise error(
      f"the train split has {len(starts)} windows, fewer than one batch of "
      f"{batch_size}; lower the batch size or use more training rows"
    )
  epoch, index = divmod(step, per_epoch)
  args = (len(starts), batch_size, seed, epoch, shuffle, drop_last)
  positions = _epoch_order(*args) if len(starts) <= _CACHED_WINDOWS else epoch_batches(*args)
  return starts[positions[index]]


# An epoch's order serves all of its steps: computed once per (seed, epoch), not once per
# step (a permutation of every window, which each member of a population would otherwise
# pay on every step). Kept for splits of up to 100k windows, so the 64 entries
# (a population's members' current epochs) hold at most 51 MB.
_CACHED_WINDOWS = 100_000


@functools.lru_cache(maxsize=64)
def _epoch_order(*args) -> np.ndarray:
  order = epoch_batches(*args)
  order.setflags(write=False)
  return order


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
