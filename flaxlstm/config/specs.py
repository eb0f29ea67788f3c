"""The config's specs, declared once: a frozen dataclass per section (a leaf module).

Each field is one config key: its default is the schema's default, its comment says what it
means. A spec checks its own values when it is made (ranges, combinations), so a spec is
valid by construction; the checks that need a choice table or a registry (which scalers,
heads, encoders exist, and each choice's own rules) are the schema's
(config/schema.py: `validate`), which reads the tables beside their code. This module imports
nothing from the rest of flaxlstm but its errors, so every layer may import it.

Messages name the key and the value: ``config key 'data.lookback' = 0: must be > 0``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from flaxlstm.errors import InputError


class _Spec:
  """Checks its values when it is made (`check`), so a spec is valid by construction."""

  _SECTION: ClassVar[str] = ""

  def __post_init__(self) -> None:
    self.check(Checker(self._SECTION, self))

  def check(self, c: Checker) -> None:
    raise NotImplementedError

  def with_values(self, **values: Any) -> Any:
    """A copy with `values` set *unchecked*: for traced per-member hyperparameters inside a
    population's step (train/population.py), which have no Python value to check. Every
    member's config was validated as a whole before."""
    out = copy.copy(self)
    for key, value in values.items():
      object.__setattr__(out, key, value)
    return out


# data.features / data.target = (ALL_NUMERIC,): every numeric column of the file.
ALL_NUMERIC = "*"


@dataclasses.dataclass(frozen=True)
class AugmentSpec(_Spec):
  """Train-time augmentation of the input windows (data/augment.py); 0 = off."""

  _SECTION: ClassVar[str] = "data.augment."

  jitter: float = 0.0  # Std of Gaussian noise added to every input value.
  scaling: float = 0.0  # Std of a per-window, per-feature scale factor around 1.
  magnitude_warp: float = 0.0  # Std of a smooth per-window warp curve around 1.
  window_slice: float = 0.0  # Share of the window cropped and stretched back, in [0, 1).

  def check(self, c: Checker) -> None:
    for key in ("jitter", "scaling", "magnitude_warp"):
      c.non_negative(key)
    c.probability("window_slice")


