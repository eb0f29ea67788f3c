"""The packaged panel recipe (`--config panel:H[,S]`, flaxlstm/recipes/panel.py): its
arguments, and a production fit on a tiny generated panel through the CLI, then one
forecast per series."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from flaxlstm import cli
from flaxlstm import config as config_lib
from flaxlstm.errors import InputError
from flaxlstm.train import assembly


def test_panel_recipe_takes_the_horizon_and_a_season():
  config = config_lib.load_config("panel:48")
  # Without a season, the one of the data's frequency (train/assembly.py: fit_season).
  assert (config.data.horizon, config.data.seasonal_period) == (48, 0)
  assert config.data.id_column == "unique_id" and config.data.target == ("y",)
  assert config.data.split == "holdout"
  config = config_lib.load_config("panel:13,52")
  assert (config.data.horizon, config.data.seasonal_period) == (13, 52)
  # The season fits in the window, so the seasonal-naive baseline reads only the window.
  assert config.data.lookback >= 52
  # Series too short for a window train and are forecast (their first rows repeated).
  assert config.data.pad_short and not config.data.start_padding
  assert config.model.head == "quantile"


@pytest.mark.parametrize("arg", ["x", "0", "13,", "13,0", "1,2,3", "-4", "13;52"])
def test_panel_recipe_refuses_a_bad_argument_on_one_line(arg):
  with pytest.raises(InputError) as caught:
    config_lib.load_config(f"panel:{arg}")
  message = str(caught.value)
  assert "panel takes" in message and "\n" not in message


def test_the_cli_prints_a_bad_panel_argument_as_one_error_line(tmp_path, capsys):
  assert cli.main(["train", "--config", "panel:abc", "--workdir", str(tmp_path / "r")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "panel takes" in err and err.count("\n") == 1


def _panel(path):
  """Four weekly series of their own lengths, levels and trends, rows shuffled; the first is
  shorter than `panel:6`'s lookback of 24."""
  rng = np.random.default_rng(0)
  parts = []
  for k, n in enumerate((20, 75, 90, 120)):
    t = np.arange(n)
    y = 100.0 * (k + 1) + 0.5 * k * t + np.sin(2 * np.pi * t / 8) + rng.normal(size=n)
    ds = pd.date_range("2020-01-06", periods=n, freq="7D")
    parts.append(pd.DataFrame({"unique_id": f"s{k}", "ds": ds, "y": y}))
  frame = pd.concat(parts, ignore_index=True)
  frame.iloc[rng.permutation(len(frame))].to_csv(path, index=False)


@pytest.mark.slow  # trains to completion
def test_panel_recipe_fits_every_row_and_forecasts_each_series(tmp_path):
  data, run, out = tmp_path / "panel.csv", tmp_path / "run", tmp_path / "forecast.csv"
  _panel(data)
  # The recipe's batch of 256 is more than this panel's training windows: it trains on
  # all of them at once, as it would on any small panel, rather than stop.
  tiny = ["--config.model.hidden_sizes=4", "--config.train.max_steps=3", "--quiet"]
  args = ["train", "--config", "panel:6", f"--config.data.path={data}", "--workdir", str(run)]
  assert cli.main([*args, "--config.data.test_size=0", *tiny]) == 0
  saved = config_lib.config_from_json((run / "config.json").read_text())
  assert 0 < saved.train.batch_size < 256
  assert cli.main(["predict", "--workdir", str(run), "--data", str(data), "--out", str(out)]) == 0
  table = pd.read_csv(out, parse_dates=["origin", "date"])
  # The median, and the quantiles around it (the recipe's quantile head), in order.
  levels = ["0.025", "0.1", "0.25", "0.5", "0.75", "0.9", "0.975"]
  quantiles = [f"y_q{q}" for q in levels]
  assert list(table.columns) == ["unique_id", "origin", "step", "date", "y", *quantiles]
  assert sorted(table.unique_id.unique()) == ["s0", "s1", "s2", "s3"]
  assert len(table) == 4 * 6 and np.isfinite(table.y).all()
  assert (np.diff(table[quantiles].to_numpy(), axis=1) >= 0).all()
  np.testing.assert_allclose(table.y, table["y_q0.5"], rtol=1e-6)
  panel = pd.read_csv(data, parse_dates=["ds"])
  for name, rows in table.groupby("unique_id"):
    assert (rows.origin == panel[panel.unique_id == name].ds.max()).all()


def test_a_batch_larger_than_the_training_set_becomes_the_most_that_fit(caplog):
  spec = config_lib.to_spec(config_lib.load_config("panel:6"))
  assert assembly.fit_batch(spec, 1000, 1) is spec  # it fits: unchanged
  with caplog.at_level("WARNING"):
    assert assembly.fit_batch(spec, 222, 1).train.batch_size == 222
  assert "train.batch_size=256 is larger than the 222 training windows" in caplog.text
  # A multiple of the devices and of the micro-batches, so that every step splits evenly.
  spec4 = dataclasses.replace(spec, train=dataclasses.replace(spec.train, grad_accum_steps=4))
  assert assembly.fit_batch(spec4, 222, 2).train.batch_size == 216
  with pytest.raises(InputError, match="fewer than one row per device and micro-batch"):
    assembly.fit_batch(spec4, 7, 2)
