"""One training run, from a `TrainConfig` to a workdir. The CLI, the notebooks,
the experiments and the tests all call `train()`.

A workdir receives:
  config.json         the resolved configuration
  checkpoints/        tf.train checkpoints every --checkpoint_every steps and
                      at epoch ends (model, advisor, both optimizers)
  tensorboard/        Keras TensorBoard logs (train and validation/test curves,
                      advisor statistics) and the configuration as text;
                      tensorboard/advisor: W_f / s_k distributions per epoch
  advisor_trace.jsonl per-epoch advisor summary (telemetry.AdvisorTelemetry)
  metrics.json        test top-1, per-class accuracy, realised noise rate
  saved_model/        the classifier alone, as a SavedModel
"""

from __future__ import annotations

import json
import os

from absl import logging
import keras
import tensorflow as tf

from advisor_tf import backbones
from advisor_tf import distribute
from advisor_tf import evaluation
from advisor_tf import model as model_lib
from advisor_tf import telemetry
from advisor_tf.data import noise as noise_lib
from advisor_tf.data import pipeline
from advisor_tf.data import protocols
from advisor_tf.data import sources


def prepare_data(config):
  """Returns `(source, split)` for a configuration."""
  source = sources.load(config.dataset, config.data_dir, config.image_size)
  protocol = protocols.Protocol(
      noise=config.noise, noise_rate=config.noise_rate,
      flip_targets=config.flip_targets,
      imbalance_factor=config.imbalance_factor,
      meta_per_class=config.meta_per_class)
  meta_from = source.meta_split
  split = protocols.apply(
      protocol, source.labels["train"], source.num_classes, config.seed,
      similar=noise_lib.SIMILAR_CLASSES.get(source.name),
      meta_labels=None if meta_from == "train" else source.labels[meta_from],
      meta_from=meta_from)
  # Refuse impossible augmentation settings before anything is written.
  pipeline.strong_transform(source, config.autoaugment, config.cutout)
  return source, split


def total_steps(config, steps_per_epoch):
  return config.train_steps or config.epochs * steps_per_epoch


def learning_rate(config, steps_per_epoch):
  """The classifier's learning rate (a float or a Keras schedule in steps)."""
  if config.lr_schedule == "constant":
    return config.lr
  if config.lr_schedule == "cosine":
    return keras.optimizers.schedules.CosineDecay(
        config.lr, decay_steps=total_steps(config, steps_per_epoch))
  boundaries = (sorted(config.lr_decay_steps) or
                [e * steps_per_epoch for e in sorted(config.lr_decay_epochs)])
  values = [config.lr * config.lr_decay_factor ** i
            for i in range(len(boundaries) + 1)]
  return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def build_model(config, source, steps_per_epoch, class_counts=None):
  """The compiled `AdvisorModel`; call under the run's strategy scope."""
  body, head = backbones.build_classifier(
      config.backbone, source.image_shape, source.num_classes,
      weights=config.pretrained_weights)
  model = model_lib.AdvisorModel(
      body, head, mode=config.method, embedding_size=config.embedding_size,
      rho=config.rho, seed=config.seed, virtual_scope=config.virtual_scope,
      last_stage_prefixes=backbones.last_stage_prefixes(config.backbone),
      meta_update_every=config.meta_update_every,
      class_counts=class_counts, eql_threshold=config.eql_threshold,
      focal_gamma=config.focal_gamma)
  jit = {"auto": "auto", "true": True, "false": False}[config.jit_compile]
  optimizer = keras.optimizers.SGD(learning_rate(config, steps_per_epoch),
                                   momentum=config.momentum)
  advisor_optimizer = keras.optimizers.Adam(config.advisor_lr)
  if config.precision == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    # The meta loss reaches the advisor through the classifier's (already
    # scaled) second-order graph: start its own scale at 1.
    advisor_optimizer = keras.optimizers.LossScaleOptimizer(
        advisor_optimizer, initial_scale=1.0)
  model.compile(optimizer=optimizer, advisor_optimizer=advisor_optimizer,
                weight_decay=config.weight_decay, jit_compile=jit)
  return model


