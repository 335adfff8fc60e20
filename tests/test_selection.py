"""Sample selection (`--sample_selection=gmm`, `gmm_relabel`): the
Gaussian-mixture split of the losses, a dropped example's label has no
effect on the step, label correction trains a confident dropped example on
its prediction, the flags are validated, and a run selects, relabels,
records it and resumes as it selected."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from advisor_tf import config as config_lib
from advisor_tf import selection
from advisor_tf import trainer
from conftest import batches, tiny_model


def test_gmm_keeps_the_low_loss_mode():
  rng = np.random.default_rng(0)
  clean = rng.gamma(2.0, 0.1, 700)  # Small losses.
  wrong = 2.5 + rng.gamma(2.0, 0.4, 300)  # Large ones.
  keep = selection.gmm_keep(np.concatenate([clean, wrong]))
  assert keep[:700].mean() > 0.95 and keep[700:].mean() < 0.05
  assert selection.gmm_keep(np.full(5, 0.3)).all()  # Nothing to split.
  assert selection.gmm_keep([]).shape == (0,)
  noisy = np.r_[np.zeros(700, bool), np.ones(300, bool)]
  described = selection.describe(keep, noisy)
  assert described["selection/kept_share"] == pytest.approx(keep.mean(),
                                                            abs=1e-4)
  assert described["selection/dropped_mislabelled_share"] > 0.95
  assert described["selection/mislabelled_dropped_share"] > 0.95


def test_relabel_corrects_only_confident_dropped_examples():
  keep = np.array([True, False, False, False, False])
  probs = np.array([[0.02, 0.98, 0, 0],    # Kept: never relabelled.
                    [0.97, 0.01, 0.02, 0],  # Dropped, confident: class 0.
                    [0.5, 0.5, 0, 0],       # Dropped, unsure.
                    [0, 0.99, 0.01, 0],     # Dropped, predicts its label.
                    [0, 0, 0.04, 0.96]])    # Dropped, confident: class 3.
  given = np.array([0, 2, 2, 1, 2])
  labels = selection.relabel(keep, probs, given, 0.95)
  np.testing.assert_array_equal(labels, [-1, 0, -1, -1, 3])
  np.testing.assert_array_equal(selection.relabel(keep, probs, given, 0.97),
                                [-1, 0, -1, -1, -1])
  described = selection.describe(keep, given != np.array([0, 0, 2, 3, 3]),
                                 labels, clean=np.array([0, 0, 2, 3, 1]))
  assert described["selection/relabelled_share"] == 0.4
  assert described["selection/relabelled_right_share"] == 0.5


def test_selection_reads_the_classifier_alone():
  """The pass between epochs skips the advisor: the same logits and loss
  as the full advice, nothing of the advisor's."""
  from advisor_tf import advice
  x, y, _, _ = batches(n=12)
  model = tiny_model("mfrw_mes")
  full = advice._advise_batch(model, x, tf.constant(y))
  alone = advice._advise_batch(model, x, tf.constant(y), classifier_only=True)
  assert set(alone) == {"logits", "loss"} and "mask" in full
  for key in alone:
    np.testing.assert_allclose(alone[key], full[key], rtol=1e-6)


def _values(model):
  return [v.numpy() for v in model.variables if "example_keep" not in v.path]


def _selecting(mode):  # One selection weight per example of a 12-batch.
  return tiny_model(mode, sample_selection="gmm", class_counts=[3, 3, 2, 2, 2])


@pytest.mark.parametrize("mode", [
    "ce", pytest.param("mfrw_mes", marks=pytest.mark.slow)])
def test_a_dropped_examples_label_does_not_move_the_model(mode):
  x, y, xm, ym = batches(n=12)
  other = y.copy()
  other[[0, 5]] = (y[[0, 5]] + 1) % 5  # Only the dropped ones differ.
  states = []
  for labels in (y, other):
    model = _selecting(mode)
    model.example_keep.assign(np.r_[0, 1, 1, 1, 1, 0, np.ones(6)].astype(
        np.float32))
    positions = tf.range(12, dtype=tf.int64)
    model.train_step(((x, labels, positions), (xm, ym)))
    states.append(_values(model))
  for a, b in zip(*states):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # Kept, the same label change moves it.
  moved = []
  for labels in (y, other):
    model = _selecting(mode)
    model.train_step(((x, labels, tf.range(12, dtype=tf.int64)), (xm, ym)))
    moved.append(_values(model))
  assert any(not np.allclose(a, b) for a, b in zip(*moved))


