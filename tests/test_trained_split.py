"""A run keeps its split: the workdir records the training and meta sets as
trained (noise, long tail and meta selection applied), and resume, evaluate
and analyze read that record instead of running the protocols again."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from advisor_tf import config as config_lib
from advisor_tf import evaluation
from advisor_tf import meta_select
from advisor_tf import run as run_lib
from advisor_tf import trainer
from advisor_tf.data import protocols


def _folder(root, classes=("ant", "bee", "cow"), train=12, test=3):
  rng = np.random.default_rng(0)
  for split, count in (("train", train), ("test", test)):
    for c in classes:
      os.makedirs(os.path.join(root, split, c), exist_ok=True)
      for i in range(count):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(
            os.path.join(root, split, c, f"{c}{i}.png"))
  return str(root)


def _config(tmp_path, data, **fields):
  base = dict(dataset="image_folder", data_dir=data, image_size=8,
              meta_per_class=2, meta_source="random_noisy", noise="flip",
              noise_rate=0.4, batch_size=4, meta_batch_size=2, epochs=2,
              steps_per_epoch=2, lr_decay_epochs=(1,), verbose=0,
              export=False, embedding_size=4, telemetry_examples=0,
              workdir=str(tmp_path / "run"))
  base.update(fields)
  return dataclasses.replace(config_lib.TrainConfig(), **base)


def _assert_same_split(a, b):
  for field in dataclasses.fields(protocols.Split):
    x, y = getattr(a, field.name), getattr(b, field.name)
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
      assert np.asarray(x).dtype == np.asarray(y).dtype, field.name
      np.testing.assert_array_equal(x, y, err_msg=field.name)
    else:
      assert x == y, field.name


def test_the_record_gives_back_the_split_bit_for_bit_with_its_files(
    tmp_path):
  data = _folder(tmp_path / "data")
  config = _config(tmp_path, data)
  source, split = run_lib.prepare_data(config)
  record = json.loads(json.dumps(run_lib.split_record(config, source,
                                                      split)))
  _assert_same_split(run_lib.split_from_record(record), split)
  # The files as trained, each with the label the model was given (Flip
  # noise: some differ from their folder's class).
  files = record["train"]["file"]
  assert files == [os.path.relpath(source.paths["train"][i], data)
                   for i in split.train_indices]
  folder_class = [source.class_names.index(f.split(os.sep)[1])
                  for f in files]
  assert folder_class == record["train"]["clean_label"]
  assert record["train"]["label"] != record["train"]["clean_label"]
  assert len(record["meta"]["file"]) == 6


def _weights(workdir):
  reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if "save_counter" not in name and "OBJECT_GRAPH" not in name}


@pytest.mark.slow  # Three trainings.
def test_resume_evaluate_and_analyze_read_the_recorded_split(
    tmp_path, monkeypatch):
  data = _folder(tmp_path / "data")
  whole = _config(tmp_path, data, workdir=str(tmp_path / "whole"))
  trainer.train(whole)
  config = _config(tmp_path, data)
  stop_once = run_lib.Checkpointing.on_epoch_end

  def interrupted(self, epoch, logs=None):  # Ctrl-C after the first epoch.
    stop_once(self, epoch, logs)
    raise KeyboardInterrupt
  monkeypatch.setattr(run_lib.Checkpointing, "on_epoch_end", interrupted)
  with pytest.raises(KeyboardInterrupt):
    trainer.train(config)
  monkeypatch.setattr(run_lib.Checkpointing, "on_epoch_end", stop_once)
  path = os.path.join(config.workdir, run_lib.TRAINED_SPLIT_FILE)
  _, split = run_lib.prepare_data(config)
  _assert_same_split(run_lib.recorded_split(config.workdir), split)
  recorded = open(path).read()

  def refuse(*args, **kwargs):
    raise AssertionError("the protocols ran again")
  monkeypatch.setattr(protocols, "apply", refuse)
  monkeypatch.setattr(meta_select, "select", refuse)
  monkeypatch.setattr(meta_select, "prepare", refuse)
  # Resumed, evaluated and reloaded without them; the resumed run ends
  # bit for bit where the uninterrupted one did.
  metrics = trainer.train(config)
  assert metrics["resumed_from_step"] == 2 and metrics["train/steps"] == 4
  assert open(path).read() == recorded  # Kept, not rewritten.
  expected, got = _weights(whole.workdir), _weights(config.workdir)
  assert expected.keys() == got.keys()
  unequal = [name for name in expected
             if not np.array_equal(got[name], expected[name])]
  assert not unequal, unequal
  result = evaluation.evaluate_run(config.workdir)
  assert 0 <= result["top1"] <= 100 and result["split"] == "test"
  _assert_same_split(run_lib.load(config.workdir).split, split)


@pytest.mark.slow  # A training, then the changed folder.
def test_changed_files_after_training_are_named_and_lose_nothing(
    tmp_path, caplog):
  data = _folder(tmp_path / "data")
  config = _config(tmp_path, data, epochs=1)
  trainer.train(config)
  gone_test = os.path.join("test", "bee", "bee0.png")
  os.remove(os.path.join(data, gone_test))
  gone_train = os.path.join("train", "cow", "cow3.png")
  os.remove(os.path.join(data, gone_train))
  with caplog.at_level("WARNING"):
    result = evaluation.evaluate_run(config.workdir)
  assert sum(sum(row) for row in result["confusion_matrix"]) == 8
  warned = caplog.text
  assert f"1 gone ({gone_test})" in warned and f"1 gone ({gone_train})" in (
      warned)
  # Analysis reads the training images: a gone one is refused, by name.
  with pytest.raises(ValueError, match=f"1 gone \\({gone_train}\\)"):
    run_lib.load(config.workdir)


@pytest.mark.slow  # Two trainings.
def test_a_workdir_from_before_splits_were_recorded_still_loads(tmp_path):
  data = _folder(tmp_path / "data")
  config = _config(tmp_path, data, epochs=1)
  trainer.train(config)
  os.remove(os.path.join(config.workdir, run_lib.TRAINED_SPLIT_FILE))
  _, split = run_lib.prepare_data(config)
  _assert_same_split(run_lib.load(config.workdir).split, split)
  # Run again (resumed at its end), it records the split it trained on.
  trainer.train(config)
  _assert_same_split(run_lib.recorded_split(config.workdir), split)


def test_an_unreadable_record_is_named(tmp_path):
  os.makedirs(tmp_path / "run")
  (tmp_path / "run" / run_lib.TRAINED_SPLIT_FILE).write_text('{"train": 1}')
  with pytest.raises(ValueError, match="trained_split.json: not a readable "
                     "split record"):
    run_lib.recorded_split(str(tmp_path / "run"))
