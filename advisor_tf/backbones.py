"""Classifier networks, each split into a backbone (image → feature) and a head.

BatchNorm uses momentum 0.9 and epsilon 1e-5 — PyTorch's defaults, which the
reference CIFAR ResNets of the thesis and of Meta-Weight-Net use — rather than
Keras' 0.99 / 1e-3, so that learning-rate schedules tuned there carry over.
"""

from __future__ import annotations

import keras
from keras import layers, ops

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _bn(name):
  return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                   name=name)


def _conv(filters, stride, name, kernel_size=3):
  return layers.Conv2D(filters, kernel_size, strides=stride, padding="same",
                       use_bias=False, kernel_initializer="he_normal",
                       name=name)


@keras.saving.register_keras_serializable(package="advisor_tf")
class ZeroPadShortcut(layers.Layer):
  """Option-A ResNet shortcut: subsample spatially, zero-pad the channels."""

  def __init__(self, filters, stride, **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.stride = int(stride)

  def call(self, x):
    x = x[:, ::self.stride, ::self.stride, :]
    extra = self.filters - x.shape[-1]
    return ops.pad(x, [[0, 0], [0, 0], [0, 0],
                       [extra // 2, extra - extra // 2]])

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, stride=self.stride)
    return config


def _basic_block(x, filters, stride, name):
  shortcut = x
  y = _conv(filters, stride, f"{name}_conv1")(x)
  y = layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1")(y))
  y = _conv(filters, 1, f"{name}_conv2")(y)
  y = _bn(f"{name}_bn2")(y)
  if stride != 1 or x.shape[-1] != filters:
    shortcut = ZeroPadShortcut(filters, stride, name=f"{name}_shortcut")(x)
  return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")(
      [y, shortcut]))


def cifar_resnet(input_shape, depth=32, widths=(16, 32, 64), name="resnet32"):
  """CIFAR ResNet (He et al. 2016, sec. 4.2): 3 stages of (depth-2)/6 blocks."""
  if (depth - 2) % 6:
    raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}.")
  blocks = (depth - 2) // 6
  inputs = keras.Input(shape=input_shape, name="image")
  x = _conv(widths[0], 1, "stem_conv")(inputs)
  x = layers.ReLU(name="stem_relu")(_bn("stem_bn")(x))
  for stage, filters in enumerate(widths):
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      x = _basic_block(x, filters, stride, f"stage{stage + 1}_block{block + 1}")
  features = layers.GlobalAveragePooling2D(name="pool")(x)
  return keras.Model(inputs, features, name=name)


def _projection_block(x, filters, stride, name):
  """BasicBlock with a 1×1 conv + BN projection shortcut (ResNet-18/10)."""
  shortcut = x
  y = _conv(filters, stride, f"{name}_conv1")(x)
  y = layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1")(y))
  y = _bn(f"{name}_bn2")(_conv(filters, 1, f"{name}_conv2")(y))
  if stride != 1 or x.shape[-1] != filters:
    shortcut = _bn(f"{name}_proj_bn")(
        _conv(filters, stride, f"{name}_proj", kernel_size=1)(x))
  return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")(
      [y, shortcut]))


def basic_resnet(input_shape, blocks, imagenet_stem, name,
                 widths=(64, 128, 256, 512)):
  """ResNet of BasicBlocks: ResNet-18 with a CIFAR stem (3×3 conv), ResNet-10
  with the ImageNet stem (7×7/2 conv + 3×3/2 max-pool), as in the long-tail
  literature (Liu et al. 2019's ResNet-10 for ImageNet-LT)."""
  inputs = keras.Input(shape=input_shape, name="image")
  if imagenet_stem:
    x = _conv(widths[0], 2, "stem_conv", kernel_size=7)(inputs)
    x = layers.ReLU(name="stem_relu")(_bn("stem_bn")(x))
    x = layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
  else:
    x = _conv(widths[0], 1, "stem_conv")(inputs)
    x = layers.ReLU(name="stem_relu")(_bn("stem_bn")(x))
  for stage, (filters, count) in enumerate(zip(widths, blocks)):
    for block in range(count):
      stride = 2 if stage > 0 and block == 0 else 1
      x = _projection_block(x, filters, stride,
                            f"stage{stage + 1}_block{block + 1}")
  features = layers.GlobalAveragePooling2D(name="pool")(x)
  return keras.Model(inputs, features, name=name)


