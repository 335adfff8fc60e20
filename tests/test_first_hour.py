"""The first hour with your own photos (issue #37): every documented command
works as written — a run's flags.txt retrains it, the commands keep
TensorFlow's own log quiet, bundled flagfiles by name, the built docs browse
from files, a resumed run's epoch counter."""

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags
from PIL import Image

import advisor_tf
from advisor_tf import backbones
from advisor_tf import cli
from advisor_tf import cli_flags
from advisor_tf import config as config_lib
from advisor_tf import export
from advisor_tf import trainer
from advisor_tf.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS

# absl's own flags (and TensorFlow's): none of them may be in a flags.txt.
ABSL_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "flagfile",
              "undefok", "logtostderr", "alsologtostderr", "verbosity",
              "log_dir", "stderrthreshold", "showprefixforinfo",
              "only_check_args", "pdb", "pdb_post_mortem", "run_with_pdb",
              "use_cprofile_for_profiling", "run_with_profiling",
              "profile_file", "tf_log", "dry_run")

# A line of TensorFlow's C++ log, `I0000 00:00:1796631419.369779  7183
# port.cc:153] ...` or `W1207 08:13:12.346637 ... util.cc:131] ...` (its
# Python log lines name a .py file), or absl's note that opens it.
NATIVE_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+\.cc:\d+\] "
                        r"|^WARNING: All log messages before absl", re.M)


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env.update(extra)
  return env


def _command(module, *args, env=None, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", f"advisor_tf.{module}", *args],
                        cwd=cwd, env=env or _env(), capture_output=True,
                        text=True, timeout=600)


def _photos(root, train=12, other=3):
  """A user's image folder: train/meta/test, two classes, 8x8 PNGs."""
  rng = np.random.default_rng(0)
  for split in ("train", "meta", "test"):
    for name in ("ant", "bee"):
      for i in range(train if split == "train" else other):
        path = root / split / name / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(path)
  return root


# Point 2: a run's flags.txt is a flagfile of its own flags.


def _parsed(argv):
  """`to_config()` and `flags_text()` of `argv` parsed as the command does."""
  FLAGS.unparse_flags()
  try:
    FLAGS(["advisor-train", *argv])
    return cli_flags.to_config(), cli_flags.flags_text()
  finally:
    FLAGS.unparse_flags()


def test_flags_txt_holds_the_commands_own_flags_and_reproduces_the_run(
    tmp_path):
  config, text = _parsed([f"--flagfile={ROOT}/flags/quickstart.cfg",
                          "--epochs=3", "--lr_decay_epochs=2", "--nodeterministic",
                          "--verbosity=1"])
  own = [f.name for f in FLAGS.flags_by_module_dict()["advisor_tf.cli_flags"]]
  names = []
  for line in text.splitlines():
    if not line.startswith("#"):
      name = line[2:].split("=")[0]
      names.append(name[2:] if "=" not in line and name[2:] in own else name)
  assert names and not set(names) & set(ABSL_FLAGS), text
  assert set(names) <= set(own)
  path = tmp_path / "flags.txt"
  path.write_text(text)
  # As the documentation says: the run's flags, then what changes.
  again, _ = _parsed([f"--flagfile={path}", "--workdir=runs/photos_fixed"])
  assert again == dataclasses.replace(config, workdir="runs/photos_fixed")
  resumed, text_again = _parsed([f"--flagfile={path}"])
  assert resumed == config and text_again == text


def test_flags_txt_passes_the_commands_own_parsing(tmp_path):
  """The error that named `flags.txt:1: Unknown command line flag 'nohelp'`
  came from the command's parsing; it accepts the file now."""
  _, text = _parsed([f"--flagfile={ROOT}/flags/quickstart.cfg"])
  path = tmp_path / "flags.txt"
  path.write_text(text)
  cli._parse_or_fail(["advisor-train", f"--flagfile={path}",
                      "--workdir=elsewhere"])  # Would exit 2.


