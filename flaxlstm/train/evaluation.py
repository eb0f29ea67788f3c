"""Scoring a model during and after training: validation with early stopping, the final
metrics beside the baselines (and, for distribution heads, CRPS, pinball, coverage beside
split-conformal intervals), and the plots."""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from flaxlstm.data import windows
from flaxlstm.forecast import baselines, calibration
from flaxlstm.forecast.metrics import (
  HeadDistribution,
  distribution_metrics,
  per_target_metrics,
  split_metrics,
  unit_scale,
)
from flaxlstm.report import Reporter
from flaxlstm.train.assembly import Setup
from flaxlstm.train.checkpoint import Checkpoints, LoopState, NoIntact
from flaxlstm.train.optim import data_loss
from flaxlstm.train.step import predict_windows

log = logging.getLogger(__name__)


class Evaluator:
  """Validation and early stopping.

  Called at an evaluation step, it scores the params on every validation window, logs the
  metrics, saves the params as a best checkpoint when the validation loss improved by more
  than `train.min_delta`, and sets `loop.stopped_early` after `train.patience` evaluations
  without improvement. The counters live in `loop`, so they resume with it.
  """

  def __init__(self, setup: Setup, predict_fn: Callable, reporter: Reporter, ckpts: Checkpoints):
    self.setup, self.predict_fn, self.reporter, self.ckpts = setup, predict_fn, reporter, ckpts
    self.every = setup.spec.train.eval_every_steps or setup.steps_per_epoch
    self.starts = setup.data.window_starts("val")
    self.targets = jnp.asarray(windows.gather_targets(setup.data, self.starts))
    self.head = setup.model.head
    self.unit = unit_scale(setup.data, self.starts) if self.head.n_params else None

  def due(self, step: int) -> bool:
    return step % self.every == 0 or step == self.setup.total_steps

  def __call__(self, loop: LoopState, params: Any) -> None:
    setup = self.setup
    pred = predict_windows(
      self.predict_fn, params, setup.data, self.starts, setup.spec.train.eval_batch_size, setup.mesh
    )
    self.record(loop, params, pred)

  def record(self, loop: LoopState, params: Any, pred: np.ndarray) -> None:
    """Logs the validation predictions `pred` of `params` and updates early stopping."""
    setup, spec = self.setup, self.setup.spec.train
    head = self.head
    val_loss = float(data_loss(head, spec, jnp.asarray(pred), self.targets).mean())
    scores = {"loss": val_loss, **split_metrics(setup.data, self.starts, head.point(pred))}
    if head.n_params:  # TensorBoard's val/crps, val/coverage_80, ... curves
      dist = distribution_metrics(
        HeadDistribution(head, pred), self.targets, self.unit, setup.spec.model.quantiles
      )
      scores.update({k: v for k, v in dist.items() if k != "per_lead"})
    self.reporter.log(loop.step, "val", scores, epoch=(loop.step - 1) // setup.steps_per_epoch)
    if np.isfinite(val_loss) and val_loss < loop.best_val - spec.min_delta:
      loop.best_val, loop.best_step, loop.bad_evals = val_loss, loop.step, 0
      self.ckpts.save_best(loop.step, params, val_loss)
    else:
      loop.bad_evals += 1
    if spec.patience and loop.bad_evals >= spec.patience:
      loop.stopped_early = True

  def final_params(self, params: Any) -> Any:
    """The params to report: the best checkpoint's (`train.restore_best`), else `params`."""
    if not self.setup.spec.train.restore_best:
      return params
    try:
      best = self.ckpts.restore_best_params(self.setup.abstract_state().params)
    except NoIntact as e:
      log.warning(f"{e}; scoring the last params instead of the best")
      best = None
    return params if best is None else best


def final_metrics(
  setup: Setup, params: Any, predict_fn: Callable, baseline_metrics: dict | None = None
) -> tuple[dict, np.ndarray, Any]:
  """Val/test metrics and baselines (`baseline_metrics` if already computed on the same
  data), the test predictions and the test distributions (for the plots: a distribution
  head's parameters and its `HeadDistribution`, recalibrated with
  `model.recalibration_windows`; None for a point head). `val_windows` and `test_windows`
  count the windows scored; a split without windows (the test split of a production fit,
  `data.test_size=0`) has no metrics.

  The point metrics score the head's median (its mean for Gaussian heads), so they compare
  with a point model's; a distribution head adds `distribution` (CRPS, pinball, interval
  coverage and width, overall and per lead time), and with recalibration
  `distribution_uncalibrated`, the head's own. `conformal` scores split-conformal
  distributions calibrated on the validation windows around this model's point forecast
  and around the naive one, on the test windows.
  """
  data, head, levels = setup.data, setup.model.head, setup.spec.model.quantiles
  out: dict[str, Any] = {}
  counts = {}
  preds: dict[str, np.ndarray] = {}
  points = {}
  for split in ("val", "test"):
    starts = data.window_starts(split)
    counts[f"{split}_windows"] = len(starts)
    if not len(starts):
      continue
    pred = predict_windows(
      predict_fn, params, data, starts, setup.spec.train.eval_batch_size, setup.mesh
    )
    preds[split] = pred
    points[split] = point = np.asarray(head.point(pred))
    out[split] = split_metrics(data, starts, point)
    if len(data.target_names) > 1:  # e.g. a global model scored on one column
      out[split]["per_target"] = per_target_metrics(data, starts, point)
  dists = _distributions(setup, preds) if head.n_params else {}
  for split, dist in dists.items():
    starts = data.window_starts(split)
    y, unit = windows.gather_targets(data, starts), unit_scale(data, starts)
    out[split]["distribution"] = distribution_metrics(dist, y, unit, levels)
    if isinstance(dist, calibration.Recalibrated):
      out[split]["distribution_uncalibrated"] = distribution_metrics(dist.dist, y, unit, levels)
      # How many forecasts had the windows to recalibrate on: the rest keep the head's own.
      out[split]["distribution"]["recalibrated_windows"] = done = int(dist.calibrated.sum())
      if done < len(starts):
        # The first validation forecasts never have the windows (nothing before them is
        # scored): expected, so said at INFO; a test forecast without them is news.
        (log.info if split == "val" else log.warning)(
          f"model.recalibration_windows={setup.spec.model.recalibration_windows}: "
          f"{len(starts) - done} of {len(starts)} {split} forecasts had fewer than half "
          f"that many windows known before them (recalibration_scope="
          f"{setup.spec.model.recalibration_scope!r}) and keep the head's own quantiles"
        )
  out["baselines"] = (
    baselines.baseline_metrics(data, setup.spec.data.seasonal_period)
    if baseline_metrics is None
    else baseline_metrics
  )
  if "seasonal_naive" in out["baselines"]:  # the season it used (0 in a config: the data's)
    out["seasonal_period"] = setup.spec.data.seasonal_period
  test_points = points.get("test", np.zeros((0,)))  # none: no conformal scores ({})
  out["conformal"] = baselines.conformal_metrics(data, points["val"], test_points, levels)
  out.update(counts)
  return out, preds.get("test", np.zeros((0,))), dists.get("test")


def _distributions(setup: Setup, preds: dict[str, np.ndarray]) -> dict[str, Any]:
  """Each split's predictive distributions: the head's, recalibrated with
  `model.recalibration_windows` on the windows of both splits that ended before each
  forecast (forecast/calibration.py), never on training windows."""
  data, head = setup.data, setup.model.head
  dists = {split: HeadDistribution(head, pred) for split, pred in preds.items()}
  n_windows = setup.spec.model.recalibration_windows
  if not n_windows:
    return dists
  # The forecasts of both splits are their own calibration windows: one fit serves both.
  starts = np.concatenate([data.window_starts(split) for split in preds])
  source = (
    HeadDistribution(head, np.concatenate(list(preds.values()))),
    windows.gather_targets(data, starts),
    starts,
  )
  model = setup.spec.model
  factors, enough = calibration.fit_factors(
    starts, source, data, n_windows, model.quantiles, model.recalibration_scope
  )
  out, at = {}, 0
  for split, dist in dists.items():
    part = slice(at, at + len(preds[split]))
    out[split] = calibration.Recalibrated(dist, model.quantiles, factors[part], enough[part])
    at = part.stop
  return out


def summary(setup: Setup, loop: LoopState, params: Any) -> dict:
  """The training summary fields of metrics.json, from the loop's bookkeeping."""
  return dict(
    encoder=setup.spec.model.encoder,  # the model's row in the printed scores
    steps=loop.step,
    epochs=loop.step / setup.steps_per_epoch,
    best_step=loop.best_step,
    stopped_early=loop.stopped_early,
    nonfinite_steps=loop.nonfinite_steps,
    train_wall_time_s=loop.wall_time_s,
    params_count=int(sum(p.size for p in jax.tree.leaves(params))),
  )


def write_plots(
  reporter: Reporter, setup: Setup, test_pred: np.ndarray, test_dist: Any = None
) -> None:
  """Learning curves and test forecasts vs actuals, with the 80% and 95% bands of a
  distribution head's `test_dist` (process 0; no device work here)."""
  if not reporter.enabled:
    return
  data, head = setup.data, setup.model.head
  reporter.plot_learning_curves()
  starts = data.window_starts("test")
  if not len(starts):  # a production fit: no test windows to draw
    return
  title = f"test set: {', '.join(data.target_names)}"
  first = np.ones(len(starts), bool)
  if data.series_ids:  # a panel: the first series' test windows
    first = data.row_series(starts - 1) == 0
    starts, test_pred = starts[first], test_pred[first]
    title += f", series {data.series_ids[0]}"
  y = windows.gather_targets(data, starts)
  naive = baselines.naive_forecast(data, starts)
  bands = {}
  if test_dist is not None:
    for c in (0.95, 0.8):  # widest first: drawn underneath
      q = test_dist.quantiles(((1 - c) / 2, (1 + c) / 2))[first]
      lo, hi = (data.inverse_targets(q[..., i], starts) for i in range(2))
      bands[f"{round(100 * c)}% interval"] = (lo, hi)
  reporter.plot_forecast(
    data.inverse_targets(y, starts),
    data.inverse_targets(np.asarray(head.point(test_pred)), starts),
    name="forecast_test.png",
    title=title,
    target_name=data.target_names[0],
    baselines={"naive": data.inverse_targets(naive, starts)},
    dates=None if data.dates is None else data.dates[starts],
    bands=bands,
  )
