"""One training run, from a `TrainConfig` to a workdir. The CLI, the notebooks,
the experiments and the tests all call `train()`.

The workdir and its guards (lock, configuration, data fingerprint, finite
checkpoints) live in `advisor_tf.run`; the model is built by
`advisor_tf.builder`. Training writes into the workdir, besides what
`run.claim` writes:

  checkpoints/        tf.train checkpoints every --checkpoint_every steps and
                      at epoch ends (model, advisor, both optimizers)
  tensorboard/        Keras TensorBoard logs (train and validation/test curves,
                      advisor statistics) and the configuration as text;
                      tensorboard/advisor: W_f / s_k distributions per epoch
  advisor_trace.jsonl per-epoch advisor summary (telemetry.AdvisorTelemetry)
  metrics.json        test top-1, per-class accuracy, realised noise rate
  saved_model/        the classifier alone, serving itself (`export`)
  classifier.keras    the classifier for fine-tuning in Keras
"""

from __future__ import annotations

import csv
import json
import os
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from advisor_tf import builder
from advisor_tf import config as config_lib
from advisor_tf import distribute
from advisor_tf import evaluation
from advisor_tf import export as export_lib
from advisor_tf import meta_select
from advisor_tf import run as run_lib
from advisor_tf import selection
from advisor_tf import telemetry
from advisor_tf.data import corrections
from advisor_tf.data import pipeline


def export_classifier(model, source, workdir):
  """Writes the classifier (no advisor) as a self-serving SavedModel and a
  `.keras` copy; returns the SavedModel's path."""
  path = os.path.join(workdir, run_lib.EXPORT_DIR)
  export_lib.export(model.classifier(), source, path,
                    keras_path=os.path.join(workdir, run_lib.KERAS_FILE))
  return path


def train_stream(config, source, split, start_step=0, seed=None):
  """The `((x, y), (x_meta, y_meta))` stream `config` trains on, from step
  `start_step` (its data seed: `seed`, default the run's)."""
  config, _ = config.resolved(len(split.meta_indices))  # An adaptive default.
  return pipeline.train_and_meta(
      source, split, config.batch_size, config.meta_batch_size,
      config.seed if seed is None else seed, start_step=start_step,
      augment=config.augment, policy=config.augment_policy,
      cutout=config.cutout, gridmask=config.gridmask,
      meta_stream=config.method in config_lib.ADVISOR_MODES,
      positions=config.sample_selection != "none")


def resume_hint(config):
  """Where a stopped run stands and how to go on, in one sentence."""
  found = run_lib.found_checkpoints(os.path.join(config.workdir,
                                                 run_lib.CHECKPOINTS))
  if not found:
    return "No checkpoint was written yet; the same command starts over."
  step = found[-1].rsplit("-", 1)[1]
  return (f"The run is kept at step {step} ({found[-1]}); the same command "
          "resumes it from there.")


def describe_noise(config):
  """Which synthetic noise the run injects, in words."""
  if config.noise == "none":
    return "none (the labels are used as given)"
  targets = (f", {config.flip_targets} targets"
             if config.noise.startswith("flip") else "")
  return f"{config.noise} at rate {config.noise_rate}{targets}"


def train(config, flags_text=None):
  """Trains, evaluates and exports one run. Returns the metrics dict.

  Re-running with the same workdir resumes from its newest readable
  checkpoint — weights, advisor, both optimizers' slots, the schedule
  position, the data streams' position and the β draws — and ends with the
  same weights as an uninterrupted run (bit-identical on CPU with
  `deterministic`). Everything that can be refused (flags, data, a workdir
  in use, of another configuration or of other data) is refused before
  anything is written.
  """
  config.validate()
  # First: a multi-worker strategy configures the runtime's collectives,
  # which must happen before TensorFlow runs any op.
  strategy = distribute.get_strategy(config.strategy)
  source = run_lib.load_source(config)
  # A resumed run trains on the split its workdir recorded, as it began;
  # a new one applies the protocols (and, chief or not, the same seed
  # gives the same split).
  recorded = run_lib.resumed_split(config)
  if recorded is None:
    split = run_lib.apply_protocol(config, source)
  else:
    split = recorded
    run_lib.check_augmentation(config, source)
  config, chosen = config.resolved(len(split.meta_indices))
  if chosen:
    logging.warning("Defaults chosen for this data and run length: %s.",
                    "; ".join(chosen))
  pipeline.check_batch_sizes(split, config.batch_size, config.meta_batch_size)
  logging.info("Synthetic label noise: %s.", describe_noise(config))
  if getattr(source, "corrections", None):  # --corrections: what changed.
    logging.warning("Corrections: %s.",
                    corrections.describe(source.corrections))
  chief = distribute.writes_workdir(strategy)
  with (run_lib.claim(config, source, flags_text) if chief
        else run_lib.scratch(config, source)) as out:
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
      tf.config.experimental.enable_op_determinism()
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
      if recorded is None:
        # --meta_source=auto: choose the meta set (or read back the choice
        # of a workdir from before splits were recorded); then record the
        # split as trained.
        split = meta_select.prepare(config, source, split, out)
        run_lib.record_split(out, config, source, split)
      else:
        logging.info("%s (the split recorded in %s).",
                     meta_select.describe(config, split),
                     run_lib.TRAINED_SPLIT_FILE)
      return _train(config, source, split, strategy, out)
    finally:
      keras.config.set_dtype_policy(previous_policy)


