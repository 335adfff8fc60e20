"""Losses: Meta Equalization Softmax (MES), in log-space, and the baselines.

MES (thesis eq. 3.6 and 3.8) replaces the softmax denominator by a weighted sum

    p_j = exp(z_j) / sum_k w_k exp(z_k),   w_k = 1 - beta_k * s_k * (1 - y_k)

where `s_k` in (0, 1) comes from the advisor and `beta_k ~ Bernoulli(rho)`. The
loss is -log p_y. With s_k = 0 it is softmax cross-entropy; with w_k = 0 the
class k receives no (discouraging) gradient from the example.

The modes without an advisor train on one of `BASELINE_MODES`; the model asks
`baseline_loss(mode, ...)` for their per-example loss.
"""

from __future__ import annotations

import keras
from keras import ops


def to_loss_precision(x):
  """Casts half-precision values to float32; float32/float64 pass unchanged."""
  x = ops.convert_to_tensor(x)
  if x.dtype in ("float16", "bfloat16") or "int" in str(x.dtype):
    return ops.cast(x, "float32")
  return x


def cross_entropy(labels, logits):
  """Per-example softmax cross-entropy, in at least float32."""
  return keras.losses.sparse_categorical_crossentropy(
      labels, to_loss_precision(logits), from_logits=True)


def meta_equalization_softmax(labels, logits, suppression, beta=None):
  """Per-example MES loss, numerically stable for any finite logits.

  Args:
    labels: int tensor `(batch,)`, the (possibly noisy) given labels.
    logits: `(batch, classes)`.
    suppression: `s_k`, `(batch, classes)` in [0, 1].
    beta: optional `(batch, classes)` Bernoulli draws in {0, 1}; `None` means
      all ones (ρ = 1).

  Returns:
    `(batch,)` losses, float32 for half-precision logits, else their dtype.
  """
  logits = to_loss_precision(logits)
  num_classes = ops.shape(logits)[-1]
  suppression = ops.cast(suppression, logits.dtype)
  onehot = ops.one_hot(ops.cast(labels, "int32"), num_classes,
                       dtype=logits.dtype)
  if beta is not None:
    suppression = suppression * ops.cast(beta, logits.dtype)
  weights = 1.0 - suppression * (1.0 - onehot)  # w_y == 1 exactly.
  # Shift by the largest logit among classes with non-zero weight (the label is
  # always one of them) so that exp() never overflows and the sum is >= its
  # largest term's weight. The shift carries no gradient (it cancels).
  masked = ops.where(weights > 0.0, logits, ops.full_like(logits, -float("inf")))
  shift = ops.stop_gradient(ops.max(masked, axis=-1, keepdims=True))
  denom = ops.sum(weights * ops.exp(logits - shift), axis=-1)
  log_denom = ops.log(denom) + ops.squeeze(shift, -1)
  true_logit = ops.sum(onehot * logits, axis=-1)
  return log_denom - true_logit


@keras.saving.register_keras_serializable(package="advisor_tf")
class MetaEqualizationSoftmax(keras.losses.Loss):
  """Meta Equalization Softmax loss as a Keras loss.

  `y_pred` packs the logits and the advisor's `s_k` along a new axis -2, i.e.
  shape `(batch, 2, classes)`; build it with `MetaEqualizationSoftmax.pack`.

  Args:
    rho: probability that the Bernoulli variable β is 1 (per example and
      class). `rho=1` makes the loss deterministic.
    seed: int seed for the β draws.
    reduction, name, dtype: as for `keras.losses.Loss`.

  Example:
    >>> loss = MetaEqualizationSoftmax(rho=1.0)
    >>> loss(labels, MetaEqualizationSoftmax.pack(logits, s))

  Reference:
    Ricci et al., "Meta-learning advisor networks for long-tail and noisy
    labels", eq. 3.8; Tan et al., "Equalization Loss", CVPR 2020.
  """

  def __init__(self, rho=0.9, seed=None, reduction="sum_over_batch_size",
               name="meta_equalization_softmax", dtype=None):
    super().__init__(name=name, reduction=reduction, dtype=dtype)
    if not 0.0 <= rho <= 1.0:
      raise ValueError(f"rho must be in [0, 1], got {rho}.")
    self.rho = float(rho)
    self.seed = seed
    self._seed_generator = keras.random.SeedGenerator(seed)

  @staticmethod
  def pack(logits, suppression):
    logits = to_loss_precision(logits)
    return ops.stack([logits, ops.cast(suppression, logits.dtype)], axis=-2)

  def call(self, y_true, y_pred):
    logits, suppression = y_pred[..., 0, :], y_pred[..., 1, :]
    beta = None
    if self.rho < 1.0:
      beta = bernoulli(ops.shape(logits), self.rho, self._seed_generator)
    return meta_equalization_softmax(ops.reshape(y_true, (-1,)), logits,
                                     suppression, beta)

  def get_config(self):
    config = super().get_config()
    config.update(rho=self.rho, seed=self.seed)
    return config


