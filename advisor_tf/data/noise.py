"""Synthetic label noise as explicit, seeded transition matrices.

`T[i, j]` is the probability that an example of clean class i is given label
j. Each builder returns a row-stochastic `(C, C)` matrix; `corrupt` samples
noisy labels from it and returns them with the clean ones, so that runs can
report the realised noise rate and how noisy versus clean examples are treated.
"""

from __future__ import annotations

import numpy as np

NOISE_TYPES = ("none", "flip", "flip2", "flip3", "symmetric")
FLIP_TARGET_RULES = ("random", "similar")

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
