"""--meta_source: where the meta set comes from, and `auto`, which chooses it
from the dirty training labels without any trusted label."""

import dataclasses
import json
import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from advisor_tf import config as config_lib
from advisor_tf import meta_select
from advisor_tf import run as run_lib
from advisor_tf import trainer
from advisor_tf.data import protocols


def _small(workdir, **overrides):
  settings = dict(workdir=str(workdir), epochs=4, steps_per_epoch=5,
                  lr_decay_epochs=(3,), verbose=0, export=False,
                  embedding_size=8, checkpoint_every=2, keep_checkpoints=50,
                  telemetry_examples=0, noise="symmetric", noise_rate=0.4,
                  meta_source="auto")
  settings.update(overrides)
  return dataclasses.replace(config_lib.TrainConfig(), **settings)


# ------------------------------------------------------------- protocols
def test_random_is_drawn_before_the_noise_random_noisy_after_it():
  labels = np.repeat(np.arange(4), 50)
  proto = protocols.Protocol(noise="symmetric", noise_rate=0.6,
                             meta_per_class=5)
  clean = protocols.apply(proto, labels, 4, seed=1)
  assert clean.meta_source == "random" and clean.meta_purity == 1.0
  np.testing.assert_array_equal(labels[clean.meta_indices], clean.meta_labels)
  noisy = protocols.apply(dataclasses.replace(proto,
                                              meta_source="random_noisy"),
                          labels, 4, seed=1)
  # Class-balanced in the labels the model is given, and taken out of train.
  np.testing.assert_array_equal(np.bincount(noisy.meta_labels), [5] * 4)
  assert not set(noisy.meta_indices) & set(noisy.train_indices)
  assert len(noisy.train_indices) + len(noisy.meta_indices) == 200
  np.testing.assert_array_equal(labels[noisy.meta_indices],
                                noisy.meta_clean_labels)
  assert noisy.meta_purity == pytest.approx(
      np.mean(noisy.meta_labels == labels[noisy.meta_indices]))
  assert noisy.meta_purity < 1.0
  auto = protocols.apply(dataclasses.replace(proto, meta_source="auto"),
                         labels, 4, seed=1)
  assert len(auto.train_indices) == 200  # Kept in: the selector decides.
  assert set(auto.meta_indices) <= set(auto.train_indices)


def test_selection_is_class_balanced_highest_score_first_and_purity_is_right():
  labels = np.array([0, 0, 0, 1, 1, 1, 1, 2])
  scores = np.array([0.5, 0.9, 0.1, 0.7, 0.8, 0.2, 0.8, 0.4])
  losses = np.array([0.1, 0.1, 0.1, 0.1, 0.3, 0.1, 0.2, 0.1])
  chosen = meta_select.select_per_class(scores, losses, labels, 2, 3)
  # Class 1: 0.8 twice, the smaller loss (position 6) first; class 2: all.
  np.testing.assert_array_equal(chosen, [0, 1, 4, 6, 7])
  np.testing.assert_array_equal(
      meta_select.select_per_class(scores, losses, labels, 1, 3), [1, 6, 7])
  clean = np.array([0, 0, 1, 1, 2, 1, 1, 2])
  assert meta_select.purity(chosen, labels, clean) == pytest.approx(4 / 5)
  assert meta_select.purity([], labels, clean) is None


def _batches(features, size=7):
  def read(positions):
    rows = features if positions is None else features[positions]
    for start in range(0, len(rows), size):
      yield rows[start:start + size]
  return read


def test_nearest_voters_is_the_brute_force_cosine_neighbourhood():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(40, 5)).astype(np.float32)
  voters = np.sort(rng.choice(40, 25, replace=False))
  got = meta_select.nearest_voters(_batches(features), voters, 4)
  unit = features / np.linalg.norm(features, axis=1, keepdims=True)
  similarity = unit @ unit[voters].T
  for row in range(40):
    candidates = [j for j in range(len(voters)) if voters[j] != row]
    want = sorted(candidates, key=lambda j: -similarity[row, j])[:4]
    assert sorted(got[row]) == sorted(want)  # Itself never among them.
    closeness = similarity[row, got[row]]
    assert np.all(np.diff(closeness) <= 0)  # Nearest first.
  assert meta_select.choose_voters(40, 0, limit=50).tolist() == list(range(40))
  drawn = meta_select.choose_voters(40, 0, limit=25)
  assert len(set(drawn)) == 25 and list(drawn) == sorted(drawn)


