"""Inference preprocessing of sources, and a user's untidy image folders."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from advisor_tf.data import sources


def _image(path, size=(12, 12), seed=0, channels=3):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  shape = size + ((channels,) if channels > 1 else ())
  pixels = rng.integers(0, 255, shape, np.uint8)
  if path.endswith(".webp"):
    Image.fromarray(pixels).save(path, "WEBP", lossless=True)
  else:
    Image.fromarray(pixels).save(path)
  return pixels


def _corrupt(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n broken")


@pytest.fixture
def warnings(monkeypatch):
  said = []
  monkeypatch.setattr(sources.logging, "warning",
                      lambda message, *args: said.append(message % args))
  return said


# ------------------------------------------------------------ preprocessing
def _old_file_loader(path, crop, resize_to, mean, std):
  """The file loader as it was before `sources.preprocess` existed."""
  image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                             expand_animations=False)
  image = tf.cast(image, tf.float32) / 255.0
  if resize_to:
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_to / tf.reduce_min(shape)
    image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
  else:
    image = tf.image.resize(image, crop)
  image = tf.image.resize_with_crop_or_pad(image, *crop)
  return ((image - tf.constant(mean)) / tf.constant(std)).numpy()


@pytest.mark.parametrize("resize_to", [None, 12])
def test_file_loader_numbers_are_unchanged(tmp_path, resize_to):
  paths = [str(tmp_path / f"{i}.png") for i in range(3)]
  for i, (p, size) in enumerate(zip(paths, [(10, 14), (8, 8), (17, 9)])):
    _image(p, size, seed=i)
  source = sources.file_source("t", {"train": (paths, [0, 1, 0]),
                                     "test": (paths, [0, 1, 0])},
                               ["a", "b"], (8, 8), resize_to=resize_to)
  assert source.preprocessing == sources.Preprocessing(
      (8, 8), 3, resize_to, sources.IMAGENET_MEAN, sources.IMAGENET_STD)
  for split in ("train", "test"):
    crop = (resize_to, resize_to) if resize_to and split == "train" else (8, 8)
    got = list(source.images(split, [0, 1, 2]).as_numpy_iterator())
    for path, image in zip(paths, got):
      want = _old_file_loader(path, crop, resize_to, sources.IMAGENET_MEAN,
                              sources.IMAGENET_STD)
      np.testing.assert_array_equal(image, want)


def test_array_sources_describe_their_preprocessing():
  digits = sources.load("digits")
  assert digits.preprocessing == sources.Preprocessing((8, 8), 1)
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 255, (4, 6, 6, 3), np.uint8)
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  source = sources.array_source("a", {"train": (pixels, [0, 1, 0, 1]),
                                      "test": (pixels, [0, 1, 0, 1])},
                                ["x", "y"], mean=mean, std=std)
  spec = source.preprocessing
  assert spec == sources.Preprocessing((6, 6), 3, None, mean, std)
  loaded = np.stack(list(source.images("test", range(4)).as_numpy_iterator()))
  want = (pixels / np.float32(255.0) - np.float32(mean)) / np.float32(std)
  np.testing.assert_allclose(loaded, want, atol=1e-6)
  # The pure function on raw pixels: the loader's numbers at the same size,
  # the model's size from any other.
  np.testing.assert_array_equal(sources.preprocess(pixels, spec), loaded)
  larger = np.repeat(np.repeat(pixels, 2, axis=1), 2, axis=2)
  assert sources.preprocess(larger, spec).shape == (4, 6, 6, 3)


def test_channels_follow_the_model():
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 255, (2, 5, 5, 3), np.uint8)
  grey = rng.integers(0, 255, (2, 5, 5, 1), np.uint8)
  one, three = sources.Preprocessing((5, 5), 1), sources.Preprocessing(
      (5, 5), 3)
  np.testing.assert_allclose(sources.preprocess(rgb, one),
                             tf.image.rgb_to_grayscale(rgb / 255.0),
                             atol=1e-6)
  np.testing.assert_array_equal(sources.preprocess(grey, three),
                                np.repeat(grey, 3, -1) / np.float32(255.0))
  rgba = np.concatenate([rgb, np.full((2, 5, 5, 1), 7, np.uint8)], -1)
  np.testing.assert_array_equal(sources.preprocess(rgba, three),
                                sources.preprocess(rgb, three))
  # Channels unknown until run time (as in an export's signature).
  dynamic = {spec.channels: tf.function(
      lambda x, spec=spec: sources.preprocess(x, spec),
      input_signature=[tf.TensorSpec([None] * 4, tf.uint8)])
      for spec in (one, three)}
  for pixels in (rgb, grey):
    for spec in (one, three):
      np.testing.assert_allclose(dynamic[spec.channels](pixels),
                                 sources.preprocess(pixels, spec), atol=1e-6)


def test_webp_is_decoded(tmp_path):
  pixels = _image(str(tmp_path / "a.webp"), (9, 7))
  with open(tmp_path / "a.webp", "rb") as f:
    decoded = sources.decode(f.read()).numpy()
  np.testing.assert_array_equal(decoded, pixels)


# ------------------------------------------------------- untidy user folders
def _untidy_folder(root):
  """Two classes with PNG and WebP images, plus what real folders hold."""
  _image(f"{root}/train/cat/0.png", seed=1)
  _image(f"{root}/train/cat/1.webp", (10, 16), seed=2)
  _image(f"{root}/train/cat/2.PNG", seed=3)
  _image(f"{root}/train/dog/0.png", seed=4)
  _image(f"{root}/train/dog/1.webp", seed=5)
  _image(f"{root}/train/.ipynb_checkpoints/0.png", seed=6)
  _image(f"{root}/train/dog/.hidden.png", seed=7)
  _image(f"{root}/test/cat/0.jpg", seed=8)
  _image(f"{root}/test/dog/0.png", seed=9, channels=1)
  _image(f"{root}/test/.ipynb_checkpoints/dog/0.png", seed=10)
  (root / "train" / "dog" / "notes.txt").write_text("not an image")
  (root / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
  (root / "train" / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
  _corrupt(f"{root}/train/dog/broken.png")
  return root


def test_image_folder_skips_what_is_not_an_image(tmp_path, warnings):
  root = _untidy_folder(tmp_path)
  source = sources.load("image_folder", str(root), image_size=8)
  assert source.class_names == ("cat", "dog")
  assert [os.path.relpath(p, root) for p in source.paths["train"]] == [
      "train/cat/0.png", "train/cat/1.webp", "train/cat/2.PNG",
      "train/dog/0.png", "train/dog/1.webp"]
  np.testing.assert_array_equal(source.labels["train"], [0, 0, 0, 1, 1])
  assert len(source.labels["test"]) == 2
  images = list(source.images("train", range(5)).as_numpy_iterator())
  assert all(i.shape == (8, 8, 3) and np.isfinite(i).all() for i in images)
  # One warning: the count, then each reason with its first paths.
  assert len(warnings) == 1, warnings
  message = warnings[0]
  assert "--data_dir=" in message and "skipped 4 file(s)" in message
  assert f"hidden: 2 ({root}/train/dog/.DS_Store" in message
  assert f"unreadable: 1 ({root}/train/dog/broken.png (" in message
  assert f"unsupported extension: 1 ({root}/train/dog/notes.txt)" in message
  assert ".ipynb_checkpoints" not in message  # Hidden folders: not classes.


def test_image_folder_one_line_errors_name_the_folder(tmp_path, warnings):
  root = _untidy_folder(tmp_path / "a")
  for name in ("0.png", "1.webp"):
    os.remove(root / "train" / "dog" / name)
  with pytest.raises(ValueError) as e:
    sources.load("image_folder", str(root))
  message = str(e.value)
  assert message.startswith(f"{root}/train/dog: class folder with no usable "
                            "image (train split)")
  assert "broken.png" in message and "\n" not in message
  root = _untidy_folder(tmp_path / "b")
  os.makedirs(root / "test" / "cat" / "empty")
  os.remove(root / "test" / "cat" / "0.jpg")
  with pytest.raises(ValueError, match=f"{root}/test/cat: class folder with "
                     r"no usable image \(test split\)"):
    sources.load("image_folder", str(root))
  root = _untidy_folder(tmp_path / "c")
  (root / "meta" / "cat").mkdir(parents=True)
  (root / "meta" / "cat" / "readme.txt").write_text("x")
  _image(f"{root}/meta/dog/5.png", seed=50)
  with pytest.raises(ValueError, match=r"Class 'cat' has no image in the meta"
                     f" set \\({root}/meta/cat\\)"):
    sources.load("image_folder", str(root))


def test_image_csv_skips_unusable_rows(tmp_path, warnings):
  root = _untidy_folder(tmp_path)
  rows = ["path,label", "train/cat/0.png,cat", "train/cat/1.webp,cat",
          "train/dog/0.png,dog", "train/dog/broken.png,dog",
          "train/dog/notes.txt,dog", "train/dog/.hidden.png,dog",
          "train/.ipynb_checkpoints/0.png,cat", "train/dog/gone.png,dog",
          "./train/dog/1.webp,dog"]
  (root / "train.csv").write_text("\n".join(rows))
  (root / "test.csv").write_text("test/cat/0.jpg,cat\ntest/dog/0.png,dog\n")
  source = sources.load("image_csv", str(root), image_size=8)
  np.testing.assert_array_equal(source.labels["train"], [0, 0, 1, 1])
  assert len(warnings) == 1
  assert "skipped 5 file(s)" in warnings[0]
  for reason in ("hidden: 2", "unreadable: 1", "missing: 1"):
    assert reason in warnings[0]
  (root / "train.csv").write_text("\n".join(rows[:3] + rows[4:6]))
  with pytest.raises(ValueError, match=f"{root}/train.csv: class 'dog' has no "
                     "usable image"):
    sources.load("image_csv", str(root))


def _truncated_jpeg(path, seed=0):
  """A JPEG cut in half: Pillow's `verify()` passes it, TensorFlow's decode
  (training's) fails."""
  _image(path, (64, 64), seed=seed)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  with Image.open(path) as image:
    image.verify()  # Passes.


def test_undecodable_images_are_skipped_before_training_and_cached(
    tmp_path, warnings, monkeypatch):
  root = _untidy_folder(tmp_path)
  _truncated_jpeg(f"{root}/train/cat/cut.jpg")
  _truncated_jpeg(f"{root}/test/dog/cut.jpg", seed=1)
  source = sources.load("image_folder", str(root), image_size=8)
  kept = [os.path.relpath(p, root) for p in
          list(source.paths["train"]) + list(source.paths["test"])]
  assert "train/cat/cut.jpg" not in kept and "test/dog/cut.jpg" not in kept
  assert len(source.labels["test"]) == 2
  # Every kept image decodes the way training reads it.
  for split in ("train", "test"):
    n = len(source.labels[split])
    assert len(list(source.images(split, range(n)))) == n
  assert len(warnings) == 1, warnings
  assert "skipped 6 file(s)" in warnings[0]
  assert (f"not decodable: 2 ({root}/train/cat/cut.jpg (TensorFlow cannot "
          "decode it:") in warnings[0]
  assert f"{root}/test/dog/cut.jpg" in warnings[0]
  # A second look at the same files decodes nothing again (cached by path,
  # size and modification time); a changed file is looked at again.
  looked = []
  real = sources._inspect
  monkeypatch.setattr(sources, "_inspect",
                      lambda path: looked.append(path) or real(path))
  again = sources.load("image_folder", str(root), image_size=8)
  assert looked == [] and list(again.paths["train"]) == list(
      source.paths["train"])
  _image(f"{root}/train/cat/cut.jpg", (32, 32), seed=3)  # Repaired.
  again = sources.load("image_folder", str(root), image_size=8)
  assert looked == [f"{root}/train/cat/cut.jpg"]
  assert f"{root}/train/cat/cut.jpg" in list(again.paths["train"])


def test_a_large_image_check_says_what_it_does(tmp_path, warnings,
                                              monkeypatch):
  """From `_CHECK_PROGRESS_FROM` files on, the image check is a stage with
  its own lines: up front, at every quarter, done; a cached second look
  says nothing."""
  for i in range(8):
    _image(str(tmp_path / f"{i}.png"), seed=i)
  paths = sorted(str(p) for p in tmp_path.glob("*.png"))
  monkeypatch.setattr(sources, "_CHECK_PROGRESS_FROM", 8)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  results = sources.inspect_files(paths, str(tmp_path))
  assert all(why is None for _, why in results.values())
  assert warnings[0].startswith("Checking 8 image file(s) of ")
  assert "0 already known" in warnings[0]
  assert [w.split(" (")[0] for w in warnings[1:4]] == [
      "Checked 2 of 8 image files", "Checked 4 of 8 image files",
      "Checked 6 of 8 image files"]
  assert warnings[4].startswith("Checked 8 image files in ")
  del warnings[:]
  sources.inspect_files(paths, str(tmp_path))  # Cached: no stage.
  assert warnings == []


def test_a_class_left_without_decodable_images_is_named(tmp_path, warnings):
  root = _untidy_folder(tmp_path)
  _truncated_jpeg(f"{root}/train/bird/0.jpg")
  with pytest.raises(ValueError, match="Class 'bird' has no decodable image "
                     "left in the train split"):
    sources.load("image_folder", str(root), image_size=8)


def test_nested_folders_belong_to_their_class_folder(tmp_path, warnings):
  root = _untidy_folder(tmp_path)
  _image(f"{root}/train/cat/2024/summer/5.png", seed=20)
  _image(f"{root}/train/cat/.thumbs/6.png", seed=21)  # Hidden: left out.
  source = sources.load("image_folder", str(root), image_size=8)
  paths = [os.path.relpath(p, root) for p in source.paths["train"]]
  assert "train/cat/2024/summer/5.png" in paths
  assert not any(".thumbs" in p for p in paths)
  assert source.labels["train"][paths.index("train/cat/2024/summer/5.png")] \
      == source.class_names.index("cat")


def test_train_images_that_are_copies_of_test_images_are_reported(
    tmp_path, warnings):
  root = _untidy_folder(tmp_path)
  with open(f"{root}/test/cat/0.jpg", "rb") as f:
    data = f.read()
  with open(f"{root}/train/dog/copy.jpg", "wb") as f:
    f.write(data)
  sources.load("image_folder", str(root), image_size=8)
  said = [w for w in warnings if "exact copies of test images" in w]
  assert len(said) == 1, warnings
  assert "1 training image(s)" in said[0]
  assert f"{root}/train/dog/copy.jpg = {root}/test/cat/0.jpg" in said[0]


_TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT,
               3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
               7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _jpeg_with_orientation(pixels, orientation, big_endian=False):
  """JPEG bytes whose EXIF says `orientation`, in either byte order."""
  if big_endian:  # TIFF header "MM", one IFD entry: SHORT 0x0112.
    tiff = (b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03"
            b"\x00\x00\x00\x01" + orientation.to_bytes(2, "big")
            + b"\x00\x00\x00\x00\x00\x00")
    exif = b"Exif\x00\x00" + tiff
  else:
    tags = Image.Exif()
    tags[0x0112] = orientation
    exif = tags.tobytes()
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, "JPEG", quality=95, exif=exif)
  return out.getvalue()


