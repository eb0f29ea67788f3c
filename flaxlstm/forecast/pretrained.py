"""Forecasters built on a pretrained model, trained (fine-tuned) by the same stack as
`Forecaster`: `model.encoder="tirex"` (TiRex, flaxlstm/pretrained/tirex.py).

TiRex is a whole forecaster, not an encoder to put a decoder on: it reads each target's
own past (univariate), scales each window itself, and emits quantiles. So the registry
entry (`TiRexEncoder`) builds the whole model (`forecaster`), and its rules require what
that implies: the quantile head at the model's levels, no level tricks (`predict_delta`,
RevIN: TiRex scales each window by its own mean and deviation already).

Options, `model.tirex.*`: `weights` (a `.npz` from `flaxlstm tirex convert`; "" = random
weights of the sizes below), the sizes (`patch_size`, `embedding_dim`, `num_heads`,
`num_blocks`, `ffn_proj_factor`, `input_ff_dim`, `train_ctx_len`; with `weights`, the
file's own), `context_length` (steps each forecast reads: 0 = the model's
`train_ctx_len`, as TiRex zero-shot; the window's `data.lookback` is NaN-padded to it)
and `rollout_patches` (patches per pass beyond the first).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxlstm.config.specs import ModelSpec
from flaxlstm.pretrained import tirex

Array = jax.Array


# The model's sizes are `TiRexConfig`'s fields (its levels are `model.quantiles`).
SIZES = tuple(f for f in dataclasses.fields(tirex.TiRexConfig) if f.name != "quantiles")
TiRexOptions = dataclasses.make_dataclass(
  "TiRexOptions",
  [("weights", str, dataclasses.field(default=""))]
  + [(f.name, f.type, dataclasses.field(default=f.default)) for f in SIZES]
  + [
    ("context_length", int, dataclasses.field(default=0)),
    ("rollout_patches", int, dataclasses.field(default=1)),
  ],
  frozen=True,
)

OPTIONS = tuple(dataclasses.fields(TiRexOptions))


@functools.lru_cache(maxsize=4)
def weights(path: str) -> tuple[tirex.TiRex, Any]:
  # Read once per process: the config is needed to build the model, the arrays to init it.
  return tirex.read_weights(path)


def tirex_options(spec: ModelSpec) -> dict[str, Any]:
  """`model.tirex.*`, defaults filled in."""
  given = spec.options_of("tirex")
  return {f.name: given.get(f.name, f.default) for f in OPTIONS}


def tirex_config(spec: ModelSpec) -> tirex.TiRexConfig:
  """The model's sizes: the weights file's, or `model.tirex.*`'s."""
  o = tirex_options(spec)
  if o["weights"]:
    return weights(o["weights"])[0].config
  return tirex.TiRexConfig(quantiles=tuple(spec.quantiles), **{f.name: o[f.name] for f in SIZES})


class TiRexForecaster(nn.Module):
  """TiRex as a flaxlstm forecaster: `(B, L, F)` -> the quantiles `(B, H, T, Q)` of each
  target (read from its own column of the window), sorted along Q (rearranged: TiRex's
  quantiles may cross; sorted ones are never further from the truth in pinball loss)."""

  horizon: int
  n_targets: int
  spec: ModelSpec = ModelSpec()
  target_columns: tuple[int, ...] = ()
  n_series: int = 0

  @property
  def options(self) -> dict[str, Any]:
    return tirex_options(self.spec)

  @property
  def config(self) -> tirex.TiRexConfig:
    return tirex_config(self.spec)

  @property
  def head(self):
    from flaxlstm.forecast import heads

    return heads.make(self.spec.head, self.spec.quantiles)

  @nn.compact
  def __call__(
    self,
    x: Array,
    y_last: Array | None = None,
    known: Array | None = None,
    static: Array | None = None,
    series: Array | None = None,
    *,
    deterministic: bool = True,
  ) -> Array:
    del y_last, known, static, series, deterministic  # TiRex reads the target's past only
    cfg, opts = self.config, self.options
    impl = self.spec.cell_options.get("implementation", "auto")
    net = tirex.TiRex(cfg, implementation=impl, name="tirex")
    batch, length = x.shape[:-2], x.shape[-2]
    cols = list(self.target_columns)
    context = jnp.moveaxis(jnp.asarray(x)[..., cols], -1, -2).reshape(-1, length)  # (B * T, L)
    q = tirex.rollout(
      net,
      cfg,
      context,
      self.horizon,
      rollout_patches=opts["rollout_patches"],
      length=opts["context_length"] or cfg.train_ctx_len,
    )  # (B * T, H, Q)
    q = jnp.sort(q, axis=-1).reshape(batch + (self.n_targets, self.horizon, q.shape[-1]))
    return jnp.moveaxis(q, -3, -2)

  @nn.nowrap
  def pretrained(self, params: Any) -> Any:
    """`params` (from `init`) with the weights file's arrays in place, or as they are."""
    path = self.options["weights"]
    if not path:
      return params
    _, loaded = weights(path)
    return {**params, "tirex": loaded}