@pytest.mark.slow
def test_a_run_retrains_from_its_flags_txt_with_corrections(tmp_path):
  data = _photos(tmp_path / "photos")
  first = tmp_path / "runs" / "photos"
  proc = _command("train", "--dataset=image_folder", f"--data_dir={data}",
                  "--image_size=8", "--noise=none", "--noise_rate=0",
                  "--meta_per_class=0", "--epochs=1", "--batch_size=4",
                  "--meta_batch_size=2", "--lr_decay_epochs=1",
                  "--embedding_size=8", "--verbose=0", "--noexport",
                  f"--workdir={first}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  flags_txt = (first / "flags.txt").read_text()
  assert not re.search(r"^--(nohelp|flagfile|verbosity)", flags_txt, re.M)
  corrections = tmp_path / "corrections.csv"
  with open(corrections, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "given_label", "action", "new_label", "score",
                     "suggested_label"])
    writer.writerow(["train/ant/0.png", "ant", "relabel", "bee", "0.9",
                     "bee"])
    writer.writerow(["train/ant/1.png", "ant", "drop", "", "0.8", "bee"])
  fixed = tmp_path / "runs" / "photos_fixed"
  # The command advisor-review's --help and the documentation give.
  proc = _command("train", f"--flagfile={first}/flags.txt",
                  f"--corrections={corrections}", f"--meta_from={first}",
                  f"--workdir={fixed}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  # A trusted meta/ folder: the same meta set with or without the flag.
  assert "so it is the same without the flag" in proc.stderr
  before = json.loads((first / "config.json").read_text())
  after = json.loads((fixed / "config.json").read_text())
  assert after.pop("workdir") == str(fixed)
  assert after.pop("corrections") == str(corrections)
  assert after.pop("meta_from") == str(first)
  before.pop("workdir"), before.pop("corrections"), before.pop("meta_from")
  assert after == before
  metrics = json.loads((fixed / "metrics.json").read_text())
  assert metrics["train/examples"] == 23  # One image dropped.
  # And the first run's flags.txt alone resumes (here: re-finishes) it.
  proc = _command("train", f"--flagfile={first}/flags.txt")
  assert proc.returncode == 0, proc.stderr[-3000:]


# Point 4: the commands keep TensorFlow's own (C++) log off the terminal.


@pytest.mark.parametrize("argv,environ,level", [
    ([], {}, "3"),
    ([], {"TF_CPP_MIN_LOG_LEVEL": "0"}, "0"),
    ([], {"TF_CPP_MIN_LOG_LEVEL": "2"}, "2"),
    (["--tf_log"], {"TF_CPP_MIN_LOG_LEVEL": "3"}, "0"),
    (["--verbosity=0"], {}, "0"),
    (["--verbosity", "-1"], {}, "1"),
    (["-v=-2"], {}, "2"),
    (["--verbosity=-5"], {}, "3"),
    (["--verbosity=1"], {"TF_CPP_MIN_LOG_LEVEL": "3"}, "3"),
])
def test_native_log_level(argv, environ, level):
  assert cli.native_log_level(argv, environ) == level


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """A tiny exported classifier of two classes and two photos to classify."""
  root = tmp_path_factory.mktemp("served")
  data = _photos(root / "photos", train=2, other=1)
  source = sources.load("image_folder", str(data), image_size=8)
  keras.utils.set_random_seed(0)
  body = backbones.small_cnn((8, 8, 3), widths=(4, 4, 8))
  head = backbones.linear_head(body.output_shape[-1], 2)
  inputs = keras.Input((8, 8, 3), name="image")
  classifier = keras.Model(inputs, head(body(inputs)), name="classifier")
  path, _ = export.export(classifier, source, str(root / "run" / "saved_model"))
  return dict(model=path, images=str(data / "test"))


@pytest.mark.slow  # Two command processes (TensorFlow starts twice).
def test_commands_print_no_tensorflow_log_unless_asked(served):
  proc = _command("predict", f"--model={served['model']}", served["images"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith("path,class_name,probability")
  assert not NATIVE_LOG.search(proc.stderr), proc.stderr
  assert "oneDNN" not in proc.stderr, proc.stderr
  # A user's own TF_CPP_MIN_LOG_LEVEL is kept: 0 shows TensorFlow's log.
  proc = _command("predict", "--help", env=_env(TF_CPP_MIN_LOG_LEVEL="0"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert NATIVE_LOG.search(proc.stderr), proc.stderr


# Point 8(a): a bundled flagfile by name, from any folder.


def test_bundled_flagfiles_by_name(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # No flags/ here, as for an installed user.
  quickstart = advisor_tf.flagfile("quickstart")
  for given in ("quickstart", "quickstart.cfg", "flags/quickstart.cfg",
                "./flags/quickstart.cfg"):
    assert cli.bundled_flagfiles(["prog", f"--flagfile={given}", "-v=1"]) == [
        "prog", f"--flagfile={quickstart}", "-v=1"]
  assert cli.bundled_flagfiles(["prog", "--flagfile", "quickstart"]) == [
      "prog", "--flagfile", quickstart]
  (tmp_path / "quickstart").write_text("--epochs=3\n")  # A file wins.
  own = ["prog", "--flagfile=quickstart", "--flagfile=other/run/flags.txt"]
  assert cli.bundled_flagfiles(own) == own
  with pytest.raises(SystemExit) as exit_:
    cli.bundled_flagfiles(["prog", "--flagfile=flags/nosuch.cfg"])
  assert exit_.value.code == 2
  assert "quickstart" in cli.grouped_help("", {})


@pytest.mark.slow  # A command process.
def test_installed_users_flagfile_runs_from_any_folder(tmp_path):
  env = _env(PYTHONPATH=ROOT)  # As installed: importable from anywhere.
  proc = _command("train", "--flagfile=quickstart", "--epochs=3",
                  "--lr_decay_epochs=2", "--dry_run", env=env, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = json.loads(proc.stdout)
  assert config["dataset"] == "digits" and config["epochs"] == 3
  # And the --help that names it (the command's docstring).
  from advisor_tf import train
  assert "advisor-train --flagfile=quickstart " in train.__doc__


# Point 8(c): a resumed run's progress counts the run's epochs.


@pytest.mark.slow
def test_a_resumed_run_shows_which_epoch_of_the_run_it_is_in(tmp_path,
                                                             capsys):
  workdir = tmp_path / "run"
  config = dataclasses.replace(
      config_lib.TrainConfig(), workdir=str(workdir), epochs=3,
      steps_per_epoch=4, lr_decay_epochs=(2,), verbose=2, export=False,
      embedding_size=8, batch_size=16, meta_batch_size=10,
      checkpoint_every=2, telemetry_examples=0)
  # Stopped during the second epoch (step 6 of 12), as Ctrl-C or a kill
  # leaves it; then the same command again.
  trainer.train(dataclasses.replace(config, train_steps=6))
  (workdir / "config.json").write_text(config.to_json())
  capsys.readouterr()
  keras.backend.clear_session()
  metrics = trainer.train(config)
  assert metrics["resumed_from_step"] == 6 and metrics["train/steps"] == 12
  shown = re.findall(r"^Epoch (\d+/\d+)$", capsys.readouterr().out, re.M)
  assert shown == ["2/3", "3/3"]
