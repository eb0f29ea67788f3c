"""Host-side run outputs: config.json, metrics.jsonl, TensorBoard, JSON files, plots.

Only one process writes (the trainer passes ``enabled=jax.process_index() == 0``); every
other process gets a Reporter that does nothing, so call sites need no ``if``. Files and
folders are created on the first write, so a run that fails validation leaves no trace.
Heavy imports (tensorboardX, matplotlib) happen on first use, not at import time.

Every write happens in the calling thread and raises there: TensorBoard events go through
a synchronous writer, not tensorboardX's background thread, which on a full disk dies
with a traceback and then blocks the next log call forever.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pathlib
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
import tqdm

from flaxlstm import config as config_lib
from flaxlstm import fileio

METRICS_FILE = "metrics.jsonl"
_MAX_LINE = 2**20  # a metrics line is a few hundred bytes
log = logging.getLogger(__name__)


class Reporter:
  """Writes a run's records into ``workdir``; a no-op unless ``enabled``.

  Files:
    config.json: the config (write_config).
    metrics.jsonl: one JSON object per ``log`` call: {"step", "split", **extra, **metrics}.
    tensorboard/: scalars ``{split}/{name}`` for every logged metric.
    learning_curves.png, forecast_*.png and any ``write_json`` file.
  """

  def __init__(self, workdir: str | os.PathLike[str], *, enabled: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self._metrics: IO[str] | None = None  # Append handle, opened on the first log.
    self._tensorboard: _EventFile | None = None  # Event file, created on the first log.
    self._purge_step: int | None = None  # Set by truncate_after: TensorBoard hides >= it.

  def write_config(self, config, run_record: Mapping[str, Any] | None = None) -> None:
    """Writes ``config.json``: the config, and under ``_run`` what the run was trained on
    (see ``config.RUN_RECORD_KEY``)."""
    if self.enabled:
      self._write_text("config.json", config_lib.config_to_json(config, run_record))

  def log(self, step: int, split: str, metrics: Mapping[str, Any], **extra: Any) -> None:
    """Appends one metrics line and writes the metrics as TensorBoard scalars.

    Args:
      step: the train step the metrics belong to.
      split: "train", "val", "test", ...; prefixes the TensorBoard tags.
      metrics: name -> number (Python, NumPy or JAX scalars).
      **extra: other fields for the JSON line only (e.g. epoch, seconds).
    """
    if not self.enabled:
      return
    values = {name: float(value) for name, value in metrics.items()}
    if self._metrics is None:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._metrics = open(self.workdir / METRICS_FILE, "a")
    line = {"step": int(step), "split": split, **extra, **values}
    # Flushed per line: a crash or a reader (tail -f, a sweep) must see complete lines.
    self._metrics.write(json.dumps(line, default=_to_json) + "\n")
    self._metrics.flush()
    self._writer().scalars(split, values, int(step))

  def write_json(self, name: str, obj: Any) -> pathlib.Path | None:
    """Writes ``obj`` as ``workdir/name`` atomically (readers never see half a file)."""
    if self.enabled:
      return self._write_text(name, json.dumps(obj, indent=2, default=_to_json) + "\n")
    return None

  def truncate_after(self, step: int) -> None:
    """Drops metrics lines with a step > ``step`` (resuming from ``step``; 0 when a run
    starts from scratch, so that a killed first attempt leaves no duplicate lines).

    Lines that do not parse (half-written by a crash, invalid bytes, a step that is not
    an integer) go too, with a warning. TensorBoard events logged after ``step`` are hidden
    by a purge marker written with the next scalar.
    """
    if not self.enabled:
      return
    self._close_files()
    path = self.workdir / METRICS_FILE
    if path.exists():
      records, bad = self._read_lines()
      kept = [line for line, record in records if record["step"] <= step]
      if bad:
        log.warning(f"dropped {bad} unreadable line{'s' * (bad > 1)} from {path}")
      if len(kept) != len(records) or bad:
        self._write_text(METRICS_FILE, "".join(kept))
    self._purge_step = int(step) + 1

  def read_metrics(self) -> list[dict[str, Any]]:
    """Returns the parsed metrics.jsonl lines (empty when there are none); lines that do
    not parse are skipped."""
    if not (self.workdir / METRICS_FILE).exists():
      return []
    return [record for _, record in self._read_lines()[0]]

  def _read_lines(self) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """(text, record) of each good metrics line, and the number of bad ones."""
    good, bad = [], 0
    # A regular file only (train refuses a FIFO or a link to /dev/zero before it gets
    # here), read a bounded line at a time: a line longer than any Reporter writes is
    # skipped, not held in memory.
    with fileio.open_regular(self.workdir / METRICS_FILE) as f:
      while raw := f.readline(_MAX_LINE + 1):
        if len(raw) > _MAX_LINE:
          bad += 1
          while raw and not raw.endswith(b"\n"):  # the rest of the long line
            raw = f.readline(_MAX_LINE)
          continue
        if not raw.strip():
          continue
        try:
          text = raw.decode("utf-8")
        except UnicodeDecodeError:
          bad += 1
          continue
        record = _parse_line(text)
        if record is None:
          bad += 1
        else:
          good.append((text if text.endswith("\n") else text + "\n", record))
    return good, bad

  def plot_learning_curves(
    self, metric: str = "loss", name: str = "learning_curves.png"
  ) -> pathlib.Path | None:
    """Plots train and val ``metric`` against the step from metrics.jsonl.

    Also draws the learning rate on a second panel when train lines carry ``lr``.
    Returns the PNG path, or None when disabled or nothing was logged.
    """
    if not self.enabled:
      return None
    records = self.read_metrics()
    curves = {}
    for split in ("train", "val"):
      points = [(r["step"], r[metric]) for r in records if r.get("split") == split and metric in r]
      if points:
        curves[split] = np.array(points, dtype=float).T
    if not curves:
      return None
    lr = np.array(
      [(r["step"], r["lr"]) for r in records if r.get("split") == "train" and "lr" in r],
      dtype=float,
    ).T
    panels = 2 if lr.size else 1
    fig = figure(figsize=(9, 4 + 2 * (panels - 1)))
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False, height_ratios=[3, 1][:panels])
    ax = axes[0, 0]
    styles = {
      "train": dict(color="tab:blue", lw=1, alpha=0.8),
      "val": dict(color="tab:orange", lw=2, marker="o", ms=3),
    }
    for split, (steps, values) in curves.items():
      ax.plot(steps, values, label=f"{split} {metric}", **styles[split])
    if "val" in curves:
      steps, values = curves["val"]
      finite = np.isfinite(values)
      if finite.any():
        best = np.flatnonzero(finite)[np.argmin(values[finite])]
        ax.scatter(
          [steps[best]],
          [values[best]],
          s=80,
          facecolors="none",
          edgecolors="black",
          zorder=3,
          label=f"best val {values[best]:.4g} @ step {steps[best]:.0f}",
        )
    every = np.concatenate([values for _, values in curves.values()])
    every = every[np.isfinite(every)]
    # Losses shrink by orders of magnitude; a log axis keeps the tail readable.
    if every.size and every.min() > 0 and every.max() / every.min() > 20:
      ax.set_yscale("log")
    ax.set_ylabel(metric)
    ax.set_title("Learning curves")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if panels == 2:
      axes[1, 0].plot(lr[0], lr[1], color="tab:green")
      axes[1, 0].set_ylabel("learning rate")
      axes[1, 0].grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    return self._save_figure(fig, name)

  def plot_forecast(
    self,
    y_true: Any,
    y_pred: Any,
    *,
    name: str = "forecast_test.png",
    title: str = "Test forecast",
    baselines: Mapping[str, Any] | None = None,
    dates: Any = None,
    target_index: int = 0,
    target_name: str | None = None,
    max_windows: int = 500,
    example: int | None = None,
    bands: Mapping[str, tuple[Any, Any]] | None = None,
  ) -> pathlib.Path | None:
    """Plots forecasts against the truth over consecutive windows.

    Three panels: the one-step-ahead forecast across the first ``max_windows`` windows
    (a stretch of the series), one full-horizon example, and the MAE by lead time.

    Args:
      y_true: (windows, horizon[, targets]) actual values, best in original units.
      y_pred: model forecasts, same shape.
      name: PNG file name inside the workdir.
      title: figure title.
      baselines: name -> forecasts of the same shape (e.g. naive, seasonal naive).
      dates: optional (windows,) timestamps of each window's first forecast step.
      target_index: which target column to draw.
      target_name: its label (default "target <index>").
      max_windows: how many windows the one-step panel covers.
      example: window index of the full-horizon example (default: the stretch's middle).
      bands: label -> (lower, upper) bounds of the model's intervals, each shaped like
        `y_pred`, drawn widest first around the model's line.

    Returns:
      The PNG path, or None when disabled.
    """
    if not self.enabled or not len(y_true):
      return None
    y_true = _as_3d(y_true)[..., target_index]
    y_pred = _as_3d(y_pred)[..., target_index]
    baselines = {k: _as_3d(v)[..., target_index] for k, v in (baselines or {}).items()}
    bounds = {
      k: tuple(_as_3d(b)[..., target_index] for b in pair) for k, pair in (bands or {}).items()
    }
    shades = [0.15, 0.3]  # alpha of each band, outermost first
    label = target_name or f"target {target_index}"
    count = min(len(y_true), max_windows)
    example = count // 2 if example is None else example
    x = np.arange(count) if dates is None else np.asarray(dates)[:count]
    if dates is not None and np.asarray(dates).dtype.kind in "OU":
      x = np.asarray(x, dtype="datetime64[s]")  # Strings would make a categorical axis.
    lead = np.arange(1, y_true.shape[1] + 1)
    # Baselines are dashed and muted so the model line stays the one the eye follows.
    colors = ["tab:gray", "tab:green", "tab:purple", "tab:brown"]

    fig = figure(figsize=(11, 10))
    ax1, ax2, ax3 = fig.subplots(3, 1, height_ratios=[2, 1.4, 1.2])
    for (k, (lo, hi)), alpha in zip(bounds.items(), shades):
      ax1.fill_between(x, lo[:count, 0], hi[:count, 0], color="tab:red", alpha=alpha, lw=0, label=k)
    ax1.plot(x, y_true[:count, 0], color="black", lw=1.3, label="actual")
    ax1.plot(x, y_pred[:count, 0], color="tab:red", lw=1.1, label="model")
    for (k, v), color in zip(baselines.items(), colors):
      ax1.plot(x, v[:count, 0], color=color, lw=0.9, ls="--", alpha=0.8, label=k)
    ax1.set_title(f"One step ahead, {count} consecutive windows")
    ax1.set_xlabel("forecast date" if dates is not None else "window")
    ax1.set_ylabel(label)

    when = f" starting {_timestamp(x[example])}" if dates is not None else ""
    for (k, (lo, hi)), alpha in zip(bounds.items(), shades):
      ax2.fill_between(lead, lo[example], hi[example], color="tab:red", alpha=alpha, lw=0, label=k)
    ax2.plot(lead, y_true[example], color="black", lw=1.5, marker="o", ms=3, label="actual")
    ax2.plot(lead, y_pred[example], color="tab:red", lw=1.3, marker="o", ms=3, label="model")
    for (k, v), color in zip(baselines.items(), colors):
      ax2.plot(lead, v[example], color=color, lw=1, ls="--", label=k)
    ax2.set_title(f"Full horizon, window {example}{when}")
    ax2.set_xlabel("lead time (steps)")
    ax2.set_ylabel(label)

    ax3.plot(
      lead,
      np.nanmean(np.abs(y_pred - y_true), axis=0),
      color="tab:red",
      marker="o",
      ms=3,
      label="model",
    )
    for (k, v), color in zip(baselines.items(), colors):
      ax3.plot(
        lead,
        np.nanmean(np.abs(v - y_true), axis=0),
        color=color,
        ls="--",
        marker="o",
        ms=3,
        label=k,
      )
    ax3.set_title(f"MAE by lead time, all {len(y_true)} windows")
    ax3.set_xlabel("lead time (steps)")
    ax3.set_ylabel("MAE")

    for ax in (ax1, ax2, ax3):
      ax.grid(True, alpha=0.3)
      ax.legend(loc="best", fontsize="small")
    fig.suptitle(title)
    return self._save_figure(fig, name)

  def close(self) -> None:
    """Flushes and closes the files; a later log reopens them."""
    self._close_files()

  def __enter__(self) -> Reporter:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def _writer(self) -> _EventFile:
    if self._tensorboard is None:
      self._tensorboard = _EventFile(self.workdir / "tensorboard", self._purge_step)
      self._purge_step = None
    return self._tensorboard

  def _close_files(self) -> None:
    """Closes the open files; a failing flush (full disk) is still raised, but only after
    both files are closed."""
    metrics, tensorboard = self._metrics, self._tensorboard
    self._metrics = self._tensorboard = None
    try:
      if metrics is not None:
        metrics.close()
    finally:
      if tensorboard is not None:
        tensorboard.close()

  def _write_text(self, name: str, text: str) -> pathlib.Path:
    """Writes via a temporary file and os.replace, so the file is whole or absent."""
    path = self.workdir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_atomic(path, text)
    return path

  def _save_figure(self, fig, name: str) -> pathlib.Path:
    # Rendered in memory, then written like the JSON files: whole or not at all. One
    # render at a time: matplotlib's text layout shares caches (mathtext's pyparsing
    # parser) that are not thread-safe, and a sweep's populations finish in threads
    # (seen: a log axis's tick label failed to parse mid-sweep).
    buffer = io.BytesIO()
    with _RENDER_LOCK:
      fig.tight_layout()
      fig.savefig(buffer, dpi=110, format="png")
    return self._write_bytes(name, buffer.getvalue())

  def _write_bytes(self, name: str, data: bytes) -> pathlib.Path:
    path = self.workdir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_atomic(path, data)
    return path


_TENSORBOARDX_LOCK = threading.Lock()


def _tensorboardx() -> tuple[Any, Any, Any]:
  """tensorboardX's `EventsWriter`, `event_pb2` and `scalar`, imported without torch.

  tensorboardX's package import tries `import torch`, only so that its own SummaryWriter
  accepts torch tensors; where torch is installed, that import is a large share of a short
  run's start-up (`flaxlstm train`, each sweep or tune worker). The event writer used here
  needs none of it, so torch is hidden while the package loads (tensorboardX treats it as
  absent), unless it is already loaded. Under a lock: a sweep's populations open their
  event files in threads, and none may see the package half-imported or torch hidden.
  Nothing in flaxlstm imports torch.
  """
  with _TENSORBOARDX_LOCK:
    hide = "tensorboardX" not in sys.modules and "torch" not in sys.modules
    if hide:
      sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    try:
      from tensorboardX.event_file_writer import EventsWriter
      from tensorboardX.proto import event_pb2
      from tensorboardX.summary import scalar
    finally:
      if hide:
        del sys.modules["torch"]
  return EventsWriter, event_pb2, scalar


class _EventFile:
  """TensorBoard scalars written synchronously (see the module docstring).

  ``purge_step`` (a run resumed from step N - 1 passes N) writes TensorBoard's marker that
  hides the events a crashed attempt logged at steps >= N.
  """

  def __init__(self, logdir: pathlib.Path, purge_step: int | None):
    EventsWriter, event_pb2, scalar = _tensorboardx()

    logdir.mkdir(parents=True, exist_ok=True)
    self._event, self._scalar = event_pb2.Event, scalar
    # The pid in the name: a resumed run that starts within the same second as the
    # attempt before it would otherwise reopen (and truncate) that attempt's file.
    self._file = EventsWriter(str(logdir / "events"), filename_suffix=f".{os.getpid()}")
    if purge_step is not None:
      self._file.write_event(
        event_pb2.Event(
          step=purge_step, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        )
      )

  def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
    now = time.time()
    for name, value in values.items():
      self._file.write_event(
        self._event(summary=self._scalar(f"{prefix}/{name}", value), step=step, wall_time=now)
      )
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class Progress:
  """A tqdm bar with ETA and live postfix values (e.g. loss); silent off a terminal.

  It shows only when ``enabled`` (host 0 and not quiet) and stderr is a TTY, so logs of
  batch jobs stay free of carriage-return noise. Usable as a context manager.

  ``up_to``: ``total`` is only a bound (early stopping may end the run at any evaluation),
  so the bar says "N of up to TOTAL steps" with the elapsed time and rate, and neither a
  percentage nor an ETA, which would count to the bound: the default experiment stops
  after 8 to 13 of its 30 epochs, so such an ETA was 2-4x too long.
  """

  def __init__(
    self, total: int | None, *, enabled: bool = True, desc: str = "", up_to: bool = False
  ):
    self._bar = None
    if enabled and sys.stderr.isatty():
      bar_format = (
        "{desc}: {n_fmt} of up to {total_fmt} steps [{elapsed}, {rate_fmt}{postfix}]"
        if up_to
        else None
      )
      self._bar = tqdm.tqdm(
        total=total,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        leave=False,
        bar_format=bar_format,
      )

  def update(self, n: int = 1, **postfix: Any) -> None:
    """Advances by ``n`` steps and shows ``postfix`` (numbers formatted to 4 digits)."""
    if self._bar is None:
      return
    if postfix:
      self._bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=False)
    self._bar.update(n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()


_RENDER_LOCK = threading.Lock()


def figure(**kwargs: Any):
  """A matplotlib Figure that renders with Agg, bypassing pyplot.

  pyplot's global backend and figure registry would need a display or a `use("Agg")`
  that clobbers a notebook's backend; a bare Figure needs neither and is freed like any
  object.
  """
  from matplotlib.figure import Figure  # matplotlib loads on the first plot

  return Figure(**kwargs)


def _timestamp(value: Any) -> str:
  """A date as people write it ("2017-11-03 10:00"), not numpy's nanosecond ISO form."""
  if isinstance(value, np.datetime64):
    return np.datetime_as_string(value, unit="m").replace("T", " ")
  return str(value)


def _as_3d(values: Any) -> np.ndarray:
  """(windows,) | (windows, horizon) | (windows, horizon, targets) -> 3-D float array."""
  values = np.asarray(values, dtype=float)
  while values.ndim < 3:
    values = values[..., None]
  return values


def _parse_line(line: str) -> dict[str, Any] | None:
  """A metrics line as a dict, or None when it is blank or half-written."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError:
    return None
  if not isinstance(record, dict):
    return None
  step = record.get("step")
  return record if isinstance(step, int) and not isinstance(step, bool) else None


def _to_json(value: Any) -> Any:
  """json.dumps fallback for NumPy/JAX scalars and arrays and paths."""
  if hasattr(value, "tolist"):
    return value.tolist()
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _short(value: Any) -> Any:
  try:
    number = float(value)
  except (TypeError, ValueError):
    return value
  return f"{number:.4g}" if math.isfinite(number) else str(number)
