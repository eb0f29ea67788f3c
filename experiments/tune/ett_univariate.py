"""TPE search over the ETTh1 univariate 24-step recipe (the ett_univariate:24 recipe).

  flaxlstm tune experiments/tune/ett_univariate.py --workdir runs/tune_ett_univariate

Size and depth, both dropouts, the AdamW learning rate and weight decay, and the batch size;
the rest (level-free model with linear highway, cosine schedule, early stopping) stays the
recipe's. Trials are picked on validation MSE; compare the best trial's test MSE with the
recipe's (0.0269, experiments/README.md) only once, at the end. A trial takes under a minute
on 2 CPU cores (early stopping), so 20 trials take about 15 minutes.
"""

from flaxlstm.recipes import ett


def get_tune():
  return {
    "config": "ett_univariate:24",
    "overrides": list(ett.ZERO_START),
    "space": {
      "model.hidden_sizes": {"choice": [(32,), (64,), (128,), (64, 64)]},
      "model.dropout": {"uniform": [0.0, 0.5]},
      "model.recurrent_dropout": {"uniform": [0.0, 0.5]},
      "train.learning_rate": {"loguniform": [3e-4, 3e-3]},
      "train.weight_decay": {"loguniform": [1e-6, 1e-2]},
      "train.batch_size": {"int": [32, 128], "step": 32},
    },
    "trials": 20,
    "metric": "val_mse",
    "algorithm": "tpe",
    "seed": 0,
  }