def test_neighbour_agreement_finds_consistently_flipped_labels():
  # Two clusters of images; a third of cluster 0's are labelled 1 (a Flip):
  # per example the loss of a model that learned the 2:1 majority cannot
  # order the clean ones of class 1 above the flipped, the neighbours can.
  rng = np.random.default_rng(1)
  centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  truth = np.repeat([0, 1], 30)
  features = centres[truth] + 0.05 * rng.normal(size=(60, 3))
  labels = truth.copy()
  flipped = np.arange(0, 30, 3)
  labels[flipped] = 1
  voters = np.arange(60)
  neighbours = meta_select.nearest_voters(_batches(features), voters, 10)
  once = meta_select.neighbour_agreement(neighbours, voters, labels, rounds=1)
  twice = meta_select.neighbour_agreement(neighbours, voters, labels)
  assert once[flipped].max() < once[truth == 1].min()  # Both labelled 1.
  # The second round weights each vote by the voter's own agreement: the
  # flipped ones' few like-labelled neighbours are themselves disputed.
  assert twice[flipped].mean() < once[flipped].mean()
  chosen = meta_select.select_per_class(twice, np.zeros(60), labels, 10, 2)
  assert not set(chosen) & set(flipped)
  np.testing.assert_array_equal(np.bincount(labels[chosen]), [10, 10])


def _two_lobes():
  # Class 0: a small, tight lobe of 5 near (1, 0, 0) whose images agree a
  # little more with their neighbours than those of its big lobe of 35,
  # opposite; class 1: 40 near (0, 0, 1). The k = 2 best of class 0 both
  # come from the small lobe.
  rng = np.random.default_rng(2)
  centres = np.array([[1.0, 0, 0]] * 5 + [[-1.0, 0, 0]] * 35
                     + [[0, 0, 1.0]] * 40)
  features = centres + 0.05 * rng.normal(size=(80, 3))
  labels = np.repeat([0, 1], 40)
  scores = np.where(np.arange(80) < 5, 0.95, 0.9) - 0.001 * rng.random(80)
  voters = np.arange(80)
  neighbours = meta_select.nearest_voters(_batches(features), voters, 10)
  return labels, scores, neighbours, voters


def test_spread_pick_covers_each_lobe_of_a_class_where_the_k_best_do_not():
  labels, scores, neighbours, voters = _two_lobes()
  best = meta_select.select_per_class(scores, np.zeros(80), labels, 2, 2)
  assert set(best[best < 40]) <= set(range(5))  # Both from the small lobe.
  spread = meta_select.spread_per_class(scores, np.zeros(80), labels, 2, 2,
                                        neighbours, voters, pool=3)
  np.testing.assert_array_equal(np.bincount(labels[spread]), [2, 2])
  first, second = spread[spread < 40]
  # The best one, then the best of the class's 3 × 2 best outside its
  # r = min(40 ÷ 2, 10) nearest neighbours: the big lobe's best.
  assert first == best[0] and second == 5 + np.argmax(scores[5:40])
  assert second not in voters[neighbours[first]]
  # pool=1 is the k best.
  np.testing.assert_array_equal(
      meta_select.spread_per_class(scores, np.zeros(80), labels, 2, 2,
                                   neighbours, voters, pool=1), best)


def test_spread_pick_takes_only_confirmed_labels_else_the_k_best():
  labels, scores, neighbours, voters = _two_lobes()
  # The big lobe's labels are disputed by their neighbourhood: never spread
  # into. Class 1 has no more confirmed examples than k: its k best.
  scores = scores.copy()
  scores[5:40] = meta_select.CONFIRMED - 0.1
  scores[40:78] = 0.2
  spread = meta_select.spread_per_class(scores, np.zeros(80), labels, 2, 2,
                                        neighbours, voters, pool=3)
  best = meta_select.select_per_class(scores, np.zeros(80), labels, 2, 2)
  assert set(spread[spread < 40]) <= set(range(5))
  np.testing.assert_array_equal(spread[spread >= 40], [78, 79])
  np.testing.assert_array_equal(spread[spread >= 40], best[2:])


