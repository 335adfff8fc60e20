"""Where a run's meta set comes from (`--meta_source`), and `auto`: choosing
it from the user's own dirty training data, without any trusted label.

  folder        the dataset's own trusted split (a user's `meta/` folder or
                `meta.csv`, Clothing1M's clean val, the val split of
                ImageNet-LT / Places-LT): `--meta_per_class` per class, or
                all of it with 0.
  random        `--meta_per_class` per class drawn at random out of the
                training split *before* any synthetic `--noise` (and before
                the long tail), and taken out of training. Under synthetic
                noise its labels are the clean ones: the thesis' and
                Meta-Weight-Net's protocol (every thesis flagfile sets it).
                On a user's own folder there is no synthetic noise: the
                draw is of their labels as given, exactly as dirty as the
                training set.
  random_noisy  the same draw, *after* the synthetic noise: what `random`
                gives a user with dirty labels, reproduced on a benchmark.
  auto          chosen from the training labels as given (after any
                synthetic noise), without any trusted label, by `select`:
                a short warm-up (`warmup_epochs`: whole epochs, at least
                `WARMUP_STEPS` steps) trains a separate model of the run's
                configuration with the balanced softmax (cross-entropy
                corrected for the class sizes of the given labels, so that
                a long tail does not leave the small classes unlearned) on
                the whole training split. Each training example is then
                scored by how far its label agrees with its neighbourhood
                in that model's feature space (the backbone's output,
                without augmentation, cosine similarity): the share of its
                `NEIGHBOURS` nearest training examples that carry its label,
                each neighbour's vote weighted by its own agreement
                (`ROUNDS` = 2; one step of label propagation). Per class,
                the `--meta_per_class` examples of highest agreement (ties:
                the smaller warm-up loss) form the meta set, which is then
                taken out of training for the whole run, as a trusted set
                would be — except in a class with fewer than `KEEP_BELOW` ×
                k other examples, whose few examples stay in training too.
                The neighbourhood vote is Deep k-NN's filter (Bahri, Jiang
                and Gupta, ICML 2020) used to pick a meta set; it replaced
                CMW-Net-SL's per-class smallest loss (Shu et al., TPAMI
                2023), which a barely trained model ranks noisily: a
                consistently flipped image looks like its true class's
                images, whose labels mostly say so. Measured: see the docs,
                "Without a trusted set". With more than `VOTERS` training
                examples, a seeded random `VOTERS` of them vote.
                `SPREAD` > 1 (an ablation, `meta_source --spread`) spreads
                the pick over the class's neighbourhoods instead
                (`spread_per_class`; `LOBE_CHECK`: not a class whose
                disputed labels look like one other class's images,
                `lobed_classes`); measured, not the default: under Flip
                noise it seeks out a class's flipped-in lobe.
                One region per class (`REGIONS`; `meta_source --noregions`
                to measure without): the warm-up's feature space is cut
                into as many regions as classes (k-means on the voters'
                features, 10 restarts), matched one to one with the
                classes so that the most labels agree; a class whose pick
                lies in another class's region, where that class picks
                too, takes its pick from its own region instead (`rehome`,
                when its label is at least `REGION_SHARE` of that region).
                That is the fix for a class turned more than half into one
                other label (Flip noise above one half in a class), whose
                label is a plurality nowhere: the vote picks the images
                flipped into it; the region of its own images is the one
                the matching leaves to it. The run names the classes moved
                (`moved_classes`, `meta/moved_classes`).

Unset (`None`), a run takes `folder` when the dataset ships a trusted split
and `DEFAULT_DRAW` otherwise (the best of the three measured by
`python -m advisor_tf.experiments.meta_source`).

The selection trusts that, among the images labelled c, those that show a c
outnumber those of any one other class. Where they do not (a class half or
more relabelled from one other class, a tail class outnumbered by the
head's noise) it picks the wrong examples; `select`
estimates, per class, the share of the examples labelled c that the warm-up
classifier predicts as c, and of the selected ones, and the median share of
the selected ones' nearest neighbours that carry their label; the run logs a
warning naming every class whose selected examples sit where nearly all
neighbours carry other labels, unless the warm-up recognises nine in ten
of the class's labels (`suspects`; `suspect_classes` in the record and in
`metrics.json`). A consistent
relabelling of most of a class (Flip noise above 0.5) is what the regions
(`rehome`) resolve, when the warm-up's features keep the class's own
images apart from the class they were relabelled as; where they do not,
it cannot be told from the truth without a trusted label and is named only
when the warm-up classifier happens to give it away.

Exact resume: the selection (positions, dataset indices, labels, the
warm-up's per-class agreement and the configuration it belongs to) is
written to `meta_selection.json` in the workdir before training starts; a
resumed run reads it back instead of selecting again, and `auto_split`
rebuilds the split a finished run trained on (for `analyze`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time

from absl import logging
import keras
import numpy as np
from scipy import optimize
from sklearn import cluster
import tensorflow as tf

from advisor_tf import advice
from advisor_tf import builder
from advisor_tf import config as config_lib
from advisor_tf.data import pipeline

DEFAULT_DRAW = "auto"
WARMUP_STEPS = 32       # The warm-up: whole epochs, at least this many steps.
LOSS_MOMENTUM = 0.7     # Per epoch (the losses break agreement ties).
# The warning (`suspects`): a class whose selected examples' neighbours
# agree with their label less than this (median) ...
DISPUTED_BELOW = 0.15
# ... unless the warm-up predicts at least this share of the class's
# labelled examples as the class (its labels look consistent).
RECOGNISED_FROM = 0.9
WARMUP_METHOD = "balanced_softmax"  # Unbiased by the classes' sizes.
NEIGHBOURS = 50         # Nearest training examples that vote on a label.
ROUNDS = 2              # Vote rounds (> 1: votes weighted by the voter's).
VOTERS = 20_000         # At most this many training examples vote.
SPREAD = 1              # Candidates per class, × k, that the pick spreads
                        # over (`spread_per_class`; 1: the k best).
CONFIRMED = 0.5         # The agreement a candidate of the spread pick needs.
LOBE_CHECK = False      # Spread no class whose disputed labels are mostly
                        # one other class's images (`lobed_classes`).
KEEP_BELOW = 3          # A class with fewer than this × k others keeps its
                        # meta examples in training too.
REGIONS = True          # One region per class, matched one to one: a class
                        # picked outside its region moves in (`rehome`).
REGION_SHARE = 0.25     # The least share of a region's examples a class
                        # must have to move its pick there.
RECORD = "meta_selection.json"


def resolve(config, source):
  """The meta source a run of `config` on `source` uses: `config.meta_source`,
  or, unset, `folder` where the dataset ships a trusted split and
  `DEFAULT_DRAW` otherwise. Refuses `folder` without one."""
  has_own = source.meta_split != "train"
  if config.meta_source == "folder" and not has_own:
    where = ("a meta/ folder in --data_dir" if config.dataset == "image_folder"
             else "a meta.csv in --data_dir" if config.dataset == "image_csv"
             else "a trusted split")
    raise ValueError(f"--meta_source=folder: --dataset={config.dataset} has no "
                     f"meta split ({where}); use --meta_source=auto, random or "
                     "random_noisy.")
  if config.meta_source is None:
    return "folder" if has_own else DEFAULT_DRAW
  return config.meta_source


def per_class(config, meta_source):
  """`--meta_per_class` as a run with `meta_source` uses it: as given, or
  unset, all of the dataset's own trusted split (0) for `folder` and
  `DEFAULT_META_PER_CLASS` per class drawn out of train otherwise."""
  if config.meta_per_class is not None:
    return config.meta_per_class
  return 0 if meta_source == "folder" else config_lib.DEFAULT_META_PER_CLASS


def warmup_epochs(steps_per_epoch):
  """The warm-up's length: whole epochs of at least `WARMUP_STEPS` steps."""
  return max(1, -(-WARMUP_STEPS // max(steps_per_epoch, 1)))


def select_per_class(scores, losses, labels, per_class, num_classes):
  """Sorted positions of the `per_class` examples of each class (all of a
  smaller one) with the highest `scores` (ties: the smaller `losses`, then
  the earlier position)."""
  scores, losses = np.asarray(scores), np.asarray(losses)
  labels = np.asarray(labels)
  chosen = [_ranked(np.flatnonzero(labels == c), scores, losses)[:per_class]
            for c in range(num_classes)]
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _ranked(members, scores, losses):
  """`members` by descending score, ties by the smaller loss, then the
  earlier position."""
  return members[np.lexsort((members, losses[members], -scores[members]))]


def lobed_classes(neighbours, voters, labels, agreement, num_classes):
  """The classes whose disputed labels look like one other class: of the
  examples labelled c whose `agreement` is below one half, more than half
  have the same other class as the plurality label of their neighbours
  (Flip noise: a lobe of one other class's images labelled c). Uniform
  noise spreads a class's wrong labels over many classes.

  Args:
    neighbours, voters: `nearest_voters`' graph and its voters.
    labels: `[n]` the given labels.
    agreement: `[n]` `neighbour_agreement`.
    num_classes: the number of classes.
  """
  labels = np.asarray(labels)
  disputed = np.flatnonzero(np.asarray(agreement) < 0.5)
  if not len(disputed):
    return []
  votes = labels[np.asarray(voters, np.int64)[np.asarray(neighbours)[
      disputed]]]
  counts = np.zeros((len(disputed), num_classes))
  np.add.at(counts, (np.repeat(np.arange(len(disputed)), votes.shape[1]),
                     votes.ravel()), 1.0)
  own = labels[disputed]
  counts[np.arange(len(disputed)), own] = -1.0  # The other class it looks like.
  looks_like = counts.argmax(axis=1)
  lobed = []
  for c in range(num_classes):
    seen = looks_like[own == c]
    if len(seen) and np.bincount(seen).max() > len(seen) / 2:
      lobed.append(c)
  return lobed


def spread_per_class(scores, losses, labels, per_class, num_classes,
                     neighbours, voters, pool=None, keep=()):
  """Like `select_per_class`, but spread over each class's neighbourhoods:
  among the class's `pool` × `per_class` best-scored examples (ties as
  there), greedily in the order of their score, an example is taken unless
  it is among the r nearest neighbours of one taken before (non-maximum
  suppression on the neighbour graph), r = the class's size ÷ `per_class`
  (each taken example stands for about as many of its class), at most the
  graph's k; a class left short is filled from the pool in score order.
  The pool holds only examples of a score of at least `CONFIRMED` (most of
  the neighbours' weighted votes are for the example's label); a class
  with no more of them than `per_class` is picked as by
  `select_per_class`.

  Args:
    neighbours, voters: `nearest_voters`' graph (nearest first) and its
      voters (positions into `labels`).
    pool: the candidates per class, × `per_class` (1: `select_per_class`).
    keep: classes picked as by `select_per_class`.
  """
  pool = SPREAD if pool is None else pool
  scores, losses = np.asarray(scores), np.asarray(losses)
  labels = np.asarray(labels)
  neighbours = np.asarray(neighbours)
  voters = np.asarray(voters, np.int64)
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    order = _ranked(members, scores, losses)
    confirmed = order[:(1 if c in keep else max(1, pool)) * per_class]
    confirmed = confirmed[scores[confirmed] >= CONFIRMED]
    order = confirmed if len(confirmed) > per_class else order[:per_class]
    radius = min(neighbours.shape[1], max(1, len(members) // max(per_class,
                                                                 1)))
    taken, near = [], set()
    for p in order:
      if len(taken) == per_class:
        break
      if p not in near:
        taken.append(p)
        near.update(voters[neighbours[p, :radius]].tolist())
    kept = frozenset(taken)
    rest = [p for p in order if p not in kept]
    chosen.append(np.asarray(taken + rest[:per_class - len(taken)],
                             np.int64))
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _unit(batch):
  """A batch of features, flattened, each of unit length."""
  batch = np.asarray(batch, np.float32).reshape(len(batch), -1)
  return batch / np.maximum(np.linalg.norm(batch, axis=1, keepdims=True),
                            1e-12)


def feature_regions(features, voters, count, seed):
  """Each example's region: the nearest of `count` k-means centres of the
  voters' features (unit length, so cosine, as `nearest_voters`; seeded
  k-means++, the best of 10 starts). `features`: as `nearest_voters`'
  (called twice). None where a feature is not finite (a warm-up that
  diverged: the run's own training then stops, naming the step)."""
  keys = np.concatenate([_unit(f) for f in features(np.asarray(voters))])
  if not np.all(np.isfinite(keys)):
    return None  # A warm-up that diverged: no regions (training will say).
  count = max(1, min(count, len(keys)))
  kmeans = cluster.KMeans(count, n_init=10, random_state=seed).fit(keys)
  out, finite = [], True
  for batch in features(None):
    batch = _unit(batch)
    finite = finite and bool(np.all(np.isfinite(batch)))
    out.append(kmeans.predict(np.nan_to_num(batch)))
  if not finite:
    return None
  return (np.concatenate(out).astype(np.int64) if out
          else np.zeros(0, np.int64))


def rehome(positions, regions, scores, losses, labels, per_class,
           num_classes, share=None):
  """One region per class. The classes are matched one to one with the
  regions (`feature_regions`) so that as many examples as possible carry
  the label of their region (the Hungarian method). A class c whose
  picked `positions` lie mostly in the region of another class d, which
  picks there too, moves into its own region — takes the region's
  `per_class` examples labelled c of the highest score (ties as
  `select_per_class`) — when c is at least `share` (`REGION_SHARE`) of the
  region's examples and `per_class` of them; else it keeps its pick (as
  does a class picked in a region whose class picks elsewhere: a class
  that k-means split in two). This is the consistent relabelling of most
  of a class (Flip noise above one half): its images are mostly labelled
  d, its label is a plurality nowhere, and the vote picks images flipped
  into it out of another class; matched one to one, the region of its own
  images is left to it, d being matched to the region of d's own.

  Returns the sorted positions and `[[class, from region, to region], ...]`
  of the classes moved (from: where most of the pick was)."""
  share = REGION_SHARE if share is None else share
  positions = np.asarray(positions, np.int64)
  regions, labels = np.asarray(regions, np.int64), np.asarray(labels)
  scores, losses = np.asarray(scores), np.asarray(losses)
  count = int(regions.max()) + 1 if len(regions) else 0
  table = np.zeros((num_classes, count))
  np.add.at(table, (labels, regions), 1.0)
  shares = table / np.maximum(table.sum(axis=0, keepdims=True), 1.0)
  classes, matches = optimize.linear_sum_assignment(-table)  # Most labels.
  matched = dict(zip(classes.tolist(), matches.tolist()))
  picks = [positions[labels[positions] == c] for c in range(num_classes)]
  home = [int(np.bincount(regions[p], minlength=count).argmax()) if len(p)
          else None for p in picks]
  owner = {region: c for c, region in matched.items()}
  chosen, moved = [], []
  for c, mine in enumerate(picks):
    to, d = matched.get(c), owner.get(home[c])
    if (to is not None and home[c] != to and d is not None
        and home[d] == home[c] and shares[c, to] >= share
        and table[c, to] >= per_class):
      members = np.flatnonzero((labels == c) & (regions == to))
      mine = _ranked(members, scores, losses)[:per_class]
      moved.append([c, home[c], int(to)])
    chosen.append(mine)
  return (np.sort(np.concatenate(chosen)) if chosen
          else np.zeros(0, np.int64), moved)


def neighbour_agreement(neighbours, voters, labels, rounds=ROUNDS):
  """Per example, the share of its nearest voters that carry its label.

  Args:
    neighbours: `[n, k]` indices into `voters`, each example's k nearest.
    voters: the positions (into `labels`) of the examples that vote.
    labels: `[n]` the given labels.
    rounds: with more than 1, each round weights a voter's vote by its own
      agreement in the round before (a voter whose neighbourhood disputes
      its label counts less).
  """
  labels = np.asarray(labels)
  voters = np.asarray(voters, np.int64)[np.asarray(neighbours)]
  same = labels[voters] == labels[:, None]
  agreement = same.mean(axis=1)
  for _ in range(rounds - 1):
    weight = agreement[voters]
    agreement = (weight * same).sum(axis=1) / np.maximum(weight.sum(axis=1),
                                                         1e-12)
  return agreement


def choose_voters(n, seed, limit=VOTERS):
  """Sorted positions of the examples that vote: all of them, or a seeded
  random `limit` of more."""
  if n <= limit:
    return np.arange(n)
  return np.sort(np.random.default_rng([seed, 13]).choice(n, limit,
                                                          replace=False))


def nearest_voters(features, voters, k):
  """`[n, k]` indices into `voters` of each example's `k` nearest voters by
  cosine similarity, nearest first, itself excluded.

  Args:
    features: a callable, positions (None: every example) → an iterable of
      feature batches in the order of the positions; it is called twice
      (the voters, then every example), so that the features of all the
      examples are never held at once.
    voters: sorted positions of the voters.
    k: neighbours per example (at most the voters less one).
  """
  voters = np.asarray(voters, np.int64)
  keys = np.concatenate([_unit(f) for f in features(voters)])
  k = min(k, len(voters) - 1)
  out, start = [], 0
  for batch in features(None):
    similarity = _unit(batch) @ keys.T
    rows = np.arange(start, start + len(similarity))
    own = np.searchsorted(voters, rows)
    is_voter = (own < len(voters)) & (voters[np.minimum(own, len(voters) - 1)]
                                      == rows)
    similarity[np.flatnonzero(is_voter), own[is_voter]] = -np.inf
    near = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    closeness = np.take_along_axis(similarity, near, axis=1)
    out.append(np.take_along_axis(near, np.argsort(-closeness, axis=1,
                                                   kind="stable"), axis=1))
    start += len(similarity)
  return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def purity(positions, labels, clean_labels):
  """The fraction of `positions` whose label is the clean one."""
  positions = np.asarray(positions, np.int64)
  if not len(positions):
    return None
  return float(np.mean(np.asarray(labels)[positions]
                       == np.asarray(clean_labels)[positions]))


def class_agreement(predicted, labels, positions, num_classes):
  """Per class c, the share of `positions` labelled c predicted as c
  (None for a class with none)."""
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  positions = np.asarray(positions, np.int64)
  out = []
  for c in range(num_classes):
    members = positions[labels[positions] == c]
    out.append(float(np.mean(predicted[members] == c)) if len(members)
               else None)
  return out


def selection_overlap(features, labels, num_classes):
  """Per class c, how much its selected examples look like another class's
  selected ones: over c's selected examples, the mean share of their
  nearest selected examples (cosine, as many as c has selected less one,
  itself excluded) that carry another label (None for a class with fewer
  than two). A class whose picks are really another class's images sits
  among that class's picks (about half); a clean class's picks, however
  few its images, sit among their own (near 0).

  Args:
    features: `[m, d]` features of the selected examples.
    labels: their `m` labels.
  """
  labels = np.asarray(labels, np.int64)
  if len(labels) < 2:
    return [None] * num_classes
  unit = _unit(np.asarray(features, np.float64))
  similarity = unit @ unit.T
  np.fill_diagonal(similarity, -np.inf)
  order = np.argsort(-similarity, axis=1, kind="stable")
  out = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    k = min(len(members) - 1, len(labels) - 1)
    out.append(float(np.mean(labels[order[members, :k]] != c)) if k > 0
               else None)
  return out


def suspects(labelled, selected, disputed=(), disputed_below=DISPUTED_BELOW,
             recognised_from=RECOGNISED_FROM):
  """Classes whose selected meta examples are likely wrong: nearly all of
  their nearest neighbours carry other labels (`disputed`, per class the
  median neighbour agreement of its selected examples, below
  `disputed_below`), unless the warm-up classifier recognises the class's
  labels (`labelled`, the share of the examples labelled with it that it
  predicts as it, at least `recognised_from`: a clean tail class
  outnumbered in its neighbourhood, not a wrong one).

  Measured by `experiments.meta_warning` (docs/results.md): right 13 times
  in 14 over 400 (cell, seed, class) selections on Fashion-MNIST and the
  digits, naming 13 of the 28 unreliable classes; the rule before it
  (either signal on the selected examples disputing them) 19 in 28.
  `selected` (the share of the selected examples the warm-up predicts as
  their label) is recorded but names nothing: it was low for right and
  wrong picks alike on Fashion-MNIST's hard classes."""
  del selected
  named = []
  for c, (known, dis) in enumerate(itertools.zip_longest(labelled,
                                                         disputed)):
    if dis is None:
      continue
    if dis < disputed_below and (known is None or known < recognised_from):
      named.append(c)
  return named


def record_suspects(record):
  """The classes `suspects` names for a recorded selection (its per-class
  agreements and its chosen examples' neighbour agreement): the warning's
  rule of this version, also for a record written by an older one."""
  labels = np.asarray(record["labels"], np.int64)
  disputed = class_median(record["neighbour_agreement"], labels,
                          np.arange(len(labels)),
                          len(record["class_agreement"]))
  return suspects(record["class_agreement"], record["selected_agreement"],
                  disputed)


def class_median(values, labels, positions, num_classes):
  """Per class c, the median of `values` at the `positions` labelled c
  (None for a class with none)."""
  values, labels = np.asarray(values), np.asarray(labels)
  positions = np.asarray(positions, np.int64)
  return [float(np.median(values[positions[labels[positions] == c]]))
          if np.any(labels[positions] == c) else None
          for c in range(num_classes)]


def known_truth(config):
  """Whether the clean labels are known (synthetic noise only)."""
  return config.noise != "none"


def describe(config, split):
  """The meta set in words, for the log."""
  counts = np.bincount(np.asarray(split.meta_labels, np.int64))
  per = (f"{counts.min()} per class" if counts.min() == counts.max()
         else f"{counts.min()}–{counts.max()} per class")
  text = {"folder": "the dataset's own trusted split",
          "random": "drawn at random out of train before any synthetic noise",
          "random_noisy": "drawn at random out of train after the synthetic "
                          "noise (labels as dirty as training)",
          "auto": "chosen automatically from the training labels as given "
                  "(no trusted label; per class, the labels its neighbours "
                  "agree with most after a short warm-up), held out of "
                  "training"}[
                      split.meta_source]
  if split.meta_source == "auto" and config.meta_from is not None:
    text = (f"the images run {config.meta_from} chose automatically "
            "(--meta_from), with this run's labels, held out of training")
  line = f"Meta set: --meta_source={split.meta_source}, {text}; " \
         f"{len(split.meta_labels)} examples, {per}"
  if known_truth(config) and split.meta_purity is not None:
    line += f"; purity {split.meta_purity:.3f} (synthetic noise)"
  return line + "."


def metrics(config, split):
  """The meta set's entries of `metrics.json`: `meta/source`,
  `meta/per_class`, and with synthetic noise `meta/purity`; for `auto`
  the suspect classes (`meta/suspect_classes`) and those whose pick moved
  to a region of their own (`meta/moved_classes`, `rehome`)."""
  counts = np.bincount(np.asarray(split.meta_labels, np.int64))
  out = {"meta/source": split.meta_source,
         "meta/per_class": int(counts.max()) if len(counts) else 0}
  if known_truth(config) and split.meta_purity is not None:
    out["meta/purity"] = split.meta_purity
  if split.meta_source == "auto":
    record = read_record(config.workdir) or {}
    out["meta/warmup_epochs"] = record.get("warmup_epochs")
    out["meta/suspect_classes"] = record.get("suspect_classes", [])
    out["meta/moved_classes"] = [m[0] for m in record.get("moved_classes",
                                                         [])]
  return out


def summarize(config, split, log_dir):
  """TensorBoard `meta/purity` (synthetic noise) and `meta/examples` of a
  meta set fixed for the whole run, at step 0."""
  with tf.summary.create_file_writer(
      os.path.join(log_dir, "meta")).as_default():
    if known_truth(config) and split.meta_purity is not None:
      tf.summary.scalar("meta/purity", split.meta_purity, step=0)
    tf.summary.scalar("meta/examples", len(split.meta_labels), step=0)


def _record_matches(saved, config, split):
  """Whether a saved selection is this run's (same configuration and
  training split)."""
  return (not config.differences(saved.get("config", {}))
          and saved.get("train_examples") == len(split.train_indices))


def read_record(workdir):
  """The selection recorded in `workdir` (None when there is none)."""
  path = os.path.join(workdir, RECORD)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def kept_in(labels, per_class, num_classes):
  """The classes that keep their meta examples in training too: fewer
  than `KEEP_BELOW` × `per_class` other examples."""
  labels = np.asarray(labels)
  return [int(c) for c in range(num_classes)
          if np.sum(labels == c) - per_class < KEEP_BELOW * per_class]


def write_record(folder, record):
  """Writes a selection record to `folder`'s `RECORD` (atomically)."""
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, RECORD)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f)
  os.replace(path + ".tmp", path)


