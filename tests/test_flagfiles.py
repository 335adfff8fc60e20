"""Every flagfile parses and runs two steps; the flagfile index's commands
validate; --dry_run writes nothing."""

import dataclasses
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import keras
import pytest
import tensorflow_datasets as tfds
from absl import flags

from advisor_tf import cli_flags, trainer
from advisor_tf import config as config_lib
from test_datasets import _clothing, _lists

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


FLAGFILES = sorted(os.path.basename(p) for p in
                   glob.glob(os.path.join(ROOT, "flags", "*.cfg")))


@pytest.mark.slow
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
  bundled = config.dataset in config_lib.BUNDLED_DATASETS  # Reads no dir.
  config = dataclasses.replace(config, data_dir=None if bundled else str(data),
                               **overrides)
  keras.backend.clear_session()
  with tfds.testing.mock_data(num_examples=2000):
    metrics = trainer.train(config)
  assert metrics["train/steps"] == 2
  assert 0.0 <= metrics["test/top1"] <= 100.0


@pytest.mark.slow
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


def test_every_command_of_the_flagfile_index_parses_and_validates():
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


def test_thesis_flagfiles_pin_the_thesis_advisor_lr_while_users_get_the_default():
  """The defaults serve users' short runs (advisor Adam 1e-3); every thesis
  flagfile sets the thesis' 1e-4 itself, so it reproduces the thesis whatever
  the default is. The quickstart is not a thesis run: it takes the default."""
  from advisor_tf import config as config_lib
  from advisor_tf import model as model_lib
  assert config_lib.TrainConfig().advisor_lr == model_lib.DEFAULT_ADVISOR_LR
  assert flags.FLAGS["advisor_lr"].default == model_lib.DEFAULT_ADVISOR_LR
  for name in FLAGFILES:
    with open(os.path.join(ROOT, "flags", name)) as f:
      lines = [line.strip() for line in f if line.startswith("--")]
    lrs = [line for line in lines if line.startswith("--advisor_lr=")]
    if name == "quickstart.cfg":
      assert lrs == [], name
    else:
      assert lrs == ["--advisor_lr=1e-4"], name


@pytest.mark.slow  # A command process.
def test_digits_experiment_refuses_a_bad_advisor_lr_before_training(tmp_path):
  """`digits_noise --advisor_lr` is checked like a run's flag, before any run
  trains, and nothing is written."""
  out = tmp_path / "results.json"
  result = subprocess.run(
      [sys.executable, "-m", "advisor_tf.experiments.digits_noise",
       "--advisor_lr=0", f"--out={out}", f"--workdir={tmp_path / 'runs'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "--advisor_lr=0.0 must be > 0." in result.stderr
  assert not out.exists() and not (tmp_path / "runs").exists()
