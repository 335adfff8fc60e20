"""Evaluation metrics of a classifier on a labelled split."""

from __future__ import annotations

import numpy as np

# Long-tail shot groups by training images per class (Liu et al. 2019).
MANY_SHOT, FEW_SHOT = 100, 20


def report(logits, labels, num_classes, train_counts=None, ks=(1, 3, 5)):
  """Top-k, per-class, many/medium/few-shot accuracy (percent) and the
  confusion matrix (rows: true class, columns: predicted)."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels, np.int64)
  if logits.shape != (len(labels), num_classes):
    raise ValueError(f"Expected logits of shape ({len(labels)}, {num_classes})"
                     f", got {logits.shape}.")
  order = np.argsort(-logits, axis=1)
  out = {}
  for k in ks:
    if k <= num_classes:
      out[f"top{k}"] = float(100.0 * np.mean(
          np.any(order[:, :k] == labels[:, None], axis=1)))
  predictions = order[:, 0]
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  support = confusion.sum(1)
  per_class = np.where(support > 0, 100.0 * np.diag(confusion) /
                       np.maximum(support, 1), np.nan)
  out["per_class_accuracy"] = [None if np.isnan(a) else float(a)
                               for a in per_class]
  out["confusion_matrix"] = confusion.tolist()
  if train_counts is not None:
    counts = np.asarray(train_counts)
    groups = {"many_shot": counts > MANY_SHOT,
              "medium_shot": (counts >= FEW_SHOT) & (counts <= MANY_SHOT),
              "few_shot": counts < FEW_SHOT}
    for name, members in groups.items():
      members = members & (support > 0)
      out[name] = (float(np.mean(per_class[members])) if members.any()
                   else None)
  return out


def evaluate_run(workdir, split="test", model="checkpoint", data_dir=None):
  """Returns the evaluation report dict of a run on `split`."""
  import os
  import tensorflow as tf
  from advisor_tf import advice
  from advisor_tf.data import pipeline

  config, source, split_data = advice.load_data(workdir, data_dir)
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
    classifier, _ = advice.restore_model(workdir, config, source, split_data)
    logits = classifier.predict(data, verbose=0)
  result = report(
      logits, source.labels[split], source.num_classes,
      train_counts=split_data.class_counts(source.num_classes))
  result.update(split=split, model=model, workdir=workdir)
  return result
