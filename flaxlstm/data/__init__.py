"""The data pipeline, host-side only (numpy, pandas, scikit-learn; never jax):

io.py       read and validate CSV/Parquet tables, wide or long (id, date, value)
dates.py    a date column read one way (one format, day/month order inferred or data.date_format)
steps.py    missing dates: a series' rows must step by its frequency (data.missing_dates)
messages.py the one-line InputError messages and how they name values and rows
table.py    the spec's columns of a file (inputs, targets, covariates), validated as a Table
splits.py   chronological train/val/test splits of every series (data.split)
calendar.py calendar features of the dates (data.calendar), known in advance; future dates
series.py   SeriesData: every series split in time, scaled, with its covariates
scaling.py  scalers fit on the training rows (all series, or each), saved as numbers
windows.py  the (series, start) window index and the batching API (batches = f(seed, step))
augment.py  train-time augmentation of input windows
"""
