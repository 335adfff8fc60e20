"""Out-of-sample predicted probabilities by K-fold cross-entropy training:
what confident learning (cleanlab) ranks label issues from.

  >>> probs = crossval.cross_validated_probabilities(run.config, run.source,
  ...                                                run.split, folds=5)
  >>> scores = advice.cleanlab_scores(run.split.train_labels, probs)

Used by `analyze --ranking=cleanlab_cv` and the dirty-labels grid
(`advisor_tf.experiments.dirty_labels`). It costs K trainings of the run's
configuration as plain cross-entropy, each on (K − 1)/K of the training set.
"""

import dataclasses
import os
import time
import warnings

from absl import logging
import keras
import numpy as np

from advisor_tf import advice
from advisor_tf import builder
from advisor_tf import run as run_lib
from advisor_tf import trainer

FOLDS = 5


def cross_validated_probabilities(config, source, split, folds=FOLDS,
                                  cache=None, log=logging.info):
  """Out-of-sample predicted probabilities of every training example of
  `split`, from `folds` cross-entropy models each trained on the other folds.

  Each fold trains `config` with `method="ce"` (built by
  `builder.build_model`, fed by the trainer's own `train_stream`) on a
  stratified (by given label, seeded by `config.seed`)
  `(folds − 1) / folds` of the training split, and predicts the held-out
  part without augmentation. The folds share one model, traced once: each
  fold starts it from the weights and optimizer state of a model freshly
  built with the fold's seed (`reset_to`). With `cache` (a `.npy` path),
  the result is read from there when present and written there otherwise. `log` gets a
  line saying up front what the folds cost and one per fold with the time
  left.
  """
  from sklearn.model_selection import StratifiedKFold
  if cache and os.path.exists(cache):
    return np.load(cache)
  config = dataclasses.replace(config, method="ce", virtual_scope="all",
                               meta_update_every=1, advice="exact",
                               sample_selection="none", selection_warmup=None)
  labels = np.asarray(split.train_labels)
  probs = np.zeros((len(labels), source.num_classes))
  with warnings.catch_warnings():  # Tail classes may have < folds members.
    warnings.simplefilter("ignore", UserWarning)
    parts = list(StratifiedKFold(folds, shuffle=True,
                                 random_state=config.seed).split(
                                     np.zeros(len(labels)), labels))
  log(f"Out-of-sample probabilities: {folds} cross-entropy trainings of "
      f"--epochs={config.epochs}, each on {folds - 1}/{folds} of the "
      f"{len(labels)} training images (about {folds - 1} times a "
      "cross-entropy run of this configuration); an estimate of the time "
      "follows the first fold. The rankings loss and advisor need none "
      "(--ranking=loss).")
  start = time.time()
  # One model for every fold: traced once, reset per fold.
  model, model_steps = None, None
  for k, (fit, held) in enumerate(parts):
    if k:
      spent = time.time() - start
      log(f"Fold {k}/{folds} done in {spent / k:.0f} s; about "
          f"{spent / k * (folds - k):.0f} s left.")
    keras.utils.set_random_seed(config.seed * 1000 + k)
    fold = dataclasses.replace(
        split, train_indices=np.asarray(split.train_indices)[fit],
        train_labels=labels[fit],
        train_clean_labels=np.asarray(split.train_clean_labels)[fit])
    steps = run_lib.steps_per_epoch(config, fold)
    fresh = builder.build_model(
        config, source.image_shape, source.num_classes,
        class_counts=fold.class_counts(source.num_classes),
        steps_per_epoch=steps)
    # A fold of other length has another schedule: it gets its own model.
    model = fresh if steps != model_steps else reset_to(model, fresh)
    model_steps = steps
    model.fit(trainer.train_stream(config, source, fold, seed=config.seed + k),
              epochs=config.epochs, steps_per_epoch=steps, verbose=0,
              shuffle=False)
    probs[held] = advice.probabilities(advice.advise(
        model, source, split, positions=held,
        batch_size=config.eval_batch_size))
  del model
  keras.backend.clear_session()
  log(f"Fold {folds}/{folds} done; {time.time() - start:.0f} s for the "
      f"{folds} folds.")
  if cache:
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    np.save(cache, probs)
  return probs


def reset_to(model, fresh):
  """`model` with the weights and optimizer state of `fresh` (the same
  configuration, built with another seed), so that a fold trains from
  `fresh`'s start on the functions `model` has already traced; `fresh`
  itself where `model` is None or its variables differ in shape."""
  if model is None or [w.shape for w in model.weights] != [
      w.shape for w in fresh.weights]:
    return fresh
  model.set_weights(fresh.get_weights())
  for mine, theirs in zip(model.optimizer.variables, fresh.optimizer.variables):
    mine.assign(theirs)
  return model
