"""What a run is built from: `assemble(spec)` -> the data, the model, the optimizer, the
mesh and the step counts (`Setup`). Writes nothing; every data error is raised here,
before a workdir is touched."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxlstm import parallel
from flaxlstm.config.specs import RunSpec
from flaxlstm.data import augment, calendar, series, windows
from flaxlstm.data.scaling import FittedScalers
from flaxlstm.errors import InputError
from flaxlstm.forecast import baselines, encoders, heads
from flaxlstm.forecast.model import Forecaster, skip_problem
from flaxlstm.train.optim import make_optimizer
from flaxlstm.train.step import TrainState

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Setup:
  """Everything built from one `RunSpec` (see `assemble`)."""

  spec: RunSpec
  data: series.SeriesData
  model: Any  # a Forecaster, or a whole forecaster an encoder entry builds (build_model)
  tx: optax.GradientTransformation
  steps_per_epoch: int
  total_steps: int
  mesh: Any
  _abstract: Any = dataclasses.field(default=None, repr=False)
  _index: Any = dataclasses.field(default=None, repr=False)
  _skip: Any = dataclasses.field(default=None, repr=False)

  def _init_fn(self) -> Callable[[], TrainState]:
    return lambda: self.init_with(self.spec.seed, self.tx)

  def init_with(self, seed, tx: optax.GradientTransformation) -> TrainState:
    """The initial state for `seed` (an int, or traced for a population's members)."""
    first = self.data.window_index("train").rows(np.zeros(1, np.int64))
    inputs: dict[str, Any] = windows.model_inputs(self.data, first)
    key = jax.random.fold_in(jax.random.key(seed), 0)
    params = self.model.init(key, **inputs, deterministic=True)["params"]
    if hasattr(self.model, "pretrained"):  # starts from a pretrained model's weights
      params = self.model.pretrained(params)
    if self.spec.model.linear_skip_init == "ridge":
      if self._skip is None:  # the same fit for every seed and member: made once
        with jax.ensure_compile_time_eval():  # NumPy work on data, even inside jit's trace
          self._skip = fit_linear_skip(self.model, self.data)
      old = params["linear_skip"]
      params = {
        **params,
        "linear_skip": {k: jnp.asarray(v, old[k].dtype) for k, v in self._skip.items()},
      }
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  def abstract_state(self) -> Any:
    """Shapes, dtypes and target shardings of the train state (no memory allocated)."""
    if self._abstract is None:  # traced once: init is not free for large models
      shapes = jax.eval_shape(self._init_fn())
      self._abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        shapes,
        parallel.state_shardings(self.mesh, shapes, self.spec.mesh.fsdp_min_size),
      )
    return self._abstract

  def state_sharding(self) -> Any:
    return jax.tree.map(lambda a: a.sharding, self.abstract_state())

  def train_batch(self, step: int) -> tuple[dict[str, jax.Array], jax.Array]:
    """`(inputs, y)` of optimizer step `step`, as global arrays split over the mesh
    (`inputs`: `windows.model_inputs`); each process gathers only its own rows."""
    inputs, y = self.host_batch(
      step, parallel.local_batch_slice(self.mesh, self.spec.train.batch_size)
    )
    to_global = lambda a: parallel.host_to_global(self.mesh, a, self.spec.train.batch_size)
    return {k: to_global(v) for k, v in inputs.items()}, to_global(y)

  def host_batch(
    self, step: int, rows: slice = slice(None)
  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Rows `rows` of step `step`'s global batch, as NumPy arrays.

    A pure function of (seed, step): the batch's windows (`windows.batch_for_step`) and
    the augmentation draw. Augmentation is drawn for the whole batch so that it does not
    depend on how many processes share it.
    """
    spec, data = self.spec, self.data
    starts = windows.batch_for_step(self._train_index, spec.train.batch_size, spec.seed, step)
    inputs = windows.model_inputs(data, starts[rows])
    y = windows.gather_targets(data, starts[rows])
    if augment.is_on(spec.data.augment):
      x = windows.gather_inputs(data, starts)
      inputs["x"] = augment.augment(x, spec.data.augment, augment.augment_rng(spec.seed, step))[
        rows
      ]
    return inputs, y

  @property
  def _train_index(self) -> series.WindowIndex:
    if self._index is None:
      self._index = self.data.window_index("train")
    return self._index

  def init_state(self) -> TrainState:
    """Fresh parameters, created directly in their shards (no full copy on one device)."""
    return jax.jit(self._init_fn(), out_shardings=self.state_sharding())()


def fit_batch(spec: RunSpec, n_train: int, n_split: int) -> RunSpec:
  """`spec` with a batch no larger than the training set: a batch size above the number of
  training windows becomes the most that fit (a multiple of the devices and of
  `train.grad_accum_steps`), with a warning, as Keras and PyTorch take one batch of a
  small dataset; a recipe's batch (`panel:H`'s 256) then also runs on a small panel.
  Deterministic, so a resumed run makes the same choice."""
  bs, unit = spec.train.batch_size, n_split * spec.train.grad_accum_steps
  if n_train >= bs:
    return spec
  fitted = n_train // unit * unit
  if not fitted:
    raise InputError(
      f"train.batch_size={bs}: the {n_train} training windows are fewer than one row per "
      f"device and micro-batch ({unit}: mesh.data x mesh.fsdp x train.grad_accum_steps)"
    )
  log.warning(
    f"train.batch_size={bs} is larger than the {n_train} training windows: batches of "
    f"{fitted}" + (f" (a multiple of {unit}, the devices x micro-batches)" if unit > 1 else "")
  )
  return dataclasses.replace(spec, train=dataclasses.replace(spec.train, batch_size=fitted))


def fit_season(spec: RunSpec, data: series.SeriesData) -> RunSpec:
  """`spec` with `data.seasonal_period=0` (from the data) made the season of `data.freq`, or
  of the frequency most of the series step by (`calendar.season`: hourly 24, daily 7,
  weekly 52, monthly 12, ...; 1 without dates), logged. The run's config.json records the
  number, so that evaluate scores the same seasonal naive. Only the seasonal-naive
  baseline reads it."""
  if spec.data.seasonal_period:
    return spec
  freq = spec.data.freq or next(iter(data.frequencies), None)
  period = 1 if freq is None else calendar.season(freq)
  note = "no dates to read a season from" if freq is None else f"the season of {freq}"
  if period > spec.data.lookback:
    note += f"; longer than data.lookback={spec.data.lookback}: no seasonal-naive baseline"
  log.info(f"data.seasonal_period={period} ({note})")
  return dataclasses.replace(spec, data=dataclasses.replace(spec.data, seasonal_period=period))


def assemble(
  spec: RunSpec, devices: list | None = None, scalers: FittedScalers | None = None
) -> Setup:
  """The data, model, optimizer and step counts of `spec`; writes nothing.

  `scalers`: a finished run's saved scalers, used instead of fitting new ones.
  """
  # Random bits independent of how arrays are sharded: dropout masks are then the same on
  # any mesh (the default in current JAX; set so older versions agree).
  jax.config.update("jax_threefry_partitionable", True)
  mesh = parallel.make_mesh(spec.mesh, devices)
  n_split = parallel.batch_size_per_step(mesh)
  for key in ("batch_size", "eval_batch_size"):
    if getattr(spec.train, key) % n_split:
      raise InputError(
        f"train.{key}={getattr(spec.train, key)} must be a multiple of the "
        f"{n_split} devices the batch is split over (mesh.data x mesh.fsdp)"
      )
  accum = spec.train.grad_accum_steps
  if (spec.train.batch_size // accum) % n_split:
    raise InputError(
      f"train.grad_accum_steps={accum}: micro-batches of {spec.train.batch_size // accum} "
      f"rows must be a multiple of the {n_split} devices the batch is split over "
      "(mesh.data x mesh.fsdp)"
    )
  data = series.prepare(spec.data, scalers=scalers)
  heads.make(spec.model.head, spec.model.quantiles).check_data(data)  # the head's own rules
  n_train = len(data.window_index("train"))
  spec = fit_season(fit_batch(spec, n_train, n_split), data)
  bs = spec.train.batch_size
  steps_per_epoch = windows.steps_per_epoch(n_train, bs)
  total = steps_per_epoch * spec.train.max_epochs
  if spec.train.max_steps:
    total = min(total, spec.train.max_steps)
  model = build_model(spec, data)
  if spec.model.linear_skip_init == "ridge":
    inputs = spec.data.lookback * (1 if spec.model.channels == "independent" else data.n_features)
    if inputs > baselines.LINEAR_MAX_INPUTS:
      raise InputError(
        f"model.linear_skip_init='ridge' would solve a {inputs}-input ridge problem "
        f"(data.lookback x columns; at most {baselines.LINEAR_MAX_INPUTS}): use 'zeros'"
      )
  return Setup(
    spec,
    data,
    model,
    make_optimizer(spec.train, total, steps_per_epoch),
    steps_per_epoch,
    total,
    mesh,
  )


# The highway's ridge fit reads at most this many rows (windows, or (window, column) pairs
# with independent channels), evenly spread over the training windows, a chunk at a time.
SKIP_MAX_SAMPLES = 200_000
_SKIP_CHUNK = 8192
# Its penalty, as the linear baseline's: small against the Gram matrix of 10^4 and more
# standardized rows, enough to make the fit unique (a level-free window's last step is 0).
SKIP_ALPHA = 1.0


def fit_linear_skip(model: Forecaster, data: series.SeriesData) -> dict[str, np.ndarray]:
  """`model.linear_skip_init="ridge"`: the `linear_skip` layer's kernel and bias that best
  map the training windows, as that layer reads them, to the forecasts' targets, as the
  rest of the model leaves them (`skip_problem`), by ridge regression. The untrained model
  is then that linear forecast (with `predict_delta`, whose decoder head starts at zero), and
  training fits the LSTM to what it misses."""
  spec = model.spec
  per_window = data.n_features if spec.channels == "independent" else 1
  starts = baselines.spread_train_starts(data, max(1, SKIP_MAX_SAMPLES // per_window))
  step = max(1, _SKIP_CHUNK // per_window)
  moments = None
  for i in range(0, len(starts), step):
    chunk = starts[i : i + step]
    x, y_last = windows.gather_inputs(data, chunk), data.y[chunk - 1]
    rows, targets = skip_problem(
      spec,
      model.target_columns,
      *map(jnp.asarray, (x, y_last, windows.gather_targets(data, chunk))),
    )
    if moments is None:
      moments = baselines.Moments(rows.shape[1], targets.shape[1])
    moments.add(np.asarray(rows), np.asarray(targets))
  assert moments is not None  # assemble refuses a run with fewer windows than a batch
  kernel, bias = baselines.ridge_solve(moments, SKIP_ALPHA)
  return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def build_model(spec: RunSpec, data: series.SeriesData) -> Any:
  """The run's model for `data` (training data, or a new file with the run's scalers): a
  `Forecaster`, or the whole forecaster its encoder entry builds (TiRex)."""
  kwargs: dict[str, Any] = dict(
    horizon=data.horizon,
    n_targets=len(data.target_names),
    spec=spec.model,
    target_columns=_target_columns(spec, data),
    n_series=len(data.scalers.series_ids),
  )
  return encoders.ENCODERS[spec.model.encoder].forecaster(**kwargs) or Forecaster(**kwargs)


def _target_columns(spec: RunSpec, data: series.SeriesData) -> tuple[int, ...]:
  """Each target's position among the inputs, after the checks that need the columns."""
  model, features, targets = spec.model, data.feature_names, data.target_names
  if model.channels == "independent" and data.series_ids:
    raise InputError(
      "model.channels='independent' splits a wide table's columns into series; a long "
      "table (data.id_column) already is one sample per series: use model.channels='mixed'"
    )
  if model.channels == "independent" and features != targets:
    raise InputError(
      "model.channels='independent' forecasts every input column from its own past: "
      f"data.features {list(features)} must equal data.target {list(targets)}"
    )
  if model.series_embedding and model.channels != "independent" and not data.series_ids:
    raise InputError(
      "model.series_embedding needs several series: model.channels='independent' or a "
      "long table (data.id_column)"
    )
  if model.segment_length and spec.data.lookback % model.segment_length:
    raise InputError(
      f"data.lookback={spec.data.lookback} must be a multiple of "
      f"model.segment_length={model.segment_length}"
    )
  if model.recalibration_windows and model.recalibration_scope == "panel" and data.dates is None:
    raise InputError(
      "model.recalibration_scope='panel' orders the windows of all series by date: "
      f"{data.source} has no date column (data.date_column)"
    )
  missing = [t for t in targets if t not in features]
  if model.revin and missing:
    raise InputError(
      f"model.revin maps each target back with its input column's statistics, but "
      f"{missing} {'is' if len(missing) == 1 else 'are'} not in data.features"
    )
  if model.volatility_scaling and missing:
    raise InputError(
      f"model.volatility_scaling scales each target by its input column's volatility, but "
      f"{missing} {'is' if len(missing) == 1 else 'are'} not in data.features"
    )
  return tuple(features.index(t) for t in targets if t in features)