@dataclasses.dataclass(frozen=True)
class DataSpec(_Spec):
  """Where the series comes from and how it is split, scaled and windowed (data/)."""

  _SECTION: ClassVar[str] = "data."

  path: str = ""  # CSV or Parquet file; "" = the bundled ETTh1.csv.
  date_column: str = "date"  # Timestamp column; "" = the table has none.
  # The date column's strptime format, e.g. "%d/%m/%Y %H:%M"; "" = inferred from the whole
  # column, one format for every row (a day/month order both readings fit is refused).
  date_format: str = ""
  # A long table (NeuralForecast's unique_id, ds, y): the column naming each row's series,
  # every series split, scaled and windowed on its own. "" = a wide table (one series).
  id_column: str = ""
  # Input columns read over the lookback; () = every other column of a wide table, the
  # target of a long one (which a config written for a wide table takes when command-line
  # overrides point it at a long one, unless they set this too). ("*",) = every numeric
  # column of the file, in file order, but the date, id, known and static columns (a column
  # that holds no number is left out; data/table.py: `numeric_columns`).
  features: tuple[str, ...] = ()
  target: tuple[str, ...] = ("OT",)  # Columns to forecast; ("*",) as for data.features.
  known: tuple[str, ...] = ()  # Columns known in advance: read over lookback and horizon.
  # Known-in-advance features of the date, each as a sin/cos pair: "hour", "dayofweek",
  # "dayofmonth", "dayofyear", "month".
  calendar: tuple[str, ...] = ()
  static: tuple[str, ...] = ()  # Long tables: columns constant within each series.
  lookback: int = 96  # Input window length (rows).
  horizon: int = 24  # Steps forecast per window.
  # How rows are split in time, per series: "fractions" | "rows" | "dates" | "ett" (12/4/4
  # months of hourly rows, see DESIGN.md) | "ettm" (the same months of 15-minute rows) |
  # "tsl" (the Time-Series-Library's 70/10/20 of rows: train int(0.7 n), test int(0.2 n),
  # val the rest between) | "holdout" (the last rows of each series) | "auto" ("ett" or
  # "ettm" on an ETT file, "tsl" on any other: data/splits.py, `ett_layout`). A config
  # written for a wide table and pointed at a long one by command-line overrides takes
  # "holdout" unless they name a split (config/loading.py).
  split: str = "fractions"
  # Train/val/test shares of rows; a test share of 0 is a production fit (no test split).
  split_fractions: tuple[float, ...] = (0.7, 0.1, 0.2)
  # split="rows": row boundaries (train_end, val_end[, test_end]): train = [0, train_end),
  # val = [train_end, val_end), test = [val_end, test_end or the last row].
  split_rows: tuple[int, ...] = ()
  # split="dates": (train_end, val_end[, test_end]) timestamps; a row is in the first split
  # whose end is after its date (test: up to test_end, or every later row).
  split_dates: tuple[str, ...] = ()
  # split="holdout", in rows of each series: its last test_size rows are test, the val_size
  # rows before them val, the rest train (NeuralForecast's val_size/test_size, M4's
  # protocol); -1 = one horizon. test_size=0 is a production fit: no test split, every row
  # but the val ones trains. Val and test windows read their inputs from earlier rows.
  val_size: int = -1
  test_size: int = -1
  # Long tables: drop the series too short for a window in every split (else an error).
  drop_short: bool = False
  # Windows may start before a series has `lookback` rows (one observed input suffices):
  # the inputs before its first row repeat that row's values (edge padding). Short series
  # then train and forecast with a long lookback (NeuralForecast's start_padding_enabled,
  # which pads zeros; the first value keeps RevIN's and the scalers' statistics in the
  # series' own range). Off: every window's inputs are observed rows.
  start_padding: bool = False
  # Only the series too short for a window in every split are padded so (as start_padding
  # does for all): every other series reads `lookback` observed rows, as without padding.
  pad_short: bool = False
  # Each series trains on its most recent train rows only, at most this many but never
  # fewer than one window's (data.lookback + data.horizon): its windows and its scaler's
  # statistics (val and test windows still read the rows before them as inputs); 0 = every
  # train row. Old history of a long series can follow another regime.
  recent_train_rows: int = 0
  # Fit on train rows: "standard" | "robust" | "minmax" | "maxabs" (scale only) | "none".
  scaler: str = "standard"
  # "global": one scaler fit on the train rows of every series; "series": each series of a
  # long table scaled by its own train rows.
  scaler_scope: str = "global"
  scale_target: bool = True  # Also scale the target columns (metrics reported both ways).
  fill: str = "none"  # Missing values: "none" (reject them) | "ffill" | "interpolate".
  # A series whose dates skip steps of its frequency (flaxlstm/data/steps.py): "error" |
  # "fill" (insert the missing dates as missing values, which data.fill then fills) |
  # "keep" (rows are steps whatever their dates: trading days with holidays).
  missing_dates: str = "error"
  # The table's frequency as a pandas offset ("h", "D", "B", "W-SUN", "MS", ...): the step
  # data.missing_dates='fill' fills to and predict dates forecasts by; "" = each series'
  # own, inferred from its dates.
  freq: str = ""
  # Rows per season, for the seasonal-naive baseline; 0 = the season of the data's frequency
  # (hourly 24, daily 7, weekly 52, monthly 12, ...: calendar.season; 1 without dates).
  seasonal_period: int = 0
  augment: AugmentSpec = dataclasses.field(default_factory=lambda: AugmentSpec())

  def check(self, c: Checker) -> None:
    # The choices (split, scaler, fill, calendar) are checked by the schema against the
    # tables beside their code (config/schema.py: `validate`).
    for key in ("lookback", "horizon"):
      c.positive(key)
    c.non_negative("seasonal_period")
    for key in ("lookback", "horizon"):
      c.at_most(key, 2**20)
    c.check("target", bool(self.target), "must name at least one column")
    for key in ("features", "target", "known", "calendar", "static"):
      names = getattr(self, key)
      c.check(
        key,
        all(names) and len(set(names)) == len(names),
        "column names must be non-empty and distinct",
      )
    for key in ("features", "target"):
      names = getattr(self, key)
      c.check(
        key,
        ALL_NUMERIC not in names or len(names) == 1,
        f"{ALL_NUMERIC!r} (every numeric column) stands alone; name the columns instead",
      )
    for key in ("known", "static"):
      c.check(
        key,
        ALL_NUMERIC not in getattr(self, key),
        f"{ALL_NUMERIC!r} (every numeric column) is only for data.features and data.target",
      )
    if self.calendar:
      c.check("calendar", bool(self.date_column), "needs data.date_column")
    if self.freq:
      c.check("freq", bool(self.date_column), "needs data.date_column")
    c.check(
      "missing_dates",
      self.missing_dates != "fill" or self.fill != "none",
      "'fill' inserts dates without values: set data.fill to 'ffill' or 'interpolate'",
    )
    if self.date_format:
      c.check("date_format", bool(self.date_column), "needs data.date_column")
      # A format without a directive matches one literal string; "mixed" or "ISO8601" would
      # be pandas' own modes, and "mixed" reads each row its own way.
      c.check(
        "date_format", "%" in self.date_format, "must be a strptime format such as '%d/%m/%Y'"
      )
    # Each column has one role: the series id, an input, a target, known or static.
    ids = (self.id_column,) if self.id_column else ()
    roles = dict(features=self.features, target=self.target, known=self.known, static=self.static)
    for key, names, others in (
      ("id_column", ids, ("features", "target", "known", "static")),
      ("known", self.known, ("features", "target", "static")),
      ("static", self.static, ("features", "target")),
    ):
      for other in others:
        clash = sorted(set(names) & set(roles[other]))
        c.check(key, not clash, f"{clash[0]!r} is also in data.{other}" if clash else "")
    if self.id_column:
      c.check("id_column", self.id_column != self.date_column, "must differ from data.date_column")
    if not self.id_column:
      c.check("static", not self.static, "needs a long table (data.id_column)")
      c.check(
        "scaler_scope",
        self.scaler_scope == "global",
        "'series' needs a long table (data.id_column)",
      )
    dates = self.split_dates
    if self.split == "dates":
      c.check(
        "split_dates",
        len(dates) in (2, 3),
        "split='dates' needs increasing timestamps (train_end, val_end[, test_end])",
      )
      c.check("split", bool(self.date_column), "'dates' needs data.date_column")
    else:
      c.check("split_dates", not dates, "is only used with data.split='dates'")
    fractions = self.split_fractions
    c.check(
      "split_fractions",
      len(fractions) == 3
      and fractions[0] > 0
      and fractions[1] > 0
      and fractions[2] >= 0
      and sum(fractions) <= 1 + 1e-9,
      "must be three shares (train, val, test), train and val > 0, test >= 0 (0 = no test "
      "split), summing to at most 1",
    )
    c.non_negative("recent_train_rows")
    c.at_most("recent_train_rows", 2**40)
    if self.split == "holdout":
      self._check_holdout(c)
    else:
      for key in ("val_size", "test_size"):
        c.check(key, getattr(self, key) == -1, "is only used with data.split='holdout'")
    rows = self.split_rows
    if self.split == "rows":
      c.check(
        "split_rows",
        len(rows) in (2, 3) and rows[0] > 0 and all(a < b for a, b in zip(rows, rows[1:])),
        "split='rows' needs increasing row boundaries (train_end, val_end[, test_end])",
      )
    else:
      # Setting boundaries but forgetting split=rows would silently split by fractions.
      c.check("split_rows", not rows, "is only used with data.split='rows'")

  def _check_holdout(self, c: Checker) -> None:
    horizon = self.horizon
    # No val_size=0: the loop early-stops and keeps its best weights on the val windows (and
    # calibrates the conformal intervals on them), so a run without any could choose neither.
    c.check(
      "val_size",
      self.val_size == -1 or self.val_size >= horizon,
      f"must be -1 (one horizon) or at least data.horizon={horizon}: the loop early-stops "
      "and keeps its best weights on the val windows (a production fit is data.test_size=0)",
    )
    c.check(
      "test_size",
      self.test_size in (-1, 0) or self.test_size >= horizon,
      f"must be -1 (one horizon), 0 (no test split) or at least data.horizon={horizon}",
    )
    for key in ("val_size", "test_size"):
      c.at_most(key, 2**40)


