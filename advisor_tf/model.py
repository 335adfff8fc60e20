"""`AdvisorModel`: a classifier trained with a meta-learned advisor, in `fit()`.

One training iteration (thesis 2.4.4 / 3.4.4; DESIGN.md "The method,
precisely"), for a train batch (x, y) and a clean meta batch (x_m, y_m):

1. Loss pre-calculation: f = Φb(x; wb), L_pre = CE(Φc(f), y), no gradient.
2. Virtual train: ŵ(θ) = w − α ∇w L_train(w, θ), plain SGD at the classifier's
   current learning rate, differentiable in θ (nested tapes).
3. Meta train: θ ← advisor optimizer step on ∇θ CE(Φ(x_m; ŵ(θ)), y_m).
4. Actual train: the real classifier steps on L_train(w, θ′).

The backbone forward on the train batch is computed once and shared by all
three uses (pre-calculation, virtual step, actual step): the weights and the
input are the same, so the values are too. Every forward goes through
`stateless_call`, so BatchNorm statistics are returned rather than written;
the model writes the ones from the real train batch once per iteration and
discards those of the virtual and meta passes.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from advisor_tf import layers as adv_layers
from advisor_tf import losses as adv_losses

MODES = ("ce", "mwnet", "mfrw", "mes", "mfrw_mes")


def _per_example_ce(labels, logits):
  return keras.losses.sparse_categorical_crossentropy(
      labels, adv_losses.to_loss_precision(logits), from_logits=True)


@keras.saving.register_keras_serializable(package="advisor_tf")
class AdvisorModel(keras.Model):
  """Classifier `head(backbone(x))` trained with a meta-learned advisor.

  Args:
    backbone: Keras model, image → feature vector `(batch, D)`.
    head: Keras model, feature → logits `(batch, C)`.
    mode: one of `ce`, `mwnet`, `mfrw`, `mes`, `mfrw_mes`.
    advisor: optional advisor layer; by default an `AdvisorNetwork` with the
      heads the mode needs (or a `MetaWeightNet` for `mwnet`).
    embedding_size: E of the default advisor.
    rho: P(β = 1) in MES; `rho=1` makes a step deterministic.
    seed: seed of the β draws.

  `call(x)` is the plain classifier: the advisor is used only in `train_step`,
  which consumes `((x, y), (x_meta, y_meta))` batches.

  Example:
    >>> model = AdvisorModel(backbone, head, mode="mfrw_mes")
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
    ...               advisor_optimizer=keras.optimizers.Adam(1e-4))
    >>> model.fit(tf.data.Dataset.zip(train_ds, meta_ds), epochs=10)
  """

  def __init__(self, backbone, head, mode="mfrw_mes", advisor=None,
               embedding_size=100, rho=0.9, seed=None, **kwargs):
    super().__init__(**kwargs)
    if mode not in MODES:
      raise ValueError(f"Unknown mode {mode!r}; allowed: {', '.join(MODES)}.")
    self.backbone = backbone
    self.head = head
    self.mode = mode
    self.embedding_size = int(embedding_size)
    self.rho = float(rho)
    self.seed = seed
    self.feature_dim = int(backbone.output_shape[-1])
    self.num_classes = int(head.output_shape[-1])
    self.uses_mask = mode in ("mfrw", "mfrw_mes")
    self.uses_mes = mode in ("mes", "mfrw_mes")
    if advisor is None and mode == "mwnet":
      advisor = adv_layers.MetaWeightNet(name="advisor")
    elif advisor is None and mode != "ce":
      advisor = adv_layers.AdvisorNetwork(
          self.feature_dim, self.num_classes, self.embedding_size,
          feature_mask=self.uses_mask, class_weights=self.uses_mes,
          name="advisor")
    self.advisor = advisor
    self.reweight = adv_layers.FeatureReweighting(name="feature_reweighting")
    self._seed_generator = keras.random.SeedGenerator(seed)
    self.weight_decay = 0.0
    self.advisor_optimizer = None
    names = ["loss", "accuracy"]
    if self.mode != "ce":
      names.append("meta_loss")
    if self.mode == "mwnet":
      names.append("example_weight_mean")
    if self.uses_mask:
      names.append("mask_mean")
    if self.uses_mes:
      names.append("suppression_mean")
    self._trackers = {n: (keras.metrics.SparseCategoricalAccuracy(name=n)
                          if n == "accuracy" else keras.metrics.Mean(name=n))
                      for n in names}

  # ----------------------------------------------------------------- Keras API
  def call(self, inputs, training=False):
    return self.head(self.backbone(inputs, training=training),
                     training=training)

  def compile(self, optimizer="sgd", advisor_optimizer=None, weight_decay=0.0,
              **kwargs):
    """Configures both optimizers.

    Args:
      optimizer: the classifier's optimizer (SGD with momentum in the thesis).
        Its current learning rate — schedules included — is also the step
        size α of the virtual SGD step.
      advisor_optimizer: the advisor's optimizer (default Adam, lr 1e-4).
      weight_decay: L2 coefficient added to the classifier's gradients before
        its optimizer (coupled, as PyTorch `SGD(weight_decay=...)` in the
        reference code; Keras' own `weight_decay` is decoupled). Not applied
        to the virtual step, which is plain SGD.
      **kwargs: passed to `keras.Model.compile` (`jit_compile`,
        `steps_per_execution`, ...). Losses and metrics are fixed by the mode.
    """
    if kwargs.get("loss") is not None:
      raise ValueError("AdvisorModel fixes its losses by `mode`; do not pass "
                       "`loss` to compile().")
    kwargs.pop("loss", None)
    kwargs.pop("metrics", None)
    super().compile(optimizer=optimizer, **kwargs)
    self.weight_decay = float(weight_decay)
    if self.advisor is not None:
      self.advisor_optimizer = keras.optimizers.get(
          advisor_optimizer or keras.optimizers.Adam(1e-4))
    self._build_all()

  def _build_all(self):
    # fit() on ((x, y), (x_m, y_m)) would otherwise try to build the model by
    # calling it on the nested tuple: build every part on known shapes here.
    if not self.built:
      self.build((None,) + tuple(self.backbone.input_shape[1:]))
    if self.advisor is not None and not self.advisor.built:
      if self.mode == "mwnet":
        self.advisor.build((None,))
      else:
        self.advisor.build((None, self.feature_dim), (None,))
    self.optimizer.build(self.classifier_variables)
    if self.advisor is not None:
      self.advisor_optimizer.build(self.advisor.trainable_variables)

  def build(self, input_shape):
    self.backbone.build(input_shape)
    self.head.build((None, self.feature_dim))
    self.built = True

  @property
  def metrics(self):
    return list(self._trackers.values())

  @property
  def classifier_variables(self):
    """Trainable variables of backbone + head (what ŵ and the SGD update)."""
    return self.backbone.trainable_variables + self.head.trainable_variables

  def classifier(self):
    """The plain classifier `head(backbone(x))` as a functional model."""
    inputs = keras.Input(shape=self.backbone.input_shape[1:], name="image")
    return keras.Model(inputs, self.head(self.backbone(inputs)),
                       name="classifier")

  # ------------------------------------------------------------- the forwards
  def _split(self, values):
    n = len(self.backbone.trainable_variables)
    return values[:n], values[n:]

  def _backbone_forward(self, trainable, x):
    return self.backbone.stateless_call(
        trainable, [v.value for v in self.backbone.non_trainable_variables],
        x, training=True)

  def _head_forward(self, trainable, features):
    return self.head.stateless_call(
        trainable, [v.value for v in self.head.non_trainable_variables],
        features, training=True)

  def _train_losses(self, head_vars, features, logits, ce, labels, beta):
    """Per-example L_train with the advisor at its current θ.

    Returns (losses, advisor statistics, head non-trainable updates).
    """
    stats = {}
    head_updates = None
    if self.mode == "mwnet":
      weights = self.advisor(ce)
      stats["example_weight_mean"] = ops.mean(weights)
      return ops.cast(weights, ce.dtype) * ce, stats, head_updates
    advice = self.advisor(features, ce)
    if self.uses_mask:
      stats["mask_mean"] = ops.mean(advice["mask"])
      attended = self.reweight(features, advice["mask"], training=True)
      logits, head_updates = self._head_forward(head_vars, attended)
    if self.uses_mes:
      stats["suppression_mean"] = ops.mean(advice["suppression"])
      losses = adv_losses.meta_equalization_softmax(
          labels, logits, advice["suppression"], beta)
    else:
      losses = _per_example_ce(labels, logits)
    return losses, stats, head_updates

  def _beta(self, batch_size):
    if not self.uses_mes or self.rho >= 1.0:
      return None
    return adv_losses.bernoulli((batch_size, self.num_classes), self.rho,
                                self._seed_generator)

  def _virtual_and_meta(self, x, y, x_meta, y_meta, beta):
    """Steps 1–3 up to L_meta; returns what the actual step can reuse.

    Must run under the caller's tapes: the meta tape (for θ) and, in
    `train_step`, the actual-step tape that reuses the backbone forward.
    """
    weights = [v.value for v in self.classifier_variables]
    body_w, head_w = self._split(weights)
    with tf.GradientTape() as virtual_tape:
      virtual_tape.watch(weights)
      features, body_updates = self._backbone_forward(body_w, x)
      logits, _ = self._head_forward(head_w, features)
      ce = _per_example_ce(y, logits)  # L_pre = stop_gradient(ce) in Ψ.
      losses, _, _ = self._train_losses(head_w, features, logits, ce, y, beta)
      virtual_loss = ops.mean(losses)
    grads = virtual_tape.gradient(virtual_loss, weights)
    lr = self.optimizer.learning_rate
    fast = [w if g is None else w - ops.cast(lr, w.dtype) * g
            for w, g in zip(weights, grads)]
    fast_body, fast_head = self._split(fast)
    meta_features, _ = self._backbone_forward(fast_body, x_meta)
    meta_logits, _ = self._head_forward(fast_head, meta_features)
    meta_loss = ops.mean(_per_example_ce(y_meta, meta_logits))
    return meta_loss, (weights, features, logits, ce, body_updates)

  def meta_gradient(self, x, y, x_meta, y_meta):
    """∇θ L_meta for one batch pair, changing no state (BatchNorm included).

    Returns:
      `(gradients, meta_loss)`, gradients aligned with
      `self.advisor.trainable_variables`.
    """
    if self.advisor is None:
      raise ValueError("mode 'ce' has no advisor, hence no meta-gradient.")
    y = ops.reshape(ops.cast(y, "int32"), (-1,))
    y_meta = ops.reshape(ops.cast(y_meta, "int32"), (-1,))
    advisor_vars = self.advisor.trainable_variables
    with tf.GradientTape() as meta_tape:
      meta_loss, _ = self._virtual_and_meta(x, y, x_meta, y_meta,
                                            self._beta(ops.shape(x)[0]))
    grads = meta_tape.gradient(meta_loss, advisor_vars)
    return [ops.zeros_like(v) if g is None else g
            for v, g in zip(advisor_vars, grads)], meta_loss

  # --------------------------------------------------------------- train step
  def train_step(self, data):
    (x, y), (x_meta, y_meta) = data
    y = ops.reshape(ops.cast(y, "int32"), (-1,))
    y_meta = ops.reshape(ops.cast(y_meta, "int32"), (-1,))
    stats = {}
    with tf.GradientTape() as actual_tape:
      if self.advisor is None:
        weights = [v.value for v in self.classifier_variables]
        body_w, head_w = self._split(weights)
        actual_tape.watch(weights)
        features, body_updates = self._backbone_forward(body_w, x)
        logits, head_updates = self._head_forward(head_w, features)
        losses = _per_example_ce(y, logits)
      else:
        advisor_vars = self.advisor.trainable_variables
        beta = self._beta(ops.shape(x)[0])
        with tf.GradientTape() as meta_tape:
          meta_loss, shared = self._virtual_and_meta(x, y, x_meta, y_meta, beta)
        weights, features, logits, ce, body_updates = shared
        actual_tape.watch(weights)
        advisor_grads = meta_tape.gradient(meta_loss, advisor_vars)
        advisor_grads = [ops.zeros_like(v) if g is None else g
                         for v, g in zip(advisor_vars, advisor_grads)]
        self.advisor_optimizer.apply(advisor_grads, advisor_vars)
        stats["meta_loss"] = meta_loss
        # Actual train: same features and logits (same w, same x), advice
        # recomputed with the updated θ′.
        losses, advisor_stats, head_updates = self._train_losses(
            self._split(weights)[1], features, logits, ce, y, beta)
        stats.update(advisor_stats)
      loss = ops.mean(losses)
    grads = actual_tape.gradient(loss, weights)
    variables = self.classifier_variables
    if self.weight_decay:
      grads = [g + self.weight_decay * ops.cast(v, g.dtype)
               for g, v in zip(grads, variables)]
    self.optimizer.apply(grads, variables)
    self._commit(self.backbone, body_updates)
    if head_updates is not None:
      self._commit(self.head, head_updates)
    self._trackers["loss"].update_state(loss)
    self._trackers["accuracy"].update_state(y, logits)
    for name, value in stats.items():
      self._trackers[name].update_state(value)
    return {name: t.result() for name, t in self._trackers.items()}

  @staticmethod
  def _commit(model, updates):
    for variable, value in zip(model.non_trainable_variables, updates):
      variable.assign(value)

  def test_step(self, data):
    x, y = data[0], data[1]
    y = ops.reshape(ops.cast(y, "int32"), (-1,))
    logits = self(x, training=False)
    loss = ops.mean(_per_example_ce(y, logits))
    self._trackers["loss"].update_state(loss)
    self._trackers["accuracy"].update_state(y, logits)
    return {"loss": self._trackers["loss"].result(),
            "accuracy": self._trackers["accuracy"].result()}

  def get_config(self):
    return {
        "backbone": keras.saving.serialize_keras_object(self.backbone),
        "head": keras.saving.serialize_keras_object(self.head),
        "advisor": keras.saving.serialize_keras_object(self.advisor),
        "mode": self.mode, "embedding_size": self.embedding_size,
        "rho": self.rho, "seed": self.seed, "name": self.name,
    }

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    for key in ("backbone", "head", "advisor"):
      if config.get(key) is not None:
        config[key] = keras.saving.deserialize_keras_object(config[key])
    return cls(**config)
