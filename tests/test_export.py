"""The export as a contract: it serves itself with TensorFlow alone, after
the same preprocessing evaluation uses; and `advisor_tf.predict` on it."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from advisor_tf import backbones, export
from advisor_tf.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

_SIZES = [(12, 12), (10, 17), (16, 9), (8, 8), (13, 13), (20, 11)]


def _image(path, size, seed, mode="RGB"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 255, size + (3,), np.uint8)
  image = Image.fromarray(pixels).convert(mode)
  if path.endswith(".webp"):
    image.save(path, "WEBP", lossless=True)
  else:
    image.save(path)


def _classifier(input_shape, num_classes, seed=0):
  """A tiny backbone + head, as `AdvisorModel.classifier()` composes them;
  the head's weights scaled up so that the classes differ clearly."""
  keras.utils.set_random_seed(seed)
  body = backbones.small_cnn(input_shape, widths=(4, 4, 8))
  head = backbones.linear_head(body.output_shape[-1], num_classes)
  for w in head.weights:
    w.assign(np.random.default_rng(seed).normal(0, 3, w.shape))
  inputs = keras.Input(input_shape, name="image")
  return keras.Model(inputs, head(body(inputs)), name="classifier")


def _reference(classifier, source, split="test"):
  """Probabilities as evaluation computes them: the classifier on the
  split's loader output."""
  x = np.stack(list(source.images(split, range(len(source.labels[split])))
                    .as_numpy_iterator()))
  return tf.nn.softmax(classifier.predict(x, verbose=0)).numpy()


def _pixels(path):
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """An image folder (PNG, WebP, grey PNG, clutter), its source, a tiny
  classifier and its export."""
  root = tmp_path_factory.mktemp("export")
  data = root / "data"
  for s, split in enumerate(("train", "test")):
    for c, name in enumerate(("ant", "bee", "cat")):
      for i in range(2):
        ext = ".webp" if i == 1 else ".png"
        mode = "L" if (c, i) == (2, 0) else "RGB"
        _image(f"{data}/{split}/{name}/{i}{ext}", _SIZES[c * 2 + i],
               seed=100 * s + 10 * c + i, mode=mode)
  _image(f"{data}/train/.ipynb_checkpoints/0.png", (8, 8), 999)
  (data / "test" / "ant" / "notes.txt").write_text("x")
  source = sources.load("image_folder", str(data), image_size=8)
  classifier = _classifier((8, 8, 3), 3)
  path, keras_path = export.export(classifier, source,
                                   str(root / "run" / "saved_model"))
  return dict(root=root, data=data, source=source, classifier=classifier,
              path=path, keras_path=keras_path)


_TF_ONLY = r"""
import sys
sys.modules["advisor_tf"] = None  # Importing this package must not happen.
import json
import numpy as np
import tensorflow as tf

model = tf.saved_model.load(sys.argv[1])
files = json.loads(sys.argv[2])
out = {}
serve = model.signatures["serving_default"]
pixels = model.signatures["predict_images"]
out["signatures"] = {
    name: {"inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in
                      f.structured_input_signature[1].items()},
           "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in
                       f.structured_outputs.items()}}
    for name, f in model.signatures.items()}
got = serve(image_bytes=tf.constant([open(f, "rb").read() for f in files]))
out["bytes"] = {k: v.numpy().tolist() for k, v in got.items()}
out["pixels"] = []
for f in files:  # One call per image: the test images differ in size.
  image = tf.io.decode_image(open(f, "rb").read(), expand_animations=False)
  got = pixels(images=image[None])
  out["pixels"].append({k: v.numpy().tolist()[0] for k, v in got.items()})
print(json.dumps(out, default=lambda b: b.decode()))
"""