def test_a_corrected_label_trains_as_if_it_were_given():
  x, y, xm, ym = batches(n=12)
  fixed = y.copy()
  fixed[[0, 5]] = (y[[0, 5]] + 2) % 5
  positions = tf.range(12, dtype=tf.int64)
  corrected = tiny_model("ce", sample_selection="gmm_relabel",
                         class_counts=[3, 3, 2, 2, 2])
  corrected.example_label.assign(np.where(fixed != y, fixed, -1).astype(
      np.int32))
  corrected.train_step(((x, y, positions), (xm, ym)))
  given = _selecting("ce")
  given.train_step(((x, fixed, positions), (xm, ym)))
  values = lambda m: [v.numpy() for v in m.variables  # noqa: E731
                      if "example_" not in v.path]
  for a, b in zip(values(corrected), values(given)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_the_flags_are_validated():
  base = config_lib.TrainConfig(epochs=6)
  with pytest.raises(ValueError, match="--selection_warmup=2.*"
                     "--sample_selection=gmm"):
    dataclasses.replace(base, selection_warmup=2).validate()
  with pytest.raises(ValueError, match="--selection_warmup=6"):
    dataclasses.replace(base, sample_selection="gmm",
                        selection_warmup=6).validate()
  with pytest.raises(ValueError, match="--relabel_confidence=1.5.*"
                     r"\(0, 1\]"):
    dataclasses.replace(base, sample_selection="gmm_relabel",
                        relabel_confidence=1.5).validate()
  with pytest.raises(ValueError, match="--relabel_confidence=0.8 applies to "
                     "--sample_selection=gmm_relabel, not "
                     "--sample_selection=gmm"):
    dataclasses.replace(base, sample_selection="gmm",
                        relabel_confidence=0.8).validate()
  config = dataclasses.replace(base, sample_selection="gmm").validate()
  assert selection.start_epoch(config) == 2
  assert selection.start_epoch(dataclasses.replace(
      config, selection_warmup=4)) == 4


def _run(workdir, **changes):
  return dataclasses.replace(
      config_lib.TrainConfig(), workdir=str(workdir), noise="symmetric",
      noise_rate=0.4, epochs=3, steps_per_epoch=8, lr_decay_epochs=(2,),
      verbose=0, export=False, embedding_size=8, checkpoint_every=4,
      keep_checkpoints=10, sample_selection="gmm_relabel",
      relabel_confidence=0.3, selection_warmup=1,
      **changes).validate()


@pytest.mark.slow
def test_a_run_selects_records_and_resumes_as_it_selected(tmp_path):
  trainer.train(_run(tmp_path / "straight"))
  metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
  assert metrics["selection/epoch"] == 2
  assert 0.3 < metrics["selection/kept_share"] < 1.0
  # Most of what it drops is mislabelled (40 % of the labels are).
  assert metrics["selection/dropped_mislabelled_share"] > 0.6
  # A 3-epoch run is seldom 95 % sure: at a low bar some are relabelled.
  assert 0 < metrics["selection/relabelled_share"] < 1
  assert metrics["selection/relabelled_right_share"] is not None
  # Stopped at the checkpoint within the second epoch (step 12 of 8-step
  # epochs, its selection made at step 8), then resumed: the same weights
  # and the same selection as the run that went straight through.
  stopped = tmp_path / "stopped"
  shutil.copytree(tmp_path / "straight", stopped)
  checkpoints = stopped / "checkpoints"
  for path in checkpoints.iterdir():
    if path.name == "checkpoint" or any(
        path.name.startswith(f"ckpt-{s}.") for s in (16, 20, 24)):
      path.unlink()
  (stopped / "metrics.json").unlink()
  trainer.train(_run(stopped))
  resumed = json.loads((stopped / "metrics.json").read_text())
  assert resumed["resumed_from_step"] == 12
  straight = tf.train.load_checkpoint(str(tmp_path / "straight" /
                                          "checkpoints"))
  again = tf.train.load_checkpoint(str(checkpoints))
  names = [k for k in straight.get_variable_to_shape_map()
           if "example_" in k or "kernel" in k]
  for variable in ("example_keep", "example_label"):
    assert any(variable in k for k in names), variable
  for name in names:
    np.testing.assert_array_equal(straight.get_tensor(name),
                                  again.get_tensor(name), err_msg=name)
