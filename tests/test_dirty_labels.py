"""The dirty-labels grid: its protocol, its label-issue rankings (cleanlab's
included), its resumable JSON, and the report naming the ranking."""

import dataclasses
import json
import os
import types

import numpy as np
import pytest

from advisor_tf import advice, analysis
from advisor_tf import run as run_lib
from advisor_tf.experiments import dirty_labels as grid


# ---------------------------------------------------------------- protocol
def test_set_overrides_change_only_the_fields_they_name():
  plain = grid.cell_config("lt20_sym0.4", "mfrw_mes", seed=1, root="/x")
  ablated = grid.cell_config(
      "lt20_sym0.4", "mfrw_mes", seed=1, root="/x",
      overrides=grid.parse_overrides("advisor_label_input=true,"
                                     "meta_batch_size=100"))
  assert not plain.advisor_label_input and ablated.advisor_label_input
  assert ablated.meta_batch_size == 100
  assert dataclasses.replace(ablated, advisor_label_input=False,
                             meta_batch_size=plain.meta_batch_size) == plain
  for bad, message in (("meta_per_class=ten", "meta_per_class=ten must be an "
                        "integer"), ("lr=fast", "lr=fast must be a number"),
                       ("lr_decay_epochs=2/x", "integers joined by /"),
                       ("augment=maybe", "must be true or false")):
    with pytest.raises(ValueError, match=message):
      grid.parse_overrides(bad)


@pytest.mark.parametrize("cell", list(grid.CELLS))
def test_every_cell_gives_its_noise_and_imbalance(cell):
  fields = grid.CELLS[cell]
  config = grid.cell_config(cell, "mfrw_mes", seed=1, epochs=30, root="/x")
  assert config.dataset == "digits" and config.backbone == "small_cnn"
  assert config.epochs == 30 and config.lr_decay_epochs == (20, 25)
  assert config.flip_targets == "random" and not config.export
  assert config.workdir == os.path.join("/x", cell, "mfrw_mes_s1")
  source, split = run_lib.prepare_data(config)
  counts = np.bincount(split.train_clean_labels, minlength=10)
  imbalance = fields.get("imbalance_factor", 1.0)
  if imbalance > 1:
    assert counts.argmax() == 0 and counts.argmin() == 9
    assert counts[0] / counts[9] == pytest.approx(imbalance, rel=0.25)
  else:
    assert counts.max() / counts.min() < 1.2
  noisy = split.train_labels != split.train_clean_labels
  if fields["noise"] == "none":
    assert not noisy.any() and not grid.is_noisy(cell)
    return
  assert grid.is_noisy(cell)
  assert noisy.mean() == pytest.approx(fields["noise_rate"], abs=0.06)
  wrong = split.train_labels[noisy], split.train_clean_labels[noisy]
  targets = {(c, g) for g, c in zip(*wrong)}
  if fields["noise"] == "flip":  # One target class per class.
    assert len({c for c, _ in targets}) == len(targets)
  else:  # Symmetric: corrupted labels spread over the other classes.
    assert len(targets) > 30


def test_tail_classes_are_the_rarest_third():
  config = grid.cell_config("lt50", "ce", 0)
  _, split = run_lib.prepare_data(config)
  np.testing.assert_array_equal(grid.tail_classes(split, 10, 50.0), [7, 8, 9])
  balanced = grid.cell_config("sym0.2", "ce", 0)
  _, split = run_lib.prepare_data(balanced)
  np.testing.assert_array_equal(grid.tail_classes(split, 10, 1.0), [7, 8, 9])
  per_class = [90.0] * 7 + [60.0, None, 30.0]
  assert grid.tail_accuracy(per_class, [7, 8, 9]) == 45.0


def test_cells_and_flags_refuse_unknown_names():
  with pytest.raises(ValueError, match="--cells: 'sym0.9'"):
    grid.cell_config("sym0.9", "ce", 0)


# ---------------------------------------------------------------- rankings
def _obvious(n=300, num_classes=4, corrupted=30, seed=0):
  """Probabilities confident in the clean class; `corrupted` labels moved."""
  rng = np.random.default_rng(seed)
  clean = rng.integers(0, num_classes, n)
  given = clean.copy()
  bad = rng.choice(n, corrupted, replace=False)
  given[bad] = (clean[bad] + rng.integers(1, num_classes, corrupted)) % (
      num_classes)
  probs = rng.dirichlet(np.ones(num_classes), n) * 0.2
  probs[np.arange(n), clean] += 0.8
  return given, clean, probs


