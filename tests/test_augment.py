"""Augmentation: standard, AutoAugment, RandAugment, AugMix, Cutout, GridMask;
determinism; the flags and saved configs; the throughput benchmark tool."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from absl import flags

from advisor_tf import cli_flags
from advisor_tf import config as config_lib
from advisor_tf.data import augment, pipeline, protocols, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_augmentations_shapes_ranges_and_determinism():
  images = tf.random.stateless_uniform((16, 32, 32, 3), (1, 2))
  seed = tf.constant([7, 9], tf.int64)
  out = augment.pad_crop_flip()(images, seed)
  assert out.shape == (16, 32, 32, 3) and out.dtype == tf.float32
  assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
  np.testing.assert_array_equal(out, augment.pad_crop_flip()(images, seed))
  others = [augment.pad_crop_flip()(images, tf.constant([7, s], tf.int64))
            for s in range(10, 20)]
  assert any(not np.array_equal(out, o) for o in others)
  big = tf.random.stateless_uniform((2, 256, 256, 3), (3, 4))
  crop = augment.crop_flip(224)(big, seed)
  assert crop.shape == (2, 224, 224, 3)
  assert augment.flip()(images, seed).shape == (16, 32, 32, 3)


def _window_of(image, padded):
  """(row, col, mirrored) of the window of `padded` that `image` copies."""
  height, width = image.shape[:2]
  for row in range(padded.shape[0] - height + 1):
    for col in range(padded.shape[1] - width + 1):
      window = padded[row:row + height, col:col + width]
      for mirrored, candidate in ((False, window), (True, window[:, ::-1])):
        if np.array_equal(candidate, image):
          return row, col, mirrored
  return None


def test_batch_crop_and_flip_draw_per_image_and_copy_pixels_exactly():
  # One draw per image, not one per batch: every image of the batch is an
  # exact window of its padded self, mirrored or not, and the windows and
  # flips differ within the batch.
  images = tf.random.stateless_uniform((24, 8, 8, 1), (5, 6)).numpy()
  out = augment.pad_crop_flip(pad=2)(tf.constant(images),
                                     tf.constant([3, 4], tf.int64)).numpy()
  padded = np.pad(images, [[0, 0], [2, 2], [2, 2], [0, 0]])
  found = [_window_of(o, p) for o, p in zip(out, padded)]
  assert None not in found
  assert len({(r, c) for r, c, _ in found}) > 5
  assert 0 < sum(m for _, _, m in found) < len(found)
  # Every position of the 5 × 5 that fit can be drawn, none outside.
  seeds = [tf.constant([3, s], tf.int64) for s in range(30)]
  drawn = {w[:2] for s in seeds for w in map(
      _window_of, augment.pad_crop_flip(pad=2)(tf.constant(images),
                                               s).numpy(), padded)}
  assert drawn == {(r, c) for r in range(5) for c in range(5)}


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


def _thesis_cutout(images, seed, size):
  """The hand-written Cutout this project used before keras-cv's: centre
  uniform over the image, square clipped at the borders, set to 0."""
  shape = tf.shape(images)
  centres = tf.random.stateless_uniform(
      [shape[0], 2], seed, maxval=tf.int32.max, dtype=tf.int32) % shape[1:3]
  top = centres[:, 0, None, None] - size // 2
  left = centres[:, 1, None, None] - size // 2
  rows = tf.range(shape[1])[None, :, None]
  cols = tf.range(shape[2])[None, None, :]
  inside = ((rows >= top) & (rows < top + size) &
            (cols >= left) & (cols < left + size))
  return tf.where(inside[..., None], tf.zeros_like(images), images)


def test_keras_cv_cutout_agrees_in_distribution_with_the_thesis_cutout():
  """keras-cv's RandomCutout with a fixed 16-pixel square (raw, and as
  `augment.cutout` uses it) against the hand-written Cutout, over N = 4096
  images each: per-pixel erase frequency (the centre's distribution as seen
  through the clipped square) and the erased area's distribution."""
  import keras_cv
  n, size = 4096, 16
  ones = tf.ones((n, 32, 32, 1))
  thesis = _thesis_cutout(ones, tf.constant([1, 2], tf.int64), size)
  layer = keras_cv.layers.RandomCutout((0.5, 0.5), (0.5, 0.5), seed=3)
  for other in (layer(ones, training=True),
                augment.cutout(ones, tf.constant([4, 5], tf.int64), size)):
    a, b = (tf.equal(x[..., 0], 0.0).numpy() for x in (thesis, other))
    # Erase frequency of every pixel (p ≤ 0.25 at the centre): each estimate
    # has σ ≤ √(0.25·0.75/4096) ≈ 0.0068, the difference of two ≈ 0.0096;
    # 5σ ≈ 0.048 bounds all 1024 pixels with failure odds ~1024·6e-7.
    np.testing.assert_allclose(a.mean(0), b.mean(0), atol=0.048)
    # Area: 256 px when the centre lies in the 17×17 interior box
    # (p = 289/1024 under both), fewer near the borders; mean area per
    # image has σ ≈ 60/√4096 ≈ 1 px, so 6 px is 4σ of the difference.
    area_a, area_b = a.sum((1, 2)), b.sum((1, 2))
    assert area_a.max() == area_b.max() == size * size
    assert abs((area_a == 256).mean() - (area_b == 256).mean()) < 0.04
    assert abs(area_a.mean() - area_b.mean()) < 6.0
    # Same footprint: every erased region is one rectangle, ≥ 8×8.
    assert area_b.min() >= 8 * 8


