"""`model.linear_skip_init='ridge'` and `train.eval_at_start`: the linear highway starts at
the ridge fit of the training windows, and early stopping keeps that start unless training
beats it on validation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from flaxlstm import config as config_lib
from flaxlstm import train as train_lib
from flaxlstm.data import augment, windows
from flaxlstm.train.assembly import SKIP_ALPHA, assemble
from flaxlstm.train.step import make_predict_fn, predict_windows

RIDGE = ("model.linear_skip=True", "model.linear_skip_init=ridge", "model.predict_delta=True")


def _spec(tiny, *overrides):
  return config_lib.to_spec(config_lib.load_config(tiny["exp"], [*RIDGE, *overrides]))


@pytest.mark.parametrize(
  "overrides",
  [
    ("data.features=x,y",),  # mixed: one map from both columns' windows to y's future
    (  # independent: one map from each column's window to its own future, in volatilities
      "data.features=x,y",
      "data.target=x,y",
      "model.channels=independent",
      "model.volatility_scaling=True",
    ),
  ],
  ids=["mixed", "independent_volatility"],
)
def test_the_untrained_model_is_the_ridge_forecast_of_the_level_free_window(tiny, overrides):
  setup = assemble(_spec(tiny, *overrides))
  data, independent = setup.data, "model.channels=independent" in overrides
  params = setup.init_state().params

  def problem(starts):
    """The ridge problem written out here: level-free windows -> changes from the last
    target, each in its window's volatility with volatility scaling."""
    x = windows.gather_inputs(data, starts).astype(np.float64)
    y = windows.gather_targets(data, starts).astype(np.float64)
    x = x - x[:, -1:]
    y = y - data.y[starts - 1][:, None].astype(np.float64)
    if independent:
      vol = np.maximum(np.abs(np.diff(x, axis=1)).mean(axis=1, keepdims=True), 1e-3)
      x, y = x / vol, y / vol
      return (
        np.swapaxes(x, 1, 2).reshape(-1, x.shape[1]),
        np.swapaxes(y, 1, 2).reshape(-1, y.shape[1]),
        vol,
      )
    return x.reshape(len(x), -1), y.reshape(len(y), -1), None

  x, y, _ = problem(data.window_starts("train"))
  ridge = Ridge(alpha=SKIP_ALPHA).fit(x, y)
  np.testing.assert_allclose(params["linear_skip"]["kernel"], ridge.coef_.T, atol=2e-5)
  np.testing.assert_allclose(params["linear_skip"]["bias"], ridge.intercept_, atol=2e-5)

  # The whole model's forecast is that ridge's, put back on the window's level.
  starts = data.window_starts("val")
  got = predict_windows(make_predict_fn(setup.model), params, data, starts, 64)
  xv, _, vol = problem(starts)
  change = ridge.predict(xv)
  if independent:  # rows are (window, column): back to (window, step, column)
    change = np.swapaxes(change.reshape(len(starts), -1, data.horizon), 1, 2) * vol
  want = change.reshape(got.shape) + data.y[starts - 1][:, None]
  np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.slow  # trains
def test_eval_at_start_keeps_the_ridge_start_when_training_only_makes_it_worse(tiny, tmp_path):
  # A learning rate this large without clipping makes validation worse at once (as in
  # test_train's early-stopping test): the starting model must come back as the best.
  wd = str(tmp_path / "run")
  m = train_lib.train_and_evaluate(
    config_lib.load_config(
      tiny["exp"],
      [
        *RIDGE,
        "train.eval_at_start=True",
        "train.learning_rate=0.5",
        "train.clip_norm=0",
        "train.patience=2",
      ],
    ),
    wd,
  )
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    val = {r["step"]: r["mse"] for r in map(json.loads, f) if r["split"] == "val"}
  assert min(val) == 0 and m["best_step"] == 0 == min(val, key=val.get), val
  assert m["stopped_early"] and m["steps"] == 2 * 10
  np.testing.assert_allclose(m["val"]["mse"], val[0], rtol=1e-6)
  # The start is a forecaster of its own: on this seasonal series it beats the naive one.
  assert val[0] < m["baselines"]["naive"]["val"]["mse"]


class _Interrupt(Exception):
  pass


@pytest.mark.slow  # trains
def test_a_run_killed_after_its_start_was_scored_resumes_bit_identical(tiny, tmp_path, monkeypatch):
  # The start's evaluation saves a checkpoint at step 0; a run killed at step 4 resumes from
  # it without scoring its start again (which would count as an evaluation without progress).
  overrides = [*RIDGE, "train.eval_at_start=True", "data.augment.jitter=0.05", "train.max_steps=20"]
  ref = train_lib.train_and_evaluate(
    config_lib.load_config(tiny["exp"], overrides), str(tmp_path / "r")
  )
  real, calls = augment.augment, []

  def dying(*args):
    calls.append(1)
    if len(calls) == 4:
      raise _Interrupt()
    return real(*args)

  wd = str(tmp_path / "killed")
  monkeypatch.setattr(augment, "augment", dying)
  with pytest.raises(_Interrupt):
    train_lib.train_and_evaluate(config_lib.load_config(tiny["exp"], overrides), wd)
  monkeypatch.setattr(augment, "augment", real)
  got = train_lib.train_and_evaluate(config_lib.load_config(tiny["exp"], overrides), wd)
  for key in ("val", "test", "steps", "best_step"):
    assert got[key] == ref[key], key

  def lines(d):
    with open(os.path.join(d, "metrics.jsonl")) as f:
      return [(r["step"], r["split"]) for r in map(json.loads, f)]

  assert lines(wd) == lines(str(tmp_path / "r")) and lines(wd)[0] == (0, "val")