def test_cleanlab_ranks_the_obvious_label_errors_first():
  given, clean, probs = _obvious()
  scores = advice.cleanlab_scores(given, probs)
  noisy = given != clean
  assert advice.ranking_quality(scores, noisy)["ap"] == 1.0
  assert advice.precision_at_k(scores, noisy) == 1.0
  assert set(np.argsort(-scores)[:noisy.sum()]) == set(np.flatnonzero(noisy))
  # Flagged issues come first: their scores exceed 1.
  assert (scores[noisy] > 1).all() and (scores[~noisy] <= 1).all()


def test_precision_at_k_and_rank_average_by_hand():
  noisy = np.array([True, False, True, False, False])
  # Top 2 of [.9, .8, .1, .3, .2]: positions 0 and 1 → one of two noisy.
  assert advice.precision_at_k([.9, .8, .1, .3, .2], noisy) == 0.5
  assert advice.precision_at_k([1, 2, 3], np.zeros(3, bool)) is None
  np.testing.assert_allclose(advice.rank_average([1, 2, 3], [30, 10, 20]),
                             [(1 + 3) / 6, (2 + 1) / 6, (3 + 2) / 6])


def _advice(with_advisor):
  given, clean, probs = _obvious(n=120, num_classes=3, corrupted=12)
  loss = -np.log(probs[np.arange(len(given)), given])
  fields = dict(positions=np.arange(len(given)), given=given, clean=clean,
                logits=np.log(probs), loss=loss)
  if with_advisor:
    weight = np.exp(-loss)  # Meta-Weight-Net-like: low weight, high loss.
    fields.update(weight=weight, advised_loss=weight * loss)
  return advice.Advice(**fields)


def test_single_run_rankings_and_the_default():
  adv = _advice(with_advisor=True)
  rankings = advice.single_run_rankings(adv)
  assert set(rankings) == set(advice.RANKINGS) - set(advice.TRAINED_RANKINGS)
  for name, scores in rankings.items():
    assert advice.ranking_quality(scores, adv.noisy)["ap"] > 0.9, name
  available = advice.available_rankings(rankings)
  assert available == set(advice.RANKINGS)
  assert advice.resolve_ranking(None, available) == (advice.DEFAULT_RANKING,
                                                     None)
  assert advice.resolve_ranking("loss", available) == ("loss", None)
  plain = advice.single_run_rankings(_advice(with_advisor=False))
  assert set(plain) == {"loss", "cleanlab_model"}
  name, note = advice.resolve_ranking(None, advice.available_rankings(plain))
  if advice.DEFAULT_RANKING in ("advisor", "rank_average", "cv_advisor"):
    assert name == "cleanlab_model" and "needs an advisor" in note
  else:  # A default every run has.
    assert (name, note) == (advice.DEFAULT_RANKING, None)
  with pytest.raises(ValueError, match="--ranking=advisor"):
    advice.resolve_ranking("advisor", advice.available_rankings(plain))
  # Above LARGE_SET_EXAMPLES the default trains nothing more, and says so.
  big = advice.LARGE_SET_EXAMPLES + 1
  assert advice.resolve_ranking(None, available, big - 1) == (
      advice.DEFAULT_RANKING, None)
  name, note = advice.resolve_ranking(None, available, big)
  assert name == advice.LARGE_SET_RANKING
  assert name not in advice.TRAINED_RANKINGS
  assert f"{big} training images" in note
  assert f"--ranking={advice.DEFAULT_RANKING}" in note
  name, note = advice.resolve_ranking(None, advice.available_rankings(plain),
                                      big)
  assert name == "cleanlab_model" and "trains nothing more" in note
  assert advice.resolve_ranking("cv_loss", available, big) == ("cv_loss",
                                                               None)


