"""sLSTM train steps: flaxlstm's fused kernel vs its autodiff loop vs the `xlstm` package.

One timed step is forward + backward + AdamW update of a stack of sLSTM blocks (the `xlstm`
package's block: pre-norm, sLSTM layer with a causal convolution, residual, gated
feed-forward) on random inputs and targets, MSE on the outputs. The peers:

- `flaxlstm fused`: `flaxlstm.nn.xlstm.SLSTMBlock`, its cells on the fused custom VJP
  (`flaxlstm/nn/kernels/slstm_fused.py`, what "auto" picks);
- `flaxlstm autodiff`: the same model on the autodiff loop (`implementation="autodiff"`);
- `xlstm vanilla`: the `xlstm` package's `sLSTMBlock` on its CPU backend (PyTorch, float32),
  with `torch.optim.AdamW`.

The three start from the same weights (`flaxlstm.nn.convert.from_xlstm_slstm_block`) and the
first step's losses are checked equal before timing. Steps are interleaved (peer A, peer B,
..., the order turned by one each round) so that drifts of a shared machine, and one peer's
threads still busy as the next starts, hit every peer alike; medians and bests of `--steps`.
The process reuses freed memory (`flaxlstm.host.reuse_freed_memory`, as the `flaxlstm`
program does) unless FLAXLSTM_RELEASE_HOST_MEMORY=1.

Shapes: `tirex` (TiRex's: width 512, 4 heads, 12 blocks, feed-forward factor 2.667; batch
32, 64 steps), `tirex_block` (one of those blocks), `long` (one block of the same width
over 2,048 steps, batch 8), `tirex_layer` and `long_layer` (those without the feed-forward:
the sLSTM layer's own step), `tiny` (for the tests).

Usage:
  python experiments/benchmarks/slstm_step.py --shape tirex --steps 5
  python experiments/benchmarks/slstm_step.py --shape long --steps 3 --peers fused,autodiff
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxlstm import host


@dataclasses.dataclass(frozen=True)
class Shape:
  width: int
  heads: int
  blocks: int
  batch: int
  time: int
  ffn: float = 2.6667


SHAPES = {
  "tirex": Shape(512, 4, 12, 32, 64),
  # One of TiRex's blocks: the xlstm package's CPU backend keeps every step's autograd graph
  # and needs about 3 GB per block here, so its 12 blocks do not fit a 24 GB machine.
  "tirex_block": Shape(512, 4, 1, 32, 64),
  "long": Shape(512, 4, 1, 8, 2048),
  # The sLSTM layer alone (no feed-forward): what the kernels change.
  "tirex_layer": Shape(512, 4, 1, 32, 64, ffn=0.0),
  "long_layer": Shape(512, 4, 1, 8, 2048, ffn=0.0),
  "tiny": Shape(16, 2, 2, 2, 8),
}


def _torch_stack(s: Shape, backend: str = "vanilla"):
  import torch
  from xlstm.blocks.slstm.block import sLSTMBlock, sLSTMBlockConfig
  from xlstm.blocks.slstm.layer import sLSTMLayerConfig
  from xlstm.components.feedforward import FeedForwardConfig

  torch.manual_seed(0)
  blocks = []
  for k in range(s.blocks):
    cfg = sLSTMBlockConfig(
      slstm=sLSTMLayerConfig(
        embedding_dim=s.width, num_heads=s.heads, backend=backend, dtype="float32"
      ),
      feedforward=FeedForwardConfig(proj_factor=s.ffn, act_fn="gelu") if s.ffn else None,
      _num_blocks=s.blocks,
      _block_idx=k,
    )
    blocks.append(sLSTMBlock(cfg))
  model = torch.nn.Sequential(*blocks)
  with torch.no_grad():  # the recurrent kernels start at zero there: give them weights
    for name, v in model.named_parameters():
      if "recurrent_kernel" in name:
        v.copy_(0.1 * torch.randn_like(v))
  return model


def _flax_stack(s: Shape, implementation: str):
  from flax import linen as nn

  from flaxlstm.nn.xlstm import SLSTMBlock

  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
      for k in range(s.blocks):
        x = SLSTMBlock(
          s.width,
          num_heads=s.heads,
          implementation=implementation,
          ffn_proj_factor=s.ffn,
          name=f"block_{k}",
        )(x)
      return x

  return Stack()


def _params_from_torch(model, s: Shape, layout: str = "vanilla") -> dict:
  from flaxlstm.nn import convert

  state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
  return {
    "params": {
      f"block_{k}": convert.from_xlstm_slstm_block(
        state, num_heads=s.heads, layout=layout, prefix=f"{k}."
      )
      for k in range(s.blocks)
    }
  }


def make_peers(s: Shape, names: list[str], backend: str = "vanilla") -> dict:
  """Each peer's `step() -> loss` (the first call compiles), from the same weights;
  `backend`: the `xlstm` package's ("vanilla" on CPU, "cuda" its CUDA kernel on a GPU)."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((s.batch, s.time, s.width)).astype(np.float32)
  y = rng.standard_normal((s.batch, s.time, s.width)).astype(np.float32)
  torch_model = _torch_stack(s, backend)
  params = _params_from_torch(torch_model, s, backend)
  peers = {}
  for name in names:
    if name == "xlstm":
      import torch

      device = "cuda" if backend == "cuda" else "cpu"
      torch_model.to(device)
      opt = torch.optim.AdamW(torch_model.parameters(), lr=1e-3, weight_decay=1e-4)
      xt, yt = torch.tensor(x, device=device), torch.tensor(y, device=device)

      def torch_step(model=torch_model, opt=opt, xt=xt, yt=yt):
        opt.zero_grad()
        loss = torch.mean((model(xt) - yt) ** 2)
        loss.backward()
        opt.step()
        return float(loss)  # waits for the device

      peers[f"xlstm {backend}"] = torch_step
      continue
    model = _flax_stack(s, name)
    tx = optax.adamw(1e-3, weight_decay=1e-4)

    def step(state, x, y, model=model, tx=tx):
      p, o = state
      loss, g = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - y) ** 2))(p)
      u, o = tx.update(g, o, p)
      return (optax.apply_updates(p, u), o), loss

    jitted = jax.jit(step, donate_argnums=0)
    holder = {"state": (params, tx.init(params))}
    holder["state"] = jax.tree.map(jnp.array, holder["state"])

    def jax_step(jitted=jitted, holder=holder):
      holder["state"], loss = jitted(holder["state"], x, y)
      return float(loss)

    peers[f"flaxlstm {name}"] = jax_step
  return peers


