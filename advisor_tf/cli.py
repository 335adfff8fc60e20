"""What every `python -m advisor_tf.…` command shares: quiet logs, bad
input as a usage error (no traceback), and the flags naming an existing run."""

import contextlib

from absl import app
from absl import flags
from absl import logging


def quiet_logs():
  """WARNING level unless --verbosity was given (hides TF's INFO chatter)."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


@contextlib.contextmanager
def usage_errors():
  """A `ValueError` (bad flag, file or workdir) ends the command with its
  message and the usage line, not a traceback."""
  try:
    yield
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def define_run_flags(purpose):
  """`--workdir` (required: the run to `purpose`) and `--data_dir` (overrides
  the run's own). Returns the two flag holders."""
  workdir = flags.DEFINE_string("workdir", None, f"The run to {purpose}.")
  data_dir = flags.DEFINE_string("data_dir", None,
                                 "Override the run's --data_dir.")
  flags.mark_flag_as_required("workdir")
  return workdir, data_dir
