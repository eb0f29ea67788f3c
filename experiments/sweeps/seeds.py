"""The default experiment's 3-seed table: `ett` with seeds 0, 1 and 2.

flaxlstm sweep experiments/sweeps/seeds.py --population
"""

from flaxlstm.recipes import ett


def get_sweep():
  return {"config": "ett", "overrides": list(ett.ZERO_START), "seeds": [0, 1, 2]}
