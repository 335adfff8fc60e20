"""Synthetic label noise as explicit, seeded transition matrices.

`T[i, j]` is the probability that an example of clean class i is given label
j. Each builder returns a row-stochastic `(C, C)` matrix; `corrupt` samples
noisy labels from it and returns them with the clean ones, so that runs can
report the realised noise rate and how noisy versus clean examples are treated.
"""

from __future__ import annotations

import numpy as np

NOISE_TYPES = ("none", "flip", "flip2", "flip3", "symmetric", "instance")
# The spread of the per-example flip rate of instance-dependent noise.
INSTANCE_RATE_STD = 0.1
FLIP_TARGET_RULES = ("random", "similar")

# CIFAR-100's fine labels (tfds / Krizhevsky order) and its 20 superclasses.
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl "
    "boy bridge bus butterfly camel can castle caterpillar cattle chair "
    "chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree "
    "motorcycle mountain mouse mushroom oak_tree orange orchid otter "
    "palm_tree pear pickup_truck pine_tree plain plate poppy porcupine "
    "possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout "
    "tulip turtle wardrobe whale willow_tree wolf woman worm").split()
CIFAR100_SUPERCLASSES = (
    "beaver dolphin otter seal whale",                 # aquatic mammals
    "aquarium_fish flatfish ray shark trout",          # fish
    "orchid poppy rose sunflower tulip",               # flowers
    "bottle bowl can cup plate",                       # food containers
    "apple mushroom orange pear sweet_pepper",         # fruit and vegetables
    "clock keyboard lamp telephone television",        # household electrical
    "bed chair couch table wardrobe",                  # household furniture
    "bee beetle butterfly caterpillar cockroach",      # insects
    "bear leopard lion tiger wolf",                    # large carnivores
    "bridge castle house road skyscraper",             # large man-made outdoor
    "cloud forest mountain plain sea",                 # large natural outdoor
    "camel cattle chimpanzee elephant kangaroo",       # large omni/herbivores
    "fox porcupine possum raccoon skunk",              # medium-sized mammals
    "crab lobster snail spider worm",                  # non-insect invertebrates
    "baby boy girl man woman",                         # people
    "crocodile dinosaur lizard snake turtle",          # reptiles
    "hamster mouse rabbit shrew squirrel",             # small mammals
    "maple_tree oak_tree palm_tree pine_tree willow_tree",  # trees
    "bicycle bus motorcycle pickup_truck train",       # vehicles 1
    "lawn_mower rocket streetcar tank tractor",        # vehicles 2
)


def _superclass_table():
  """Each CIFAR-100 class → the other four of its superclass (the next ones
  in the group, cyclically, so flip targets spread over the group)."""
  index = {name: i for i, name in enumerate(CIFAR100_CLASSES)}
  table = {}
  for group in CIFAR100_SUPERCLASSES:
    members = [index[name] for name in group.split()]
    for k, c in enumerate(members):
      table[c] = tuple(members[(k + j) % 5] for j in range(1, 5))
  return table


# Look-alike classes per dataset, most similar first. A class absent from a
# table keeps its label under `similar` flips (as in DivideMix / ieg, where
# only the listed CIFAR-10 classes flip).
SIMILAR_CLASSES = {
    "digits": {
        0: (6, 8, 9), 1: (7, 4, 2), 2: (7, 3, 1), 3: (8, 5, 9),
        4: (9, 1, 7), 5: (6, 3, 8), 6: (5, 0, 8), 7: (1, 2, 9),
        8: (3, 9, 0), 9: (4, 8, 7),
    },
    "cifar10": {  # labels: 0 airplane 1 automobile 2 bird 3 cat 4 deer
        9: (1,),  # truck → automobile
        2: (0,),  # bird → airplane
        4: (7,),  # deer → horse
        3: (5,),  # cat → dog
        5: (3,),  # dog → cat
    },
    "cifar100": _superclass_table(),  # the other classes of the superclass
    "fashion_mnist": {  # 0 T-shirt/top 1 Trouser 2 Pullover 3 Dress 4 Coat
        0: (6, 3, 2), 1: (3, 0, 4), 2: (4, 6, 0), 3: (0, 4, 6),
        4: (2, 6, 3), 5: (7, 9, 8), 6: (0, 2, 4), 7: (5, 9, 8),
        8: (2, 4, 0), 9: (7, 5, 8),  # 5 Sandal 6 Shirt 7 Sneaker 8 Bag 9 Boot
    },
}


def _num_targets(noise):
  return {"flip": 1, "flip2": 2, "flip3": 3}[noise]


def flip_targets(num_classes, num_targets, rule, rng, similar=None):
  """Per class, the classes its labels flip to.

  `random` draws `num_targets` distinct other classes per class from `rng`
  (Meta-Weight-Net's rule); `similar` takes the first `num_targets` entries of
  the look-alike table `similar`.
  """
  if rule == "random":
    if num_targets > num_classes - 1:
      raise ValueError(f"flip{num_targets} needs at least {num_targets + 1} "
                       f"classes, the data has {num_classes}.")
    targets = {}
    for c in range(num_classes):
      others = np.delete(np.arange(num_classes), c)
      targets[c] = tuple(int(t) for t in
                         rng.choice(others, size=num_targets, replace=False))
    return targets
  if rule == "similar":
    if similar is None:
      raise ValueError("--flip_targets=similar needs a look-alike table for "
                       f"this dataset; tables exist for {sorted(SIMILAR_CLASSES)}."
                       " Use --flip_targets=random.")
    targets = {}
    for c, row in similar.items():
      if len(row) < num_targets:
        raise ValueError(f"flip{num_targets} with --flip_targets=similar needs "
                         f"{num_targets} look-alikes of class {c}, the table "
                         f"lists {len(row)}.")
      targets[c] = tuple(row[:num_targets])
    return targets
  raise ValueError(f"Unknown flip target rule {rule!r}; allowed: "
                   f"{', '.join(FLIP_TARGET_RULES)}.")