def test_lobed_classes_tells_a_flipped_in_lobe_from_uniform_noise():
  # Four lobes of images, one per true class; labels: 6 of lobe 1's 20
  # are labelled 0 (Flip 1 → 0), and some images of lobes 0, 1 and 3 are
  # labelled 2 (uniform noise into class 2).
  rng = np.random.default_rng(3)
  truth = np.repeat(np.arange(4), 20)
  features = np.eye(4)[truth] + 0.05 * rng.normal(size=(80, 4))
  labels = truth.copy()
  labels[20:26] = 0
  labels[[0, 1, 30, 60, 61]] = 2
  voters = np.arange(80)
  neighbours = meta_select.nearest_voters(_batches(features), voters, 10)
  agreement = meta_select.neighbour_agreement(neighbours, voters, labels)
  assert meta_select.lobed_classes(neighbours, voters, labels, agreement,
                                   4) == [0]
  # With the check, class 0 is picked as the k best; the others spread.
  spread = meta_select.spread_per_class(agreement, np.zeros(80), labels, 3,
                                        4, neighbours, voters, pool=3,
                                        keep=[0])
  best = meta_select.select_per_class(agreement, np.zeros(80), labels, 3, 4)
  np.testing.assert_array_equal(spread[labels[spread] == 0],
                                best[labels[best] == 0])
  assert meta_select.lobed_classes(neighbours, voters, labels,
                                   np.ones(80), 4) == []  # None disputed.


def _turned_class():
  """Three lobes of 30 images, one per true class. True 0 is turned: 16 of
  its 30 labelled 1. 12 of the true 2s are labelled 0. The scores put
  label 0's best where the vote of a turned class does: on the images
  flipped into it (lobe 2), not on its own minority (lobe 0)."""
  rng = np.random.default_rng(5)
  truth = np.repeat(np.arange(3), 30)
  features = np.eye(3)[truth] + 0.05 * rng.normal(size=(90, 3))
  labels = truth.copy()
  labels[:16] = 1
  labels[60:72] = 0
  scores = np.full(90, 0.9)
  scores[16:30] = 0.45   # True 0s labelled 0: a minority in their lobe.
  scores[60:72] = 0.5    # True 2s labelled 0.
  scores[:16] = 0.3      # True 0s labelled 1.
  return truth, features, labels, scores


def test_feature_regions_are_the_lobes_of_the_feature_space():
  truth, features, _, _ = _turned_class()
  voters = np.arange(0, 90, 2)  # Centres from the voters, all assigned.
  regions = meta_select.feature_regions(_batches(features), voters, 3, 0)
  assert len(regions) == 90
  for lobe in range(3):  # One region per lobe, a different one each.
    assert len(set(regions[truth == lobe])) == 1
  assert len(set(regions)) == 3
  np.testing.assert_array_equal(
      regions, meta_select.feature_regions(_batches(features), voters, 3, 0))
  # A warm-up that diverged: no regions, no error (training then stops,
  # naming the step); a non-finite voter, or another example.
  for broken in (6, 7):
    bad = features.copy()
    bad[broken] = np.nan
    assert meta_select.feature_regions(_batches(bad), voters, 3, 0) is None


def test_rehome_moves_a_turned_class_to_the_region_left_over():
  truth, features, labels, scores = _turned_class()
  regions = meta_select.feature_regions(_batches(features), np.arange(90),
                                        3, 0)
  pick = meta_select.select_per_class(scores, np.zeros(90), labels, 3, 3)
  assert set(truth[pick[labels[pick] == 0]]) == {2}  # The vote's mistake.
  moved, record = meta_select.rehome(pick, regions, scores, np.zeros(90),
                                     labels, 3, 3)
  # Matched one to one so that the most labels agree (0 → lobe 0: 14,
  # 1 → lobe 1: 30, 2 → lobe 2: 18), label 0 is picked outside its lobe;
  # it is 14 of lobe 0's 30: it moves there.
  assert set(truth[moved[labels[moved] == 0]]) == {0}
  assert record == [[0, int(regions[60]), int(regions[0])]]
  np.testing.assert_array_equal(moved[labels[moved] != 0],
                                pick[labels[pick] != 0])
  np.testing.assert_array_equal(np.bincount(labels[moved]), [3, 3, 3])
  # Nothing moves where each class picks in a region of its own ...
  right = meta_select.select_per_class(np.where(truth == labels, 0.9, 0.1),
                                       np.zeros(90), labels, 3, 3)
  same, record = meta_select.rehome(right, regions, scores, np.zeros(90),
                                    labels, 3, 3)
  np.testing.assert_array_equal(same, right)
  assert record == []
  # ... nor where the region left over holds too small a share of the
  # label (uniform noise, not a turned class).
  kept, record = meta_select.rehome(pick, regions, scores, np.zeros(90),
                                    labels, 3, 3, share=0.5)
  np.testing.assert_array_equal(kept, pick)
  assert record == []


