"""The no-trusted-set grid's scoring (`experiments/meta_source.py`): the
per-class purity of a drawn meta set, the purity any selection could reach,
and how often `auto`'s warning named the classes it should."""

import dataclasses
import types

import numpy as np
import pytest

from advisor_tf import meta_select
from advisor_tf import run as run_lib
from advisor_tf.experiments import meta_source


def test_selection_scores_per_class_and_the_reachable_purity():
  # Class 0: two chosen, one right; only one right-labelled candidate, so
  # no choice of two could be pure. Class 1: both right.
  train = ([0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1])
  meta = ([0, 0, 1, 1], [0, 1, 1, 1])
  scores = meta_source.selection_scores(train, meta)
  assert scores["purity"] == pytest.approx(0.75)
  assert scores["class_purity"] == [0.5, 1.0]
  assert scores["class_noise"] == [pytest.approx(2 / 3, abs=1e-4), 0.0]
  assert scores["purity_ceiling"] == pytest.approx(0.75)
  # A class no example of which was chosen has no purity.
  scores = meta_source.selection_scores(([0, 1, 2], [0, 1, 2]),
                                        ([0, 2], [0, 2]))
  assert scores["class_purity"] == [1.0, None, 1.0]
  assert scores["purity_ceiling"] == 1.0


def test_drawn_scores_of_an_array_run_match_the_runs_own_purity(tmp_path):
  config = meta_source.run_config("array", "lt20_sym0.4", "random", 0,
                                  str(tmp_path))
  (train_given, train_clean), (given, clean) = meta_source.selection_truth(
      "array", config, config.workdir)
  scores = meta_source.drawn_scores("array", config, config.workdir)
  # The data layer's own purity of the split it drew.
  _, split = run_lib.prepare_data(config)
  assert scores["purity"] == pytest.approx(split.meta_purity)
  # The long tail's smallest classes have fewer right labels than the
  # 10 per class the set asks for: the ceiling is below 1, and no draw
  # is above it.
  assert scores["purity"] <= scores["purity_ceiling"] < 1.0
  assert len(train_given) == len(train_clean) > len(given)


def test_warning_check_counts_hits_misses_and_runs_below_ce():
  results = {"array": {"flip0.4": {
      "ce": {"seeds": [0, 1], "accuracy": [60.0, 60.0]},
      "auto": {"seeds": [0, 1], "accuracy": [55.0, 90.0],
               # Seed 0: class 1 selected mostly wrong and named; class 2
               # named, its selection right but most of its labels wrong;
               # class 0 named for nothing. Seed 1: class 0 selected mostly
               # wrong, not named.
               "class_purity": [[1.0, 0.2, 1.0], [0.4, 1.0, 1.0]],
               "class_noise": [[0.1, 0.6, 0.5], [0.3, 0.2, 0.1]],
               "warned_classes": [[0, 1, 2], []]}}}}
  (line,) = meta_source.warning_check(results)
  assert "2 auto run(s)" in line
  assert "mostly wrong selection: 2, named 1" in line
  assert "mostly wrong training labels: 2, named 2" in line
  assert "classes named: 3, neither: 1" in line
  assert "runs below CE: 1, with a warning: 1" in line


def test_backfill_skips_runs_whose_workdir_is_gone(tmp_path):
  results = {"array": {"sym0.4": {"auto": {"seeds": [0],
                                           "accuracy": [90.0]}}}}
  assert meta_source.backfill_scores(results, str(tmp_path)) == 0
  assert "class_purity" not in results["array"]["sym0.4"]["auto"]


def test_record_suspects_applies_todays_rule_to_an_older_record():
  # A record written before `selected_neighbour_agreement` existed: class 1's
  # chosen examples sit among images labelled otherwise (median 0.075).
  record = {"labels": [0, 0, 1, 1],
            "neighbour_agreement": [0.9, 0.8, 0.05, 0.1],
            "class_agreement": [0.9, 0.5], "selected_agreement": [1.0, 1.0]}
  assert meta_select.record_suspects(record) == [1]
  record["neighbour_agreement"] = [0.9, 0.8, 0.7, 0.6]
  assert meta_select.record_suspects(record) == []


def test_set_overrides_the_mfrw_mes_variants_not_ce(tmp_path):
  overrides = {"meta_per_class": 20, "advisor_label_input": True}
  for grid in meta_source.GRIDS:
    for variant in meta_source.VARIANTS:
      plain = meta_source.run_config(grid, "sym0.4", variant, 1,
                                     str(tmp_path))
      ablated = meta_source.run_config(grid, "sym0.4", variant, 1,
                                       str(tmp_path), overrides=overrides)
      if variant == "ce":
        assert ablated == plain
      else:
        assert (ablated.meta_per_class, ablated.advisor_label_input) == (
            20, True)
        assert dataclasses.replace(ablated, meta_per_class=None,
                                   advisor_label_input=False) == plain