def transition_matrix(noise, rate, num_classes, rng, rule="random",
                      similar=None):
  """The `(C, C)` transition matrix of a noise model at rate `rate`.

  Flip moves a label to its class's target with probability `rate`; FlipK
  spreads `rate` evenly over K targets; symmetric spreads it over all other
  classes.
  """
  if noise not in NOISE_TYPES:
    raise ValueError(f"Unknown noise {noise!r}; allowed: {', '.join(NOISE_TYPES)}.")
  if noise == "instance":
    raise ValueError("Instance-dependent noise has no class-level transition "
                     "matrix: draw it with `instance_labels`.")
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"Noise rate must be in [0, 1), got {rate}.")
  t = np.eye(num_classes)
  if noise == "none" or rate == 0.0:
    return t
  if noise == "symmetric":
    t = np.full((num_classes, num_classes), rate / (num_classes - 1))
    np.fill_diagonal(t, 1.0 - rate)
    return t
  k = _num_targets(noise)
  for c, row in flip_targets(num_classes, k, rule, rng, similar).items():
    t[c, c] = 1.0 - rate
    for target in row:
      t[c, target] += rate / k
  return t


def corrupt(labels, matrix, rng):
  """Samples noisy labels; returns `(noisy, clean)` int64 arrays."""
  clean = np.asarray(labels, dtype=np.int64)
  cdf = np.cumsum(matrix[clean], axis=1)
  cdf[:, -1] = 1.0
  u = rng.random(len(clean))[:, None]
  noisy = (u >= cdf).sum(axis=1).astype(np.int64)
  return noisy, clean


def instance_labels(batches, labels, rate, num_classes, rng,
                    std=INSTANCE_RATE_STD):
  """Instance-dependent noise after Xia et al. 2020 ("Part-dependent label
  noise", NeurIPS; the generator of their code and of the papers that
  compare with it, e.g. CausalNL): returns `(noisy, clean)` int64 arrays.

  Per example a flip rate q ~ N(rate, std²) truncated to [0, 1]; per class
  y a random projection W_y (features × classes, standard normal); the
  example keeps its label with probability 1 − q and moves to wrong class
  k with probability q · softmax_k(x · W_y) over the wrong classes, so
  which class an image is given depends on the image itself.

  Args:
    batches: iterable of float arrays [b, ...] (the examples' images, as
      the model sees them, in the order of `labels`); streamed, so the
      pixels never need to be in memory at once.
    labels: the clean labels [N].
    rate: the mean flip rate τ, in [0, 1).
    num_classes: C.
    rng: `np.random.Generator`; draws q, W and the labels (one seed).
    std: the spread of q (0.1 in the paper).
  """
  from scipy import stats
  clean = np.asarray(labels, dtype=np.int64)
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"Noise rate must be in [0, 1), got {rate}.")
  if rate == 0.0 or not len(clean):
    return clean.copy(), clean
  q = stats.truncnorm.rvs((0.0 - rate) / std, (1.0 - rate) / std, loc=rate,
                          scale=std, size=len(clean), random_state=rng)
  projection, probs, at = None, [], 0
  for batch in batches:
    x = np.asarray(batch, np.float64).reshape(len(batch), -1)
    if projection is None:  # W_y for every y, drawn once per data set.
      projection = rng.standard_normal((num_classes, x.shape[1], num_classes))
      flat = projection.transpose(1, 0, 2).reshape(x.shape[1], -1)
    y = clean[at:at + len(x)]
    scores = (x @ flat).reshape(len(x), num_classes, num_classes)[
        np.arange(len(x)), y]  # x · W_y.
    scores[np.arange(len(x)), y] = -np.inf  # Only the wrong classes.
    scores -= scores.max(axis=1, keepdims=True)
    p = np.exp(scores)
    p *= (q[at:at + len(x)] / p.sum(axis=1))[:, None]
    p[np.arange(len(x)), y] = 1.0 - q[at:at + len(x)]
    probs.append(p)
    at += len(x)
  if at != len(clean):
    raise ValueError(f"Instance noise: {at} images for {len(clean)} labels.")
  noisy, _ = corrupt(np.arange(len(clean)), np.concatenate(probs), rng)
  return noisy, clean


def empirical_transition(clean, noisy, num_classes):
  """The realised `(C, C)` transition of a draw: row i is where class i's
  labels went (a class absent keeps its identity row)."""
  t = np.zeros((num_classes, num_classes))
  np.add.at(t, (np.asarray(clean), np.asarray(noisy)), 1.0)
  rows = t.sum(axis=1, keepdims=True)
  return np.where(rows > 0, t / np.maximum(rows, 1.0), np.eye(num_classes))
