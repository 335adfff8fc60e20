"""Dataset protocols on label arrays: meta split, long tail, label noise.

Pure numpy functions of one seeded `np.random.Generator`, so one seed drives
every split. They work on indices into a source's training split, so they
apply unchanged to in-memory arrays, tfds datasets or files on disk.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from advisor_tf.data import noise as noise_lib


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How to turn a clean training split into the experiment's data."""
  noise: str = "none"
  noise_rate: float = 0.0
  flip_targets: str = "random"
  imbalance_factor: float = 1.0
  # A seeded, class-stratified subset of the training split, drawn first
  # (None: all of it).
  train_examples: int | None = None
  meta_per_class: int = 10  # 0: all of a trusted split (meta_labels).
  # Where a meta set taken out of train comes from (`META_DRAWS`): `random`
  # draws it before the synthetic noise (clean labels, the thesis'
  # protocol), `random_noisy` after it (the labels the model gets),
  # `auto` starts from the same draw as `random_noisy` but keeps it in the
  # training set (`advisor_tf.meta_select` chooses the real one and takes
  # it out before training).
  meta_source: str = "random"


# How `apply` takes a meta set out of the training split itself.
META_DRAWS = ("random", "random_noisy", "auto")


@dataclasses.dataclass(frozen=True)
class Split:
  """Indices into the source's training split, and the labels to use."""
  train_indices: np.ndarray
  train_labels: np.ndarray        # possibly noisy: what the model is given
  train_clean_labels: np.ndarray  # the truth, kept for reports
  meta_indices: np.ndarray
  meta_labels: np.ndarray
  transition: np.ndarray
  meta_from: str = "train"        # the source split meta_indices refer to
  meta_clean_labels: np.ndarray | None = None  # the truth of the meta set
  meta_source: str = "random"     # how the meta set was chosen

  @property
  def meta_purity(self):
    """The fraction of meta labels that are right (None where unknown)."""
    if self.meta_clean_labels is None or not len(self.meta_labels):
      return None
    return float(np.mean(np.asarray(self.meta_labels)
                         == np.asarray(self.meta_clean_labels)))

  @property
  def noise_rate(self):
    """The realised fraction of wrong training labels."""
    if len(self.train_labels) == 0:
      return 0.0
    return float(np.mean(self.train_labels != self.train_clean_labels))

  def class_counts(self, num_classes):
    return np.bincount(self.train_labels, minlength=num_classes)


def meta_split(labels, per_class, rng, num_classes):
  """Takes `per_class` examples of each class out; returns (meta, rest) indices."""
  labels = np.asarray(labels)
  meta = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) <= per_class:
      raise ValueError(f"Class {c} has {len(members)} training examples; a meta "
                       f"set of {per_class} per class (--meta_per_class) must "
                       "leave at least one for training.")
    meta.append(rng.choice(members, size=per_class, replace=False))
  meta = np.sort(np.concatenate(meta)) if meta else np.zeros(0, np.int64)
  rest = np.setdiff1d(np.arange(len(labels)), meta)
  return meta, rest


def draw_per_class(labels, per_class, rng, num_classes):
  """Sorted positions of `per_class` examples of each class drawn at
  random (all of a class with fewer); every class needs one."""
  labels = np.asarray(labels)
  largest = int(np.bincount(labels, minlength=num_classes).max()) if len(
      labels) else 0
  if per_class >= largest:
    raise ValueError(f"--meta_per_class={per_class} leaves no class any "
                     f"training example (the largest has {largest}); lower "
                     "it.")
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if not len(members):
      raise ValueError(f"Class {c} has no training example; a meta set needs "
                       "examples of every class (--meta_source).")
    chosen.append(rng.choice(members, size=min(per_class, len(members)),
                             replace=False))
  return np.sort(np.concatenate(chosen))


def pick_per_class(labels, per_class, rng, num_classes, where):
  """`per_class` indices of each class from a separate trusted split
  (`per_class=0`: all of it)."""
  labels = np.asarray(labels)
  if per_class == 0:
    chosen = np.arange(len(labels))
  else:
    chosen = []
    for c in range(num_classes):
      members = np.flatnonzero(labels == c)
      if len(members) < per_class:
        hint = ("lower --meta_per_class" if where == "train" else
                "use --meta_per_class=0 to take all of it, or lower it")
        raise ValueError(f"Class {c} has {len(members)} examples in the "
                         f"{where} split; --meta_per_class={per_class} needs "
                         f"{per_class}: {hint}.")
      chosen.append(rng.choice(members, size=per_class, replace=False))
    chosen = np.sort(np.concatenate(chosen))
  absent = sorted(set(range(num_classes)) - set(labels[chosen].tolist()))
  if absent:
    raise ValueError(f"Class {absent[0]} is absent from the meta set (the "
                     f"{where} split); every class needs trusted examples.")
  return chosen


def stratified_subset(labels, size, rng, num_classes):
  """Sorted positions of `size` examples, each class's share as in
  `labels` (the largest remainders rounded up), drawn at random."""
  labels = np.asarray(labels)
  if size >= len(labels):
    return np.arange(len(labels))
  counts = np.bincount(labels, minlength=num_classes)
  exact = counts * size / len(labels)
  take = np.floor(exact).astype(np.int64)
  extra = np.argsort(-(exact - take), kind="stable")[:size - int(take.sum())]
  take[extra] += 1
  chosen = [rng.choice(np.flatnonzero(labels == c), size=take[c],
                       replace=False) for c in range(num_classes)]
  return np.sort(np.concatenate(chosen))


