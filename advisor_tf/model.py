"""`AdvisorModel`: a classifier trained with a meta-learned advisor, in `fit()`.

One training iteration (thesis 2.4.4 / 3.4.4; DESIGN.md "The method,
precisely"), for a train batch (x, y), a clean meta batch (x_m, y_m), classifier
weights w = (wb, wc), advisor weights θ, learning rates α (classifier) and η
(advisor; the thesis calls it β, a letter MES uses for its Bernoulli draws).
Each step is one method of `AdvisorModel`, which `train_step` calls in order:

  1. Loss pre-calculation  `train_forward`   f = Φb(x; wb), L_pre = CE(Φc(f), y)
  2. Virtual train         `virtual_step`    ŵ(θ) = w − α ∇w L_train(w, θ)  (2.3)
  3. Meta train            `meta_step`       θ′ = θ − η ∇θ L_meta(ŵ(θ))     (2.4)
  4. Actual train          `actual_step`     w′ = w − α ∇w L_train(w, θ′)   (2.5)

L_train, the advised per-example loss, is `_train_loss` (the modes without an
advisor take theirs from `losses.baseline_loss`); L_meta is `_meta_loss`.

The forward of step 1 is computed once and shared by steps 2 and 4 (same
weights, same input, same values): it is a `TrainForward`, whose persistent
tape each later step re-enters to differentiate its own loss. Every forward goes
through `stateless_call`, so BatchNorm statistics are returned rather than
written; the model writes those of the real train batch once per iteration and
discards those of the virtual and meta passes.

With `advice="lagged"` step 4 uses the advice of step 2 (θ, not θ′): its
gradient is the virtual step's, so the actual backward is skipped.

The plumbing the steps share — loss scaling for float16, averaging over
replicas, the non-finite guard, BatchNorm commits — is in the module-level
helpers before the class; the named tuples the steps hand on come first.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
import tensorflow as tf
from keras import ops
# `stop_recording` (as `tf.recompute_grad` uses it): a checkpointed forward
# records nothing inside it on the tapes around it.
from tensorflow.python.eager import record as _tape_record

from advisor_tf import backbones as adv_backbones
from advisor_tf import layers as adv_layers
from advisor_tf import losses as adv_losses

ADVISOR_MODES = ("mwnet", "mfrw", "mes", "mfrw_mes")
BASELINE_MODES = adv_losses.BASELINE_MODES
MODES = ("ce", "mwnet", "mfrw", "mes", "mfrw_mes", "balanced_softmax", "eql",
         "focal")
VIRTUAL_SCOPES = ("all", "last_stage", "head")
ADVICE_MODES = ("exact", "lagged")
# Rematerialisation of the backbone (`remat`): none keeps every activation of
# the step alive for the backward passes; blocks keeps only the backbone's
# block boundaries and recomputes inside a block when a gradient needs it.
REMAT_MODES = ("none", "blocks")
# The advisor's Adam learning rate unless told otherwise: Meta-Weight-Net's
# own. The thesis' 1e-4 (every thesis flagfile sets it) suits runs of tens
# of thousands of steps; in a run of a few hundred (30 epochs of a small set)
# an advisor at 1e-4 barely leaves its initialisation and MFRW-MES falls
# behind plain cross-entropy on a long tail (results/dirty_labels.json).
DEFAULT_ADVISOR_LR = 1e-3


# ------------------------------------------------ what one step hands on
class TrainForward(NamedTuple):
  """Step 1: the train-batch forward at w, shared by steps 2 and 4."""
  tape: tf.GradientTape  # Persistent; recorded this forward. Re-entered by
  # the virtual and actual steps to record (and differentiate) their loss.
  weights: list  # w: the classifier's trainable values, backbone then head.
  features: Any  # f = Φb(x; wb).
  logits: Any  # Φc(f; wc), on the plain feature.
  ce: Any  # L_pre: per-example CE, the advisor's loss input.
  body_updates: list  # The backbone's BatchNorm statistics of this forward.
  head_updates: list  # The head's, of this plain-feature forward.
  keep: Any = None  # Per-example sample-selection weight (0/1), or None.


class TrainLoss(NamedTuple):
  """Per-example L_train at w, with the advisor at some θ (or a baseline)."""
  losses: Any  # (batch,)
  stats: dict  # Advisor statistics for the metrics (`mask_mean`, ...).
  head_updates: Any  # Head BatchNorm statistics of the attended-feature
  # forward under MFRW; None where the loss used the plain forward.


class VirtualStep(NamedTuple):
  """Step 2's result."""
  fast_weights: list  # ŵ(θ), one value per classifier variable.
  train_loss: TrainLoss  # L_train(w, θ), which ŵ descended.
  gradients: Any  # Lagged advice only: ∇w mean L_train(w, θ) for every
  # classifier variable (this replica's, unscaled); else None.


