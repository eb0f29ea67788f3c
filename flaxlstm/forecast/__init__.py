"""Pure modelling, no files: the forecaster (model.py), the baselines it is scored against
(baselines.py) and the metrics (metrics.py)."""
