"""Seeing what the advisor does: label-issue scores and report, telemetry,
the analysis figures and CLI, the label-issue experiment (the notebooks:
test_notebooks.py)."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from advisor_tf import advice, analysis, telemetry, trainer
from advisor_tf import run as run_lib
from advisor_tf.experiments import BASE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _advice(**fields):
  base = dict(positions=np.arange(4), given=np.array([0, 1, 1, 0]),
              clean=np.array([0, 1, 0, 0]),
              logits=np.log(np.array([[.8, .2], [.3, .7], [.9, .1],
                                      [.6, .4]])),
              loss=np.array([0.2, 0.4, 2.0, 0.5]))
  base.update(fields)
  return advice.Advice(**base)


# ---------------------------------------------------------- label issues
def test_advisor_score_is_the_fraction_of_loss_the_advice_removes():
  adv = _advice(mask=np.array([[1., 1.], [.5, .5], [.2, 0.], [1., .5]]),
                suppression=np.array([[0., 1.], [.5, 0.], [1., 0.],
                                      [0., .5]]),
                advised_loss=np.array([0.2, 0.3, 0.5, 0.5]))
  scores = advice.label_issue_scores(adv, eps=0.0)
  np.testing.assert_allclose(scores["loss"], [0.2, 0.4, 2.0, 0.5])
  np.testing.assert_allclose(scores["advisor"], [0.0, 0.25, 0.75, 0.0])
  np.testing.assert_allclose(scores["mask"], [0.0, 0.5, 0.9, 0.25])
  # Σ_{k≠y} p_k s_k: the suppression on the classes believed instead.
  np.testing.assert_allclose(scores["suppression"],
                             [.2 * 1., .3 * .5, .9 * 1., .4 * .5])


def test_meta_weight_net_score_is_one_minus_the_weight():
  weight = np.array([1.0, 0.5, 0.1, 0.8])
  adv = _advice(weight=weight, advised_loss=weight * np.array(
      [0.2, 0.4, 2.0, 0.5]))
  np.testing.assert_allclose(advice.label_issue_scores(adv, eps=0.0)[
      "advisor"], 1.0 - weight, rtol=1e-12)
  assert set(advice.label_issue_scores(_advice())) == {"loss"}  # CE run.


def test_ranking_quality_average_precision():
  noisy = np.array([False, False, True, True])
  assert advice.ranking_quality([0.1, 0.2, 0.9, 0.8], noisy)["ap"] == 1.0
  # Ranked clean, noisy, noisy, clean: AP = (1/2 + 2/3) / 2.
  mixed = advice.ranking_quality([0.9, 0.1, 0.8, 0.2], noisy)
  assert mixed["ap"] == pytest.approx((1 / 2 + 2 / 3) / 2)
  assert advice.ranking_quality([1, 2, 3, 4], np.zeros(4, bool)) is None
  # A diverged model's non-finite scores rank last instead of failing.
  assert advice.ranking_quality([np.nan, 0.1, 0.9, np.inf], noisy)["ap"] == \
      advice.ranking_quality([-1.0, 0.1, 0.9, -1.0], noisy)["ap"]


def test_class_suppression_and_eql_thresholds_by_hand():
  adv = _advice(suppression=np.array([[0.2, 0.6], [0.4, 0.0], [0.8, 0.0],
                                      [0.0, 1.0]]))
  # Class 0 is suppressed only where the label is not 0: rows 1, 2.
  np.testing.assert_allclose(advice.class_suppression(adv, 2), [0.6, 0.8])
  np.testing.assert_allclose(advice.suppression_target([100, 25, 50]),
                             [0.0, 0.75, 0.5])
  thresholds = advice.eql_thresholds([90, 9, 1], threshold=0.05)
  np.testing.assert_allclose(thresholds["EQL step T_λ"], [0, 0, 1])
  np.testing.assert_allclose(thresholds["EQL exp. decay"],
                             np.exp(-np.array([.9, .09, .01]) / 0.05))


def test_top_suspects_gallery_titles_given_and_predicted(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.random((10, 8, 8, 1))
  given, predicted = np.arange(10) % 3, (np.arange(10) + 1) % 3
  fig = analysis.plot_top_suspects(images, given, predicted, ["a", "b", "c"],
                                   noisy=np.arange(10) < 4, cols=4,
                                   ranking="rank_average")
  titled = [ax for ax in fig.axes if ax.get_title()]
  assert len(fig.axes) == 12 and len(titled) == 10
  assert titled[0].get_title() == "a→b" and titled[1].get_title() == "b→c"
  assert titled[0].title.get_color() == analysis._NOISY
  assert titled[5].title.get_color() == analysis._CLEAN
  path = tmp_path / "top_suspects.png"
  fig.savefig(path)
  assert path.stat().st_size > 5000


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """A 3-epoch MFRW-MES digits run (Flip p = 0.6) with telemetry."""
  workdir = str(tmp_path_factory.mktemp("runs") / "mfrw_mes")
  config = dataclasses.replace(BASE, method="mfrw_mes", noise_rate=0.6,
                               epochs=3, lr_decay_epochs=(2, 3),
                               workdir=workdir, export=True,
                               telemetry_examples=500)
  trainer.train(config)
  return workdir


@pytest.mark.slow
def test_telemetry_writes_advisor_histograms_and_a_trace(digits_run):
  records = telemetry.read_trace(digits_run)
  assert [r["epoch"] for r in records] == [1, 2, 3]
  for r in records:
    assert len(r["class_suppression"]) == 10
    assert 0.0 <= min(r["class_suppression"]) <= max(
        r["class_suppression"]) <= 1.0
    for key in ("mask_mean_noisy", "mask_mean_clean", "label_issue_ap",
                "loss_ap"):
      assert 0.0 <= r[key] <= 1.0, key
  tags = set()
  log_dir = os.path.join(digits_run, "tensorboard", "advisor")
  for name in os.listdir(log_dir):
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(log_dir, name)):
      tags.update(v.tag for v in event.summary.value)
  for tag in ("advisor/mask_mean", "advisor/mask_mean/noisy",
              "advisor/mask_mean/clean", "advisor/class_suppression",
              "advisor/label_issue_ap", "advisor/loss_ap"):
    assert tag in tags, tag


@pytest.mark.slow
def test_analyze_writes_every_figure_report_and_label_issues(digits_run,
                                                              tmp_path):
  out = tmp_path / "analysis"
  result = subprocess.run(
      [sys.executable, "-m", "advisor_tf.analyze", f"--workdir={digits_run}",
       f"--out={out}", "--num_examples=12", "--max_points=300"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_text())
  names = set(summary["figures"])
  assert {"mask_pca", "mask_tsne", "suppression_vs_class_size",
          "per_class_accuracy", "confusion", "top_suspects",
          "label_issue_precision_recall"} <= names
  assert summary["label_issue_ranking"] == advice.DEFAULT_RANKING
  assert f"ranking: {advice.DEFAULT_RANKING} (mean AP over the dirty-labels " \
         "grid: " in result.stdout
  assert sum(n.startswith("mask_heatmap_") for n in names) == 2
  for figure in summary["figures"].values():
    assert os.path.getsize(figure["path"]) > 5000
  report = (out / "report.md").read_text()
  assert all(f"{n}.png" in report for n in names)
  assert "<img" in (out / "report.html").read_text()
  with open(out / "label_issues.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == summary["train_examples"]
  scores = [float(r["score"]) for r in rows]
  assert scores == sorted(scores, reverse=True)
  noisy = np.array([int(r["noisy"]) for r in rows], bool)
  assert noisy.mean() == pytest.approx(summary["realised_noise_rate"])
  assert all((r["given_label"] != r["clean_label"]) == bool(int(r["noisy"]))
             for r in rows)


@pytest.mark.slow
def test_analysis_ranks_by_the_chosen_ranking_and_shows_the_suspects(
    digits_run, tmp_path):
  finished = run_lib.load(digits_run)
  summary = analysis.analyze_run(finished, str(tmp_path), max_points=200,
                                 num_examples=5, ranking="cleanlab_model",
                                 num_suspects=10,
                                 grid_results=str(tmp_path / "absent.json"))
  assert summary["label_issue_ranking"] == "cleanlab_model"
  assert summary["label_issue_ranking_grid_ap"] is None
  gallery = tmp_path / "top_suspects.png"
  assert gallery.stat().st_size > 5000
  report = (tmp_path / "report.md").read_text()
  assert "- ranking: cleanlab_model (mean AP over the dirty-labels grid: " \
         "not measured yet)" in report
  assert "![top_suspects](top_suspects.png)" in report
  assert "top_suspects.png" in (tmp_path / "report.html").read_text()
  for name in set(advice.RANKINGS) - set(advice.TRAINED_RANKINGS):
    assert 0.0 < summary[f"{name}_ap"] <= 1.0
    assert 0.0 <= summary[f"{name}_precision_at_k"] <= 1.0
  with open(tmp_path / "label_issues.csv") as f:
    rows = list(csv.DictReader(f))
  scores = [float(r["score"]) for r in rows]
  assert scores == sorted(scores, reverse=True) and max(scores) <= 2.0


@pytest.mark.slow
def test_cleanlab_cv_ranking_trains_the_folds_once_and_ranks_by_them(
    digits_run, tmp_path, monkeypatch):
  finished = run_lib.load(digits_run)
  finished = dataclasses.replace(finished, config=dataclasses.replace(
      finished.config, epochs=1, lr_decay_epochs=(1,)))  # Quick folds.
  said = []
  monkeypatch.setattr(analysis.logging, "warning",
                      lambda msg, *a: said.append(msg % a if a else msg))
  summary = analysis.analyze_run(finished, str(tmp_path), max_points=200,
                                 num_examples=5, ranking="cleanlab_cv",
                                 num_suspects=4, folds=2)
  # Up front what it costs, then a line per fold with the time left.
  assert said[0].startswith("Out-of-sample probabilities: 2 cross-entropy "
                            "trainings of --epochs=1")
  assert "--ranking=loss" in said[0]
  assert said[1].startswith("Fold 1/2 done in") and "s left" in said[1]
  assert said[2].startswith("Fold 2/2 done")
  assert summary["label_issue_ranking"] == "cleanlab_cv"
  assert 0.0 < summary["cleanlab_cv_ap"] <= 1.0
  cache = tmp_path / "cv_probabilities_2fold.npy"
  probs = np.load(cache)
  assert probs.shape == (summary["train_examples"], 10)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
  stamp = cache.stat().st_mtime_ns
  again = analysis.analyze_run(finished, str(tmp_path), max_points=200,
                               num_examples=5, ranking="cleanlab_cv",
                               num_suspects=4, folds=2)
  assert cache.stat().st_mtime_ns == stamp  # Read back, not retrained.
  assert again["cleanlab_cv_ap"] == summary["cleanlab_cv_ap"]


@pytest.mark.slow
def test_analyze_refuses_a_folder_that_is_not_a_run(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "advisor_tf.analyze", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert f"--workdir={tmp_path}: no config.json" in result.stderr


@pytest.mark.slow
def test_label_issue_experiment_writes_the_promised_json(tmp_path):
  out = tmp_path / "ap.json"
  result = subprocess.run(
      [sys.executable, "-m", "advisor_tf.experiments.label_issues",
       f"--out={out}", "--seeds=1", "--epochs=2", "--noce_baseline",
       f"--figure={tmp_path / 'pr.png'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  data = json.loads(out.read_text())
  assert data["noise_rate"] == 0.6
  for key in ("advisor_ap", "loss_ap"):
    assert 0.0 < data[key] <= 1.0
  assert (tmp_path / "pr.png").stat().st_size > 5000

