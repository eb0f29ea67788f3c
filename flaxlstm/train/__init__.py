"""Training and the commands on a finished run:

loop.py        train_and_evaluate(config, workdir): the loop
assembly.py    assemble(spec): data, model, optimizer, mesh, step counts
step.py        the jitted train and predict steps
optim.py       optimizers, schedules, losses, penalties
evaluation.py  validation and early stopping, final metrics, plots
preemption.py  SIGTERM/SIGINT as a stop request
checkpoint.py  orbax checkpoints: latest and best, digests, fallbacks
workdir.py     run directories: what one is, fingerprints, refusal before any write
lock.py        who owns a run directory: the lock, a training command's claim
inference.py   evaluate / predict on a finished run; score an ensemble of runs
"""

from flaxlstm.train.inference import evaluate, evaluate_ensemble, predict_file, restore_params
from flaxlstm.train.loop import train_and_evaluate

__all__ = ["evaluate", "evaluate_ensemble", "predict_file", "restore_params", "train_and_evaluate"]
