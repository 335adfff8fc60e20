"""A new user's path: their own image folder in, through the command line,
a served classifier out; and the first contact with the commands."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from advisor_tf import run as run_lib
from advisor_tf.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ)
ENV.pop("TF_CPP_MIN_LOG_LEVEL", None)  # The commands quiet TF themselves.


def _cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600, env=ENV)


def digits_folder(root, classes=(0, 1, 2), per_split=(12, 3, 4)):
  """The bundled digits as a user's folder: train/ meta/ test/, one
  sub-folder per class, PNG and WebP files, plus what a real folder also
  holds (a hidden checkpoint folder, .DS_Store)."""
  bunch = load_digits()
  images = (bunch.images * (255 / 16)).round().astype(np.uint8)
  for c in classes:
    picks = np.flatnonzero(bunch.target == c)
    start = 0
    for split, count in zip(("train", "meta", "test"), per_split):
      folder = os.path.join(root, split, f"digit_{c}")
      os.makedirs(folder, exist_ok=True)
      for k, i in enumerate(picks[start:start + count]):
        ext = "webp" if k % 2 else "png"
        options = {"lossless": True} if ext == "webp" else {}
        Image.fromarray(images[i]).convert("RGB").save(
            os.path.join(folder, f"{i}.{ext}"), **options)
      start += count
      open(os.path.join(folder, ".DS_Store"), "wb").close()
  hidden = os.path.join(root, "train", ".ipynb_checkpoints")
  os.makedirs(hidden, exist_ok=True)
  Image.fromarray(images[0]).save(os.path.join(hidden, "x.png"))
  return str(root)


_SERVE = textwrap.dedent("""
    import json, sys
    sys.modules["advisor_tf"] = None  # This package must not be needed.
    import numpy as np, tensorflow as tf
    from PIL import Image
    paths = json.loads(sys.argv[2])
    model = tf.saved_model.load(sys.argv[1])
    files = [open(p, "rb").read() for p in paths]
    by_bytes = model.signatures["serving_default"](
        image_bytes=tf.constant(files))
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"))
                       for p in paths])
    by_pixels = model.signatures["predict_images"](images=tf.constant(pixels))
    print(json.dumps({name: {
        "probabilities": out["probabilities"].numpy().tolist(),
        "class_id": out["class_id"].numpy().tolist(),
        "class_name": [n.decode() for n in out["class_name"].numpy()]}
        for name, out in (("bytes", by_bytes), ("pixels", by_pixels))}))
