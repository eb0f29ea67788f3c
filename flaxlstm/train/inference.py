"""Commands on a finished (or interrupted) run: `evaluate` recomputes its metrics, `predict`
forecasts a new file. Both read the run without writing into it, except `evaluate`'s
metrics.json (and scalers.json with `refit_scalers`), under the run's lock."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from flaxlstm import config as config_lib
from flaxlstm.data import calendar, io, scaling, series, steps, windows
from flaxlstm.errors import InputError, TrainingError
from flaxlstm.forecast import calibration
from flaxlstm.forecast.metrics import HeadDistribution, per_target_metrics, split_metrics
from flaxlstm.report import Reporter
from flaxlstm.train import evaluation
from flaxlstm.train import lock as lock_lib
from flaxlstm.train import workdir as workdir_lib
from flaxlstm.train.assembly import assemble, build_model
from flaxlstm.train.checkpoint import Checkpoints, LoopState
from flaxlstm.train.step import make_predict_fn, predict_windows

log = logging.getLogger(__name__)


def restore_params(workdir: str, abstract_params: Any, *, best: bool = True) -> Any:
  """The run's final params, as training reported them: the best checkpoint's (else its
  newest intact one), or with `best=False` (`train.restore_best=False`) the newest's;
  reads only."""
  with Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True) as ckpts:
    params = ckpts.restore_params(abstract_params, best=best)
  if params is None:
    raise InputError(f"{workdir} holds no checkpoint")
  return params


def run_scalers(workdir: str) -> scaling.FittedScalers:
  """The run's saved scalers (scalers.json); a legacy scalers.pkl is refused unread."""
  path = os.path.join(workdir, "scalers.json")
  if not os.path.lexists(path):
    legacy = os.path.join(workdir, "scalers.pkl")
    if os.path.lexists(legacy):
      return scaling.load_scalers(legacy)  # refuses, saying how to re-create them
    raise InputError(
      f"{workdir} has no scalers.json; re-create it with `flaxlstm evaluate "
      f"--workdir {workdir} --refit-scalers`"
    )
  return scaling.load_scalers(path)


def evaluate(
  workdir: str, *, allow_changed_data: bool = False, refit_scalers: bool = False
) -> dict:
  """Recomputes a run's final metrics from its checkpoint; writes `metrics.json`.

  The data must be the bytes the run was trained on (`allow_changed_data`: score other
  bytes, and say so) and is scaled with the run's saved scalers; `refit_scalers` fits them
  again on the training rows instead (a run whose scalers.json is lost, or one saved as a
  pickle by an older flaxlstm) and saves them. metrics.json is rebuilt whole, the training
  summary from the checkpoint's bookkeeping, so a damaged one is simply replaced.
  """
  config, record = workdir_lib.read_run_config(workdir)
  lock = lock_lib.Lock(workdir, "flaxlstm evaluate")
  with lock:
    # What evaluate reads and replaces; its checkpoints are checked as they are opened,
    # and a missing checkpoints/latest (or one that is a file) still leaves the best.
    workdir_lib.check_entries(workdir, ("scalers.json", "metrics.json"), folders=False)
    data_now = workdir_lib.fingerprint(io.data_file(config.data.path))
    warning = workdir_lib.check_same_data(
      record, data_now, workdir=workdir, allow_changed=allow_changed_data
    )
    if record is None:
      warning = (
        f"{workdir} records no data fingerprint (trained by an older flaxlstm); "
        f"scoring {data_now['path']} as it is now"
      )
    scalers = None if refit_scalers else run_scalers(workdir)
    setup = assemble(config_lib.to_spec(config), scalers=scalers)
    with Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True) as ckpts:
      params = ckpts.restore_params(
        setup.abstract_state().params, best=setup.spec.train.restore_best
      )
      loop = ckpts.latest_loop()
    if params is None:
      raise InputError(f"{workdir} holds no checkpoint")
    if warning:
      log.warning(warning)
    metrics, _, _ = evaluation.final_metrics(
      setup, params, make_predict_fn(setup.model, setup.mesh)
    )
    metrics.update(evaluation.summary(setup, loop or LoopState(), params), data=data_now)
    reporter = Reporter(workdir, enabled=jax.process_index() == 0)
    if refit_scalers and reporter.enabled:
      setup.data.save_scalers(os.path.join(workdir, "scalers.json"))
    reporter.write_json("metrics.json", metrics)
  return metrics