@pytest.mark.slow
def test_export_serves_itself_with_tensorflow_alone(run, tmp_path):
  source = run["source"]
  files = [str(p) for p in source.paths["test"]]
  proc = subprocess.run([sys.executable, "-c", _TF_ONLY, run["path"],
                         json.dumps(files)], cwd=tmp_path, env=ENV,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.splitlines()[-1])
  outputs = {"probabilities": ["float32", [None, 3]],
             "class_id": ["int64", [None]], "class_name": ["string", [None]]}
  assert out["signatures"] == {
      "serving_default": {"inputs": {"image_bytes": ["string", [None]]},
                          "outputs": outputs},
      "predict_images": {"inputs": {"images": ["uint8",
                                               [None, None, None, None]]},
                         "outputs": outputs}}
  want = _reference(run["classifier"], source)
  assert len(set(want.argmax(1))) > 1  # Not a constant classifier.
  got = out["bytes"]
  np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
  np.testing.assert_array_equal(got["class_id"], want.argmax(1))
  assert got["class_name"] == [source.class_names[c] for c in want.argmax(1)]
  for row, expected in zip(out["pixels"], want):
    np.testing.assert_allclose(row["probabilities"], expected, atol=1e-5)
    assert row["class_name"] == source.class_names[expected.argmax()]


