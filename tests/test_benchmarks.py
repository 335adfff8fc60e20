"""Benchmark datasets, user data, augmentation, backbones, baselines,
evaluation and every flagfile on generated data."""

import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from PIL import Image

from advisor_tf import backbones, cli_flags, evaluation, losses, trainer
from advisor_tf.data import augment, pipeline, protocols, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  with pytest.raises(ValueError, match=f"{bad}: not a readable image"):
    sources.load("image_folder", str(root))
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
  assert source.train_transform(train_image, tf.constant([0, 1],
                                                         tf.int64)).shape == (
                                                             16, 16, 3)
  (tmp_path / "lt").mkdir()
  _lists(tmp_path / "lt", "Places_LT", 365)
  source = sources.load("places_lt", str(tmp_path / "lt"), image_size=16)
  assert source.meta_split == "val" and source.num_classes == 365
  (tmp_path / "lt" / "Places_LT_test.txt").write_text("test/0_0.png 400")
  with pytest.raises(ValueError, match="label 400 is outside 0..364"):
    sources.load("places_lt", str(tmp_path / "lt"))


# ------------------------------------------------------------ augmentation
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
@pytest.mark.parametrize("name,shape,feature", [
    ("small_cnn", (8, 8, 1), 128), ("resnet32", (32, 32, 3), 64),
    ("resnet18", (32, 32, 3), 512), ("resnet10", (64, 64, 3), 512),
    ("resnet50", (32, 32, 3), 2048)])
def test_backbone_feature_sizes(name, shape, feature):
  body, head = backbones.build_classifier(name, shape, 10)
  assert body.output_shape == (None, feature)
  assert head.output_shape == (None, 10)
  if name == "resnet32":  # He et al.'s CIFAR ResNet-32: 0.46 M parameters.
    total = body.count_params() + head.count_params()
    assert 0.45e6 < total < 0.475e6
  assert any(l.name.startswith(backbones.LAST_STAGE[name])
             for l in body.layers)


def test_resnet152_and_pretrained_weights_errors():
  body, _ = backbones.build_classifier("resnet152", (32, 32, 3), 5)
  assert body.output_shape == (None, 2048)
  with pytest.raises(ValueError, match="file not found"):
    backbones.build_classifier("resnet50", (32, 32, 3), 5,
                               weights="/nonexistent.h5")
  with pytest.raises(ValueError, match="--init_checkpoint"):
    backbones.build_classifier("resnet32", (32, 32, 3), 5, weights="x.h5")


# --------------------------------------------------------------- baselines
def test_balanced_softmax_hand_value():
  # logits 0, counts (1, 3): p_0 = 1/(1+3) → loss ln 4.
  got = losses.balanced_softmax(np.array([0]), np.zeros((1, 2)),
                                np.array([1, 3]))
  np.testing.assert_allclose(got, [np.log(4.0)], rtol=1e-6)


def test_equalization_softmax_hand_value():
  # counts (90, 10): class 1 is rare below λ = 0.2, so for a class-0 example
  # its logit is dropped from the denominator: loss = −z_0 + log e^{z_0} = 0.
  logits = np.array([[1.0, 3.0]])
  got = losses.equalization_softmax(np.array([0]), logits, [90, 10], 0.2)
  np.testing.assert_allclose(got, [0.0], atol=1e-6)
  # For the rare class's own example nothing is dropped: plain CE.
  got = losses.equalization_softmax(np.array([1]), logits, [90, 10], 0.2)
  np.testing.assert_allclose(got, [np.log(1 + np.exp(-2.0))], rtol=1e-6)


def test_focal_hand_value():
  # p_y = 1/2 with γ = 2: (1/2)² · ln 2.
  got = losses.focal(np.array([1]), np.zeros((1, 2)), 2.0)
  np.testing.assert_allclose(got, [0.25 * np.log(2.0)], rtol=1e-6)


# -------------------------------------------------------------- evaluation
def test_evaluation_report_hand_values():
  logits = np.array([[3, 2, 1], [1, 3, 2], [1, 2, 3], [3, 1, 2]], float)
  labels = np.array([0, 2, 1, 1])
  report = evaluation.report(logits, labels, 3, train_counts=[500, 50, 5])
  # Predictions (argmax): 0, 1, 2, 0 against labels 0, 2, 1, 1.
  assert report["top1"] == 25.0 and report["top3"] == 100.0
  assert evaluation.report(logits, labels, 3, ks=(2,))["top2"] == 75.0
  assert report["per_class_accuracy"] == [100.0, 0.0, 0.0]
  assert report["many_shot"] == 100.0 and report["medium_shot"] == 0.0
  assert report["few_shot"] == 0.0
  assert report["confusion_matrix"] == [[1, 0, 0], [1, 0, 1], [0, 1, 0]]


# ------------------------------------------------ flagfiles on mock data
FLAGFILES = sorted(os.path.basename(p) for p in
                   glob.glob(os.path.join(ROOT, "flags", "*.cfg")))


