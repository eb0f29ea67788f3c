r"""The mLSTM over a whole sequence: chunkwise (linear in T) and parallel (quadratic in T),
kernels "mlstm_chunkwise" and "mlstm_parallel" that `MLSTMCell` offers as "chunkwise" and
"parallel"; "mlstm_recurrent" ("recurrent") is its step under `lax.scan`.

The recurrence (flaxlstm/nn/cells/mlstm.py) is linear in `(C, n)`, so the state after any
steps is a weighted sum of the inputs' `k v^T`. Within a chunk of L steps, with the
chunk's running sum of log forget gates :math:`b_\tau = \sum_{s \le \tau} \log f_s` and the
state `(C, n, m)` it starts from, step :math:`\tau` reads

.. math::

    \log D_{\tau\sigma} = b_\tau - b_\sigma + \tilde\imath_\sigma \ (\sigma \le \tau), \quad
    m_\tau = \max(b_\tau + m,\ \max_\sigma \log D_{\tau\sigma}) \\
    \mathrm{num}_\tau = e^{b_\tau + m - m_\tau} C^\top q_\tau
      + \sum_\sigma (q_\tau^\top k_\sigma) e^{\log D_{\tau\sigma} - m_\tau} v_\sigma, \quad
    \mathrm{den}_\tau = \max(|e^{b_\tau + m - m_\tau} q_\tau^\top n
      + \sum_\sigma (q_\tau^\top k_\sigma) e^{\log D_{\tau\sigma} - m_\tau}|,\ e^{-m_\tau})
      + \epsilon

and :math:`\tilde h_\tau = \mathrm{num}_\tau / \mathrm{den}_\tau`: the recurrent step's
output exactly, its stabilizer included (`m_tau` is the recurrent `m_t`). The chunk's end
state is the same sum at :math:`\tau = L`. So the kernel runs in two passes:

1. the states at chunk boundaries, a `lax.scan` over chunks whose step is one `K^T V`
   matmul per head (`DH x L x DH`): compile time does not grow with T;
2. every chunk's outputs at once from its start state, batched over chunks: `L x L`
   matrices per chunk, so time and memory are linear in T for a fixed chunk size.

The parallel form is one chunk of the whole sequence (the `xlstm` package's
`parallel_stabilized_simple`, and with an initial state besides). In a chunk longer than
the default 64 steps, :math:`b_\tau - b_\sigma` is summed directly over the steps between
(a cumulative sum over each row of an `L x L` matrix, one more pass over it) rather than
taken as a difference of running sums, whose float32 rounding grows with the sums'
magnitude, that is with L (`_between`). Steps past a sequence's
end (`lengths`) read as `f' = 1, i' = 0` (the state passes through) and output zero; the
masks are `where`s on the weights, so no `exp` of the empty state's `m` reaches a gradient.
Gradients are JAX's of these passes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from flaxlstm.nn.cells.base import like
from flaxlstm.nn.cells.mlstm import EMPTY, MLSTMCarry, MLSTMCell, MLSTMStepInputs
from flaxlstm.nn.kernels.registry import Call, Kernel, register
from flaxlstm.nn.kernels.scan import Autodiff

Array = jax.Array

DEFAULT_CHUNK = 64


def _to_end(log_f, b, exact: bool):
  """`b_L - b_s`: the log forget gates after each step up to its chunk's end, `(..., L)`.
  `exact`: summed from the end (a reverse cumulative sum) rather than as a difference of
  running sums, whose float32 rounding is that of `b`'s magnitude, not of the result's."""
  if not exact:
    return b[..., -1:] - b
  after = jnp.flip(jnp.cumsum(jnp.flip(log_f, -1), -1), -1)  # sum over s' >= s
  return jnp.concatenate([after[..., 1:], jnp.zeros_like(after[..., :1])], -1)


def _between(log_f, b, exact: bool):
  """`b_tau - b_sigma` for every pair, `(..., L, L)` (zero above the diagonal where
  `exact`): the log forget gates of the steps after sigma up to tau. `exact`: each row
  summed from its diagonal outwards (a reverse cumulative sum over sigma), so the rounding
  is relative to the sum itself."""
  if not exact:
    return b[..., :, None] - b[..., None, :]
  L = log_f.shape[-1]
  # Row tau, column sigma: f of step sigma + 1, where sigma < tau.
  nxt = jnp.concatenate([log_f[..., 1:], jnp.zeros_like(log_f[..., :1])], -1)
  below = jnp.tril(jnp.ones((L, L), bool), -1)
  rows = jnp.where(below, nxt[..., None, :], 0.0)
  return jnp.flip(jnp.cumsum(jnp.flip(rows, -1), -1), -1)


def _chunk_end_states(carry: MLSTMCarry, k, v, log_f, b, ii, valid, exact: bool):
  """Pass 1: the state at the start of every chunk and the final state. Chunk-major
  inputs: `k, v (NC, B, NH, L, DH)`, `log_f, b, ii (NC, B, NH, L)` (log forget gate, its
  running sum, input pre-activation), `valid (NC, B, 1, L)`; `exact`: see `_to_end`."""
  # Each step's weight at its chunk's end, before the stabilizer: b_L - b_s + i_s.
  a = _to_end(log_f, b, exact) + ii
  if valid is not None:
    a = jnp.where(valid, a, EMPTY)
  a_max = a.max(-1)  # (NC, B, NH)

  def chunk(state, inp):
    C, n, m = state
    k_c, v_c, a_c, a_max_c, b_last, on = inp
    m_new = jnp.maximum(b_last + m, a_max_c)
    decay = jnp.exp(b_last + m - m_new)
    w = jnp.exp(a_c - m_new[..., None])  # (B, NH, L)
    if on is not None:  # (an empty state with no real step yet has m_new = EMPTY too)
      w = jnp.where(on, w, 0.0)
    kw = k_c * w[..., None]
    C_new = decay[..., None, None] * C + jnp.einsum("bhld,bhle->bhde", kw, v_c)
    n_new = decay[..., None] * n + kw.sum(-2)
    return MLSTMCarry(C_new, n_new, m_new), state

  inputs = (k, v, a, a_max, b[..., -1], valid)
  if k.shape[0] == 1:
    # One chunk (the parallel form, or T <= chunk_size): no loop, so that where the caller
    # drops the final state (an encoder reading only the outputs) XLA drops its `K^T V`,
    # `B x NH x DH x DH` per step's batch, often the largest array here.
    final, start = chunk(carry, jax.tree.map(lambda t: t[0], inputs))
    return final, jax.tree.map(lambda t: t[None], start)
  return jax.lax.scan(chunk, carry, inputs)


def _chunk_outputs(starts: MLSTMCarry, q, k, v, log_f, b, ii, valid, eps: float, exact: bool):
  """Pass 2: every chunk's outputs from the state it starts from, batched over chunks."""
  C, n, m = starts  # (NC, B, NH, DH, DH), (NC, B, NH, DH), (NC, B, NH)
  L = q.shape[-2]
  on = jnp.tril(jnp.ones((L, L), bool))  # sigma <= tau
  if valid is not None:
    on = on & valid[..., None, :]  # (NC, B, 1, L, L): and sigma a real step
  log_d = jnp.where(on, _between(log_f, b, exact) + ii[..., None, :], EMPTY)
  inter = b + m[..., None]  # (NC, B, NH, L)
  m_row = jnp.maximum(inter, log_d.max(-1))
  d = jnp.where(on, jnp.exp(log_d - m_row[..., None]), 0.0)
  g = jnp.exp(inter - m_row)  # the start state's weight; 0 for an empty state
  s = jnp.einsum("...ld,...sd->...ls", q, k) * d

  def read_state():
    """What the steps read from their chunk's start state: `g q^T C`, `g q^T n`."""
    return g[..., None] * jnp.einsum("...ld,...de->...le", q, C), g * jnp.einsum(
      "...ld,...d->...l", q, n
    )

  if C.shape[0] == 1:
    # One chunk from the empty state (no initial carry given: the usual call) reads nothing
    # from it; skip the `q^T C` matmul, as large as the rest, at run time.
    zeros = lambda: (jnp.zeros(q.shape[:-1] + C.shape[-1:], q.dtype), jnp.zeros_like(b))
    from_state, qn_state = jax.lax.cond(jnp.all(m <= EMPTY / 2), zeros, read_state)
  else:
    from_state, qn_state = read_state()
  num = from_state + jnp.einsum("...ls,...se->...le", s, v)
  qn = qn_state + s.sum(-1)
  if valid is None:
    return num / (jnp.maximum(jnp.abs(qn), jnp.exp(-m_row)) + eps)[..., None]
  # exp(-m) of a masked step's m (possibly the empty state's) never enters a gradient.
  floor = jnp.exp(-jnp.where(valid, m_row, 0.0))
  h = num / (jnp.maximum(jnp.abs(qn), floor) + eps)[..., None]
  return jnp.where(valid[..., None], h, 0.0)