def test_cv_rankings_of_a_run_follow_the_dataset_indices():
  """cleanlab's out-of-sample scores belong to the `ce` run's split; a run
  whose training split differs (an automatic meta set held out elsewhere)
  is measured on the examples both train on, each with its own score, and
  not at all where its labels differ."""
  adv = _advice(with_advisor=True)
  n = len(adv.given)
  train_indices = np.arange(n) + 1000  # This run's dataset indices.
  perfect = adv.noisy.astype(float)
  # The ce split: the same images in another order, less the first five,
  # plus five this run does not train on.
  order = np.arange(5, n)[::-1]
  cv = {int(train_indices[p]): (int(adv.given[p]), float(perfect[p]))
        for p in order}
  cv.update({i: (0, 0.5) for i in range(5)})
  measured = grid.measure_rankings(adv, "mfrw_mes", {}, cv, train_indices)
  assert measured["cleanlab_cv"]["label_issue_ap"] == 1.0
  assert set(measured) >= {"loss", "cv_loss", "cv_advisor"}
  # Folds trained on other labels (another noise draw): no cv ranking.
  other = dict(cv)
  first = int(train_indices[7])
  other[first] = ((other[first][0] + 1) % 3, other[first][1])
  assert "cleanlab_cv" not in grid.measure_rankings(adv, "mfrw_mes", {},
                                                    other, train_indices)


def test_rankings_on_out_of_sample_scores_combine_by_rank():
  adv = _advice(with_advisor=True)
  single = advice.single_run_rankings(adv)
  cv = np.arange(len(adv.given), dtype=float)  # Any scores: ranks matter.
  combined = advice.cv_rankings(single, cv)
  assert set(combined) == set(advice.TRAINED_RANKINGS)
  np.testing.assert_array_equal(combined["cleanlab_cv"], cv)
  np.testing.assert_allclose(combined["cv_loss"],
                             advice.rank_average(cv, single["loss"]))
  np.testing.assert_allclose(combined["cv_advisor"],
                             advice.rank_average(cv, single["advisor"]))
  plain = advice.single_run_rankings(_advice(with_advisor=False))
  assert set(advice.cv_rankings(plain, cv)) == {"cleanlab_cv", "cv_loss"}
  assert "cv_advisor" not in advice.available_rankings(plain)
  with pytest.raises(ValueError, match="--ranking=cv_advisor"):
    advice.resolve_ranking("cv_advisor", advice.available_rankings(plain))


# ------------------------------------------------------------ resumable JSON
def test_record_keeps_seeds_in_order_and_lists_aligned(tmp_path):
  results = {}
  ap = {"label_issue_ap": {"loss": 0.5, "advisor": 0.7},
        "label_issue_precision_at_k": {"loss": 0.4, "advisor": 0.6}}
  grid.record(results, "sym0.4", "mwnet", 2, {"accuracy": 90.0,
                                               "tail_accuracy": 80.0}, ap)
  grid.record(results, "sym0.4", "mwnet", 0, {"accuracy": 91.0,
                                               "tail_accuracy": 81.0},
              {"label_issue_ap": {"loss": 0.6, "cleanlab_cv": 0.8}})
  entry = results["sym0.4"]["mwnet"]
  assert entry["seeds"] == [0, 2] and entry["accuracy"] == [91.0, 90.0]
  assert entry["label_issue_ap"] == {"loss": [0.6, 0.5],
                                     "advisor": [None, 0.7],
                                     "cleanlab_cv": [0.8, None]}
  assert entry["label_issue_precision_at_k"]["loss"] == [None, 0.4]
  assert grid.done(results, "sym0.4", "mwnet", 0)
  assert not grid.done(results, "sym0.4", "mwnet", 1)
  assert not grid.done(results, "lt20", "mwnet", 0)
  with pytest.raises(ValueError, match="already recorded"):
    grid.record(results, "sym0.4", "mwnet", 0, {"accuracy": 1.0})
  out = tmp_path / "sub" / "grid.json"
  grid.write_results(str(out), results)
  assert grid.load_results(str(out)) == results
  assert os.listdir(out.parent) == ["grid.json"]  # No temporary left.
  assert grid.load_results(str(tmp_path / "absent.json")) == {}