HISTORY_FILE = "history.csv"  # Keras' CSVLogger: one row per epoch.


def epoch_accuracies(workdir):
  """Test top-1 (%) after each epoch of the run in `workdir`, from its
  `history.csv` (an epoch run again after a resume keeps its last row);
  [] when the run kept none."""
  path = os.path.join(workdir, HISTORY_FILE)
  if not os.path.isfile(path):
    return []
  rows = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      if row.get("val_accuracy") not in (None, ""):
        rows[int(row["epoch"])] = 100.0 * float(row["val_accuracy"])
  return [rows[k] for k in sorted(rows)]


class RunProgress(keras.callbacks.ProgbarLogger):
  """Keras's progress bar (`Epoch k/n`, then the steps), counting the run's
  epochs. A run is fitted in pieces — a resumed epoch's remaining steps,
  then whole epochs, then a final partial one — each a `fit` whose own
  `epochs` is where that piece ends; the bar says `Epoch 2/3` for the rest
  of the second of three epochs, not `Epoch 2/2`.

  Args:
    epochs: the run's epochs, a final partial one included.
  """

  def __init__(self, epochs):
    super().__init__()
    self.run_epochs = epochs

  def set_params(self, params):
    super().set_params(params)
    self.epochs = self.run_epochs


def duration(seconds):
  """`seconds` in words a user reads at a glance: 40 s, 12 min, 2 h 05 min."""
  seconds = max(0, int(round(seconds)))
  if seconds < 90:
    return f"{seconds} s"
  minutes = int(round(seconds / 60))
  return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


