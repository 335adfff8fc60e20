"""The scale benchmark's pieces (`advisor_tf.tools.scale`) and the input
pipeline's in-memory decoded images: the folder it writes, a stage's wall
time and peak memory from a fresh process, the fitted exponent, the goals
read off a grid; and the decoded cache yields exactly the file path's
images, reads no file again, and stays within its bound."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from advisor_tf.data import sources
from advisor_tf.tools import scale

from test_fashion import fashion_dir
from test_own_data import digits_folder


@pytest.mark.slow
def test_write_folder_is_a_users_folder_with_instance_noise(tmp_path):
  idx = fashion_dir(tmp_path / "idx", train=200, test=30)
  manifest = scale.write_folder(str(tmp_path / "f"), 100, seed=0, rate=0.4,
                                fashion_dir=idx)
  root = tmp_path / "f"
  assert sorted(os.listdir(root)) == ["manifest.json", "test", "train"]
  assert not os.path.exists(str(root) + ".partial")
  train = manifest["splits"]["train"]
  assert len(train) == 100 and len(manifest["splits"]["test"]) == 30
  given = np.array([row[1] for row in train])
  true = np.array([row[2] for row in train])
  # Stratified: each class's share as in the 200 (20 each); noisy labels
  # sit in the folder of the given class; the truth is kept.
  assert np.bincount(true, minlength=10).tolist() == [10] * 10
  assert 0.2 < np.mean(given != true) < 0.6
  assert manifest["realised_rate"] == pytest.approx(np.mean(given != true))
  names = [n.replace("/", "_") for n in sources.FASHION_MNIST_CLASSES]
  assert names[0] == "T-shirt_top"
  for file, label, _ in train:
    assert file.split("/")[1] == names[label] and (root / file).is_file()
  source = sources.image_folder(str(root), image_size=28)
  assert len(source.labels["train"]) == 100
  # The same call again writes nothing; another size is refused.
  assert scale.write_folder(str(root), 100, seed=0, rate=0.4,
                            fashion_dir=idx) == manifest
  with pytest.raises(ValueError, match="another folder"):
    scale.write_folder(str(root), 50, seed=0, fashion_dir=idx)


def test_measure_gives_wall_time_and_the_childs_peak_memory(tmp_path):
  log = str(tmp_path / "log")
  big = scale.measure([sys.executable, "-c",
                       "b = bytearray(300 * 2**20); b[::4096] = b'x' * "
                       "len(b[::4096]); print('held')"], log)
  small = scale.measure([sys.executable, "-c", "print('small')"], log)
  assert big["peak_rss_mib"] >= 300 > small["peak_rss_mib"]
  assert big["seconds"] > 0 and small["seconds"] > 0
  with pytest.raises(RuntimeError, match="status 3; see"):
    scale.measure([sys.executable, "-c", "raise SystemExit(3)"], log)


def test_exponent_is_the_log_log_slope():
  sizes = [6000, 20000, 60000]
  assert scale.exponent(sizes, [2 * n ** 1.0 for n in sizes]) == 1.0
  assert scale.exponent(sizes, [5 * n ** 0.5 for n in sizes]) == 0.5
  assert scale.exponent(sizes, [3.0, None, None]) is None


def test_summarize_reads_the_goals_off_the_stages():
  def stage(seconds, peak=500.0):
    return {"seconds": {str(n): s for n, s in zip([1000, 20000], seconds)},
            "peak_rss_mib": {"1000": peak, "20000": peak}}
  results = {"sizes": [1000, 20000], "stages": {
      "check_first": stage([1, 10]), "select": stage([2, 20]),
      "evaluate": stage([1, 1]), "review": stage([1, 30]),
      "export": stage([1, 1]), "analyze_loss": stage([1, 12]),
      "analyze_cv_loss": stage([10, 100]),
      "predict": stage([3, 3], peak=5000.0), "train": stage([5, 50])},
      "training": {"seconds_per_step": {"1000": 0.1, "20000": 0.1},
                   "steps_per_epoch": {"1000": 15, "20000": 312}}}
  results["stages"]["predict"]["peak_rss_mib"]["20000"] = 4000.0
  results["stages"]["page_load"] = {"seconds": {}, "peak_rss_mib": {},
                                    "load_seconds": {"20000": 0.5}}
  results["stages"]["throughput"] = {
      "seconds": {}, "peak_rss_mib": {}, "variants": {
          "1000": {"ce": {"input_wait_share": 0.2}},
          "20000": {"ce": {"input_wait_share": 0.03},
                    "mfrw_mes_head": {"input_wait_share": 0.06}}}}
  out = scale.summarize(results)
  assert out["goals"]["largest_input_wait"] == {
      "value": 0.06, "step": "mfrw_mes_head", "goal": 0.05, "met": False}
  assert out["stages"]["review"]["exponent"] == pytest.approx(1.135, abs=1e-3)
  goals = out["goals"]
  assert goals["largest_exponent"]["stage"] == "review"
  assert goals["largest_exponent"]["met"] is False
  assert goals["largest_peak_gib"] == {"value": 4.88, "stage": "predict",
                                       "size": "1000", "goal": 4.0,
                                       "met": False}
  # 30 epochs × 312 steps × 0.1 s = 936 s; outside training at 20 000
  # (above the large-set bound the default analyze ranking is `loss`, not
  # `cv_loss`): 10 + 20 + 1 + 30 + 1 + 12 = 74 s.
  assert out["training"]["estimated_default_seconds"]["20000"] == 936.0
  assert out["outside_training_share"]["20000"] == pytest.approx(74 / 936,
                                                                abs=1e-3)
  assert goals["outside_training_share"]["met"] is True
  assert goals["page_load_seconds"] == {"value": 0.5, "goal": 3.0,
                                        "met": True}
  lines = scale.table(out).splitlines()
  assert lines[0] == "| stage | N = 1000 | N = 20000 | k |"
  assert "| review | 1 s (500 MiB) | 30 s (500 MiB) | 1.14 |" in lines


def test_scale_refuses_bad_flags_naming_them():
  assert scale.checked_sizes(["60000", "6000"], ["loss"]) == [6000, 60000]
  for sizes, rankings, words in ((["50"], ["loss"], "--sizes=50"),
                                 (["6k"], ["loss"], "--sizes=6k"),
                                 (["6000"], ["loss", "best"],
                                  "--rankings: best")):
    with pytest.raises(ValueError, match=words):
      scale.checked_sizes(sizes, rankings)


# ----------------------------------------------------- the decoded cache
def _all(source, split):
  n = len(source.labels[split])
  return np.stack([x.numpy() for x in source.images(split, range(n))])


@pytest.mark.slow
def test_decoded_cache_yields_the_files_images_and_reads_them_once(
    tmp_path, monkeypatch):
  folder = digits_folder(tmp_path / "data", per_split=(6, 2, 3))
  monkeypatch.setenv("ADVISOR_TF_DECODED_CACHE_MIB", "0")
  from_files = sources.image_folder(folder, image_size=16)
  want = {s: _all(from_files, s) for s in ("train", "test")}
  monkeypatch.setenv("ADVISOR_TF_DECODED_CACHE_MIB", "64")
  cached = sources.image_folder(folder, image_size=16)
  loaders = {s: cached.image_loader(s) for s in ("train", "test")}
  # Decoded once: the files can go, the images stay (bit for bit).
  for path in cached.paths["train"]:
    os.remove(path)
  for split in ("train", "test"):
    np.testing.assert_array_equal(_all(cached, split), want[split])
  got = loaders["train"](tf.constant(4, tf.int64)).numpy()
  np.testing.assert_array_equal(got, want["train"][4])


@pytest.mark.slow
def test_decoded_cache_stays_within_its_bound(tmp_path, monkeypatch):
  folder = digits_folder(tmp_path / "data", per_split=(6, 2, 3))
  # 18 training images of 16×16×3 float32 take 55 296 bytes: a bound of
  # 0.06 MiB (62 914 bytes) holds them but not the 9 test images besides.
  monkeypatch.setenv("ADVISOR_TF_DECODED_CACHE_MIB", "0.06")
  source = sources.image_folder(folder, image_size=16)
  source.image_loader("train")
  source.image_loader("test")
  os.remove(source.paths["test"][0])
  np.testing.assert_equal(len(_all(source, "train")), 18)
  with pytest.raises(tf.errors.NotFoundError):
    _all(source, "test")  # Read from the files: one is gone.
  monkeypatch.setenv("ADVISOR_TF_DECODED_CACHE_MIB", "lots")
  with pytest.raises(ValueError, match="ADVISOR_TF_DECODED_CACHE_MIB='lots'"):
    sources.decoded_cache_bytes()
