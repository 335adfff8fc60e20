"""What every command shares (`advisor-train`, `advisor-evaluate`, ...):
quiet TensorFlow logs, bad input as one line, `--help` grouped by topic,
and the flags naming an existing run.

TensorFlow's own (C++) log is off unless `--tf_log` or `--verbosity` is
given or `TF_CPP_MIN_LOG_LEVEL` is set in the environment;
`quiet_tensorflow()` must run before TensorFlow is imported, so importing
this module runs it, and each command imports this module first.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import re
import sys
import textwrap

import advisor_tf


@contextlib.contextmanager
def _stderr_to_devnull():
  """Sends file descriptor 2 (where TensorFlow's C++ runtime logs) to
  /dev/null for the block; Python-level errors still surface afterwards."""
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def _verbosity(argv):
  """The `--verbosity`/`-v` level the command line gives (absl's: 0 INFO,
  -1 WARNING, -2 ERROR, ...), or None."""
  for index, arg in enumerate(argv):
    match = re.fullmatch(r"(?:--verbosity|--v|-v)(?:=(.*))?", arg)
    if not match:
      continue
    value = match.group(1)
    if value is None and index + 1 < len(argv):
      value = argv[index + 1]
    try:
      return int(value)
    except (TypeError, ValueError):
      return None  # absl refuses it when it parses the flags.
  return None


def native_log_level(argv, environ):
  """`TF_CPP_MIN_LOG_LEVEL` for a command run with `argv`: 0 with
  `--tf_log`; else the environment's own value when the user set one; else
  from `--verbosity` (0 or more: everything, -1: warnings, -2: errors);
  else 3.

  3, not 2, by default: TensorFlow 2.21 logs lines at ERROR level that are
  no error (`oneDNN supports DT_UINT8 only on platforms with AVX-512`,
  `NodeDef mentions attribute use_unbounded_threadpool which is not in the
  op definition`), on every run on a CPU. An error TensorFlow meets in an
  op still reaches the command as an exception (its one-line error), and
  a fatal one is still logged.
  """
  if any(a in ("--tf_log", "--tf_log=true", "--tf_log=1") for a in argv):
    return "0"
  if "TF_CPP_MIN_LOG_LEVEL" in environ:
    return environ["TF_CPP_MIN_LOG_LEVEL"]
  verbosity = _verbosity(argv)
  if verbosity is not None:
    return str(min(3, max(0, -verbosity)))
  return "3"


def quiet_tensorflow():
  """Keeps TensorFlow's C++ log off the terminal unless asked for
  (`--tf_log`, `--verbosity`, or `TF_CPP_MIN_LOG_LEVEL` in the
  environment): sets `TF_CPP_MIN_LOG_LEVEL` by `native_log_level`. Call
  before importing TensorFlow; every command imports this module first.
  `TF_ENABLE_ONEDNN_OPTS` is left alone (it changes the numerics).

  TensorFlow 2.21 writes its start-up lines (oneDNN, CUDA probing, CPU
  features) before its logging is initialised, ignoring
  `TF_CPP_MIN_LOG_LEVEL` (tensorflow/tensorflow#100442), so unless the log
  is asked for, the import and the device discovery run with the C++
  stderr pointed at /dev/null.
  """
  level = native_log_level(sys.argv[1:], os.environ)
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = level
  if level in ("0", "1") or "tensorflow" in sys.modules:
    return
  with _stderr_to_devnull():
    import tensorflow as tf  # noqa: F401 — imported here to silence it.
    tf.config.list_physical_devices()


quiet_tensorflow()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

flags.DEFINE_bool("tf_log", False, "Show TensorFlow's own start-up and INFO "
                  "log (also: set TF_CPP_MIN_LOG_LEVEL=0).",
                  module_name="advisor_tf.cli")


def quiet_logs():
  """WARNING level unless --verbosity or --tf_log was given (hides TF's INFO
  chatter), and TensorFlow's Python logger at ERROR (its warnings, such as
  tf.function retracing, are for developers, and it prints each twice)."""
  if not (flags.FLAGS["verbosity"].present or flags.FLAGS.tf_log):
    logging.set_verbosity(logging.WARNING)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
      tf.get_logger().setLevel("ERROR")


def _prog():
  """`advisor-train` for both `advisor-train` and `python -m
  advisor_tf.train`."""
  name = os.path.basename(sys.argv[0] or "advisor_tf")
  if name.endswith(".py"):
    name = "advisor-" + name[:-3]
  return name if name.startswith("advisor") else "advisor_tf"


def fail(message, status=2):
  """Ends the command with `message` on one line of stderr."""
  prog = _prog()
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(status)


# What a machine's file system says when it refuses a write, as TensorFlow's
# file ops word it (its errors are not OSErrors).
_STORAGE_FAULTS = ("No space left on device", "Read-only file system",
                   "Permission denied", "Disk quota exceeded")


def _storage_fault(error):
  """One line for a file-system refusal (a read-only folder, a full disk),
  or None for any other error."""
  if isinstance(error, OSError) and error.errno is not None:
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"
  tf = sys.modules.get("tensorflow")  # Its errors need it loaded already.
  if tf is not None and isinstance(error, tf.errors.OpError):
    message = " ".join(str(error.message).split())
    if any(fault in message for fault in _STORAGE_FAULTS):
      return message.split("}}")[-1].split(" [Op:")[0].strip()
  return None


def _out_of_memory(error):
  """One line for a device (or host) that ran out of memory — TensorFlow's
  `ResourceExhaustedError` other than a full disk — or None."""
  tf = sys.modules.get("tensorflow")
  if tf is None or not isinstance(error, tf.errors.ResourceExhaustedError):
    return None
  message = " ".join(str(error.message).split())
  what = "out of memory"
  if "OOM when allocating" in message:
    what = "OOM when allocating" + message.split("OOM when allocating", 1)[1]
    what = what.split(" by allocator")[0].split(" [[")[0].split(" [Op:")[0]
  return (f"{what.rstrip('. ')}: the step does not fit in memory. Lower "
          "--batch_size, narrow --virtual_scope (last_stage or head: a "
          "smaller second-order pass) or set --remat=blocks (the backbone's "
          "blocks recomputed: the same gradients, less memory, more time)")


class usage_errors:  # noqa: N801 — used as a context manager, like a function.
  """A `ValueError` (bad flag, file or workdir) or a `FloatingPointError`
  (non-finite state) ends the command with its message on one line and exit
  status 2 (bad input) or 1 (non-finite state), not a traceback; so does a
  file system that refuses a write (a read-only workdir, a full disk:
  status 1), a step that runs out of memory (status 1, naming the flags
  that shrink it), and Ctrl-C (status 130).

  Args:
    after: optional `() → str`, a sentence saying what was kept and how to
      go on (training: the newest checkpoint and the command that resumes),
      appended to a storage fault's or an interruption's line.
  """

  def __init__(self, after=None):
    self.after = after

  def __enter__(self):
    return self

  def _then(self):
    return f" {self.after()}" if self.after else ""

  def __exit__(self, kind, error, traceback):
    if kind is None:
      return False
    if issubclass(kind, ValueError):
      fail(str(error).replace("\n", " "), 2)
    if issubclass(kind, FloatingPointError):
      fail(str(error).replace("\n", " "), 1)
    if issubclass(kind, KeyboardInterrupt):
      fail(f"interrupted (Ctrl-C).{self._then()}", 130)
    if issubclass(kind, Exception):
      fault = _storage_fault(error)
      if fault:
        fail(f"{fault}.{self._then()}".replace("..", "."), 1)
      oom = _out_of_memory(error)
      if oom:
        fail(f"{oom}.{self._then()}", 1)
    return False


def define_run_flags(purpose):
  """`--workdir` (required: the run to `purpose`) and `--data_dir` (overrides
  the run's own). Returns the two flag holders."""
  workdir = flags.DEFINE_string("workdir", None, f"The run to {purpose}.")
  data_dir = flags.DEFINE_string("data_dir", None,
                                 "Override the run's --data_dir.")
  flags.mark_flag_as_required("workdir")
  return workdir, data_dir


def grouped_help(doc, groups):
  """`--help` text: the command's docstring, then its flags by group, each
  with its one-line description, allowed values and default."""
  lines = [textwrap.dedent(doc or "").strip(), ""]
  for title, names in groups.items():
    lines.append(f"{title}:")
    for name in names:
      flag = flags.FLAGS[name]
      help_text = " ".join(flag.help.split())  # Enums start with <a|b|c>.
      default = flag.default
      if default is None or default == "":
        default = "none"
      elif isinstance(default, (list, tuple)):
        default = ",".join(str(d) for d in default) or "none"
      lines.append(f"  --{name}: {help_text} (default: {default})")
    lines.append("")
  lines.append("Also: --flagfile=FILE (flags from a file, as absl reads it; "
               "or a bundled flagfile by name: "
               f"{', '.join(bundled_names())}), --tf_log or --verbosity=0 "
               "(TensorFlow's own log), --helpfull (every flag).")
  return "\n".join(lines)


def bundled_names():
  """The names of the flagfiles shipped in `advisor_tf/flags/`."""
  folder = importlib.resources.files("advisor_tf") / "flags"
  return sorted(p.name[:-4] for p in folder.iterdir()
                if p.name.endswith(".cfg"))


def _flagfile_lines(argv, seen=None):
  """`(flagfile, line number, text)` of every line of the flagfiles named in
  `argv` (and in them), in the order absl reads them."""
  seen = set() if seen is None else seen
  for arg in argv:
    match = re.fullmatch(r"--flagfile=(.+)", arg.strip())
    if not match or match.group(1) in seen:
      continue
    path = match.group(1)
    seen.add(path)
    try:
      with open(path) as f:
        lines = f.read().splitlines()
    except OSError:
      continue
    for number, text in enumerate(lines, 1):
      yield path, number, text
      yield from _flagfile_lines([text], seen)


def _where(error, argv):
  """`FILE:LINE: ` of the flagfile line that set the flag an absl parsing
  error names ('' when the command line itself gave it)."""
  name = getattr(error, "flagname", None)
  if not name:
    match = re.search(r"flag --?(?:no)?(\w+)", str(error))
    name = match and match.group(1)
  if not name:
    return ""
  pattern = re.compile(rf"\s*--(?:no)?{re.escape(name)}(=|\s*$)")
  found = [(f"{path}:{number}: ", text.strip()) for path, number, text in
           _flagfile_lines(argv[1:]) if pattern.match(text)]
  exact = [where for where, text in found if text in str(error)]
  if exact:  # The very line whose value was refused.
    return exact[-1]
  if any(pattern.match(a) for a in argv[1:]):
    return ""  # The command line's own value wins in absl.
  return found[-1][0] if found else ""


def _bundled(path):
  """The bundled flagfile that `path` names where no such file exists: a
  name (`quickstart`, `quickstart.cfg`) or the clone's `flags/NAME.cfg`,
  from any folder and for an installed package; else `path`."""
  if os.path.exists(path):
    return path
  folder, name = os.path.split(os.path.normpath(path))
  if folder not in ("", "flags"):
    return path
  try:
    return advisor_tf.flagfile(name)
  except ValueError as error:
    if folder or name.endswith(".cfg") or "." not in name:
      fail(f"--flagfile={path}: no such file. {error}")
    return path


def bundled_flagfiles(argv):
  """`argv` with every `--flagfile` that names a bundled flagfile rather
  than an existing file (`--flagfile=quickstart`) given its path."""
  out = list(argv[:1])
  for previous, arg in zip(argv, argv[1:]):
    match = re.fullmatch(r"(--?flagfile=)(.+)", arg)
    if match:
      arg = match.group(1) + _bundled(match.group(2))
    elif previous in ("--flagfile", "-flagfile"):
      arg = _bundled(arg)
    out.append(arg)
  return out


def _parse_or_fail(argv):
  """Parses `argv` as `app.run` will; a parsing error (unknown flag, bad
  value, missing flagfile) ends the command in one line naming the
  flagfile and line that set the flag."""
  try:
    flags.FLAGS(argv)
  except flags.Error as error:
    message = " ".join(str(error).split()).replace("ERROR:: ", "")
    fail(f"{_where(error, argv)}{message}")
  finally:
    flags.FLAGS.unparse_flags()


def run(main, doc, groups):
  """`absl.app.run(main)` with bundled flagfiles by name
  (`--flagfile=quickstart`), a grouped `--help`/`-h` and flag-parsing
  errors in one line."""
  sys.argv = bundled_flagfiles(sys.argv)  # Before absl reads them.
  if any(a in ("--help", "-h", "--helpshort", "-?") for a in sys.argv[1:]):
    print(grouped_help(doc, groups))
    sys.exit(0)
  _parse_or_fail(list(sys.argv))
  app.run(main)
