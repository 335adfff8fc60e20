"""What the advisor says about training examples: its masks `W_f`, its
softmax suppressions `s_k`, its example weights (Meta-Weight-Net), and the
label-issue ranking built from them.

Used by the TensorBoard telemetry callback during training, by
`python -m advisor_tf.analyze` and by the label-issue experiment.

  >>> run = run_lib.load("runs/quickstart")     # advisor_tf.run
  >>> adv = advice.advise(run.model, run.source, run.split)
  >>> scores = advice.label_issue_scores(adv)   # higher = more suspect
  >>> rankings = advice.single_run_rankings(adv)  # analyze's --ranking choices
"""

from __future__ import annotations

import csv
import dataclasses
import warnings
import weakref
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from advisor_tf import losses as adv_losses
from advisor_tf.data import pipeline


@dataclasses.dataclass
class Advice:
  """Per-example advisor outputs over (a part of) the training split.

  Attributes:
    positions: positions in `split.train_indices` of the examples, in order.
    given: the (possibly noisy) labels the model trained on.
    clean: the true labels when the protocol knows them (synthetic noise);
      for data with real noise they equal `given`.
    logits: the classifier's logits (inference mode).
    loss: per-example cross-entropy with the given label (the advisor's
      loss input).
    mask: `W_f`, `(N, D)` (modes with MFRW) or None.
    suppression: `s_k`, `(N, C)` (modes with MES) or None.
    weight: the example weight `(N,)`: Meta-Weight-Net's (`mwnet`), or the
      advisor's ω (`advisor_example_weight`); else None.
    advised_loss: the loss the classifier is trained with under this advice
      (masked features, MES with β = 1, times ω if any — unnormalised here,
      so that an example's score does not depend on its batch; training
      divides by the batch mean; or the weighted loss).
  """
  positions: np.ndarray
  given: np.ndarray
  clean: np.ndarray
  logits: np.ndarray
  loss: np.ndarray
  mask: Optional[np.ndarray] = None
  suppression: Optional[np.ndarray] = None
  weight: Optional[np.ndarray] = None
  advised_loss: Optional[np.ndarray] = None

  @property
  def noisy(self):
    return self.given != self.clean

  @property
  def predicted(self):
    return self.logits.argmax(axis=1)


def _advise_batch(model, x, y, classifier_only=False):
  features = model.backbone(x, training=False)
  logits = model.head(features, training=False)
  ce = keras.losses.sparse_categorical_crossentropy(
      y, ops.cast(logits, "float32"), from_logits=True)
  out = {"logits": logits, "loss": ce}
  if model.advisor is None or classifier_only:
    return out
  if model.mode == "mwnet":
    weight = ops.reshape(model.advisor(ce), (-1,))
    out.update(weight=weight, advised_loss=ops.cast(weight, ce.dtype) * ce)
    return out
  advice = model.advise(features, ce, y)
  advised_logits = logits
  if model.uses_mask:
    out["mask"] = advice["mask"]
    advised_logits = model.head(
        model.reweight(features, advice["mask"], training=True),
        training=False)
  if model.uses_mes:
    out["suppression"] = advice["suppression"]
    out["advised_loss"] = adv_losses.meta_equalization_softmax(
        y, advised_logits, advice["suppression"])
  else:
    out["advised_loss"] = keras.losses.sparse_categorical_crossentropy(
        y, ops.cast(advised_logits, "float32"), from_logits=True)
  if "weight" in advice:  # `advisor_example_weight`: ω scales the loss.
    out["weight"] = advice["weight"]
    out["advised_loss"] = ops.cast(advice["weight"], "float32") * ops.cast(
        out["advised_loss"], "float32")
  return out


_STEPS = weakref.WeakKeyDictionary()


