"""One training run, from a `TrainConfig` to a workdir. The CLI, the notebooks,
the experiments and the tests all call `train()`.

A workdir receives:
  config.json         the resolved configuration
  checkpoints/        tf.train checkpoints (model, both optimizers, epoch)
  tensorboard/        Keras TensorBoard logs (train and validation/test curves,
                      advisor statistics) and the configuration as text
  metrics.json        test top-1, per-class accuracy, realised noise rate
  saved_model/        the classifier alone, as a SavedModel
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from advisor_tf import backbones
from advisor_tf import model as model_lib
from advisor_tf.data import noise as noise_lib
from advisor_tf.data import pipeline
from advisor_tf.data import protocols
from advisor_tf.data import sources


def prepare_data(config):
  """Returns `(source, split)` for a configuration."""
  source = sources.load(config.dataset, config.data_dir)
  protocol = protocols.Protocol(
      noise=config.noise, noise_rate=config.noise_rate,
      flip_targets=config.flip_targets,
      imbalance_factor=config.imbalance_factor,
      meta_per_class=config.meta_per_class)
  split = protocols.apply(protocol, source.labels["train"], source.num_classes,
                          config.seed,
                          similar=noise_lib.SIMILAR_CLASSES.get(source.name))
  return source, split


def learning_rate(config, steps_per_epoch):
  """The classifier's learning rate (a float or a Keras schedule in steps)."""
  if config.lr_schedule == "constant":
    return config.lr
  if config.lr_schedule == "cosine":
    return keras.optimizers.schedules.CosineDecay(
        config.lr, decay_steps=config.epochs * steps_per_epoch)
  boundaries = [e * steps_per_epoch for e in sorted(config.lr_decay_epochs)]
  values = [config.lr * config.lr_decay_factor ** i
            for i in range(len(boundaries) + 1)]
  return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def build_model(config, source, steps_per_epoch):
  body, head = backbones.build_classifier(config.backbone, source.image_shape,
                                          source.num_classes)
  model = model_lib.AdvisorModel(body, head, mode=config.method,
                                 embedding_size=config.embedding_size,
                                 rho=config.rho, seed=config.seed)
  jit = {"auto": "auto", "true": True, "false": False}[config.jit_compile]
  model.compile(
      optimizer=keras.optimizers.SGD(learning_rate(config, steps_per_epoch),
                                     momentum=config.momentum),
      advisor_optimizer=keras.optimizers.Adam(config.advisor_lr),
      weight_decay=config.weight_decay, jit_compile=jit)
  return model


class EpochCheckpoint(keras.callbacks.Callback):
  """Saves a `tf.train.CheckpointManager` checkpoint at every epoch end."""

  def __init__(self, manager, epoch_variable):
    super().__init__()
    self.manager = manager
    self.epoch_variable = epoch_variable

  def on_epoch_end(self, epoch, logs=None):
    self.epoch_variable.assign(epoch + 1)
    self.manager.save(checkpoint_number=epoch + 1)


def evaluate(model, source, split_name, batch_size):
  """Top-1 and per-class accuracy (percent) of the classifier on a split."""
  labels = source.labels[split_name]
  logits = model.predict(pipeline.evaluation(source, split_name, batch_size),
                         verbose=0)
  predictions = np.argmax(logits, axis=-1)
  correct = predictions == labels
  per_class = [float(100.0 * correct[labels == c].mean())
               if np.any(labels == c) else float("nan")
               for c in range(source.num_classes)]
  return {f"{split_name}/top1": float(100.0 * correct.mean()),
          f"{split_name}/per_class_accuracy": per_class}


def export_classifier(model, path):
  """Writes the plain classifier (no advisor) as a SavedModel at `path`."""
  model.classifier().export(path, verbose=False)
  return path


def train(config):
  """Trains, evaluates and exports one run. Returns the metrics dict."""
  config.validate()
  os.makedirs(config.workdir, exist_ok=True)
  with open(os.path.join(config.workdir, "config.json"), "w") as f:
    f.write(config.to_json())
  keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()

  source, split = prepare_data(config)
  steps = config.steps_per_epoch or (len(split.train_indices)
                                     // config.batch_size)
  data = pipeline.train_and_meta(source, split, config.batch_size,
                                 config.meta_batch_size, config.seed)
  model = build_model(config, source, steps)

  epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
  checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                   advisor_optimizer=model.advisor_optimizer
                                   or tf.train.Checkpoint(), epoch=epoch)
  manager = tf.train.CheckpointManager(
      checkpoint, os.path.join(config.workdir, "checkpoints"), max_to_keep=3)
  if manager.latest_checkpoint:
    checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
  initial_epoch = int(epoch.numpy())

  log_dir = os.path.join(config.workdir, "tensorboard")
  with tf.summary.create_file_writer(os.path.join(log_dir, "config")).as_default():
    tf.summary.text("config", "```\n" + config.to_json() + "\n```", step=0)
  callbacks = [keras.callbacks.TensorBoard(log_dir=log_dir),
               EpochCheckpoint(manager, epoch)]
  if initial_epoch < config.epochs:
    model.fit(data, epochs=config.epochs, initial_epoch=initial_epoch,
              steps_per_epoch=steps,
              validation_data=pipeline.evaluation(source, "test",
                                                  config.eval_batch_size),
              callbacks=callbacks, verbose=config.verbose)

  metrics = {"method": config.method, "dataset": config.dataset,
             "train/examples": int(len(split.train_indices)),
             "meta/examples": int(len(split.meta_indices)),
             "train/realised_noise_rate": split.noise_rate}
  metrics.update(evaluate(model, source, "test", config.eval_batch_size))
  with open(os.path.join(config.workdir, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=2)
  if config.export:
    export_classifier(model, os.path.join(config.workdir, "saved_model"))
  return metrics
