"""Many runs: sweeps (sweep.py) and hyperparameter search (tune.py) on one runner
(runner.py: subprocesses or a SLURM array, locks, signals, failures) and one results
writer (results.py)."""
