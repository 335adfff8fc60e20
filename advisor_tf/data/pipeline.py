"""tf.data pipelines: the train stream zipped with an endless meta stream.

Both streams are pure functions of (seed, step): epoch e of the train stream
is the training set in the order `stateless_shuffle(positions, [seed, e])`,
and the meta stream is an endless concatenation of such shuffles of the meta
set. A run resumed at global step s therefore sees exactly the batches an
uninterrupted run would (`start_step=s` skips index batches, not images).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from advisor_tf.data import augment as augment_lib

AUTOTUNE = tf.data.AUTOTUNE
_META_STREAM = 1_000_003  # Separates the meta stream's seeds from train's.
_BASIC_TRANSFORM = 1  # Folded into the step's seed for `train_transform`.


def labelled(source, split, indices, labels):
  """`(image, label)` pairs for the given indices of a source split."""
  return tf.data.Dataset.zip(
      source.images(split, indices),
      tf.data.Dataset.from_tensor_slices(tf.constant(labels, tf.int64)))


def centre_crop(source):
  """`(images, seed) → images` (one image or a batch): the deterministic
  part of the train transform, a centre crop to the model's input size (the train loader of ImageNet-style
  sources yields larger images for random crops; a no-op elsewhere)."""
  height, width = source.image_shape[:2]
  return lambda image, _: tf.image.resize_with_crop_or_pad(  # noqa: E731
      image, height, width)


def unaugmented_train(source, indices, labels):
  """`(image, label)` pairs of training examples as the model sees them
  without augmentation (for inference on the training set)."""
  load, crop = _load(source, "train", indices, labels), centre_crop(source)

  def cropped(position):
    image, label = load(position)
    return crop(image, None), label
  return tf.data.Dataset.range(len(indices)).map(
      cropped, num_parallel_calls=AUTOTUNE, deterministic=True)


def _shuffled_batches(count, batch_size, seed, offset, whole_epochs):
  """Endless stream of index batches; each pass over `count` items is a
  stateless shuffle seeded by (seed, offset + pass)."""
  positions = tf.range(count, dtype=tf.int64)

  def one_pass(p):
    order = tf.random.experimental.stateless_shuffle(
        positions, seed=tf.stack([tf.cast(seed, tf.int64), offset + p]))
    if whole_epochs:  # Drop the last partial batch of every epoch.
      usable = (count // batch_size) * batch_size
      return tf.data.Dataset.from_tensor_slices(
          tf.reshape(order[:usable], (-1, batch_size)))
    return tf.data.Dataset.from_tensor_slices(order)

  stream = tf.data.Dataset.counter().flat_map(one_pass)
  if not whole_epochs:
    stream = stream.batch(batch_size, drop_remainder=True)
  return stream


def _load(source, split_name, indices, labels):
  """`position → (image, label)`: the example at `indices[position]`."""
  indices = tf.constant(np.asarray(indices, np.int64))
  labels = tf.constant(np.asarray(labels, np.int64))
  image_at = source.image_loader(split_name)
  return lambda position: (image_at(tf.gather(indices, position)),  # noqa
                           tf.gather(labels, position))


def check_batch_sizes(split, batch_size, meta_batch_size):
  n, m = len(split.train_indices), len(split.meta_indices)
  if batch_size > n:
    raise ValueError(f"--batch_size={batch_size} is larger than the training "
                     f"set ({n} examples); use --batch_size={max(n, 1)} or "
                     "less.")
  if meta_batch_size > m:
    raise ValueError(f"--meta_batch_size={meta_batch_size} is larger than the "
                     f"meta set ({m} examples); lower it or raise "
                     "--meta_per_class.")


def strong_transform(source, policy="none", cutout=0, gridmask=False,
                     autoaugment=False):
  """The batch-level `(images, batch seed) → images` augmentation (`policy`
  of `augment.POLICIES`, Cutout, GridMask), or None; checks it suits the
  source. `autoaugment=True` is the former spelling of
  `policy="autoaugment"`."""
  if policy is True or autoaugment:
    policy = "autoaugment"
  policy = policy or "none"
  if policy == "none" and not (cutout or gridmask):
    return None
  if policy != "none" and source.image_shape[-1] != 3:
    raise ValueError(f"--augment_policy={policy} needs RGB images; --dataset="
                     f"{source.name} has {source.image_shape[-1]} channel(s).")
  if cutout >= min(source.image_shape[:2]):
    raise ValueError(f"--cutout={cutout} must be smaller than the image side "
                     f"({min(source.image_shape[:2])} for --dataset="
                     f"{source.name}).")
  return augment_lib.strong(source.pixel_mean, source.pixel_std, policy=policy,
                            cutout_size=cutout, gridmask=gridmask)


def _batches(source, split_name, index_batches, indices, labels, count,
             with_positions=False):
  """`(images, labels)` batches from a stream of batches of positions into
  `indices`/`labels` (`with_positions`: `(images, labels, positions)`): one
  gather per batch where the source loads whole batches (arrays, images
  decoded in memory), else loaded image by image and batched again
  (`count` per batch)."""
  batch_load = source.batch_loader(split_name)
  if batch_load is None:
    load = _load(source, split_name, indices, labels)
    return (index_batches.unbatch()
            .map(lambda position: load(position) + (
                (position,) if with_positions else ()),
                 num_parallel_calls=AUTOTUNE, deterministic=True)
            .batch(count, drop_remainder=True))
  index_table = tf.constant(np.asarray(indices, np.int64))
  label_table = tf.constant(np.asarray(labels, np.int64))
  return index_batches.map(
      lambda positions: (batch_load(tf.gather(index_table, positions)),
                         tf.gather(label_table, positions)) + (
                             (positions,) if with_positions else ()),
      num_parallel_calls=AUTOTUNE, deterministic=True)


def train_and_meta(source, split, batch_size, meta_batch_size, seed,
                   start_step=0, augment=True, policy="none", cutout=0,
                   gridmask=False, autoaugment=False, meta_stream=True,
                   positions=False):
  """`((x, y), (x_meta, y_meta))` batches for `AdvisorModel.fit`, endless.

  One step consumes one train batch (full batches only: static shapes, one
  trace of the train step) and one meta batch. Training images get the
  source's `train_transform` when `augment`, then the `policy` of
  `augment.POLICIES` (`autoaugment=True`: the former spelling of
  `policy="autoaugment"`), Cutout of `cutout` pixels when > 0 and GridMask
  when `gridmask`, all per batch and seeded by (run seed, global step), so
  resumes match; the meta set is never augmented (it is the trusted
  reference) but, where the source's train loader stores larger images for
  random crops, meta images from the train split are centre-cropped by the
  same transform's deterministic part. `meta_stream=False` (a method that
  reads no meta batch, e.g. CE) repeats the first meta batch instead of
  loading a new one every step. `positions=True` adds each train example's
  position in `split.train_indices`: `((x, y, positions), (x_meta,
  y_meta))` (sample selection looks its weight up by it).
  """
  check_batch_sizes(split, batch_size, meta_batch_size)
  n, m = len(split.train_indices), len(split.meta_indices)
  transform = source.train_transform if augment else None
  batch_transform = strong_transform(source, policy, cutout, gridmask,
                                     autoaugment)
  train = _batches(
      source, "train",
      _shuffled_batches(n, batch_size, seed, 0, True).skip(start_step),
      split.train_indices, split.train_labels, batch_size, positions)
  if transform is not None or batch_transform is not None:
    def augmented(step, batch):  # Seeded by (run seed, global step).
      images, step_seed = batch[0], tf.stack([tf.cast(seed, tf.int64), step])
      if transform is not None:  # Its own stream, apart from the policy's.
        images = transform(images, tf.random.experimental.stateless_fold_in(
            step_seed, _BASIC_TRANSFORM))
      if batch_transform is not None:
        images = batch_transform(images, step_seed)
      return (images,) + tuple(batch[1:])
    train = train.enumerate(start=start_step).map(
        augmented, num_parallel_calls=AUTOTUNE, deterministic=True)
  meta = _batches(
      source, split.meta_from,
      _shuffled_batches(m, meta_batch_size, seed, _META_STREAM,
                        False).skip(start_step),
      split.meta_indices, split.meta_labels, meta_batch_size)
  if split.meta_from == "train" and source.train_transform is not None:
    crop = centre_crop(source)
    meta = meta.map(lambda images, labels: (crop(images, None), labels))
  if not meta_stream:
    meta = meta.take(1).cache().repeat()
  return _shard_by_data(tf.data.Dataset.zip(train, meta).prefetch(AUTOTUNE))


def _shard_by_data(dataset):
  """Under a multi-worker strategy, each worker takes its replicas' slices of
  every global batch (the stream is computed, not read from files)."""
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return dataset.with_options(options)


def evaluation(source, split_name, batch_size):
  """`(x, y)` batches of a whole split, in order."""
  labels = source.labels[split_name]
  return _shard_by_data(labelled(source, split_name, np.arange(len(labels)),
                                 labels).batch(batch_size).prefetch(AUTOTUNE))
