"""Encoders: the recurrent stack that reads the window (`model.encoder`), a registry.

    ENCODERS       name -> Encoder: "lstm" (`StackedLSTM`: the fused kernel, cuDNN, LSTMP,
                   layer norm), "slstm" (xLSTM's sLSTM cell, `model.slstm.num_heads`, ...),
                   "mlstm" (xLSTM's mLSTM cell, `model.mlstm.*`), "gru" (Flax's `GRUCell`);
                   these three stacked by `StackedRNN`; "xlstm" (`XLSTMStack`: mLSTM
                   blocks with sLSTM blocks at `model.xlstm.slstm_at`, `model.xlstm.*`);
                   "tirex" (TiRex, a whole pretrained forecaster: forecast/pretrained.py)
    register_cell  any Flax cell class as an encoder, under a name: one call

An encoder builds its module from the model spec (`module`), gives the decoders its cell
(`cell`: the segment decoders step the encoder's kind of cell from its final carry), and
carries its own config keys (`options`, `model.<name>.*`: the LSTM's `forget_bias`,
`proj_features`, `layer_norm`) and rules (`check`), which the schema reads
(config/schema.py). Every encoder also takes the options every cell takes, `model.cell.*`:
initializers, dtypes and the kernel (`implementation`).

Adding an encoder is one module and one entry: an `Encoder` subclass, or for a cell that
`StackedRNN` can stack, `register_cell("name", MyCell)`. A cell class derived from
`flaxlstm.nn.cells.base.CellOptions` brings its own option fields as config keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from flax import linen as nn

from flaxlstm.config.specs import ModelSpec, RunSpec
from flaxlstm.forecast import pretrained
from flaxlstm.nn import kernels
from flaxlstm.nn.cells.base import COMMON_OPTIONS, CellOptions, option, option_fields
from flaxlstm.nn.cells.lstm import LSTM_OPTIONS, LSTMCell
from flaxlstm.nn.cells.mlstm import MLSTM_OPTIONS, MLSTMCell
from flaxlstm.nn.cells.slstm import SLSTM_OPTIONS, SLSTMCell
from flaxlstm.nn.stacks import StackedLSTM, StackedRNN
from flaxlstm.nn.xlstm import XLSTMStack


class _KernelNames(Mapping):
  """`model.cell.implementation`'s choices: "auto" and the kernels registered now."""

  def __getitem__(self, name: str) -> str:
    if name not in kernels.names():
      raise KeyError(name)
    return name

  def __iter__(self) -> Iterator[str]:
    return iter(kernels.names())

  def __len__(self) -> int:
    return len(kernels.names())


@dataclasses.dataclass(frozen=True)
class _LayerChoices:
  implementation: str = option("auto", choices=_KernelNames())


def cell_fields() -> tuple[dataclasses.Field, ...]:
  """The `model.cell.*` keys: the options every cell takes, and the layers' kernel."""
  return COMMON_OPTIONS + tuple(dataclasses.fields(_LayerChoices))


def common_options(spec: ModelSpec) -> dict[str, Any]:
  """The options every cell takes (`model.cell.*` but the kernel), defaults filled in."""
  given = spec.cell_options
  return {f.name: given.get(f.name, f.default) for f in COMMON_OPTIONS}


def implementation(spec: ModelSpec) -> str:
  return spec.cell_options.get("implementation", "auto")


def stack_options(spec: ModelSpec) -> dict[str, Any]:
  """The stack's options (`StackOptions`) of an encoder: its last output and every layer's
  final carry (the decoders start from the top one)."""
  return dict(
    dropout=spec.dropout,
    recurrent_dropout=spec.recurrent_dropout,
    inter_layer_dropout=spec.inter_layer_dropout,
    return_sequences=False,
    return_carry=True,
    bidirectional=spec.bidirectional,
    unroll=spec.unroll,
    remat=spec.remat,
    implementation=implementation(spec),
  )


