"""Where images and labels come from. Every source exposes the same interface.

A source holds the label arrays of its splits and a random-access image
loader per split; the protocols (meta split, long tail, noise) only ever
touch labels and indices, so a benchmark slots in by building a `Source` and
registering a loader in `SOURCES`.

Splits: `train` and `test` always; `meta` when the data ships its own trusted
set (Clothing1M's clean validation set, a user's meta folder), `val` where
the protocol takes the meta set from validation data (ImageNet-LT, Places-LT).

Every source also carries its inference `Preprocessing`: how raw pixels
become model input. `decode` and `preprocess` below are the one
implementation of that path; the file loaders use them, and so does the
export (`advisor_tf.export`), so that a served model sees exactly what
evaluation saw.
"""

from __future__ import annotations

from concurrent import futures
import csv
import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from advisor_tf.data import augment

# What `tf.io.decode_image` reads (first frame of animated GIF / WebP).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# The same formats as Pillow names them (MPO: multi-picture camera JPEGs).
_DECODABLE_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465),
              "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616),
             "cifar100": (0.2673, 0.2564, 0.2762)}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """The inference path from pixels to model input, in order:

  1. pixels `/ 255` (uint8, or floats in [0, 255]);
  2. channels matched to the model: RGB to grey for a 1-channel model
     (`tf.image.rgb_to_grayscale`), grey tiled for a 3-channel one, alpha
     dropped;
  3. with `resize_to`, the shorter side resized to `resize_to` (bilinear),
     then a centre crop of `image_size`; without, a bilinear resize straight
     to `image_size` (no antialiasing; skipped when already that size);
  4. `(x - mean) / std` per channel when `mean` is given.

  Attributes:
    image_size: `(H, W)` of the model input.
    channels: 1 or 3, the model input's channels.
    resize_to: see step 3 (None: resize straight to `image_size`).
    mean, std: per-channel normalisation of [0, 1] pixels (None: none).
  """
  image_size: tuple
  channels: int
  resize_to: Optional[int] = None
  mean: Optional[tuple] = None
  std: Optional[tuple] = None

  def to_dict(self):
    return {"image_size": list(self.image_size), "channels": self.channels,
            "resize_to": self.resize_to,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std)}