@dataclasses.dataclass(frozen=True)
class ModelSpec(_Spec):
  """The forecaster (forecast/model.py): an encoder, a decoder and a head, each chosen by
  name from its registry (forecast/encoders.py, decoders.py, heads.py)."""

  _SECTION: ClassVar[str] = "model."

  # The encoder (forecast/encoders.py): "lstm" (a stacked LSTM), "gru", or any registered.
  encoder: str = "lstm"
  hidden_sizes: tuple[int, ...] = (64,)  # Hidden units of each stacked recurrent layer.
  # The options every cell takes and the layers' kernel, resolved (initializer functions,
  # dtypes): (name, value) pairs, () = the defaults. The config holds them by name under
  # `model.cell` (the fields of `flaxlstm.nn.cells.base.CellOptions`, and `implementation`).
  cell: tuple[tuple[str, Any], ...] = ()
  # Each encoder's own options, `model.<encoder>.*` (the LSTM's forget_bias, ...): pairs of
  # (encoder, its (name, value) pairs); a missing one has its defaults.
  encoders: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
  dropout: float = 0.0  # Variational dropout on each LSTM layer's inputs.
  recurrent_dropout: float = 0.0  # Variational dropout on the recurrent state h.
  inter_layer_dropout: float = 0.0  # Dropout between stacked layers.
  dense_dropout: float = 0.0  # Dropout before the output head.
  bidirectional: bool = False  # Read the lookback window both ways.
  remat: bool = False  # Recompute activations in the backward pass to save memory.
  unroll: int = 1  # Time steps unrolled per scan iteration.
  predict_delta: bool = False  # Predict the change from the last observed target value.
  # With predict_delta: measure the changes in units of each window's own volatility (its
  # mean absolute step change), inputs and forecast alike (DeepAR's per-window scaling).
  volatility_scaling: bool = False
  # With volatility_scaling: also give the encoder each input column's log volatility at
  # every step (DeepAR feeds its log scale as a covariate), so the spread need not be exactly
  # proportional to the window's volatility: calm windows can keep a floor of noise.
  volatility_input: bool = False
  linear_skip: bool = False  # Add a linear map from the whole window (LSTNet's AR part).
  # Where that map starts: "zeros", or "ridge": the ridge fit of the training windows, so
  # training starts from the best linear forecast and the LSTM learns what it misses.
  linear_skip_init: str = "zeros"
  # "mixed": all input columns read together, the targets forecast jointly. "independent":
  # one shared model forecasts each column from its own past (channel independence: every
  # (column, window) is a sample); data.features must then equal data.target.
  channels: str = "mixed"
  # Width of a learned embedding of the series (each column with channels="independent",
  # each series of a long table); 0 = none.
  series_embedding: int = 0
  revin: bool = False  # Reversible instance normalization of every window (RevIN).
  revin_affine: bool = False  # RevIN's learned per-column scale and shift.
  segment_length: int = 0  # Embed the window in segments of this many steps; 0 = per step.
  # "dense": one map from the last state to the whole horizon. "parallel": one decoder step
  # per output segment of segment_length, all at once (SegRNN's PMF). "recurrent": the same
  # steps one after another, each fed the previous segment (RMF).
  decoder: str = "dense"
  # What is forecast for each value: "point" (trained by train.loss) | "gaussian" |
  # "student_t" | "lognormal" (likelihood heads; lognormal for positive targets) |
  # "quantile" (non-crossing quantiles, pinball loss).
  head: str = "point"
  # Quantile levels the quantile head learns and `predict` writes as columns (OT_q0.1, ...);
  # the default holds the 50%, 80% and 95% central intervals and the median.
  quantiles: tuple[float, ...] = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)
  # Rolling recalibration of a distribution head (forecast/calibration.py): each forecast's
  # spread around its median is rescaled, level by level, to what would have been exact on
  # the last N windows of its series whose targets were known at its origin (never training
  # windows when scoring). 0 = the head's own quantiles.
  recalibration_windows: int = 0
  # Which windows may calibrate a forecast: "series", its own series' (by row); "panel",
  # any series' (by date: a long table whose series are too short to hold N windows each).
  recalibration_scope: str = "series"

  @property
  def cell_options(self) -> dict[str, Any]:
    """The options every cell takes, as given (a missing one has the cell's default)."""
    return dict(self.cell)

  def options_of(self, encoder: str | None = None) -> dict[str, Any]:
    """An encoder's own options (default: the chosen encoder's), as given."""
    return dict(dict(self.encoders).get(encoder or self.encoder, ()))

  def check(self, c: Checker) -> None:
    c.check(
      "hidden_sizes",
      bool(self.hidden_sizes) and all(n > 0 for n in self.hidden_sizes),
      "must be one or more layer sizes > 0",
    )
    c.check(
      "hidden_sizes", all(n <= 2**16 for n in self.hidden_sizes), "layer sizes must be <= 65536"
    )
    for key in ("dropout", "recurrent_dropout", "inter_layer_dropout", "dense_dropout"):
      c.probability(key)
    c.check("unroll", self.unroll >= 1, "must be >= 1")
    # The choices (encoder, channels, decoder, head) and each choice's own rules are checked
    # by the schema, reading the registries (config/schema.py: `validate`).
    levels = self.quantiles
    c.check(
      "quantiles",
      len(levels) >= 1
      and all(0 < q < 1 for q in levels)
      and all(a < b for a, b in zip(levels, levels[1:])),
      "must be increasing levels in (0, 1)",
    )
    for key in ("series_embedding", "segment_length"):
      c.non_negative(key)
      c.at_most(key, 2**16)
    c.non_negative("recalibration_windows")
    if self.recalibration_windows:
      c.check(
        "recalibration_windows",
        self.head != "point",
        "recalibrates a distribution head's quantiles: it needs model.head other than 'point'",
      )
    if self.revin:
      c.check("revin", not self.predict_delta, "and model.predict_delta both remove the level")
    if self.volatility_scaling:
      c.check("volatility_scaling", self.predict_delta, "needs model.predict_delta=True")
    if self.volatility_input:
      c.check("volatility_input", self.volatility_scaling, "needs model.volatility_scaling=True")
    if self.revin_affine:
      c.check("revin_affine", self.revin, "needs model.revin=True")
    if self.linear_skip_init == "ridge":
      c.check("linear_skip_init", self.linear_skip, "needs model.linear_skip=True")
      c.check(
        "linear_skip_init",
        self.head == "point",
        f"fits point forecasts: it needs model.head='point', not {self.head!r}",
      )
      c.check("linear_skip_init", not self.revin, "does not cover model.revin (use 'zeros')")


