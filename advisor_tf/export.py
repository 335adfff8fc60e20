"""The product of a run: a SavedModel that serves itself, and a `.keras` copy.

The SavedModel holds the classifier's weights, the class names and the
source's inference path — decode, resize / crop, normalise: the very
`sources.decode` / `sources.preprocess` functions evaluation's loaders call —
and loads with TensorFlow alone (no Keras, no `advisor_tf`):

  model = tf.saved_model.load("runs/quickstart/saved_model")
  with open("cat.jpg", "rb") as f:
    out = model.signatures["serving_default"](
        image_bytes=tf.constant([f.read()]))
  out["class_name"], out["probabilities"], out["class_id"]

Signatures (`saved_model_cli show --all --dir=...` lists them):
  serving_default: `image_bytes` tf.string [N], encoded JPEG / PNG / BMP /
    GIF / WebP files of any size.
  predict_images: `images` uint8 [N, H, W, 3] or [N, H, W, 1], any H, W
    (also [N, H, W, 4]: the alpha channel is dropped).
  Both return `probabilities` float32 [N, C] (softmax of the logits),
  `class_id` int64 [N] and `class_name` tf.string [N].

Also on the loaded object (functions, not signatures):
  `serve(x)`: model input as evaluation feeds it (float32 [N, H, W, C],
    already preprocessed) → float32 logits [N, C].
  `metadata()`: {`class_names`: string [C], `preprocessing`: JSON string of
    the `sources.Preprocessing`, `variable_paths`: string [V] naming
    `classifier_variables` in order}.
  `classifier_variables`: the classifier's weights.

Beside it, `export` writes the Keras classifier (`classifier.keras`, in the
same parent folder as the SavedModel by default) for fine-tuning in Keras;
loading that one needs `advisor_tf` imported when the backbone uses its
custom layers.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys

import numpy as np
import tensorflow as tf

from advisor_tf.data import sources

OUTPUT_KEYS = ("probabilities", "class_id", "class_name")
SIGNATURES = ("serving_default", "predict_images")


def default_keras_path(path):
  """`<parent of path>/classifier.keras`, where `export` puts the copy."""
  return os.path.join(os.path.dirname(os.path.abspath(path)),
                      "classifier.keras")


def _first_non_finite(values, names):
  for value, name in zip(values, names):
    array = np.asarray(value)
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
      return name
  return None


def _module(classifier, source):
  """The `tf.Module` that `tf.saved_model.save` writes."""
  spec = source.preprocessing
  input_shape = tuple(spec.image_size) + (spec.channels,)
  names = tf.constant([str(n) for n in source.class_names])
  weights = list(classifier.weights)
  paths = tf.constant([getattr(v, "path", v.name) for v in weights])
  module = tf.Module()
  # Tracked here so that the functions below may capture them.
  module.classifier_variables = weights

  num_classes = len(source.class_names)

  def logits(x):
    # An empty request gets an empty answer: the CPU's BatchNorm kernels
    # refuse a batch of 0 images.
    return tf.cond(
        tf.shape(x)[0] > 0,
        lambda: tf.cast(classifier(x, training=False), tf.float32),
        lambda: tf.zeros([0, num_classes], tf.float32))

  def outputs(x):
    probabilities = tf.nn.softmax(logits(x), axis=-1)
    class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
    return {"probabilities": probabilities, "class_id": class_id,
            "class_name": tf.gather(names, class_id)}

  @tf.function(input_signature=[
      tf.TensorSpec([None], tf.string, name="image_bytes")])
  def serve_bytes(image_bytes):
    # One image at a time: files differ in size until resized.
    x = tf.map_fn(
        lambda data: sources.preprocess(sources.decode(data), spec),
        image_bytes,
        fn_output_signature=tf.TensorSpec(input_shape, tf.float32))
    return outputs(x)

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, None, None], tf.uint8, name="images")])
  def predict_images(images):
    tf.debugging.assert_equal(
        tf.reduce_any(tf.equal(tf.shape(images)[-1], [1, 3, 4])), True,
        message="predict_images takes uint8 pixels [N, H, W, C], C = 1 "
                "(grey), 3 (RGB) or 4 (RGBA)")
    return outputs(sources.preprocess(images, spec))

  @tf.function(input_signature=[
      tf.TensorSpec((None,) + input_shape, tf.float32, name="x")])
  def serve(x):
    return logits(x)

  @tf.function(input_signature=[])
  def metadata():
    return {"class_names": names, "variable_paths": paths,
            "preprocessing": tf.constant(json.dumps(spec.to_dict()))}

  module.serve_bytes = serve_bytes
  module.predict_images = predict_images
  module.serve = serve
  module.metadata = metadata
  return module


def export(classifier, source, path, keras_path=None):
  """Writes the SavedModel of `classifier` at `path` and its `.keras` copy.

  Args:
    classifier: the Keras classifier, image → logits
      (`AdvisorModel.classifier()`).
    source: the run's `sources.Source`; its `preprocessing` and
      `class_names` are baked into the export.
    path: the SavedModel folder (replaced if it exists).
    keras_path: where the `.keras` copy goes (default
      `default_keras_path(path)`: `classifier.keras` beside `path`).

  Returns:
    `(path, keras_path)`.

  Raises:
    ValueError: a weight is not finite (naming the first one), or the
      classifier's input does not match the source's preprocessing. Nothing
      is written then.
  """
  if source.preprocessing is None:
    raise ValueError(f"Source {source.name!r} has no inference "
                     "preprocessing to export.")
  weights = list(classifier.weights)
  bad = _first_non_finite([w.numpy() for w in weights],
                          [getattr(w, "path", w.name) for w in weights])
  if bad is not None:
    raise ValueError(f"Refusing to export {path}: classifier weight {bad} "
                     "is not finite.")
  spec = source.preprocessing
  want = (None,) + tuple(spec.image_size) + (spec.channels,)
  if tuple(classifier.input_shape) != want:
    raise ValueError(f"Refusing to export {path}: the classifier takes "
                     f"{tuple(classifier.input_shape)}, {source.name} "
                     f"preprocesses images to {want}.")
  keras_path = keras_path or default_keras_path(path)
  if not keras_path.endswith(".keras"):
    raise ValueError(f"{keras_path}: the Keras copy's name must end in "
                     "'.keras'.")
  module = _module(classifier, source)
  # Written beside the destination, then moved in: a failed export leaves
  # the previous one (if any) whole.
  partial = os.path.abspath(path).rstrip(os.sep) + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  tf.saved_model.save(module, partial, signatures={
      "serving_default": module.serve_bytes.get_concrete_function(),
      "predict_images": module.predict_images.get_concrete_function()})
  keras_partial = keras_path[:-len(".keras")] + ".partial.keras"
  os.makedirs(os.path.dirname(os.path.abspath(keras_path)), exist_ok=True)
  classifier.save(keras_partial)
  if os.path.isdir(path):
    shutil.rmtree(path)
  os.replace(partial, path)
  os.replace(keras_partial, keras_path)
  return path, keras_path


def load(path):
  """`tf.saved_model.load(path)`, refused (ValueError naming `path` and the
  variable) when a weight is not finite or `path` is not an export."""
  if not os.path.isfile(os.path.join(path, "saved_model.pb")):
    raise ValueError(f"{path}: not a SavedModel folder (no saved_model.pb).")
  try:
    loaded = tf.saved_model.load(path)
  except (tf.errors.OpError, OSError, ValueError, IndexError) as e:
    # variables/ missing or cut short (a copy that stopped half-way;
    # TensorFlow's reader then raises IndexError).
    why = " ".join(str(getattr(e, "message", e)).split())[:300]
    raise ValueError(f"{path}: this SavedModel cannot be loaded — its "
                     "variables/ are missing or damaged "
                     f"({type(e).__name__}: {why}). Export it again "
                     "(the same advisor-train command re-exports a finished "
                     "run) or copy it whole.") from None
  missing = [s for s in SIGNATURES if s not in loaded.signatures]
  if missing:
    raise ValueError(f"{path}: has no {missing[0]!r} signature; export it "
                     "with advisor_tf.export.")
  variables = list(getattr(loaded, "classifier_variables", None) or [])
  if not variables:
    raise ValueError(f"{path}: has no classifier_variables; export it with "
                     "advisor_tf.export.")
  values = [v.numpy() for v in variables]
  bad = _first_non_finite(values, range(len(values)))
  if bad is not None:
    name = variables[bad].name
    if hasattr(loaded, "metadata"):
      name = loaded.metadata()["variable_paths"].numpy()[bad].decode()
    raise ValueError(f"{path}: weight {name} is not finite; this model "
                     "cannot serve.")
  return loaded


def class_names(loaded):
  """The class names baked into a loaded export."""
  return [n.decode() for n in loaded.metadata()["class_names"].numpy()]


def predict_bytes(loaded, files):
  """`serving_default` on a list of encoded image files (bytes) → dict of
  numpy arrays (`probabilities`, `class_id`, `class_name` as str)."""
  out = loaded.signatures["serving_default"](
      image_bytes=tf.constant(list(files), tf.string))
  result = {k: out[k].numpy() for k in OUTPUT_KEYS}
  result["class_name"] = np.asarray(
      [n.decode() for n in result["class_name"]], dtype=object)
  return result


def predict_pixels(loaded, images):
  """`predict_images` on uint8 pixels [N, H, W, 1 or 3] → dict of numpy
  arrays, as `predict_bytes`."""
  out = loaded.signatures["predict_images"](
      images=tf.constant(np.asarray(images, np.uint8)))
  result = {k: out[k].numpy() for k in OUTPUT_KEYS}
  result["class_name"] = np.asarray(
      [n.decode() for n in result["class_name"]], dtype=object)
  return result


# ------------------------------------------------- an export on image files
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
                     and n.lower().endswith(sources.IMAGE_EXTENSIONS))
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
    out = predict_bytes(loaded, contents)
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