def decode(image_bytes):
  """An encoded JPEG/PNG/BMP/GIF/WebP file (scalar tf.string) → uint8 RGB
  pixels `[h, w, 3]` (grey files tiled; the first frame of animations),
  turned upright by a JPEG's EXIF orientation as photo viewers show it
  (`exif_orientation`)."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  return apply_orientation(image, exif_orientation(image_bytes))


# How far into a JPEG its EXIF block and first directory are looked for.
_EXIF_SEARCH = 65536
_EXIF_HEAD = 4096
_EXIF_MAX_ENTRIES = 64
_ORIENTATION_TAG = 0x0112


def exif_orientation(image_bytes):
  """The EXIF orientation (1–8, TIFF tag 0x0112 of the first image
  directory) of JPEG bytes, as an int32 scalar; 1 (upright) for other
  formats, files without EXIF and unreadable values. TensorFlow ops only,
  so that the export carries it."""
  head = tf.strings.substr(image_bytes, 0, _EXIF_SEARCH)
  parts = tf.strings.split(head, "Exif\x00\x00", maxsplit=1)
  is_jpeg = tf.equal(tf.strings.substr(head, 0, 2), b"\xff\xd8")

  def read():
    tiff = tf.strings.substr(parts[-1], 0, _EXIF_HEAD)
    raw = tf.cast(tf.io.decode_raw(tiff, tf.uint8), tf.int32)
    raw = tf.pad(raw, [[0, _EXIF_HEAD - tf.size(raw)]])
    little = tf.equal(raw[0], 0x49)  # "II"; "MM" is big-endian.

    def number(offsets, width):
      offsets = tf.clip_by_value(offsets, 0, _EXIF_HEAD - width)
      places = tf.range(width)
      weights = tf.where(little, 256 ** places, 256 ** (width - 1 - places))
      values = tf.gather(raw, offsets[..., None] + places)
      return tf.reduce_sum(values * weights, axis=-1)

    directory = number(tf.constant(4), 4)
    count = number(directory, 2)
    entries = directory + 2 + 12 * tf.range(_EXIF_MAX_ENTRIES)
    found = ((number(entries, 2) == _ORIENTATION_TAG)
             & (tf.range(_EXIF_MAX_ENTRIES) < count)
             & (entries + 12 <= _EXIF_HEAD))
    value = tf.reduce_max(tf.where(found, number(entries + 8, 2), 0))
    return tf.where((value >= 1) & (value <= 8), value, 1)

  return tf.cond(is_jpeg & (tf.size(parts) == 2), read,
                 lambda: tf.constant(1, tf.int32))


def apply_orientation(image, orientation):
  """Pixels `[h, w, c]` as EXIF `orientation` (1–8) says to show them (the
  transposes of Pillow's `ImageOps.exif_transpose`)."""
  def transverse():
    return tf.image.rot90(tf.image.transpose(image), 2)
  return tf.switch_case(orientation - 1, [
      lambda: image,                                 # 1: upright
      lambda: tf.image.flip_left_right(image),       # 2: mirrored
      lambda: tf.image.rot90(image, 2),              # 3: upside down
      lambda: tf.image.flip_up_down(image),          # 4: mirrored, flipped
      lambda: tf.image.transpose(image),             # 5: transposed
      lambda: tf.image.rot90(image, 3),              # 6: turn 90° clockwise
      transverse,                                    # 7: transversed
      lambda: tf.image.rot90(image, 1),              # 8: turn 90° anti-cw
  ])


def preprocess(pixels, spec, crop=None):
  """Pixels in [0, 255] (uint8 or float; `[h, w, c]` or `[n, h, w, c]`,
  c ∈ {1, 3, 4}) → float32 model input, by `spec` (a `Preprocessing`).

  `crop` overrides the final size (the train loader of `resize_to` sources
  keeps `resize_to` squares for random crops); default `spec.image_size`.
  """
  return preprocess_unit(tf.cast(pixels, tf.float32) / 255.0, spec, crop)


def preprocess_unit(image, spec, crop=None):
  """`preprocess` from float32 pixels already scaled to [0, 1]."""
  crop = tuple(crop or spec.image_size)
  image = _match_channels(image, spec.channels)
  if spec.resize_to:
    shape = tf.cast(tf.shape(image)[-3:-1], tf.float32)
    scale = spec.resize_to / tf.reduce_min(shape)
    image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
    image = tf.image.resize_with_crop_or_pad(image, *crop)
  elif tuple(image.shape[-3:-1]) != crop:
    image = tf.image.resize(image, crop)
  image.set_shape(image.shape[:-3].concatenate(crop + (spec.channels,)))
  if spec.mean is not None:
    image = (image - tf.constant(spec.mean, tf.float32)) / tf.constant(
        spec.std, tf.float32)
  return image


def _match_channels(image, channels):
  """1-channel model: RGB → grey; 3-channel model: grey → RGB; alpha and
  any further channels dropped. Static where the channel count is known."""
  if channels not in (1, 3):
    raise ValueError(f"Models take 1 or 3 channels, not {channels}.")

  def convert(have_one):
    if channels == 3:
      return (tf.tile(image[..., :1], [1] * (image.shape.rank - 1) + [3])
              if have_one else image[..., :3])
    return image[..., :1] if have_one else tf.image.rgb_to_grayscale(
        image[..., :3])
  have = image.shape[-1]
  if have == channels:
    return image
  if have is not None:
    return convert(have == 1)
  return tf.cond(tf.shape(image)[-1] == 1, lambda: convert(True),
                 lambda: convert(False))


@dataclasses.dataclass(frozen=True)
class Source:
  """A labelled image dataset.

  Attributes:
    name: registry name; also selects the look-alike table for `similar` flips.
    num_classes: C.
    image_shape: `(H, W, channels)` of the images the loaders yield.
    labels: split name → int64 label array.
    class_names: one name per class.
    image_loader_fn: `split → (int64 index tensor → float32 image tensor)`.
    batch_loader_fn: `split → (int64 index vector → float32 images)`, or
      None where the split's images must be loaded one by one (files read
      and decoded per epoch); the pipelines then map `image_loader_fn`.
    meta_split: the split the trusted meta set comes from (`train`: taken out
      of the training data before corruption).
    train_transform: `(image, seed) → image`, the stateless augmentation of
      training images (None: none). The train split's loader yields what it
      expects (e.g. 256×256 for a random 224 crop).
    paths: split → file path per example (file datasets; None otherwise).
    pixel_mean, pixel_std: the per-channel normalisation the loaders applied
      to [0, 1] pixels (None: none), so pixel-level augmentations
      (AutoAugment, Cutout) can work on pixels.
    preprocessing: the evaluation loaders' path from pixels to model input
      (`Preprocessing`), which an export repeats.
  """
  name: str
  num_classes: int
  image_shape: tuple
  labels: dict
  class_names: tuple
  image_loader_fn: Callable[[str], Callable]
  batch_loader_fn: Optional[Callable[[str], Optional[Callable]]] = None
  meta_split: str = "train"
  train_transform: Optional[Callable] = None
  pixel_mean: Optional[tuple] = None
  pixel_std: Optional[tuple] = None
  paths: Optional[dict] = None
  preprocessing: Optional[Preprocessing] = None

  def _check(self, split):
    if split not in self.labels:
      raise ValueError(f"Split {split!r} not in source {self.name!r}; allowed: "
                       f"{sorted(self.labels)}.")

  def image_loader(self, split):
    self._check(split)
    return self.image_loader_fn(split)

  def batch_loader(self, split):
    """`indices → images` for a whole batch at once, or None (see
    `batch_loader_fn`)."""
    self._check(split)
    return self.batch_loader_fn(split) if self.batch_loader_fn else None

  def images(self, split, indices):
    """Images of `split` at `indices`, in that order, as a tf.data.Dataset."""
    loader = self.image_loader(split)
    return tf.data.Dataset.from_tensor_slices(
        np.asarray(indices, dtype=np.int64)).map(
            loader, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def array_source(name, splits, class_names, mean=None, std=None,
                 meta_split="train", train_transform=None):
  """A source over in-memory arrays: `splits` maps split → (images, labels).

  uint8 images are scaled to [0, 1], float images are taken as [0, 1]
  already; then `(x - mean) / std` when given (`preprocess`). Inference
  on uint8 pixels of any size resizes them to the arrays' size.
  """
  images = {k: np.asarray(v[0]) for k, v in splits.items()}
  labels = {k: np.asarray(v[1], dtype=np.int64).reshape(-1)
            for k, v in splits.items()}
  shape = tuple(next(iter(images.values())).shape[1:])
  if len(shape) != 3:
    raise ValueError(f"{name}: images must be [N, H, W, C] arrays, got "
                     f"[N, {', '.join(map(str, shape))}].")
  spec = Preprocessing(image_size=shape[:2], channels=shape[2],
                       mean=mean, std=std)

  def loader(split):
    table = tf.constant(images[split])
    if images[split].dtype == np.uint8:
      return lambda index: preprocess(tf.gather(table, index), spec)
    return lambda index: preprocess_unit(  # noqa: E731
        tf.cast(tf.gather(table, index), tf.float32), spec)

  return Source(name=name, num_classes=len(class_names),
                image_shape=shape, labels=labels,
                class_names=tuple(class_names), image_loader_fn=loader,
                batch_loader_fn=loader,  # It gathers any shape of index.
                meta_split=meta_split, train_transform=train_transform,
                pixel_mean=mean, pixel_std=std, preprocessing=spec)


# Decoded images a file source keeps in memory (MiB, all its splits
# together; the environment's ADVISOR_TF_DECODED_CACHE_MIB overrides, 0 turns
# it off): within it, each split's files are read and decoded once per
# process instead of once per epoch; above, read from the files every time.
DECODED_CACHE_MIB = 1024
# From this many images, decoding them into memory is said (a line).
_DECODE_SAY_FROM = 2000


def decoded_cache_bytes():
  value = os.environ.get("ADVISOR_TF_DECODED_CACHE_MIB")
  try:
    mib = DECODED_CACHE_MIB if value is None else float(value)
  except ValueError:
    raise ValueError(f"ADVISOR_TF_DECODED_CACHE_MIB={value!r}: give MiB, a "
                     "number (0 turns the cache off).") from None
  return int(mib * 2**20)


def decode_into_memory(what, count, load, shape, used=0):
  """`load` (index → float32 image of `shape`) of every index below
  `count`, decoded once in parallel into one in-memory variable (gathered
  by the pipelines without a copy each); None when it would take the
  cache past `decoded_cache_bytes()` (with `used` bytes taken already), or
  under a distribution strategy (a multi-worker input pipeline is
  rewritten per worker, which a captured variable does not survive), so
  the caller reads the files every time."""
  size = count * int(np.prod(shape)) * 4
  if (not count or used + size > decoded_cache_bytes()
      or tf.distribute.has_strategy() or os.environ.get("TF_CONFIG")):
    return None
  started = time.time()
  if count >= _DECODE_SAY_FROM:
    logging.warning("Decoding the %d images of %s once into memory (%.0f MiB;"
                    " ADVISOR_TF_DECODED_CACHE_MIB bounds it).", count, what,
                    size / 2**20)
  with tf.init_scope():  # Eager, whatever traces the first call.
    images = tf.Variable(tf.zeros((count, *shape)), trainable=False,
                         name="decoded_images")
    at = 0
    # Filled in place, batch by batch: the images' size once at the peak.
    for batch in tf.data.Dataset.range(count).map(
        load, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True).batch(512).prefetch(1):
      images.scatter_update(tf.IndexedSlices(
          batch, tf.range(at, at + len(batch), dtype=tf.int64)))
      at += len(batch)
  if count >= _DECODE_SAY_FROM:
    logging.warning("Decoded %d images in %.0f s.", count,
                    time.time() - started)
  return images


def file_source(name, splits, class_names, image_size, mean=IMAGENET_MEAN,
                std=IMAGENET_STD, meta_split="train", resize_to=None):
  """A source over image files: `splits` maps split → (paths, labels).

  Images are decoded as RGB, resized (shorter side to `resize_to`, then a
  centre crop of `image_size`; or straight to `image_size`), scaled to
  [0, 1] and normalised. With `resize_to`, training images keep a
  `resize_to` square centre crop and are randomly cropped to `image_size`
  (and flipped) by the train transform; with no `resize_to`, they are
  randomly flipped.
  """
  paths = {k: np.asarray(v[0]) for k, v in splits.items()}
  labels = {k: np.asarray(v[1], dtype=np.int64) for k, v in splits.items()}
  height, width = image_size
  spec = Preprocessing(image_size=(height, width), channels=3,
                       resize_to=resize_to, mean=mean, std=std)

  decoded = {}  # split → its images as the loader yields them, in memory.

  def loader(split):
    table = tf.constant(paths[split])
    crop = (resize_to, resize_to) if resize_to and split == "train" else None

    def from_file(index):
      return preprocess(decode(tf.io.read_file(tf.gather(table, index))),
                        spec, crop)

    if split not in decoded:
      side = crop or (height, width)
      decoded[split] = decode_into_memory(
          f"{name} {split}", len(paths[split]), from_file,
          (*side, 3), sum(4 * v.shape.num_elements() for v in decoded.values()
                        if v is not None))
    if decoded[split] is None:
      return from_file
    return lambda index, images=decoded[split]: tf.gather(images, index)

  def batch_loader(split):  # Decoded in memory: a batch is one gather.
    load = loader(split)
    return None if decoded[split] is None else load

  transform = (augment.crop_flip(height) if resize_to
               else augment.flip())
  return Source(name=name, num_classes=len(class_names),
                image_shape=(height, width, 3), labels=labels,
                class_names=tuple(class_names), image_loader_fn=loader,
                batch_loader_fn=batch_loader, meta_split=meta_split,
                train_transform=transform,
                pixel_mean=mean, pixel_std=std, paths=paths,
                preprocessing=spec)


# ----------------------------------------------------------------- datasets
def digits(data_dir: Optional[str] = None, **_) -> Source:
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


# Zalando's Fashion-MNIST: the four original IDX files, as Debian's
# `dataset-fashion-mnist` package installs them (also Keras' cache layout).
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress",
                         "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte",
                                 "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte",
                                "t10k-labels-idx1-ubyte")}