def bernoulli(shape, rho, seed):
  """{0, 1} float32 draws with P(1) = rho; rho = 1 gives ones exactly."""
  return ops.cast(keras.random.uniform(shape, seed=seed) < rho, "float32")


# ------------------------------------------------------------- baselines
def balanced_softmax(labels, logits, class_counts):
  """Balanced Softmax (Ren et al., BALMS, NeurIPS 2020): cross-entropy of
  `logits + log n_c`, the softmax re-weighted by the training class prior."""
  logits = to_loss_precision(logits)
  prior = ops.log(ops.maximum(ops.cast(class_counts, logits.dtype), 1.0))
  return keras.losses.sparse_categorical_crossentropy(
      labels, logits + prior, from_logits=True)


def equalization_softmax(labels, logits, class_counts, threshold, beta=None):
  """Softmax Equalization Loss (Tan et al., CVPR 2020) with its hand-made
  frequency threshold: classes whose share of the training images is below
  `threshold` (T_λ(f_k) = 1) get no discouraging gradient from other classes'
  examples. MES replaces this T_λ by the advisor's learned s_k."""
  counts = ops.cast(class_counts, "float32")
  rare = ops.cast(counts / ops.sum(counts) < threshold, "float32")
  batch = ops.shape(logits)[0]
  suppression = ops.broadcast_to(rare[None, :], (batch, ops.shape(rare)[0]))
  return meta_equalization_softmax(labels, logits, suppression, beta)


def focal(labels, logits, gamma):
  """Focal loss (Lin et al., ICCV 2017): −(1 − p_y)^γ log p_y."""
  logits = to_loss_precision(logits)
  log_p = ops.log_softmax(logits, axis=-1)
  onehot = ops.one_hot(ops.cast(labels, "int32"), ops.shape(logits)[-1],
                       dtype=logits.dtype)
  log_py = ops.sum(onehot * log_p, axis=-1)
  return -ops.power(1.0 - ops.exp(log_py), gamma) * log_py


BASELINE_MODES = ("ce", "balanced_softmax", "eql", "focal")


def baseline_loss(mode, labels, logits, class_counts=None, eql_threshold=0.01,
                  focal_gamma=2.0, beta=None):
  """Per-example training loss of a mode without an advisor.

  Args:
    mode: one of `BASELINE_MODES`: `ce` (softmax cross-entropy),
      `balanced_softmax`, `eql` (softmax equalization loss) or `focal`.
    labels: int tensor `(batch,)`.
    logits: `(batch, classes)`.
    class_counts: training images per class (`balanced_softmax`, `eql`).
    eql_threshold: frequency threshold λ of `eql`.
    focal_gamma: γ of `focal`.
    beta: optional Bernoulli draws `(batch, classes)` of `eql`; `None` means
      all ones (ρ = 1).

  Returns:
    `(batch,)` losses.
  """
  if mode not in BASELINE_MODES:
    raise ValueError(f"Unknown baseline {mode!r}; allowed: "
                     f"{', '.join(BASELINE_MODES)}.")
  if mode in ("balanced_softmax", "eql") and class_counts is None:
    raise ValueError(f"baseline {mode!r} needs class_counts.")
  if mode == "balanced_softmax":
    return balanced_softmax(labels, logits, class_counts)
  if mode == "eql":
    return equalization_softmax(labels, logits, class_counts, eql_threshold,
                                beta)
  if mode == "focal":
    return focal(labels, logits, focal_gamma)
  return cross_entropy(labels, logits)