def _steps_per_epoch(config, split):
  """`run.steps_per_epoch` (which imports this module)."""
  return config.steps_per_epoch or len(split.train_indices) // config.batch_size


def _stream(config, source, split, start_step, seed):
  """`trainer.train_stream` (which imports this module) with its seed."""
  config, _ = config.resolved(len(split.meta_indices))  # An adaptive default.
  return pipeline.train_and_meta(
      source, split, config.batch_size, config.meta_batch_size, seed,
      start_step=start_step, augment=config.augment,
      policy=config.augment_policy, cutout=config.cutout,
      gridmask=config.gridmask,
      meta_stream=config.method in config_lib.ADVISOR_MODES)


def _features(model, source, split, batch_size):
  """`nearest_voters`' feature reader: the warm-up backbone's output on
  training examples, without augmentation."""
  indices = np.asarray(split.train_indices)
  labels = np.asarray(split.train_labels)

  def read(positions):
    positions = np.arange(len(labels)) if positions is None else positions
    data = pipeline.unaugmented_train(source, indices[positions],
                                      labels[positions]).batch(batch_size)
    for x, _ in data:
      yield np.asarray(model.backbone(x, training=False))
  return read


def warmup(config, source, split, epochs):
  """A `WARMUP_METHOD` warm-up of `config` for `epochs` epochs on the
  whole training split. Returns the per-example losses of the given labels
  (without augmentation; their exponential moving average over the epochs,
  `LOSS_MOMENTUM`), the last epoch's predicted classes, and each example's
  `NEIGHBOURS` nearest voters (`choose_voters`) in the final model's
  feature space, with the voters, (`REGIONS`) each example's region in
  that space (`feature_regions`, as many as classes; else None), and the
  feature reader (`_features`: positions → feature batches)."""
  ce = dataclasses.replace(config, method=WARMUP_METHOD, virtual_scope="all",
                           meta_update_every=1, advice="exact",
                           sample_selection="none", selection_warmup=None)
  n = len(split.train_labels)
  steps = _steps_per_epoch(ce, split)
  keras.utils.set_random_seed(config.seed + 1_000_003)
  model = builder.build_model(ce, source.image_shape, source.num_classes,
                              class_counts=split.class_counts(
                                  source.num_classes),
                              steps_per_epoch=steps)
  for epoch in range(epochs):
    model.fit(_stream(ce, source, split, epoch * steps, config.seed),
              epochs=epoch + 1, initial_epoch=epoch, steps_per_epoch=steps,
              verbose=0, shuffle=False)
    adv = advice.advise(model, source, split,
                        batch_size=config.eval_batch_size)
    losses = np.asarray(adv.loss, np.float64)
    ema = losses if epoch == 0 else (LOSS_MOMENTUM * ema
                                     + (1 - LOSS_MOMENTUM) * losses)
  voters = choose_voters(n, config.seed)
  features = _features(model, source, split, config.eval_batch_size)
  neighbours = nearest_voters(features, voters, NEIGHBOURS)
  regions = (feature_regions(features, voters, source.num_classes,
                             config.seed) if REGIONS else None)
  keras.utils.set_random_seed(config.seed)  # As if nothing had been drawn.
  return (ema, np.asarray(adv.predicted), neighbours, voters, regions,
          features)