""")


@pytest.mark.slow
def test_own_folder_through_the_cli_to_a_served_classifier(tmp_path):
  data = digits_folder(tmp_path / "photos")
  workdir = str(tmp_path / "run")
  proc = _cli("advisor_tf.train", "--dataset=image_folder",
              f"--data_dir={data}", "--image_size=8", "--epochs=2",
              "--lr_decay_epochs=1", "--batch_size=8", "--meta_batch_size=3",
              "--embedding_size=8", "--meta_per_class=0", "--verbose=0",
              f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  # No synthetic noise unless asked, and the run says so.
  assert "synthetic label noise: none" in proc.stdout
  assert json.load(open(os.path.join(workdir, "config.json")))["noise"] == (
      "none")
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  assert "train/realised_noise_rate" not in metrics
  # It ends with where things are and what to run next.
  assert (f"advisor-predict --model={workdir}/saved_model" in proc.stdout or
          f"python -m advisor_tf.predict --model={workdir}/saved_model"
          in proc.stdout)
  assert f"evaluate --workdir={workdir}" in proc.stdout
  assert "TensorFlow binary is optimized" not in proc.stderr  # Quiet TF.
  # The labels it trained on are the folder's; hidden entries are not data.
  config, source, split = run_lib.load_data(workdir)
  assert list(source.class_names) == ["digit_0", "digit_1", "digit_2"]
  train_paths = np.asarray(source.paths["train"])[split.train_indices]
  assert not any("/." in p for p in train_paths)
  np.testing.assert_array_equal(
      split.train_labels,
      [source.class_names.index(os.path.basename(os.path.dirname(p)))
       for p in train_paths])
  assert {p[-4:] for p in source.paths["test"]} == {".png", "webp"}
  # The checkpoint's predictions, as `evaluate` computes them.
  model, _ = run_lib.restore_model(workdir, config, source, split)
  logits = model.predict(pipeline.evaluation(source, "test", 64), verbose=0)
  expected = np.exp(logits - logits.max(1, keepdims=True))
  expected /= expected.sum(1, keepdims=True)
  # The export, in a process where advisor_tf cannot be imported.
  paths = [str(p) for p in source.paths["test"]]
  served = subprocess.run(
      [sys.executable, "-c", _SERVE, os.path.join(workdir, "saved_model"),
       json.dumps(paths)], cwd=str(tmp_path), capture_output=True, text=True,
      timeout=300, env=ENV)
  assert served.returncode == 0, served.stderr[-3000:]
  outputs = json.loads(served.stdout.strip().splitlines()[-1])
  for name in ("bytes", "pixels"):
    np.testing.assert_allclose(outputs[name]["probabilities"], expected,
                               atol=1e-5)
    assert outputs[name]["class_id"] == list(expected.argmax(1))
    assert outputs[name]["class_name"] == [
        source.class_names[i] for i in expected.argmax(1)]
  # The same classes again through evaluate's own export path.
  report = _cli("advisor_tf.evaluate", f"--workdir={workdir}",
                "--model=saved_model")
  assert report.returncode == 0, report.stderr[-2000:]
  evaluated = json.load(open(os.path.join(workdir,
                                          "eval_test_saved_model.json")))
  confusion = np.zeros((3, 3), int)
  np.add.at(confusion, (source.labels["test"], expected.argmax(1)), 1)
  assert evaluated["confusion_matrix"] == confusion.tolist()
  assert os.path.isfile(os.path.join(workdir, "classifier.keras"))


@pytest.mark.slow
@pytest.mark.parametrize("flag,message", [
    ("--lr=nan", "--lr=nan must be a finite number"),
    ("--lr=inf", "--lr=inf must be a finite number"),
    ("--lr=0", "--lr=0.0 must be > 0"),
    ("--noise_rate=-0.1", "--noise_rate=-0.1 must be in [0, 1)"),
    ("--batch_size=0", "--batch_size=0 must be >= 1"),
    ("--advisor_lr=-1", "--advisor_lr=-1.0 must be > 0"),
])
def test_bad_values_get_one_line_naming_the_flag(tmp_path, flag, message):
  proc = _cli("advisor_tf.train", flag, f"--workdir={tmp_path / 'run'}",
              "--dry_run")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], proc.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_small_folder_and_a_short_run_train_with_the_defaults(tmp_path):
  """The README's own command on 3 meta images per class and 3 epochs: the
  meta batch and the decay epochs adapt, and the run says so."""
  data = digits_folder(tmp_path / "photos")  # meta/: 3 per class, 9 in all.
  proc = _cli("advisor_tf.train", "--dataset=image_folder",
              f"--data_dir={data}", "--image_size=8", "--meta_per_class=0",
              "--epochs=3", "--batch_size=16", "--noexport",
              "--telemetry_examples=0",
              f"--workdir={tmp_path / 'run'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "--meta_batch_size=9 (the smaller of 50 and the meta set's 9 " \
      "images)" in proc.stderr
  assert "--lr_decay_epochs=2 (2/3 and 5/6 of --epochs=3)" in proc.stderr
  config = json.loads((tmp_path / "run" / "config.json").read_text())
  assert config["meta_batch_size"] == 9 and config["lr_decay_epochs"] == [2]


@pytest.mark.slow
def test_unknown_dataset_and_bad_folders_get_one_line(tmp_path):
  proc = _cli("advisor_tf.train", "--dataset=photos", "--dry_run")
  assert proc.returncode != 0 and "--dataset" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) <= 2  # absl: error + hint.
  data = digits_folder(tmp_path / "photos", per_split=(4, 2, 2))
  os.makedirs(os.path.join(data, "train", "digit_3"))  # An empty class.
  proc = _cli("advisor_tf.train", "--dataset=image_folder",
              f"--data_dir={data}", "--image_size=8",
              f"--workdir={tmp_path / 'run'}")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "digit_3" in proc.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("command,groups", [
    ("advisor_tf.train", ["data:", "method:", "optimisation:", "run:"]),
    ("advisor_tf.evaluate", ["run:", "evaluation:"]),
    ("advisor_tf.analyze", ["run:", "report:"]),
    ("advisor_tf.predict", ["model:", "output:"]),
    ("advisor_tf.tools.bench", ["model:", "workload:", "timing:"]),
])
def test_help_lists_flags_by_group_with_defaults(command, groups):
  proc = _cli(command, "--help")
  assert proc.returncode == 0, proc.stderr
  for group in groups:
    assert f"\n{group}\n" in proc.stdout
  body = proc.stdout.split(f"\n{groups[0]}\n", 1)[1]
  flag_lines = [l for l in body.splitlines() if l.startswith("  --")]
  assert flag_lines and all("(default: " in l for l in flag_lines)
  if command == "advisor_tf.train":
    assert "  --noise: " in proc.stdout and "<none|flip|" in proc.stdout


def _readme_own_images_command():
  """The README's `advisor-train` line for your own images, as argv."""
  readme = open(os.path.join(ROOT, "README.md")).read()
  line = next(l for block in re.findall(r"```bash\n(.*?)\n```", readme, re.S)
              for l in block.splitlines()
              if l.startswith("advisor-train --dataset=image_folder"))
  return shlex.split(line.split("#")[0])


