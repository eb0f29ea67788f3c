"""The score tables `flaxlstm train` and `evaluate` print (flaxlstm/cli.py): val and test
MSE/MAE per model and baseline, and a distribution head's CRPS and interval coverage."""

from __future__ import annotations


def summary(metrics: dict) -> str:
  """A run's `metrics.json` as `flaxlstm train` and `evaluate` print it: the point scores of
  the model and its baselines, then a distribution head's (`distributions`)."""
  # The model's row is named by its encoder (metrics.json of older runs has none), seasonal
  # naive's by its season too.
  season = metrics.get("seasonal_period")
  rows = [(metrics.get("encoder", "model"), metrics)] + [
    (f"{name} ({season})" if name == "seasonal_naive" and season else name, m)
    for name, m in metrics.get("baselines", {}).items()
  ]
  return scores(rows) + distributions(metrics)


def distributions(metrics: dict) -> str:
  """A distribution head's CRPS and 80%/95% interval coverage per split, as forecast and,
  when recalibrated, the head's own; empty for a point model."""
  kinds = [
    (k, name)
    for k, name in (("distribution", "as forecast"), ("distribution_uncalibrated", "head alone"))
    if k in metrics.get("val", {})
  ]
  if not kinds:
    return ""
  head = "".join(f"{f'{s} {c}':>11}" for s in ("val", "test") for c in ("crps", "80%", "95%"))
  lines = ["", f"{'':<16}{head}"]  # "": the line break after the point scores
  for key, name in kinds:
    cells = []
    for s in ("val", "test"):
      d = metrics.get(s, {}).get(key)
      if d is None:  # a production fit: no test split
        cells += [f"{'-':>11}"] * 3
        continue
      cells += [f"{d['crps']:>11.4f}"]
      cells += [f"{100 * d[f'coverage_{c}']:>10.1f}%" for c in (80, 95)]
    lines.append(f"{name:<16}" + "".join(cells))
  return "\n".join(lines)


def scores(rows: list[tuple[str, dict]]) -> str:
  """Val and test MSE/MAE, one row per (name, metrics)."""
  keys = ("mse", "mae")
  w = max([16] + [len(name) + 1 for name, _ in rows])
  lines = [f"{'':<{w}}{'val mse':>10}{'val mae':>10}{'test mse':>10}{'test mae':>10}"]
  for name, m in rows:
    # A production fit (data.test_size=0) has no test split: its columns show "-".
    cells = [f"{m[s][k]:>10.4f}" if s in m else f"{'-':>10}" for s in ("val", "test") for k in keys]
    lines.append(f"{name:<{w}}" + "".join(cells))
  return "\n".join(lines)