def mlstm_sequence(
  x: MLSTMStepInputs,
  carry: MLSTMCarry,
  lengths: Array | None = None,
  *,
  chunk_size: int | None = DEFAULT_CHUNK,
  eps: float = 1e-6,
) -> tuple[MLSTMCarry, Array]:
  """The mLSTM over batch-major `x` (`q, k, v (B, T, NH, DH)`, `k` scaled; `i, f (B, T,
  NH)`) from `carry`: `(final carry, h~ (B, T, NH, DH) float32)`. `chunk_size=None`: one
  chunk of T (the parallel form). A sequence's final carry is its state after its own
  `lengths` steps; outputs past it are zero."""
  B, T = x.q.shape[:2]
  L = T if chunk_size is None else max(1, min(chunk_size, T))
  nc = -(-T // L)
  pad = nc * L - T
  # Masks only where some step is not real (ragged lengths, padding to whole chunks).
  valid = None
  if lengths is not None or pad:
    valid = jnp.arange(T)[None, :] < (T if lengths is None else lengths[:, None])
    valid = jnp.broadcast_to(valid, (B, T))

  def chunks(a, fill=0.0):
    """`(B, T, ...)` -> chunk-major, head-major `(NC, B, NH, L, ...)`, padded at the end."""
    a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2), constant_values=fill)
    a = a.reshape((B, nc, L) + a.shape[2:])
    return jnp.moveaxis(jnp.moveaxis(a, 1, 0), 2, 3)  # (NC, B, NH?, L, ...)

  f32 = lambda a: a.astype(jnp.float32)
  q, k, v = chunks(f32(x.q)), chunks(f32(x.k)), chunks(f32(x.v))
  on = None if valid is None else chunks(valid[..., None], False)  # (NC, B, 1, L)
  log_f = chunks(jax.nn.log_sigmoid(f32(x.f)))
  if on is not None:
    log_f = jnp.where(on, log_f, 0.0)  # a masked step keeps f' = 1
  b = jnp.cumsum(log_f, axis=-1)
  # Over a long chunk (the parallel form), `b` grows to hundreds or thousands in magnitude
  # and its differences lose float32 digits that the short chunks keep (at T = 4096, 2e-5
  # of the outputs): there the sums between steps are taken directly (`_between`).
  exact = L > DEFAULT_CHUNK
  ii = chunks(f32(x.i))
  # Opaque to XLA: with a start state that is a constant of the jitted program (zeros with
  # m = 0, as a caller may build inside `jit`), XLA:CPU (jax 0.10.2) compiled the parallel
  # form at T = 1024 into outputs off by 1e23-1e37, different on every compile; from the
  # same state passed in as an argument, or behind this barrier, it is right.
  carry = jax.lax.optimization_barrier(MLSTMCarry(*(f32(a) for a in carry)))
  final, starts = _chunk_end_states(carry, k, v, log_f, b, ii, on, exact)
  h = _chunk_outputs(starts, q, k, v, log_f, b, ii, on, eps, exact)  # (NC, B, NH, L, DH)
  nh, dh = h.shape[2], h.shape[-1]
  h = jnp.moveaxis(jnp.moveaxis(h, 0, 1), 2, 3)  # (B, NC, L, NH, DH)
  return final, h.reshape(B, nc * L, nh, dh)[:, :T]