# Per-pixel statistics of the 60 000 training images (scaled to [0, 1]).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


def read_idx(path):
  """An IDX file (gzipped or not) as a numpy array: uint8 data, big-endian
  dimensions, as LeCun's MNIST format defines it."""
  import gzip
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic "
                     f"{data[:4].hex() or 'missing'}; expected 000008xx).")
  rank = data[3]
  header = 4 + 4 * rank
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                for i in range(rank))
  size = int(np.prod(shape)) if shape else 0
  if len(data) - header != size:
    raise ValueError(f"{path}: the header says {'×'.join(map(str, shape))} "
                     f"= {size} bytes of data, the file holds "
                     f"{len(data) - header}; it is truncated or damaged.")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _idx_path(folder, stem):
  for name in (stem + ".gz", stem):
    if os.path.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  return None


def fashion_mnist(data_dir=None, **_):
  """Zalando's Fashion-MNIST: 60 000 training and 10 000 test photographs
  of clothing, 28×28 grayscale, 10 classes (the official split).

  Read from the four original IDX files (gzipped or not) in `data_dir`
  (default: `FASHION_MNIST_DIR`, where `apt-get install
  dataset-fashion-mnist` puts them; Keras' `~/.keras/datasets/
  fashion-mnist` works too); nothing is downloaded. Pixels are scaled to
  [0, 1] and normalised by the training set's mean and std; training images
  are randomly shifted (2-pixel padding, random crop) and flipped.
  """
  folder = data_dir or FASHION_MNIST_DIR
  missing = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair
             if _idx_path(folder, stem) is None]
  if missing:
    raise ValueError(
        f"--dataset=fashion_mnist: {', '.join(m + '.gz' for m in missing)} "
        f"not found in --data_dir={folder}; install them with `apt-get "
        "install dataset-fashion-mnist` (into "
        f"{FASHION_MNIST_DIR}) or point --data_dir at a folder holding the "
        "four IDX files.")
  splits = {}
  for split, (images, labels) in FASHION_MNIST_FILES.items():
    x = read_idx(_idx_path(folder, images))
    y = read_idx(_idx_path(folder, labels)).astype(np.int64)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
      raise ValueError(f"--dataset=fashion_mnist: {folder} holds {split} "
                       f"images of shape {x.shape} and labels of shape "
                       f"{y.shape}; expected [N, H, W] and [N].")
    if len(y) and y.max() >= len(FASHION_MNIST_CLASSES):
      raise ValueError(f"--dataset=fashion_mnist: {split} labels reach "
                       f"{y.max()}; Fashion-MNIST has 10 classes (0..9).")
    splits[split] = (x[..., None], y)
  return array_source("fashion_mnist", splits,
                      class_names=FASHION_MNIST_CLASSES,
                      mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
                      train_transform=augment.pad_crop_flip(pad=2))