class Checkpointing(keras.callbacks.Callback):
  """Checkpoints every `every` steps and at epoch ends; stops the run at the
  first non-finite loss or hypergradient.

  `AdvisorModel` skips a non-finite update (default strategy), so the state
  saved on the way out is the last good one.
  """

  def __init__(self, manager, every, skips_nonfinite=True):
    super().__init__()
    self.manager = manager
    self.every = every
    self.skips_nonfinite = skips_nonfinite  # False under tf.distribute.
    self.last_saved = None

  def _step(self):
    return int(self.model.optimizer.iterations.numpy())

  def save(self):
    step = self._step()
    if step != self.last_saved:
      self.manager.save(checkpoint_number=step)
      self.last_saved = step

  def on_train_batch_end(self, batch, logs=None):
    logs = logs or {}
    bad = [name for key, name in (("nonfinite_loss", "training loss or "
                                   "classifier gradient"),
                                  ("nonfinite_meta", "meta loss or "
                                   "hypergradient"))
           if float(logs.get(key, 0.0)) > 0]
    if bad:
      step = self._step()
      first = (self.last_saved or 0) + 1
      if self.skips_nonfinite:
        self.save()
        kept = f"the last good state is saved as checkpoint ckpt-{step}"
      else:
        kept = (f"the last good state is checkpoint ckpt-{first - 1}"
                if first > 1 else "no checkpoint holds a good state yet")
      raise FloatingPointError(
          f"Non-finite {' and '.join(bad)} at a step in [{first}, "
          f"{step + 1}]; training stopped and {kept}. Lower --lr or "
          "--advisor_lr, or check the data.")
    if self.every and self._step() % self.every == 0:
      self.save()

  def on_epoch_end(self, epoch, logs=None):
    self.save()


def restore_latest(checkpoint, manager, partial=False):
  """Restores the newest readable checkpoint; returns its path or None.
  With `partial`, objects of the checkpoint that `checkpoint` lacks (e.g.
  the optimizers, when only analysing) are expected and not reported.

  A newest checkpoint that cannot be read (a partial or corrupted write) is
  reported and skipped in favour of the one before it.
  """
  for path in reversed(manager.checkpoints):
    try:
      status = checkpoint.restore(path).assert_existing_objects_matched()
      if partial:
        status.expect_partial()
      return path
    except Exception as e:  # noqa: BLE001 — any unreadable file: fall back.
      logging.warning("Checkpoint %s is unreadable (%s); trying the one "
                      "before it.", path, type(e).__name__)
  return None


def initialise_classifier(model, path):
  """Loads backbone and head weights from another run's checkpoint (its
  `checkpoints/` folder or one checkpoint prefix); the advisor and the
  optimizers start fresh."""
  prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
  if not prefix or not tf.io.gfile.glob(prefix + ".index"):
    raise ValueError(f"--init_checkpoint={path}: no checkpoint there.")
  source = tf.train.Checkpoint(model=tf.train.Checkpoint(
      backbone=model.backbone, head=model.head))
  source.restore(prefix).expect_partial().assert_existing_objects_matched()
  logging.warning("Initialised the classifier from %s.", prefix)


def _check_workdir(config):
  """Refuses to resume a workdir that holds another configuration."""
  path = os.path.join(config.workdir, "config.json")
  if not (os.path.exists(path) and tf.train.latest_checkpoint(
      os.path.join(config.workdir, "checkpoints"))):
    return
  with open(path) as f:
    saved = json.load(f)
  diffs = config.differences(saved)
  if diffs:
    raise ValueError(
        f"--workdir={config.workdir} holds a run with another configuration "
        f"and would resume it; differing flags: {'; '.join(diffs)}. Use a new "
        "--workdir, or the workdir's flags (its flags.txt works as a "
        "--flagfile).")


def evaluate(model, source, split_name, batch_size, train_counts=None):
  """The `evaluation.report` of the classifier on a split, keys prefixed
  `split/`."""
  logits = model.predict(pipeline.evaluation(source, split_name, batch_size),
                         verbose=0)
  result = evaluation.report(logits, source.labels[split_name],
                             source.num_classes, train_counts)
  return {f"{split_name}/{k}": v for k, v in result.items()}


def export_classifier(model, path):
  """Writes the plain classifier (no advisor) as a SavedModel at `path`."""
  model.classifier().export(path, verbose=False)
  return path