def keras_application(constructor, input_shape, name, weights=None):
  """A `keras.applications` ResNet without its top, average-pooled.

  `weights`: None (random init) or the path of a local weights file (e.g.
  the ImageNet `*_weights_tf_dim_ordering_tf_kernels_notop.h5`; nothing here
  downloads them).
  """
  if weights is not None and not __import__("os").path.isfile(weights):
    raise ValueError(f"--pretrained_weights={weights}: file not found.")
  body = constructor(include_top=False, weights=weights,
                     input_shape=input_shape, pooling="avg")
  return keras.Model(body.inputs, body.outputs, name=name)


def small_cnn(input_shape, widths=(32, 64, 128), name="small_cnn",
              final_side=None):
  """Three conv-BN-ReLU layers (stride 1, 2, 2) and global pooling.

  Sized for 8×8 digits (→ 2×2 before pooling) and usable on 32×32 images.
  With `final_side` (`small_cnn_auto`: 2), stride-2 conv-BN-ReLU layers of
  the last width (`conv3_1`, `conv3_2`, ...) follow until the map's side is
  at most `final_side`, so that the receptive field covers the image at any
  input size: the same network as without at 8×8, two more layers at 32×32.
  """
  inputs = keras.Input(shape=input_shape, name="image")
  x = inputs
  for i, filters in enumerate(widths):
    x = _conv(filters, 1 if i == 0 else 2, f"conv{i + 1}")(x)
    x = layers.ReLU(name=f"relu{i + 1}")(_bn(f"bn{i + 1}")(x))
  extra = 0
  while final_side and min(x.shape[1:3]) > final_side:
    extra += 1
    last = f"{len(widths)}_{extra}"
    x = _conv(widths[-1], 2, f"conv{last}")(x)
    x = layers.ReLU(name=f"relu{last}")(_bn(f"bn{last}")(x))
  features = layers.GlobalAveragePooling2D(name="pool")(x)
  return keras.Model(inputs, features, name=name)


def linear_head(feature_dim, num_classes, name="head"):
  """Feature → logits: one Dense layer (the category predictor Φc)."""
  inputs = keras.Input(shape=(feature_dim,), name="feature")
  logits = layers.Dense(num_classes, name="logits")(inputs)
  return keras.Model(inputs, logits, name=name)


BACKBONES = {
    "small_cnn": lambda shape, weights=None: small_cnn(shape),
    "small_cnn_auto": lambda shape, weights=None: small_cnn(
        shape, name="small_cnn_auto", final_side=2),
    "resnet32": lambda shape, weights=None: cifar_resnet(shape, depth=32),
    "resnet18": lambda shape, weights=None: basic_resnet(
        shape, (2, 2, 2, 2), imagenet_stem=False, name="resnet18"),
    "resnet10": lambda shape, weights=None: basic_resnet(
        shape, (1, 1, 1, 1), imagenet_stem=True, name="resnet10"),
    "resnet50": lambda shape, weights=None: keras_application(
        keras.applications.ResNet50, shape, "resnet50", weights),
    "resnet152": lambda shape, weights=None: keras_application(
        keras.applications.ResNet152, shape, "resnet152", weights),
}
# Backbones whose pretrained weights can come from a local file.
PRETRAINABLE = ("resnet50", "resnet152")


# Layer-name prefixes of each backbone's last stage (--virtual_scope=last_stage).
LAST_STAGE = {
    "resnet32": ("stage3_",),
    "small_cnn": ("conv3", "bn3"),
    "small_cnn_auto": ("conv3", "bn3"),  # conv3 and the layers after it.
    "resnet18": ("stage4_",),
    "resnet10": ("stage4_",),
    "resnet50": ("conv5_",),
    "resnet152": ("conv5_",),
}


def last_stage_prefixes(backbone):
  return LAST_STAGE.get(backbone)


def build_classifier(backbone, input_shape, num_classes, weights=None):
  """Returns `(backbone_model, head_model)` for a registered backbone name."""
  if backbone not in BACKBONES:
    raise ValueError(f"--backbone={backbone!r} is not allowed; choose one of: "
                     f"{', '.join(sorted(BACKBONES))}.")
  if weights is not None and backbone not in PRETRAINABLE:
    raise ValueError(f"--pretrained_weights applies to {PRETRAINABLE}, not "
                     f"--backbone={backbone}; use --init_checkpoint to start "
                     "from a previous run.")
  body = BACKBONES[backbone](tuple(input_shape), weights=weights)
  head = linear_head(body.output_shape[-1], num_classes)
  return body, head