def _tfds(name, data_dir):
  """CIFAR-10/100 through tensorflow-datasets, never downloading."""
  import tensorflow_datasets as tfds
  try:
    splits = tfds.load(name, split=["train", "test"], data_dir=data_dir,
                       download=False, as_supervised=True)
    (x_train, y_train), (x_test, y_test) = [_to_arrays(d) for d in splits]
    names = tfds.builder(name, data_dir=data_dir).info.features[
        "label"].names
  except (AssertionError, tfds.core.registered.DatasetNotFoundError,
          FileNotFoundError, tf.errors.NotFoundError) as e:
    raise ValueError(
        f"--dataset={name}: no prepared tfds data under --data_dir="
        f"{data_dir or '~/tensorflow_datasets'} and this tool never "
        f"downloads. On a machine with internet run `python -c \"import "
        f"tensorflow_datasets as tfds; tfds.load('{name}', "
        f"data_dir='DIR')\"` and copy DIR/{name} here, then pass "
        f"--data_dir=DIR. ({type(e).__name__}: {str(e)[:200]})") from None
  return array_source(name, {"train": (x_train, y_train),
                             "test": (x_test, y_test)}, class_names=names,
                      mean=CIFAR_MEAN[name], std=CIFAR_STD[name],
                      train_transform=augment.pad_crop_flip())


