"""Training-time augmentation, stateless: every random draw is a function of
(run seed, global step), so a resumed run augments exactly
as an uninterrupted one. Keras' and keras-cv's preprocessing layers draw from
stateful generators that live outside the data pipeline, which would break
that; the layers used here (`keras.layers.RandAugment`, keras-cv's
`RandomCutout` and `GridMask`) get stand-in generators whose draws are
stateless in the batch's seed."""

from __future__ import annotations

import keras
import tensorflow as tf


def _flip_batch(images, seed):
  """Each image of the batch mirrored left-right with probability ½."""
  mirror = tf.random.stateless_uniform(tf.shape(images)[:1], seed) < 0.5
  return tf.where(mirror[:, None, None, None], tf.reverse(images, [2]),
                  images)


def _crop_batch(images, height, width, seed):
  """A random `height`×`width` window of each image of the batch (an
  offset per image, uniform over the positions that fit; gathered, so the
  pixels are copied exactly)."""
  shape = tf.shape(images)
  room = tf.cast(tf.stack([shape[1] - height + 1, shape[2] - width + 1]),
                 tf.float32)
  offsets = tf.cast(tf.random.stateless_uniform(
      tf.stack([shape[0], 2]), seed) * room, tf.int32)
  rows = offsets[:, :1] + tf.range(height)[None]
  cols = offsets[:, 1:] + tf.range(width)[None]
  images = tf.gather(images, rows, axis=1, batch_dims=1)
  return tf.gather(images, cols, axis=2, batch_dims=1)


def _two_seeds(seed):
  return tf.unstack(tf.random.experimental.stateless_split(seed, 2))


# The basic train transforms below work on whole batches, `(images [B, H,
# W, C], seed [2]) → images`, each image drawing its own crop and flip from
# the batch's seed (one op per batch instead of one per image: the input
# pipeline's cost per step fell by more than half, docs/speed-and-memory.md).
def pad_crop_flip(pad=4):
  """CIFAR: zero-pad by `pad`, random crop back to size, random h-flip."""
  def transform(images, seed):
    crop_seed, flip_seed = _two_seeds(seed)
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return _flip_batch(_crop_batch(padded, height, width, crop_seed),
                       flip_seed)
  return transform


def crop_flip(size):
  """ImageNet-style: random `size`×`size` crop of the (larger) stored image,
  random h-flip (the stored train images are resized to 256 first)."""
  def transform(images, seed):
    crop_seed, flip_seed = _two_seeds(seed)
    return _flip_batch(_crop_batch(images, size, size, crop_seed), flip_seed)
  return transform


def flip():
  """Random horizontal flip only."""
  return _flip_batch


# ------------------------------------------------------- AutoAugment, Cutout
# These work on whole batches (after the per-image crop and flip): the 25
# sub-policies become per-image operation codes and magnitudes, and each
# operation runs once per batch on the images that drew it, with no control
# flow. (Per-image `tf.switch_case` over the policy ran ~10× slower in
# tf.data: function bodies of branches are not optimised like the map body.)
# AutoAugment's CIFAR-10 policy (Cubuk et al., CVPR 2019, appendix table),
# with the magnitude scales of the PyTorch CIFAR10Policy that the
# long-tailed CIFAR literature (BALMS, PaCo, the thesis' Table 3.2
# comparisons) trains with: level m ∈ 0..9 indexes 10 evenly spaced values
# of each operation's range; geometric and enhance operations take a random
# sign; geometric operations fill with grey (128/255).
# Each entry: (op1, probability1, level1, op2, probability2, level2).
CIFAR10_POLICY = (
    ("invert", 0.1, 7, "contrast", 0.2, 6),
    ("rotate", 0.7, 2, "translate_x", 0.3, 9),
    ("sharpness", 0.8, 1, "sharpness", 0.9, 3),
    ("shear_y", 0.5, 8, "translate_y", 0.7, 9),
    ("autocontrast", 0.5, 8, "equalize", 0.9, 2),
    ("shear_y", 0.2, 7, "posterize", 0.3, 7),
    ("color", 0.4, 3, "brightness", 0.6, 7),
    ("sharpness", 0.3, 9, "brightness", 0.7, 9),
    ("equalize", 0.6, 5, "equalize", 0.5, 1),
    ("contrast", 0.6, 7, "sharpness", 0.6, 5),
    ("color", 0.7, 7, "translate_x", 0.5, 8),
    ("equalize", 0.3, 7, "autocontrast", 0.4, 8),
    ("translate_y", 0.4, 3, "sharpness", 0.2, 6),
    ("brightness", 0.9, 6, "color", 0.2, 8),
    ("solarize", 0.5, 2, "invert", 0.0, 3),
    ("equalize", 0.2, 0, "autocontrast", 0.6, 0),
    ("equalize", 0.2, 8, "equalize", 0.6, 4),
    ("color", 0.9, 9, "equalize", 0.6, 6),
    ("autocontrast", 0.8, 4, "solarize", 0.2, 8),
    ("brightness", 0.1, 3, "color", 0.7, 0),
    ("solarize", 0.4, 5, "autocontrast", 0.9, 3),
    ("translate_y", 0.9, 9, "translate_y", 0.7, 9),
    ("autocontrast", 0.9, 2, "solarize", 0.8, 3),
    ("equalize", 0.8, 8, "invert", 0.1, 3),
    ("translate_y", 0.7, 9, "autocontrast", 0.9, 1),
)
_GREY = 128.0 / 255.0
_LEVELS = 10
_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y",
        "rotate", "color", "contrast", "brightness", "sharpness", "posterize",
        "solarize", "autocontrast", "equalize", "invert")


