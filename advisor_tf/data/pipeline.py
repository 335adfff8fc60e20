"""tf.data pipelines: the train stream zipped with an endless meta stream."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def labelled(source, split, indices, labels):
  """`(image, label)` pairs for the given indices of a source split."""
  return tf.data.Dataset.zip(
      source.images(split, indices),
      tf.data.Dataset.from_tensor_slices(tf.constant(labels, tf.int64)))


def train_and_meta(source, split, batch_size, meta_batch_size, seed,
                   augment=None):
  """`((x, y), (x_meta, y_meta))` batches for `AdvisorModel.fit`.

  The train stream is reshuffled every epoch and drops its last partial batch
  (static shapes: one trace of the train step). The meta stream is reshuffled
  on every pass and repeats forever, so each train batch meets a fresh meta
  batch; it is never augmented (it is the trusted reference).
  """
  n = len(split.train_indices)
  if batch_size > n:
    raise ValueError(f"--batch_size={batch_size} is larger than the training "
                     f"set ({n} examples).")
  train = labelled(source, "train", split.train_indices, split.train_labels)
  train = train.shuffle(n, seed=seed, reshuffle_each_iteration=True)
  if augment is not None:
    train = train.map(lambda x, y: (augment(x), y), num_parallel_calls=AUTOTUNE)
  train = train.batch(batch_size, drop_remainder=True)
  meta = labelled(source, "train", split.meta_indices, split.meta_labels)
  meta = (meta.shuffle(len(split.meta_indices), seed=seed + 1,
                       reshuffle_each_iteration=True)
          .repeat().batch(meta_batch_size, drop_remainder=True))
  return tf.data.Dataset.zip(train, meta).prefetch(AUTOTUNE)


def evaluation(source, split_name, batch_size):
  """`(x, y)` batches of a whole split, in order."""
  labels = source.labels[split_name]
  return labelled(source, split_name, np.arange(len(labels)), labels).batch(
      batch_size).prefetch(AUTOTUNE)