def advise(model, source, split, positions=None, batch_size=256,
           classifier_only=False):
  """Runs the classifier and its advisor over training examples.

  Args:
    model: a built `AdvisorModel`.
    source, split: the run's data (`run.prepare_data`).
    positions: which positions of `split.train_indices` (default: all).
    batch_size: inference batch size.
    classifier_only: the classifier's logits and loss alone (the advisor's
      fields None), e.g. for sample selection between epochs.

  Returns:
    An `Advice`.
  """
  if positions is None:
    positions = np.arange(len(split.train_indices))
  positions = np.asarray(positions, np.int64)
  given = np.asarray(split.train_labels)[positions]
  data = pipeline.unaugmented_train(
      source, np.asarray(split.train_indices)[positions], given).batch(
          batch_size)
  steps = _STEPS.setdefault(model, {})
  step = steps.get(classifier_only)
  if step is None:  # One traced function per model, reused every epoch.
    ref = weakref.ref(model)  # The cache must not keep the model alive.
    step = tf.function(
        lambda x, y: _advise_batch(ref(), x, y, classifier_only),
        reduce_retracing=True)
    steps[classifier_only] = step
  parts = [{k: np.asarray(v) for k, v in step(x, y).items()} for x, y in data]
  joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  return Advice(positions=positions, given=given,
                clean=np.asarray(split.train_clean_labels)[positions],
                **{k: joined.get(k) for k in (
                    "logits", "loss", "mask", "suppression", "weight",
                    "advised_loss")})


# ------------------------------------------------------------ label issues
def label_issue_scores(advice, eps=1e-6):
  """Suspicion scores, higher = more likely mislabelled.

  Returns a dict with `loss` (the plain per-example cross-entropy with the
  given label: the ranking label-cleaning tools start from) and, for the
  advisor modes, `advisor`: how strongly the advisor discounts the example,
  the fraction of its loss that the advice takes away,
  `1 − (L_advised + ε) / (L + ε)` — `1 − weight` for Meta-Weight-Net; for
  MFRW/MES the loss under the masked features and the learned suppressions.
  Also the single signals behind it: `mask` (`1 − mean W_f`) and
  `suppression` (`Σ_{k≠y} p_k s_k`, the suppression put on the classes the
  model believes instead of the given one).
  """
  scores = {"loss": advice.loss.astype(np.float64)}
  if advice.advised_loss is None:
    return scores
  scores["advisor"] = 1.0 - (advice.advised_loss.astype(np.float64) + eps) / (
      scores["loss"] + eps)
  if advice.mask is not None:
    scores["mask"] = 1.0 - advice.mask.mean(axis=1)
  if advice.suppression is not None:
    probs = _softmax(advice.logits)
    probs[np.arange(len(probs)), advice.given] = 0.0
    scores["suppression"] = (probs * advice.suppression).sum(axis=1)
  return scores


def _softmax(logits):
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(axis=1, keepdims=True))
  return z / z.sum(axis=1, keepdims=True)


def ranking_quality(scores, noisy):
  """Average precision and precision/recall curve of finding `noisy` by
  ranking `scores` (None when there is no noisy or no clean example). A
  score that is not finite (a diverged model's) ranks last."""
  from sklearn.metrics import average_precision_score, precision_recall_curve
  noisy = np.asarray(noisy, bool)
  if noisy.all() or not noisy.any():
    return None
  scores = np.asarray(scores, np.float64)
  finite = np.isfinite(scores)
  if not finite.all():
    scores = np.where(finite, scores, (scores[finite].min() - 1.0
                                       if finite.any() else 0.0))
  precision, recall, _ = precision_recall_curve(noisy, scores)
  return {"ap": float(average_precision_score(noisy, scores)),
          "precision": precision, "recall": recall}


def precision_at_k(scores, noisy):
  """Precision among the `k` highest-scored examples, `k` = the true number
  of corrupted labels (so precision = recall there; ties broken by position);
  None when there is no noisy or no clean example."""
  noisy = np.asarray(noisy, bool)
  if noisy.all() or not noisy.any():
    return None
  k = int(noisy.sum())
  top = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:k]
  return float(noisy[top].mean())


# Rankings one finished run can compute (`analyze --ranking`), and the one
# `analyze` uses by default: the one the dirty-labels grid
# (`advisor_tf.experiments.dirty_labels`, results/dirty_labels.json) measured
# best by mean AP. The grid also
# measures `ce_loss` and `cleanlab_cv`, which need extra training runs.
RANKINGS = ("rank_average", "advisor", "loss", "cleanlab_model",
            "cleanlab_cv", "cv_loss", "cv_advisor")
