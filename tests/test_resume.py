"""Runs that survive: kill and resume, corrupted checkpoints, refused
workdirs, non-finite losses."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from advisor_tf import config as config_lib
from advisor_tf import trainer
from conftest import snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--flagfile=flags/quickstart.cfg", "--epochs=3", "--lr_decay_epochs=2",
        "--checkpoint_every=4", "--keep_checkpoints=2", "--noexport",
        "--verbose=0", "--embedding_size=16"]


def _cli(workdir, *extra, wait=True):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.Popen(
      [sys.executable, "-m", "advisor_tf.train", *ARGS, f"--workdir={workdir}",
       *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  if wait:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  return proc


def _weights(workdir):
  """Every saved tensor but the save counter and the object graph (whose
  Python names, `adam_1`, count the objects the process built before)."""
  reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if "save_counter" not in k and "OPTIMIZER_SLOT" not in k
          and k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _checkpoint_steps(workdir):
  state = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
  if not state:
    return []
  return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
  _cli(tmp_path / "straight")
  killed = tmp_path / "killed"
  proc = _cli(killed, wait=False)
  deadline = time.time() + 300
  while time.time() < deadline:
    steps = _checkpoint_steps(killed)
    if steps and max(steps) >= 8:
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  last = max(_checkpoint_steps(killed))
  assert last % 17 != 0 and last < 51, "killed mid-epoch, before the end"
  assert not (killed / "metrics.json").exists()
  _cli(killed)
  import json
  metrics = json.loads((killed / "metrics.json").read_text())
  assert metrics["resumed_from_step"] >= 8
  straight, resumed = _weights(tmp_path / "straight"), _weights(killed)
  assert straight.keys() == resumed.keys()
  assert any("advisor" in k for k in straight)
  for key in straight:
    np.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)


def _small(workdir, **overrides):
  settings = dict(workdir=str(workdir), epochs=2, steps_per_epoch=6,
                  lr_decay_epochs=(1,), verbose=0, export=False,
                  embedding_size=8, checkpoint_every=2, keep_checkpoints=3)
  settings.update(overrides)
  return dataclasses.replace(config_lib.TrainConfig(), **settings)


@pytest.mark.slow
def test_corrupted_newest_checkpoint_falls_back_to_previous(tmp_path):
  reference = trainer.train(_small(tmp_path / "ref"))
  keras.backend.clear_session()
  config = _small(tmp_path / "run")
  trainer.train(dataclasses.replace(config, epochs=1, lr_decay_epochs=(1,)))
  # The first run stopped at step 6 (ckpt 2, 4, 6). Corrupt ckpt-6.
  ckpt_dir = tmp_path / "run" / "checkpoints"
  for name in os.listdir(ckpt_dir):
    if name.startswith("ckpt-6.data"):
      (ckpt_dir / name).write_bytes(b"\0garbage" * 10)
  # Same configuration apart from the epochs: allow via a fresh config.json.
  (tmp_path / "run" / "config.json").write_text(config.to_json())
  keras.backend.clear_session()
  metrics = trainer.train(config)
  assert metrics["resumed_from_step"] == 4
  assert metrics["train/steps"] == 12
  ref, got = _weights(tmp_path / "ref"), _weights(tmp_path / "run")
  for key in ref:
    np.testing.assert_array_equal(ref[key], got[key], err_msg=key)
  assert reference["test/top1"] == metrics["test/top1"]


@pytest.mark.slow
def test_lost_checkpoint_state_file_resumes_from_the_files(tmp_path):
  """`checkpoints/checkpoint` deleted: the run finds ckpt-N itself, resumes
  from the newest and overwrites none of the files it found."""
  reference = trainer.train(_small(tmp_path / "ref"))
  keras.backend.clear_session()
  config = _small(tmp_path / "run")
  trainer.train(dataclasses.replace(config, epochs=1, lr_decay_epochs=(1,)))
  (tmp_path / "run" / "config.json").write_text(config.to_json())
  ckpt_dir = tmp_path / "run" / "checkpoints"
  (ckpt_dir / "checkpoint").unlink()
  found = {name: (ckpt_dir / name).read_bytes()
           for name in os.listdir(ckpt_dir) if name.startswith("ckpt-")}
  assert {n.split(".")[0] for n in found} == {"ckpt-2", "ckpt-4", "ckpt-6"}
  keras.backend.clear_session()
  metrics = trainer.train(config)
  assert metrics["resumed_from_step"] == 6
  assert metrics["train/steps"] == 12
  for name, data in found.items():  # Kept (or rotated out), never rewritten.
    path = ckpt_dir / name
    assert not path.exists() or path.read_bytes() == data, name
  ref, got = _weights(tmp_path / "ref"), _weights(tmp_path / "run")
  for key in ref:
    np.testing.assert_array_equal(ref[key], got[key], err_msg=key)
  assert reference["test/top1"] == metrics["test/top1"]


@pytest.mark.slow
def test_workdir_with_other_configuration_is_refused(tmp_path):
  config = _small(tmp_path / "run", epochs=1)
  trainer.train(config)
  before = snapshot(tmp_path / "run")
  keras.backend.clear_session()
  with pytest.raises(ValueError, match=r"--lr: 0\.05 in the workdir, 0\.1 now"):
    trainer.train(dataclasses.replace(config, lr=0.1, verbose=1))
  assert snapshot(tmp_path / "run") == before


def test_nonfinite_loss_stops_with_step_and_keeps_good_state(tmp_path):
  # A learning rate this large overflows within a few steps.
  config = _small(tmp_path / "run", lr=1e30, method="ce", momentum=0.0,
                  checkpoint_every=0)
  with pytest.raises(FloatingPointError,
                     match=r"Non-finite training loss .* at a step in \[1, "):
    trainer.train(config)
  weights = _weights(tmp_path / "run")
  assert all(np.isfinite(v).all() for v in weights.values()
             if np.asarray(v).dtype.kind == "f")


@pytest.mark.slow
@pytest.mark.parametrize("change,message", [
    ({"imbalance_factor": 0.5}, "--imbalance_factor=0.5 must be >= 1"),
    ({"noise_rate": 1.0}, r"--noise_rate=1.0 must be in \[0, 1\)"),
    ({"noise_rate": -0.2}, r"--noise_rate=-0.2 must be in \[0, 1\)"),
    ({"meta_per_class": 200}, "--meta_per_class"),
    ({"batch_size": 5000}, "--batch_size=5000 is larger than the training"),
    ({"meta_batch_size": 101}, "--meta_batch_size=101 is larger than the meta"),
    ({"method": "mes", "virtual_scope": "bogus"}, "--virtual_scope='bogus'"),
    ({"method": "ce", "meta_update_every": 2}, "not --method=ce"),
    ({"strategy": "mirrored", "meta_update_every": 2}, "--strategy=default"),
    ({"flip_targets": "similar", "noise": "flip3", "dataset": "digits",
      "lr_schedule": "step", "lr_decay_epochs": (9,)}, "--lr_decay_epochs"),
])
def test_bad_input_is_refused_and_workdir_untouched(tmp_path, change,
                                                    message):
  config = _small(tmp_path / "run", epochs=1)
  trainer.train(config)
  before = snapshot(tmp_path / "run")
  keras.backend.clear_session()
  with pytest.raises(ValueError, match=message):
    trainer.train(dataclasses.replace(config, **change))
  assert snapshot(tmp_path / "run") == before


def _user_data(root):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split in ("train", "meta", "test"):
    for name in ("ant", "bee"):
      for i in range(12 if split == "train" else 3):
        path = root / split / name / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(path)
  return root


def _break_missing_meta_class(root):
  for f in (root / "meta" / "bee").iterdir():
    f.unlink()


def _break_corrupt_image(root):
  (root / "train" / "ant" / "4.png").write_bytes(b"\x89PNG broken")


def _break_meta_in_test(root):
  import shutil
  shutil.rmtree(root / "test")
  shutil.copytree(root / "meta", root / "test")


@pytest.mark.slow
@pytest.mark.parametrize("breakage,message", [
    (_break_missing_meta_class, "Class 'bee' has no image in the meta set"),
    # The unreadable file is skipped (and reported), so the data changed.
    (_break_corrupt_image, r"other data.*'train': 24 examples in the "
     "workdir, 23 now"),
    (_break_meta_in_test, "same image is in the meta set and in the test"),
])
def test_bad_dataset_files_are_named_and_workdir_untouched(tmp_path, breakage,
                                                           message):
  data = _user_data(tmp_path / "data")
  config = _small(tmp_path / "run", epochs=1, dataset="image_folder",
                  data_dir=str(data), image_size=8, batch_size=4,
                  meta_batch_size=2, meta_per_class=1, noise="none",
                  noise_rate=0.0)
  trainer.train(config)
  before = snapshot(tmp_path / "run")
  breakage(data)
  keras.backend.clear_session()
  with pytest.raises(ValueError, match=message):
    trainer.train(config)
  assert snapshot(tmp_path / "run") == before


@pytest.mark.slow
def test_user_image_folder_from_the_cli(tmp_path):
  data = _user_data(tmp_path / "data")
  proc = subprocess.run(
      [sys.executable, "-m", "advisor_tf.train", "--dataset=image_folder",
       f"--data_dir={data}", "--image_size=8", "--method=mfrw_mes",
       "--noise=none", "--noise_rate=0", "--meta_per_class=0", "--epochs=1",
       "--batch_size=4",
       "--meta_batch_size=2", "--lr_decay_epochs=1", "--embedding_size=8",
       "--verbose=0", f"--workdir={tmp_path / 'run'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["meta/examples"] == 6  # Its own meta folder: all 3 per class.
  assert metrics["train/examples"] == 24
  assert (tmp_path / "run" / "saved_model" / "saved_model.pb").exists()
  # The label-issue report of a user's folder names files; with no known
  # clean labels there is no precision/recall to report.
  from advisor_tf import analysis, run as run_lib
  summary = analysis.analyze_run(run_lib.load(str(tmp_path / "run")),
                                 str(tmp_path / "analysis"), max_points=24)
  assert "advisor_ap" not in summary
  assert "label_issue_precision_recall" not in summary["figures"]
  # The truth is unknown: no noise rate, suspects marked instead, said so.
  assert "realised_noise_rate" not in summary
  assert summary["labels_truth"] == "unknown"
  assert summary["flagged_suspects"] == 2  # Top 10 % of 24.
  report = (tmp_path / "analysis" / "report.md").read_text()
  assert "true labels unknown" in report and "noise rate" not in report
  assert "top 10% suspects" in summary["figures"]["mask_pca"]["caption"]
  assert {"mask_pca", "mask_tsne", "confusion"} <= set(summary["figures"])
  import csv
  with open(summary["label_issues_csv"]) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 24 and "clean_label" not in rows[0]
  assert all(os.path.isfile(r["path"]) and
             os.path.join("train", r["given_label"]) in r["path"]
             for r in rows)