def test_own_folder_needs_no_meta_flag_with_or_without_meta(tmp_path):
  """Unset --meta_per_class: all of a meta/ folder (here 3 per class,
  fewer than 10), or 10 per class chosen out of train without one."""
  from advisor_tf import config as config_lib
  data = digits_folder(tmp_path / "photos")
  config = config_lib.TrainConfig(dataset="image_folder", data_dir=data,
                                  image_size=8, workdir=str(tmp_path / "r"))
  source, split = run_lib.prepare_data(config.validate())
  assert split.meta_source == "folder" and len(split.meta_indices) == 9
  assert len(split.train_indices) == 36
  no_meta = tmp_path / "no_meta"
  digits_folder(no_meta, per_split=(25, 0, 4))
  shutil.rmtree(no_meta / "meta")
  config = config_lib.TrainConfig(dataset="image_folder",
                                  data_dir=str(no_meta), image_size=8,
                                  workdir=str(tmp_path / "r2")).validate()
  source, split = run_lib.prepare_data(config)
  assert split.meta_source == "auto"
  np.testing.assert_array_equal(np.bincount(split.meta_labels), [10] * 3)
  # --meta_per_class=0 without a meta/ folder says to drop the flag.
  with pytest.raises(ValueError, match="drop --meta_per_class"):
    run_lib.prepare_data(config_lib.TrainConfig(
        dataset="image_folder", data_dir=str(no_meta), image_size=8,
        meta_per_class=0, workdir=str(tmp_path / "r3")).validate())
  # A class of one image cannot give a meta set and train: one line.
  lonely = no_meta / "train" / "digit_1"
  for name in [n for n in sorted(os.listdir(lonely))
               if n.endswith(".png")][1:] + [n for n in os.listdir(lonely)
                                             if n.endswith(".webp")]:
    os.remove(lonely / name)
  with pytest.raises(ValueError, match="'digit_1' has 1 training image.*"
                     "at least 2 per class"):
    run_lib.prepare_data(config)
  # The README's command carries no meta flag.
  assert not [a for a in _readme_own_images_command() if "meta" in a]


@pytest.mark.slow
@pytest.mark.parametrize("with_meta", [True, False])
def test_the_readmes_own_images_command_runs_as_written(tmp_path, with_meta):
  data = digits_folder(tmp_path / "photos", per_split=(25, 3, 4))
  if not with_meta:
    shutil.rmtree(os.path.join(data, "meta"))
  argv = _readme_own_images_command()
  assert argv[0] == "advisor-train"
  argv = [a for a in argv[1:] if not a.startswith(("--data_dir", "--workdir",
                                                   "--image_size"))]
  proc = _cli("advisor_tf.train", *argv, f"--data_dir={data}",
              "--image_size=8", f"--workdir={tmp_path / 'run'}",
              "--epochs=1", "--batch_size=16", "--noexport",
              "--telemetry_examples=0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["meta/source"] == ("folder" if with_meta else "auto")
  assert metrics["meta/examples"] == (9 if with_meta else 30)
  assert ("--meta_source=folder" if with_meta
          else "--meta_source=auto") in proc.stderr
