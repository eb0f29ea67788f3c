"""The data pipeline, host-side only (numpy, pandas, scikit-learn; never jax):

io.py       read and validate CSV/Parquet tables, wide or long (id, date, value)
series.py   SeriesData: every series split in time, scaled, with its covariates
scaling.py  scalers fit on the training rows (all series, or each), saved as numbers
windows.py  the (series, start) window index and the batching API (batches = f(seed, step))
augment.py  train-time augmentation of input windows
"""