def test_rehome_leaves_a_class_that_the_regions_split_in_two():
  # Class 1's images fall in two regions (1 and 2); its best-scored are in
  # the one not matched to it (no class's): nobody else picks there, so it
  # stays, though its matched region would hold it.
  regions = np.repeat(np.arange(4), 10)
  labels = np.repeat([0, 1, 1, 2], 10)
  labels[28:30] = 0  # Region 1 holds more of class 1 than region 2.
  scores = np.where((regions == 2) & (labels == 1), 0.9, 0.5)
  pick = meta_select.select_per_class(scores, np.zeros(40), labels, 3, 3)
  assert set(regions[pick[labels[pick] == 1]]) == {2}
  same, record = meta_select.rehome(pick, regions, scores, np.zeros(40),
                                    labels, 3, 3)
  np.testing.assert_array_equal(same, pick)
  assert record == []


def test_selection_overlap_is_high_where_picks_sit_among_another_class():
  rng = np.random.default_rng(0)
  centres = np.eye(3) * 10
  # Class 0 and 1 picks sit at their own centres; class 2's picks are class
  # 1's images (at its centre); class 3 has one pick.
  features = np.concatenate([centres[0] + rng.normal(size=(5, 3)),
                             centres[1] + rng.normal(size=(5, 3)),
                             centres[1] + rng.normal(size=(5, 3)),
                             centres[2] + rng.normal(size=(1, 3))])
  labels = [0] * 5 + [1] * 5 + [2] * 5 + [3]
  overlap = meta_select.selection_overlap(features, labels, 5)
  assert overlap[0] == 0.0
  assert 0.3 < overlap[1] < 0.8 and 0.3 < overlap[2] < 0.8
  assert overlap[3] is None and overlap[4] is None


def test_suspect_classes():
  """A class is named when nearly all neighbours of its selected examples
  carry other labels, unless the warm-up recognises the class's labels (a
  clean, outnumbered tail class); a low share of its labels recognised, or
  of its selected examples, names nothing alone (the first-hour issue's
  false alarm: hard classes after a short warm-up)."""
  labelled = [0.9, 0.1, 0.8, 0.95, 0.2]
  selected = [1.0, 1.0, 0.3, 0.3, 0.0]
  disputed = [0.9, 0.1, 0.14, 0.05, 0.3]
  assert meta_select.suspects(labelled, selected, disputed) == [1, 2]
  # Without the neighbours' median nothing is named.
  assert meta_select.suspects(labelled, selected) == []
  assert meta_select.suspects([0.3, 0.35, 0.25], [0.1, 0.1, 0.1],
                              [0.6, 0.7, None]) == []
  # At either bar: not named.
  dis, known = meta_select.DISPUTED_BELOW, meta_select.RECOGNISED_FROM
  assert meta_select.suspects([0.5, known], [0.1, 0.1], [dis, 0.0]) == []
  assert meta_select.class_median([0.2, 0.9, 0.4, 0.7], [0, 1, 0, 0],
                                  [0, 1, 3], 3) == pytest.approx([0.45, 0.9, None])


@pytest.mark.parametrize("regions", [
    pytest.param(False, marks=pytest.mark.slow), True])
