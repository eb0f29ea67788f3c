"""Three runs of the dropout ablation (`experiments/sweeps/dropout.py`: input dropout 0.2,
recurrent dropout 0.5, seeds 0-2), timed as sequential processes where the whole sweep's 27
would not fit (a GPU lease): `population_sweep.py --estimate` scales them up
(experiments/benchmarks/gpu_check.sh).
"""


def get_sweep():
  return {
    "config": "ett",
    "grid": {"model.dropout": [0.2], "model.recurrent_dropout": [0.5]},
    "seeds": [0, 1, 2],
  }
