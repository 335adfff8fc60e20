r"""Re-evaluate a run on any split, from its checkpoint or its export.

  python -m advisor_tf.evaluate --workdir=runs/quickstart [--split=test] \
      [--model=checkpoint|saved_model]

Rebuilds the run's data from its `config.json` (same seed, same split),
computes top-1/3/5, per-class and many/medium/few-shot accuracy and the
confusion matrix, prints a summary and writes `eval_<split>_<model>.json`.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The run to evaluate.")
_SPLIT = flags.DEFINE_string("split", "test", "Split of the run's dataset.")
_MODEL = flags.DEFINE_enum("model", "checkpoint", ["checkpoint", "saved_model"],
                           "Evaluate the newest checkpoint or the export.")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "Override the run's --data_dir.")
flags.mark_flag_as_required("workdir")


def evaluate_run(workdir, split="test", model="checkpoint", data_dir=None):
  """Returns the evaluation report dict of a run on `split`."""
  import dataclasses
  import numpy as np
  import tensorflow as tf
  from advisor_tf import config as config_lib
  from advisor_tf import evaluation
  from advisor_tf import trainer
  from advisor_tf.data import pipeline

  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"--workdir={workdir}: no config.json, not a run.")
  with open(path) as f:
    saved = json.load(f)
  saved["lr_decay_epochs"] = tuple(saved["lr_decay_epochs"])
  saved["lr_decay_steps"] = tuple(saved.get("lr_decay_steps", ()))
  config = config_lib.TrainConfig(**saved)
  if data_dir:
    config = dataclasses.replace(config, data_dir=data_dir)
  source, split_data = trainer.prepare_data(config)
  if split not in source.labels:
    raise ValueError(f"--split={split!r} is not a split of {config.dataset}; "
                     f"allowed: {', '.join(sorted(source.labels))}.")
  data = pipeline.evaluation(source, split, config.eval_batch_size)
  if model == "saved_model":
    export = os.path.join(workdir, "saved_model")
    if not os.path.isdir(export):
      raise ValueError(f"{export}: no exported model (run with --export).")
    served = tf.saved_model.load(export)
    expected = tuple(served.serve.input_signature[0].shape[1:])
    if expected != tuple(source.image_shape):
      raise ValueError(f"{export} takes images of shape {expected}, the "
                       f"{config.dataset} split gives {source.image_shape}.")
    logits = np.concatenate([served.serve(x).numpy() for x, _ in data])
  else:
    steps = config.steps_per_epoch or (len(split_data.train_indices)
                                       // config.batch_size)
    classifier = trainer.build_model(
        config, source, steps,
        class_counts=split_data.class_counts(source.num_classes))
    checkpoint = tf.train.Checkpoint(model=classifier)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(workdir, "checkpoints"), max_to_keep=None)
    if not trainer.restore_latest(tf.train.Checkpoint(
        model=tf.train.Checkpoint(backbone=classifier.backbone,
                                  head=classifier.head)), manager):
      raise ValueError(f"{workdir}/checkpoints: no readable checkpoint.")
    logits = classifier.predict(data, verbose=0)
  result = evaluation.report(
      logits, source.labels[split], source.num_classes,
      train_counts=split_data.class_counts(source.num_classes))
  result.update(split=split, model=model, workdir=workdir)
  return result


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    result = evaluate_run(_WORKDIR.value, _SPLIT.value, _MODEL.value,
                          _DATA_DIR.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  out = os.path.join(_WORKDIR.value, f"eval_{_SPLIT.value}_{_MODEL.value}.json")
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  summary = {k: result[k] for k in ("top1", "top3", "top5", "many_shot",
                                    "medium_shot", "few_shot") if k in result}
  print(json.dumps(summary), f"→ {out}")


if __name__ == "__main__":
  app.run(main)