class RunClock(keras.callbacks.Callback):
  """Says what a run will cost, at the default verbosity: before step 1 its
  steps (per epoch and in all), after the first timed steps the time a step,
  an epoch and the rest of the run take, and after each epoch the time
  left. Steps before `skip` (tracing, the first batches) are not timed.

  Args:
    steps_per_epoch: the run's steps per epoch.
    first_step: the step the run starts (or resumes) at.
    last_step: the run's last step.
    log: where the lines go (`logging.warning`: shown by default).
    clock: seconds (`time.monotonic`; tests pass their own).

  `seconds_per_step()` is the median time from one step's end to the next
  step's end within an epoch (input included, the epoch's validation not),
  over the steps after `skip`: what `metrics.json` records as
  `train/seconds_per_step`.
  """

  def __init__(self, steps_per_epoch, first_step, last_step,
               log=logging.warning, clock=time.monotonic, skip=3, timed=20):
    super().__init__()
    self.steps_per_epoch, self.first, self.last = (steps_per_epoch,
                                                   first_step, last_step)
    self.log, self.clock, self.skip, self.timed = log, clock, skip, timed
    self.seen, self.started, self.said = 0, None, False
    self.last_end, self.intervals = None, []

  def seconds_per_step(self):
    """The median step time measured so far (None before two timed
    steps)."""
    return float(np.median(self.intervals)) if self.intervals else None

  def on_epoch_begin(self, epoch, logs=None):
    self.last_end = None  # The epoch boundary's validation is not a step.

  def _left(self):
    """Seconds the remaining steps take at the rate measured so far."""
    rate = (self.clock() - self.started) / max(self.seen - self.skip, 1)
    return rate, (self.last - self.first - self.seen) * rate

  def on_train_begin(self, logs=None):
    if not self.said:
      self.said = True
      epochs = -(-self.last // self.steps_per_epoch)
      self.log("Training: %d steps per epoch, %d epochs (%d steps)%s; the "
               "time it takes follows the first %d timed steps.",
               self.steps_per_epoch, epochs, self.last,
               f", resuming at step {self.first}" if self.first else "",
               self.timed)

  def on_train_batch_end(self, batch, logs=None):
    self.seen += 1
    now = self.clock()
    if self.seen > self.skip and self.last_end is not None:
      self.intervals.append(now - self.last_end)
    self.last_end = now
    if self.seen == self.skip:
      self.started = self.clock()
    elif self.started is not None and self.seen == self.skip + self.timed:
      rate, left = self._left()
      self.log("%.0f ms a step: an epoch takes about %s, the rest of the run "
               "about %s.", 1000 * rate,
               duration(rate * self.steps_per_epoch), duration(left))

  def on_epoch_end(self, epoch, logs=None):
    step = self.first + self.seen
    if self.started is None or self.seen <= self.skip or step >= self.last:
      return
    self.log("Epoch %d of %d done: about %s left.",
             -(-step // self.steps_per_epoch),
             -(-self.last // self.steps_per_epoch), duration(self._left()[1]))


def _train(config, source, split, strategy, out):
  """Trains in `strategy`, resuming from `config.workdir`'s checkpoints and
  writing into `out` (the workdir, or a non-chief worker's scratch)."""
  steps = run_lib.steps_per_epoch(config, split)
  with strategy.scope():
    model = builder.build_model(
        config, source.image_shape, source.num_classes,
        class_counts=split.class_counts(source.num_classes),
        steps_per_epoch=steps)
    checkpoint = run_lib.checkpoint_of(model)
    manager = run_lib.checkpoint_manager(checkpoint, out,
                                         config.keep_checkpoints,
                                         recover=out == config.workdir)
    restored = run_lib.restore_latest(
        checkpoint, manager if out == config.workdir else
        run_lib.checkpoint_manager(checkpoint, config.workdir))
  start = int(model.optimizer.iterations.numpy())
  if restored:
    logging.warning("Resuming from %s (step %d).", restored, start)
  elif config.init_checkpoint:
    run_lib.initialise_classifier(model, config.init_checkpoint)

  log_dir = os.path.join(out, "tensorboard")
  with tf.summary.create_file_writer(
      os.path.join(log_dir, "config")).as_default():
    tf.summary.text("config", "```\n" + config.to_json() + "\n```", step=0)
  checkpointing = run_lib.Checkpointing(
      manager, config.checkpoint_every,
      skips_nonfinite=config.strategy == "default")
  callbacks = [keras.callbacks.TensorBoard(log_dir=log_dir), checkpointing,
               keras.callbacks.CSVLogger(os.path.join(out, HISTORY_FILE),
                                         append=True)]
  if model.advisor is not None and config.telemetry_examples:
    callbacks.append(telemetry.AdvisorTelemetry(
        source, split, out, config.telemetry_examples,
        config.seed, config.eval_batch_size))
  selecting = None
  if config.sample_selection != "none":
    selecting = selection.SampleSelection(
        config, source, split, steps, truth=config.noise != "none")
    callbacks.append(selecting)
  last = builder.total_steps(config, steps)
  clock = RunClock(steps, start, last)
  callbacks.append(clock)
  callbacks.append(RunProgress(-(-last // steps)))  # Last, as fit puts its own.
  validation = pipeline.evaluation(source, "test", config.eval_batch_size)
  meta_select.summarize(config, split, log_dir)

  def fit(first_step, first_epoch, last_epoch, steps_per_epoch):
    data = train_stream(config, source, split, start_step=first_step)
    model.fit(data, epochs=last_epoch, initial_epoch=first_epoch,
              steps_per_epoch=steps_per_epoch, validation_data=validation,
              callbacks=callbacks,
              verbose=config_lib.progress_verbosity(config.verbose),
              shuffle=False)  # The stream is shuffled, statelessly, itself.

  resumed_from, fit_started = start, time.monotonic()
  try:
    while start < last:
      epoch, done = divmod(start, steps)
      if done or last - start < steps:  # A resumed or a final partial epoch.
        fit(start, epoch, epoch + 1, min(steps - done, last - start))
      else:
        fit(start, epoch, epoch + (last - start) // steps, steps)
      start = int(model.optimizer.iterations.numpy())
  except KeyboardInterrupt:
    # Ctrl-C lands between two steps (TensorFlow runs a step to its end
    # before Python sees the signal): keep that step. Not across workers,
    # whose saves need every worker.
    if config.strategy == "default" and out == config.workdir:
      checkpointing.save()
    raise

  metrics = {"method": config.method, "dataset": config.dataset,
             "train/noise": describe_noise(config),
             "train/examples": int(len(split.train_indices)),
             "meta/examples": int(len(split.meta_indices)),
             "train/steps": int(model.optimizer.iterations.numpy()),
             "resumed_from_step": resumed_from,
             # This process's training (a resumed run: since it resumed).
             "train/seconds": round(time.monotonic() - fit_started, 1),
             "train/seconds_per_step": clock.seconds_per_step()}
  if config.noise != "none":  # Known only where the noise is synthetic.
    metrics["train/realised_noise_rate"] = split.noise_rate
  if getattr(source, "corrections", None):
    metrics["train/corrections"] = source.corrections
  metrics.update(meta_select.metrics(config, split))
  if selecting is not None:
    metrics.update(selecting.last)
  metrics.update(evaluation.evaluate(model, source, "test",
                                     config.eval_batch_size,
                                     split.class_counts(source.num_classes)))
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=2)
  if config.export:
    export_classifier(model, source, out)
  return metrics