@dataclasses.dataclass(frozen=True)
class TrainSpec(_Spec):
  """Optimization, early stopping, evaluation and checkpoints (train/)."""

  _SECTION: ClassVar[str] = "train."

  batch_size: int = 32  # Global batch size (split over devices and hosts).
  eval_batch_size: int = 256  # Global batch size for val/test.
  max_epochs: int = 100  # Epoch budget.
  max_steps: int = 0  # Step budget; 0 = no limit (the epoch budget decides).
  learning_rate: float = 1e-3  # Peak learning rate.
  # "constant" | "cosine" | "exponential". Cosine decays to 1% of the peak over the budget
  # (max_steps if > 0, else max_epochs * steps_per_epoch); exponential keeps the peak for
  # decay_after_epochs epochs, then multiplies it by epoch_decay at every new epoch.
  schedule: str = "constant"
  epoch_decay: float = 0.8  # schedule="exponential": learning-rate factor per epoch.
  decay_after_epochs: int = 3  # schedule="exponential": epochs at the peak first.
  warmup_steps: int = 0  # Linear warmup from 0 to the peak learning rate.
  weight_decay: float = 1e-4  # Decoupled weight decay (AdamW; SGD adds it to the gradient).
  clip_norm: float = 1.0  # Clip gradients to this global norm; 0 = off.
  optimizer: str = "adamw"  # "adamw" | "sgd".
  momentum: float = 0.9  # SGD momentum.
  l1: float = 0.0  # L1 penalty on kernels, added to the loss.
  l2: float = 0.0  # L2 penalty on kernels, added to the loss.
  loss: str = "mse"  # "mse" | "mae" | "huber" (on scaled values).
  huber_delta: float = 1.0  # Huber transition point.
  patience: int = 10  # Evaluations without val improvement before stopping; 0 = never.
  min_delta: float = 0.0  # Smallest val-loss decrease that counts as an improvement.
  restore_best: bool = True  # Evaluate and export the best checkpoint, not the last.
  keep_best: int = 2  # Best checkpoints kept on disk.
  eval_every_steps: int = 0  # Validate every N steps; 0 = once per epoch.
  # Also validate the starting model, before the first step: with a starting point worth
  # keeping (model.linear_skip_init='ridge'), training must beat it on validation to replace it.
  eval_at_start: bool = False
  log_every_steps: int = 50  # Train-metric logging interval.
  # Steps whose loss or gradient is NaN/inf are skipped (no update); more than this many
  # stops the run with an error naming the step.
  max_nonfinite_steps: int = 10
  # Gradient accumulation: each step's global batch is split into this many micro-batches,
  # run one after another (a `lax.scan` inside the step), their gradients and losses
  # averaged, one optimizer update per step; it must divide train.batch_size. Memory for
  # activations shrinks with the micro-batch; the update is the whole batch's.
  grad_accum_steps: int = 1
  # One device's peak FLOP/s at the model's compute dtype, for the logged MFU (achieved
  # FLOP/s / (peak x devices)); 0 = looked up by device kind, dtype and JAX's matmul
  # precision (float32 at the default one: the TF32 rate on NVIDIA GPUs) in a table of
  # well-known accelerators (train/flops.py: `PEAKS`), and no MFU where it has none (CPUs).
  peak_flops_per_device: float = 0.0

  def check(self, c: Checker) -> None:
    # The choices (schedule, optimizer, loss) are checked by the schema (`validate`).
    for key in ("batch_size", "eval_batch_size"):
      c.at_most(key, 2**20)
    for key in (
      "batch_size",
      "eval_batch_size",
      "max_epochs",
      "log_every_steps",
      "learning_rate",
      "huber_delta",
    ):
      c.positive(key)
    for key in (
      "max_steps",
      "warmup_steps",
      "patience",
      "weight_decay",
      "clip_norm",
      "l1",
      "l2",
      "min_delta",
      "eval_every_steps",
      "max_nonfinite_steps",
      "peak_flops_per_device",
    ):
      c.non_negative(key)
    c.positive("grad_accum_steps")
    c.check(
      "grad_accum_steps",
      self.batch_size % self.grad_accum_steps == 0,
      f"must divide train.batch_size={self.batch_size} (equal micro-batches)",
    )
    c.probability("momentum")
    c.check("epoch_decay", 0 < self.epoch_decay <= 1, "must be in (0, 1]")
    c.non_negative("decay_after_epochs")
    c.check("keep_best", self.keep_best >= 1, "must be >= 1")