# Rankings that train more models (`crossval`): computed only when chosen.
TRAINED_RANKINGS = ("cleanlab_cv", "cv_loss", "cv_advisor")
DEFAULT_RANKING = "cv_loss"
# Above this many training images the default is `LARGE_SET_RANKING`, which
# trains nothing more: `cv_loss`'s folds cost about K − 1 runs of the
# configuration as cross-entropy (1.6 times a MFRW-MES run at K = 5), and
# the report may not cost more than the training. On Fashion-MNIST (60 000
# images, instance noise 0.4, docs/results.md) the advisor run's own loss
# finds the wrong labels best of the rankings one run has (AP 0.977).
LARGE_SET_EXAMPLES = 10_000
LARGE_SET_RANKING = "loss"
RANKING_HELP = {
    "rank_average": "mean percentile rank of `advisor` and `cleanlab_model` "
                    "(advisor runs; `cleanlab_model` alone for runs without "
                    "an advisor)",
    "advisor": "how strongly the advisor discounts the example's loss",
    "loss": "the example's cross-entropy under the run's classifier",
    "cleanlab_model": "cleanlab's confident-learning issues, then its "
                      "label-quality score, on the run's own predicted "
                      "probabilities",
    "ce_loss": "the loss of a plain cross-entropy run of the same data",
    "cleanlab_cv": "cleanlab on out-of-sample probabilities of K-fold "
                   "cross-entropy training (the usual confident-learning "
                   "recipe; K extra trainings)",
    "cv_loss": "mean percentile rank of `cleanlab_cv` and `loss` (K extra "
               "trainings)",
    "cv_advisor": "mean percentile rank of `cleanlab_cv` and `advisor` "
                  "(advisor runs; K extra trainings)",
}


def cleanlab_scores(labels, pred_probs):
  """cleanlab's ranking as suspicion scores (higher = more suspect).

  The examples `cleanlab.filter.find_label_issues` flags (confident learning,
  `prune_by_noise_rate`, per-class thresholds) come first, each group
  ordered by `1 − cleanlab.rank.get_label_quality_scores` (self-confidence):
  `score = flagged + 1 − quality`, in [0, 2].

  Args:
    labels: `(N,)` given labels.
    pred_probs: `(N, C)` predicted probabilities (out-of-sample for the
      usual recipe).
  """
  from cleanlab.filter import find_label_issues
  from cleanlab.rank import get_label_quality_scores
  labels = np.asarray(labels, np.int64)
  probs = np.asarray(pred_probs, np.float64)
  probs = probs / probs.sum(axis=1, keepdims=True)
  quality = get_label_quality_scores(labels, probs)
  with warnings.catch_warnings():  # "Class k has too few examples" notes.
    warnings.filterwarnings("ignore", category=UserWarning,
                            module="cleanlab")
    flagged = find_label_issues(labels, probs, n_jobs=1)
  return flagged.astype(np.float64) + 1.0 - quality


def rank_average(*scores):
  """Mean percentile rank (average ranks of ties, in (0, 1]) of several
  score arrays: a combination blind to their scales."""
  from scipy.stats import rankdata
  return np.mean([rankdata(np.asarray(s, np.float64)) / len(s)
                  for s in scores], axis=0)


def probabilities(advice):
  """The classifier's softmax probabilities of an `Advice`."""
  return _softmax(advice.logits)


def single_run_rankings(advice, scores=None):
  """Every ranking of `RANKINGS` that one run can compute, `{name: scores}`
  (higher = more suspect): `loss`, `cleanlab_model` and, for the advisor
  methods, `advisor` and `rank_average`."""
  scores = scores if scores is not None else label_issue_scores(advice)
  out = {"loss": scores["loss"],
         "cleanlab_model": cleanlab_scores(advice.given, probabilities(advice))}
  if "advisor" in scores:
    out["advisor"] = scores["advisor"]
    out["rank_average"] = rank_average(scores["advisor"],
                                       out["cleanlab_model"])
  return out


def cv_rankings(rankings, cv_scores):
  """The rankings built on cleanlab's out-of-sample scores `cv_scores` (one
  per example of `rankings`, same order): `cleanlab_cv` itself and its
  combinations with this run's `loss` and, for advisor runs, `advisor`
  (mean percentile ranks)."""
  out = {"cleanlab_cv": np.asarray(cv_scores, np.float64)}
  out["cv_loss"] = rank_average(out["cleanlab_cv"], rankings["loss"])
  if "advisor" in rankings:
    out["cv_advisor"] = rank_average(out["cleanlab_cv"], rankings["advisor"])
  return out


def available_rankings(rankings):
  """The names `resolve_ranking` may choose for a run whose single-run
  rankings are `rankings`: those, and the trained ones that apply."""
  trained = {"cleanlab_cv", "cv_loss"}
  if "advisor" in rankings:
    trained.add("cv_advisor")
  return set(rankings) | trained