def test_auto_selection_uses_no_trusted_label(tmp_path, monkeypatch,
                                              regions):
  monkeypatch.setattr(meta_select, "REGIONS", regions)
  config = _small(tmp_path / "run", epochs=2, lr_decay_epochs=(1,))
  source, split = run_lib.prepare_data(config)
  rng = np.random.default_rng(0)
  liar = dataclasses.replace(  # Other "clean" labels: the same choice.
      split, train_clean_labels=rng.permutation(split.train_clean_labels))
  records = [meta_select.select(config, source, s) for s in (split, liar)]
  assert records[0]["positions"] == records[1]["positions"]
  labels = np.asarray(records[0]["labels"])
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), [10] * 10)
  np.testing.assert_array_equal(
      np.asarray(split.train_labels)[records[0]["positions"]], labels)
  chosen = meta_select.held_out(split, records[0]["positions"])
  assert not set(chosen.meta_indices) & set(chosen.train_indices)
  assert len(chosen.train_indices) == len(split.train_indices) - 100
  assert chosen.meta_purity == pytest.approx(records[0]["purity"])
  # One region per class when asked (`rehome`), and what moved.
  assert records[0]["regions"] == (10 if regions else 0)
  assert records[0]["moved_classes"] == records[1]["moved_classes"]
  assert all(len(m) == 3 for m in records[0]["moved_classes"])


# ------------------------------------------------------------------ flags
@pytest.mark.parametrize("change,message", [
    (dict(meta_source="bogus"), r"--meta_source='bogus' is not allowed"),
    (dict(meta_source="auto", meta_per_class=0),
     r"--meta_source=auto .* --meta_per_class=0"),
])
def test_bad_meta_source_is_named(change, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(config_lib.TrainConfig(), **change).validate()


def test_folder_without_a_meta_split_is_refused_naming_the_flag(tmp_path):
  with pytest.raises(ValueError, match="--meta_source=folder: --dataset="
                     "digits has no meta split"):
    run_lib.prepare_data(_small(tmp_path / "run", meta_source="folder"))


def test_unset_meta_source_resolves_and_old_runs_keep_theirs():
  digits = run_lib.prepare_data(config_lib.TrainConfig())[1]
  assert digits.meta_source == meta_select.DEFAULT_DRAW
  saved = json.loads(config_lib.TrainConfig().to_json())
  del saved["meta_source"]
  assert config_lib.TrainConfig.from_dict(saved).meta_source == "random"


@pytest.mark.slow  # A warm-up and a training (the selection alone is fast).
def test_auto_run_records_its_meta_set_and_the_report_says_so(tmp_path):
  from advisor_tf import analysis
  metrics = trainer.train(_small(tmp_path / "run", epochs=2,
                                 lr_decay_epochs=(1,)))
  assert metrics["meta/source"] == "auto"
  assert metrics["meta/per_class"] == 10 and metrics["meta/examples"] == 100
  assert 0.0 <= metrics["meta/purity"] <= 1.0
  record = meta_select.read_record(str(tmp_path / "run"))
  assert record["purity"] == metrics["meta/purity"]
  assert len(record["positions"]) == 100
  assert metrics["meta/moved_classes"] == [
      m[0] for m in record["moved_classes"]]
  tags = set()
  for root, _, files in os.walk(tmp_path / "run" / "tensorboard" / "meta"):
    for name in files:
      for event in tf.compat.v1.train.summary_iterator(
          os.path.join(root, name)):
        tags |= {v.tag for v in event.summary.value}
  assert "meta/purity" in tags
  keras.backend.clear_session()
  summary = analysis.analyze_run(run_lib.load(str(tmp_path / "run")),
                                 str(tmp_path / "analysis"), max_points=50,
                                 ranking="loss", num_suspects=0)
  assert summary["meta_source"] == "auto"
  report = (tmp_path / "analysis" / "report.md").read_text()
  assert "chosen automatically" in report
  import csv
  with open(summary["label_issues_csv"]) as f:
    rows = list(csv.DictReader(f))
  assert {r["meta_source"] for r in rows} == {"auto"}


# ---------------------------------------------------------------- resume
def _weights(workdir):
  reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if "save_counter" not in k  # The graph's names: a run that built
          and k != "_CHECKPOINTABLE_OBJECT_GRAPH"}  # a warm-up model first.