# mesh.gather_dtype's choices: "" = the parameters' own dtype.
GATHER_DTYPES = ("", "bfloat16")


@dataclasses.dataclass(frozen=True)
class MeshSpec(_Spec):
  """The device mesh (parallel.py); -1 = all remaining devices. The global batch is split
  over data x fsdp; params and optimizer state over fsdp (FSDP); the LSTM gate axis and the
  xLSTM family's heads over model."""

  _SECTION: ClassVar[str] = "mesh."

  data: int = -1  # Replicas of the model, each on a slice of the batch.
  fsdp: int = 1  # Also a slice of the batch, with params and optimizer state split over it.
  model: int = 1  # The LSTM's 4H gate axis, the sLSTM's and head-wise maps' heads.
  # FSDP splits only parameters of at least this many elements; smaller ones (biases, norm
  # scales) stay replicated, with their optimizer state: each split array costs an
  # all-gather and a gradient reduction per step, latency-bound for a small one, while
  # replicating one of 2**16 elements costs under 1 MiB per device with its Adam moments
  # (DeepSpeed's ZeRO-3 keeps parameters under 1e5 elements whole for the same reason).
  # 0 = split every array with an axis the fsdp size divides.
  fsdp_min_size: int = 2**16
  # The dtype the FSDP-split parameters are cast to before the model uses them: "" = their
  # own; "bfloat16" = the step casts each split parameter's shard and gathers that copy,
  # so the all-gathers move half the bytes. The master parameters, the gradients' dtype and
  # the optimizer state stay as they are (the gradients reach the masters through the
  # cast, rounded to bfloat16); replicated parameters are not cast (nothing to gather), so
  # one device computes as before.
  gather_dtype: str = ""

  def check(self, c: Checker) -> None:
    for axis in ("data", "fsdp", "model"):
      c.check(
        axis,
        getattr(self, axis) == -1 or getattr(self, axis) >= 1,
        "must be -1 (all remaining) or >= 1",
      )
    c.non_negative("fsdp_min_size")
    c.at_most("fsdp_min_size", 2**40)
    c.check(
      "gather_dtype",
      self.gather_dtype in GATHER_DTYPES,
      "must be '' (the parameters' own dtype) or 'bfloat16'",
    )