@pytest.mark.parametrize("policy", [
    pytest.param(p, marks=pytest.mark.slow) if p == "augmix" else p
    for p in augment.POLICIES])  # keras-cv's AugMix: 7 s a case.
@pytest.mark.parametrize("cutout,gridmask", [
    pytest.param(0, False, marks=pytest.mark.slow), (16, True)])
def test_every_preset_keeps_shape_range_and_is_deterministic(policy, cutout,
                                                             gridmask):
  if policy == "none" and not (cutout or gridmask):
    pytest.skip("No batch transform.")
  mean, std = sources.CIFAR_MEAN["cifar10"], sources.CIFAR_STD["cifar10"]
  pixels = tf.random.stateless_uniform((8, 32, 32, 3), (5, 6))
  strong = tf.function(augment.strong(mean, std, policy=policy,
                                      cutout_size=cutout, gridmask=gridmask))
  seed = tf.constant([0, 11], tf.int64)
  out = strong((pixels - mean) / std, seed)
  assert out.shape == pixels.shape and out.dtype == tf.float32
  back = (out * std + mean).numpy()
  assert -1e-5 <= back.min() and back.max() <= 1 + 1e-5
  np.testing.assert_array_equal(out, strong((pixels - mean) / std, seed))
  other = strong((pixels - mean) / std, tf.constant([0, 12], tf.int64))
  assert not np.array_equal(out, other)
  # Per image: images of one batch are not all changed alike.
  changed = np.abs(back - pixels.numpy()).mean(axis=(1, 2, 3))
  assert changed.max() > 0 and np.ptp(changed) > 0


def test_unknown_policy_is_refused_in_one_line():
  with pytest.raises(ValueError, match="choose one of: none, autoaugment"):
    augment.strong(policy="trivialaugment")


def test_strong_augmentation_is_deterministic_in_its_seed_and_per_image():
  mean, std = sources.CIFAR_MEAN["cifar10"], sources.CIFAR_STD["cifar10"]
  pixels = tf.random.stateless_uniform((32, 32, 32, 3), (5, 6))
  images = (pixels - mean) / std
  strong = augment.strong(mean, std, policy="autoaugment", cutout_size=16)
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
  plain, strong, former = [
      next(iter(pipeline.train_and_meta(cifar, split, 8, 4, 0, augment=False,
                                        **kwargs)))[0][0]
      for kwargs in ({}, dict(policy="autoaugment", cutout=8),
                     dict(autoaugment=True, cutout=8))]
  np.testing.assert_array_equal(strong, former)  # The former keyword.
  assert plain.shape == strong.shape and not np.allclose(plain, strong)
  # A resumed stream augments its batches exactly as the uninterrupted one.
  stream = lambda start: pipeline.train_and_meta(  # noqa: E731
      cifar, split, 8, 4, 0, start_step=start, autoaugment=True, cutout=8)
  fourth = list(stream(0).take(4))[3][0][0]
  np.testing.assert_array_equal(next(iter(stream(3)))[0][0], fourth)
  for policy in ("randaugment", "augmix"):
    stream = lambda start: pipeline.train_and_meta(  # noqa: E731
        cifar, split, 8, 4, 0, start_step=start, policy=policy,
        gridmask=True)
    third = list(stream(0).take(3))[2][0][0]
    np.testing.assert_array_equal(next(iter(stream(2)))[0][0], third)
  digits = sources.load("digits")
  with pytest.raises(ValueError,
                     match="--augment_policy=autoaugment needs RGB"):
    pipeline.strong_transform(digits, "autoaugment")
  with pytest.raises(ValueError, match="--cutout=8 must be smaller"):
    pipeline.strong_transform(digits, cutout=8)