def _to_arrays(dataset):
  images, labels = [], []
  for x, y in dataset.batch(4096).as_numpy_iterator():
    images.append(x)
    labels.append(y)
  return np.concatenate(images), np.concatenate(labels)


def cifar10(data_dir=None, **_):
  return _tfds("cifar10", data_dir)


def cifar100(data_dir=None, **_):
  return _tfds("cifar100", data_dir)


def _require_dir(flag, path, needed_by=None):
  if not path and needed_by:
    raise ValueError(f"--dataset={needed_by} reads its images from "
                     f"--{flag}=DIR, which is not given.")
  if not path or not os.path.isdir(path):
    raise ValueError(f"--{flag}={path!r} is not a directory.")


def _read_list(path, root, what):
  """`relative/path label` lines → (absolute paths, labels)."""
  if not os.path.isfile(path):
    raise ValueError(f"{what}: list file {path} is missing.")
  paths, labels = [], []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
        raise ValueError(f"{path}:{number}: expected 'path label', got "
                         f"{line.strip()!r}.")
      paths.append(os.path.join(root, parts[0]))
      labels.append(int(parts[1]))
  return np.asarray(paths), np.asarray(labels, np.int64)


def clothing1m(data_dir=None, image_size=224, **_):
  """Clothing1M from its manual download: `noisy_label_kv.txt`,
  `clean_label_kv.txt` (`path label`) and the key lists
  `noisy_train_key_list.txt`, `clean_val_key_list.txt` (the meta set),
  `clean_test_key_list.txt`, all in `--data_dir` beside `images/`.
  """
  _require_dir("data_dir", data_dir, "clothing1m")
  kv = {}
  for name in ("noisy_label_kv.txt", "clean_label_kv.txt"):
    paths, labels = _read_list(os.path.join(data_dir, name), data_dir,
                               "Clothing1M")
    kv[name] = dict(zip(paths, labels))
  splits = {}
  for split, keys, table in (("train", "noisy_train_key_list.txt",
                              "noisy_label_kv.txt"),
                             ("meta", "clean_val_key_list.txt",
                              "clean_label_kv.txt"),
                             ("test", "clean_test_key_list.txt",
                              "clean_label_kv.txt")):
    list_path = os.path.join(data_dir, keys)
    if not os.path.isfile(list_path):
      raise ValueError(f"Clothing1M: key list {list_path} is missing.")
    with open(list_path) as f:
      files = [os.path.join(data_dir, line.strip()) for line in f
               if line.strip()]
    missing = [p for p in files if p not in kv[table]]
    if missing:
      raise ValueError(f"Clothing1M: {missing[0]} (from {keys}) has no label "
                       f"in {table}.")
    splits[split] = (np.asarray(files),
                     np.asarray([kv[table][p] for p in files]))
  names = ("T-shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie",
           "Windbreaker", "Jacket", "Downcoat", "Suit", "Shawl", "Dress",
           "Vest", "Underwear")
  return file_source("clothing1m", splits, names, (image_size, image_size),
                     meta_split="meta", resize_to=256)


def _long_tail_lists(prefix, name, num_classes, data_dir, image_size):
  _require_dir("data_dir", data_dir, name)
  splits = {split: _read_list(os.path.join(data_dir, f"{prefix}_{split}.txt"),
                              data_dir, name)
            for split in ("train", "val", "test")}
  for split, (_, labels) in splits.items():
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
      raise ValueError(f"{prefix}_{split}.txt: label {bad[0]} is outside "
                       f"0..{num_classes - 1}.")
  return file_source(name, splits, [str(c) for c in range(num_classes)],
                     (image_size, image_size), meta_split="val",
                     resize_to=int(image_size * 256 / 224))


def imagenet_lt(data_dir=None, image_size=224, **_):
  """ImageNet-LT: `ImageNet_LT_{train,val,test}.txt` (`path label`) with the
  ImageNet images under `--data_dir`; the meta set is taken from val."""
  return _long_tail_lists("ImageNet_LT", "imagenet_lt", 1000, data_dir,
                          image_size)


def places_lt(data_dir=None, image_size=224, **_):
  """Places-LT: `Places_LT_{train,val,test}.txt` with the Places-365 images
  under `--data_dir`; the meta set is taken from val."""
  return _long_tail_lists("Places_LT", "places_lt", 365, data_dir, image_size)


# ---------------------------------------------------------------- user data
# A user's folder holds more than images: notebook checkpoints, .DS_Store,
# notes, the odd broken download. Hidden names are never classes nor images;
# every other file that cannot be used is skipped, counted and reported once.
_SHOWN_PER_REASON = 3