def test_grid_skips_what_is_done_and_shares_ce_and_cleanlab_cv(
    tmp_path, monkeypatch):
  trained = []

  overrides_seen = []

  def fake_run_one(cell, method, seed, epochs, root, shared, cv_scores=None,
                   overrides=None, grid_=None):
    trained.append((cell, method, seed))
    overrides_seen.append(overrides)
    if not grid.is_noisy(cell):
      return {"accuracy": 50.0, "tail_accuracy": 40.0}, {}, None
    ap = {"loss": 0.1 * (seed + 1)}
    if method == "ce":
      ap["ce_loss"] = ap["loss"]
    ap.update({k: v["label_issue_ap"] for k, v in shared.items()
               if k not in ap})
    return ({"accuracy": 50.0, "tail_accuracy": 40.0},
            {"label_issue_ap": ap, "label_issue_precision_at_k": {}}, None)

  folds = []

  def fake_probs(config, source, split, folds_, cache=None):
    folds.append((config.seed, folds_))
    probs = np.full((len(split.train_labels), 10), 0.01)
    probs[np.arange(len(probs)), split.train_clean_labels] = 0.91
    return probs

  monkeypatch.setattr(grid, "run_one", fake_run_one)
  monkeypatch.setattr(grid.crossval, "cross_validated_probabilities",
                      fake_probs)
  out = str(tmp_path / "grid.json")
  # Some methods, without ce: ce is trained (first) for ce_loss anyway.
  grid.run_grid(out, ["sym0.4", "lt20"], ["mwnet"], [0], 2, str(tmp_path),
                folds=3, log=lambda _: None)
  assert trained == [("sym0.4", "ce", 0), ("sym0.4", "mwnet", 0),
                     ("lt20", "mwnet", 0)]
  assert folds == [(0, 3)]  # Only the noisy cell needs cleanlab_cv.
  saved = json.load(open(out))
  assert saved["sym0.4"]["mwnet"]["label_issue_ap"]["ce_loss"] == [0.1]
  assert saved["sym0.4"]["mwnet"]["label_issue_ap"]["cleanlab_cv"] == [1.0]
  assert saved["lt20"]["mwnet"]["label_issue_ap"] == {}
  # A restart with more seeds and methods does only what is missing, and
  # reads ce_loss and cleanlab_cv of seed 0 back from the JSON.
  trained.clear()
  grid.run_grid(out, ["sym0.4"], ["ce", "mwnet", "mes"], [0, 1], 2,
                str(tmp_path), folds=3, log=lambda _: None)
  assert trained == [("sym0.4", "mes", 0), ("sym0.4", "ce", 1),
                     ("sym0.4", "mwnet", 1), ("sym0.4", "mes", 1)]
  assert folds == [(0, 3), (1, 3)]
  saved = json.load(open(out))
  assert saved["sym0.4"]["mes"]["seeds"] == [0, 1]
  assert saved["sym0.4"]["mes"]["label_issue_ap"]["ce_loss"] == [0.1, 0.2]
  assert saved["sym0.4"]["mwnet"]["label_issue_ap"]["cleanlab_cv"] == [1.0,
                                                                       1.0]
  # `--set` reaches every run of the grid.
  assert overrides_seen == [None] * len(overrides_seen)
  overrides_seen.clear()
  grid.run_grid(str(tmp_path / "ablation.json"), ["lt20"], ["mfrw_mes"], [0],
                2, str(tmp_path), folds=3, log=lambda _: None,
                overrides={"advisor_label_input": True})
  assert overrides_seen == [{"advisor_label_input": True}]


def test_a_second_grid_command_on_the_same_json_is_refused(tmp_path):
  """Two commands rewriting one JSON would each write back their own copy
  over the other's runs: the second is refused at once, naming the file;
  the file is free again when the first ends."""
  out = str(tmp_path / "grid.json")
  with grid.exclusive(out):
    with pytest.raises(grid.Busy, match="another grid command is writing "
                       ".*grid.json.*another --out"):
      grid.run_grid(out, ["sym0.4"], ["ce"], [0], 2, str(tmp_path),
                    log=lambda _: None)
    with pytest.raises(grid.Busy):
      grid.rescore(out, str(tmp_path), log=lambda _: None)
  with grid.exclusive(out):  # Released.
    pass
  assert not os.path.exists(out)  # The refused commands wrote nothing.