def _levels(low, high):
  """The 10 magnitudes of an operation, level 0 → low, level 9 → high."""
  return tf.linspace(tf.constant(low, tf.float32), high, _LEVELS)


def _blend(degenerate, images, factor):
  """PIL ImageEnhance: factor 0 → `degenerate`, 1 → the image, clipped."""
  return tf.clip_by_value(degenerate + factor * (images - degenerate),
                          0.0, 1.0)


def _sharpness_degenerate(images):
  kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "VALID")
  # The VALID output is (H − 2) × (W − 2); on an empty batch the CPU kernel
  # can return H × W, so cut it to size (a no-op otherwise).
  height, width = tf.shape(images)[1], tf.shape(images)[2]
  smooth = smooth[:, :height - 2, :width - 2, :]
  # PIL keeps the one-pixel border unsmoothed.
  border = tf.pad(tf.zeros_like(smooth), [[0, 0], [1, 1], [1, 1], [0, 0]],
                  constant_values=1.0)
  return tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]]) + images * border


def _posterize(images, bits):
  shift = (8 - bits)[:, None, None, None]
  q = tf.cast(tf.round(images * 255.0), tf.int32)
  q = tf.bitwise.left_shift(tf.bitwise.right_shift(q, shift), shift)
  return tf.cast(q, tf.float32) / 255.0


def autocontrast(images):
  """PIL ImageOps.autocontrast per image and channel: min → 0, max → 1
  (constant channels unchanged)."""
  low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
  high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
  spread = high - low
  stretched = (images - low) / tf.where(spread > 0, spread, 1.0)
  return tf.where(spread > 0, stretched, images)