def _hidden(name):
  return name.startswith(".") and name not in (".", "..")


class _Skipped:
  """Files left out of a user dataset, by reason, for one warning."""

  def __init__(self):
    self.by_reason = {}

  def add(self, reason, path):
    self.by_reason.setdefault(reason, []).append(path)

  def summary(self):
    parts = []
    for reason, paths in self.by_reason.items():
      shown = ", ".join(paths[:_SHOWN_PER_REASON])
      more = (f", … {len(paths) - _SHOWN_PER_REASON} more"
              if len(paths) > _SHOWN_PER_REASON else "")
      parts.append(f"{reason}: {len(paths)} ({shown}{more})")
    return "; ".join(parts)

  def warn(self, where):
    if self.by_reason:
      total = sum(len(p) for p in self.by_reason.values())
      logging.warning("%s: skipped %d file(s) that cannot be used — %s.",
                      where, total, self.summary())


def _unreadable(path):
  """Why `path` is not an image TensorFlow decodes (None: it is one)."""
  from PIL import Image
  try:
    with Image.open(path) as image:
      kind = image.format
      image.verify()
  except Exception as e:  # noqa: BLE001 — any unreadable file is reported.
    return f"{type(e).__name__}: {str(e).replace(f' {path!r}', '')}"
  if kind not in _DECODABLE_FORMATS:
    return f"{kind} data, which TensorFlow does not decode"
  return None


def _usable(path, skipped, hidden=None):
  """Whether `path` is a readable image; if not, records why in `skipped`.
  `hidden`: whether the file counts as hidden (default: its name does)."""
  if _hidden(os.path.basename(path)) if hidden is None else hidden:
    skipped.add("hidden", path)
  elif os.path.isdir(path):
    skipped.add("folder inside a class folder", path)
  elif not path.lower().endswith(IMAGE_EXTENSIONS):
    skipped.add("unsupported extension", path)
  elif not os.path.isfile(path):
    skipped.add("missing", path)
  else:
    reason = _unreadable(path)
    if reason is None:
      return True
    skipped.add("unreadable", f"{path} ({reason})")
  return False


def _walk(folder):
  """Every file under a class folder, sub-folders included (the class is
  the top folder, as `advisor-predict` walks folders too), in a stable
  order; hidden sub-folders are left out, symbolic links to folders are not
  followed (no loops)."""
  files = []
  for here, dirs, names in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not _hidden(d))
    files.extend(os.path.join(here, n) for n in sorted(names))
    files.extend(os.path.join(here, d) for d in dirs
                 if os.path.islink(os.path.join(here, d)))
  return files


def _class_folders(root):
  return sorted(d for d in os.listdir(root)
                if not _hidden(d) and os.path.isdir(os.path.join(root, d)))


def _folder_split(root, class_names, what, skipped):
  paths, labels = [], []
  unknown = sorted(set(_class_folders(root)) - set(class_names))
  if unknown:
    raise ValueError(f"{os.path.join(root, unknown[0])}: class folder not in "
                     f"the training classes {list(class_names)} ({what}).")
  for label, name in enumerate(class_names):
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
      if what == "meta":
        raise ValueError(f"Class {name!r} has no image in the meta set "
                         f"({folder}); every class needs trusted examples.")
      continue
    files = _walk(folder)
    here = _Skipped()
    files = [f for f in files if _usable(f, here)]
    for reason, items in here.by_reason.items():
      for item in items:
        skipped.add(reason, item)
    if not files:
      why = f" ({here.summary()})" if here.by_reason else ""
      if what == "meta":
        raise ValueError(f"Class {name!r} has no image in the meta set "
                         f"({folder}){why}; every class needs trusted "
                         "examples.")
      raise ValueError(f"{folder}: class folder with no usable image "
                       f"({what} split){why}.")
    paths.extend(files)
    labels.extend([label] * len(files))
  return paths, labels


def image_folder(data_dir=None, image_size=32, **_):
  """Your own images: `--data_dir` holds `train/`, `test/` and (optional)
  `meta/`, each with one sub-folder per class (train's sub-folders define the
  classes). Without `meta/`, the meta set is taken out of train.

  Hidden files and folders (`.DS_Store`, `.ipynb_checkpoints`) are ignored;
  other files that are not readable JPEG/PNG/BMP/GIF/WebP images are skipped
  and reported in one warning. A class folder left with no image is an error.
  """
  _require_dir("data_dir", data_dir, "image_folder (a folder holding "
               "train/ and test/, one sub-folder per class)")
  train_root = os.path.join(data_dir, "train")
  _require_dir("data_dir (its train/ folder)", train_root)
  class_names = _class_folders(train_root)
  if len(class_names) < 2:
    raise ValueError(f"{train_root}: needs at least two class folders.")
  skipped = _Skipped()
  splits = _user_splits(lambda split: os.path.join(data_dir, split),
                        os.path.isdir,
                        lambda root, split: _folder_split(root, class_names,
                                                          split, skipped))
  splits = _decodable(splits, class_names, skipped, data_dir)
  skipped.warn(f"--data_dir={data_dir}")
  return _checked_file_source("image_folder", splits, class_names, image_size)


