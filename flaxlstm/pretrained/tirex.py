r"""TiRex (NX-AI, 2025) in Flax: a zero-shot forecaster built from sLSTM blocks.

The model reads a univariate context cut into patches of `P` steps. Each patch is scaled
by the context's own mean and standard deviation (NaNs ignored), and is fed as
`[values (P), observed mask (P)]`, missing values set to 0:

.. math::

    e_t = \mathrm{Res}_{in}([\tilde x_t, \mathbb 1_t]), \quad
    e \leftarrow e + \mathrm{sLSTM}(\mathrm{RMSNorm}(e)), \quad
    e \leftarrow e + \mathrm{FFN}(\mathrm{RMSNorm}(e)) \ \ (\times\ \text{num\_blocks}), \quad
    \hat q_t = \mathrm{Res}_{out}(\mathrm{RMSNorm}(e_t))

`Res(x) = W_o \mathrm{ReLU}(W_h x) + W_r x` (all with biases); the sLSTM is
`flaxlstm.nn.xlstm.SLSTM` without the convolution; FFN is SwiGLU (`down(silu(gate) *
up)`, no biases). Token t's output holds the `Q x P` quantiles of the next patch, mapped
back to the data's units by the context's mean and scale. Longer horizons roll out:
the context is extended by a patch of NaNs (masked, not the forecast) and the model
reads it again (`forecast`).

Equivalence with NX-AI's `tirex-ts` package is tested on random weights
(tests/pretrained/test_tirex.py). Weights: `load_tirex(state_dict, config)` takes the
package's state dict as NumPy arrays; `flaxlstm tirex convert` turns the published
checkpoint into a plain `.npz` once (flaxlstm never unpickles), and `load_weights` reads it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from flaxlstm import fileio
from flaxlstm.errors import InputError
from flaxlstm.nn.residual import residual_boundary
from flaxlstm.nn.xlstm import SLSTM

Array = jax.Array

# The levels of the published model's quantile output.
QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# The key of a converted weights file that holds the config (JSON, as uint8 bytes).
CONFIG_KEY = "__tirex_config__"


@dataclasses.dataclass(frozen=True)
class TiRexConfig:
  """TiRex's hyperparameters; the defaults are the published model's (35M parameters).

  patch_size: steps per token, in and out. train_ctx_len: the context (steps) every
  forecast reads, cut or NaN-padded to it. input_ff_dim: the patch embeddings' hidden
  width. The blocks: `embedding_dim`, `num_heads`, `num_blocks`, `ffn_proj_factor` (the
  SwiGLU's width factor, rounded up to a multiple of 64).
  """

  patch_size: int = 32
  quantiles: tuple[float, ...] = QUANTILES
  embedding_dim: int = 512
  num_heads: int = 4
  num_blocks: int = 12
  ffn_proj_factor: float = 2.6667
  input_ff_dim: int = 2048
  train_ctx_len: int = 2048

  @property
  def ffn_dim(self) -> int:
    return int(math.ceil(self.embedding_dim * self.ffn_proj_factor / 64) * 64)

  @classmethod
  def from_tirex(cls, hyper_parameters: Mapping[str, Any]) -> TiRexConfig:
    """From a TiRex checkpoint's `hyper_parameters` (`model_config`, `train_ctx_len`) or
    the `model_config` dict itself."""
    model = dict(hyper_parameters.get("model_config", hyper_parameters))
    block = dict(model.get("block_kwargs", {}))
    try:
      if model["input_patch_size"] != model["output_patch_size"]:
        raise ValueError("TiRex needs input_patch_size == output_patch_size")
      ctx = hyper_parameters.get("train_ctx_len", model.get("train_ctx_len"))
      return cls(
        patch_size=int(model["input_patch_size"]),
        quantiles=tuple(float(q) for q in model["quantiles"]),
        embedding_dim=int(block["embedding_dim"]),
        num_heads=int(block["num_heads"]),
        num_blocks=int(block["num_blocks"]),
        ffn_proj_factor=float(block.get("ffn_proj_factor", 2.6667)),
        input_ff_dim=int(model["input_ff_dim"]),
        train_ctx_len=int(ctx if ctx is not None else cls.train_ctx_len),
      )
    except (KeyError, TypeError) as e:
      raise ValueError(f"not a TiRex config: {e}") from None

  def to_tirex(self) -> dict[str, Any]:
    """The `tirex-ts` package's `model_config` (its `TiRexZero(model_config=...)`)."""
    return dict(
      input_patch_size=self.patch_size,
      output_patch_size=self.patch_size,
      quantiles=list(self.quantiles),
      block_kwargs=dict(
        embedding_dim=self.embedding_dim,
        num_heads=self.num_heads,
        num_blocks=self.num_blocks,
        ffn_proj_factor=self.ffn_proj_factor,
      ),
      input_ff_dim=self.input_ff_dim,
    )


class ResidualBlock(nn.Module):
  """`W_o relu(W_h x) + W_r x`, biases on all three: TiRex's patch embeddings."""

  hidden: int
  out: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = nn.relu(nn.Dense(self.hidden, name="hidden_layer")(x))
    return nn.Dense(self.out, name="output_layer")(h) + nn.Dense(self.out, name="residual_layer")(x)


class RMSNorm(nn.Module):
  """`x / rms(x) * scale` over the last axis (float32 statistics; `scale` starts at 1)."""

  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.ones_init(), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
    return y.astype(x.dtype) * scale


class TiRexBlock(nn.Module):
  """`x + SLSTM(RMSNorm(x))`, then `x + SwiGLU(RMSNorm(x))`."""

  config: TiRexConfig
  implementation: str = "auto"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    layer = SLSTM(
      cfg.embedding_dim,
      num_heads=cfg.num_heads,
      conv1d_kernel_size=0,
      implementation=self.implementation,
      name="slstm",
    )
    x = residual_boundary(x)
    x = x + layer(RMSNorm(name="norm_slstm")(x))
    x = residual_boundary(x)
    y = RMSNorm(name="norm_ffn")(x)
    dense = lambda n, name: nn.Dense(n, use_bias=False, name=name)
    up = nn.silu(dense(cfg.ffn_dim, "proj_up_gate")(y)) * dense(cfg.ffn_dim, "proj_up")(y)
    return x + dense(cfg.embedding_dim, "proj_down")(up)


class TiRex(nn.Module):
  """The network on tokens: `(B, N, 2P)` (scaled patch values with NaNs at 0, then the
  observed mask) -> `(B, N, Q, P)`, token t's quantiles of the patch after it (scaled)."""

  config: TiRexConfig
  implementation: str = "auto"

  @nn.compact
  def __call__(self, tokens: Array) -> Array:
    cfg = self.config
    e = ResidualBlock(cfg.input_ff_dim, cfg.embedding_dim, name="input_patch_embedding")(tokens)
    for i in range(cfg.num_blocks):
      e = TiRexBlock(cfg, self.implementation, name=f"blocks_{i}")(e)
    e = RMSNorm(name="out_norm")(e)
    q = len(cfg.quantiles)
    out = ResidualBlock(cfg.input_ff_dim, q * cfg.patch_size, name="output_patch_embedding")(e)
    return out.reshape(out.shape[:-1] + (q, cfg.patch_size))


# ---- scaling and tokens ---------------------------------------------------------------------


def context_scale(context: Array, eps: float = 1e-5) -> tuple[Array, Array]:
  """Each row's mean and standard deviation over its observed values, `(B, 1)` each: 0 and
  1 for a row with none; a constant row is divided by `|mean| + eps`."""
  observed = ~jnp.isnan(context)
  count = observed.sum(-1, keepdims=True)
  safe = jnp.where(observed, context, 0.0)
  loc = jnp.where(count > 0, safe.sum(-1, keepdims=True) / jnp.maximum(count, 1), 0.0)
  var = jnp.where(observed, jnp.square(context - loc), 0.0).sum(-1, keepdims=True)
  scale = jnp.where(count > 0, jnp.sqrt(var / jnp.maximum(count, 1)), 1.0)
  return loc, jnp.where(scale == 0, jnp.abs(loc) + eps, scale)


def fit_context(context: Array, length: int) -> Array:
  """The last `length` steps of each row, NaN-padded on the left when shorter."""
  n = context.shape[-1]
  if n >= length:
    return context[..., n - length :]
  pad = jnp.full(context.shape[:-1] + (length - n,), jnp.nan, context.dtype)
  return jnp.concatenate([pad, context], axis=-1)


def tokens(context: Array, patch_size: int) -> tuple[Array, Array, Array]:
  """`(B, L)` (L a multiple of `patch_size`) -> the tokens `(B, L / P, 2P)` and the scale
  `(loc, scale)` they are in."""
  loc, scale = context_scale(context)
  x = ((context - loc) / scale).reshape(context.shape[0], -1, patch_size)
  observed = ~jnp.isnan(x)
  return jnp.concatenate([jnp.where(observed, x, 0.0), observed.astype(x.dtype)], -1), loc, scale


def next_patches(
  net: Callable[[Array], Array],
  config: TiRexConfig,
  context: Array,
  count: int,
  length: int | None = None,
) -> Array:
  """The quantiles `(B, Q, count * P)` of the `count` patches after `context (B, L)`, in its
  units, read from one pass of `net` (a bound `TiRex`, or `tokens -> outputs`): the
  context (cut or padded to `length`, by default `train_ctx_len`) and `count - 1` masked
  tokens after it (TiRex's accelerated rollout)."""
  p = config.patch_size
  context = fit_context(context.astype(jnp.float32), length or config.train_ctx_len)
  if context.shape[-1] % p:
    context = fit_context(context, -(-context.shape[-1] // p) * p)
  tok, loc, scale = tokens(context, p)
  if count > 1:
    tok = jnp.concatenate([tok, jnp.zeros((tok.shape[0], count - 1, 2 * p), tok.dtype)], 1)
  out = net(tok)[:, -count:]  # (B, count, Q, P)
  out = jnp.swapaxes(out, 1, 2).reshape(out.shape[0], out.shape[2], count * p)
  return out * scale[..., None] + loc[..., None]


def rollout(
  net: Callable[[Array], Array],
  config: TiRexConfig,
  context: Array,
  prediction_length: int,
  *,
  rollout_patches: int = 1,
  length: int | None = None,
) -> Array:
  """The quantiles `(B, H, Q)` of the `prediction_length` steps after `context (B, L)`
  (see `forecast`), from `net` (a bound `TiRex`, or `tokens -> outputs`)."""
  if prediction_length <= 0:
    raise ValueError(f"prediction_length must be > 0, got {prediction_length}")
  if rollout_patches <= 0:
    raise ValueError(f"rollout_patches must be > 0, got {rollout_patches}")
  p = config.patch_size
  context = jnp.asarray(context, jnp.float32)
  remaining, parts = -(-prediction_length // p), []
  while remaining > 0:
    count = min(remaining, rollout_patches)
    parts.append(next_patches(net, config, context, count, length))
    remaining -= count
    if remaining > 0:
      # TiRex reads its own forecast as missing, not as data: the next pass sees NaNs.
      context = jnp.concatenate(
        [context, jnp.full((context.shape[0], count * p), jnp.nan, jnp.float32)], -1
      )
  return jnp.swapaxes(jnp.concatenate(parts, -1)[..., :prediction_length], 1, 2)


def forecast(
  model: TiRex,
  params: Any,
  context: Array,
  prediction_length: int,
  *,
  rollout_patches: int = 1,
  length: int | None = None,
) -> tuple[Array, Array]:
  """TiRex's forecast of `prediction_length` steps after each row of `context (B, L)` (NaN
  = missing; rows shorter than the model's context are NaN-padded on the left).

  Returns the quantiles `(B, H, Q)` at `model.config.quantiles` and the median `(B, H)`
  (TiRex's mean). Beyond one patch it rolls out as TiRex does: `rollout_patches` patches
  per pass, then the context grows by as many NaN patches and is read again (its last
  `length` steps, by default `train_ctx_len`).
  """
  cfg = model.config
  net = lambda tok: cast(Array, model.apply({"params": params}, tok))
  q = rollout(net, cfg, context, prediction_length, rollout_patches=rollout_patches, length=length)
  return q, q[..., cfg.quantiles.index(0.5)] if 0.5 in cfg.quantiles else q.mean(-1)


# ---- weights --------------------------------------------------------------------------------


def _dense(sd: Mapping[str, np.ndarray], key: str, bias: bool = True) -> dict:
  out = {"kernel": jnp.asarray(np.asarray(sd[key + ".weight"], np.float32).T)}
  if bias:
    out["bias"] = jnp.asarray(np.asarray(sd[key + ".bias"], np.float32))
  return out


def _residual(sd: Mapping[str, np.ndarray], key: str) -> dict:
  return {n: _dense(sd, f"{key}.{n}") for n in ("hidden_layer", "output_layer", "residual_layer")}


def params_from_tirex(state_dict: Mapping[str, Any], config: TiRexConfig) -> dict:
  """The `tirex-ts` model's state dict (NumPy arrays; a Lightning checkpoint's
  `block_stack.` prefix is dropped) as `TiRex` params."""
  from flaxlstm.nn.convert import from_xlstm_slstm_layer

  sd = {k.replace("block_stack.", ""): np.asarray(v) for k, v in state_dict.items()}
  try:
    params: dict[str, Any] = {
      "input_patch_embedding": _residual(sd, "input_patch_embedding"),
      "output_patch_embedding": _residual(sd, "output_patch_embedding"),
      "out_norm": {"scale": jnp.asarray(sd["out_norm.weight"], jnp.float32)},
    }
    for i in range(config.num_blocks):
      b = f"blocks.{i}."
      params[f"blocks_{i}"] = {
        # TiRex's sLSTM layer keeps the xlstm package's CUDA layout (its kernel's).
        "slstm": from_xlstm_slstm_layer(
          sd, num_heads=config.num_heads, layout="cuda", prefix=b + "slstm_layer."
        ),
        "norm_slstm": {"scale": jnp.asarray(sd[b + "norm_slstm.weight"], jnp.float32)},
        "norm_ffn": {"scale": jnp.asarray(sd[b + "norm_ffn.weight"], jnp.float32)},
        **{
          n: _dense(sd, b + "ffn." + n, bias=False)
          for n in ("proj_up_gate", "proj_up", "proj_down")
        },
      }
  except KeyError as e:
    raise ValueError(f"not a TiRex state dict: missing {e.args[0]!r}") from None
  expected = jax.eval_shape(
    TiRex(config).init, jax.random.key(0), jnp.zeros((1, 1, 2 * config.patch_size))
  )["params"]
  got = jax.tree.map(lambda a: a.shape, params)
  want = jax.tree.map(lambda a: a.shape, expected)
  if got != want:
    raise ValueError("the TiRex state dict's shapes do not match its config")
  return params


def load_tirex(
  state_dict: Mapping[str, Any], config: TiRexConfig | Mapping[str, Any], **model_kwargs
) -> tuple[TiRex, dict]:
  """`(model, params)` from the `tirex-ts` model's state dict (NumPy arrays) and its config
  (a `TiRexConfig`, or the checkpoint's `hyper_parameters` / `model_config` dict).
  `model_kwargs` go to `TiRex` (`implementation`)."""
  if not isinstance(config, TiRexConfig):
    config = TiRexConfig.from_tirex(config)
  return TiRex(config, **model_kwargs), params_from_tirex(state_dict, config)


def save_weights(file: Any, config: TiRexConfig, params: Any) -> None:
  """Writes `params` and `config` to one `.npz` of plain arrays (no pickles), the file
  `load_weights` reads; `file` a path or an open binary file."""
  flat = {
    "/".join(str(getattr(k, "key", k)) for k in keys): np.asarray(v)
    for keys, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  meta = json.dumps(dataclasses.asdict(config)).encode()
  flat[CONFIG_KEY] = np.frombuffer(meta, np.uint8)
  np.savez(file, **flat)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool


def load_weights(file: Any, *, name: str = "", **model_kwargs) -> tuple[TiRex, dict]:
  """`(model, params)` from a `.npz` (a path or an open binary file; `name` for messages)
  that `save_weights` or `flaxlstm tirex convert` wrote. Read with `allow_pickle=False`:
  nothing in it can run code."""
  path = name or str(file)
  with np.load(file, allow_pickle=False) as z:
    if CONFIG_KEY not in z.files:
      raise ValueError(f"{path}: not a flaxlstm TiRex weights file (no {CONFIG_KEY})")
    raw = json.loads(bytes(z[CONFIG_KEY]).decode())
    arrays = {k: z[k] for k in z.files if k != CONFIG_KEY}
  fields = {f.name for f in dataclasses.fields(TiRexConfig)}
  if not isinstance(raw, dict) or set(raw) - fields:
    raise ValueError(f"{path}: its TiRex config has unknown keys")
  config = TiRexConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})  # type: ignore[arg-type]
  params: dict[str, Any] = {}
  for key, value in arrays.items():
    node = params
    *parents, leaf = key.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = jnp.asarray(value)
  model = TiRex(config, **model_kwargs)
  want = jax.tree.map(
    lambda a: a.shape,
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, 2 * config.patch_size))),
  )["params"]
  if jax.tree.map(lambda a: a.shape, params) != want:
    raise ValueError(f"{path}: its arrays do not match its TiRex config")
  return model, params


