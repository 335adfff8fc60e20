"""The measurement of `--meta_source=auto`'s warning: per class, whether it
speaks and whether the class's meta examples are truly unreliable; the
precision and recall over every (cell, seed, class)."""

import types

import numpy as np
import pytest
from absl import app

from advisor_tf import meta_select
from advisor_tf.experiments import meta_warning


def _split(given, clean):
  return types.SimpleNamespace(train_labels=np.asarray(given),
                               train_clean_labels=np.asarray(clean))


def test_class_truth_reads_the_meta_examples_and_the_labels():
  # Class 0: two meta examples, one right; class 1: all right; class 2:
  # no meta example. Labels: 1 of 3 labelled 0 wrong, 1 of 3 labelled 1.
  given = [0, 0, 0, 1, 1, 1, 2]
  clean = [0, 1, 0, 1, 1, 2, 2]
  record = {"positions": [0, 1, 3, 4]}
  truth = meta_warning.class_truth(record, _split(given, clean), 3)
  assert truth[0] == (0.5, pytest.approx(1 / 3))
  assert truth[1] == (1.0, pytest.approx(1 / 3))
  assert truth[2] == (None, 0.0)
  assert meta_warning.unreliable(0.5) and not meta_warning.unreliable(1.0)
  assert not meta_warning.unreliable(meta_warning.RIGHT_BAR)
  assert not meta_warning.unreliable(None)


def test_measure_and_precision_recall(monkeypatch):
  given = np.repeat(np.arange(3), 10)
  clean = given.copy()
  clean[[0, 1, 2]] = 1  # Class 0's first three meta examples are wrong.
  record = {"positions": list(range(0, 30, 2)) + [1], "purity": 0.8,
            "labels": list(given[list(range(0, 30, 2)) + [1]]),
            "neighbour_agreement": [0.9] * 16,
            "class_agreement": [0.5, 0.9, 0.9],
            "selected_agreement": [0.4, 1.0, 1.0]}
  monkeypatch.setattr(meta_select, "record_suspects", lambda r: [0, 2])
  entry = meta_warning.measure(record, _split(given, clean), 3)
  assert entry["warned"] == [0, 2] and entry["unreliable"] == [0]
  assert entry["meta_right"][0] == pytest.approx(3 / 6)
  assert entry["disputed"] == [0.9, 0.9, 0.9]
  # The summary applies today's rule to the recorded signals.
  monkeypatch.setattr(meta_select, "suspects", lambda a, s, d: [0, 2])
  other = dict(entry, warned=[], disputed=None)
  del other["disputed"]  # An entry without signals keeps its `warned`.
  summary = meta_warning.rescore({"c": {"0": entry}, "d": {"0": other},
                                  "digits_e": {"1": dict(entry)}})
  assert summary["fashion"] == {"warnings": 2, "right": 1, "unreliable": 2,
                                "precision": 0.5, "recall": 0.5}
  assert summary["digits"]["precision"] == 0.5
  assert summary["all"]["warnings"] == 4
  assert meta_warning.rescore({})["all"]["precision"] is None


def test_held_out_scores_each_cell_with_bars_chosen_on_the_others():
  # Per cell: class 0 wrong (disputed, labels not recognised), class 1 a
  # clean tail class (disputed, but its labels recognised), class 2 fine.
  entry = {"class_agreement": [0.5, 0.97, 0.9],
           "selected_agreement": [0.2, 1.0, 1.0],
           "disputed": [0.05, 0.12, 0.6], "unreliable": [0], "warned": []}
  results = {cell: {"0": dict(entry)} for cell in ("a", "b", "digits_c")}
  out = meta_warning.held_out(results)
  assert (out["warnings"], out["right"], out["unreliable"]) == (3, 3, 3)
  assert out["precision"] == 1.0 and sum(out["chosen"].values()) == 3
  # A cell whose wrong class is disputed only mildly is missed when the
  # other cells chose a bar below it.
  results["a"]["0"] = dict(entry, disputed=[0.28, 0.12, 0.6])
  out = meta_warning.held_out(results)
  assert out["unreliable"] == 3 and out["right"] < 3


def test_cells_are_the_fashion_grids_and_the_users():
  cells = meta_warning.cells()
  assert {"pair0.35_3k", "instance0.35_6k", "instance0.4",
          "lt100_sym0.2"} <= set(cells) and "clean" not in cells
  config = meta_warning.config_of("pair0.35_3k", 2)
  assert (config.meta_source, config.train_examples, config.flip_targets,
          config.seed, config.dataset) == ("auto", 3000, "similar", 2,
                                           "fashion_mnist")
  digits = meta_warning.config_of("digits_lt20_flip0.4", 1)
  assert (digits.dataset, digits.meta_source, digits.imbalance_factor,
          digits.noise) == ("digits", "auto", 20.0, "flip")
  assert "digits_lt20" not in cells  # No noise, nothing to warn about.


def test_bad_cells_and_seeds_are_refused():
  def flags_of(cells, seeds):
    value = lambda v: types.SimpleNamespace(value=v)  # noqa: E731
    return {"cells": value(cells), "seeds": value(seeds), "out": value("x"),
            "data_dir": value(None)}
  with pytest.raises(app.UsageError, match="--cells: 'pair9'"):
    meta_warning.main([], flags_of(["pair9"], ["0"]))
  with pytest.raises(app.UsageError, match="--seeds=-1"):
    meta_warning.main([], flags_of(["pair0.35_3k"], ["-1"]))