def _user_splits(location, exists, read):
  """train, test (both required) and meta (optional) of a user dataset."""
  splits = {}
  for split in ("train", "test", "meta"):
    where = location(split)
    if not exists(where):
      if split != "meta":
        raise ValueError(f"{where}: the {split} split is missing.")
      continue
    splits[split] = read(where, split)
  return splits


def _read_csv(path, class_names, what, skipped):
  paths, labels, listed = [], [], set()
  root = os.path.dirname(os.path.abspath(path))
  with open(path, newline="") as f:
    for number, row in enumerate(csv.reader(f), 1):
      if not row or (number == 1 and row[:2] == ["path", "label"]):
        continue
      if len(row) != 2:
        raise ValueError(f"{path}:{number}: expected 'path,label', got {row}.")
      file, label = row[0].strip(), row[1].strip()
      if label not in class_names:
        raise ValueError(f"{path}:{number}: label {label!r} is outside the "
                         f"class list {list(class_names)}.")
      listed.add(label)
      hidden = any(_hidden(part) for part in file.replace("\\", "/").split("/"))
      if _usable(os.path.join(root, file), skipped, hidden):
        paths.append(os.path.join(root, file))
        labels.append(class_names.index(label))
  if what in ("train", "meta"):
    unusable = sorted(listed - {class_names[c] for c in labels})
    if unusable:
      raise ValueError(f"{path}: class {unusable[0]!r} has no usable image "
                       f"({skipped.summary()}).")
  if what == "meta":
    absent = sorted(set(range(len(class_names))) - set(labels))
    if absent:
      raise ValueError(f"{path}: class {class_names[absent[0]]!r} is absent "
                       "from the meta set; every class needs trusted "
                       "examples.")
  return paths, labels


def image_csv(data_dir=None, image_size=32, **_):
  """Your own images listed in CSVs of `path,label` (paths relative to the
  CSV): `--data_dir` holds `train.csv`, `test.csv`, optional `meta.csv` and
  optional `classes.txt` (one class per line; default: the sorted labels of
  train.csv). Listed files that are hidden, missing or not readable images
  are skipped and reported in one warning."""
  _require_dir("data_dir", data_dir, "image_csv (a folder holding "
               "train.csv and test.csv)")
  train_csv = os.path.join(data_dir, "train.csv")
  if not os.path.isfile(train_csv):
    raise ValueError(f"{train_csv} is missing.")
  classes_txt = os.path.join(data_dir, "classes.txt")
  if os.path.isfile(classes_txt):
    with open(classes_txt) as f:
      class_names = [line.strip() for line in f if line.strip()]
  else:
    with open(train_csv, newline="") as f:
      class_names = sorted({row[1].strip() for row in csv.reader(f)
                            if len(row) == 2 and row[:2] != ["path", "label"]})
  skipped = _Skipped()
  splits = _user_splits(lambda split: os.path.join(data_dir, f"{split}.csv"),
                        os.path.isfile,
                        lambda path, split: _read_csv(path, class_names,
                                                      split, skipped))
  splits = _decodable(splits, class_names, skipped, data_dir)
  skipped.warn(f"--data_dir={data_dir}")
  return _checked_file_source("image_csv", splits, class_names, image_size)


_CHECK_CACHE = "image_check"
_CHECK_WORKERS = 16


def _cache_path(data_dir):
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  key = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:24]
  return os.path.join(root, "advisor_tf", _CHECK_CACHE, key + ".json")


_decode_graph = None


def _decode_one(data):
  """`decode` of one file's bytes as a traced function: the check's many
  small decodes cost a tenth of running its ops eagerly one by one."""
  global _decode_graph
  if _decode_graph is None:
    _decode_graph = tf.function(
        decode, input_signature=[tf.TensorSpec([], tf.string)])
  return _decode_graph(tf.constant(data))


def _decode_error(error):
  """The reason in a decode error's message, without TensorFlow's frame."""
  text = str(error)
  if "Graph execution error" in text:  # The traced function's error.
    return text.split("\n\t [[")[0].rsplit("\n\n", 1)[-1].strip()
  return text.split("[Op:")[0].split("}}")[-1].strip()


def _inspect(path):
  """`(sha1 of the bytes, None)` for a file `decode` reads, else
  `(sha1, why not)`: the same decode training and the export run."""
  with open(path, "rb") as f:
    data = f.read()
  digest = hashlib.sha1(data).hexdigest()
  try:
    _decode_one(data)
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
    return digest, f"TensorFlow cannot decode it: {_decode_error(e)}"
  return digest, None


# From this many files to check, the check says what it does.
_CHECK_PROGRESS_FROM = 2000