def train(config, flags_text=None):
  """Trains, evaluates and exports one run. Returns the metrics dict.

  Re-running with the same workdir resumes from its newest readable
  checkpoint — weights, advisor, both optimizers' slots, the schedule
  position, the data streams' position and the β draws — and ends with the
  same weights as an uninterrupted run (bit-identical on CPU with
  `deterministic`).
  """
  # Everything that can be refused is checked before anything is written.
  config.validate()
  source, split = prepare_data(config)
  steps = config.steps_per_epoch or (len(split.train_indices)
                                     // config.batch_size)
  pipeline.check_batch_sizes(split, config.batch_size, config.meta_batch_size)
  _check_workdir(config)
  os.makedirs(config.workdir, exist_ok=True)
  with open(os.path.join(config.workdir, "config.json"), "w") as f:
    f.write(config.to_json())
  if flags_text is not None:
    with open(os.path.join(config.workdir, "flags.txt"), "w") as f:
      f.write(flags_text)
  keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  previous_policy = keras.config.dtype_policy()
  keras.config.set_dtype_policy(config.precision)
  try:
    return _train(config, source, split, steps)
  finally:
    keras.config.set_dtype_policy(previous_policy)


def _train(config, source, split, steps):
  strategy = distribute.get_strategy(config.strategy)
  with strategy.scope():
    model = build_model(config, source, steps,
                        class_counts=split.class_counts(source.num_classes))
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=model.optimizer,
        advisor=model.advisor or tf.train.Checkpoint(),
        advisor_optimizer=model.advisor_optimizer or tf.train.Checkpoint(),
        beta_seed=model.seed_generator_state)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(config.workdir, "checkpoints"),
        max_to_keep=config.keep_checkpoints)
    restored = restore_latest(checkpoint, manager)
  start = int(model.optimizer.iterations.numpy())
  if restored:
    logging.warning("Resuming from %s (step %d).", restored, start)
  elif config.init_checkpoint:
    initialise_classifier(model, config.init_checkpoint)

  log_dir = os.path.join(config.workdir, "tensorboard")
  with tf.summary.create_file_writer(
      os.path.join(log_dir, "config")).as_default():
    tf.summary.text("config", "```\n" + config.to_json() + "\n```", step=0)
  callbacks = [keras.callbacks.TensorBoard(log_dir=log_dir),
               Checkpointing(manager, config.checkpoint_every,
                             skips_nonfinite=config.strategy == "default")]
  if model.advisor is not None and config.telemetry_examples:
    callbacks.append(telemetry.AdvisorTelemetry(
        source, split, config.workdir, config.telemetry_examples,
        config.seed, config.eval_batch_size))
  validation = pipeline.evaluation(source, "test", config.eval_batch_size)

  def fit(first_step, first_epoch, last_epoch, steps_per_epoch):
    data = pipeline.train_and_meta(source, split, config.batch_size,
                                   config.meta_batch_size, config.seed,
                                   start_step=first_step,
                                   augment=config.augment,
                                   autoaugment=config.autoaugment,
                                   cutout=config.cutout)
    model.fit(data, epochs=last_epoch, initial_epoch=first_epoch,
              steps_per_epoch=steps_per_epoch, validation_data=validation,
              callbacks=callbacks, verbose=config.verbose)

  resumed_from, last = start, total_steps(config, steps)
  while start < last:
    epoch, done = divmod(start, steps)
    if done or last - start < steps:  # A resumed or a final partial epoch.
      fit(start, epoch, epoch + 1, min(steps - done, last - start))
    else:
      fit(start, epoch, epoch + (last - start) // steps, steps)
    start = int(model.optimizer.iterations.numpy())

  metrics = {"method": config.method, "dataset": config.dataset,
             "train/examples": int(len(split.train_indices)),
             "meta/examples": int(len(split.meta_indices)),
             "train/realised_noise_rate": split.noise_rate,
             "train/steps": int(model.optimizer.iterations.numpy()),
             "resumed_from_step": resumed_from}
  metrics.update(evaluate(model, source, "test", config.eval_batch_size,
                          split.class_counts(source.num_classes)))
  with open(os.path.join(config.workdir, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=2)
  if config.export:
    export_classifier(model, os.path.join(config.workdir, "saved_model"))
  return metrics