def _run_configs(workdirs: Sequence[str]) -> list[tuple[Any, dict[str, Any] | None]]:
  """Each run's config and run record (`workdir.read_run_config`); several runs (an
  ensemble) must be distinct and agree on every `data` setting, so that their forecasts
  are of the same windows, columns and units."""
  if len(set(map(os.path.realpath, workdirs))) < len(workdirs):
    raise InputError("an ensemble names the same run twice: " + ", ".join(workdirs))
  configs = [workdir_lib.read_run_config(w) for w in workdirs]
  first = configs[0][0].data.to_dict()
  for w, (config, _) in zip(workdirs[1:], configs[1:]):
    other = config.data.to_dict()
    for key in sorted(set(first) | set(other)):
      if first.get(key) != other.get(key):
        raise InputError(
          f"{w} and {workdirs[0]} differ in data.{key} ({other.get(key)!r} vs "
          f"{first.get(key)!r}); an ensemble averages runs of the same data"
        )
  return configs


def evaluate_ensemble(workdirs: Sequence[str]) -> dict:
  """Scores the mean of several runs' point forecasts (a seed ensemble, or any runs of the
  same data) on their validation and test windows; reads the runs, writes nothing.

  The runs must agree on every `data` setting (file, columns, split, lookback, horizon,
  scaler), so that they forecast the same windows in the same scaled units; the data file
  must be the bytes each was trained on. Each run's scalers are its saved ones (fit on the
  same training rows, so equal). Returns `{"members": [...], "val": ..., "test": ...,
  "val_windows", "test_windows"}`, the splits scored as `metrics.json` scores one run
  (`per_target` too with several targets), and each member's own scores under
  `"members"`.
  """
  if len(workdirs) < 2:
    raise InputError("an ensemble needs at least two runs (--workdir A --workdir B ...)")
  configs = _run_configs(workdirs)
  data_now = workdir_lib.fingerprint(io.data_file(configs[0][0].data.path))
  members: list[dict[str, Any]] = []
  points: dict[str, list[np.ndarray]] = {}
  for w, (config, record) in zip(workdirs, configs):
    workdir_lib.check_same_data(record, data_now, workdir=w, allow_changed=False)
    setup = assemble(config_lib.to_spec(config), scalers=run_scalers(w))
    params = restore_params(w, setup.abstract_state().params, best=setup.spec.train.restore_best)
    predict_fn = make_predict_fn(setup.model, setup.mesh)
    scores: dict[str, Any] = {"workdir": w}
    for split in ("val", "test"):
      starts = setup.data.window_starts(split)
      if not len(starts):
        continue
      pred = predict_windows(
        predict_fn, params, setup.data, starts, setup.spec.train.eval_batch_size, setup.mesh
      )
      point = np.asarray(setup.model.head.point(pred), np.float64)
      scores[split] = split_metrics(setup.data, starts, point)
      points.setdefault(split, []).append(point)
    members.append(scores)
  data = setup.data  # the members' data are equal (checked above)
  out: dict[str, Any] = {"members": members}
  for split, preds in points.items():
    starts = data.window_starts(split)
    mean = np.mean(preds, axis=0)
    out[split] = split_metrics(data, starts, mean)
    if len(data.target_names) > 1:
      out[split]["per_target"] = per_target_metrics(data, starts, mean)
    out[f"{split}_windows"] = len(starts)
  return out


class _Forecast(NamedTuple):
  """One run's forecasts of a file, in original units, and where they start."""

  data: series.SeriesData
  spec: Any
  starts: np.ndarray  # (N,) the window starts: the row after each forecast's origin
  series_of: np.ndarray  # (N,) the series of each
  ahead: np.ndarray | None  # each series' future dates (a file with dates)
  point: np.ndarray  # (N, H, targets)
  quantiles: list[np.ndarray]  # (N, H, targets) per level of model.quantiles; [] for a point head