@pytest.mark.parametrize("big_endian", [False, True])
def test_exif_orientation_is_applied_as_photo_viewers_do(big_endian):
  pixels = np.random.default_rng(0).integers(0, 255, (12, 20, 3), np.uint8)
  for orientation in range(1, 9):
    data = _jpeg_with_orientation(pixels, orientation, big_endian)
    with Image.open(io.BytesIO(data)) as image:  # Pillow reads it too.
      assert image.getexif().get(0x0112) == orientation
    assert int(sources.exif_orientation(tf.constant(data))) == orientation
    stored = tf.io.decode_jpeg(data).numpy()  # As the file stores them.
    want = (np.asarray(Image.fromarray(stored).transpose(
        _TRANSPOSES[orientation])) if orientation > 1 else stored)
    np.testing.assert_array_equal(sources.decode(tf.constant(data)).numpy(),
                                  want, err_msg=str(orientation))


def test_files_without_exif_orientation_are_upright(tmp_path):
  pixels = _image(str(tmp_path / "a.png"), (9, 7))
  with open(tmp_path / "a.png", "rb") as f:
    data = f.read()
  assert int(sources.exif_orientation(tf.constant(data))) == 1
  np.testing.assert_array_equal(sources.decode(data).numpy(), pixels)
  plain = io.BytesIO()
  Image.fromarray(pixels).save(plain, "JPEG")
  for case in (plain.getvalue(), b"", b"\xff\xd8Exif\x00\x00MM"):
    assert int(sources.exif_orientation(tf.constant(case))) == 1
