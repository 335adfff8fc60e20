"""The workdir is the user's: one run at a time, tied to its configuration and
its data, finite state only; and the library's default labels are the user's."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from advisor_tf import config as config_lib
from advisor_tf import evaluation
from advisor_tf import run as run_lib
from advisor_tf import trainer
from conftest import snapshot, tiny_model


def _folder(root, classes=("ant", "bee"), per_class=4):
  rng = np.random.default_rng(0)
  for split in ("train", "meta", "test"):
    for c in classes:
      os.makedirs(os.path.join(root, split, c), exist_ok=True)
      for i in range(per_class if split == "train" else 2):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(
            os.path.join(root, split, c, f"{i}.png"))
  return str(root)


def _config(tmp_path, data, **fields):
  return dataclasses.replace(
      config_lib.TrainConfig(), dataset="image_folder", data_dir=data,
      image_size=8, meta_per_class=0, batch_size=4, meta_batch_size=2,
      epochs=1, steps_per_epoch=2, lr_decay_epochs=(1,), verbose=0,
      export=False, embedding_size=4, telemetry_examples=0,
      workdir=str(tmp_path / "run"), **fields)


def test_default_noise_is_none_and_the_folder_labels_are_used(tmp_path):
  assert config_lib.TrainConfig().noise == "none"
  data = _folder(tmp_path / "data")
  config = _config(tmp_path, data)
  source, split = run_lib.prepare_data(config)
  folder_labels = [source.class_names.index(os.path.basename(
      os.path.dirname(p))) for p in source.paths["train"]]
  np.testing.assert_array_equal(
      split.train_labels, np.asarray(folder_labels)[split.train_indices])
  assert split.noise_rate == 0.0
  assert trainer.describe_noise(config).startswith("none")


def test_a_second_run_on_a_workdir_in_use_is_refused_and_touches_nothing(
    tmp_path):
  data = _folder(tmp_path / "data")
  config = _config(tmp_path, data)
  source, _ = run_lib.prepare_data(config)
  with run_lib.claim(config, source):
    before = snapshot(config.workdir)
    with pytest.raises(ValueError, match="is in use by another run"):
      trainer.train(dataclasses.replace(config, lr=0.2))
    assert snapshot(config.workdir) == before


@pytest.mark.slow  # Moved by measured duration (fast tier over budget).
def test_resuming_with_other_data_is_refused_naming_what_differs(tmp_path):
  data = _folder(tmp_path / "data")
  config = _config(tmp_path, data)
  trainer.train(config)
  saved = snapshot(config.workdir)
  data_json = json.loads(
      open(os.path.join(config.workdir, "data.json")).read())
  assert data_json["class_names"] == ["ant", "bee"]
  assert data_json["splits"]["train"]["examples"] == 8
  # A file more in train: refused, nothing rewritten.
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
      os.path.join(data, "train", "ant", "new.png"))
  keras.backend.clear_session()
  with pytest.raises(ValueError, match="trained on other data.*'train': 8 "
                     r"examples in the workdir, 9 now \(1 new \(train/ant/"
                     r"new.png\)\)"):
    trainer.train(config)
  assert snapshot(config.workdir) == saved
  # Same count, other file: refused as well.
  os.remove(os.path.join(data, "train", "ant", "0.png"))
  with pytest.raises(ValueError, match=r"other files or labels \(1 gone "
                     r"\(train/ant/0.png\), 1 new \(train/ant/new.png\)\)"):
    trainer.train(config)
  assert snapshot(config.workdir) == saved


def test_a_checkpoint_is_never_written_with_non_finite_state(tmp_path):
  model = tiny_model("mfrw_mes")
  checkpoint = run_lib.checkpoint_of(model)
  manager = run_lib.checkpoint_manager(checkpoint, str(tmp_path))
  callback = run_lib.Checkpointing(manager, every=0)
  callback.set_model(model)
  bn = [v for v in model.backbone.non_trainable_variables
        if "moving_variance" in v.path][0]
  bn.assign(np.full(bn.shape, np.nan, np.float32))
  with pytest.raises(FloatingPointError, match="moving_variance"):
    callback.save()
  assert manager.latest_checkpoint is None
  assert not os.path.exists(os.path.join(str(tmp_path), run_lib.CHECKPOINTS))


@pytest.mark.slow
def test_evaluate_refuses_a_checkpoint_with_non_finite_weights(tmp_path):
  data = _folder(tmp_path / "data")
  config = _config(tmp_path, data)
  trainer.train(config)
  keras.backend.clear_session()
  finished = run_lib.load(config.workdir)
  kernel = finished.model.head.trainable_variables[0]
  kernel.assign(np.full(kernel.shape, np.inf, np.float32))
  # Written behind the guard's back, as the newest checkpoint.
  run_lib.checkpoint_manager(run_lib.checkpoint_of(
      finished.model, with_optimizers=False), config.workdir).save(
          checkpoint_number=99)
  keras.backend.clear_session()
  with pytest.raises(ValueError, match="non-finite weights"):
    evaluation.evaluate_run(config.workdir)
