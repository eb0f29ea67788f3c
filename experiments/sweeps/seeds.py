"""The default experiment's 3-seed table: `ett` with seeds 0, 1 and 2.

flaxlstm sweep experiments/sweeps/seeds.py --population
"""


def get_sweep():
  return {"config": "ett", "seeds": [0, 1, 2]}