def _forecast(
  workdir: str, config: Any, data_path: str, all_windows: bool, read_as: dict[str, Any]
) -> _Forecast:
  """`workdir`'s forecasts of `data_path` (`predict_file`), the file read with the run's
  data settings but `read_as` (`fill`, `missing_dates`, `freq`)."""
  scalers = run_scalers(workdir)
  spec = config_lib.to_spec(config)
  spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, **read_as))
  data = series.prepare_inference(spec.data, scalers, path=data_path)
  if config.model.predict_delta and not data.has_targets:
    raise InputError(
      f"{data_path} lacks the target column(s) {list(data.target_names)}, "
      "which this model (model.predict_delta) needs as inputs"
    )
  if spec.model.series_embedding and data.series_ids and (data.series_codes < 0).any():
    new = data.series_ids[int(np.argmax(data.series_codes < 0))]
    raise InputError(
      f"series {new!r} of {data_path} was not in the training data, and this model "
      "(model.series_embedding) has learned an embedding for each training series only"
    )
  model = build_model(spec, data)
  # Starts: each series' end (the forecast after it), or, back-testing, every position with
  # `lookback` rows of history (one where the start is padded) up to and including the end.
  if all_windows:
    begin, end = data.offsets[:-1], data.offsets[1:]
    starts = np.concatenate([np.arange(b + c, e + 1) for b, e, c in zip(begin, end, data.context)])
  else:
    starts = data.offsets[1:].copy()
  starts = starts.astype(np.int64)
  series_of = data.row_series(starts - 1)
  # Every forecast runs past its series' end (the last one at least), so a file with dates
  # needs each series' future dates: by its frequency, refused when it has none.
  ahead = None
  if data.dates is not None:
    ahead = calendar.future_dates(
      data.dates,
      data.offsets,
      data.horizon,
      source=data.source,
      series_ids=data.series_ids,
      freq=spec.data.freq,
    )
  future = _future_known(spec.data, data, starts, series_of, ahead)
  sample: dict[str, Any] = windows.model_inputs(
    data, starts[:1], None if future is None else future[:1]
  )
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), **sample))["params"]
  params = restore_params(workdir, abstract, best=spec.train.restore_best)
  raw = predict_windows(
    make_predict_fn(model), params, data, starts, config.train.eval_batch_size, future_known=future
  )
  head, levels = model.head, spec.model.quantiles
  pred = data.inverse_targets(np.asarray(head.point(raw)), starts)
  # A distribution head also writes its quantiles, in original units (the scalers are
  # increasing maps, so quantiles map to quantiles).
  quantiles = []
  if head.n_params:
    dist: Any = HeadDistribution(head, raw)
    if spec.model.recalibration_windows:
      dist = _recalibrated(dist, model, params, data, starts, series_of, spec, data_path)
    quantiles = [
      data.inverse_targets(q, starts) for q in np.moveaxis(dist.quantiles(levels), -1, 0)
    ]
  return _Forecast(data, spec, starts, series_of, ahead, pred, quantiles)


def _recalibrated(dist, model, params, data, starts, series_of, spec, data_path) -> Any:
  """`dist` recalibrated as the run's metrics are (`model.recalibration_windows`), on the
  windows of `data_path` whose targets are known: the last N before each forecast in its
  series. In a production fit (`data.test_size=0`) predicting its own file, those are the
  validation windows; a file without the targets cannot recalibrate, and says so."""
  n_windows, horizon = spec.model.recalibration_windows, data.horizon
  if not data.has_targets:
    log.warning(
      f"{data_path} lacks the target column(s) {list(data.target_names)}: its quantiles "
      "are the head's own, not recalibrated (model.recalibration_windows)"
    )
    return dist
  begin, end = data.offsets[:-1], data.offsets[1:]
  first = np.full(len(begin), np.iinfo(np.int64).max)
  np.minimum.at(first, series_of, starts)
  # Each series' complete windows (all targets, and any known inputs, in the file) that
  # some forecast may read.
  source = np.concatenate(
    [
      np.arange(max(b + c, f - horizon - n_windows - horizon), e - horizon + 1)
      for b, e, f, c in zip(begin, end, first, data.context)
    ]
  ).astype(np.int64)
  if not len(source):
    return dist
  src_raw = predict_windows(
    make_predict_fn(model), params, data, source, spec.train.eval_batch_size
  )
  src = (HeadDistribution(model.head, src_raw), windows.gather_targets(data, source), source)
  out = calibration.recalibrate(
    dist, starts, src, data, n_windows, spec.model.quantiles, spec.model.recalibration_scope
  )
  if not out.calibrated.all():
    log.warning(
      f"{int((~out.calibrated).sum())} of {len(starts)} forecasts of {data_path} had fewer "
      f"than {-(-n_windows // 2)} complete windows before them (model.recalibration_windows, "
      f"recalibration_scope={spec.model.recalibration_scope!r}): they keep the head's own "
      "quantiles"
    )
  return out


