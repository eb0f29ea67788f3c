"""The one exception type for problems in user input (data files, configs, workdirs).

The CLI turns it into ``error: <message>`` on stderr and exit code 2; nothing else should
be raised for bad input. Messages are one line and name the file, column, value or key.
"""


class InputError(ValueError):
  """Bad user input: a data file, a config value or a workdir. Message is one line."""


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. too many non-finite steps). Message is one line."""


class Preempted(Exception):
  """SIGTERM/SIGINT arrived: the current step finished and a checkpoint was written."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved, rerun "
                     "the same command to resume")
    self.signum, self.step = signum, step