@dataclasses.dataclass(frozen=True)
class RunSpec(_Spec):
  """A whole run: what `train_and_evaluate` takes, built by `to_spec(config)`."""

  _SECTION: ClassVar[str] = ""

  seed: int = 0  # Root of every random key (init, dropout, shuffling, augmentation).
  data: DataSpec = dataclasses.field(default_factory=lambda: DataSpec())
  model: ModelSpec = dataclasses.field(default_factory=lambda: ModelSpec())
  train: TrainSpec = dataclasses.field(default_factory=lambda: TrainSpec())
  mesh: MeshSpec = dataclasses.field(default_factory=lambda: MeshSpec())

  def check(self, c: Checker) -> None:
    c.check("seed", 0 <= self.seed < 2**31, "must be in [0, 2**31)")
    # Rules across sections that belong to one choice (a head's loss and scalers) are that
    # choice's own, read by the schema (`validate`).


class Checker:
  """Range and choice checks on one spec, worded with the full config key."""

  def __init__(self, prefix: str, spec: Any):
    self.prefix, self.spec = prefix, spec

  def _value(self, key: str) -> Any:
    section, _, leaf = key.rpartition(".")
    if not section:
      return getattr(self.spec, key)
    # A model's option section (`model.cell.*`, `model.lstm.*`), held as (name, value) pairs.
    options = self.spec.cell_options if section == "cell" else self.spec.options_of(section)
    return options[leaf]

  def check(self, key: str, ok: bool, requirement: str) -> None:
    if not ok:
      raise InputError(f"config key '{self.prefix}{key}' = {self._value(key)!r}: {requirement}")

  def positive(self, key: str) -> None:
    self.check(key, self._value(key) > 0, "must be > 0")

  def non_negative(self, key: str) -> None:
    self.check(key, self._value(key) >= 0, "must be >= 0")

  def probability(self, key: str) -> None:
    self.check(key, 0 <= self._value(key) < 1, "must be in [0, 1)")

  def at_most(self, key: str, bound: int) -> None:
    # Upper bounds keep absurd sizes from reaching JAX as overflow tracebacks.
    self.check(key, self._value(key) <= bound, f"must be <= 2**{int(math.log2(bound))}")

  def choice(self, key: str, choices: Sequence[str] | Mapping[str, Any]) -> None:
    self.check(key, self._value(key) in choices, f"must be one of {', '.join(choices)}")
