"""The data pipeline, host-side only (numpy, pandas, scikit-learn; never jax):

io.py       read and validate CSV/Parquet tables
series.py   SeriesData: split in time, scaled, prepared from a DataSpec
scaling.py  scalers fit on the training rows, saved as plain numbers
windows.py  windows by index and the batching API (batches = f(seed, step))
augment.py  train-time augmentation of input windows
"""
