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

import csv
import os
import sys

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from advisor_tf import export  # noqa: E402
from advisor_tf.data.sources import IMAGE_EXTENSIONS  # noqa: E402

_MODEL = flags.DEFINE_string(
    "model", None, "The exported SavedModel folder (a run's saved_model/).")
_TOP_K = flags.DEFINE_integer("top_k", 1, "Rows per image: its k most "
                              "probable classes.", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None,
                              "Write the CSV here instead of stdout.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per call of the "
                                   "model.", lower_bound=1)
flags.mark_flag_as_required("model")


def image_files(inputs, errors):
  """Files named in `inputs` and images found under its folders, in order.
  Inputs that are neither are appended to `errors` as `(path, reason)`."""
  files = []
  for item in inputs:
    if os.path.isdir(item):
      found = []
      for root, dirs, names in os.walk(item):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, n) for n in sorted(names)
                     if not n.startswith(".")
                     and n.lower().endswith(IMAGE_EXTENSIONS))
      if not found:
        errors.append((item, "no image files in this folder"))
      files.extend(found)
    elif os.path.exists(item):
      files.append(item)
    else:
      errors.append((item, "no such file or folder"))
  return files


def _reason(error):
  """A one-line reason from a TensorFlow or OS error."""
  if isinstance(error, tf.errors.OpError):
    # The op's own message: not the header, stack frames (indented) or the
    # node annotations TensorFlow wraps it in.
    lines = [line for line in error.message.splitlines()
             if line.strip() and not line[0].isspace() and not line.startswith(
                 ("Graph execution", "Detected at node", "<stack traces",
                  "[["))]
    text = lines[-1] if lines else type(error).__name__
    return text.split(" [[")[0].split(" [Op:")[0].rstrip(".") + (
        " (not a readable image)")
  return f"{type(error).__name__}: {error}"


def predict_files(loaded, paths, batch_size=32):
  """Yields `(path, result, error)` per file in order: `result` a dict of
  `probabilities` [C], `class_id`, `class_name` (error None), or `error` a
  one-line reason (result None). A batch with an undecodable file is
  retried image by image, so one bad file costs only itself."""

  def run(contents):
    out = export.predict_bytes(loaded, contents)
    return [{k: out[k][i] for k in out} for i in range(len(contents))]

  for start in range(0, len(paths), batch_size):
    batch, contents, results = paths[start:start + batch_size], [], {}
    for path in batch:
      try:
        with open(path, "rb") as f:
          contents.append(f.read())
      except OSError as e:
        results[path] = (None, _reason(e))
        contents.append(None)
    readable = [(p, c) for p, c in zip(batch, contents) if c is not None]
    try:
      outputs = run([c for _, c in readable]) if readable else []
      for (path, _), result in zip(readable, outputs):
        results[path] = (result, None)
    except tf.errors.OpError:
      for path, content in readable:
        try:
          results[path] = (run([content])[0], None)
        except tf.errors.OpError as e:
          results[path] = (None, _reason(e))
    for path in batch:
      yield (path,) + results[path]


def write_csv(rows, out, names, top_k):
  """Writes the CSV of `predict_files` rows; returns the `(path, reason)`
  of files that could not be predicted."""
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["path", "class_name", "probability"] if top_k == 1 else
                  ["path", "rank", "class_name", "probability"])
  failed = []
  for path, result, error in rows:
    if error is not None:
      failed.append((path, error))
      print(f"error: {path}: {error}", file=sys.stderr)
      continue
    probabilities = result["probabilities"]
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    for rank, c in enumerate(order, 1):
      row = [names[c], f"{probabilities[c]:.6f}"]
      writer.writerow([path] + row if top_k == 1 else [path, rank] + row)
  return failed


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
    files = image_files(inputs, errors)
    for path, reason in errors:
      print(f"error: {path}: {reason}", file=sys.stderr)
    rows = predict_files(loaded, files, _BATCH_SIZE.value)
    try:
      out = open(_OUTPUT.value, "w", newline="") if _OUTPUT.value else (
          sys.stdout)
    except OSError as e:
      raise ValueError(f"--output={_OUTPUT.value}: {e.strerror}.") from None
    try:
      failed = write_csv(rows, out, names, _TOP_K.value)
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