def test_ablation_flags_set_the_pick_that_the_runs_use(monkeypatch, tmp_path):
  seen = {}

  def fake_grid(*args, **kwargs):
    del args, kwargs
    seen.update(spread=meta_select.SPREAD, confirmed=meta_select.CONFIRMED,
                lobe_check=meta_select.LOBE_CHECK,
                keep_below=meta_select.KEEP_BELOW,
                regions=meta_select.REGIONS)
    return {}

  monkeypatch.setattr(meta_source, "run_grid", fake_grid)
  monkeypatch.setattr(meta_source.cli, "quiet_logs", lambda: None)
  for name in ("SPREAD", "CONFIRMED", "LOBE_CHECK", "KEEP_BELOW",
               "REGIONS"):
    monkeypatch.setattr(meta_select, name, getattr(meta_select, name))
  flag = lambda value: types.SimpleNamespace(value=value)  # noqa: E731
  f = types.SimpleNamespace(
      out=flag(str(tmp_path / "out.json")), grids=flag(["array"]),
      cells=flag(["sym0.4"]), variants=flag(["auto"]), seeds=flag(["0"]),
      epochs=flag(None), workdir=flag(str(tmp_path)), keep_below=flag(0),
      spread=flag(3), confirmed=flag(0.0), lobe_check=flag(True),
      regions=flag(True), set=flag(""), reuse=flag(None), compare=flag([]))
  meta_source.main([], f)
  assert seen == {"spread": 3, "confirmed": 0.0, "lobe_check": True,
                  "keep_below": 0, "regions": True}


def test_oracle_pick_takes_right_labels_first_and_fills_a_short_class():
  # Class 0: three right (positions 0, 2, 4), two wrong; class 1: one right
  # (position 5) of three, so two wrong ones fill its pick.
  given = [0, 0, 0, 0, 0, 1, 1, 1]
  clean = [0, 1, 0, 1, 0, 1, 0, 2]
  for seed in range(5):
    pick = meta_source.oracle_pick(given, clean, 2, 2, seed)
    assert list(pick) == sorted(pick)
    class0 = [p for p in pick if given[p] == 0]
    assert len(class0) == 2 and set(class0) <= {0, 2, 4}
    assert [p for p in pick if given[p] == 1] in ([5, 6], [5, 7])
  draws = {tuple(meta_source.oracle_pick(given, clean, 2, 2, s))
           for s in range(20)}
  assert len(draws) > 1  # Drawn at random among the right ones, seeded.
  assert (list(meta_source.oracle_pick(given, clean, 2, 2, 3))
          == list(meta_source.oracle_pick(given, clean, 2, 2, 3)))


def test_oracle_record_is_the_meta_set_the_run_holds_out(tmp_path):
  config = meta_source.run_config("array", "lt20_sym0.4", "oracle", 0,
                                  str(tmp_path))
  assert config.meta_source == "auto"  # The run reads the record.
  meta_source.write_oracle_record("array", config)
  record = meta_select.read_record(config.workdir)
  _, split = run_lib.prepare_data(config)
  resolved, _ = config.resolved(len(split.meta_indices))
  # The run takes this record instead of selecting (trainer → prepare).
  assert meta_select._record_matches(record, resolved, split)
  chosen = meta_select.auto_split(resolved, split, config.workdir)
  labels, clean = np.asarray(split.train_labels), np.asarray(
      split.train_clean_labels)
  scores = meta_source.drawn_scores("array", config, config.workdir)
  # As pure as any pick of 10 per class out of the dirty labels can be.
  assert scores["purity"] == pytest.approx(scores["purity_ceiling"])
  assert np.bincount(chosen.meta_labels).tolist() == [10] * 10
  # Held out of training as `auto`'s selection is, but in the classes that
  # keep theirs (too few other examples).
  kept = set(record["kept_in"])
  out = [i for i, y in zip(chosen.meta_indices, chosen.meta_labels)
         if y not in kept]
  assert not set(out) & set(chosen.train_indices)
  assert len(chosen.train_indices) == len(labels) - len(out)
  assert np.mean(labels[record["positions"]]
                 == clean[record["positions"]]) == pytest.approx(
                     record["purity"])


def test_compare_fills_in_the_variants_a_run_lacks_for_the_tables():
  ours = {"array": {"flip0.4": {"auto": {"seeds": [0], "accuracy": [93.0]}}}}
  other = {"array": {"flip0.4": {
      "auto": {"seeds": [0], "accuracy": [80.0]},
      "clean": {"seeds": [0], "accuracy": [94.0], "purity": [1.0]}}},
           "user_path": {"sym0.4": {"ce": {"seeds": [0],
                                           "accuracy": [70.0]}}}}
  merged = meta_source.beside(ours, [other])
  assert merged["array"]["flip0.4"]["auto"]["accuracy"] == [93.0]  # Ours.
  assert merged["array"]["flip0.4"]["clean"]["accuracy"] == [94.0]
  assert merged["user_path"]["sym0.4"]["ce"]["accuracy"] == [70.0]
  assert "clean" not in ours["array"]["flip0.4"]  # Not written back.
  assert any("≥ clean − 2 (92.0)" in line
             for line in meta_source.goal_check(merged))


def test_compare_refuses_a_missing_file_naming_the_flag(monkeypatch,
                                                        tmp_path):
  monkeypatch.setattr(meta_source.cli, "quiet_logs", lambda: None)
  flag = lambda value: types.SimpleNamespace(value=value)  # noqa: E731
  f = types.SimpleNamespace(
      out=flag(str(tmp_path / "out.json")), grids=flag(["array"]),
      cells=flag(["sym0.4"]), variants=flag(["auto"]), seeds=flag(["0"]),
      epochs=flag(None), workdir=flag(str(tmp_path)), keep_below=flag(None),
      spread=flag(None), confirmed=flag(None), lobe_check=flag(None),
      regions=flag(None), set=flag(""), reuse=flag(None),
      compare=flag([str(tmp_path / "missing.json")]))
  with pytest.raises(meta_source.app.UsageError,
                     match=r"--compare: .*missing\.json' is not a file"):
    meta_source.main([], f)
