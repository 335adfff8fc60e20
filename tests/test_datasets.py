"""Dataset loaders: tfds CIFAR on mock data, a user's image folder and CSV,
Clothing1M and the long-tail lists, on generated files."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from advisor_tf.data import protocols, sources


def _png(path, size=12, seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(path)
  return path


def _folder(root, classes=("cat", "dog", "fox"), per_class=6,
            splits=("train", "meta", "test")):
  for s, split in enumerate(splits):
    for c, name in enumerate(classes):
      for i in range(per_class):
        _png(os.path.join(root, split, name, f"{i}.png"),
             seed=s * 10000 + c * 100 + i)
  return root


# ----------------------------------------------------------------- loaders
def test_tfds_cifar_loads_with_mock_data_and_fails_fast_without():
  with tfds.testing.mock_data(num_examples=40):
    source = sources.load("cifar100")
  assert source.num_classes == 100 and source.image_shape == (32, 32, 3)
  assert len(source.labels["train"]) == 40
  image = next(iter(source.images("train", [3]).as_numpy_iterator()))
  assert image.dtype == np.float32 and -3 < image.min() < image.max() < 3
  with pytest.raises(ValueError, match="never downloads.*--data_dir"):
    sources.load("cifar10", "/nonexistent/tfds")


def test_image_folder_with_trusted_meta_folder(tmp_path):
  source = sources.load("image_folder", str(_folder(tmp_path)), image_size=16)
  assert source.class_names == ("cat", "dog", "fox")
  assert source.meta_split == "meta" and source.image_shape == (16, 16, 3)
  split = protocols.apply(protocols.Protocol(meta_per_class=2),
                          source.labels["train"], 3, seed=0,
                          meta_labels=source.labels["meta"], meta_from="meta")
  assert split.meta_from == "meta" and len(split.train_indices) == 18
  np.testing.assert_array_equal(np.bincount(split.meta_labels), [2, 2, 2])
  image = next(iter(source.images("test", [0]).as_numpy_iterator()))
  assert image.shape == (16, 16, 3)


def test_image_folder_errors_name_the_file(tmp_path):
  root = _folder(tmp_path / "a")
  for f in glob.glob(os.path.join(root, "meta", "fox", "*")):
    os.remove(f)
  with pytest.raises(ValueError, match=r"Class 'fox' has no image in the meta"):
    sources.load("image_folder", str(root))
  root = _folder(tmp_path / "b")
  bad = os.path.join(root, "train", "dog", "3.png")
  with open(bad, "wb") as f:
    f.write(b"not an image")
  # An unreadable file is skipped (and reported), not fatal.
  source = sources.load("image_folder", str(root))
  assert bad not in list(source.paths["train"])
  assert len(source.paths["train"]) == 17
  root = _folder(tmp_path / "c")
  os.makedirs(os.path.join(root, "test", "wolf"))
  with pytest.raises(ValueError, match="wolf: class folder not in"):
    sources.load("image_folder", str(root))


def test_image_csv_errors_and_meta_test_overlap(tmp_path):
  root = _folder(tmp_path, splits=("train",))
  rows = [f"train/{c}/{i}.png,{c}" for c in ("cat", "dog", "fox")
          for i in range(6)]
  (tmp_path / "train.csv").write_text("path,label\n" + "\n".join(rows))
  (tmp_path / "test.csv").write_text("\n".join(rows[:4]))
  (tmp_path / "meta.csv").write_text("\n".join(rows[::6]))
  with pytest.raises(ValueError, match="same image is in the meta set and in"):
    sources.load("image_csv", str(root))
  (tmp_path / "meta.csv").write_text("\n".join(rows[5::6]))
  source = sources.load("image_csv", str(root))
  assert len(source.labels["meta"]) == 3
  (tmp_path / "meta.csv").write_text(rows[1] + "\ntrain/cat/2.png,wolf\n")
  with pytest.raises(ValueError, match=r"meta.csv:2: label 'wolf' is outside"):
    sources.load("image_csv", str(root))
  (tmp_path / "meta.csv").write_text(rows[1] + "\n")
  with pytest.raises(ValueError, match="class 'dog' is absent from the meta"):
    sources.load("image_csv", str(root))


def _lists(root, prefix, num_classes, per_class=1, size=12):
  for split in ("train", "val", "test"):
    lines = []
    for c in range(num_classes):
      for i in range(per_class):
        rel = f"{split}/{c}_{i}.png"
        if not os.path.exists(os.path.join(root, rel)):
          _png(os.path.join(root, rel), size=size, seed=c)
        lines.append(f"{rel} {c}")
    (root / f"{prefix}_{split}.txt").write_text("\n".join(lines))


def _clothing(root):
  images = {"noisy": 30, "clean_val": 28, "clean_test": 14}
  kv = {"noisy_label_kv.txt": [], "clean_label_kv.txt": []}
  for kind, n in images.items():
    keys = []
    for i in range(n):
      rel = f"images/{kind}_{i}.png"
      _png(os.path.join(root, rel), size=20, seed=i)
      keys.append(rel)
      table = "noisy_label_kv.txt" if kind == "noisy" else "clean_label_kv.txt"
      kv[table].append(f"{rel} {i % 14}")
    name = {"noisy": "noisy_train_key_list.txt",
            "clean_val": "clean_val_key_list.txt",
            "clean_test": "clean_test_key_list.txt"}[kind]
    (root / name).write_text("\n".join(keys))
  for name, lines in kv.items():
    (root / name).write_text("\n".join(lines))


def test_clothing1m_and_long_tail_lists(tmp_path):
  (tmp_path / "c1m").mkdir()
  _clothing(tmp_path / "c1m")
  source = sources.load("clothing1m", str(tmp_path / "c1m"), image_size=16)
  assert source.num_classes == 14 and source.meta_split == "meta"
  assert len(source.labels["train"]) == 30
  train_image = source.image_loader("train")(tf.constant(0, tf.int64))
  assert train_image.shape == (256, 256, 3)  # random 16-crops come later
  assert source.train_transform(train_image[None], tf.constant(
      [0, 1], tf.int64)).shape == (1, 16, 16, 3)
  (tmp_path / "lt").mkdir()
  _lists(tmp_path / "lt", "Places_LT", 365)
  source = sources.load("places_lt", str(tmp_path / "lt"), image_size=16)
  assert source.meta_split == "val" and source.num_classes == 365
  (tmp_path / "lt" / "Places_LT_test.txt").write_text("test/0_0.png 400")
  with pytest.raises(ValueError, match="label 400 is outside 0..364"):
    sources.load("places_lt", str(tmp_path / "lt"))


# ------------------------------------------------------------ augmentation