def _read_as(
  config: Any, fill: str | None, missing_dates: str | None, freq: str | None
) -> dict[str, Any]:
  """`predict_file`'s `fill`, `missing_dates` and `freq`, checked, as `DataSpec` fields."""
  read_as: dict[str, Any] = {}
  if fill is not None:
    if fill not in io.FILLS:
      raise InputError(f"--fill must be one of {', '.join(io.FILLS)}, got {fill!r}")
    read_as["fill"] = fill
  if missing_dates is not None:
    if missing_dates not in steps.MISSING_DATES:
      raise InputError(
        f"--missing-dates must be one of {', '.join(steps.MISSING_DATES)}, got {missing_dates!r}"
      )
    read_as["missing_dates"] = missing_dates
  if freq is not None:
    if not steps.valid_freq(freq):
      raise InputError(f"--freq {freq!r} is not a pandas frequency (such as 'h', 'D', 'B', 'MS')")
    read_as["freq"] = freq
  if read_as.get("missing_dates", config.data.missing_dates) == "fill" and (
    read_as.get("fill", config.data.fill) == "none"
  ):
    raise InputError(
      "--missing-dates fill inserts dates without values: add --fill ffill or interpolate"
    )
  return read_as


def _check_frequencies(
  record: dict[str, Any] | None, data: series.SeriesData, data_path: str, workdir: str
) -> None:
  """Warns when `data_path` has series stepping by a frequency the run was not trained on
  (an hourly model given monthly series reads each month as an hour); a run recorded
  before frequencies were, or a file without dates, is not checked."""
  trained = None if record is None else record.get("frequencies")
  if not trained or data.dates is None:
    return
  now = steps.frequencies(data.dates, data.offsets)
  new = {f: n for f, n in now.items() if f not in trained}
  if new:
    log.warning(
      f"{data_path} has series stepping by a frequency {workdir} was not trained on "
      f"({steps.describe(new)}; trained on {steps.describe(trained)}): the model reads each "
      "row as one step of the series it learned"
    )