# ------------------------------------------------- rematerialisation blocks
# A block of `--remat=blocks` holds at least this many layers: a lone conv, BN
# or ReLU between two cuts joins the next one (recomputing a one-layer block
# frees nothing: its backward needs its input anyway).
REMAT_MIN_LAYERS = 3


class Segment:
  """A run of a backbone's layers between two cuts, as a Keras model of its
  own that shares the backbone's layers (hence its variables).

  Attributes:
    model: the functional sub-model, cut input → cut output.
    trainable: indices of `model.trainable_variables` in the backbone's
      `trainable_variables`.
    non_trainable: the same for the non-trainable (BatchNorm) variables.
  """

  def __init__(self, model, trainable, non_trainable):
    self.model = model
    self.trainable = tuple(trainable)
    self.non_trainable = tuple(non_trainable)


def _cuts(model):
  """The backbone's layers in topological order, and after which of them
  only one tensor is alive (a cut: everything later depends on the earlier
  layers only through that tensor). Returns `(layers, cut_positions)`, or
  None where a layer is used twice (no cut is then trusted)."""
  layers_ = [op for op in model.operations
             if not isinstance(op, layers.InputLayer)]
  if any(len(op._inbound_nodes) != 1 for op in layers_):  # noqa: SLF001
    return None
  position = {id(t): -1 for t in model.inputs}
  last_use = {}
  for i, op in enumerate(layers_):
    node = op._inbound_nodes[0]  # noqa: SLF001
    for t in node.input_tensors:
      if id(t) not in position:
        return None  # Not in topological order: refuse to cut.
      last_use[id(t)] = i
    for t in node.output_tensors:
      position[id(t)] = i
  for t in model.outputs:
    last_use[id(t)] = len(layers_)
  cuts = []
  for i, op in enumerate(layers_[:-1]):
    live = [t for t, p in position.items() if p <= i
            and last_use.get(t, -1) > i]
    outputs = op._inbound_nodes[0].output_tensors  # noqa: SLF001
    if len(live) == 1 and len(outputs) == 1 and live[0] == id(outputs[0]):
      cuts.append(i)
  return layers_, cuts


def remat_segments(model, min_layers=None):
  """Splits a functional backbone into `Segment`s at its cuts (in a ResNet,
  the residual blocks' outputs; in a plain CNN, any layer's), each segment
  holding at least `min_layers` layers (default `REMAT_MIN_LAYERS`).
  Chained, the segments compute the backbone.

  Returns:
    a list of `Segment`s, or one segment (the backbone itself) where the
    model cannot be cut (not functional, or a layer shared).
  """
  min_layers = REMAT_MIN_LAYERS if min_layers is None else min_layers
  whole = [Segment(model, range(len(model.trainable_variables)),
                   range(len(model.non_trainable_variables)))]
  if not hasattr(model, "operations") or not hasattr(model, "inputs") or \
      len(model.inputs) != 1 or len(model.outputs) != 1:
    return whole
  found = _cuts(model)
  if found is None:
    return whole
  layers_, cuts = found
  bounds, start = [], 0
  for i in cuts:
    if i + 1 - start >= min_layers and len(layers_) - (i + 1) >= min_layers:
      bounds.append(i)
      start = i + 1
  if not bounds:
    return whole
  trainable = {id(v): k for k, v in enumerate(model.trainable_variables)}
  non_trainable = {id(v): k
                   for k, v in enumerate(model.non_trainable_variables)}
  tensors = ([model.inputs[0]]
             + [layers_[i]._inbound_nodes[0].output_tensors[0]  # noqa: SLF001
                for i in bounds] + [model.outputs[0]])
  segments = []
  for k, (start_t, end_t) in enumerate(zip(tensors[:-1], tensors[1:])):
    sub = keras.Model(start_t, end_t, name=f"{model.name}_remat{k}")
    segments.append(Segment(
        sub, [trainable[id(v)] for v in sub.trainable_variables],
        [non_trainable[id(v)] for v in sub.non_trainable_variables]))
  return segments