def inspect_files(paths, data_dir):
  """`{path: (sha1, None or why it cannot be decoded)}` for image files,
  each decoded as training decodes it (`decode`), in parallel; cached under
  ~/.cache/advisor_tf (by path, size and modification time), so a second
  run over the same folder reads nothing again. Never writes `data_dir`."""
  cache_file = _cache_path(data_dir)
  try:
    with open(cache_file) as f:
      cache = json.load(f)
  except (OSError, ValueError):
    cache = {}
  results, todo = {}, []
  for path in paths:
    try:
      stat = os.stat(path)
    except OSError as e:
      results[path] = (None, f"{type(e).__name__}: {e.strerror}")
      continue
    stamp = [stat.st_size, stat.st_mtime_ns]
    entry = cache.get(path)
    if entry and entry[0] == stamp:
      results[path] = tuple(entry[1:])
    else:
      todo.append((path, stamp))
  if todo:
    # A stage outside fit(): on a large folder, said up front, at every
    # quarter and at the end (a line each, terminal or not).
    loud = len(todo) >= _CHECK_PROGRESS_FROM
    start = time.time()
    if loud:
      logging.warning("Checking %d image file(s) of %s (each decoded once; "
                      "cached for the next run, %d already known).",
                      len(todo), data_dir, len(paths) - len(todo))
    with futures.ThreadPoolExecutor(_CHECK_WORKERS) as pool:
      for done, ((path, stamp), result) in enumerate(zip(
          todo, pool.map(lambda item: _inspect(item[0]), todo)), 1):
        results[path] = result
        cache[path] = [stamp, *result]
        if loud and done < len(todo) and done % -(-len(todo) // 4) == 0:
          logging.warning("Checked %d of %d image files (%.0f s).", done,
                          len(todo), time.time() - start)
    if loud:
      logging.warning("Checked %d image files in %.0f s.", len(todo),
                      time.time() - start)
    try:  # A cache that cannot be written only costs time next run.
      os.makedirs(os.path.dirname(cache_file), exist_ok=True)
      tmp = f"{cache_file}.{os.getpid()}.tmp"
      with open(tmp, "w") as f:
        json.dump(cache, f)
      os.replace(tmp, cache_file)
    except OSError:
      pass
  return results


def _decodable(splits, class_names, skipped, data_dir):
  """The splits without the files TensorFlow cannot decode (a truncated
  JPEG passes Pillow's `verify()`), each recorded in `skipped`; a class
  left without images is an error naming it. Warns about exact duplicates
  (same bytes) between train and test, which inflate test accuracy."""
  every = [p for paths, _ in splits.values() for p in paths]
  checked = inspect_files(every, data_dir)
  kept = {}
  for split, (paths, labels) in splits.items():
    good = [checked[p][1] is None for p in paths]
    for path, ok in zip(paths, good):
      if not ok:
        skipped.add("not decodable", f"{path} ({checked[path][1]})")
    before = set(labels)
    paths = [p for p, ok in zip(paths, good) if ok]
    labels = [c for c, ok in zip(labels, good) if ok]
    emptied = sorted(before - set(labels))
    if emptied and split in ("train", "meta"):
      raise ValueError(
          f"Class {class_names[emptied[0]]!r} has no decodable image left in "
          f"the {split} split ({skipped.summary()}).")
    kept[split] = (paths, labels)
  test = {checked[p][0]: p for p in kept.get("test", ([], []))[0]}
  for path in kept.get("meta", ([], []))[0]:  # The same bytes in both sets.
    if checked[path][0] in test:
      raise ValueError(f"{path}: the same image is in the meta set and in "
                       f"the test set ({test[checked[path][0]]}).")
  if "train" in kept:
    both = [(p, test[checked[p][0]]) for p in kept["train"][0]
            if checked[p][0] in test]
    if both:
      shown = "; ".join(f"{a} = {b}" for a, b in both[:_SHOWN_PER_REASON])
      logging.warning(
          "--data_dir=%s: %d training image(s) are exact copies of test "
          "images (same bytes), which makes the test accuracy optimistic: "
          "%s%s.", data_dir, len(both), shown,
          f"; … {len(both) - _SHOWN_PER_REASON} more"
          if len(both) > _SHOWN_PER_REASON else "")
  return kept


def _checked_file_source(name, splits, class_names, image_size):
  """A file source over splits whose files `_usable` and `_decodable` have
  checked."""
  for split, (paths, _) in splits.items():
    if not paths:
      raise ValueError(f"The {split} split of --data_dir has no images.")
  return file_source(name, splits, class_names, (image_size, image_size),
                     meta_split="meta" if "meta" in splits else "train")


SOURCES = {"digits": digits, "fashion_mnist": fashion_mnist,
           "cifar10": cifar10, "cifar100": cifar100,
           "clothing1m": clothing1m, "imagenet_lt": imagenet_lt,
           "places_lt": places_lt, "image_folder": image_folder,
           "image_csv": image_csv}


def load(name, data_dir=None, image_size=None) -> Source:
  if name not in SOURCES:
    raise ValueError(f"--dataset={name!r} is not allowed; choose one of: "
                     f"{', '.join(sorted(SOURCES))}.")
  kwargs = {"image_size": image_size} if image_size else {}
  return SOURCES[name](data_dir, **kwargs)
