"""The user-path grid: the digits written as an image folder hold the cell's
labels, noise and long tail; the grid's JSON is resumable."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from advisor_tf import run as run_lib
from advisor_tf.data import sources
from advisor_tf.experiments import dirty_labels
from advisor_tf.experiments import user_path


def _folder_labels(root, split):
  """`{file: folder label}` of a written split."""
  out = {}
  for name in sorted(os.listdir(os.path.join(root, split))):
    for file in os.listdir(os.path.join(root, split, name)):
      out[os.path.join(split, name, file)] = int(name)
  return out


@pytest.mark.parametrize("cell", ["flip0.4", "lt20_sym0.4"])
def test_folder_holds_the_cells_labels(tmp_path, cell):
  root = str(tmp_path / "folder")
  manifest = user_path.write_digits_folder(root, cell, seed=1, image_size=16)
  _, split = run_lib.prepare_data(dirty_labels.cell_config(cell, "ce", 1))
  rows = {s: manifest["splits"][s] for s in ("train", "meta", "test")}
  # The file sits in its given (noisy) label's folder.
  for s, listed in rows.items():
    assert _folder_labels(root, s) == {f: g for f, g, _ in listed}
  train = np.array([[g, c] for _, g, c in rows["train"]])
  assert len(train) == len(split.train_indices)
  np.testing.assert_array_equal(np.sort(train[:, 0]),
                                np.sort(split.train_labels))
  noisy = train[:, 0] != train[:, 1]
  assert noisy.mean() == pytest.approx(split.noise_rate)
  assert manifest["realised_noise_rate"] == pytest.approx(split.noise_rate)
  assert noisy.mean() == pytest.approx(0.4, abs=0.06)
  counts = np.bincount(train[:, 1], minlength=10)
  if "lt20" in cell:
    assert counts[0] / counts[9] == pytest.approx(20, rel=0.25)
  # Meta: 10 clean images per class, out of train; test: the fixed split.
  meta = np.array([[g, c] for _, g, c in rows["meta"]])
  assert (meta[:, 0] == meta[:, 1]).all()
  assert np.bincount(meta[:, 0]).tolist() == [10] * 10
  names = {os.path.basename(f) for f, _, _ in rows["meta"]}
  assert not names & {os.path.basename(f) for f, _, _ in rows["train"]}
  assert len(rows["test"]) == 599
  # Pixels: RGB, 0..255, 8×8 upsampled by nearest neighbour.
  digits = sources.digits()
  file, label, _ = rows["test"][0]
  pixels = np.asarray(Image.open(os.path.join(root, file)))
  assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
  index = int(os.path.basename(file)[4:8])
  assert label == digits.labels["test"][index]
  want = np.round(digits.image_loader("test")(index).numpy()[..., 0] * 255)
  np.testing.assert_array_equal(pixels[::2, ::2, 0], want)
  np.testing.assert_array_equal(pixels[1::2, 1::2, 1], want)
  # Written once: a second call with the same cell reuses it, another refuses.
  assert user_path.write_digits_folder(root, cell, 1, 16) == manifest
  with pytest.raises(ValueError, match="another folder"):
    user_path.write_digits_folder(root, cell, 2, 16)


def test_runs_are_a_users_defaults_on_the_folder(tmp_path):
  config = user_path.run_config("sym0.4", "mfrw_mes", 2, str(tmp_path))
  assert config.dataset == "image_folder" and config.image_size == 32
  assert config.noise == "none" and config.augment
  assert config.data_dir == user_path.folder_of(str(tmp_path), "sym0.4", 2,
                                                32)
  assert config.epochs == 30 and config.advisor_lr == 1e-3
  assert dirty_labels.parse_overrides("augment=false,advisor_lr=1e-4,"
                                      "steps_per_epoch=3") == {
                                          "augment": False,
                                          "advisor_lr": 1e-4,
                                          "steps_per_epoch": 3}
  with pytest.raises(ValueError, match="--set"):
    dirty_labels.parse_overrides("no_such_field=1")


def test_grid_skips_what_its_json_holds(tmp_path, monkeypatch):
  """The resumable loop (fast); the same with real runs is slow."""
  trained = []

  def fake_run_one(cell, method, seed, root, image_size=32, folder_size=None,
                   epochs=None, overrides=None, tag=""):
    trained.append((cell + tag, method, seed))
    return {"accuracy": 50.0 + seed, "train_seconds": 1.0,
            "mask_mean": [0.5]}

  monkeypatch.setattr(user_path, "run_one", fake_run_one)
  out = str(tmp_path / "user_path.json")
  logs = []
  results = user_path.run_grid(out, ["flip0.4"], ["ce", "mfrw_mes"], [0],
                               str(tmp_path), log=logs.append)
  assert trained == [("flip0.4", "ce", 0), ("flip0.4", "mfrw_mes", 0)]
  with open(out) as f:
    assert json.load(f) == results
  trained.clear()
  again = user_path.run_grid(out, ["flip0.4"], ["ce", "mfrw_mes"], [0, 1],
                             str(tmp_path), tag="_64", log=logs.append)
  assert trained == [("flip0.4_64", "ce", 0), ("flip0.4_64", "mfrw_mes", 0),
                     ("flip0.4_64", "ce", 1), ("flip0.4_64", "mfrw_mes", 1)]
  assert again["flip0.4_64"]["ce"]["accuracy"] == [50.0, 51.0]
  trained.clear()
  user_path.run_grid(out, ["flip0.4"], ["ce"], [1, 0], str(tmp_path),
                     tag="_64", log=logs.append)
  assert trained == [] and "0 run(s) to do" in logs[-1]


@pytest.mark.slow
def test_grid_json_is_resumable(tmp_path):
  out = str(tmp_path / "user_path.json")
  root = str(tmp_path / "runs")
  tiny = dict(steps_per_epoch=2, telemetry_examples=64)
  logs = []
  results = user_path.run_grid(out, ["flip0.4"], ["ce", "mfrw_mes"], [0],
                               root, image_size=8, epochs=1, overrides=tiny,
                               log=logs.append)
  entry = results["flip0.4"]
  assert set(entry) == {"ce", "mfrw_mes"} and entry["ce"]["seeds"] == [0]
  ours = entry["mfrw_mes"]
  assert len(ours["mask_mean"][0]) == 1 and len(
      ours["suppression_mean"][0]) == 1
  assert 0 < ours["mask_mean"][0][0] < 1
  assert ours["realised_noise_rate"][0] == pytest.approx(0.4, abs=0.06)
  with open(out) as f:
    assert json.load(f) == results
  before = os.path.getmtime(out)
  logs.clear()
  again = user_path.run_grid(out, ["flip0.4"], ["ce", "mfrw_mes"], [0],
                             root, image_size=8, epochs=1, overrides=tiny,
                             log=logs.append)
  assert again == results and "0 run(s) to do" in logs[0]
  assert os.path.getmtime(out) == before
