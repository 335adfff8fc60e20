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

ADVISOR_MODES = ("mwnet", "mfrw", "mes", "mfrw_mes")
BASELINE_MODES = ("ce", "balanced_softmax", "eql", "focal")
MODES = ("ce", "mwnet", "mfrw", "mes", "mfrw_mes", "balanced_softmax", "eql",
         "focal")
VIRTUAL_SCOPES = ("all", "last_stage", "head")


def _per_example_ce(labels, logits):
  return keras.losses.sparse_categorical_crossentropy(
      labels, adv_losses.to_loss_precision(logits), from_logits=True)


def _num_replicas():
  return tf.distribute.get_strategy().num_replicas_in_sync


def _global_norm(tensors):
  return ops.sqrt(sum(ops.sum(ops.square(ops.cast(t, "float32")))
                      for t in tensors))


@tf.custom_gradient
def _scale_cotangent(x, scale):
  """Identity whose gradient is multiplied by `scale`."""
  def grad(upstream):
    return upstream * ops.cast(scale, upstream.dtype), None
  return x, grad


def _apply_if(ok, optimizer, grads, variables):
  """Applies the gradients only where `ok` (a scalar bool tensor) holds.

  Under a distribution strategy (even with one replica) the optimizer's
  cross-replica sum cannot sit inside a `tf.cond` (TensorFlow refuses
  `merge_call` there), so the update is applied unconditionally; the
  training loop still stops at the first non-finite step, and the last
  periodic checkpoint is the last good state.
  """
  if tf.distribute.has_strategy():
    _apply(optimizer, grads, variables)
    return

  def apply():
    _apply(optimizer, grads, variables)
    return ops.zeros(())
  tf.cond(ok, apply, lambda: ops.zeros(()))


def _is_loss_scaled(optimizer):
  return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def _scale_loss(optimizer, loss):
  return optimizer.scale_loss(loss) if _is_loss_scaled(optimizer) else loss


def _unscale(optimizer, grads):
  if not _is_loss_scaled(optimizer):
    return grads
  scale = optimizer.dynamic_scale
  return [None if g is None else g / ops.cast(scale, g.dtype) for g in grads]


