"""Advisor-side layers: the advisor network Ψ, the MFRW mask, Meta-Weight-Net."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="advisor_tf")
class AdvisorNetwork(keras.layers.Layer):
  """The advisor Ψ(f, L) of thesis section 3.4.3.

  The feature `f` and the per-example loss `L` are embedded separately
  (Dense(E) + ReLU each), concatenated, mixed by Dense(2E) + ReLU, and read out
  by one sigmoid head per method: `W_f` (one weight per feature, MFRW) and
  `s_k` (one weight per class, MES). Only the heads that are asked for are
  built, so no variable is left without a gradient.

  With `label_input=True` (beyond the thesis) it also reads the example's given
  label, one-hot, embedded by a third Dense(E) + ReLU and concatenated with
  the other two before the hidden layer (which then reads 3E values). A loss
  means something else in a head class than in a tail class; knowing the
  label lets the advice depend on it, as CMW-Net's class-aware weighting
  does for Meta-Weight-Net (Shu et al., TPAMI 2023).

  With `example_weight=True` (beyond the thesis) a third sigmoid head reads
  out one weight `ω` per example from the loss embedding alone — Meta-Weight-
  Net's weight function (loss → E → 1) inside the advisor, learned by the
  same meta step — which (`AdvisorModel` normalises it to mean 1 over the
  batch) multiplies that example's training loss. The mask and the
  suppression change how an example is learned; `ω` decides how much it is:
  the per-example discount that instance-dependent noise calls for
  (docs/results.md, Fashion-MNIST). Read from the hidden layer (feature and
  loss) instead, it did not tell wrong labels from right ones (mean ω
  0.997 on wrong, 0.994 on right labels after 4 epochs of 6 000 images).

  Args:
    feature_dim: D, size of `f` and of `W_f`.
    num_classes: C, size of `s_k`; required when `class_weights=True`.
    embedding_size: E (100 in every experiment of the thesis).
    feature_mask: build the MFRW head `W_f`.
    class_weights: build the MES head `s_k`.
    label_input: also read the given label (needs `num_classes`).
    example_weight: build the per-example weight head `ω`.

  Call arguments:
    features: `(batch, D)`; treated as an observation (gradient stopped).
    losses: `(batch,)` or `(batch, 1)` per-example losses (gradient stopped).
    labels: `(batch,)` integer labels; required with `label_input=True`,
      ignored otherwise.

  Returns:
    A dict with `"mask"` `(batch, D)` and/or `"suppression"` `(batch, C)`,
    and `"weight"` `(batch,)` with `example_weight=True`.

  Example:
    >>> advisor = AdvisorNetwork(feature_dim=64, num_classes=10)
    >>> out = advisor(f, loss)  # out["mask"], out["suppression"]

  Reference:
    Ricci, Uricchio, Del Bimbo, "Learning advisor networks for noisy image
    classification", ICIAP 2021; thesis ch. 3.4.
  """

  def __init__(self, feature_dim, num_classes=None, embedding_size=100,
               feature_mask=True, class_weights=True, label_input=False,
               example_weight=False, **kwargs):
    super().__init__(**kwargs)
    if not (feature_mask or class_weights or example_weight):
      raise ValueError("AdvisorNetwork needs feature_mask, class_weights or "
                       "example_weight.")
    for flag, on in (("class_weights=True (MES)", class_weights),
                     ("label_input=True", label_input)):
      if on and not num_classes:
        raise ValueError(f"{flag} needs num_classes >= 2, got "
                         f"{num_classes}.")
    self.feature_dim = int(feature_dim)
    self.num_classes = None if num_classes is None else int(num_classes)
    self.embedding_size = int(embedding_size)
    self.feature_mask = bool(feature_mask)
    self.class_weights = bool(class_weights)
    self.label_input = bool(label_input)
    self.example_weight = bool(example_weight)
    e = self.embedding_size
    self.feature_embedding = keras.layers.Dense(e, activation="relu",
                                                name="feature_embedding",
                                                dtype=self.dtype_policy)
    self.loss_embedding = keras.layers.Dense(e, activation="relu",
                                             name="loss_embedding",
                                             dtype=self.dtype_policy)
    self.label_embedding = (
        keras.layers.Dense(e, activation="relu", name="label_embedding",
                           dtype=self.dtype_policy)
        if self.label_input else None)
    self.hidden = keras.layers.Dense(2 * e, activation="relu", name="hidden",
                                     dtype=self.dtype_policy)
    self.mask_head = (keras.layers.Dense(self.feature_dim, activation="sigmoid",
                                         name="mask_head",
                                         dtype=self.dtype_policy)
                      if self.feature_mask else None)
    self.suppression_head = (
        keras.layers.Dense(self.num_classes, activation="sigmoid",
                           name="suppression_head",
                           dtype=self.dtype_policy)
        if self.class_weights else None)
    self.weight_head = (keras.layers.Dense(1, activation="sigmoid",
                                           name="weight_head",
                                           dtype=self.dtype_policy)
                        if self.example_weight else None)

  def build(self, features_shape=None, losses_shape=None):
    self.feature_embedding.build((None, self.feature_dim))
    self.loss_embedding.build((None, 1))
    inputs = 2
    if self.label_embedding is not None:
      self.label_embedding.build((None, self.num_classes))
      inputs = 3
    self.hidden.build((None, inputs * self.embedding_size))
    for head in (self.mask_head, self.suppression_head):
      if head is not None:
        head.build((None, 2 * self.embedding_size))
    if self.weight_head is not None:
      self.weight_head.build((None, self.embedding_size))

  def call(self, features, losses, labels=None):
    features = ops.stop_gradient(ops.cast(features, self.compute_dtype))
    losses = ops.stop_gradient(
        ops.reshape(ops.cast(losses, self.compute_dtype), (-1, 1)))
    loss_embedded = self.loss_embedding(losses)
    parts = [self.feature_embedding(features), loss_embedded]
    if self.label_embedding is not None:
      if labels is None:
        raise ValueError("AdvisorNetwork(label_input=True) needs the labels.")
      parts.append(self.label_embedding(ops.one_hot(
          ops.reshape(ops.cast(labels, "int32"), (-1,)), self.num_classes,
          dtype=self.compute_dtype)))
    h = self.hidden(ops.concatenate(parts, -1))
    out = {}
    if self.mask_head is not None:
      out["mask"] = self.mask_head(h)
    if self.suppression_head is not None:
      out["suppression"] = self.suppression_head(h)
    if self.weight_head is not None:  # ω(L): from the loss alone.
      out["weight"] = ops.reshape(self.weight_head(loss_embedded), (-1,))
    return out

  def get_config(self):
    config = super().get_config()
    config.update(feature_dim=self.feature_dim, num_classes=self.num_classes,
                  embedding_size=self.embedding_size,
                  feature_mask=self.feature_mask,
                  class_weights=self.class_weights,
                  label_input=self.label_input,
                  example_weight=self.example_weight)
    return config


@keras.saving.register_keras_serializable(package="advisor_tf")
class MetaWeightNet(keras.layers.Layer):
  """Meta-Weight-Net (Shu et al., NeurIPS 2019): loss → weight in (0, 1).

  An MLP 1 → hidden → 1 with ReLU and a sigmoid output, applied to each
  example's (gradient-stopped) loss.

  Args:
    hidden_units: width of the hidden layer (100 in the paper).

  Call arguments:
    losses: `(batch,)` per-example losses.

  Returns:
    `(batch,)` example weights.
  """

  def __init__(self, hidden_units=100, **kwargs):
    super().__init__(**kwargs)
    self.hidden_units = int(hidden_units)
    self.hidden = keras.layers.Dense(self.hidden_units, activation="relu",
                                     name="hidden", dtype=self.dtype_policy)
    self.out = keras.layers.Dense(1, activation="sigmoid", name="weight",
                                  dtype=self.dtype_policy)

  def build(self, losses_shape=None):
    self.hidden.build((None, 1))
    self.out.build((None, self.hidden_units))

  def call(self, losses):
    losses = ops.stop_gradient(
        ops.reshape(ops.cast(losses, self.compute_dtype), (-1, 1)))
    return ops.reshape(self.out(self.hidden(losses)), (-1,))

  def get_config(self):
    config = super().get_config()
    config.update(hidden_units=self.hidden_units)
    return config


@keras.saving.register_keras_serializable(package="advisor_tf")
class FeatureReweighting(keras.layers.Layer):
  """Meta Feature Re-Weighting: `f_att = W_f ⊙ f` (thesis eq. 3.3).

  Applied during training only; at inference the classifier head sees the
  plain feature, so the exported model carries no trace of the advisor.

  Call arguments:
    features: `(batch, D)`.
    mask: `(batch, D)` attention weights from the advisor.
    training: when falsy, `features` is returned unchanged.
  """

  def call(self, features, mask, training=None):
    if not training:
      return features
    return features * ops.cast(mask, features.dtype)