@pytest.mark.parametrize("flagfile", FLAGFILES)
def test_every_flagfile_parses_and_runs_two_steps(flagfile, tmp_path):
  argv = ["train", f"--flagfile={os.path.join(ROOT, 'flags', flagfile)}",
          f"--workdir={tmp_path / 'run'}", "--train_steps=2", "--epochs=1",
          "--lr_decay_epochs=1", "--batch_size=4", "--meta_batch_size=4",
          "--noexport", "--verbose=0", "--embedding_size=8",
          "--nodeterministic"]
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  try:
    config = cli_flags.to_config()
  finally:
    flags.FLAGS.unparse_flags()
  data = tmp_path / "data"
  data.mkdir()
  heavy = config.backbone in ("resnet10", "resnet50", "resnet152")
  overrides = {"lr_decay_steps": (1,)} if config.lr_schedule == "step" else {}
  if heavy:  # Backbones are covered above; keep two CPU steps short.
    overrides.update(backbone="small_cnn", image_size=16)
  if config.dataset == "clothing1m":
    _clothing(data)
  elif config.dataset == "imagenet_lt":
    _lists(data, "ImageNet_LT", 1000)
    overrides.update(meta_per_class=1)
  elif config.dataset == "places_lt":
    _lists(data, "Places_LT", 365)
    overrides.update(meta_per_class=1)
  import dataclasses
  config = dataclasses.replace(config, data_dir=str(data), **overrides)
  keras.backend.clear_session()
  with tfds.testing.mock_data(num_examples=2000):
    metrics = trainer.train(config)
  assert metrics["train/steps"] == 2
  assert 0.0 <= metrics["test/top1"] <= 100.0


def test_dry_run_prints_and_writes_nothing(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "advisor_tf.train",
       "--flagfile=flags/cifar_lt.cfg", f"--workdir={tmp_path / 'run'}",
       "--dataset=cifar100", "--imbalance_factor=200", "--dry_run"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-2000:]
  resolved = json.loads(result.stdout)
  assert resolved["dataset"] == "cifar100"
  assert resolved["imbalance_factor"] == 200.0
  assert resolved["lr_decay_epochs"] == [160, 180]
  assert not (tmp_path / "run").exists()


def test_evaluate_cli_checkpoint_and_export(tmp_path):
  import dataclasses
  from advisor_tf import config as config_lib
  from advisor_tf.evaluation import evaluate_run
  config = dataclasses.replace(
      config_lib.TrainConfig(), workdir=str(tmp_path / "run"), epochs=1,
      steps_per_epoch=3, lr_decay_epochs=(1,), verbose=0, embedding_size=8)
  metrics = trainer.train(config)
  keras.backend.clear_session()
  from_ckpt = evaluate_run(str(tmp_path / "run"), "test", "checkpoint")
  from_export = evaluate_run(str(tmp_path / "run"), "test", "saved_model")
  assert from_ckpt["top1"] == pytest.approx(metrics["test/top1"])
  assert from_export["top1"] == pytest.approx(metrics["test/top1"])
  assert {"top3", "top5", "confusion_matrix", "few_shot"} <= set(from_ckpt)
  train_report = evaluate_run(str(tmp_path / "run"), "train", "checkpoint")
  assert len(train_report["per_class_accuracy"]) == 10
  with pytest.raises(ValueError, match="--split='val' is not a split"):
    evaluate_run(str(tmp_path / "run"), "val")


def test_every_command_of_the_flagfile_index_parses_and_validates():
  import re
  import shlex
  text = open(os.path.join(ROOT, "flags", "README.md")).read()
  commands = re.findall(r"`(python -m advisor_tf\.(?:train|analyze) [^`]+)`",
                        text)
  assert len(commands) > 150
  for command in commands:
    argv = shlex.split(command)[2:]
    if argv[0] == "advisor_tf.analyze":
      assert all(a.split("=")[0] in ("--workdir", "--classes",
                                     "--num_examples") for a in argv[1:])
      continue
    argv = [a.replace("--flagfile=flags/", f"--flagfile={ROOT}/flags/")
            for a in argv]
    flags.FLAGS.unparse_flags()
    try:
      flags.FLAGS(argv)
      cli_flags.to_config().validate()
    finally:
      flags.FLAGS.unparse_flags()


def test_augmentation_benchmark_times_every_recipe():
  proc = subprocess.run(
      [sys.executable, "-m", "advisor_tf.bench_augment", "--batch_size=8",
       "--batches=2", "--repeats=1"], cwd=ROOT, capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout)
  assert set(result["images_per_s"]) == {"none", "pad_crop_flip",
                                         "autoaugment_cutout"}
  assert all(v > 0 for v in result["images_per_s"].values())
  assert result["time_vs_pad_crop_flip"]["pad_crop_flip"] == 1.0
