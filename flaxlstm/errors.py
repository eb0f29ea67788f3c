"""The one exception type for problems in user input (data files, configs, workdirs).

The CLI turns it into ``error: <message>`` on stderr and exit code 2; nothing else should
be raised for bad input. Messages are one line and name the file, column, value or key.
"""


class InputError(ValueError):
  """Bad user input: a data file, a config value or a workdir. Message is one line."""
