"""End to end: the CLI on the quickstart flagfile, export, determinism."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from advisor_tf import config as config_lib
from advisor_tf import export
from advisor_tf import trainer
from advisor_tf.data import sources
from conftest import batches, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "advisor_tf.train", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)


@pytest.mark.slow
def test_quickstart_flow_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  result = _cli("--flagfile=flags/quickstart.cfg", f"--workdir={workdir}",
                "--epochs=2", "--steps_per_epoch=3", "--lr_decay_epochs=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "test top-1" in result.stdout
  # Output to a pipe, not a terminal: --verbose=auto writes a line per epoch,
  # never the progress bar's carriage-return updates.
  assert "\r" not in result.stdout and "\b" not in result.stdout
  assert "Epoch 2/2" in result.stdout
  for name in ("config.json", "flags.txt", "metrics.json", "checkpoints",
               "tensorboard", "saved_model/saved_model.pb"):
    assert (workdir / name).exists(), name
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert 0.0 <= metrics["test/top1"] <= 100.0
  assert len(metrics["test/per_class_accuracy"]) == 10
  assert abs(metrics["train/realised_noise_rate"] - 0.4) < 0.06
  config = json.loads((workdir / "config.json").read_text())
  assert config["method"] == "mfrw_mes" and config["epochs"] == 2
  events = [f for _, _, fs in os.walk(workdir / "tensorboard") for f in fs
            if f.startswith("events")]
  assert events
  # The exported classifier serves on its own.
  loaded = tf.saved_model.load(str(workdir / "saved_model"))
  logits = loaded.serve(tf.zeros((3, 8, 8, 1)))
  assert logits.shape == (3, 10)


class _Stream:
  def __init__(self, tty):
    self.tty = tty

  def isatty(self):
    return self.tty


def test_verbose_auto_is_a_bar_on_a_terminal_and_a_line_per_epoch_elsewhere():
  assert config_lib.TrainConfig().verbose == "auto"
  assert config_lib.progress_verbosity("auto", _Stream(True)) == 1
  assert config_lib.progress_verbosity("auto", _Stream(False)) == 2
  assert config_lib.progress_verbosity("auto", object()) == 2  # No isatty.
  for level in (0, 1, 2):
    assert config_lib.progress_verbosity(level, _Stream(False)) == level
  with pytest.raises(ValueError, match="--verbose=3 must be auto, 0, 1 or 2"):
    config_lib.TrainConfig(verbose=3).validate()


def test_meta_batch_and_decay_epochs_adapt_to_the_data_and_the_run():
  config = config_lib.TrainConfig(epochs=30)
  assert config.meta_batch_size is None and config.lr_decay_epochs == ()
  resolved, chosen = config.resolved(meta_examples=100)
  assert resolved.meta_batch_size == 50  # The former fixed defaults.
  assert resolved.lr_decay_epochs == (20, 25)
  assert any("--meta_batch_size=50" in c for c in chosen)
  small, chosen = config_lib.TrainConfig(epochs=6).resolved(meta_examples=9)
  assert small.meta_batch_size == 9 and small.lr_decay_epochs == (4, 5)
  assert small.validate() is small
  assert config_lib.TrainConfig(epochs=1).resolved(9)[0].lr_decay_epochs == \
      (1,)
  # What the user sets stays as set, and is not reported as chosen.
  kept, chosen = config_lib.TrainConfig(
      epochs=6, meta_batch_size=4, lr_decay_epochs=(2,)).resolved(9)
  assert (kept.meta_batch_size, kept.lr_decay_epochs, chosen) == (4, (2,), [])
  assert config_lib.TrainConfig(lr_schedule="cosine").resolved(9)[
      0].lr_decay_epochs == ()
  # A workdir whose config.json holds them unresolved resumes: "auto" there
  # resolves as here; a value set there and another now is a difference.
  unresolved = json.loads(config_lib.TrainConfig(epochs=6).to_json())
  assert small.differences(unresolved) == []
  assert small.differences({**unresolved, "meta_batch_size": 4}) == [
      "--meta_batch_size: 4 in the workdir, 9 now"]


@pytest.mark.parametrize("flag,message", [
    pytest.param("--method=bogus",
                 "<ce|mwnet|mfrw|mes|mfrw_mes|balanced_softmax|eql|focal>",
                 marks=pytest.mark.slow),
    ("--noise_rate=1.0", "noise_rate"),  # The command line, in the fast tier.
    pytest.param("--lr_decay_epochs=5,x", "lr_decay_epochs",
                 marks=pytest.mark.slow),
    pytest.param("--lr_decay_epochs=99", "--lr_decay_epochs",
                 marks=pytest.mark.slow),
])
def test_bad_flags_are_named(tmp_path, flag, message):
  result = _cli("--flagfile=flags/quickstart.cfg",
                f"--workdir={tmp_path / 'run'}", flag)
  assert result.returncode != 0
  assert message in result.stderr
  assert not (tmp_path / "run" / "metrics.json").exists()


def test_export_has_no_advisor_and_same_logits(tmp_path):
  model = tiny_model("mfrw_mes")
  x, y, xm, ym = batches()
  model.train_step(((tf.constant(x), tf.constant(y)),
                    (tf.constant(xm), tf.constant(ym))))
  source = sources.array_source(
      "tiny", {"train": (x, y), "test": (x, y)},
      class_names=[f"c{i}" for i in range(5)])
  path = str(tmp_path / "exported")
  export.export(model.classifier(), source, path)
  loaded = tf.saved_model.load(path)
  np.testing.assert_allclose(loaded.serve(x), model(x), rtol=1e-5, atol=1e-6)
  # Every variable the SavedModel holds, as written on disk.
  saved = [(name, tuple(shape)) for name, shape in tf.train.list_variables(
      os.path.join(path, "variables", "variables"))
           if "VARIABLE_VALUE" in name]
  assert not any("advisor" in n for n, _ in saved), saved
  classifier_vars = (model.backbone.variables + model.head.variables)
  assert len(saved) == len(classifier_vars)
  assert (sum(int(np.prod(s)) for _, s in saved) ==
          sum(int(np.prod(v.shape)) for v in classifier_vars))
  # The advisor's 2E × 2E hidden kernel (E = 6) is nowhere in the export.
  assert model.advisor.hidden.kernel.shape == (12, 12)
  assert (12, 12) not in {s for _, s in saved}


def _small(workdir, seed=0):
  return dataclasses.replace(
      config_lib.TrainConfig(), workdir=str(workdir), seed=seed, epochs=1,
      steps_per_epoch=4, lr_decay_epochs=(1,), verbose=0, export=False,
      embedding_size=8)


def _checkpoint_values(workdir):
  reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if "save_counter" not in k}


@pytest.mark.slow
def test_same_seed_gives_identical_weights(tmp_path):
  trainer.train(_small(tmp_path / "a"))
  keras.backend.clear_session()
  trainer.train(_small(tmp_path / "b"))
  keras.backend.clear_session()
  trainer.train(_small(tmp_path / "c", seed=1))
  a, b, c = (_checkpoint_values(tmp_path / n) for n in "abc")
  assert a.keys() == b.keys() and len(a) > 20
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert any(not np.array_equal(a[k], c[k]) for k in a
             if a[k].dtype.kind == "f" and a[k].size > 1)


@pytest.mark.slow
def test_rerun_of_finished_run_resumes_without_training(tmp_path):
  config = _small(tmp_path / "run")
  first = trainer.train(config)
  keras.backend.clear_session()
  again = trainer.train(config)
  assert first["resumed_from_step"] == 0
  assert again["resumed_from_step"] == again["train/steps"] == 4
  assert again["test/top1"] == first["test/top1"]


@pytest.mark.slow
def test_a_run_trains_under_mirrored_strategy_on_two_replicas(tmp_path):
  """The whole trainer (Keras' distributed fit, telemetry, evaluation,
  export) under MirroredStrategy on the two logical CPUs of conftest."""
  from advisor_tf import telemetry
  config = config_lib.TrainConfig(
      method="mfrw_mes", strategy="mirrored", epochs=1, lr_decay_epochs=(1,),
      steps_per_epoch=4, workdir=str(tmp_path / "run"), verbose=0,
      embedding_size=8, telemetry_examples=64)
  from advisor_tf import distribute
  assert distribute.get_strategy("mirrored").num_replicas_in_sync == 2
  metrics = trainer.train(config)
  assert metrics["train/steps"] == 4
  assert 0.0 <= metrics["test/top1"] <= 100.0
  assert len(telemetry.read_trace(config.workdir)) == 1
  assert os.path.isdir(os.path.join(config.workdir, "saved_model"))
