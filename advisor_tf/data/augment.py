"""Training-time augmentation, stateless: every random draw is a function of
(run seed, global example counter), so a resumed run augments exactly as an
uninterrupted one. (Keras' preprocessing layers draw from a stateful seed
generator that lives outside the data pipeline, which would break that.)"""

from __future__ import annotations

import tensorflow as tf


def pad_crop_flip(pad=4):
  """CIFAR: zero-pad by `pad`, random crop back to size, random h-flip."""
  def transform(image, seed):
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed)
    return tf.image.stateless_random_flip_left_right(image, seed + 1)
  return transform


def crop_flip(size):
  """ImageNet-style: random `size`×`size` crop of the (larger) stored image,
  random h-flip (the stored train images are resized to 256 first)."""
  def transform(image, seed):
    image = tf.image.stateless_random_crop(
        image, (size, size, tf.shape(image)[-1]), seed)
    return tf.image.stateless_random_flip_left_right(image, seed + 1)
  return transform


def flip():
  """Random horizontal flip only."""
  def transform(image, seed):
    return tf.image.stateless_random_flip_left_right(image, seed)
  return transform
