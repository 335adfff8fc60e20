"""Where images and labels come from. Every source exposes the same interface.

A source holds the label arrays of its splits and makes a `tf.data.Dataset`
of images for any list of indices; the protocols (meta split, long tail,
noise) only ever touch labels and indices, so a new benchmark slots in by
implementing `Source` and registering a loader in `SOURCES`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Source:
  """A labelled image dataset with `train` and `test` splits.

  Attributes:
    name: registry name; also selects the look-alike table for `similar` flips.
    num_classes: C.
    image_shape: `(H, W, channels)` of the images `images()` yields.
    labels: split name → int64 label array.
    class_names: one name per class.
    load_images: `(split, indices) → tf.data.Dataset` of float32 images, in
      the order of `indices`.
    image_loader_fn: `split → (index tensor → float32 image tensor)`, random
      access for the resumable training pipeline.
  """
  name: str
  num_classes: int
  image_shape: tuple
  labels: dict
  class_names: tuple
  load_images: Callable[[str, np.ndarray], tf.data.Dataset]
  image_loader_fn: Callable[[str], Callable]

  def _check(self, split):
    if split not in self.labels:
      raise ValueError(f"Split {split!r} not in source {self.name!r}; allowed: "
                       f"{sorted(self.labels)}.")

  def images(self, split, indices):
    self._check(split)
    return self.load_images(split, np.asarray(indices, dtype=np.int64))

  def image_loader(self, split):
    self._check(split)
    return self.image_loader_fn(split)


def array_source(name, splits, class_names, image_shape=None):
  """A source over in-memory arrays: `splits` maps split → (images, labels)."""
  images = {k: np.asarray(v[0], dtype=np.float32) for k, v in splits.items()}
  labels = {k: np.asarray(v[1], dtype=np.int64) for k, v in splits.items()}

  def load(split, indices):
    return tf.data.Dataset.from_tensor_slices(images[split][indices])

  def loader(split):
    table = tf.constant(images[split])
    return lambda index: tf.gather(table, index)

  shape = image_shape or next(iter(images.values())).shape[1:]
  return Source(name=name, num_classes=len(class_names),
                image_shape=tuple(shape), labels=labels,
                class_names=tuple(class_names), load_images=load,
                image_loader_fn=loader)


def digits(data_dir: Optional[str] = None) -> Source:
  """scikit-learn's bundled handwritten digits: 1 797 8×8 images, 10 classes.

  Offline (the data ships inside scikit-learn). Pixel values 0–16 are scaled
  to [0, 1]. The train/test split is fixed (stratified, one third test, seed
  0) so that every run is scored on the same 599 test images; the run's seed
  drives everything inside the training split.
  """
  del data_dir
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  bunch = load_digits()
  images = (bunch.images / 16.0)[..., None].astype(np.float32)
  x_train, x_test, y_train, y_test = train_test_split(
      images, bunch.target, test_size=1 / 3, stratify=bunch.target,
      random_state=0)
  return array_source("digits", {"train": (x_train, y_train),
                                 "test": (x_test, y_test)},
                      class_names=[str(d) for d in range(10)])


SOURCES = {"digits": digits}


def load(name, data_dir=None) -> Source:
  if name not in SOURCES:
    raise ValueError(f"Unknown dataset {name!r}; allowed: {sorted(SOURCES)}.")
  return SOURCES[name](data_dir)