def predict_file(
  workdir: str | Sequence[str],
  data_path: str,
  out_path: str,
  *,
  all_windows: bool = False,
  overwrite: bool = False,
  fill: str | None = None,
  missing_dates: str | None = None,
  freq: str | None = None,
) -> int:
  """Forecasts `data_path` with a trained run; writes a CSV in original units.

  The file is read as the run read its data, but `fill`, `missing_dates` and `freq`, where
  given, replace its `data.fill`, `data.missing_dates` and `data.freq`: how the file's own
  missing values and dates are handled, which the model does not depend on.

  By default one forecast: the `horizon` steps after the file's last row. A distribution
  head's run writes the median (Gaussian: the mean) under each target's name and its
  quantiles at `model.quantiles` beside it (`OT_q0.1`, ...). With
  `all_windows`, a forecast from every position that has `lookback` rows of history
  (back-testing), with the actual values beside it when the file has the targets (empty
  where the file had none: a value `data.fill` made up is not an actual).
  Several runs (a sequence of workdirs: an ensemble, which must agree on every `data`
  setting and on the quantiles it writes) write the mean of their forecasts, each quantile
  the mean of the members' at its level.
  Returns the number of forecasts written. Reads the runs, writes only `out_path`: never
  over `data_path`, a file of a run or the data it was trained on, never over an
  existing file unless `overwrite`.
  """
  import pandas as pd  # host-side only; keeps `import flaxlstm.train` light for workers

  workdirs = [workdir] if isinstance(workdir, str) else list(workdir)
  configs = _run_configs(workdirs)
  for w, (config, record) in zip(workdirs, configs):
    trained_on = [] if record is None else [record["data"]["path"]]
    try:
      trained_on.append(str(io.data_file(config.data.path)))
    except InputError:
      pass  # a path that names no file ("~nobody/x.csv") holds no data to protect
    out = workdir_lib.check_output(
      out_path,
      inputs=(data_path,),
      workdir=w,
      trained_on=tuple(trained_on),
      overwrite=overwrite,
    )
  read_as = _read_as(configs[0][0], fill, missing_dates, freq)
  members = [
    _forecast(w, config, data_path, all_windows, read_as)
    for w, (config, _) in zip(workdirs, configs)
  ]
  for w, (_, record), member in zip(workdirs, configs, members):
    _check_frequencies(record, member.data, data_path, w)
  data, spec, starts, series_of, ahead, pred, quantiles = members[0]

  def written(m: _Forecast) -> tuple:  # the quantile levels a run writes
    return tuple(m.spec.model.quantiles) if m.quantiles else ()

  for w, member in zip(workdirs[1:], members[1:]):
    if written(member) != written(members[0]):
      raise InputError(
        f"{w} and {workdirs[0]} forecast different quantiles ({written(member)} vs "
        f"{written(members[0])}); an ensemble averages runs that write the same columns"
      )
  levels = written(members[0])
  if len(members) > 1:  # one run writes its own forecast, untouched
    pred = np.mean([m.point for m in members], axis=0)
    quantiles = [np.mean(qs, axis=0) for qs in zip(*(m.quantiles for m in members))]
  begin, end = data.offsets[:-1], data.offsets[1:]
  table: dict[str, Any] = {}
  h = np.tile(np.arange(1, data.horizon + 1), len(starts))
  window = np.repeat(np.arange(len(starts)), data.horizon)
  if data.series_ids:
    table[spec.data.id_column] = np.asarray(data.series_ids, dtype=object)[series_of[window]]
  if data.dates is not None:
    origin = data.dates[starts - 1][window]
    table["origin"] = origin
  else:
    table["origin"] = (starts - 1 - begin[series_of])[window]
  table["step"] = h
  rows_ahead = starts[window] + h - 1
  inside = rows_ahead < end[series_of[window]]
  if ahead is not None:
    table["date"] = _dates(data, ahead, rows_ahead, series_of[window])
  for k, name in enumerate(data.target_names):
    table[name] = pred[:, :, k].reshape(-1).astype(np.float64)
    for level, q in zip(levels, quantiles):
      table[f"{name}_q{level:g}"] = q[:, :, k].reshape(-1).astype(np.float64)
    if data.has_targets and all_windows:
      # The file's own values only: one that data.fill (or a filled date) made up is empty.
      actual = np.full(len(h), np.nan)
      at = rows_ahead[inside]
      observed = data.y_raw[at, k].astype(np.float64)
      if data.y_filled is not None:
        observed = np.where(data.y_filled[at, k], np.nan, observed)
      actual[inside] = observed
      table[f"{name}_actual"] = actual
  rows = pd.DataFrame(table)
  text = rows.to_csv(index=False)
  try:
    workdir_lib.write_output(out, text, overwrite=overwrite)
  except OSError as e:
    if workdir_lib.is_disk_full(e):
      raise TrainingError(f"disk full writing --out {out_path}; nothing was written") from None
    raise InputError(f"cannot write --out {out_path}: {e.strerror}") from None
  return len(starts)


def _dates(data: series.SeriesData, ahead: np.ndarray, rows: np.ndarray, of: np.ndarray):
  """The date of each row in `rows` (of series `of`): the file's, or past a series' end,
  its future date (`ahead`: ``(n_series, horizon)``)."""
  assert data.dates is not None
  end = data.offsets[1:][of]
  inside = rows < end
  out = np.empty(len(rows), "datetime64[ns]")
  out[inside] = data.dates[rows[inside]]
  out[~inside] = ahead[of[~inside], (rows - end)[~inside]]
  return out


def _future_known(spec, data: series.SeriesData, starts, series_of, ahead) -> np.ndarray | None:
  """Known covariates over each window's horizon where it runs past its series' end.

  Calendar features follow from the dates (`ahead`: each series' future dates, by its own
  frequency); user columns declared known (`data.known`) cannot be guessed, so such
  forecasts are refused.
  """
  if data.known is None:
    return None
  end = data.offsets[1:][series_of]
  rows = starts[:, None] + np.arange(data.horizon)  # (N, H)
  inside = rows < end[:, None]
  if inside.all():
    return None
  if spec.known:
    raise InputError(
      f"forecasting past the end of {data.source} needs the future values of the known "
      f"column(s) {list(spec.known)} (data.known), which the file does not hold; predict "
      "only where they are known (the file's own windows) or drop data.known"
    )
  out = data.known[np.minimum(rows, data.n_rows - 1)].copy()
  assert ahead is not None  # calendar features need dates
  of = np.repeat(series_of[:, None], data.horizon, 1)
  dates = _dates(data, ahead, rows[~inside], of[~inside])
  out[~inside] = calendar.calendar_features(dates, spec.calendar)
  return out