def test_former_autoaugment_flag_and_saved_configs_still_load():
  old = json.loads(config_lib.TrainConfig().to_json())
  del old["augment_policy"], old["gridmask"]
  saved = dict(old, autoaugment=True, cutout=16)
  config = config_lib.TrainConfig.from_dict(saved)
  assert config.augment_policy == "autoaugment" and config.cutout == 16
  assert config.differences(saved) == []
  assert config_lib.TrainConfig.from_dict(
      dict(old, autoaugment=False)).augment_policy == "none"
  assert config_lib.TrainConfig().differences(dict(old, autoaugment=True)) == [
      "--augment_policy: 'autoaugment' in the workdir, 'none' now"]
  cfg = os.path.join(ROOT, "flags", "cifar_lt_strong_aug.cfg")
  config = cli_flags.config_from_flagfile(cfg)
  assert (config.augment_policy, config.cutout) == ("autoaugment", 16)
  for argv, policy in ((["--autoaugment"], "autoaugment"),
                       (["--augment_policy=augmix", "--gridmask"], "augmix"),
                       (["--autoaugment", "--augment_policy=autoaugment"],
                        "autoaugment")):
    flags.FLAGS.unparse_flags()
    try:
      flags.FLAGS(["train"] + argv)
      assert cli_flags.to_config().augment_policy == policy
    finally:
      flags.FLAGS.unparse_flags()
  for argv, message in (
      (["--autoaugment", "--augment_policy=randaugment"],
       "drop one of it and --augment_policy=randaugment"),
      (["--cutout=-1"], "--cutout=-1 must be >= 0")):
    flags.FLAGS.unparse_flags()
    try:
      flags.FLAGS(["train"] + argv)
      with pytest.raises(ValueError, match=message):
        cli_flags.to_config()
    finally:
      flags.FLAGS.unparse_flags()
  with pytest.raises(ValueError, match="--augment_policy='nope' is not "
                     "allowed; choose one of: none, autoaugment, randaugment, "
                     "augmix"):
    dataclasses.replace(config_lib.TrainConfig(),
                        augment_policy="nope").validate()


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


@pytest.mark.slow  # Moved by measured duration (fast tier over budget).
def test_keras_cv_presets_build_under_op_determinism_without_a_global_seed():
  """keras-cv layers take TensorFlow's global generator unless seeded, which
  op determinism (on by default in training) refuses without a global seed;
  ours are built seeded and draw statelessly, so they run in any process."""
  code = (
      "import numpy as np, tensorflow as tf\n"
      "tf.config.experimental.enable_op_determinism()\n"
      "from advisor_tf.data import augment\n"
      "x = tf.random.stateless_uniform((4, 32, 32, 3), seed=[1, 2])\n"
      "f = augment.strong(np.zeros(3, np.float32), np.ones(3, np.float32),\n"
      "                   policy='randaugment', cutout_size=16, gridmask=True)\n"
      "a = f(x, tf.constant([1, 2], tf.int64))\n"
      "b = f(x, tf.constant([1, 2], tf.int64))\n"
      "assert a.shape == x.shape and bool(tf.reduce_all(a == b))\n"
      "print('ok')\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.strip() == "ok", (
      result.stderr[-2000:])