def select(config, source, split):
  """`auto`'s selection for a run (see the module docstring): a record
  `{positions, indices, labels, purity, suspect_classes, ...}`."""
  k = per_class(config, "auto")
  epochs = warmup_epochs(_steps_per_epoch(config, split))
  start = time.time()
  # A stage outside fit(): said up front and when done, so that it is no
  # silent wait (the run's steps are timed once training starts).
  logging.warning("--meta_source=auto: choosing %d meta image(s) per class "
                  "from %d training images: a warm-up of %d epoch(s) of %d "
                  "steps, then a neighbour vote.", k,
                  len(split.train_labels), epochs,
                  _steps_per_epoch(config, split))
  losses, predicted, neighbours, voters, regions, features = warmup(
      config, source, split, epochs)
  labels = np.asarray(split.train_labels)
  agreement = neighbour_agreement(neighbours, voters, labels)
  lobed = (lobed_classes(neighbours, voters, labels, agreement,
                        source.num_classes) if LOBE_CHECK else [])
  positions = (spread_per_class(agreement, losses, labels,
                                k, source.num_classes,
                                neighbours, voters, keep=lobed)
               if SPREAD > 1 else
               select_per_class(agreement, losses, labels,
                                k, source.num_classes))
  moved = []
  if regions is not None:
    positions, moved = rehome(positions, regions, agreement, losses, labels,
                              k, source.num_classes)
  logging.warning("--meta_source=auto: meta set chosen in %.0f s.",
                  time.time() - start)
  everyone = np.arange(len(labels))
  labelled = class_agreement(predicted, labels, everyone, source.num_classes)
  chosen = class_agreement(predicted, labels, positions, source.num_classes)
  disputed = class_median(agreement, labels, positions, source.num_classes)
  overlap = selection_overlap(
      np.concatenate(list(features(np.asarray(positions, np.int64))))
      if len(positions) else np.zeros((0, 1)), labels[positions],
      source.num_classes)
  return {
      "source": "auto", "per_class": k,
      "warmup_epochs": epochs, "loss_momentum": LOSS_MOMENTUM,
      "rule": "per class, the highest agreement of the labels of the "
              "nearest neighbours in the feature space of a balanced-softmax "
              "warm-up (ties: the smaller loss)"
              + (f", spread over the neighbourhoods of the {SPREAD} × k best "
                 f"of agreement >= {CONFIRMED}" if SPREAD > 1 else "")
              + ("; a class picked outside its region of the feature space "
                 "(matched one to one) moves into it" if regions is not None
                 else ""),
      "neighbours": int(neighbours.shape[1]), "rounds": ROUNDS,
      "spread": SPREAD, "confirmed": CONFIRMED, "lobed_classes": lobed,
      "regions": (int(regions.max()) + 1 if regions is not None
                  and len(regions) else 0),
      "region_share": REGION_SHARE if regions is not None else None,
      "moved_classes": moved,
      "voters": int(len(voters)),
      "positions": [int(p) for p in positions],
      "indices": [int(i) for i in np.asarray(split.train_indices)[positions]],
      "labels": [int(y) for y in labels[positions]],
      "neighbour_agreement": [round(float(a), 4)
                              for a in agreement[positions]],
      "purity": (purity(positions, labels, split.train_clean_labels)
                 if known_truth(config) else None),
      "class_agreement": labelled, "selected_agreement": chosen,
      "selected_neighbour_agreement": disputed,
      "selected_overlap": [None if v is None else round(v, 4)
                           for v in overlap],
      "suspect_classes": suspects(labelled, chosen, disputed),
      "kept_in": kept_in(labels, k, source.num_classes),
      "train_examples": int(len(labels)),
      "config": json.loads(config.to_json())}