@pytest.mark.slow
def test_saved_model_cli_lists_both_signatures(run):
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  proc = subprocess.run([cli, "show", "--all", "--dir", run["path"]],
                        env=ENV, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("serving_default", "predict_images"):
    assert f"signature_def['{name}']" in proc.stdout
  for key in ("image_bytes", "images", "probabilities", "class_id",
              "class_name"):
    assert f"['{key}']" in proc.stdout


def test_keras_copy_and_metadata(run):
  assert run["keras_path"] == str(run["root"] / "run" / "classifier.keras")
  copy = keras.saving.load_model(run["keras_path"])
  x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
  np.testing.assert_allclose(copy.predict(x, verbose=0),
                             run["classifier"].predict(x, verbose=0),
                             atol=1e-6)
  loaded = export.load(run["path"])
  assert export.class_names(loaded) == ["ant", "bee", "cat"]
  spec = json.loads(loaded.metadata()["preprocessing"].numpy())
  assert spec == run["source"].preprocessing.to_dict()
  # `serve` takes the model input evaluation feeds, and gives logits.
  np.testing.assert_allclose(loaded.serve(x).numpy(),
                             run["classifier"].predict(x, verbose=0),
                             atol=1e-5)
  assert not os.path.exists(run["path"] + ".partial")


def test_resize_and_crop_sources_export_their_path(run, tmp_path):
  data = run["source"]
  splits = {s: (data.paths[s], data.labels[s]) for s in ("train", "test")}
  source = sources.file_source("crop", splits, data.class_names, (8, 8),
                               resize_to=11)
  classifier = _classifier((8, 8, 3), 3, seed=1)
  path, _ = export.export(classifier, source, str(tmp_path / "m"),
                          keras_path=str(tmp_path / "m.keras"))
  want = _reference(classifier, source)
  loaded = export.load(path)
  got = export.predict_bytes(loaded, [open(p, "rb").read()
                                      for p in source.paths["test"]])
  np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
  for p, expected in zip(source.paths["test"], want):
    one = export.predict_pixels(loaded, _pixels(p)[None])
    np.testing.assert_allclose(one["probabilities"][0], expected, atol=1e-5)


@pytest.mark.slow  # Moved by measured duration (fast tier over budget).
def test_array_sources_take_pixels_of_any_size(tmp_path):
  rng = np.random.default_rng(0)
  # CIFAR-like: uint8 arrays, normalised.
  pixels = rng.integers(0, 255, (10, 8, 8, 3), np.uint8)
  labels = np.arange(10) % 2
  source = sources.array_source("toy", {"train": (pixels, labels),
                                        "test": (pixels, labels)},
                                ["even", "odd"], mean=(0.5, 0.4, 0.3),
                                std=(0.2, 0.2, 0.3))
  classifier = _classifier((8, 8, 3), 2)
  loaded = export.load(export.export(classifier, source,
                                     str(tmp_path / "rgb"))[0])
  got = export.predict_pixels(loaded, pixels)
  np.testing.assert_allclose(got["probabilities"],
                             _reference(classifier, source), atol=1e-5)
  bigger = export.predict_pixels(loaded, np.repeat(pixels, 3, axis=1))
  assert bigger["probabilities"].shape == (10, 2)
  grey = export.predict_pixels(loaded, pixels[..., :1])
  np.testing.assert_array_equal(
      grey["probabilities"],
      export.predict_pixels(loaded, np.repeat(pixels[..., :1], 3, -1))[
          "probabilities"])
  # Digits-like: one channel of floats in [0, 1]; RGB input turns grey.
  values = rng.integers(0, 255, (6, 8, 8, 1), np.uint8)
  source = sources.array_source("grey", {"train": (values / 255.0, labels[:6]),
                                         "test": (values / 255.0, labels[:6])},
                                ["even", "odd"])
  classifier = _classifier((8, 8, 1), 2)
  loaded = export.load(export.export(classifier, source,
                                     str(tmp_path / "grey"))[0])
  want = _reference(classifier, source)
  np.testing.assert_allclose(
      export.predict_pixels(loaded, values)["probabilities"], want, atol=1e-5)
  np.testing.assert_allclose(
      export.predict_pixels(loaded, np.repeat(values, 3, -1))[
          "probabilities"], want, atol=1e-3)


def _nan_export(run, tmp_path, monkeypatch):
  """An export whose head kernel holds a NaN (written past the guard)."""
  tmp_path.mkdir(parents=True, exist_ok=True)
  classifier = _classifier((8, 8, 3), 3)
  kernel = classifier.get_layer("head").weights[0]
  value = kernel.numpy()
  value[0, 0] = np.nan
  kernel.assign(value)
  with pytest.raises(ValueError, match=r"weight logits/kernel is not "
                     "finite"):
    export.export(classifier, run["source"], str(tmp_path / "nan"))
  assert not os.listdir(tmp_path)  # Refused: nothing written.
  with monkeypatch.context() as m:
    m.setattr(export, "_first_non_finite", lambda *_: None)
    return export.export(classifier, run["source"], str(tmp_path / "nan"))[0]


def test_non_finite_weights_are_refused(run, tmp_path, monkeypatch):
  path = _nan_export(run, tmp_path, monkeypatch)
  with pytest.raises(ValueError, match=f"{path}: weight logits/kernel is "
                     "not finite"):
    export.load(path)


# ------------------------------------------------------------------ predict
def _bad_inputs(run, tmp_path):
  """A folder of good images with clutter, and a corrupt image in it."""
  folder = tmp_path / "photos"
  shutil.copytree(run["data"] / "test", folder)
  shutil.copy(folder / "ant" / "0.png", folder / ".hidden.png")
  _image(str(folder / ".cache" / "x.png"), (8, 8), 5)
  (folder / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  return folder


def test_predict_files_survive_a_bad_file(run, tmp_path):
  folder = _bad_inputs(run, tmp_path)
  errors = []
  files = export.image_files([str(folder), str(tmp_path / "absent.png")],
                              errors)
  assert [os.path.relpath(f, folder) for f in files] == [
      "ant/0.png", "ant/1.webp", "bee/0.png", "bee/1.webp", "bee/broken.png",
      "cat/0.png", "cat/1.webp"]
  assert errors == [(str(tmp_path / "absent.png"), "no such file or folder")]
  loaded = export.load(run["path"])
  rows = list(export.predict_files(loaded, files, batch_size=3))
  assert [r[0] for r in rows] == files
  bad = [r for r in rows if r[2] is not None]
  assert [r[0] for r in bad] == [str(folder / "bee" / "broken.png")]
  assert "not a readable image" in bad[0][2] and "\n" not in bad[0][2]
  want = _reference(run["classifier"], run["source"])
  got = np.stack([r[1]["probabilities"] for r in rows if r[2] is None])
  np.testing.assert_allclose(got, want, atol=1e-5)
  out = io.StringIO()
  assert export.write_csv(iter(rows), out, ["ant", "bee", "cat"], 2) == [
      (bad[0][0], bad[0][2])]
  table = list(csv.reader(io.StringIO(out.getvalue())))
  assert table[0] == ["path", "rank", "class_name", "probability"]
  assert len(table) == 1 + 2 * 6
  first, second = table[1], table[2]
  assert first[0] == second[0] == files[0] and (first[1], second[1]) == (
      "1", "2")
  assert float(first[3]) >= float(second[3])


def _predict(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "advisor_tf.predict", *args],
                        cwd=cwd, env=ENV, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.slow
def test_predict_command(run, tmp_path):
  folder = _bad_inputs(run, tmp_path)
  proc = _predict(f"--model={run['path']}", "--top_k=2", str(folder))
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert f"error: {folder}/bee/broken.png: " in proc.stderr
  table = list(csv.reader(io.StringIO(proc.stdout)))
  assert table[0] == ["path", "rank", "class_name", "probability"]
  assert len(table) == 1 + 2 * 6
  assert not any("hidden" in r[0] or ".cache" in r[0] for r in table)
  want = _reference(run["classifier"], run["source"])
  names = run["source"].class_names
  top = [r for r in table[1:] if r[1] == "1"]
  assert [r[2] for r in top] == [names[c] for c in want.argmax(1)]
  np.testing.assert_allclose([float(r[3]) for r in top], want.max(1),
                             atol=1e-5)
  good = [str(p) for p in run["source"].paths["test"]]
  out = tmp_path / "predictions.csv"
  proc = _predict(f"--model={run['path']}", f"--output={out}", *good)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout == ""
  with open(out) as f:
    table = list(csv.reader(f))
  assert table[0] == ["path", "class_name", "probability"]
  assert [r[0] for r in table[1:]] == good


@pytest.mark.slow
def test_predict_refuses_a_non_finite_model(run, tmp_path, monkeypatch):
  path = _nan_export(run, tmp_path / "m", monkeypatch)
  proc = _predict(f"--model={path}", str(run["data"] / "test"))
  assert proc.returncode != 0
  assert f"{path}: weight logits/kernel is not finite" in proc.stderr
  assert proc.stdout == ""


def test_an_empty_request_gets_an_empty_answer(run):
  loaded = tf.saved_model.load(run["path"])
  for name, kwargs in (
      ("serving_default", {"image_bytes": tf.constant([], tf.string)}),
      ("predict_images", {"images": tf.zeros((0, 8, 8, 3), tf.uint8)})):
    out = loaded.signatures[name](**kwargs)
    assert out["probabilities"].shape == (0, 3), name
    assert out["class_id"].shape == (0,) and out["class_name"].shape == (0,)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_saved_model_is_refused_in_one_line(run, tmp_path, damage):
  path = tmp_path / "saved_model"
  shutil.copytree(run["path"], path)
  variables = path / "variables"
  if damage == "missing":
    shutil.rmtree(variables)
  else:
    for data in variables.glob("variables.data-*"):
      data.write_bytes(data.read_bytes()[:20])
  with pytest.raises(ValueError, match=f"{path}: this SavedModel cannot be "
                     "loaded — its variables/ are missing or damaged"):
    export.load(str(path))
  proc = _predict(f"--model={path}", str(run["data"] / "test"))
  assert proc.returncode == 2 and proc.stdout == ""
  lines = proc.stderr.strip().splitlines()
  assert "Traceback" not in proc.stderr
  assert lines[-1].startswith(f"advisor-predict: error: {path}: this "
                              "SavedModel cannot be loaded"), proc.stderr


def test_the_export_turns_a_photo_upright_as_training_does(run, tmp_path):
  """A JPEG stored sideways with EXIF orientation 6 is served as the
  upright picture a viewer (and the training loader) shows."""
  upright = np.random.default_rng(5).integers(0, 255, (8, 12, 3), np.uint8)
  tags = Image.Exif()
  tags[0x0112] = 6  # Stored turned 90° anti-clockwise: turn it clockwise.
  out = io.BytesIO()
  Image.fromarray(np.rot90(upright, 1)).save(out, "JPEG", quality=95,
                                                exif=tags.tobytes())
  data = out.getvalue()
  shown = np.rot90(tf.io.decode_jpeg(data).numpy(), 3)  # What viewers show.
  assert shown.shape == upright.shape
  loaded = tf.saved_model.load(run["path"])
  by_bytes = loaded.signatures["serving_default"](
      image_bytes=tf.constant([data]))
  by_pixels = loaded.signatures["predict_images"](
      images=tf.constant(np.ascontiguousarray(shown)[None]))
  np.testing.assert_allclose(by_bytes["probabilities"].numpy(),
                             by_pixels["probabilities"].numpy(), atol=1e-6)
  path = tmp_path / "sideways.jpg"  # Training's loaders decode the same.
  path.write_bytes(data)
  np.testing.assert_array_equal(
      sources.decode(tf.io.read_file(str(path))).numpy(), shown)