@pytest.mark.slow
def test_auto_resumes_bit_identically(tmp_path, monkeypatch):
  straight = trainer.train(_small(tmp_path / "straight"))
  keras.backend.clear_session()
  config = _small(tmp_path / "killed")
  # A run that stops mid-epoch 2 (step 12 of 5-step epochs) leaves what a
  # run killed there leaves; then it resumes with the full configuration.
  trainer.train(dataclasses.replace(config, train_steps=12))
  saved = json.loads((tmp_path / "killed" / "config.json").read_text())
  (tmp_path / "killed" / "config.json").write_text(
      json.dumps(dict(saved, train_steps=None)))
  (tmp_path / "killed" / "metrics.json").unlink()
  record = meta_select.read_record(str(tmp_path / "killed"))
  record["config"]["train_steps"] = None
  (tmp_path / "killed" / meta_select.RECORD).write_text(json.dumps(record))
  keras.backend.clear_session()

  def never(*args):
    raise AssertionError("a resumed run reads its selection back")
  monkeypatch.setattr(meta_select, "select", never)
  resumed = trainer.train(config)
  assert resumed["resumed_from_step"] == 12
  a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert straight["meta/purity"] == resumed["meta/purity"]


# ------------------------------------------------------------- meta_from
def _auto_split(indices, labels, clean=None):
  labels = np.asarray(labels)
  return protocols.Split(
      train_indices=np.asarray(indices), train_labels=labels,
      train_clean_labels=labels if clean is None else np.asarray(clean),
      meta_indices=np.zeros(0, np.int64), meta_labels=np.zeros(0, np.int64),
      transition=np.eye(3), meta_source="auto")


def test_meta_from_keeps_the_first_runs_meta_images_with_todays_labels(
    tmp_path):
  """A retrain after review (`--meta_from`) takes the meta images the run
  it corrects chose, by dataset index, with its own (corrected) labels; an
  image it dropped is left out; the record is written so that the run
  resumes with it."""
  first = tmp_path / "first"
  meta_select.write_record(first, {
      "indices": [10, 13, 16, 17], "labels": [0, 1, 2, 2],
      "positions": [0, 3, 6, 7], "suspect_classes": [], "per_class": 1})
  # The retrain: image 16 dropped by the corrections (positions shift),
  # image 13 relabelled from 1 to 0.
  indices = [10, 11, 12, 13, 14, 15, 17, 18, 19]
  labels = [0, 1, 2, 0, 1, 2, 2, 0, 1]
  config = _small(tmp_path / "fixed", meta_from=str(first),
                  noise="none").validate()
  split = _auto_split(indices, labels)
  record = meta_select.inherited(config, split, 3)
  assert record["positions"] == [0, 3, 6]
  assert record["indices"] == [10, 13, 17] and record["labels"] == [0, 0, 2]
  assert record["relabelled"] == 1 and record["inherited_from"] == str(first)
  source = types.SimpleNamespace(num_classes=3, class_names=list("abc"))
  chosen = meta_select.prepare(config, source, split, str(tmp_path / "fixed"))
  assert f"the images run {first} chose automatically (--meta_from)" in (
      meta_select.describe(config, chosen))
  np.testing.assert_array_equal(chosen.meta_indices, [10, 13, 17])
  np.testing.assert_array_equal(chosen.meta_labels, [0, 0, 2])
  # Classes this small keep their meta images in training too (`kept_in`).
  assert record["kept_in"] == [0, 1, 2] and len(chosen.train_indices) == 9
  saved = meta_select.read_record(str(tmp_path / "fixed"))
  assert saved["indices"] == [10, 13, 17]
  assert meta_select._record_matches(saved, config, split)  # Resumes it.


def test_meta_from_without_a_recorded_selection_is_named(tmp_path):
  (tmp_path / "trusted").mkdir()
  with pytest.raises(ValueError, match="--meta_from=.*no such run folder"):
    _small(tmp_path / "x", meta_from=str(tmp_path / "gone")).validate()
  config = _small(tmp_path / "x", meta_from=str(tmp_path / "trusted"))
  with pytest.raises(ValueError, match=r"--meta_from=.*trusted: no automatic "
                     r"meta set recorded there \(meta_selection.json\)"):
    meta_select.inherited(config.validate(), _auto_split([1, 2], [0, 1]), 3)
