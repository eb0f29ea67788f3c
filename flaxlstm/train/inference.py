"""Commands on a finished (or interrupted) run: `evaluate` recomputes its metrics, `predict`
forecasts a new file. Both read the run without writing into it, except `evaluate`'s
metrics.json (and scalers.json with `refit_scalers`), under the run's lock."""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

from flaxlstm import config as config_lib
from flaxlstm.data import io, scaling, series
from flaxlstm.errors import InputError, TrainingError
from flaxlstm.forecast.model import Forecaster
from flaxlstm.report import Reporter
from flaxlstm.train import evaluation
from flaxlstm.train import workdir as workdir_lib
from flaxlstm.train.assembly import assemble
from flaxlstm.train.checkpoint import Checkpoints, LoopState
from flaxlstm.train.step import make_predict_fn, predict_windows

log = logging.getLogger(__name__)


def restore_params(workdir: str, abstract_params: Any) -> Any:
  """The run's best params (else those of its newest intact checkpoint); reads only."""
  with Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True) as ckpts:
    params = ckpts.restore_params(abstract_params)
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
  lock = workdir_lib.Lock(workdir, "flaxlstm evaluate")
  with lock:
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
      params = ckpts.restore_params(setup.abstract_state().params)
      loop = ckpts.latest_loop()
    if params is None:
      raise InputError(f"{workdir} holds no checkpoint")
    if warning:
      log.warning(warning)
    metrics, _ = evaluation.final_metrics(setup, params, make_predict_fn(setup.model, setup.mesh))
    metrics.update(evaluation.summary(setup, loop or LoopState(), params), data=data_now)
    reporter = Reporter(workdir, enabled=jax.process_index() == 0)
    if refit_scalers and reporter.enabled:
      setup.data.save_scalers(os.path.join(workdir, "scalers.json"))
    reporter.write_json("metrics.json", metrics)
  return metrics


def predict_file(
  workdir: str, data_path: str, out_path: str, *, all_windows: bool = False, overwrite: bool = False
) -> int:
  """Forecasts `data_path` with a trained run; writes a CSV in original units.

  By default one forecast: the `horizon` steps after the file's last row. With
  `all_windows`, a forecast from every position that has `lookback` rows of history
  (back-testing), with the actual values beside it when the file has the targets.
  Returns the number of forecasts written. Reads the run, writes only `out_path`: never
  over `data_path` or a file of the run, never over an existing file unless `overwrite`.
  """
  import pandas as pd  # host-side only; keeps `import flaxlstm.train` light for workers

  out = workdir_lib.check_output(
    out_path, inputs=(data_path,), workdir=workdir, overwrite=overwrite
  )
  config, _ = workdir_lib.read_run_config(workdir)
  scalers = run_scalers(workdir)
  spec = config_lib.to_spec(config)
  data = series.prepare_inference(spec.data, scalers, path=data_path)
  if config.model.predict_delta and not data.has_targets:
    raise InputError(
      f"{data_path} lacks the target column(s) {list(data.target_names)}, "
      "which this model (model.predict_delta) needs as inputs"
    )
  model = Forecaster(horizon=data.horizon, n_targets=len(data.target_names), spec=spec.model)
  x0 = np.zeros((1, data.lookback, len(data.feature_names)), np.float32)
  y0 = np.zeros((1, len(data.target_names)), np.float32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x0, y0))["params"]
  params = restore_params(workdir, abstract)
  n = len(data.x)
  if all_windows:
    starts = np.arange(data.lookback, n + 1, dtype=np.int64)
  else:
    starts = np.array([n], np.int64)
  pred = data.inverse_targets(
    predict_windows(make_predict_fn(model), params, data, starts, config.train.eval_batch_size)
  )
  rows = []
  step_delta = None
  if data.dates is not None and n > 1:
    step_delta = pd.Series(data.dates).diff().median()
  for w, start in enumerate(starts):
    origin = data.dates[start - 1] if data.dates is not None else int(start - 1)
    for h in range(data.horizon):
      row = {"origin": origin, "step": h + 1}
      if step_delta is not None:
        row["date"] = pd.Timestamp(origin) + (h + 1) * step_delta
      for k, name in enumerate(data.target_names):
        row[name] = float(pred[w, h, k])
        if data.has_targets and all_windows:
          row[f"{name}_actual"] = float(data.y_raw[start + h, k]) if start + h < n else float("nan")
      rows.append(row)
  text = pd.DataFrame(rows).to_csv(index=False)
  try:
    workdir_lib.write_output(out, text, overwrite=overwrite)
  except OSError as e:
    if workdir_lib.is_disk_full(e):
      raise TrainingError(f"disk full writing --out {out_path}; nothing was written") from None
    raise InputError(f"cannot write --out {out_path}: {e.strerror}") from None
  return len(starts)
