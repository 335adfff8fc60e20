"""`advisor-train --corrections=FILE`: a reviewer's relabel / drop rows
applied to the train split of a file dataset, errors naming file:line, and
the run's data fingerprint following the file."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from advisor_tf import config as config_lib
from advisor_tf import run as run_lib
from advisor_tf.data import corrections
from advisor_tf.data import pipeline

from test_own_data import digits_folder

HEADER = ",".join(corrections.HEADER)


def _write(path, *rows):
  with open(path, "w") as f:
    f.write("\n".join((HEADER,) + rows) + "\n")
  return str(path)


@pytest.fixture
def folder(tmp_path):
  return digits_folder(tmp_path / "data")


def _config(folder, corrections_file=None):
  return config_lib.TrainConfig(
      dataset="image_folder", data_dir=folder, image_size=8,
      meta_per_class=0, corrections=corrections_file).validate()


def _train_files(folder, cls):
  root = os.path.join(folder, "train", cls)
  return sorted(f"train/{cls}/{f}" for f in os.listdir(root)
                if not f.startswith("."))


def test_relabel_and_drop_apply_the_rest_keep_their_label(folder, tmp_path):
  zero, one = _train_files(folder, "digit_0"), _train_files(folder, "digit_1")
  path = _write(tmp_path / "c.csv",
                f"{zero[0]},digit_0,relabel,digit_2,0.9,digit_2",
                f"{zero[1]},digit_0,drop,,0.8,digit_1",
                f"{zero[2]},digit_0,unsure,,0.7,digit_1",
                f"{zero[3]},digit_0,keep,,0.6,digit_1",
                f"{one[0]},digit_1,,,0.5,digit_0",  # Not reviewed.
                # Relabelled to the label it has: no change.
                f"{os.path.join(folder, one[1])},digit_1,relabel,digit_1,0.4,"
                "digit_1")
  plain, _ = run_lib.prepare_data(_config(folder))
  source, split = run_lib.prepare_data(_config(folder, path))
  names = list(source.class_names)
  labels = dict(zip(map(os.path.abspath, plain.paths["train"]),
                    plain.labels["train"]))
  after = dict(zip(map(os.path.abspath, source.paths["train"]),
                   source.labels["train"]))
  key = lambda f: os.path.abspath(os.path.join(folder, f))  # noqa: E731
  assert after[key(zero[0])] == names.index("digit_2")
  assert key(zero[1]) not in after
  assert len(after) == len(labels) - 1
  for f in (zero[2], zero[3], one[0], one[1]):
    assert after[key(f)] == labels[key(f)]
  # The image loader follows the dropped row: position i is file i.
  i = list(map(os.path.abspath, source.paths["train"])).index(key(zero[2]))
  j = list(map(os.path.abspath, plain.paths["train"])).index(key(zero[2]))
  got = next(iter(source.images("train", [i])))
  want = next(iter(plain.images("train", [j])))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want))
  batch = source.batch_loader("train")(tf.constant([i], tf.int64))
  np.testing.assert_allclose(np.asarray(batch[0]), np.asarray(want))
  assert len(split.train_indices) == len(labels) - 1
  assert sum(1 for _ in pipeline.unaugmented_train(
      source, split.train_indices, split.train_labels)) == len(labels) - 1
  report = source.corrections
  assert report["relabelled"] == 1 and report["dropped"] == 1
  assert report["per_class"] == {
      "digit_0": {"relabelled_away": 1, "relabelled_in": 0, "dropped": 1},
      "digit_2": {"relabelled_away": 0, "relabelled_in": 1, "dropped": 0}}
  assert "1 label(s) changed, 1 image(s) dropped" in corrections.describe(
      report)
  # The user's files are untouched.
  assert os.path.exists(key(zero[1]))
  assert sorted(_train_files(folder, "digit_0")) == zero


@pytest.mark.parametrize("row,message", [
    ("train/digit_0/nope.png,digit_0,relabel,digit_1,0.9,digit_1",
     "c.csv:2: train/digit_0/nope.png is not an image of the train split"),
    ("{f},digit_0,relabel,digit_7,0.9,digit_7",
     "c.csv:2: new_label 'digit_7' is not in the class list"),
    ("{f},digit_0,fix,digit_1,0.9,digit_1",
     "c.csv:2: action 'fix' is not one of relabel, keep, drop, unsure"),
    ("{f},digit_0,relabel,,0.9,digit_1",
     "c.csv:2: new_label '' is not in the class list"),
])
def test_a_bad_row_is_one_error_naming_file_and_line(folder, tmp_path, row,
                                                     message):
  f = _train_files(folder, "digit_0")[0]
  path = _write(tmp_path / "c.csv", row.format(f=f))
  with pytest.raises(ValueError, match="/" + message.replace(".", r"\.")
                     .replace("(", r"\(")):
    run_lib.prepare_data(_config(folder, path))


def test_a_meta_or_test_file_is_not_in_the_train_split(folder, tmp_path):
  test_file = sorted(os.listdir(os.path.join(folder, "test", "digit_0")))
  test_file = [f for f in test_file if not f.startswith(".")][0]
  path = _write(tmp_path / "c.csv", f"train/digit_0/{test_file[:0]}x.png,,"
                "keep,,,", f"test/digit_0/{test_file},digit_0,drop,,,")
  with pytest.raises(ValueError, match=r"c\.csv:2: "):
    run_lib.prepare_data(_config(folder, path))
  path = _write(tmp_path / "d.csv", f"test/digit_0/{test_file},digit_0,drop,,,")
  with pytest.raises(ValueError, match=r"d\.csv:2: test/digit_0/.* is not an "
                     "image of the train split"):
    run_lib.prepare_data(_config(folder, path))


def test_the_flag_is_validated(folder, tmp_path):
  with pytest.raises(ValueError, match="--corrections=.*no such file"):
    _config(folder, str(tmp_path / "absent.csv"))
  path = _write(tmp_path / "c.csv")
  with pytest.raises(ValueError, match="--corrections=.* applies to "
                     "--dataset=image_folder or image_csv"):
    config_lib.TrainConfig(corrections=path).validate()


def test_the_fingerprint_follows_the_corrections_file(folder, tmp_path):
  f = _train_files(folder, "digit_0")[0]
  keep = _write(tmp_path / "keep.csv", f"{f},digit_0,keep,,0.9,digit_1")
  plain_config = _config(folder)
  plain = run_lib.fingerprint(plain_config, run_lib.prepare_data(
      plain_config)[0])
  assert "corrections" not in plain
  config = _config(folder, keep)
  kept = run_lib.fingerprint(config, run_lib.prepare_data(config)[0])
  assert kept["corrections"]["digest"] == corrections.digest(keep)
  assert kept["splits"] == plain["splits"]  # Keep rows change no label.
  assert any("corrections: none in the workdir" in d for d in
             run_lib.fingerprint_differences(plain, kept))
  # Same file name, other content: another fingerprint, named.
  _write(tmp_path / "keep.csv", f"{f},digit_0,relabel,digit_1,0.9,digit_1")
  relabelled = run_lib.fingerprint(config, run_lib.prepare_data(config)[0])
  diffs = run_lib.fingerprint_differences(kept, relabelled)
  assert any(d.startswith("corrections: ") for d in diffs)
  assert any("split 'train': same size, other files or labels" in d
             for d in diffs)
  # The config records the file.
  assert '"corrections": "' in dataclasses.replace(config).to_json()
