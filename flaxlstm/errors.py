"""The exception types that reach the user, each printed by the CLI as one line.

`InputError` is bad user input (a data file, a config value, a workdir): ``error: <message>``
and exit code 2; nothing else should be raised for bad input. `TrainingError` is a failure
of the run or its environment (too many non-finite steps, a full disk): exit code 1.
`Stopped` is a signal honoured: exit code 128 + signal. Messages are one line and name the
file, column, value or key.
"""

# How a message tells the user to resume. The CLI names the workdir in it when it chose
# the workdir itself (a timestamped one, which the same command would not find again).
RERUN = "rerun the same command"


class InputError(ValueError):
  """Bad user input: a data file, a config value or a workdir. Message is one line."""


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. too many non-finite steps, a full disk). One line."""


class Stopped(Exception):
  """SIGTERM/SIGINT arrived and was honoured; the message says how to resume."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum


class Preempted(Stopped):
  """A training run stopped by a signal: the current step finished, a checkpoint was
  written."""

  def __init__(self, signum: int, step: int):
    super().__init__(
      signum,
      f"stopped by signal {signum} at step {step}; checkpoint saved, {RERUN} to resume",
    )
    self.step = step