class MetaUpdate(NamedTuple):
  """Step 3's result (zeros and ok=True on iterations that skip it)."""
  meta_loss: Any
  grad_norm: Any  # Global norm of ∇θ L_meta.
  ok: Any  # Was it finite, hence applied?


class ActualStep(NamedTuple):
  """Step 4's result."""
  loss: Any  # mean L_train of the applied gradient.
  stats: dict
  ok: Any


# ---------------------------------------------------------------- plumbing
def _keras_reducible(logs):
  """The step's logs in the shape Keras' fit() can reduce. Across several
  workers (MultiWorkerMirroredStrategy) Keras reduces each log with
  `strategy.reduce("MEAN", log, axis=0)`, which fails on a scalar
  (tensorflow/tensorflow#72388): give each log a length-1 axis there, so
  the reduction is the mean over every replica, as on one host."""
  strategy = tf.distribute.get_strategy()
  if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
          # Keras' own test for its multi-worker reduction.
          and strategy.extended._in_multi_worker_mode()):  # noqa: SLF001
    return logs
  return {name: ops.reshape(value, (1,)) for name, value in logs.items()}


def _int_labels(labels):
  return ops.reshape(ops.cast(labels, "int32"), (-1,))


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


def _finite(optimizer, loss, grad_norm):
  """Is this update safe? Under loss scaling an overflowing gradient is
  routine (the LossScaleOptimizer skips it and lowers its scale), so only
  the loss itself is checked there."""
  ok = ops.all(ops.isfinite(loss))
  if not _is_loss_scaled(optimizer):
    ok = ops.logical_and(ok, ops.isfinite(grad_norm))
  return ok


def _virtual_gradients_across_replicas(optimizer, grads):
  """The virtual step's (unscaled) gradients, made ready to build ŵ(θ) from:
  the same on every replica, and with a float16 hypergradient that survives."""
  if _is_loss_scaled(optimizer):
    # float16: the hypergradient reaches the advisor back through these
    # gradients, whose cotangent the unscale divides by the loss scale —
    # underflowing in float16. Restore it on the way back (identity
    # forward); `AdvisorModel._hypergradient` divides it out in float32.
    scale = ops.cast(optimizer.dynamic_scale, "float32")
    grads = [_scale_cotangent(g, scale) for g in grads]
  if _num_replicas() > 1:
    # Each replica saw its share of the batch: average the inner gradients
    # so that every replica takes the same virtual step (the all-reduce is
    # differentiable, so θ still sees the whole batch).
    grads = tf.distribute.get_replica_context().all_reduce("MEAN", grads)
  return grads


def _commit(model, updates, ok):
  """Writes `model`'s non-trainable (BatchNorm) values where `ok` holds."""
  for variable, value in zip(model.non_trainable_variables, updates):
    variable.assign(ops.where(ok, value, variable))


# --------------------------------------------------------- rematerialisation
# `remat="blocks"`: the backbone runs as a chain of segments (`backbones.
# remat_segments`: residual blocks, or conv-BN-ReLU groups). Each segment is
# one custom-gradient op that keeps only its input (and its weights): a
# gradient recomputes the segment's forward. Under the exact meta step the
# virtual step's backward is itself differentiated (the second-order pass), so
# the segment's backward is also one custom-gradient op — keeping only its
# input, weights and output cotangent — whose own gradient recomputes the
# segment's forward and backward. The values are those of the plain step (the
# same operations on the same inputs); only what stays alive between the
# passes changes.
def _after(x, *signals):
  """`x`, made to depend on `signals` (identity in value): a recomputation
  waits until the backward pass reaches it (the graph runtime would otherwise
  start every segment's recomputation as soon as its input exists, and the
  graph optimiser could merge it with the forward it repeats). As
  `tf.recompute_grad` does: a NaN in the signal's first element is passed on."""
  signal = next(s for s in signals if s is not None)
  first = ops.reshape(signal, (-1,))[:1]
  zero = tf.reduce_sum(tf.where(tf.equal(first, first),
                                tf.zeros_like(first),
                                tf.fill(tf.shape(first),
                                        tf.constant(float("nan"),
                                                    first.dtype))))
  return x + ops.cast(zero, x.dtype)


def _segment_forward(segment, x, weights, non_trainable):
  return segment.model.stateless_call(list(weights), list(non_trainable), x,
                                      training=True)