def _apply(optimizer, grads, variables):
  """Applies already-unscaled gradients; a loss-scale optimizer re-scales them
  so that its own unscale-and-check (skip the step, shrink the scale on
  overflow) runs as usual."""
  if _is_loss_scaled(optimizer):
    scale = optimizer.dynamic_scale
    grads = [g * ops.cast(scale, g.dtype) for g in grads]
  optimizer.apply(grads, variables)


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
    virtual_scope: which classifier weights the virtual step moves: `all`
      (the exact method), `last_stage` (the backbone layers named by
      `last_stage_prefixes`, plus the head) or `head`. Narrower scopes cut the
      second-order work; the hypergradient is then that of the restricted
      virtual step.
    last_stage_prefixes: backbone layer-name prefixes forming its last stage.
    meta_update_every: update the advisor every k-th step only (k = 1: every
      step, the exact method); the other steps are plain actual steps.
    class_counts: training images per class (`balanced_softmax`, `eql`).
    eql_threshold: frequency threshold λ of `eql`.
    focal_gamma: γ of `focal`.

  `call(x)` is the plain classifier: the advisor is used only in `train_step`,
  which consumes `((x, y), (x_meta, y_meta))` batches.

  Example:
    >>> model = AdvisorModel(backbone, head, mode="mfrw_mes")
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
    ...               advisor_optimizer=keras.optimizers.Adam(1e-4))
    >>> model.fit(tf.data.Dataset.zip(train_ds, meta_ds), epochs=10)
  """

  def __init__(self, backbone, head, mode="mfrw_mes", advisor=None,
               embedding_size=100, rho=0.9, seed=None, virtual_scope="all",
               last_stage_prefixes=None, meta_update_every=1,
               class_counts=None, eql_threshold=0.01, focal_gamma=2.0,
               **kwargs):
    super().__init__(**kwargs)
    if mode in ("balanced_softmax", "eql") and class_counts is None:
      raise ValueError(f"mode {mode!r} needs class_counts (training images "
                       "per class).")
    self.class_counts = (None if class_counts is None
                         else [int(c) for c in class_counts])
    self.eql_threshold = float(eql_threshold)
    self.focal_gamma = float(focal_gamma)
    if mode not in MODES:
      raise ValueError(f"Unknown mode {mode!r}; allowed: {', '.join(MODES)}.")
    if virtual_scope not in VIRTUAL_SCOPES:
      raise ValueError(f"Unknown virtual_scope {virtual_scope!r}; allowed: "
                       f"{', '.join(VIRTUAL_SCOPES)}.")
    if virtual_scope == "last_stage" and not last_stage_prefixes:
      raise ValueError("virtual_scope='last_stage' needs last_stage_prefixes "
                       "(the backbone layer names of its last stage).")
    if int(meta_update_every) < 1:
      raise ValueError(f"meta_update_every must be >= 1, got "
                       f"{meta_update_every}.")
    self.virtual_scope = virtual_scope
    self.last_stage_prefixes = (tuple(last_stage_prefixes)
                                if last_stage_prefixes else None)
    self.meta_update_every = int(meta_update_every)
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
    if self.class_counts is not None and len(self.class_counts) != \
        int(head.output_shape[-1]):
      raise ValueError(f"class_counts has {len(self.class_counts)} entries, "
                       f"the head {int(head.output_shape[-1])} classes.")
    # Under a mixed-precision policy the advisor computes in the variables'
    # precision (float32), not in float16/bfloat16.
    advisor_dtype = keras.config.dtype_policy().variable_dtype
    if advisor is None and mode == "mwnet":
      advisor = adv_layers.MetaWeightNet(name="advisor", dtype=advisor_dtype)
    elif advisor is None and mode in ADVISOR_MODES:
      advisor = adv_layers.AdvisorNetwork(
          self.feature_dim, self.num_classes, self.embedding_size,
          feature_mask=self.uses_mask, class_weights=self.uses_mes,
          name="advisor", dtype=advisor_dtype)
    self.advisor = advisor
    self.reweight = adv_layers.FeatureReweighting(name="feature_reweighting")
    self._seed_generator = keras.random.SeedGenerator(seed)
    self.weight_decay = 0.0
    self.advisor_optimizer = None
    names = ["loss", "accuracy"]
    if self.mode in ADVISOR_MODES:
      names += ["meta_loss", "advisor_grad_norm"]
    if self.mode == "mwnet":
      names.append("example_weight_mean")
    if self.uses_mask:
      names.append("mask_mean")
    if self.uses_mes:
      names.append("suppression_mean")
    self._trackers = {n: (keras.metrics.SparseCategoricalAccuracy(name=n)
                          if n == "accuracy" else keras.metrics.Mean(name=n))
                      for n in names}
    for n in ("nonfinite_loss", "nonfinite_meta"):
      self._trackers[n] = keras.metrics.Sum(name=n)

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
    if self.meta_update_every > 1 and tf.distribute.has_strategy():
      raise ValueError(
          f"meta_update_every={self.meta_update_every} needs the default "
          "strategy (its conditional advisor update cannot hold the "
          "optimizer's cross-replica sum); use meta_update_every=1 under "
          "tf.distribute.")
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
    reweight = getattr(self, "reweight", None)
    if reweight is not None and not reweight.built:  # Weightless; Keras'
      reweight.build((None, self.feature_dim))  # distributed fit checks it.
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
  def seed_generator_state(self):
    """The state of the β draws (checkpointed for exact resumption)."""
    return self._seed_generator.state

  @property
  def classifier_variables(self):
    """Trainable variables of backbone + head (what ŵ and the SGD update)."""
    return self.backbone.trainable_variables + self.head.trainable_variables

  def classifier(self):
    """The plain classifier `head(backbone(x))` as a functional model."""
    inputs = keras.Input(shape=self.backbone.input_shape[1:], name="image")
    return keras.Model(inputs, self.head(self.backbone(inputs)),
                       name="classifier")

  def _virtual_flags(self):
    """Per classifier variable: does the virtual step move it?"""
    body = self.backbone.trainable_variables
    head = [True] * len(self.head.trainable_variables)
    if self.virtual_scope == "all":
      return [True] * len(body) + head
    if self.virtual_scope == "head":
      return [False] * len(body) + head
    stage = {id(v) for layer in self.backbone.layers
             if layer.name.startswith(self.last_stage_prefixes)
             for v in layer.trainable_variables}
    if not stage:
      raise ValueError(f"No backbone layer name starts with "
                       f"{self.last_stage_prefixes}; cannot form the last "
                       "stage for virtual_scope='last_stage'.")
    return [id(v) in stage for v in body] + head

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

  def _baseline_losses(self, labels, logits, ce):
    if self.mode == "balanced_softmax":
      return adv_losses.balanced_softmax(labels, logits, self.class_counts)
    if self.mode == "eql":
      return adv_losses.equalization_softmax(
          labels, logits, self.class_counts, self.eql_threshold,
          self._beta(ops.shape(logits)[0], force=True))
    if self.mode == "focal":
      return adv_losses.focal(labels, logits, self.focal_gamma)
    return ce

  def _beta(self, batch_size, force=False):
    if not (self.uses_mes or force) or self.rho >= 1.0:
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
      logits, head_updates = self._head_forward(head_w, features)
      ce = _per_example_ce(y, logits)  # L_pre = stop_gradient(ce) in Ψ.
      losses, _, _ = self._train_losses(head_w, features, logits, ce, y, beta)
      scaled_virtual_loss = _scale_loss(self.optimizer, ops.mean(losses))
    flags = self._virtual_flags()
    moved = [w for w, f in zip(weights, flags) if f]
    grads = virtual_tape.gradient(scaled_virtual_loss, moved)
    grads = [ops.zeros_like(w) if g is None else g for w, g in zip(moved, grads)]
    grads = _unscale(self.optimizer, grads)
    if _is_loss_scaled(self.optimizer):
      # float16: the hypergradient reaches the advisor back through these
      # gradients, whose cotangent the unscale divides by the loss scale —
      # underflowing in float16. Restore it on the way back (identity
      # forward); `_advisor_gradients` divides it out in float32.
      scale = ops.cast(self.optimizer.dynamic_scale, "float32")
      grads = [_scale_cotangent(g, scale) for g in grads]
    if _num_replicas() > 1:
      # Each replica saw its share of the batch: average the inner gradients
      # so that every replica takes the same virtual step (the all-reduce is
      # differentiable, so θ still sees the whole batch).
      grads = tf.distribute.get_replica_context().all_reduce("MEAN", grads)
    lr = self.optimizer.learning_rate
    grads = iter(grads)
    fast = [w - ops.cast(lr, w.dtype) * next(grads) if f else w
            for w, f in zip(weights, flags)]
    fast_body, fast_head = self._split(fast)
    meta_features, _ = self._backbone_forward(fast_body, x_meta)
    meta_logits, _ = self._head_forward(fast_head, meta_features)
    meta_loss = ops.mean(_per_example_ce(y_meta, meta_logits))
    return meta_loss, (weights, features, logits, ce, body_updates,
                       head_updates)

  def meta_gradient(self, x, y, x_meta, y_meta):
    """∇θ L_meta for one batch pair, changing no state (BatchNorm included).

    Returns:
      `(gradients, meta_loss)`, gradients aligned with
      `self.advisor.trainable_variables`.
    """
    if self.advisor is None:
      raise ValueError(f"mode {self.mode!r} has no advisor, hence no "
                       "meta-gradient.")
    y = ops.reshape(ops.cast(y, "int32"), (-1,))
    y_meta = ops.reshape(ops.cast(y_meta, "int32"), (-1,))
    with tf.GradientTape() as meta_tape:
      meta_loss, _ = self._virtual_and_meta(x, y, x_meta, y_meta,
                                            self._beta(ops.shape(x)[0]))
      scaled = self._scaled_meta_loss(meta_loss)
    return self._advisor_gradients(meta_tape, scaled), meta_loss

  def _scaled_meta_loss(self, meta_loss):
    """What the meta tape differentiates. Call it inside that tape."""
    # Keras optimizers sum gradients over replicas: scale by 1/replicas.
    return _scale_loss(self.advisor_optimizer, meta_loss / _num_replicas())

  def _advisor_gradients(self, meta_tape, scaled_meta_loss):
    variables = self.advisor.trainable_variables
    grads = meta_tape.gradient(scaled_meta_loss, variables)
    grads = [ops.zeros_like(v) if g is None else g
             for v, g in zip(variables, grads)]
    if _is_loss_scaled(self.optimizer):
      inner = ops.cast(self.optimizer.dynamic_scale, "float32")
      grads = [g / ops.cast(inner, g.dtype) for g in grads]
    return _unscale(self.advisor_optimizer, grads)

  def _meta_update(self, x, y, x_meta, y_meta, beta):
    """Steps 1–3 alone (own forward); used when meta_update_every > 1."""
    with tf.GradientTape() as meta_tape:
      meta_loss, _ = self._virtual_and_meta(x, y, x_meta, y_meta, beta)
      scaled = self._scaled_meta_loss(meta_loss)
    grads = self._advisor_gradients(meta_tape, scaled)
    norm = _global_norm(grads)
    ok = self._finite(self.advisor_optimizer, meta_loss, norm)
    _apply_if(ok, self.advisor_optimizer, grads,
              self.advisor.trainable_variables)
    return meta_loss, norm, ok

  # --------------------------------------------------------------- train step
  def train_step(self, data):
    (x, y), (x_meta, y_meta) = data
    y = ops.reshape(ops.cast(y, "int32"), (-1,))
    y_meta = ops.reshape(ops.cast(y_meta, "int32"), (-1,))
    stats = {}
    meta_weight = 1.0
    meta_ok = ops.ones((), "bool")
    beta = self._beta(ops.shape(x)[0])
    with tf.GradientTape() as actual_tape:
      if self.advisor is not None and self.meta_update_every == 1:
        with tf.GradientTape() as meta_tape:
          meta_loss, shared = self._virtual_and_meta(x, y, x_meta, y_meta,
                                                     beta)
          scaled_meta = self._scaled_meta_loss(meta_loss)
        # The actual step reuses the train-batch forward: same w, same x.
        weights, features, logits, ce, body_updates, plain_head_updates = shared
        actual_tape.watch(weights)
        grads = self._advisor_gradients(meta_tape, scaled_meta)
        norm = _global_norm(grads)
        meta_ok = self._finite(self.advisor_optimizer, meta_loss, norm)
        _apply_if(meta_ok, self.advisor_optimizer, grads,
                  self.advisor.trainable_variables)
        stats["meta_loss"] = meta_loss
        stats["advisor_grad_norm"] = norm
      else:
        if self.advisor is not None:
          do_meta = ops.equal(
              self.optimizer.iterations % self.meta_update_every, 0)
          stats["meta_loss"], stats["advisor_grad_norm"], meta_ok = tf.cond(
              do_meta, lambda: self._meta_update(x, y, x_meta, y_meta, beta),
              lambda: (ops.zeros(()), ops.zeros(()), ops.ones((), "bool")))
          meta_weight = ops.cast(do_meta, "float32")
        weights = [v.value for v in self.classifier_variables]
        actual_tape.watch(weights)
        body_w, head_w = self._split(weights)
        features, body_updates = self._backbone_forward(body_w, x)
        logits, plain_head_updates = self._head_forward(head_w, features)
        ce = _per_example_ce(y, logits)
      if self.advisor is None:
        losses, head_updates = self._baseline_losses(y, logits, ce), None
      else:
        # Actual train with the advice recomputed at the updated θ′.
        losses, advisor_stats, head_updates = self._train_losses(
            self._split(weights)[1], features, logits, ce, y, beta)
        stats.update(advisor_stats)
      loss = ops.mean(losses)
      # Keras optimizers sum gradients over replicas: scale by 1/replicas.
      scaled = _scale_loss(self.optimizer, loss / _num_replicas())
    grads = actual_tape.gradient(scaled, weights)
    grads = _unscale(self.optimizer, grads)
    variables = self.classifier_variables
    if self.weight_decay:
      grads = [g + self.weight_decay / _num_replicas() * ops.cast(v, g.dtype)
               for g, v in zip(grads, variables)]
    # Fail-loud guard: a non-finite loss or gradient is not applied (nor are
    # that step's BatchNorm statistics), so the model keeps its last good
    # state; the `nonfinite_*` counters tell the training loop to stop.
    ok = self._finite(self.optimizer, loss, _global_norm(grads))
    _apply_if(ok, self.optimizer, grads, variables)
    self._commit(self.backbone, body_updates, ok)
    # The head's statistics (if it has any) come from the forward the actual
    # loss used: on the attended feature under MFRW, else on the plain one.
    self._commit(self.head, head_updates if head_updates is not None
                 else plain_head_updates, ok)
    self._trackers["nonfinite_loss"].update_state(
        ops.cast(ops.logical_not(ok), "float32"))
    self._trackers["nonfinite_meta"].update_state(
        ops.cast(ops.logical_not(meta_ok), "float32"))
    self._trackers["loss"].update_state(loss)
    self._trackers["accuracy"].update_state(y, logits)
    for name, value in stats.items():
      weight = meta_weight if name in ("meta_loss", "advisor_grad_norm") else 1
      self._trackers[name].update_state(value, sample_weight=weight)
    return {name: t.result() for name, t in self._trackers.items()}

  @staticmethod
  def _commit(model, updates, ok):
    for variable, value in zip(model.non_trainable_variables, updates):
      variable.assign(ops.where(ok, value, variable))

  @staticmethod
  def _finite(optimizer, loss, grad_norm):
    """Is this update safe? Under loss scaling an overflowing gradient is
    routine (the LossScaleOptimizer skips it and lowers its scale), so only
    the loss itself is checked there."""
    ok = ops.all(ops.isfinite(loss))
    if not _is_loss_scaled(optimizer):
      ok = ops.logical_and(ok, ops.isfinite(grad_norm))
    return ok

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
        "virtual_scope": self.virtual_scope,
        "last_stage_prefixes": self.last_stage_prefixes,
        "meta_update_every": self.meta_update_every,
        "class_counts": self.class_counts,
        "eql_threshold": self.eql_threshold, "focal_gamma": self.focal_gamma,
    }

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    for key in ("backbone", "head", "advisor"):
      if config.get(key) is not None:
        config[key] = keras.saving.deserialize_keras_object(config[key])
    return cls(**config)