def read_weights(path: str, **model_kwargs) -> tuple[TiRex, Any]:
  """`load_weights` of a file, with one-line errors naming it (`InputError`)."""
  try:
    with fileio.open_regular(path) as f:
      if not zipfile.is_zipfile(f):  # an .npz is a zip; np.load would try pickle otherwise
        raise ValueError("it is not an .npz archive")
      f.seek(0)
      return load_weights(f, name=path, **model_kwargs)
  except OSError as e:
    raise InputError(f"cannot read TiRex weights {path}: {e.strerror or e}") from None
  except (ValueError, zipfile.BadZipFile, KeyError) as e:
    raise InputError(
      f"{path} is not a TiRex weights file from `flaxlstm tirex convert`: {e}"
    ) from None


def init(config: TiRexConfig, seed: int = 0, **model_kwargs) -> tuple[TiRex, dict]:
  """A TiRex with random weights (for fine-tuning from scratch, and tests)."""
  model = TiRex(config, **model_kwargs)
  tok = jnp.zeros((1, 1, 2 * config.patch_size))
  return model, model.init(jax.random.key(seed), tok)["params"]


__all__ = [
  "TiRex",
  "TiRexConfig",
  "forecast",
  "init",
  "load_tirex",
  "load_weights",
  "next_patches",
  "rollout",
  "params_from_tirex",
  "read_weights",
  "save_weights",
]