class Encoder:
  """A registry entry (the module docstring). Subclasses set `name`, `options`,
  `cell_class` and build their module."""

  name: str = ""
  options: tuple[dataclasses.Field, ...] = ()  # its own config keys, `model.<name>.*`
  cell_class: Any = None

  def own_options(self, spec: ModelSpec) -> dict[str, Any]:
    """This encoder's own options, defaults filled in."""
    given = spec.options_of(self.name)
    return {f.name: given.get(f.name, f.default) for f in self.options}

  def cell(self, spec: ModelSpec, width: int) -> nn.Module:
    """The (unbound) cell of `width` units, configured as the encoder's layers."""
    raise NotImplementedError

  def module(self, spec: ModelSpec, name: str) -> nn.Module:
    """The encoder: `module(x (B, L, F), deterministic=) -> (carries, h)`, each layer's final
    carry bottom to top and the top layer's last output `(B, hidden_sizes[-1])`."""
    raise NotImplementedError

  def forecaster(self, **kwargs: Any) -> nn.Module | None:
    """A whole forecaster (`Forecaster`'s attributes as `kwargs`) for an entry that is one
    (TiRex), or None: `Forecaster` with this encoder inside."""
    del kwargs
    return None

  def check(self, spec: RunSpec, c: Any) -> None:
    """The encoder's rules (`c.model`, `c.data`, `c.train`: the sections' checkers)."""
    impl = implementation(spec.model)
    offered = kernels.offered_names(self.cell_class)
    c.model.check(
      "cell.implementation",
      impl in offered,
      f"model.encoder={self.name!r} offers {', '.join(offered)}",
    )


class LSTMEncoder(Encoder):
  """`StackedLSTM` over the window (its final carries feed the segment decoders)."""

  name = "lstm"
  options = LSTM_OPTIONS
  cell_class = LSTMCell

  def _kw(self, spec: ModelSpec) -> dict[str, Any]:
    return {**common_options(spec), **self.own_options(spec)}

  def cell(self, spec: ModelSpec, width: int) -> nn.Module:
    return LSTMCell(width, **self._kw(spec), parent=None)

  def module(self, spec: ModelSpec, name: str) -> nn.Module:
    return StackedLSTM(
      features=spec.hidden_sizes, **stack_options(spec), **self._kw(spec), name=name
    )

  def check(self, spec: RunSpec, c: Any) -> None:
    super().check(spec, c)
    proj = spec.model.options_of(self.name).get("proj_features")
    if proj is not None:
      c.model.check(
        "lstm.proj_features", 1 <= proj <= 2**16, "must be None (no projection) or in [1, 65536]"
      )


class CellEncoder(Encoder):
  """Any Flax cell class stacked by `StackedRNN` (`register_cell`)."""

  def __init__(
    self, name: str, cell_class: type, options: tuple[dataclasses.Field, ...] | None = None
  ):
    self.name, self.cell_class = name, cell_class
    if options is None:
      own = issubclass(cell_class, CellOptions)
      options = option_fields(cell_class, below=CellOptions) if own else ()
    self.options = options
    fields = {f.name for f in dataclasses.fields(cell_class)}
    self._takes = {f.name for f in COMMON_OPTIONS if f.name in fields}

  def cell(self, spec: ModelSpec, width: int) -> nn.Module:
    common = {k: v for k, v in common_options(spec).items() if k in self._takes}
    return self.cell_class(width, **common, **self.own_options(spec), parent=None)

  def module(self, spec: ModelSpec, name: str) -> nn.Module:
    return StackedRNN(
      cell=lambda width: self.cell(spec, width),
      features=spec.hidden_sizes,
      **stack_options(spec),
      name=name,
    )


ENCODERS: dict[str, Encoder] = {}


def register(encoder: Encoder) -> Encoder:
  """Adds `encoder` under its name; its options become `model.<name>.*` config keys."""
  clash = {f.name for f in dataclasses.fields(ModelSpec)} | {"cell"}
  if encoder.name in clash:
    raise ValueError(f"an encoder may not be named {encoder.name!r}: a model.* key has that name")
  ENCODERS[encoder.name] = encoder
  return encoder


def register_cell(
  name: str, cell_class: type, options: tuple[dataclasses.Field, ...] | None = None
) -> Encoder:
  """Registers `cell_class` (a Flax cell: `cell_class(features, ...)`) as the encoder
  `name`: `model.encoder=name` then stacks it, one layer per `model.hidden_sizes`. Its own
  options (`model.<name>.*`) are `options`, by default the fields a `CellOptions` subclass
  adds."""
  return register(CellEncoder(name, cell_class, options))


