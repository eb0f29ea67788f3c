"""Many runs: sweeps (sweep.py) and hyperparameter search (tune.py) on one runner
(runner.py: subprocesses or a SLURM array, locks, signals, failures) and one results
writer (results.py). A search is defined by a tune file (tune_file.py), proposes its trials
with searchers.py, keeps them in its workdir (trial_store.py) and tabulates them with
tune_results.py; shared.py makes it one worker of a search shared through Optuna."""
