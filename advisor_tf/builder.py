"""The one place an `AdvisorModel` is built from a `TrainConfig`.

Training, the reload of a finished run, the step-time benchmark and the tests
all call `build_model`, so what the benchmark times is what training runs:
same backbone, advisor, optimizers, loss scaling and XLA setting.

  >>> model = build_model(config, image_shape=(8, 8, 1), num_classes=10)
"""

from __future__ import annotations

import keras
import numpy as np

from advisor_tf import backbones
from advisor_tf import model as model_lib


def total_steps(config, steps_per_epoch):
  """Iterations of the whole run: `--train_steps`, else epochs × steps."""
  return config.train_steps or config.epochs * steps_per_epoch


def learning_rate(config, steps_per_epoch):
  """The classifier's learning rate (a float or a Keras schedule in steps)."""
  if config.lr_schedule == "constant":
    return config.lr
  if config.lr_schedule == "cosine":
    return keras.optimizers.schedules.CosineDecay(
        config.lr, decay_steps=total_steps(config, steps_per_epoch))
  boundaries = (sorted(config.lr_decay_steps) or
                [e * steps_per_epoch for e in sorted(config.decay_epochs())])
  values = [config.lr * config.lr_decay_factor ** i
            for i in range(len(boundaries) + 1)]
  return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def optimizers(config, steps_per_epoch):
  """`(classifier optimizer, advisor optimizer)` of a configuration.

  The classifier: SGD with momentum at `learning_rate(...)`; the advisor:
  Adam at `--advisor_lr`. Under `mixed_float16` both are wrapped in a
  `LossScaleOptimizer`; the advisor's starts at scale 1, because the meta loss
  reaches the advisor through the classifier's (already scaled)
  second-order graph.
  """
  optimizer = keras.optimizers.SGD(learning_rate(config, steps_per_epoch),
                                   momentum=config.momentum)
  advisor_optimizer = keras.optimizers.Adam(config.advisor_lr)
  if config.precision == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    advisor_optimizer = keras.optimizers.LossScaleOptimizer(
        advisor_optimizer, initial_scale=1.0)
  return optimizer, advisor_optimizer


def build_model(config, image_shape, num_classes, class_counts=None,
                steps_per_epoch=1, classifier=None, last_stage_prefixes=None):
  """The compiled `AdvisorModel` of a configuration.

  Call it under the run's strategy scope and dtype policy.

  Args:
    config: a `TrainConfig` (method, backbone, advisor, optimiser, speed
      settings are read from it).
    image_shape: `(H, W, channels)` of the model input.
    num_classes: C.
    class_counts: training images per class (needed by `balanced_softmax`
      and `eql`).
    steps_per_epoch: converts epoch-based schedules to steps.
    classifier: optional `(backbone, head)` Keras models used instead of the
      registry's `config.backbone` (tests use tiny custom networks).
    last_stage_prefixes: layer-name prefixes of the backbone's last stage
      (`--virtual_scope=last_stage`); default: those of `config.backbone`.

  Returns:
    The compiled model.
  """
  if classifier is None:
    classifier = backbones.build_classifier(
        config.backbone, image_shape, num_classes,
        weights=config.pretrained_weights)
  body, head = classifier
  model = model_lib.AdvisorModel(
      body, head, mode=config.method, embedding_size=config.embedding_size,
      advisor_label_input=config.advisor_label_input,
      advisor_example_weight=config.advisor_example_weight, rho=config.rho,
      seed=config.seed, virtual_scope=config.virtual_scope,
      last_stage_prefixes=(last_stage_prefixes or
                           backbones.last_stage_prefixes(config.backbone)),
      meta_update_every=config.meta_update_every,
      class_counts=class_counts, eql_threshold=config.eql_threshold,
      focal_gamma=config.focal_gamma, advice=config.advice,
      remat=config.remat,
      # One sample-selection weight per training example (their count).
      selection_examples=(int(np.sum(class_counts))
                          if config.sample_selection != "none" else 0),
      selection_relabel=config.sample_selection == "gmm_relabel")
  optimizer, advisor_optimizer = optimizers(config, steps_per_epoch)
  jit = {"auto": "auto", "true": True, "false": False}[config.jit_compile]
  model.compile(optimizer=optimizer, advisor_optimizer=advisor_optimizer,
                weight_decay=config.weight_decay, jit_compile=jit)
  return model
