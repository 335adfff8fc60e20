"""Evaluation metrics of a classifier on a labelled split."""

from __future__ import annotations

import os

import numpy as np

from advisor_tf import export as export_lib
from advisor_tf import run as run_lib
from advisor_tf.data import pipeline

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


def evaluate(model, source, split_name, batch_size, train_counts=None):
  """The `report` of a classifier on a whole split of a source, keys
  prefixed `split/` (`test/top1`, ...)."""
  logits = model.predict(pipeline.evaluation(source, split_name, batch_size),
                         verbose=0)
  result = report(logits, source.labels[split_name], source.num_classes,
                  train_counts)
  return {f"{split_name}/{k}": v for k, v in result.items()}


def export_logits(loaded, source, split, batch_size):
  """An export's (log-probability) logits on a split, fed as its users feed
  it: the files' bytes through `serving_default` for file datasets; the
  evaluation input through its `serve` function for in-memory datasets
  (digits, CIFAR), whose pixels are not files."""
  paths = (source.paths or {}).get(split)
  if paths is None:
    return np.concatenate([
        np.asarray(loaded.serve(x)) for x, _ in pipeline.evaluation(
            source, split, batch_size)])
  probabilities = []
  for start in range(0, len(paths), batch_size):
    files = []
    for path in paths[start:start + batch_size]:
      with open(path, "rb") as f:
        files.append(f.read())
    probabilities.append(
        export_lib.predict_bytes(loaded, files)["probabilities"])
  return np.log(np.maximum(np.concatenate(probabilities),
                           np.finfo(np.float32).tiny))


def evaluate_run(workdir, split="test", model="checkpoint", data_dir=None):
  """The evaluation report dict of a run on `split`, from its newest
  checkpoint or from its export (`export_logits`), with the training
  split as recorded in the workdir (changed training files are only
  warned about). Refuses a model with non-finite weights."""
  config, source, split_data = run_lib.load_data(workdir, data_dir,
                                                 training_files=False)
  if split not in source.labels:
    raise ValueError(f"--split={split!r} is not a split of {config.dataset}; "
                     f"allowed: {', '.join(sorted(source.labels))}.")
  if model == "saved_model":
    path = os.path.join(workdir, run_lib.EXPORT_DIR)
    if not os.path.isdir(path):
      raise ValueError(f"{path}: no exported model (run with --export).")
    logits = export_logits(export_lib.load(path), source, split,
                           config.eval_batch_size)
  else:
    classifier, _ = run_lib.restore_model(workdir, config, source, split_data)
    logits = classifier.predict(
        pipeline.evaluation(source, split, config.eval_batch_size), verbose=0)
  result = report(
      logits, source.labels[split], source.num_classes,
      train_counts=split_data.class_counts(source.num_classes))
  result.update(split=split, model=model, workdir=workdir)
  return result
