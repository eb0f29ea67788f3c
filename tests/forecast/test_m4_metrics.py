"""M4's sMAPE, MASE and OWA (flaxlstm/forecast/metrics.py) on values computed by hand, and
the M4 Weekly script's baselines (experiments/m4/weekly.py)."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pandas as pd
import pytest

from flaxlstm.forecast import metrics


def test_smape_by_hand():
  # 200 * |100 - 110| / 210 = 9.5238..., 200 * |50 - 40| / 90 = 22.222..., 0 for an exact hit.
  y = [[100.0, 50.0], [10.0, 10.0]]
  f = [[110.0, 40.0], [10.0, 10.0]]
  expected = (200 * 10 / 210 + 200 * 10 / 90 + 0 + 0) / 4
  assert metrics.smape(y, f) == pytest.approx(expected)
  assert metrics.smape(y, y) == 0.0


def test_smape_is_symmetric_and_bounded():
  assert metrics.smape([1.0], [3.0]) == metrics.smape([3.0], [1.0]) == pytest.approx(100.0)
  assert metrics.smape([1.0], [-1.0]) == pytest.approx(200.0)


def test_mase_scale_is_the_mean_absolute_step_change():
  # Changes 2, -1, 3: mean absolute 2; seasonal (2 steps back) changes 1, 2: mean 1.5.
  assert metrics.mase_scale([1.0, 3.0, 2.0, 5.0]) == pytest.approx(2.0)
  assert metrics.mase_scale([1.0, 3.0, 2.0, 5.0], season=2) == pytest.approx(1.5)
  with pytest.raises(ValueError):
    metrics.mase_scale([1.0])


def test_msis_by_hand():
  # Series 0 (scale 2): widths 2 and 2; the second value 1 above its upper bound costs
  # 2 / 0.05 * 1 = 40: (2 + 42) / 2 / 2 = 11. Series 1 (scale 1): inside, width 4: 4.
  y = [[5.0, 8.0], [0.0, 0.0]]
  lo, up = [[4.0, 5.0], [-2.0, -2.0]], [[6.0, 7.0], [2.0, 2.0]]
  assert metrics.msis(y, lo, up, [2.0, 1.0]) == pytest.approx((11.0 + 4.0) / 2)
  assert metrics.msis(y, lo, up, [2.0, 1.0], alpha=0.2) == pytest.approx(((2 + 2 + 10) / 4 + 4) / 2)
  with pytest.raises(ValueError):
    metrics.msis(y, lo, up, [1.0])


def test_mase_averages_each_series_over_its_own_scale():
  y = np.array([[10.0, 12.0], [100.0, 100.0]])
  f = np.array([[11.0, 14.0], [90.0, 100.0]])
  # Series 1: MAE 1.5 over scale 0.5 = 3; series 2: MAE 5 over scale 10 = 0.5.
  assert metrics.mase(y, f, [0.5, 10.0]) == pytest.approx((3.0 + 0.5) / 2)
  with pytest.raises(ValueError):
    metrics.mase(y, f, [1.0])


def test_owa_is_one_for_naive2_itself_and_halves_with_both_errors():
  assert metrics.owa(9.161, 2.777, 9.161, 2.777) == pytest.approx(1.0)
  assert metrics.owa(9.161 / 2, 2.777 / 2, 9.161, 2.777) == pytest.approx(0.5)
  # ES-RNN's published Weekly row: OWA 0.851 from sMAPE 7.817 and MASE 2.356.
  assert metrics.owa(7.817, 2.356, 9.161, 2.777) == pytest.approx(0.851, abs=5e-4)


M4 = pathlib.Path("/work/shared/datasets/m4")
SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "m4" / "weekly.py"


def _weekly_script():
  spec = importlib.util.spec_from_file_location("m4_weekly", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_m4_script_naive_and_seasonal_naive_by_hand():
  weekly = _weekly_script()
  y = np.arange(60.0)
  history = pd.DataFrame({"unique_id": ["a"] * 60 + ["b"] * 5, "y": [*y, 1, 2, 3, 4, 5]})
  out = weekly.baselines(history, ["a", "b"])
  np.testing.assert_array_equal(out["naive"], [[59.0] * 13, [5.0] * 13])
  # A year back: rows 8..20 of a; b is shorter than a year, so naive.
  np.testing.assert_array_equal(out["seasonal_naive"], [y[8:21], [5.0] * 13])


def test_m4_script_intervals_naive_bounds_and_coverage():
  weekly = _weekly_script()
  # Series a steps by +1, +3, +1, +3, ...: changes of deviation 1.0328 (ddof 1).
  y = np.cumsum([0.0] + [1.0, 3.0] * 10)
  history = pd.DataFrame({"unique_id": "a", "y": y})
  bounds = weekly.naive_bounds(history, ["a"])
  sigma = np.std(np.diff(y), ddof=1)
  h = np.arange(1, 14)
  np.testing.assert_allclose(bounds["95"][1][0], y[-1] + 1.959964 * sigma * np.sqrt(h))
  np.testing.assert_allclose(bounds["80"][0][0], y[-1] - 1.2815516 * sigma * np.sqrt(h))
  # A forecast's quantile columns are its bounds; coverage counts the values inside.
  table = pd.DataFrame({"unique_id": "a", "y": 0.0, "step": h})
  for q, v in ((0.025, -2.0), (0.1, -1.0), (0.9, 1.0), (0.975, 2.0)):
    table[f"y_q{q:g}"] = v
  got = weekly.forecast_bounds(table, ["a"])
  actual = np.where(h <= 6, 0.5, 1.5)[None]  # 6 values inside the 80% interval, all in 95%
  scores = weekly.score(actual, np.zeros((1, 13)), np.array([1.0]), got)
  assert scores["cov80"] == pytest.approx(100 * 6 / 13) and scores["cov95"] == 100.0
  assert scores["msis"] == pytest.approx(4.0)
  assert weekly.forecast_bounds(table.drop(columns="y_q0.9"), ["a"]) is None


def test_m4_script_origins_hold_out_13_weeks_each_further_back(tmp_path):
  weekly = _weekly_script()
  rows = [("a", k) for k in range(50)] + [("b", k) for k in range(40)]
  frame = pd.DataFrame(rows, columns=["unique_id", "y"])
  frame["ds"] = pd.Timestamp("2000-01-03") + pd.to_timedelta(7 * frame.y, unit="D")
  # Rows shuffled: the script orders each series by date itself.
  frame.sample(frac=1, random_state=0).to_csv(tmp_path / "weekly_train.csv", index=False)
  for origin in (1, 2, 3):
    history, future = weekly.load(tmp_path, origin)
    for name, n in (("a", 50), ("b", 40)):
      kept = n - 13 * origin
      np.testing.assert_array_equal(history[history.unique_id == name].y, np.arange(kept))
      # The 13 weeks right after the history; the rows after them are not read.
      np.testing.assert_array_equal(future[future.unique_id == name].y, np.arange(kept, kept + 13))


@pytest.mark.skipif(not (M4 / "weekly_test.csv").exists(), reason="M4 Weekly not present")
def test_the_naive_forecast_reproduces_m4s_published_naive2_on_weekly():
  weekly = _weekly_script()
  history, future = weekly.load(M4, 0)
  ids = sorted(history.unique_id.unique())
  scales = [metrics.mase_scale(history.loc[history.unique_id == i, "y"].to_numpy()) for i in ids]
  result = weekly.score(weekly.matrix(future, ids), weekly.baselines(history, ids)["naive"], scales)
  assert result["smape"] == pytest.approx(9.161, abs=5e-4)
  assert result["mase"] == pytest.approx(2.777, abs=5e-4)
  # The validation cut holds out each series' last 13 training rows, never the test file.
  held, cut = weekly.load(M4, 1)
  assert (cut.groupby("unique_id").size() == 13).all()
  assert len(held) + len(cut) == len(history)
