"""Recipes users start from, by name: `flaxlstm train --config ett:48`.

Each module is an experiment file (`get_config(arg=None)` returning a ConfigDict built on
`flaxlstm.config.default_config()`):

  ett               the default experiment: ETTh1 oil temperature, 96 rows -> next 24
  ett_univariate    ETTh1 univariate, Informer protocol; the argument is the horizon
  ett_multivariate  ETTh1 all 7 columns, Informer protocol; the argument is the horizon
  panel             any long table (unique_id, ds, y): a global model; panel:H or panel:H,S
  tirex             fine-tuning TiRex on a long table; the argument is the horizon
  seed_example1-3   the seed recipes: LSTM 512 -> 256 -> Dense, + dropout, + scaling
"""