def test_rescore_measures_only_the_cells_and_seeds_asked(tmp_path,
                                                        monkeypatch):
  """`--rescore --cells=... --seeds=...` runs cleanlab's K folds and
  re-advises only those runs; the others keep their values."""
  results = {}
  for cell in ("sym0.4", "sym0.6"):
    for seed in (0, 1):
      for method in ("ce", "mfrw_mes"):
        grid.record(results, cell, method, seed, {"accuracy": 50.0},
                    {"label_issue_ap": {"loss": 0.5},
                     "label_issue_precision_at_k": {"loss": 0.5}})
  out = str(tmp_path / "grid.json")
  grid.write_results(out, results)
  folds, advised = [], []

  def fake_cv(cell, seed, epochs, root, folds_, grid_):
    folds.append((cell, seed))
    return None, {"label_issue_ap": 0.9, "label_issue_precision_at_k": 0.8}

  def fake_measure(adv, method, shared, cv_scores=None, train_indices=None):
    return {"loss": {"label_issue_ap": 0.7, "label_issue_precision_at_k": .7},
            **shared}

  monkeypatch.setattr(grid, "cv_scores_of", fake_cv)
  monkeypatch.setattr(grid, "_advise", lambda workdir: (
      advised.append(workdir),
      types.SimpleNamespace(split=types.SimpleNamespace(train_indices=[]))))
  monkeypatch.setattr(grid, "measure_rankings", fake_measure)
  monkeypatch.setattr(grid.run_lib, "has_checkpoint", lambda workdir: True)
  grid.rescore(out, str(tmp_path), 2, 3, log=lambda _: None,
               cells=["sym0.6"], seeds=[1])
  assert folds == [("sym0.6", 1)]
  assert len(advised) == 2 and all("sym0.6" in w for w in advised)
  saved = json.load(open(out))
  assert saved["sym0.6"]["mfrw_mes"]["label_issue_ap"]["loss"] == [0.5, 0.7]
  assert saved["sym0.6"]["ce"]["label_issue_ap"]["cleanlab_cv"] == [None, 0.9]
  assert saved["sym0.4"]["mfrw_mes"]["label_issue_ap"] == {"loss": [0.5, 0.5]}


def test_grid_means_are_over_the_advisor_methods():
  results = {
      "sym0.4": {
          "ce": {"seeds": [0], "label_issue_ap": {"loss": [0.1]}},
          "mwnet": {"seeds": [0, 1], "label_issue_ap": {
              "loss": [0.5, 0.7], "rank_average": [0.9, None]}}},
      "lt20": {"mwnet": {"seeds": [0], "label_issue_ap": {}}}}
  means = analysis.grid_ranking_means(results)
  assert means["loss"] == pytest.approx(0.6)
  assert means["rank_average"] == pytest.approx(0.9)
  assert means["cleanlab_cv"] is None
  assert analysis.grid_ranking_means({"lt20": results["lt20"]}) == {}
  assert "| sym0.4 | 0.900 |" in grid.tables(results)


# ---------------------------------------------------------------- report
def test_report_names_the_ranking_and_its_grid_ap(tmp_path):
  summary = {"label_issue_ranking": "rank_average",
             "label_issue_ranking_grid_ap": None}
  assert analysis.ranking_line(summary) == (
      "- ranking: rank_average (mean AP over the dirty-labels grid: not "
      "measured yet)")
  path = tmp_path / "grid.json"
  path.write_text(json.dumps({"sym0.4": {"mfrw_mes": {
      "seeds": [0, 1], "label_issue_ap": {"rank_average": [0.8, 0.9]}}}}))
  assert analysis.grid_ranking_ap("rank_average", str(path)) == (
      pytest.approx(0.85))
  assert analysis.grid_ranking_ap("rank_average",
                                  str(tmp_path / "absent.json")) is None
  summary["label_issue_ranking_grid_ap"] = 0.85
  assert analysis.ranking_line(summary).endswith("grid: 0.850)")


def test_the_default_ranking_is_the_grids_best_where_measured():
  """Once results/dirty_labels.json holds the grid, the default ranking must
  be the single-run ranking with the best mean AP there."""
  if not os.path.exists(analysis.GRID_RESULTS):
    pytest.skip("the dirty-labels grid has not been run yet")
  with open(analysis.GRID_RESULTS) as f:
    means = analysis.grid_ranking_means(json.load(f))
  measured = {n: means[n] for n in advice.RANKINGS
              if means.get(n) is not None}
  if not measured:
    pytest.skip("the dirty-labels grid holds no advisor run of a noisy cell")
  assert advice.DEFAULT_RANKING == max(measured, key=measured.get), measured