def supported(cell: Any, call: Call) -> str | None:
  """Why the sequence forms cannot run `cell` for `call` (None: they can)."""
  if not isinstance(cell, MLSTMCell):
    return "the mLSTM's sequence forms need an MLSTMCell"
  if call.recurrent_dropout:
    return "the mLSTM feeds no state back to its input: no recurrent dropout"
  return None


class MLSTMSequence(Kernel):
  """The chunkwise or parallel form (the module docstring) behind the kernel interface:
  batch-major inputs, the cell's `project` for every step at once, then `mlstm_sequence`.
  `remat` recomputes the chunk outputs in the backward pass (only the chunk-boundary states
  and the inputs are kept)."""

  def __init__(self, name: str, offered_as: str, chunked: bool):
    self.name, self._offered_as, self.chunked = name, offered_as, chunked

  @property
  def offered_as(self) -> str:
    return self._offered_as

  def unsupported(self, cell: Any, call: Call) -> str | None:
    return supported(cell, call)

  def run(self, cell, p, carry, x, lengths, *, h_mask=None, unroll=1, remat=False):
    del unroll, h_mask  # no time loop to unroll; no recurrent dropout (`unsupported`)
    chunk = cell.chunk_size if self.chunked else None

    def forms(carry, x, lengths):
      new, h = mlstm_sequence(cell.project(p, x), carry, lengths, chunk_size=chunk, eps=cell.eps)
      h = h.reshape(h.shape[:2] + (cell.features,)).astype(cell.compute_dtype)
      return like(carry, new), h

    if remat:
      forms = jax.checkpoint(forms, policy=jax.checkpoint_policies.nothing_saveable)
    return forms(carry, x, lengths)


class MLSTMRecurrent(Autodiff):
  """The mLSTM's step under `lax.scan` (scan.py's loop), asked for as "recurrent"."""

  name = "mlstm_recurrent"

  @property
  def offered_as(self) -> str:
    return "recurrent"

  def unsupported(self, cell: Any, call: Call) -> str | None:
    return supported(cell, call)


MLSTM_CHUNKWISE = register(MLSTMSequence("mlstm_chunkwise", "chunkwise", chunked=True))
MLSTM_PARALLEL = register(MLSTMSequence("mlstm_parallel", "parallel", chunked=False))
MLSTM_RECURRENT = register(MLSTMRecurrent())
