r"""Classify image files with an exported model.

  advisor-predict --model=runs/quickstart/saved_model \
      photos/ cat.jpg [--top_k=3] [--output=predictions.csv]

Needs only the export (a SavedModel written by `advisor_tf.export`, loaded
with TensorFlow), not the run's workdir or data. Folders are walked
recursively, taking files with an image extension (.jpg .jpeg .png .bmp
.gif .webp) and skipping hidden files and folders; files named on the
command line are tried whatever their name.

Output, a CSV on stdout or in --output, one image after another in input
order (folders sorted):
  --top_k=1 (default): `path,class_name,probability`, one row per image;
  --top_k=k > 1: `path,rank,class_name,probability`, k rows per image,
  rank 1 the most probable.
A file that cannot be read or decoded gets no row: it gets one line
`error: <path>: <reason>` on stderr, the other images are still predicted,
and the command exits with status 1. A model with a non-finite weight is
refused before any image is read.
"""

import os
import sys

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import flags  # noqa: E402

from advisor_tf import export  # noqa: E402

_MODEL = flags.DEFINE_string(
    "model", None, "The exported SavedModel folder (a run's saved_model/).")
_TOP_K = flags.DEFINE_integer("top_k", 1, "Rows per image: its k most "
                              "probable classes.", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None,
                              "Write the CSV here instead of stdout.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per call of the "
                                   "model.", lower_bound=1)
flags.mark_flag_as_required("model")


def main(argv):
  cli.quiet_logs()
  inputs = argv[1:]
  with cli.usage_errors():
    if not inputs:
      raise ValueError("Name at least one image file or folder to classify.")
    if _OUTPUT.value and os.path.isdir(_OUTPUT.value):
      raise ValueError(f"--output={_OUTPUT.value} is a folder; name a file.")
    loaded = export.load(_MODEL.value)
    names = export.class_names(loaded)
    if _TOP_K.value > len(names):
      raise ValueError(f"--top_k={_TOP_K.value} is more than the model's "
                       f"{len(names)} classes.")
    errors = []
    files = export.image_files(inputs, errors)
    for path, reason in errors:
      print(f"error: {path}: {reason}", file=sys.stderr)
    rows = export.predict_files(loaded, files, _BATCH_SIZE.value)
    try:
      out = open(_OUTPUT.value, "w", newline="") if _OUTPUT.value else (
          sys.stdout)
    except OSError as e:
      raise ValueError(f"--output={_OUTPUT.value}: {e.strerror}.") from None
    try:
      failed = export.write_csv(rows, out, names, _TOP_K.value)
    finally:
      if out is not sys.stdout:
        out.close()
  if failed or errors:
    print(f"{len(failed) + len(errors)} input(s) could not be classified; "
          f"{len(files) - len(failed)} image(s) were.", file=sys.stderr)
    sys.exit(1)
  if _OUTPUT.value:
    print(f"{len(files)} image(s) → {_OUTPUT.value}", file=sys.stderr)


GROUPS = {"model": ["model", "top_k", "batch_size"], "output": ["output"]}


def console():
  """Console script `advisor-predict`."""
  cli.run(main, __doc__, GROUPS)


if __name__ == "__main__":
  console()
