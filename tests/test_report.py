"""Tests for flaxlstm.report: metrics files, TensorBoard, atomic JSON, plots, Progress."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from flaxlstm import config as config_lib
from flaxlstm import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lines(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_png(path):
  data = path.read_bytes()
  assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_import_is_light():
  # The trainer imports report on every host; plotting and TensorBoard load on first use.
  code = (
    "import json, sys, flaxlstm; before = set(sys.modules); import flaxlstm.report; "
    "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert not {"jax", "matplotlib", "tensorboardX"} & set(json.loads(out.stdout))


def test_log_writes_jsonl_and_tensorboard(tmp_path):
  with report.Reporter(tmp_path / "run") as reporter:
    reporter.log(0, "train", {"loss": np.float32(1.5)}, epoch=0)
    reporter.log(10, "val", {"loss": 1.25, "mae": 0.5})
    # Each line is on disk as soon as it is logged (a sweep may be reading it).
    assert len(_lines(tmp_path / "run")) == 2
  assert _lines(tmp_path / "run") == [
    {"step": 0, "split": "train", "epoch": 0, "loss": 1.5},
    {"step": 10, "split": "val", "loss": 1.25, "mae": 0.5},
  ]
  events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 0


def test_resume_appends(tmp_path):
  with report.Reporter(tmp_path) as reporter:
    reporter.log(1, "train", {"loss": 1.0})
  with report.Reporter(tmp_path) as reporter:
    reporter.log(2, "train", {"loss": 0.5})
  assert [r["step"] for r in _lines(tmp_path)] == [1, 2]


def test_truncate_after(tmp_path):
  reporter = report.Reporter(tmp_path)
  for step in range(0, 50, 10):
    reporter.log(step, "train", {"loss": 1.0 / (step + 1)})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 60, "spl')  # Half a line, as a crash would leave it.
  reporter.truncate_after(20)
  assert [r["step"] for r in _lines(tmp_path)] == [0, 10, 20]
  reporter.log(30, "train", {"loss": 0.1})  # Logging goes on after the rewrite.
  reporter.close()
  assert [r["step"] for r in _lines(tmp_path)] == [0, 10, 20, 30]
  assert not list(tmp_path.glob(".*tmp*"))


def test_truncate_after_skips_an_endless_line_without_holding_it(tmp_path):
  # A line longer than any Reporter writes (here 3 MiB of zeros, no newline until its end)
  # is read a bounded piece at a time and dropped; the lines after it are kept.
  reporter = report.Reporter(tmp_path)
  reporter.log(10, "train", {"loss": 1.0})
  with open(tmp_path / "metrics.jsonl", "ab") as f:
    f.write(b"\0" * (3 * 2**20) + b"\n")
  reporter.log(20, "train", {"loss": 0.5})
  reporter.truncate_after(20)
  assert [r["step"] for r in _lines(tmp_path)] == [10, 20]
  reporter.close()


def test_write_json_and_config(tmp_path):
  reporter = report.Reporter(tmp_path)
  reporter.write_json("metrics.json", {"test": {"mse": np.float32(0.25)}})
  reporter.write_json("metrics.json", {"test": {"mse": 0.5}})  # Replaces the old one.
  assert json.loads((tmp_path / "metrics.json").read_text()) == {"test": {"mse": 0.5}}
  config = config_lib.default_config()
  reporter.write_config(config)
  back = config_lib.config_from_json((tmp_path / "config.json").read_text())
  assert back.to_dict() == config.to_dict()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.json"]


def test_plots(tmp_path):
  reporter = report.Reporter(tmp_path)
  assert reporter.plot_learning_curves() is None  # Nothing logged yet.
  for step in range(0, 200, 20):
    reporter.log(step, "train", {"loss": 2.0 / (step + 1)}, lr=1e-3)
    reporter.log(step, "val", {"loss": 2.5 / (step + 1)})
  _assert_png(reporter.plot_learning_curves())

  rng = np.random.default_rng(0)
  y_true = rng.normal(size=(300, 24, 1))
  y_pred = y_true + 0.1 * rng.normal(size=y_true.shape)
  dates = np.datetime64("2018-01-01T00") + np.arange(300).astype("timedelta64[h]")
  path = reporter.plot_forecast(
    y_true,
    y_pred,
    baselines={"naive": np.zeros_like(y_true)},
    dates=dates,
    target_name="OT",
    title="ETTh1 test",
  )
  assert path.name == "forecast_test.png"
  _assert_png(path)
  # 2-D inputs (one target) and no dates work too.
  _assert_png(reporter.plot_forecast(y_true[..., 0], y_pred[..., 0], name="f2.png"))
  reporter.close()


def test_disabled_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  reporter = report.Reporter(workdir, enabled=False)
  reporter.write_config(config_lib.default_config())
  reporter.log(0, "train", {"loss": 1.0})
  reporter.write_json("metrics.json", {})
  reporter.truncate_after(0)
  assert reporter.plot_learning_curves() is None
  assert reporter.plot_forecast(np.zeros((5, 3)), np.zeros((5, 3))) is None
  reporter.close()
  assert not workdir.exists()


@pytest.mark.parametrize("enabled", [True, False])
def test_progress_off_a_terminal_is_silent(capsys, enabled):
  # Under pytest stderr is not a TTY, so the bar stays off either way.
  with report.Progress(10, enabled=enabled, desc="train") as progress:
    for _ in range(10):
      progress.update(loss=0.5)
  assert capsys.readouterr().err == ""


class _Terminal(io.StringIO):
  def isatty(self) -> bool:
    return True


@pytest.mark.parametrize("up_to", [False, True])
def test_progress_under_early_stopping_counts_to_a_bound_without_an_eta(monkeypatch, up_to):
  # Early stopping may end a run at any evaluation: its bar says "up to" and shows no ETA
  # (which, counted to max steps, was 2-4x too long on the default experiment).
  terminal = _Terminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  with report.Progress(2000, desc="train", up_to=up_to) as progress:
    progress.update(120, loss=0.25)
    progress._bar.refresh()
    shown = terminal.getvalue().split("\r")[-1]
  if up_to:
    assert "train: 120 of up to 2000 steps [" in shown and "loss=0.25" in shown
    assert "%" not in shown and "<" not in shown  # neither a fraction nor an ETA
  else:
    assert "120/2000" in shown and "<" in shown  # a fixed budget keeps its ETA


def test_forecast_title_shows_a_readable_date(tmp_path, monkeypatch):
  titles = []
  real = report.Reporter._save_figure

  def keep_titles(self, fig, name):
    titles.extend(ax.get_title() for ax in fig.axes)
    return real(self, fig, name)

  monkeypatch.setattr(report.Reporter, "_save_figure", keep_titles)
  y = np.zeros((10, 4, 1))
  dates = np.datetime64("2017-11-03T10:00:00.000000000") + np.arange(10).astype("timedelta64[h]")
  report.Reporter(tmp_path).plot_forecast(y, y, dates=dates, example=0)
  assert "Full horizon, window 0 starting 2017-11-03 10:00" in titles
  assert not any("T10:00:00" in t for t in titles)


def test_figures_render_from_several_threads(tmp_path):
  """A sweep's populations finish in threads and each writes its plots; matplotlib's text
  layout is not thread-safe (log-axis tick labels failed to parse), so renders take turns."""
  import threading

  failures = []

  def plots(k):
    rng = np.random.default_rng(k)
    with report.Reporter(tmp_path / f"run{k}") as reporter:
      for i in range(5):
        fig = report.figure()
        ax = fig.add_subplot()
        ax.set_yscale("log")  # tick labels as mathtext, 4x10^-1 ...
        ax.plot(rng.uniform(0.05, 5, 20))
        try:
          reporter._save_figure(fig, f"p{i}.png")
        except Exception as e:  # any failure is the test's
          failures.append(repr(e))

  threads = [threading.Thread(target=plots, args=(k,)) for k in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert failures == []
  assert len(list(tmp_path.glob("run*/p*.png"))) == 20