class SLSTMEncoder(CellEncoder):
  """A stack of sLSTM cells (flaxlstm/nn/cells/slstm.py), its options `model.slstm.*`."""

  def __init__(self):
    super().__init__("slstm", SLSTMCell, SLSTM_OPTIONS)

  def check(self, spec: RunSpec, c: Any) -> None:
    super().check(spec, c)
    heads = self.own_options(spec.model)["num_heads"]
    c.model.check("slstm.num_heads", heads >= 1, "must be >= 1")
    c.model.check(
      "hidden_sizes",
      all(h % heads == 0 for h in spec.model.hidden_sizes),
      f"must be multiples of model.slstm.num_heads={heads} (the sLSTM's heads split them)",
    )


class MLSTMEncoder(CellEncoder):
  """A stack of mLSTM cells (flaxlstm/nn/cells/mlstm.py; the chunkwise form by default),
  its options `model.mlstm.*`. The segment decoders step the cell from its final carry."""

  def __init__(self):
    super().__init__("mlstm", MLSTMCell, MLSTM_OPTIONS)

  def check(self, spec: RunSpec, c: Any) -> None:
    super().check(spec, c)
    o = self.own_options(spec.model)
    heads = o["num_heads"]
    c.model.check("mlstm.num_heads", heads >= 1, "must be >= 1")
    c.model.check("mlstm.chunk_size", o["chunk_size"] >= 1, "must be >= 1")
    c.model.check(
      "hidden_sizes",
      all(h % heads == 0 for h in spec.model.hidden_sizes),
      f"must be multiples of model.mlstm.num_heads={heads} (the mLSTM's heads split them)",
    )
    c.model.check(
      "recurrent_dropout",
      not spec.model.recurrent_dropout,
      "must be 0 with model.encoder='mlstm' (it feeds no state back to its input)",
    )


class XLSTMOptions(nn.Module):
  """The xLSTM stack's options, `model.xlstm.*` (flaxlstm/nn/xlstm.py: `XLSTMStack`; its
  width is `model.hidden_sizes`' one entry).

  Attributes:
    num_blocks: blocks in the stack.
    slstm_at: positions of the sLSTM blocks (the others are mLSTM blocks): xLSTM[a:b].
    num_heads: heads of the mLSTM blocks.
    proj_factor: the mLSTM blocks' inner width over the stack's.
    conv1d_kernel_size: the causal convolution of every block (0: none).
    qkv_proj_blocksize: block size of the mLSTM's q, k, v projections.
    chunk_size: steps per chunk of the mLSTM's chunkwise form.
    slstm_num_heads: heads of the sLSTM blocks.
    ffn_proj_factor: the sLSTM blocks' feed-forward width factor.
  """

  num_blocks: int = 2
  slstm_at: tuple[int, ...] = ()
  num_heads: int = 4
  proj_factor: float = 2.0
  conv1d_kernel_size: int = 4
  qkv_proj_blocksize: int = 4
  chunk_size: int = 64
  slstm_num_heads: int = 4
  ffn_proj_factor: float = 1.3


class _XLSTMModule(nn.Module):
  """Inputs embedded to the stack's width, the `XLSTMStack`, its last step: `((h,), h)`
  (the encoder interface's carries: the stack's states stay inside; decoders read `h`)."""

  width: int
  options: Any
  implementation: str = "auto"
  remat: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, deterministic: bool | None = None):
    o = self.options
    mlstm = dict(
      num_heads=o["num_heads"],
      proj_factor=o["proj_factor"],
      conv1d_kernel_size=o["conv1d_kernel_size"],
      qkv_proj_blocksize=o["qkv_proj_blocksize"],
      chunk_size=o["chunk_size"],
      dropout=self.dropout,
      implementation=self.implementation,
    )
    slstm = dict(
      num_heads=o["slstm_num_heads"],
      conv1d_kernel_size=o["conv1d_kernel_size"],
      ffn_proj_factor=o["ffn_proj_factor"],
      dropout=self.dropout,
    )
    h = nn.Dense(self.width, name="embed")(x)
    h = XLSTMStack(
      self.width,
      num_blocks=o["num_blocks"],
      slstm_at=tuple(o["slstm_at"]),
      mlstm=mlstm,
      slstm=slstm,
      remat=self.remat,
      name="stack",
    )(h, deterministic=True if deterministic is None else deterministic)
    last = h[..., -1, :]
    return (last,), last