def held_out(split, positions, kept_in=()):
  """`split` with the examples at `positions` as its meta set, taken out of
  its training set (but those of the classes `kept_in`)."""
  positions = np.asarray(positions, np.int64)
  labels = np.asarray(split.train_labels)
  out = positions[~np.isin(labels[positions], list(kept_in))]
  rest = np.setdiff1d(np.arange(len(split.train_indices)), out)
  take = lambda a, p: np.asarray(a)[p]  # noqa: E731
  return dataclasses.replace(
      split, meta_indices=take(split.train_indices, positions),
      meta_labels=take(split.train_labels, positions),
      meta_clean_labels=take(split.train_clean_labels, positions),
      train_indices=take(split.train_indices, rest),
      train_labels=take(split.train_labels, rest),
      train_clean_labels=take(split.train_clean_labels, rest))


def auto_split(config, split, workdir):
  """The split an `auto` run in `workdir` trained on (its recorded
  selection held out); `split` itself when nothing is recorded."""
  record = read_record(workdir) if split.meta_source == "auto" else None
  if record is None or record.get("train_examples") != len(
      split.train_indices):
    return split
  return held_out(split, record["positions"], record.get("kept_in", []))


def inherited(config, split, num_classes):
  """The selection recorded in `config.meta_from`, as this run's record:
  the same images (by dataset index) at their positions in this run's
  training split, with this run's labels of them (`--corrections`
  applied); an image this run no longer has (dropped) is left out."""
  record = read_record(config.meta_from)
  if record is None or "indices" not in record:
    raise ValueError(f"--meta_from={config.meta_from}: no automatic meta set "
                     f"recorded there ({RECORD}); give the workdir of a run "
                     "with --meta_source=auto.")
  where = {int(i): p for p, i in enumerate(split.train_indices)}
  kept = sorted((where[int(i)], int(y))
                for i, y in zip(record["indices"], record["labels"])
                if int(i) in where)
  if not kept:
    raise ValueError(f"--meta_from={config.meta_from}: none of its meta "
                     "images is in this run's training set (another data "
                     "set or split?).")
  missing = len(record["indices"]) - len(kept)
  if missing:
    logging.warning("--meta_from=%s: %d of its %d meta images are not in "
                    "this run's training set (dropped) and are left out.",
                    config.meta_from, missing, len(record["indices"]))
  positions = np.array([p for p, _ in kept], np.int64)
  labels = np.asarray(split.train_labels)
  return dict(
      record, positions=[int(p) for p in positions],
      indices=[int(i) for i in np.asarray(split.train_indices)[positions]],
      labels=[int(y) for y in labels[positions]],
      relabelled=int(np.sum(labels[positions] != [y for _, y in kept])),
      purity=(purity(positions, labels, split.train_clean_labels)
              if known_truth(config) else None),
      kept_in=kept_in(labels, record.get("per_class",
                                         per_class(config, "auto")),
                      num_classes),
      train_examples=int(len(labels)), inherited_from=config.meta_from,
      config=json.loads(config.to_json()))


