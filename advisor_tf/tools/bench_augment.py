r"""Throughput of the training image stream with each augmentation recipe.

  python -m advisor_tf.tools.bench_augment [--batch_size=128] [--batches=40] \
      [--repeats=3]

Streams generated CIFAR-sized images (uint8, 32×32×3, CIFAR normalisation)
through `pipeline.train_and_meta` — the real training input — with no
augmentation, the standard pad-crop-flip, and pad-crop-flip + AutoAugment +
Cutout 16, timing the recipes round-robin in one process (these machines are
noisy) and printing images/s (median of the repeats) and each recipe's cost
relative to pad-crop-flip, as JSON.
"""

import json
import os
import time

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from advisor_tf.data import augment  # noqa: E402
from advisor_tf.data import pipeline  # noqa: E402
from advisor_tf.data import protocols  # noqa: E402
from advisor_tf.data import sources  # noqa: E402

_BATCH = flags.DEFINE_integer("batch_size", 128, "Train batch size.",
                              lower_bound=1)
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches timed per repeat.",
                                lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Round-robin repeats.",
                                lower_bound=1)

RECIPES = {"none": dict(augment=False),
           "pad_crop_flip": dict(augment=True),
           "autoaugment_cutout": dict(augment=True, autoaugment=True,
                                      cutout=16)}


def _source(count):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(count) % 10
  return sources.array_source(
      "cifar10", {"train": (images, labels), "test": (images[:10],
                                                       labels[:10])},
      class_names=[str(c) for c in range(10)],
      mean=sources.CIFAR_MEAN["cifar10"], std=sources.CIFAR_STD["cifar10"],
      train_transform=augment.pad_crop_flip())


def run(batch_size, batches, repeats):
  source = _source(batch_size * batches + 100)
  split = protocols.apply(protocols.Protocol(meta_per_class=10),
                          source.labels["train"], 10, seed=0)
  streams = {name: pipeline.train_and_meta(source, split, batch_size, 100, 0,
                                           **kwargs)
             for name, kwargs in RECIPES.items()}
  for stream in streams.values():  # Trace and warm up.
    for _ in stream.take(2):
      pass
  seconds = {name: [] for name in streams}
  for _ in range(repeats):
    for name, stream in streams.items():
      start = time.perf_counter()
      for _ in stream.take(batches):
        pass
      seconds[name].append(time.perf_counter() - start)
  rate = {name: batch_size * batches / float(np.median(s))
          for name, s in seconds.items()}
  return {"images_per_s": {k: round(v) for k, v in rate.items()},
          "time_vs_pad_crop_flip": {
              k: round(rate["pad_crop_flip"] / v, 2) for k, v in rate.items()},
          "batch_size": batch_size, "batches": batches, "repeats": repeats,
          "cpu_count": os.cpu_count()}


def main(argv):
  del argv
  cli.quiet_logs()
  print(json.dumps(run(_BATCH.value, _BATCHES.value, _REPEATS.value),
                   indent=2))


GROUPS = {"timing": ["batch_size", "batches", "repeats"]}

if __name__ == "__main__":
  cli.run(main, __doc__, GROUPS)