class XLSTMEncoder(Encoder):
  """`model.encoder="xlstm"`: an `XLSTMStack` of mLSTM blocks with sLSTM blocks at
  `model.xlstm.slstm_at` over the window, read by the dense decoder."""

  name = "xlstm"
  options = option_fields(XLSTMOptions)
  cell_class = MLSTMCell  # `model.cell.implementation` picks the mLSTM blocks' form

  def cell(self, spec: ModelSpec, width: int) -> nn.Module:
    raise ValueError("model.encoder='xlstm' has no single cell for a segment decoder")

  def module(self, spec: ModelSpec, name: str) -> nn.Module:
    return _XLSTMModule(
      spec.hidden_sizes[-1],
      self.own_options(spec),
      implementation=implementation(spec),
      remat=spec.remat,
      dropout=spec.dropout,
      name=name,
    )

  def check(self, spec: RunSpec, c: Any) -> None:
    super().check(spec, c)
    m, o = spec.model, self.own_options(spec.model)
    c.model.check("decoder", m.decoder == "dense", "must be 'dense' with model.encoder='xlstm'")
    c.model.check(
      "hidden_sizes", len(m.hidden_sizes) == 1, "takes one width with model.encoder='xlstm'"
    )
    c.model.check("xlstm.num_blocks", o["num_blocks"] >= 1, "must be >= 1")
    c.model.check(
      "xlstm.slstm_at",
      all(0 <= i < o["num_blocks"] for i in o["slstm_at"]),
      f"must be block positions in [0, {o['num_blocks']})",
    )
    width = m.hidden_sizes[-1] if m.hidden_sizes else 0
    c.model.check(
      "hidden_sizes",
      width % o["slstm_num_heads"] == 0 or not o["slstm_at"],
      f"must be a multiple of model.xlstm.slstm_num_heads={o['slstm_num_heads']}",
    )
    for key in ("recurrent_dropout", "inter_layer_dropout", "bidirectional"):
      c.model.check(key, not getattr(m, key), "is not read by model.encoder='xlstm'")


class TiRexEncoder(Encoder):
  """`model.encoder="tirex"`: TiRex as the whole forecaster (forecast/pretrained.py), its
  options `model.tirex.*`."""

  name = "tirex"
  options = pretrained.OPTIONS
  cell_class = SLSTMCell  # its layers' kernels are the sLSTM's

  def forecaster(self, **kwargs: Any) -> nn.Module | None:
    return pretrained.TiRexForecaster(**kwargs)

  def check(self, spec: RunSpec, c: Any) -> None:
    super().check(spec, c)
    m, o = spec.model, self.own_options(spec.model)
    c.model.check(
      "head", m.head == "quantile", "must be 'quantile' with model.encoder='tirex' (its output)"
    )
    for key in ("predict_delta", "revin", "linear_skip", "volatility_scaling"):
      c.model.check(key, not getattr(m, key), "must be False: TiRex scales each window by itself")
    c.model.check("segment_length", not m.segment_length, "must be 0: TiRex cuts its own patches")
    c.model.check(
      "channels", m.channels == "mixed", "must be 'mixed': TiRex reads each target alone"
    )
    c.data.check(
      "known", not spec.data.known and not spec.data.calendar, "TiRex reads no covariates"
    )
    c.data.check("static", not spec.data.static, "TiRex reads no covariates")
    for key in [f.name for f in pretrained.SIZES] + ["rollout_patches"]:
      c.model.check(f"tirex.{key}", o[key] > 0, "must be > 0")
    c.model.check("tirex.context_length", o["context_length"] >= 0, "must be >= 0 (0: the model's)")
    c.model.check(
      "tirex.embedding_dim",
      o["embedding_dim"] % max(o["num_heads"], 1) == 0,
      "must be a multiple of model.tirex.num_heads",
    )
    if o["weights"]:
      cfg = pretrained.tirex_config(spec.model)  # reads the file: one-line error if not one
      c.model.check(
        "quantiles",
        tuple(spec.model.quantiles) == tuple(cfg.quantiles),
        f"must be the weights' levels {list(cfg.quantiles)}",
      )


register(LSTMEncoder())
register(SLSTMEncoder())
register(MLSTMEncoder())
register(XLSTMEncoder())
register_cell("gru", nn.GRUCell)
register(TiRexEncoder())
