"""Augmentation: standard, AutoAugment, Cutout; determinism; the throughput
benchmark tool."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from advisor_tf.data import augment, pipeline, protocols, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_augmentations_shapes_ranges_and_determinism():
  image = tf.random.stateless_uniform((32, 32, 3), (1, 2))
  seed = tf.constant([7, 9], tf.int64)
  out = augment.pad_crop_flip()(image, seed)
  assert out.shape == (32, 32, 3) and out.dtype == tf.float32
  assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
  np.testing.assert_array_equal(out, augment.pad_crop_flip()(image, seed))
  others = [augment.pad_crop_flip()(image, tf.constant([7, s], tf.int64))
            for s in range(10, 20)]
  assert any(not np.array_equal(out, o) for o in others)
  big = tf.random.stateless_uniform((256, 256, 3), (3, 4))
  crop = augment.crop_flip(224)(big, seed)
  assert crop.shape == (224, 224, 3)
  assert augment.flip()(image, seed).shape == (32, 32, 3)


def test_every_autoaugment_operation_keeps_shape_dtype_and_range():
  images = tf.random.stateless_uniform((4, 32, 32, 3), (1, 2))
  for name in augment._OPS[1:]:
    for sign in (-1.0, 1.0):
      out = augment._operation(name, images, tf.constant([0, 3, 6, 9]),
                               tf.fill([4], sign))
      assert out.shape == images.shape and out.dtype == tf.float32, name
      assert 0.0 <= float(tf.reduce_min(out)) <= float(
          tf.reduce_max(out)) <= 1.0, name


def test_pixel_operations_match_their_definitions():
  ramp = tf.reshape(tf.range(256, dtype=tf.float32) / 255.0, (1, 16, 16, 1))
  ramp = tf.tile(ramp, [1, 1, 1, 3])
  level = tf.constant([9])
  np.testing.assert_allclose(
      augment._operation("invert", ramp, level, tf.ones(1)), 1.0 - ramp)
  # Solarize at level 9: threshold 0 → every pixel inverted.
  np.testing.assert_allclose(
      augment._operation("solarize", ramp, level, tf.ones(1)), 1.0 - ramp)
  # Posterize at level 9 keeps 4 bits: 255 → 240, 17 → 16.
  poster = augment._operation("posterize", ramp, level, tf.ones(1)).numpy()
  assert round(poster[0, 15, 15, 0] * 255) == 240
  assert round(poster[0, 1, 1, 0] * 255) == 16
  # Equalize: a uniform histogram is already equal; a narrow band is spread
  # over the full range; autocontrast stretches min..max to 0..1.
  np.testing.assert_allclose(augment.equalize(ramp), ramp, atol=1.5 / 255)
  band = 0.4 + 0.2 * tf.random.stateless_uniform((1, 64, 64, 3), (0, 1))
  spread = augment.equalize(band).numpy()
  assert spread.min() < 0.02 and spread.max() > 0.98
  assert abs(spread.mean() - 0.5) < 0.05  # Flat histogram: mean ≈ ½.
  np.testing.assert_allclose(augment.autocontrast(0.4 + 0.2 * ramp), ramp,
                             atol=1e-5)
  # Translate by the maximum (≈45% of the width): grey enters on one side.
  moved = augment._operation("translate_x", ramp, level, tf.ones(1)).numpy()
  np.testing.assert_allclose(moved[0, :, -1], 128 / 255, atol=1e-6)
  np.testing.assert_allclose(moved[0, :, :2], ramp.numpy()[0, :, 7:9])


def test_cutout_erases_one_square_inside_the_image():
  images = tf.ones((64, 32, 32, 3))
  out = augment.cutout(images, tf.constant([3, 4], tf.int64), 16).numpy()
  erased = (out == 0).all(axis=-1)
  counts = erased.sum(axis=(1, 2))
  assert counts.max() == 16 * 16 and counts.min() >= 8 * 8
  for mask in erased:  # A rectangle: rows × cols.
    rows, cols = mask.any(axis=1), mask.any(axis=0)
    assert mask.sum() == rows.sum() * cols.sum()


def test_strong_augmentation_is_deterministic_in_its_seed_and_per_image():
  mean, std = sources.CIFAR_MEAN["cifar10"], sources.CIFAR_STD["cifar10"]
  pixels = tf.random.stateless_uniform((32, 32, 32, 3), (5, 6))
  images = (pixels - mean) / std
  strong = augment.strong(mean, std, use_autoaugment=True, cutout_size=16)
  seed = tf.constant([0, 11], tf.int64)
  out = strong(images, seed)
  assert out.shape == images.shape and out.dtype == tf.float32
  np.testing.assert_array_equal(out, strong(images, seed))
  assert not np.array_equal(out, strong(images, tf.constant([0, 12],
                                                            tf.int64)))
  back = out * std + mean  # Pixels stay in [0, 1] after de-normalising.
  assert -1e-5 <= float(tf.reduce_min(back)) and float(
      tf.reduce_max(back)) <= 1 + 1e-5
  changed = [not np.allclose(a, b) for a, b in zip(out, images)]
  assert all(changed)  # Cutout at least touches every image.


@pytest.mark.slow
def test_strong_augmentation_flags_reach_the_pipeline_and_refuse_gray():
  cifar = sources.array_source(
      "cifar10", {"train": (np.random.RandomState(0).randint(
          0, 255, (40, 32, 32, 3)).astype(np.uint8), np.arange(40) % 10),
                  "test": (np.zeros((10, 32, 32, 3), np.uint8),
                           np.arange(10))},
      class_names=[str(i) for i in range(10)],
      mean=sources.CIFAR_MEAN["cifar10"], std=sources.CIFAR_STD["cifar10"])
  split = protocols.apply(protocols.Protocol(noise="none", noise_rate=0.0,
                                             meta_per_class=1),
                          cifar.labels["train"], 10, seed=0)
  plain, strong = [
      next(iter(pipeline.train_and_meta(cifar, split, 8, 4, 0, augment=False,
                                        autoaugment=a, cutout=c)))[0][0]
      for a, c in ((False, 0), (True, 8))]
  assert plain.shape == strong.shape and not np.allclose(plain, strong)
  # A resumed stream augments its batches exactly as the uninterrupted one.
  stream = lambda start: pipeline.train_and_meta(  # noqa: E731
      cifar, split, 8, 4, 0, start_step=start, autoaugment=True, cutout=8)
  fourth = list(stream(0).take(4))[3][0][0]
  np.testing.assert_array_equal(next(iter(stream(3)))[0][0], fourth)
  digits = sources.load("digits")
  with pytest.raises(ValueError, match="--autoaugment needs RGB"):
    pipeline.strong_transform(digits, autoaugment=True)
  with pytest.raises(ValueError, match="--cutout=8 must be smaller"):
    pipeline.strong_transform(digits, cutout=8)


# --------------------------------------------------------------- backbones


@pytest.mark.slow
def test_augmentation_benchmark_times_every_recipe():
  proc = subprocess.run(
      [sys.executable, "-m", "advisor_tf.tools.bench_augment", "--batch_size=8",
       "--batches=2", "--repeats=1"], cwd=ROOT, capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout)
  assert set(result["images_per_s"]) == {"none", "pad_crop_flip",
                                         "autoaugment_cutout"}
  assert all(v > 0 for v in result["images_per_s"].values())
  assert result["time_vs_pad_crop_flip"]["pad_crop_flip"] == 1.0