def default_ranking_text():
  """The default ranking in words, for `--ranking`'s help."""
  return (f"{DEFAULT_RANKING}; above {LARGE_SET_EXAMPLES} training images "
          f"{LARGE_SET_RANKING}, which trains nothing more")


def resolve_ranking(ranking, available, num_examples=None):
  """The ranking to use: `ranking` (None: the default) if `available` has
  it. The default is `DEFAULT_RANKING` up to `LARGE_SET_EXAMPLES` training
  images (`num_examples`); above, `LARGE_SET_RANKING` (runs without an
  advisor: `cleanlab_model`), which train nothing more. Where the default
  needs an advisor the run lacks, it falls back to `cleanlab_model`.
  Returns `(name, note or None)`; raises ValueError naming `--ranking` when
  an explicit choice is unavailable."""
  if ranking is None:
    if num_examples is not None and num_examples > LARGE_SET_EXAMPLES:
      # A run without an advisor: its loss is a weak ranking (its classifier
      # fitted the noise unchecked); cleanlab's on its probabilities is
      # better and as cheap.
      name = (LARGE_SET_RANKING if "advisor" in available
              else "cleanlab_model")
      return name, (
          f"{num_examples} training images: ranked by {name!r}, which "
          f"trains nothing more (above {LARGE_SET_EXAMPLES} images; the "
          f"small-set default {DEFAULT_RANKING!r} trains the run's "
          "configuration once per fold, about 4 cross-entropy runs at 5 "
          f"folds); --ranking={DEFAULT_RANKING} asks for it.")
    if DEFAULT_RANKING in available:
      return DEFAULT_RANKING, None
    return "cleanlab_model", (f"the default ranking {DEFAULT_RANKING!r} needs "
                              "an advisor; this run has none, so label issues "
                              "are ranked by 'cleanlab_model'.")
  if ranking not in available:
    raise ValueError(f"--ranking={ranking} needs an advisor method; this "
                     f"run offers: {', '.join(sorted(available))}.")
  return ranking, None


def write_label_issues(path, advice, scores, source, split, score="advisor"):
  """Writes the training examples ranked by `scores[score]` as CSV:
  rank, index (in the source's train split), path (file datasets), given and
  predicted label (names), score, loss, the clean label when known, and
  `meta_source`: how the meta set the run learned from was chosen
  (`auto`: by the tool, from these labels; see `advisor_tf.meta_select`)."""
  order = np.argsort(-scores[score], kind="stable")
  indices = np.asarray(split.train_indices)[advice.positions]
  paths = getattr(source, "paths", None)
  names = source.class_names
  known = bool(advice.noisy.any())
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["rank", "index", "path", "given_label", "predicted_label",
                     "score", "loss"] + (["clean_label", "noisy"] if known
                                         else []) + ["meta_source"])
    for rank, i in enumerate(order, start=1):
      row = [rank, int(indices[i]),
             paths["train"][indices[i]] if paths else "",
             names[advice.given[i]], names[advice.predicted[i]],
             f"{scores[score][i]:.6g}", f"{advice.loss[i]:.6g}"]
      if known:
        row += [names[advice.clean[i]], int(advice.noisy[i])]
      writer.writerow(row + [getattr(split, "meta_source", "random")])


# ------------------------------------------------------------- class sizes
def class_suppression(advice, num_classes):
  """Mean `s_k` per class k over the examples not labelled k (where MES
  applies it)."""
  sums = advice.suppression.sum(axis=0) - np.bincount(
      advice.given, weights=advice.suppression[np.arange(len(advice.given)),
                                               advice.given],
      minlength=num_classes)
  counts = len(advice.given) - np.bincount(advice.given,
                                           minlength=num_classes)
  return sums / np.maximum(counts, 1)


def suppression_target(class_counts):
  """What a frequency-based equalization should suppress, per class:
  `1 − n_k / n_max` (rare → 1, the most common → 0)."""
  counts = np.asarray(class_counts, np.float64)
  return 1.0 - counts / counts.max()


def eql_thresholds(class_counts, threshold):
  """The equalization loss's two hand-made threshold functions of the class
  frequency f_k = n_k / N (Tan et al. 2020): the hard step `T_λ(f) =
  1[f < λ]` and its smooth exponential-decay variant `exp(−f/λ)`."""
  counts = np.asarray(class_counts, np.float64)
  freq = counts / counts.sum()
  return {"EQL step T_λ": (freq < threshold).astype(np.float64),
          "EQL exp. decay": np.exp(-freq / threshold)}
