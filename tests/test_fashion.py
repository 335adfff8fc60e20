"""Fashion-MNIST (IDX files the tests write), instance-dependent noise, the
training subset and the Fashion-MNIST grid on the one grid runner."""

import dataclasses
import gzip
import json
import os

import numpy as np
import pytest

from advisor_tf import config as config_lib
from advisor_tf import run as run_lib
from advisor_tf import trainer
from advisor_tf.data import noise, protocols, sources
from advisor_tf.experiments import dirty_labels
from advisor_tf.experiments import fashion


def write_idx(path, array, compress=True):
  """`array` (uint8) as an IDX file: 0, 0, 8 (unsigned bytes), the rank,
  big-endian sizes, the data."""
  array = np.asarray(array, np.uint8)
  data = (bytes([0, 0, 8, array.ndim])
          + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
          + array.tobytes())
  with (gzip.open if compress else open)(path, "wb") as f:
    f.write(data)


def fashion_dir(root, train=60, test=20, compress=True, seed=0):
  """A Fashion-MNIST folder of `train` / `test` 28×28 images whose class
  is written in their brightness (so a model could learn it)."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  suffix = ".gz" if compress else ""
  for split, n in (("train", train), ("t10k", test)):
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, (n, 28, 28)) + 20 * labels[:, None, None]
    write_idx(os.path.join(root, f"{split}-images-idx3-ubyte{suffix}"),
              images, compress)
    write_idx(os.path.join(root, f"{split}-labels-idx1-ubyte{suffix}"),
              labels, compress)
  return str(root)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reads_the_four_idx_files(tmp_path, compress):
  source = sources.load("fashion_mnist", fashion_dir(tmp_path, compress=compress))
  assert source.class_names[0] == "T-shirt/top"
  assert source.class_names[9] == "Ankle boot" and source.num_classes == 10
  assert source.image_shape == (28, 28, 1)
  assert len(source.labels["train"]) == 60 and len(source.labels["test"]) == 20
  np.testing.assert_array_equal(source.labels["train"][:12],
                                [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
  image = next(iter(source.images("test", [5]).as_numpy_iterator()))
  assert image.shape == (28, 28, 1) and image.dtype == np.float32
  # Normalised by the training set's statistics: 0.5 → (0.5 − 0.286)/0.353.
  raw = sources.read_idx(os.path.join(
      tmp_path, "t10k-images-idx3-ubyte" + (".gz" if compress else "")))
  np.testing.assert_allclose(image[..., 0], (raw[5] / 255 - 0.2860) / 0.3530,
                             atol=1e-5)
  assert source.preprocessing.channels == 1


def test_fashion_mnist_missing_or_damaged_files_are_one_line(tmp_path):
  with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"
                     ".*--data_dir") as e:
    sources.load("fashion_mnist", str(tmp_path))
  assert "train-images-idx3-ubyte.gz" in str(e.value)
  root = fashion_dir(tmp_path / "bad")
  path = os.path.join(root, "t10k-labels-idx1-ubyte.gz")
  with gzip.open(path, "rb") as f:
    data = f.read()
  with gzip.open(path, "wb") as f:
    f.write(data[:-3])
  with pytest.raises(ValueError, match="t10k-labels.*truncated"):
    sources.load("fashion_mnist", root)
  with gzip.open(path, "wb") as f:
    f.write(b"\x00\x00\x0d\x01" + data[4:])  # float data: not ours.
  with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
    sources.load("fashion_mnist", root)


def test_instance_noise_rate_truth_seed_and_dependence_on_the_image():
  rng = np.random.default_rng(0)
  # 300 distinct images, each twice: 600 examples, 10 classes.
  base = rng.normal(size=(300, 64)).astype(np.float32)
  images = np.concatenate([base, base])
  clean = np.concatenate([np.arange(300) % 10] * 2)

  def draw(seed, rate=0.4):
    batches = (images[i:i + 128] for i in range(0, len(images), 128))
    return noise.instance_labels(batches, clean, rate, 10,
                                 np.random.default_rng(seed))

  noisy, kept = draw(1)
  np.testing.assert_array_equal(kept, clean)
  assert abs(np.mean(noisy != clean) - 0.4) < 0.06
  np.testing.assert_array_equal(draw(1)[0], noisy)  # Seeded.
  assert (draw(2)[0] != noisy).any()
  # The wrong class depends on the image: the two copies of an image, both
  # flipped, mostly land on the same class (symmetric noise: 1 in 9).
  both = (noisy[:300] != clean[:300]) & (noisy[300:] != clean[300:])
  assert both.sum() > 20
  assert np.mean(noisy[:300][both] == noisy[300:][both]) > 0.6
  # Rates: 0 keeps every label; a high rate flips most.
  np.testing.assert_array_equal(draw(1, 0.0)[0], clean)
  assert np.mean(draw(1, 0.8)[0] != clean) > 0.7
  with pytest.raises(ValueError, match="instance_labels"):
    noise.transition_matrix("instance", 0.4, 10, rng)


def test_protocol_instance_noise_reads_the_images_it_corrupts():
  labels = np.repeat(np.arange(5), 80)
  pixels = np.random.default_rng(0).normal(size=(400, 16))
  asked = []

  def images(indices):
    asked.append(np.asarray(indices))
    return iter([pixels[indices]])

  proto = protocols.Protocol(noise="instance", noise_rate=0.3,
                             meta_per_class=4)
  split = protocols.apply(proto, labels, 5, seed=0, images=images)
  np.testing.assert_array_equal(asked[0], split.train_indices)
  np.testing.assert_array_equal(labels[split.train_indices],
                                split.train_clean_labels)
  assert 0.2 < split.noise_rate < 0.4
  np.testing.assert_allclose(split.transition.sum(1), 1.0)
  np.testing.assert_allclose(np.diag(split.transition), [np.mean(
      split.train_labels[split.train_clean_labels == c] == c)
      for c in range(5)])
  assert split.meta_purity == 1.0  # Drawn before the noise.
  with pytest.raises(ValueError, match="instance.*images"):
    protocols.apply(proto, labels, 5, seed=0)


def test_train_examples_is_a_stratified_subset_drawn_first():
  labels = np.repeat(np.arange(4), [400, 200, 100, 100])
  proto = protocols.Protocol(noise="symmetric", noise_rate=0.2,
                             meta_per_class=5, train_examples=200)
  split = protocols.apply(proto, labels, 4, seed=0)
  used = np.concatenate([split.train_indices, split.meta_indices])
  assert len(used) == 200 and len(set(used)) == 200
  np.testing.assert_array_equal(np.bincount(labels[used]), [100, 50, 25, 25])
  again = protocols.apply(proto, labels, 4, seed=0)
  np.testing.assert_array_equal(again.train_indices, split.train_indices)
  # Unset (or at least the split's size): the whole split, as before.
  whole = protocols.apply(protocols.Protocol(noise="symmetric",
                                             noise_rate=0.2,
                                             meta_per_class=5), labels, 4, 0)
  same = protocols.apply(protocols.Protocol(
      noise="symmetric", noise_rate=0.2, meta_per_class=5,
      train_examples=10_000), labels, 4, 0)
  np.testing.assert_array_equal(whole.train_indices, same.train_indices)
  np.testing.assert_array_equal(whole.train_labels, same.train_labels)
  assert len(whole.train_indices) == 800 - 20
  with pytest.raises(ValueError, match="--train_examples=0 must be >= 1"):
    config_lib.TrainConfig(train_examples=0).validate()


def test_a_run_config_applies_instance_noise_on_fashion_mnist(tmp_path):
  config = config_lib.TrainConfig(
      dataset="fashion_mnist", data_dir=fashion_dir(tmp_path, train=200),
      noise="instance", noise_rate=0.4, meta_per_class=2,
      meta_source="random", train_examples=150,
      workdir=str(tmp_path / "run")).validate()
  source, split = run_lib.prepare_data(config)
  assert len(split.train_indices) + len(split.meta_indices) == 150
  assert 0.25 < split.noise_rate < 0.55
  again = run_lib.prepare_data(config)[1]
  np.testing.assert_array_equal(again.train_labels, split.train_labels)
  assert source.name == "fashion_mnist"


def test_fashion_grid_cells_and_methods_set_their_fields():
  grid = fashion.grid(small_cells_examples=20_000)
  config = grid.config("instance0.5", "mfrw_mes_auto", 1, 12, "/r")
  assert (config.dataset, config.noise, config.noise_rate) == (
      "fashion_mnist", "instance", 0.5)
  assert config.train_examples is None and config.meta_source == "auto"
  assert config.method == "mfrw_mes" and config.seed == 1
  assert config.workdir == os.path.join("/r", "instance0.5",
                                        "mfrw_mes_auto_s1")
  assert config.lr_decay_epochs == (8, 10)
  lt = grid.config("lt100_sym0.2", "mfrw_mes_random", 0, 12, "/r")
  assert (lt.imbalance_factor, lt.noise, lt.train_examples,
          lt.meta_source) == (100.0, "symmetric", 20_000, "random_noisy")
  assert grid.config("flip0.4", "ce", 0, 12, "/r").method == "ce"
  assert fashion.grid(0).config("sym0.4", "ce", 0, 3, "/r").train_examples \
      is None
  assert all(grid.is_noisy(c) for c in fashion.DEFAULT_CELLS)
  clean = grid.config("clean", "ce", 0, 12, "/r")
  assert not grid.is_noisy("clean") and clean.noise == "none"
  assert clean.train_examples is None
  assert set(fashion.DEFAULT_CELLS) == set(grid.cells) - {"clean"}
  weighted = grid.config("instance0.4", "mfrw_mes_weight", 0, 12, "/r")
  assert weighted.advisor_example_weight and weighted.method == "mfrw_mes"
  assert dataclasses.replace(weighted, advisor_example_weight=False,
                             workdir=None) == dataclasses.replace(
                                 grid.config("instance0.4", "mfrw_mes", 0, 12,
                                             "/r"), workdir=None)
  selecting = grid.config("instance0.5", "mfrw_mes_select", 0, 12, "/r")
  assert selecting.sample_selection == "gmm" and dataclasses.replace(
      selecting, sample_selection="none", workdir=None) == dataclasses.replace(
          grid.config("instance0.5", "mfrw_mes", 0, 12, "/r"), workdir=None)
  assert grid.config("instance0.5", "ce_select", 0, 12,
                     "/r").sample_selection == "gmm"
  relabelling = grid.config("instance0.5", "mfrw_mes_relabel", 0, 12, "/r")
  assert dataclasses.replace(relabelling, sample_selection="gmm",
                             workdir=None) == dataclasses.replace(
                                 selecting, workdir=None)
  assert grid.config("instance0.5", "ce_relabel", 0, 12,
                     "/r").sample_selection == "gmm_relabel"
  assert set(fashion.DEFAULT_METHODS) == set(fashion.METHODS) - {
      "mfrw_mes_weight", "mfrw_mes_select", "ce_select", "mfrw_mes_relabel",
      "ce_relabel"}
  with pytest.raises(ValueError, match="--methods: 'mfrw'"):
    grid.config("sym0.4", "mfrw", 0, 12, "/r")
  # The GPU flagfile names only the experiment's flags.
  path = os.path.join(os.path.dirname(__file__), "..", "flags",
                      "experiments", "fashion_gpu.cfg")
  text = open(path).read()
  assert "--set=backbone=resnet18" in text and "--epochs=150" in text


def test_fashion_grid_runs_on_the_one_grid_runner(tmp_path, monkeypatch):
  seen = []

  def fake_run_one(cell, method, seed, epochs, root, shared, cv_scores=None,
                   overrides=None, grid=None):
    seen.append((cell, method, seed, grid.name))
    return ({"accuracy": 70.0, "accuracy_last10": 69.5,
             "tail_accuracy": 60.0}, {}, None)

  monkeypatch.setattr(dirty_labels, "run_one", fake_run_one)
  out = str(tmp_path / "fashion.json")
  dirty_labels.run_grid(out, ["instance0.4"], ["mfrw_mes"], [0], 2,
                        str(tmp_path), cleanlab_cv=False,
                        log=lambda _: None, grid=fashion.grid())
  assert seen == [("instance0.4", "ce", 0, "fashion"),
                  ("instance0.4", "mfrw_mes", 0, "fashion")]
  saved = json.load(open(out))
  assert saved["instance0.4"]["mfrw_mes"]["accuracy_last10"] == [69.5]
  assert "| instance0.4 | 69.50 | - | 69.50 |" in fashion.published_table(
      saved)


def test_run_statistics_mean_of_the_last_tenth_of_epochs(tmp_path):
  rows = ["epoch,accuracy,loss,val_accuracy,val_loss"]
  rows += [f"{e},0.5,1.0,{0.5 + e / 100},1.0" for e in range(20)]
  rows += ["19,0.5,1.0,0.9,1.0"]  # Epoch 19 again after a resume.
  (tmp_path / trainer.HISTORY_FILE).write_text("\n".join(rows) + "\n")
  accuracy = trainer.epoch_accuracies(str(tmp_path))
  assert len(accuracy) == 20 and accuracy[-1] == pytest.approx(90.0)
  values = dirty_labels.run_statistics(str(tmp_path), {"meta/purity": 0.9})
  assert values["accuracy_last10"] == pytest.approx((68.0 + 90.0) / 2)
  assert values["meta_purity"] == 0.9
  assert dirty_labels.run_statistics(str(tmp_path / "none"), {}) == {}


@pytest.mark.slow
def test_the_installed_fashion_mnist_is_the_official_split():
  if not os.path.isdir(sources.FASHION_MNIST_DIR):
    pytest.skip("dataset-fashion-mnist is not installed "
                f"({sources.FASHION_MNIST_DIR})")
  source = sources.load("fashion_mnist")
  assert len(source.labels["train"]) == 60_000
  assert len(source.labels["test"]) == 10_000
  np.testing.assert_array_equal(np.bincount(source.labels["train"]),
                                [6000] * 10)
  np.testing.assert_array_equal(np.bincount(source.labels["test"]),
                                [1000] * 10)


def test_run_clock_says_the_steps_then_the_time_a_run_takes():
  said, now = [], [0.0]
  clock = trainer.RunClock(steps_per_epoch=100, first_step=50, last_step=350,
                           log=lambda msg, *a: said.append(msg % a),
                           clock=lambda: now[0], skip=2, timed=10)
  clock.on_train_begin()
  clock.on_train_begin()  # A resumed run's next piece: said once.
  assert said == ["Training: 100 steps per epoch, 4 epochs (350 steps), "
                  "resuming at step 50; the time it takes follows the first "
                  "10 timed steps."]
  for _ in range(12):  # 2 skipped (tracing), then 10 timed at 0.5 s.
    clock.on_train_batch_end(0)
    now[0] += 0.5
  # After the 12th step: 10 timed steps in 5 s, 288 steps left.
  assert said[1] == ("500 ms a step: an epoch takes about 50 s, the rest of "
                     "the run about 2 min.")
  for _ in range(38):
    clock.on_train_batch_end(0)
    now[0] += 0.5
  clock.on_epoch_end(0)  # Step 100: the end of epoch 1 of 4.
  assert said[2] == "Epoch 1 of 4 done: about 2 min left."
  # The median step (end to end, after the skipped ones) for metrics.json;
  # the time across an epoch boundary (validation) is not a step.
  assert clock.seconds_per_step() == 0.5
  clock.on_epoch_begin(1)
  now[0] += 30.0  # The epoch's validation.
  for _ in range(5):
    clock.on_train_batch_end(0)
    now[0] += 0.25
  assert len(clock.intervals) == 48 + 4  # Steps 3-50, then 4 of 5.
  assert clock.seconds_per_step() == 0.5
  assert trainer.duration(40) == "40 s"
  assert trainer.duration(12 * 60) == "12 min"
  assert trainer.duration(125 * 60) == "2 h 05 min"


def test_grid_commands_refuse_bad_flags_naming_them():
  import types
  from absl import app

  def flags_of(cells="sym0.4", methods="ce", seeds="1,0", set_=""):
    value = lambda v: types.SimpleNamespace(value=v)  # noqa: E731
    return types.SimpleNamespace(
        cells=value(cells.split(",")), methods=value(methods.split(",")),
        seeds=value(seeds.split(",")), set=value(set_))

  names = fashion.grid().cells
  assert dirty_labels.grid_flags(flags_of(), names, fashion.METHODS) == (
      ["sym0.4"], ["ce"], [0, 1], {})
  for bad, message in ((dict(cells="sym0.9"), "--cells: 'sym0.9' is not one"),
                       (dict(methods="mfrw"), "--methods: 'mfrw' is not one"),
                       (dict(seeds="-1"), "--seeds=-1 must be integers >= 0"),
                       (dict(seeds="a"), "--seeds=a must be integers >= 0"),
                       (dict(set_="lr=abc"), "--set: lr=abc must be a number")):
    with pytest.raises(app.UsageError, match=message):
      dirty_labels.grid_flags(flags_of(**bad), names, fashion.METHODS)