def equalize(images):
  """PIL ImageOps.equalize per image and channel on 256 levels, vectorised
  over the batch (one bincount; no per-image loop)."""
  batch, height, width, channels = (tf.shape(images)[i] for i in range(4))
  q = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.int32)
  planes = tf.reshape(tf.transpose(q, [0, 3, 1, 2]), [batch * channels, -1])
  offsets = tf.range(batch * channels)[:, None] * 256
  hist = tf.reshape(tf.math.bincount(planes + offsets,
                                     minlength=batch * channels * 256,
                                     maxlength=batch * channels * 256),
                    [batch * channels, 256])
  # PIL: step = (pixels − count of the brightest present level) // 255.
  present = tf.cast(hist > 0, tf.int32) * tf.range(256)[None]
  top = tf.reduce_max(present, axis=1)
  step = (height * width - tf.gather(hist, top, batch_dims=1)) // 255
  before = tf.cumsum(hist, axis=1, exclusive=True)
  safe = tf.maximum(step, 1)[:, None]
  lut = tf.minimum((before + safe // 2) // safe, 255)
  mapped = tf.gather(lut, planes, batch_dims=1)
  mapped = tf.where((step > 0)[:, None], mapped, planes)
  out = tf.reshape(mapped, [batch, channels, height, width])
  return tf.cast(tf.transpose(out, [0, 2, 3, 1]), tf.float32) / 255.0


def _affine(images, name, magnitude):
  """The geometric operation `name` with per-image `magnitude`; output pixel
  (x, y) reads input (a0 x + a1 y + a2, b0 x + b1 y + b2)."""
  size = tf.cast(tf.shape(images)[1:3], tf.float32)
  one, zero = tf.ones_like(magnitude), tf.zeros_like(magnitude)
  if name == "rotate":  # about the centre
    theta = magnitude * (3.141592653589793 / 180.0)
    c, s = tf.cos(theta), tf.sin(theta)
    cy, cx = (size[0] - 1) / 2.0, (size[1] - 1) / 2.0
    row = [c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy]
  else:
    row = {"shear_x": [one, magnitude, zero, zero, one, zero],
           "shear_y": [one, zero, zero, magnitude, one, zero],
           "translate_x": [one, zero, magnitude * size[1], zero, one, zero],
           "translate_y": [one, zero, zero, zero, one, magnitude * size[0]],
           }[name]
  return keras.ops.image.affine_transform(
      images, tf.stack(row + [zero, zero], axis=1), interpolation="nearest",
      fill_mode="constant", fill_value=_GREY)


def _operation(name, images, level, sign):
  """AutoAugment operation `name` on a batch, image i at `level[i]` (0..9)
  with sign `sign[i]` (±1, used by the symmetric operations)."""
  pick = lambda low, high: tf.gather(_levels(low, high), level)  # noqa: E731
  if name in ("shear_x", "shear_y"):
    return _affine(images, name, pick(0.0, 0.3) * sign)
  if name in ("translate_x", "translate_y"):
    return _affine(images, name, pick(0.0, 150.0 / 331.0) * sign)
  if name == "rotate":
    return _affine(images, name, pick(0.0, 30.0) * sign)
  if name in ("color", "contrast", "brightness", "sharpness"):
    factor = (1.0 + pick(0.0, 0.9) * sign)[:, None, None, None]
    if name == "color":
      degenerate = tf.image.rgb_to_grayscale(images)
    elif name == "contrast":
      degenerate = tf.reduce_mean(tf.image.rgb_to_grayscale(images),
                                  axis=[1, 2, 3], keepdims=True)
    elif name == "brightness":
      degenerate = tf.zeros_like(images)
    else:
      degenerate = _sharpness_degenerate(images)
    return _blend(degenerate, images, factor)
  if name == "posterize":
    return _posterize(images, tf.cast(tf.round(pick(8.0, 4.0)), tf.int32))
  if name == "solarize":
    threshold = (pick(256.0, 0.0) / 255.0)[:, None, None, None]
    return tf.where(images < threshold, images, 1.0 - images)
  if name == "autocontrast":
    return autocontrast(images)
  if name == "equalize":
    return equalize(images)
  if name == "invert":
    return 1.0 - images
  raise ValueError(f"Unknown AutoAugment operation {name!r}.")


def _apply(images, op, level, sign):
  """Image i gets operation `_OPS[op[i]]` (0: none). Each operation runs
  only on the images that drew it (gather, apply, scatter back)."""
  level = tf.cast(level, tf.int32)
  for code, name in enumerate(_OPS[1:], start=1):
    where = tf.where(tf.equal(op, code))
    chosen = where[:, 0]
    out = _operation(name, tf.gather(images, chosen), tf.gather(level, chosen),
                     tf.gather(sign, chosen))
    images = tf.tensor_scatter_nd_update(images, where, out)
  return images


def autoaugment(images, seed, policy=CIFAR10_POLICY):
  """AutoAugment on a batch of [0, 1] images: per image, one sub-policy of
  `policy` drawn uniformly, each of its two operations applied with its
  probability. All draws are stateless in `seed` (the batch's seed)."""
  count = tf.shape(images)[0]
  table = tf.constant([[_OPS.index(a), p, m, _OPS.index(b), q, n]
                       for a, p, m, b, q, n in policy], tf.float32)
  draws = tf.random.stateless_uniform(
      [count, 5], tf.random.experimental.stateless_fold_in(seed, 17))
  index = tf.minimum(tf.cast(draws[:, 0] * len(policy), tf.int32),
                     len(policy) - 1)
  rows = tf.gather(table, index)
  signs = tf.where(draws[:, 3:5] < 0.5, -1.0, 1.0)
  for slot in range(2):
    op, prob, level = (rows[:, 3 * slot + k] for k in range(3))
    op = tf.where(draws[:, 1 + slot] < prob, tf.cast(op, tf.int32), 0)
    images = _apply(images, op, level, signs[:, slot])
  return images


# ------------------------------------------- Keras and keras-cv, made stateless
def _fold(seed, count):
  return tf.random.experimental.stateless_fold_in(
      tf.cast(seed, tf.int64), count)


class _StepSeeds(keras.random.SeedGenerator):
  """Stands in for a Keras layer's `SeedGenerator`: its k-th draw within one
  call is the stateless seed `fold_in(seed, k)`, so the layer's output is a
  function of `seed` (no state variable is created)."""

  def __init__(self, seed):
    self.name, self.backend = "step_seeds", keras.backend
    self._initial_seed, self._seed, self._count = None, seed, 0

  def next(self, ordered=True):
    del ordered
    self._count += 1
    return _fold(self._seed, self._count)


class _StatelessDraws:
  """Stands in for a keras-cv layer's `tf.random.Generator` (the methods its
  layers call), each draw stateless in `seed` like `_StepSeeds`."""

  def __init__(self, seed):
    self._seed, self._count = seed, 0

  def _next(self):
    self._count += 1
    return _fold(self._seed, self._count)

  def uniform(self, shape, minval=0.0, maxval=None, dtype=tf.float32,
              **kwargs):
    del kwargs
    if maxval is None:
      maxval = 1.0
    unit = tf.random.stateless_uniform(shape, self._next(), dtype=tf.float32)
    return tf.cast(minval + unit * (tf.cast(maxval, tf.float32) - minval),
                   dtype)

  def normal(self, shape, mean=0.0, stddev=1.0, dtype=tf.float32, **kwargs):
    del kwargs
    return tf.random.stateless_normal(shape, self._next(), mean, stddev, dtype)

  random_normal = normal


def _with_step_seeds(layer, seed):
  """Points `layer` and its sub-layers at stateless draws from `seed`."""
  draws = _StepSeeds(seed)
  for sub in [layer] + list(layer._flatten_layers(include_self=False)):
    if hasattr(sub, "generator"):
      object.__setattr__(sub, "generator", draws)
      object.__setattr__(sub, "_backend_generators", {})
  return layer


def rand_augment(num_ops=2, factor=0.5):
  """`(batch of [0, 1] images, batch seed) → images`: Keras'
  `keras.layers.RandAugment` (defaults: 2 operations, factor 0.5) per image —
  each image draws its own operations and magnitudes (the layer, called on
  a batch, would draw one pair of operations for the whole batch) — from
  seeds folded out of the batch's."""
  layer = keras.layers.RandAugment(value_range=(0, 1), num_ops=num_ops,
                                   factor=factor)

  def one(args):
    image, image_seed = args
    return _with_step_seeds(layer, image_seed)(image, training=True)

  def transform(images, seed):
    return tf.map_fn(one, (images, _image_seeds(images, seed, 31)),
                     fn_output_signature=tf.float32)
  return transform


def _image_seeds(images, seed, salt):
  """One stateless seed per image of the batch, derived from its seed."""
  return tf.random.stateless_uniform(
      [tf.shape(images)[0], 2], _fold(seed, salt), minval=None, maxval=None,
      dtype=tf.int64)


def cutout(images, seed, size):
  """One `size`×`size` square per image, centre drawn uniformly over the
  image and clipped at the borders, set to 0 (DeVries & Taylor 2017): keras-cv's
  `RandomCutout` with a fixed square, its centres drawn statelessly."""
  import keras_cv
  height, width = images.shape[1], images.shape[2]
  if height is None or width is None:
    raise ValueError("cutout needs images of a static size.")
  layer = _keras_cv_layer(
      ("cutout", size, height, width), lambda: keras_cv.layers.RandomCutout(
          keras_cv.core.ConstantFactorSampler(size / height),
          keras_cv.core.ConstantFactorSampler(size / width),
          fill_mode="constant", fill_value=0.0, seed=_UNUSED_SEED))
  layer._random_generator = _StatelessDraws(_fold(seed, 29))
  return layer(images, training=True)


def grid_mask(images, seed):
  """keras-cv's `GridMask` (Chen et al. 2020; its defaults: grid ratio
  U(0, 0.5), rotation ±15% of a turn, fill 0), per image, every draw
  stateless in the batch's seed."""
  import keras_cv
  layer = _keras_cv_layer(("gridmask",), lambda: keras_cv.layers.GridMask(
      seed=_UNUSED_SEED))

  def one(args):
    image, image_seed = args
    draws = _StatelessDraws(image_seed)
    layer._random_generator = draws
    layer.random_rotate._random_generator = draws
    layer.ratio_factor = lambda: draws.uniform((), 0.0, 0.5)
    return layer.augment_image(
        image, transformation=layer.get_random_transformation(image=image))

  return tf.map_fn(one, (images, _image_seeds(images, seed, 37)),
                   fn_output_signature=tf.float32)


_KERAS_CV_LAYERS = {}
# keras-cv layers built without a seed take TensorFlow's global generator,
# which op determinism refuses unless a global seed is set; every draw they
# make is replaced by stateless ones (`_StatelessDraws`), so this seed only
# lets them be built anywhere.
_UNUSED_SEED = 1


def _keras_cv_layer(key, build):
  """One keras-cv layer per configuration (they hold no state we use)."""
  if key not in _KERAS_CV_LAYERS:
    _KERAS_CV_LAYERS[key] = build()
  return _KERAS_CV_LAYERS[key]


AUGMIX_OPS = ("autocontrast", "equalize", "posterize", "rotate", "solarize",
              "shear_x", "shear_y", "translate_x", "translate_y")


def augmix(images, seed, width=3, depth=3, severity=3):
  """AugMix (Hendrycks et al., ICLR 2020) on a batch of [0, 1] images, per
  image: `width` chains of 1..`depth` operations drawn from `AUGMIX_OPS`
  (levels 1..`severity` of the AutoAugment ranges above, random sign), mixed
  with Dirichlet(1) weights, then with the image by a Beta(1, 1) weight.
  Stateless and vectorised like `autoaugment`. (Keras' `keras.layers.AugMix`
  picks its operations with Python's `random` when traced, so inside
  tf.data every image of the run would get the same chains.)"""
  count = tf.shape(images)[0]
  draws = tf.random.stateless_uniform(
      [count, width, depth, 3], _fold(seed, 41))
  mixing = tf.random.stateless_uniform([count, width + 2], _fold(seed, 43))
  chain_depth = 1 + tf.minimum(tf.cast(mixing[:, width] * depth, tf.int32),
                               depth - 1)
  codes = tf.constant([_OPS.index(name) for name in AUGMIX_OPS], tf.int32)
  # Dirichlet(1, ..., 1): normalised exponentials.
  weights = -tf.math.log(1.0 - mixing[:, :width])
  weights /= tf.reduce_sum(weights, axis=1, keepdims=True)
  mixed = tf.zeros_like(images)
  for chain in range(width):
    chained = images
    for step in range(depth):
      op_draw, level_draw, sign_draw = (draws[:, chain, step, k]
                                        for k in range(3))
      op = tf.gather(codes, tf.minimum(
          tf.cast(op_draw * len(AUGMIX_OPS), tf.int32), len(AUGMIX_OPS) - 1))
      op = tf.where(step < chain_depth, op, 0)
      level = 1 + tf.minimum(tf.cast(level_draw * severity, tf.int32),
                             severity - 1)
      chained = _apply(chained, op, level,
                       tf.where(sign_draw < 0.5, -1.0, 1.0))
    mixed += weights[:, chain, None, None, None] * chained
  keep = mixing[:, width + 1, None, None, None]  # Beta(1, 1) = U(0, 1).
  return tf.clip_by_value(keep * images + (1.0 - keep) * mixed, 0.0, 1.0)


POLICIES = ("none", "autoaugment", "randaugment", "augmix")


def strong(mean=None, std=None, policy="autoaugment", cutout_size=16,
           gridmask=False, use_autoaugment=None):
  """`(batch of images, batch seed) → images`: the batch-level augmentation
  applied after the per-image crop and flip, on [0, 1] pixels: `policy`
  (one of `POLICIES`: AutoAugment's CIFAR-10 policy, Keras' RandAugment or
  AugMix), then Cutout of `cutout_size` pixels (0: none), then GridMask.
  The strong recipe of the long-tailed CIFAR literature is AutoAugment +
  Cutout 16. The source's images arrive normalised by (mean, std); this
  undoes that around the pixel operations and re-applies it. Every draw is
  stateless in the batch seed. (`use_autoaugment`: the former flag; True
  means `policy="autoaugment"`, False `policy="none"`.)"""
  if use_autoaugment is not None:
    policy = "autoaugment" if use_autoaugment else "none"
  if policy not in POLICIES:
    raise ValueError(f"Unknown augmentation policy {policy!r}; choose one of: "
                     f"{', '.join(POLICIES)}.")
  mean = tf.constant(mean if mean is not None else 0.0, tf.float32)
  std = tf.constant(std if std is not None else 1.0, tf.float32)
  randaugment = rand_augment() if policy == "randaugment" else None

  def transform(images, seed):
    images = images * std + mean
    if policy != "none":
      images = tf.clip_by_value(images, 0.0, 1.0)
    if policy == "autoaugment":
      images = autoaugment(images, seed)
    elif policy == "randaugment":
      images = randaugment(images, seed)
    elif policy == "augmix":
      images = augmix(images, seed)
    if cutout_size:
      images = cutout(images, seed, cutout_size)
    if gridmask:
      images = grid_mask(images, seed)
    return (images - mean) / std
  return transform
