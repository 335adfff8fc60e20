"""Advisor telemetry: what the advisor does to the training set, every epoch.

`AdvisorTelemetry` runs the classifier and its advisor (inference mode) over
a fixed, seeded probe of training examples at the end of every epoch and
writes, under `WORKDIR/tensorboard/advisor`:

  histograms  advisor/mask_mean           per-example mean of W_f (MFRW)
              advisor/class_suppression   per-class mean s_k (MES)
              advisor/example_weight      Meta-Weight-Net's weights, or the advisor's ω
              …/noisy, …/clean            the same split by the true label,
                                          when the protocol knows it
  scalars     advisor/label_issue_ap      average precision of the advisor's
              advisor/loss_ap             label-issue ranking vs plain loss

and appends one JSON line per epoch to `WORKDIR/advisor_trace.jsonl` (the
per-class s_k over training that `advisor_tf.analyze` plots).
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from advisor_tf import advice as advice_lib

TRACE_FILE = "advisor_trace.jsonl"


class AdvisorTelemetry(keras.callbacks.Callback):
  """Epoch-end advisor statistics to TensorBoard and a JSON-lines trace.

  Args:
    source, split: the run's data.
    workdir: the run's workdir.
    probe_size: training examples probed (a seeded random subset; all when
      the training set is smaller).
    seed: the run seed (selects the probe).
    batch_size: inference batch size.
  """

  def __init__(self, source, split, workdir, probe_size=2048, seed=0,
               batch_size=256):
    super().__init__()
    self.source, self.split = source, split
    self.trace_path = os.path.join(workdir, TRACE_FILE)
    self.log_dir = os.path.join(workdir, "tensorboard", "advisor")
    count = len(split.train_indices)
    rng = np.random.default_rng([seed, 7])
    self.positions = np.sort(rng.permutation(count)[:probe_size])
    self.batch_size = batch_size
    self._writer = None

  def on_epoch_end(self, epoch, logs=None):
    if self.model.advisor is None:
      return
    adv = advice_lib.advise(self.model, self.source, self.split,
                            self.positions, self.batch_size)
    record = epoch_record(adv, self.source.num_classes)
    record.update(epoch=epoch + 1,
                  step=int(self.model.optimizer.iterations.numpy()))
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self.log_dir)
    with self._writer.as_default(step=epoch + 1):
      noisy = adv.noisy if adv.noisy.any() else None
      for name, values in _histograms(adv, self.source.num_classes).items():
        tf.summary.histogram(f"advisor/{name}", values)
        if noisy is not None and len(values) == len(noisy):
          tf.summary.histogram(f"advisor/{name}/noisy", values[noisy])
          tf.summary.histogram(f"advisor/{name}/clean", values[~noisy])
      for key in ("label_issue_ap", "loss_ap"):
        if record.get(key) is not None:
          tf.summary.scalar(f"advisor/{key}", record[key])
    self._writer.flush()
    with open(self.trace_path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def on_train_end(self, logs=None):
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def _histograms(adv, num_classes):
  out = {}
  if adv.mask is not None:
    out["mask_mean"] = adv.mask.mean(axis=1)
  if adv.suppression is not None:
    out["class_suppression"] = advice_lib.class_suppression(adv, num_classes)
    out["example_suppression"] = adv.suppression.mean(axis=1)
  if adv.weight is not None:
    out["example_weight"] = adv.weight
  return out


def epoch_record(adv, num_classes):
  """The JSON-serialisable summary of one epoch's advice."""
  record = {}
  if adv.mask is not None:
    record["mask_mean"] = float(adv.mask.mean())
  if adv.suppression is not None:
    record["class_suppression"] = [
        round(float(v), 6) for v in advice_lib.class_suppression(
            adv, num_classes)]
  if adv.weight is not None:
    record["example_weight_mean"] = float(adv.weight.mean())
  if adv.noisy.any():
    scores = advice_lib.label_issue_scores(adv)
    for key, name in (("advisor", "label_issue_ap"), ("loss", "loss_ap")):
      quality = advice_lib.ranking_quality(scores[key], adv.noisy)
      record[name] = quality and quality["ap"]
    if adv.mask is not None:
      record["mask_mean_noisy"] = float(adv.mask[adv.noisy].mean())
      record["mask_mean_clean"] = float(adv.mask[~adv.noisy].mean())
    if adv.weight is not None:
      record["weight_mean_noisy"] = float(adv.weight[adv.noisy].mean())
      record["weight_mean_clean"] = float(adv.weight[~adv.noisy].mean())
  return record


def read_trace(workdir):
  """The trace's records, one per epoch (a re-run epoch keeps its last)."""
  path = os.path.join(workdir, TRACE_FILE)
  if not os.path.isfile(path):
    return []
  records = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        records[record["epoch"]] = record
  return [records[k] for k in sorted(records)]
