"""The K-fold cross-entropy behind `cleanlab_cv`: one model, traced once,
reset per fold, with the numbers of a model built afresh for every fold."""

import dataclasses

import numpy as np
import pytest

from advisor_tf import crossval
from advisor_tf import model as model_lib
from advisor_tf import run as run_lib
from advisor_tf.experiments import BASE


def _data():
  config = dataclasses.replace(BASE, noise_rate=0.4, epochs=1,
                               steps_per_epoch=2, lr_decay_epochs=(1,),
                               seed=3).validate()
  return (config,) + run_lib.prepare_data(config)


def _traced_folds(monkeypatch, folds):
  """Out-of-sample probabilities and how often a train step was traced."""
  traced = []
  step = model_lib.AdvisorModel.train_step

  def counting(self, data):
    traced.append(1)  # Python runs here only while a step is traced.
    return step(self, data)

  monkeypatch.setattr(model_lib.AdvisorModel, "train_step", counting)
  said = []
  probs = crossval.cross_validated_probabilities(*_data(), folds=folds,
                                                 log=said.append)
  return probs, len(traced), said


@pytest.mark.slow  # Moved by measured duration (fast tier over budget).
def test_folds_share_one_traced_model(monkeypatch):
  _, two, said = _traced_folds(monkeypatch, 2)
  _, four, _ = _traced_folds(monkeypatch, 4)
  assert two >= 1 and four == two  # Not once more per fold.
  assert said[0].startswith("Out-of-sample probabilities: 2 cross-entropy")


@pytest.mark.slow  # Moved by measured duration (fast tier over budget).
def test_reset_model_gives_the_numbers_of_a_fresh_model_per_fold(
    monkeypatch):
  shared, _, _ = _traced_folds(monkeypatch, 3)
  monkeypatch.setattr(crossval, "reset_to", lambda model, fresh: fresh)
  fresh, traced, _ = _traced_folds(monkeypatch, 3)
  assert traced >= 3  # The reference really built a model per fold.
  np.testing.assert_allclose(shared, fresh, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(shared.sum(axis=1), 1.0, rtol=1e-5)
  # The folds differ (each its own seed and data): not one model's output.
  assert not np.allclose(shared[:5], shared[-5:])