def _segment_vjp(segment, x, weights, non_trainable, dy, input_grad):
  """(∂y/∂x)ᵀ dy (where `input_grad`) and (∂y/∂w)ᵀ dy of one segment, its
  forward recomputed under a local tape (after `dy` exists)."""
  with tf.GradientTape() as tape:
    x = _after(x, dy)
    tape.watch(x)
    tape.watch(weights)
    y, _ = _segment_forward(segment, x, weights, non_trainable)
  sources = ([x] if input_grad else []) + list(weights)
  return tape.gradient(y, sources, output_gradients=dy,
                       unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _checkpointed_vjp(segment, x, weights, non_trainable, dy, input_grad):
  """`_segment_vjp` as one differentiable op that keeps only its inputs: its
  gradient (the second-order pass) recomputes the segment's forward and
  backward under two local tapes.

  That gradient is taken with respect to `dy` only. In the step, the
  segment's input `x` and weights `w` come from the train forward, which runs
  before the meta tape starts: the meta tape sees them as constants, so only
  `dy` (through the advised loss) carries θ, and the plain step's
  second-order pass also follows `dy` alone. Differentiating this op with
  respect to `x` or `w` (a Hessian of the classifier) is not supported.
  """
  n = len(weights)

  @tf.custom_gradient
  def vjp(x, dy, *params):
    w, nt = list(params[:n]), list(params[n:])
    out = _segment_vjp(segment, x, w, nt, dy, input_grad)

    def grad(*cotangents):
      kept = [k for k, c in enumerate(cotangents) if c is not None]
      if not kept:
        return [None, None] + [None] * len(params)
      with tf.GradientTape() as outer:
        outer.watch(dy)
        again = _segment_vjp(segment, _after(x, *cotangents), w, nt,
                             dy, input_grad)
      d_dy = outer.gradient(
          [again[k] for k in kept], dy,
          output_gradients=[cotangents[k] for k in kept],
          unconnected_gradients=tf.UnconnectedGradients.ZERO)
      return [None, d_dy] + [None] * len(params)
    return out, grad
  return vjp(x, dy, *weights, *non_trainable)


def _checkpointed_forward(segment, x, weights, non_trainable, input_grad):
  """One segment's forward as one op that keeps only its inputs; returns
  `(y, non_trainable updates)`. The BatchNorm statistics are those of this
  forward; the recomputations' are discarded."""
  n = len(weights)

  @tf.custom_gradient
  def forward(x, *params):
    w, nt = list(params[:n]), list(params[n:])
    with _tape_record.stop_recording():
      y, updates = _segment_forward(segment, x, w, nt)

    def grad(dy, *unused_update_grads):
      del unused_update_grads  # The statistics are not differentiated.
      grads = _checkpointed_vjp(segment, x, w, nt, dy, input_grad)
      dx = grads[0] if input_grad else None
      return [dx] + list(grads[int(input_grad):]) + [None] * len(nt)
    return (y, *updates), grad
  y, *updates = forward(x, *weights, *non_trainable)
  return y, updates


class _Untracked:
  """A value held where Keras' and TensorFlow's trackers do not look."""

  def __init__(self, value):
    self.value = value


@keras.saving.register_keras_serializable(package="advisor_tf")
class AdvisorModel(keras.Model):
  """Classifier `head(backbone(x))` trained with a meta-learned advisor.

  Args:
    backbone: Keras model, image → feature vector `(batch, D)`.
    head: Keras model, feature → logits `(batch, C)`.
    mode: one of `MODES`: `ce`, `balanced_softmax`, `eql`, `focal` (the
      baselines, no advisor) or `mwnet`, `mfrw`, `mes`, `mfrw_mes`.
    advisor: optional advisor layer; by default an `AdvisorNetwork` with the
      heads the mode needs (or a `MetaWeightNet` for `mwnet`).
    embedding_size: E of the default advisor.
    advisor_label_input: the default `AdvisorNetwork` also reads each
      example's given label (`mfrw`, `mes`, `mfrw_mes`; beyond the thesis,
      see `AdvisorNetwork`). False: the thesis' advisor Ψ(f, L).
    advisor_example_weight: the default `AdvisorNetwork` also reads out a
      per-example weight ω(f, L) in (0, 1); the example's loss is multiplied
      by ω over its batch mean (`mfrw`, `mes`, `mfrw_mes`; beyond the
      thesis).
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
    advice: which advice the actual step follows: `exact` (the method: the
      advice of the advisor after its meta update, recomputed) or `lagged`
      (the advice the virtual step used, before the meta update: the actual
      step then reuses the virtual step's gradient and skips its own
      backward). Advisor modes only, with `meta_update_every=1`.

  `call(x)` is the plain classifier: the advisor is used only in `train_step`,
  which consumes `((x, y), (x_meta, y_meta))` batches.

  Example:
    >>> model = AdvisorModel(backbone, head, mode="mfrw_mes")
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
    ...               advisor_optimizer=keras.optimizers.Adam(1e-4))
    >>> model.fit(tf.data.Dataset.zip(train_ds, meta_ds), epochs=10)
  """

  def __init__(self, backbone, head, mode="mfrw_mes", advisor=None,
               embedding_size=100, advisor_label_input=False,
               advisor_example_weight=False, rho=0.9,
               seed=None, virtual_scope="all",
               last_stage_prefixes=None, meta_update_every=1,
               class_counts=None, eql_threshold=0.01, focal_gamma=2.0,
               advice="exact", remat="none", selection_examples=0,
               selection_relabel=False, **kwargs):
    super().__init__(**kwargs)
    if remat not in REMAT_MODES:
      raise ValueError(f"Unknown remat {remat!r}; allowed: "
                       f"{', '.join(REMAT_MODES)}.")
    self.remat = remat
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
    if advice not in ADVICE_MODES:
      raise ValueError(f"Unknown advice {advice!r}; allowed: "
                       f"{', '.join(ADVICE_MODES)}.")
    if advice != "exact" and mode not in ADVISOR_MODES:
      raise ValueError(f"advice={advice!r} needs an advisor; mode {mode!r} "
                       "has none, so advice must be 'exact'.")
    if advice == "lagged" and int(meta_update_every) != 1:
      raise ValueError("advice='lagged' reuses the virtual step of every "
                       "iteration, so it needs meta_update_every=1, got "
                       f"{meta_update_every}.")
    self.advice = advice
    self.virtual_scope = virtual_scope
    self.last_stage_prefixes = (tuple(last_stage_prefixes)
                                if last_stage_prefixes else None)
    self.meta_update_every = int(meta_update_every)
    self.backbone = backbone
    self.head = head
    self.mode = mode
    self.embedding_size = int(embedding_size)
    self.advisor_label_input = bool(advisor_label_input)
    self.advisor_example_weight = bool(advisor_example_weight)
    if self.advisor_example_weight and mode not in ("mfrw", "mes",
                                                    "mfrw_mes"):
      raise ValueError("advisor_example_weight needs an advisor network "
                       f"(mode mfrw, mes or mfrw_mes), got mode {mode!r}.")
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
          label_input=self.advisor_label_input,
          example_weight=self.advisor_example_weight, name="advisor",
          dtype=advisor_dtype)
    self.advisor = advisor
    # Sample selection: which training examples (by position) the loss
    # keeps, set between epochs (`trainer.SampleSelection`); a variable, so
    # a checkpoint taken within an epoch resumes with the epoch's selection.
    self.example_keep = None
    if selection_examples:
      self.example_keep = self.add_weight(
          shape=(int(selection_examples),), initializer="ones",
          trainable=False, name="example_keep")
    # Label correction (`--sample_selection=gmm_relabel`): per training
    # example the label it trains on instead of its given one, −1 for none.
    self.example_label = None
    if selection_examples and selection_relabel:
      self.example_label = self.add_weight(
          shape=(int(selection_examples),), dtype="int32",
          initializer=keras.initializers.Constant(-1), trainable=False,
          name="example_label")
    self.reweight = adv_layers.FeatureReweighting(name="feature_reweighting")
    self._seed_generator = keras.random.SeedGenerator(seed)
    self.weight_decay = 0.0
    self.advisor_optimizer = None
    names = ["loss", "accuracy"]
    if self.mode in ADVISOR_MODES:
      names += ["meta_loss", "advisor_grad_norm"]
    if self.mode == "mwnet" or self.advisor_example_weight:
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
      advisor_optimizer: the advisor's optimizer (default Adam at
        `DEFAULT_ADVISOR_LR`, 1e-3; the thesis used 1e-4).
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
          advisor_optimizer or keras.optimizers.Adam(DEFAULT_ADVISOR_LR))
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
    if self.remat != "none":
      self._remat_segments()  # Cut now, not while a step is traced.

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    # Keras' fit() under a tf.distribute strategy builds the model on a batch
    # it draws from the training iterator: that batch is never trained on
    # (each fit() call would skip one, so a resumed run would differ), and
    # under MultiWorkerMirroredStrategy the nested batch cannot be reduced.
    # Every part is built on known shapes in compile(); nothing to draw.
    del iterator, data_batch
    with self.distribute_strategy.scope():
      self._build_all()

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

  # --------------------------------------------------------- one iteration
  def train_step(self, data):
    """One iteration of the method on `((x, y), (x_meta, y_meta))`; with
    sample selection, `((x, y, positions), (x_meta, y_meta))`, the train
    examples' positions in the training set (with label correction, a
    position's `example_label`, where set, replaces its y)."""
    train, (x_meta, y_meta) = data
    x, y = train[0], train[1]
    y, y_meta = _int_labels(y), _int_labels(y_meta)
    keep = None
    if self.example_keep is not None and len(train) > 2:
      keep = ops.take(self.example_keep, train[2], axis=0)
      if self.example_label is not None:
        fixed = ops.take(self.example_label, train[2], axis=0)
        y = ops.where(fixed >= 0, fixed, y)
    beta = self._beta(ops.shape(x)[0])
    forward = self.train_forward(x, y, keep)  # Step 1.
    virtual, meta, meta_weight = None, None, 1.0
    if self.advisor is not None and self.meta_update_every == 1:
      virtual, meta = self.meta_step(forward, y, x_meta, y_meta, beta)
    elif self.advisor is not None:
      meta, meta_weight = self._meta_step_every_k(x, y, x_meta, y_meta, beta,
                                                  keep)
    actual = self.actual_step(
        forward, y, beta, lagged=virtual if self.advice == "lagged" else None)
    return self._record(y, forward.logits, actual, meta, meta_weight)

  def train_forward(self, x, labels, keep=None):
    """Step 1, loss pre-calculation: the train batch through the classifier
    at w, with the per-example loss the advisor reads (and `keep`, the
    batch's sample-selection weights, for the losses of steps 2 and 4).

        f = Φb(x; wb),   L_pre = CE(Φc(f; wc), y)

    Steps 2 and 4 reuse this forward (same w, same x); its persistent tape
    lets each of them differentiate its own loss through it.

    Returns:
      a `TrainForward`.
    """
    weights = [v.value for v in self.classifier_variables]
    body_w, head_w = self._split(weights)
    tape = tf.GradientTape(persistent=True)
    with tape:
      tape.watch(weights)
      features, body_updates = self._backbone_forward(body_w, x)
      logits, head_updates = self._head_forward(head_w, features)
      ce = adv_losses.cross_entropy(labels, logits)  # Ψ stops its gradient.
    return TrainForward(tape, weights, features, logits, ce, body_updates,
                        head_updates, keep)

  def virtual_step(self, forward, labels, beta, keep_gradients=False):
    """Step 2, virtual train: one plain SGD step of the classifier on the
    advised loss, kept differentiable in θ.

        ŵ(θ) = w − α ∇w L_train(w, θ)                      (thesis eq. 2.3)

    α is the classifier optimizer's current learning rate; no momentum, no
    weight decay. Only the weights of `virtual_scope` move (the others stay at
    w). Call it under the meta tape, so that ŵ reaches θ.

    Args:
      forward: the `TrainForward` of step 1.
      labels: the train labels.
      beta: the MES Bernoulli draws, or None.
      keep_gradients: also hand on ∇w L_train(w, θ) for every classifier
        variable (lagged advice reuses it as the actual step's gradient).

    Returns:
      a `VirtualStep`.
    """
    with forward.tape:
      train_loss = self._train_loss(forward, labels, beta)
      scaled = _scale_loss(self.optimizer, ops.mean(train_loss.losses))
    flags = self._virtual_flags()
    targets = (forward.weights if keep_gradients
               else [w for w, f in zip(forward.weights, flags) if f])
    grads = forward.tape.gradient(scaled, targets)
    grads = [ops.zeros_like(w) if g is None else g
             for w, g in zip(targets, grads)]
    grads = _unscale(self.optimizer, grads)
    kept = grads if keep_gradients else None
    if keep_gradients:
      grads = [g for g, f in zip(grads, flags) if f]
    grads = iter(_virtual_gradients_across_replicas(self.optimizer, grads))
    lr = self.optimizer.learning_rate
    fast = [w - ops.cast(lr, w.dtype) * next(grads) if f else w
            for w, f in zip(forward.weights, flags)]
    return VirtualStep(fast, train_loss, kept)

  def meta_step(self, forward, labels, x_meta, y_meta, beta):
    """Step 3, meta train: the advisor descends the clean meta loss of the
    virtually updated classifier.

        θ′ = θ − η ∇θ L_meta(ŵ(θ)),
        L_meta(ŵ) = mean_j CE(Φ(x_m,j; ŵ), y_m,j)           (thesis eq. 2.4)

    with the advisor's optimizer (Adam, η = 1e-4 in the thesis) taking the
    step. Runs step 2 inside, under the meta tape. The update is skipped
    where L_meta or ∇θ is not finite.

    Returns:
      `(VirtualStep, MetaUpdate)`.
    """
    grads, meta_loss, virtual = self._hypergradient(
        forward, labels, x_meta, y_meta, beta,
        keep_gradients=self.advice == "lagged")
    norm = _global_norm(grads)
    ok = _finite(self.advisor_optimizer, meta_loss, norm)
    _apply_if(ok, self.advisor_optimizer, grads,
              self.advisor.trainable_variables)
    return virtual, MetaUpdate(meta_loss, norm, ok)

  def actual_step(self, forward, labels, beta, lagged=None):
    """Step 4, actual train: the real classifier steps on the advice of the
    updated advisor.

        w′ = w − α ∇w L_train(w, θ′)                        (thesis eq. 2.5)

    taken by the classifier's own optimizer (SGD with momentum in the
    thesis), with the coupled weight decay λw added to the gradient.
    L_train is recomputed on the shared forward with the advisor at θ′ (the
    baselines: their own loss). The BatchNorm statistics of the forward that
    loss used are written with the update, and neither where it is not
    finite.

    Args:
      forward: the `TrainForward` of step 1.
      labels: the train labels.
      beta: the MES Bernoulli draws, or None.
      lagged: `advice="lagged"`: the `VirtualStep` whose L_train(w, θ) and
        gradient to reuse (θ in place of θ′, no backward of its own).

    Returns:
      an `ActualStep`.
    """
    if lagged is None:
      with forward.tape:
        train_loss = self._train_loss(forward, labels, beta)
        loss = ops.mean(train_loss.losses)
        # Keras optimizers sum gradients over replicas: scale by 1/replicas.
        scaled = _scale_loss(self.optimizer, loss / _num_replicas())
      grads = _unscale(self.optimizer,
                       forward.tape.gradient(scaled, forward.weights))
    else:
      train_loss = lagged.train_loss
      loss = ops.mean(train_loss.losses)
      grads = lagged.gradients  # ∇w of this replica's mean loss: the same
      if _num_replicas() > 1:  # 1/replicas as above.
        grads = [g / _num_replicas() for g in grads]
    variables = self.classifier_variables
    if self.weight_decay:
      grads = [g + self.weight_decay / _num_replicas() * ops.cast(v, g.dtype)
               for g, v in zip(grads, variables)]
    # Fail-loud guard: a non-finite loss or gradient is not applied (nor are
    # that step's BatchNorm statistics), so the model keeps its last good
    # state; the `nonfinite_*` counters tell the training loop to stop.
    ok = _finite(self.optimizer, loss, _global_norm(grads))
    _apply_if(ok, self.optimizer, grads, variables)
    _commit(self.backbone, forward.body_updates, ok)
    # The head's statistics (if it has any) come from the forward the actual
    # loss used: on the attended feature under MFRW, else on the plain one.
    _commit(self.head, forward.head_updates if train_loss.head_updates is None
            else train_loss.head_updates, ok)
    return ActualStep(loss, train_loss.stats, ok)

  # ------------------------------------------------------- the two losses
  def _train_loss(self, forward, labels, beta):
    """`_method_loss`, with sample selection's dropped examples at weight 0
    and the kept ones normalised to mean 1 over the batch (the step's size
    stays that of a full batch of kept examples)."""
    train_loss = self._method_loss(forward, labels, beta)
    if forward.keep is None:
      return train_loss
    keep = ops.cast(forward.keep, train_loss.losses.dtype)
    return train_loss._replace(
        losses=keep / (ops.mean(keep) + 1e-8) * train_loss.losses)

  def _method_loss(self, forward, labels, beta):
    """Per-example L_train(w, θ) on the shared forward, with the advisor at
    its current θ:

      mwnet  V(L_pre; θ) · CE(z, y)
      MFRW   the head sees W_f ⊙ f instead of f (a second head forward)
      MES    −log p_y with p_j = exp(z_j) / Σ_k ŵ_k exp(z_k), from s_k

    Without an advisor: the mode's `losses.baseline_loss`.

    Returns:
      a `TrainLoss`.
    """
    logits, ce = forward.logits, forward.ce
    if self.advisor is None:
      return TrainLoss(adv_losses.baseline_loss(
          self.mode, labels, logits, class_counts=self.class_counts,
          eql_threshold=self.eql_threshold, focal_gamma=self.focal_gamma,
          beta=beta), {}, None)
    stats = {}
    head_updates = None
    if self.mode == "mwnet":
      weights = self.advisor(ce)
      stats["example_weight_mean"] = ops.mean(weights)
      return TrainLoss(ops.cast(weights, ce.dtype) * ce, stats, None)
    advice = self.advise(forward.features, ce, labels)
    if self.uses_mask:
      stats["mask_mean"] = ops.mean(advice["mask"])
      attended = self.reweight(forward.features, advice["mask"], training=True)
      logits, head_updates = self._head_forward(
          self._split(forward.weights)[1], attended)
    if self.uses_mes:
      stats["suppression_mean"] = ops.mean(advice["suppression"])
      losses = adv_losses.meta_equalization_softmax(
          labels, logits, advice["suppression"], beta)
    else:
      losses = adv_losses.cross_entropy(labels, logits)
    if "weight" in advice:
      # ω normalised to mean 1 over the batch (as Meta-Weight-Net's and
      # L2RW's reference code normalise theirs): the advice says which
      # examples count more, not how large the step is. Unnormalised, the
      # meta-gradient raises every ω alike (a larger ω is a larger step) and
      # the sigmoid saturates at 1 within an epoch (Fashion-MNIST, instance
      # 0.4: mean ω 0.998 after epoch 1), discounting nothing.
      weight = ops.cast(advice["weight"], losses.dtype)
      stats["example_weight_mean"] = ops.mean(weight)
      losses = weight / (ops.mean(weight) + 1e-8) * losses
    return TrainLoss(losses, stats, head_updates)

  def advise(self, features, losses, labels):
    """The advisor's output dict for a batch (MFRW/MES modes). The labels
    reach only an advisor that reads them (`label_input`), so an advisor
    layer of the thesis' signature `call(features, losses)` still fits."""
    if getattr(self.advisor, "label_input", False):
      return self.advisor(features, losses, labels)
    return self.advisor(features, losses)

  def _meta_loss(self, fast_weights, x_meta, y_meta):
    """L_meta(ŵ) = mean_j CE(Φ(x_m,j; ŵ), y_m,j): plain feature, plain CE;
    the BatchNorm statistics of this pass are discarded."""
    fast_body, fast_head = self._split(fast_weights)
    meta_features, _ = self._backbone_forward(fast_body, x_meta)
    meta_logits, _ = self._head_forward(fast_head, meta_features)
    return ops.mean(adv_losses.cross_entropy(y_meta, meta_logits))

  # ------------------------------------------------------ the hypergradient
  def meta_gradient(self, x, y, x_meta, y_meta):
    """∇θ L_meta for one batch pair, changing no state (BatchNorm included).

    Returns:
      `(gradients, meta_loss)`, gradients aligned with
      `self.advisor.trainable_variables`.
    """
    if self.advisor is None:
      raise ValueError(f"mode {self.mode!r} has no advisor, hence no "
                       "meta-gradient.")
    y, y_meta = _int_labels(y), _int_labels(y_meta)
    grads, meta_loss, _ = self._hypergradient(
        self.train_forward(x, y), y, x_meta, y_meta,
        self._beta(ops.shape(x)[0]))
    return grads, meta_loss

  def _hypergradient(self, forward, labels, x_meta, y_meta, beta,
                     keep_gradients=False):
    """Steps 2 and 3 up to ∇θ L_meta(ŵ(θ)); returns (gradients, L_meta,
    VirtualStep), the gradients unscaled and in the advisor's order."""
    with tf.GradientTape() as meta_tape:
      virtual = self.virtual_step(forward, labels, beta, keep_gradients)
      meta_loss = self._meta_loss(virtual.fast_weights, x_meta, y_meta)
      # Keras optimizers sum gradients over replicas: scale by 1/replicas.
      scaled = _scale_loss(self.advisor_optimizer,
                           meta_loss / _num_replicas())
    variables = self.advisor.trainable_variables
    grads = meta_tape.gradient(scaled, variables)
    grads = [ops.zeros_like(v) if g is None else g
             for v, g in zip(variables, grads)]
    if _is_loss_scaled(self.optimizer):
      # Undo the restored inner loss scale (`_virtual_gradients_across_
      # replicas`), in float32.
      inner = ops.cast(self.optimizer.dynamic_scale, "float32")
      grads = [g / ops.cast(inner, g.dtype) for g in grads]
    return _unscale(self.advisor_optimizer, grads), meta_loss, virtual

  def _meta_step_every_k(self, x, y, x_meta, y_meta, beta, keep=None):
    """Step 3 on every `meta_update_every`-th iteration only. A conditional
    branch cannot share the train forward, so it runs its own.

    Returns:
      `(MetaUpdate, weight)`, weight 1.0 where the update ran, else 0.0.
    """
    due = ops.equal(self.optimizer.iterations % self.meta_update_every, 0)

    def update():
      return self.meta_step(self.train_forward(x, y, keep), y, x_meta,
                            y_meta, beta)[1]

    def skip():
      return MetaUpdate(ops.zeros(()), ops.zeros((), "float32"),
                        ops.ones((), "bool"))
    return tf.cond(due, update, skip), ops.cast(due, "float32")

  # ------------------------------------------------------------ the forwards
  def _split(self, values):
    n = len(self.backbone.trainable_variables)
    return values[:n], values[n:]

  def _backbone_forward(self, trainable, x):
    """`(features, BatchNorm statistics)` of the backbone at `trainable`;
    under `remat="blocks"` as a chain of checkpointed segments."""
    non_trainable = [v.value for v in self.backbone.non_trainable_variables]
    if self.remat == "none":
      return self.backbone.stateless_call(trainable, non_trainable, x,
                                          training=True)
    updates = [None] * len(non_trainable)
    x = ops.convert_to_tensor(x)
    for k, segment in enumerate(self._remat_segments()):
      x, new = _checkpointed_forward(
          segment, x, [trainable[i] for i in segment.trainable],
          [non_trainable[i] for i in segment.non_trainable],
          input_grad=k > 0)
      for i, value in zip(segment.non_trainable, new):
        updates[i] = value
    return x, updates

  def _remat_segments(self):
    """The backbone's `remat_segments`, cut once (outside any trace), kept
    out of Keras' and TensorFlow's tracking (they share the backbone's
    layers: no new variables, nothing new to save)."""
    cached = self.__dict__.get("_remat_cache")
    if cached is None:
      cached = _Untracked(adv_backbones.remat_segments(self.backbone))
      object.__setattr__(self, "_remat_cache", cached)
    return cached.value

  def _head_forward(self, trainable, features):
    return self.head.stateless_call(
        trainable, [v.value for v in self.head.non_trainable_variables],
        features, training=True)

  def _beta(self, batch_size):
    """β ~ Bernoulli(ρ) per example and class, for MES and `eql`; None when
    ρ = 1 (all ones)."""
    if not (self.uses_mes or self.mode == "eql") or self.rho >= 1.0:
      return None
    return adv_losses.bernoulli((batch_size, self.num_classes), self.rho,
                                self._seed_generator)

  def _record(self, labels, logits, actual, meta, meta_weight):
    """Updates the metrics; returns the logs of `train_step`."""
    stats = dict(actual.stats)
    meta_ok = ops.ones((), "bool")
    if meta is not None:
      stats["meta_loss"], stats["advisor_grad_norm"] = meta.meta_loss, \
          meta.grad_norm
      meta_ok = meta.ok
    self._trackers["nonfinite_loss"].update_state(
        ops.cast(ops.logical_not(actual.ok), "float32"))
    self._trackers["nonfinite_meta"].update_state(
        ops.cast(ops.logical_not(meta_ok), "float32"))
    self._trackers["loss"].update_state(actual.loss)
    self._trackers["accuracy"].update_state(labels, logits)
    for name, value in stats.items():
      weight = meta_weight if name in ("meta_loss", "advisor_grad_norm") else 1
      self._trackers[name].update_state(value, sample_weight=weight)
    return _keras_reducible({name: t.result()
                             for name, t in self._trackers.items()})

  # -------------------------------------------------------------- evaluation
  def test_step(self, data):
    x, y = data[0], data[1]
    y = _int_labels(y)
    logits = self(x, training=False)
    loss = ops.mean(adv_losses.cross_entropy(y, logits))
    self._trackers["loss"].update_state(loss)
    self._trackers["accuracy"].update_state(y, logits)
    return _keras_reducible({"loss": self._trackers["loss"].result(),
                             "accuracy": self._trackers["accuracy"].result()})

  def get_config(self):
    return {
        "backbone": keras.saving.serialize_keras_object(self.backbone),
        "head": keras.saving.serialize_keras_object(self.head),
        "advisor": keras.saving.serialize_keras_object(self.advisor),
        "mode": self.mode, "embedding_size": self.embedding_size,
        "advisor_label_input": self.advisor_label_input,
        "advisor_example_weight": self.advisor_example_weight,
        "rho": self.rho, "seed": self.seed, "name": self.name,
        "virtual_scope": self.virtual_scope,
        "last_stage_prefixes": self.last_stage_prefixes,
        "meta_update_every": self.meta_update_every,
        "class_counts": self.class_counts,
        "eql_threshold": self.eql_threshold, "focal_gamma": self.focal_gamma,
        "advice": self.advice, "remat": self.remat,
        "selection_examples": (0 if self.example_keep is None
                               else int(self.example_keep.shape[0])),
        "selection_relabel": self.example_label is not None,
    }

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    for key in ("backbone", "head", "advisor"):
      if config.get(key) is not None:
        config[key] = keras.saving.deserialize_keras_object(config[key])
    return cls(**config)