def prepare(config, source, split, out):
  """The split a run trains on. For `auto`: the selection recorded in the
  workdir when it is this run's (a resumed run), else a new one (written to
  `out` before training starts), held out of training; logged. Other
  sources: `split` as it is, logged."""
  # Where the run chose the source itself (unset --meta_source), it says
  # so at the default verbosity.
  say = logging.warning if config.meta_source is None else logging.info
  if split.meta_source != "auto":
    if config.meta_from is not None:
      logging.warning("--meta_from=%s: the meta set is %s's, not chosen "
                      "from the labels, so it is the same without the flag.",
                      config.meta_from, split.meta_source)
    say("%s", describe(config, split))
    return split
  record = read_record(config.workdir)
  if record is None or not _record_matches(record, config, split):
    record = (inherited(config, split, source.num_classes)
              if config.meta_from is not None
              else select(config, source, split))
    write_record(out, record)
  chosen = held_out(split, record["positions"], record.get("kept_in", []))
  say("%s", describe(config, chosen))
  if record.get("inherited_from"):
    logging.warning("--meta_from=%s: %d of its %d meta images relabelled "
                    "since that run (--corrections).", record["inherited_from"],
                    record.get("relabelled", 0), len(record["positions"]))
  if record.get("moved_classes"):
    logging.warning(
        "--meta_source=auto: class(es) %s: their best-agreeing images lay "
        "where another class's labels are the majority, so their meta "
        "examples were taken from the region of the feature space left to "
        "them instead; most images of such a class may carry another "
        "label (check them: advisor-analyze).",
        ", ".join(str(source.class_names[m[0]])
                  for m in record["moved_classes"]))
  if record["suspect_classes"]:
    names = source.class_names
    agreement = record["class_agreement"]
    logging.warning(
        "--meta_source=auto: the automatic selection is unreliable for "
        "class(es) %s: nearly all of the selected images' nearest "
        "neighbours carry other labels, so their labels may be wrong (the "
        "share of each class's labelled images the warm-up predicts as it: "
        "%s). "
        "Check these classes' labels (advisor-analyze), or give a trusted "
        "meta/ folder (--meta_source=folder).",
        ", ".join(str(names[c]) for c in record["suspect_classes"]),
        ", ".join(f"{names[c]}: {agreement[c]:.2f}"
                  for c in record["suspect_classes"]
                  if agreement[c] is not None))
  return chosen