def long_tail_counts(available, imbalance_factor):
  """Per-class counts int(n_max · (1/IF)^(c/(C−1))), capped by what exists."""
  available = np.asarray(available)
  if imbalance_factor < 1:
    raise ValueError(f"Imbalance factor must be >= 1, got {imbalance_factor}.")
  num_classes = len(available)
  n_max = int(available.max())
  exponents = np.arange(num_classes) / max(num_classes - 1, 1)
  wanted = (n_max * (1.0 / imbalance_factor) ** exponents).astype(np.int64)
  return np.minimum(wanted, available)


def long_tail(indices, labels, imbalance_factor, rng, num_classes):
  """Keeps `long_tail_counts` examples of each class, chosen at random."""
  indices = np.asarray(indices)
  sub_labels = np.asarray(labels)[indices]
  available = np.bincount(sub_labels, minlength=num_classes)
  counts = long_tail_counts(available, imbalance_factor)
  keep = [rng.choice(indices[sub_labels == c], size=counts[c], replace=False)
          for c in range(num_classes)]
  return np.sort(np.concatenate(keep))


def apply(protocol, labels, num_classes, seed, similar=None,
          meta_labels=None, meta_from="train", images=None):
  """Meta split → long tail → noise, all from one seed. Returns a `Split`.

  With `meta_labels` (a source's own trusted split, named `meta_from`), the
  meta set is picked from it and the whole training split stays for training.
  Otherwise `protocol.meta_source` says when the meta set is drawn out of
  train: `random` before the long tail and the noise (its labels are the
  clean ones: the thesis' protocol; on a user's own folder, their labels as
  given), `random_noisy` after them (the labels the model is given, so as
  dirty as the training set), and `auto` like `random_noisy` but kept in the
  training set (a placeholder: `advisor_tf.meta_select` chooses the meta
  set a run trains with).

  `images(indices)` (an iterable of image batches of the training split at
  `indices`, in order) is what instance-dependent noise (`noise=instance`)
  reads; the other noises depend on the label alone.
  """
  labels = np.asarray(labels, dtype=np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"Training labels must lie in 0..{num_classes - 1}; found "
                     f"{labels.min()}..{labels.max()}.")
  rng = np.random.default_rng(seed)
  pool = np.arange(len(labels))
  if protocol.train_examples:
    pool = stratified_subset(labels, protocol.train_examples, rng,
                             num_classes)
  after_noise = meta_labels is None and protocol.meta_source != "random"
  if meta_labels is None:
    if protocol.meta_source not in META_DRAWS:
      raise ValueError(f"--meta_source={protocol.meta_source} takes no meta "
                       "set out of train; choose one of: "
                       f"{', '.join(META_DRAWS)}.")
    if protocol.meta_per_class < 1:
      raise ValueError("--meta_per_class=0 means all of the dataset's own "
                       "trusted split (a meta/ folder), and this data has "
                       "none: drop --meta_per_class (the run then draws 10 "
                       "per class, as --meta_source says) or set it >= 1.")
  if after_noise:
    rest = pool
  elif meta_labels is None:
    meta, rest = meta_split(labels[pool], protocol.meta_per_class, rng,
                            num_classes)
    meta, rest = pool[meta], pool[rest]
    meta_labels_out = labels[meta]
  else:
    meta_labels = np.asarray(meta_labels, dtype=np.int64)
    meta = pick_per_class(meta_labels, protocol.meta_per_class, rng,
                          num_classes, meta_from)
    meta_labels_out = meta_labels[meta]
    rest = pool
  if protocol.imbalance_factor > 1:
    rest = long_tail(rest, labels, protocol.imbalance_factor, rng, num_classes)
  rest = rng.permutation(rest)
  if protocol.noise == "instance" and protocol.noise_rate > 0:
    if images is None:
      raise ValueError("--noise=instance depends on the images: pass "
                       "`images` (the training images by index).")
    noisy, clean = noise_lib.instance_labels(
        images(rest), labels[rest], protocol.noise_rate, num_classes, rng)
    matrix = noise_lib.empirical_transition(clean, noisy, num_classes)
  else:
    matrix = noise_lib.transition_matrix(
        "none" if protocol.noise == "instance" else protocol.noise,
        protocol.noise_rate, num_classes, rng, rule=protocol.flip_targets,
        similar=similar)
    noisy, clean = noise_lib.corrupt(labels[rest], matrix, rng)
  meta_clean = (meta_labels_out if meta_labels is None and not after_noise
                else None)
  if after_noise:  # Drawn from the labels the model is given.
    if protocol.meta_source == "auto":  # Kept in train: a small class whole.
      chosen = draw_per_class(noisy, protocol.meta_per_class, rng,
                              num_classes)
    else:
      chosen, kept = meta_split(noisy, protocol.meta_per_class, rng,
                                num_classes)
    meta, meta_labels_out, meta_clean = rest[chosen], noisy[chosen], clean[
        chosen]
    if protocol.meta_source == "random_noisy":  # Taken out, as `random`.
      rest, noisy, clean = rest[kept], noisy[kept], clean[kept]
  return Split(train_indices=rest, train_labels=noisy, train_clean_labels=clean,
               meta_indices=meta, meta_labels=meta_labels_out,
               transition=matrix, meta_from=meta_from,
               meta_clean_labels=meta_clean,
               meta_source=(protocol.meta_source if meta_labels is None
                            else "folder"))