def _param_shapes(s: Shape):
  x = jnp.zeros((1, 4, s.width))
  return jax.eval_shape(lambda: _flax_stack(s, "auto").init(jax.random.key(0), x))


def run(shape: str, steps: int, names: list[str], backend: str = "vanilla") -> dict:
  s = SHAPES[shape]
  peers = make_peers(s, names, backend)
  first = {name: step() for name, step in peers.items()}  # compiles; the same first loss
  losses = list(first.values())
  assert np.allclose(losses, losses[0], rtol=1e-4), first
  times: dict[str, list[float]] = {name: [] for name in peers}
  # The order turns every round, so that each peer follows each other one equally often:
  # in a fixed order the step right after torch's was the slower for it, whichever peer it
  # was (BENCHMARKS.md; torch's threads still busy, presumably).
  names = list(peers)
  faults = dict.fromkeys(names, 0)
  for k in range(steps):
    for name in names[k % len(names) :] + names[: k % len(names)]:
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      t0 = time.perf_counter()
      peers[name]()
      times[name].append(time.perf_counter() - t0)
      faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
  return {
    "shape": shape,
    **dataclasses.asdict(s),
    "params": int(sum(p.size for p in jax.tree.leaves(_param_shapes(s)))),
    "first_loss": first,
    "median_s": {k: statistics.median(v) for k, v in times.items()},
    "best_s": {k: min(v) for k, v in times.items()},
    # Minor page faults per step (the allocator: flaxlstm/host.py).
    "page_faults_per_step": {k: v / steps for k, v in faults.items()},
  }


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--shape", default="tirex", choices=sorted(SHAPES))
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--peers", default="fused,autodiff,xlstm")
  ap.add_argument(
    "--xlstm-backend",
    default="vanilla",
    choices=("vanilla", "cuda"),
    help="the xlstm package's backend: vanilla (CPU) or cuda (its CUDA kernel, on a GPU)",
  )
  args = ap.parse_args()
  # As the `flaxlstm` program runs (before JAX starts; FLAXLSTM_RELEASE_HOST_MEMORY=1 measures
  # glibc's defaults): every peer, torch included, then reuses its freed memory.
  reused = host.reuse_freed_memory()
  out = run(args.shape, args.steps, args.peers.split(","), args.xlstm_backend)
  out["allocator"] = "freed memory reused" if reused else "glibc malloc defaults"
  ref = out["median_s"].get("flaxlstm fused")
  print(f"\n{args.shape}: {args.steps} interleaved steps (median / best, s; {out['allocator']})")
  for name in out["median_s"]:
    med, best = out["median_s"][name], out["best_s"][name]
    ratio = f"  {med / ref:.2f}x the fused step's time" if ref and name != "flaxlstm fused" else ""
    faults = out["page_faults_per_step"][name]
    print(f"  {name:20s} {med:8.3f} / {best:8.3f}  {faults:7.0f} page faults/step{ratio}")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
