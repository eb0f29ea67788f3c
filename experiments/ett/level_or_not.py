"""Does the univariate recipe lose to the ridge on ETTh1's later period because it ignores
the level? The linear part of each, alone, on both periods.

  python experiments/ett/level_or_not.py        # seconds; writes nothing

The univariate recipe (`ett_univariate:H`) forecasts changes from the window's last value,
and early stopping often keeps its start, a ridge on the level-free window. The `linear`
baseline is a ridge on the raw window with an intercept, so its forecast leans toward the
training mean. This fits both on the training windows (the same penalty, 1.0, on
standardized values) and scores them, and blends of the two (a level-free weight of 1/2 and
3/4), on the validation and test windows of ETTh1 and of its later period
(`experiments/ett/later_period.py`'s file, written here if missing).
"""

import argparse
import os
import sys

import numpy as np

from flaxlstm import config as config_lib
from flaxlstm.data import series, windows
from flaxlstm.recipes import ett_univariate

sys.path.insert(0, os.path.dirname(__file__))
from later_period import write_later_file  # noqa: E402  (this folder's)

ALPHA = 1.0  # the linear baseline's and the highway start's penalty
BLENDS = (1.0, 0.0, 0.5, 0.75)  # weight of the level-free ridge


def _ridge(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Ridge with an unpenalized intercept: `(F + 1, H)` weights."""
  x1 = np.hstack([x, np.ones((len(x), 1))])
  gram = x1.T @ x1 + ALPHA * np.eye(x1.shape[1])
  gram[-1, -1] -= ALPHA
  return np.linalg.solve(gram, x1.T @ y)


def _apply(w: np.ndarray, x: np.ndarray) -> np.ndarray:
  return np.hstack([x, np.ones((len(x), 1))]) @ w


def scores(path: str, horizon: int) -> dict[str, list[float]]:
  """Val and test MSE (scaled OT) of each blend in `BLENDS`."""
  over = [f"data.path={path}"] if path else []
  spec = config_lib.to_spec(config_lib.load_config(f"ett_univariate:{horizon}", over))
  data = series.prepare(spec.data)

  def split(name):
    starts = data.window_starts(name)
    x = windows.gather_inputs(data, starts)[..., 0].astype(np.float64)
    return x, windows.gather_targets(data, starts)[..., 0].astype(np.float64)

  x, y = split("train")
  free = _ridge(x - x[:, -1:], y - x[:, -1:])
  raw = _ridge(x, y)
  out = {}
  for name in ("val", "test"):
    x, y = split(name)
    p_free, p_raw = _apply(free, x - x[:, -1:]) + x[:, -1:], _apply(raw, x)
    out[name] = [float(np.mean((w * p_free + (1 - w) * p_raw - y) ** 2)) for w in BLENDS]
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="runs/ett_later", help="where the later file lives")
  args = ap.parse_args()
  later = os.path.join(args.workdir, "ETTh1_later.csv")
  if not os.path.exists(later):
    later = write_later_file(args.workdir)
  names = " | ".join(f"level-free {w:g}" for w in BLENDS)
  print(f"| period | horizon | split | {names} |")
  print("|---|---|---|" + "---|" * len(BLENDS))
  for period, path in (("ETTh1", ""), ("later", later)):
    for h in ett_univariate.HORIZONS:
      s = scores(path, h)
      for name in ("val", "test"):
        cells = " | ".join(f"{v:.4f}" for v in s[name])
        print(f"| {period} | {h} | {name} | {cells} |")


if __name__ == "__main__":
  main()
