"""Per-block rematerialization that holds for blocks unrolled one after another.

`nn.remat` (`jax.checkpoint`) emits each block's forward a second time for the backward
pass, behind optimization barriers so that the compiler does not merge it back into the
first. XLA:CPU lowers those barriers and then does merge it (common-subexpression
elimination) wherever the blocks follow each other unrolled in the program: the
activations stay alive as without remat (BENCHMARKS.md, `experiments/benchmarks/
remat_cpu.py`). Inside a loop (`nn.scan`) the loop boundary keeps them apart, which is why
`XLSTMStack` scans its runs of mLSTM blocks; its sLSTM blocks are each unrolled.

`remat_call` is the remat for those: a custom VJP whose forward keeps only the block's
input and parameters, and whose backward recomputes the block from an input that depends
on the output's cotangent, `x + 0 * ct[..., :1]`. That term is zero, but XLA may not fold
`0 * y` away (it is NaN for an infinite `y`), so the recomputed forward is a different
expression from the first (no merge) and cannot run before the cotangent exists (it is
scheduled in the backward pass, where its activations are needed). Gradients are those
of the block (tested against the block without remat).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

Array = jax.Array


def remat_call(
  block: nn.Module,
  x: Array,
  *,
  seq_lengths: Array | None = None,
  deterministic: bool | None = None,
  stochastic: bool = False,
) -> Array:
  """`block(x, seq_lengths=..., deterministic=...)`, its activations recomputed in the
  backward pass (the module docstring). `block` is a submodule of the caller (created in
  its compact `__call__`) whose parameters exist: at init, call the block itself.
  `stochastic`: the block draws dropout masks, from one `dropout` key per call here, so
  that the recomputation draws the same ones."""
  unbound = block.clone(parent=None)

  def run(params, x, lens, key):
    rngs = None if key is None else {"dropout": key}
    return unbound.apply(
      {"params": params}, x, seq_lengths=lens, deterministic=deterministic, rngs=rngs
    )

  def key_of(mdl):
    return mdl.make_rng("dropout") if stochastic else None

  def plain(mdl, x, lens):
    return run(mdl.variables["params"], x, lens, key_of(mdl))

  def forward(mdl, x, lens):
    params, key = mdl.variables["params"], key_of(mdl)
    return run(params, x, lens, key), (params, x, lens, key)

  def backward(res, ct):
    params, x, lens, key = res
    x = x + 0.0 * ct[..., :1].astype(x.dtype)  # after the cotangent, and not the forward
    _, vjp = jax.vjp(lambda p, x: run(p, x, lens, key), params, x)
    d_params, dx = vjp(ct)
    d_lens = None if lens is None else np.zeros(np.shape(lens), jax.dtypes.float0)
    return {"params": d_params}, dx, d_lens

  return nn.custom_vjp(plain, forward_fn=forward, backward_fn=backward)(block, x, seq_lengths)
