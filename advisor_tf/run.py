"""A run's workdir: the one home of creating, guarding, saving and reloading a
run. Training (`trainer`), `evaluate`, `analyze`, the telemetry, the
experiments and the notebooks all go through here.

A workdir holds one run:

  config.json          the resolved `TrainConfig` (what the run computes)
  flags.txt            the command's flags (works as a --flagfile)
  data.json            the fingerprint of the data the run trains on
  splits.json          file datasets: each split's files and given labels,
                       as read from the folder
  trained_split.json   the split as trained: the training and meta sets
                       (dataset positions, files, given and clean labels)
                       after the meta selection, long tail and noise —
                       what resume, evaluate and analyze read
  .lock                held while a run trains in this workdir
  checkpoints/         tf.train checkpoints (finite state only)
  tensorboard/, advisor_trace.jsonl, metrics.json   (written by training)
  saved_model/, classifier.keras                    (the export)

Guards (a refused run writes nothing):
  * one run at a time: `claim()` takes an exclusive lock on `.lock`;
  * same configuration: resuming with other flags is refused, naming them;
  * same data: resuming with another dataset, other files or other class
    names is refused, naming what differs;
  * finite state: a checkpoint is written only when every weight, BatchNorm
    statistic and optimizer slot is finite; reloading refuses non-finite
    weights.

  >>> run = run_lib.load("runs/quickstart")     # config, data, model
  >>> run.model.predict(...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from advisor_tf import builder
from advisor_tf import config as config_lib
from advisor_tf import meta_select
from advisor_tf.data import corrections
from advisor_tf.data import noise as noise_lib
from advisor_tf.data import pipeline
from advisor_tf.data import protocols
from advisor_tf.data import sources

CONFIG_FILE = "config.json"
FLAGS_FILE = "flags.txt"
DATA_FILE = "data.json"
SPLITS_FILE = "splits.json"
TRAINED_SPLIT_FILE = "trained_split.json"
LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"
EXPORT_DIR = "saved_model"
KERAS_FILE = "classifier.keras"


# ------------------------------------------------------------------- data
def load_source(config):
  """The source a configuration reads (with its `--corrections` applied)."""
  source = sources.load(config.dataset, config.data_dir, config.image_size)
  if config.corrections:  # A reviewer's relabel / drop rows, before all.
    source = corrections.apply(source, config.corrections, config.data_dir)
  return source


def apply_protocol(config, source):
  """The split of a new run of `config` on `source`: the protocol (meta
  set, long tail, synthetic noise) applied to the source's training labels
  with the run's seed; the same configuration always gives the same split.
  (`--meta_source=auto` then chooses its meta set: `meta_select.prepare`.)
  """
  meta_source = meta_select.resolve(config, source)  # --meta_source.
  protocol = protocols.Protocol(
      noise=config.noise, noise_rate=config.noise_rate,
      flip_targets=config.flip_targets,
      imbalance_factor=config.imbalance_factor,
      train_examples=config.train_examples,
      meta_per_class=meta_select.per_class(config, meta_source),
      meta_source="random" if meta_source == "folder" else meta_source)
  meta_from = source.meta_split if meta_source == "folder" else "train"
  if meta_source == "auto":  # Held out of a class it would be all of.
    counts = np.bincount(source.labels["train"],
                         minlength=source.num_classes)
    for c in np.flatnonzero(counts < 2):
      raise ValueError(
          f"Class {source.class_names[c]!r} has {counts[c]} training "
          "image(s); a meta set chosen from the training labels "
          "(--meta_source=auto) needs at least 2 per class, one to hold out "
          "and one to train on. Add images to that class, give a trusted "
          "meta/ folder, or remove the class.")
  split = protocols.apply(
      protocol, source.labels["train"], source.num_classes, config.seed,
      similar=noise_lib.SIMILAR_CLASSES.get(source.name),
      meta_labels=None if meta_from == "train" else source.labels[meta_from],
      meta_from=meta_from, images=lambda indices: image_batches(
          source, "train", indices, config.eval_batch_size))
  check_augmentation(config, source)
  return split


def image_batches(source, split_name, indices, batch_size):
  """The images of `split_name` at `indices` as the model sees them (no
  augmentation), in order, as numpy batches: what instance-dependent noise
  reads."""
  if len(indices):
    logging.info("Reading %d %s images for --noise=instance.", len(indices),
                 split_name)
  return source.images(split_name, indices).batch(
      batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def check_augmentation(config, source):
  """Refuses impossible augmentation settings (before anything is
  written)."""
  pipeline.strong_transform(source, config.augment_policy, config.cutout,
                            config.gridmask)


def prepare_data(config):
  """The data a new run of `config` trains on: `(source, split)`."""
  source = load_source(config)
  return source, apply_protocol(config, source)


# ------------------------------------------------- the split as trained
def _relative(path, root):
  return os.path.relpath(os.path.abspath(str(path)), root) if root else str(
      path)


def split_record(config, source, split):
  """`split` as a JSON-able record (`TRAINED_SPLIT_FILE`): per set (train,
  meta) the dataset positions in training order, the given and the clean
  labels and, for file datasets, the files (relative to `data_dir`)."""
  root = os.path.abspath(config.data_dir) if config.data_dir else None

  def part(indices, labels, clean, split_name):
    out = {"split": split_name,
           "index": np.asarray(indices, np.int64).tolist(),
           "label": np.asarray(labels, np.int64).tolist(),
           "clean_label": (None if clean is None else
                           np.asarray(clean, np.int64).tolist())}
    paths = (source.paths or {}).get(split_name)
    if paths is not None:
      out["file"] = [_relative(paths[i], root) for i in out["index"]]
    return out

  return {"format": 1, "meta_source": split.meta_source,
          "transition": np.asarray(split.transition, np.float64).tolist(),
          "train": part(split.train_indices, split.train_labels,
                        split.train_clean_labels, "train"),
          "meta": part(split.meta_indices, split.meta_labels,
                       split.meta_clean_labels, split.meta_from)}


def split_from_record(record):
  """The `protocols.Split` a `split_record` holds (bit for bit the one
  recorded)."""
  array = lambda values, dtype=np.int64: np.asarray(  # noqa: E731
      values, dtype).reshape(-1)
  train, meta = record["train"], record["meta"]
  return protocols.Split(
      train_indices=array(train["index"]),
      train_labels=array(train["label"]),
      train_clean_labels=array(train["clean_label"]),
      meta_indices=array(meta["index"]),
      meta_labels=array(meta["label"]),
      meta_clean_labels=(None if meta["clean_label"] is None
                         else array(meta["clean_label"])),
      transition=np.asarray(record["transition"], np.float64),
      meta_from=meta["split"], meta_source=record["meta_source"])


def record_split(folder, config, source, split):
  """Writes the split a run trains on into `folder` (atomically)."""
  _write(os.path.join(folder, TRAINED_SPLIT_FILE),
         json.dumps(split_record(config, source, split)))


def recorded_split(workdir):
  """The split recorded in `workdir` (`record_split`), or None."""
  path = os.path.join(workdir, TRAINED_SPLIT_FILE)
  if not os.path.isfile(path):
    return None
  try:
    return split_from_record(_json(path))
  except (ValueError, KeyError, TypeError) as error:
    raise ValueError(f"{path}: not a readable split record ({error}); "
                     "delete it to rebuild it from the configuration.") from None


def resumed_split(config):
  """The split a resumed run trains on: the one recorded in its workdir
  when the workdir holds a checkpoint; None for a new run (or a workdir
  written before splits were recorded)."""
  if not has_checkpoint(config.workdir):
    return None
  return recorded_split(config.workdir)


def steps_per_epoch(config, split):
  return config.steps_per_epoch or (len(split.train_indices)
                                    // config.batch_size)


def fingerprint(config, source):
  """What identifies the data of a run: dataset, data_dir, class names and,
  per split, the number of examples and a digest of its list (file paths
  relative to `data_dir` and labels; labels alone for in-memory datasets)."""
  root = os.path.abspath(config.data_dir) if config.data_dir else None
  splits = {}
  for name in sorted(source.labels):
    digest = hashlib.sha256()
    labels = np.asarray(source.labels[name], np.int64)
    paths = (source.paths or {}).get(name)
    if paths is not None:
      for path, label in zip(paths, labels):
        digest.update(f"{_relative(path, root)}\t{int(label)}\n".encode())
    else:
      digest.update(labels.tobytes())
    splits[name] = {"examples": int(len(labels)),
                    "digest": digest.hexdigest()}
  out = {"dataset": config.dataset, "data_dir": root,
         "class_names": [str(c) for c in source.class_names],
         "splits": splits}
  if config.corrections:  # The file may move; its bytes may not change.
    out["corrections"] = {"file": os.path.abspath(config.corrections),
                          "digest": corrections.digest(config.corrections)}
  return out


def split_files(config, source):
  """Each split's files (relative to `data_dir`) and given labels, as the
  run reads them: `{split: [[path, label], ...]}`; None for in-memory
  datasets. A workdir keeps them (`splits.json`) so that a file that
  changes later can be named."""
  if not source.paths:
    return None
  root = os.path.abspath(config.data_dir) if config.data_dir else None
  files = {}
  for name, paths in source.paths.items():
    files[name] = [[_relative(p, root), int(label)]
                   for p, label in zip(paths, source.labels[name])]
  return files


def _named_changes(old, new):
  """The files gone from, new in or relabelled in one split, in words."""
  old, new = dict(map(tuple, old)), dict(map(tuple, new))
  gone = sorted(set(old) - set(new))
  added = sorted(set(new) - set(old))
  relabelled = sorted(p for p in set(old) & set(new) if old[p] != new[p])
  words = []
  for what, paths in (("gone", gone), ("new", added),
                      ("relabelled", relabelled)):
    if paths:
      more = f", … {len(paths) - 3} more" if len(paths) > 3 else ""
      words.append(f"{len(paths)} {what} ({', '.join(paths[:3])}{more})")
  return ", ".join(words)


def fingerprint_differences(saved, now, saved_files=None, now_files=None):
  """What differs between two fingerprints (data_dir alone may move); with
  the splits' file lists (`split_files`), the files that differ are
  named."""
  diffs = []
  for key in ("dataset", "class_names"):
    if saved.get(key) != now.get(key):
      diffs.append(f"{key}: {saved.get(key)!r} in the workdir, "
                   f"{now.get(key)!r} now")
  old, new = [(d.get("corrections") or {}).get("digest") for d in (saved, now)]
  if old != new:
    diffs.append(f"corrections: {_corrections_text(saved)} in the workdir, "
                 f"{_corrections_text(now)} now")
  old, new = saved.get("splits", {}), now.get("splits", {})
  for split in sorted(set(old) | set(new)):
    a, b = old.get(split), new.get(split)
    if a is None or b is None:
      diffs.append(f"split {split!r}: {'absent' if a is None else 'present'} "
                   f"in the workdir, {'absent' if b is None else 'present'} "
                   "now")
    elif a["digest"] != b["digest"]:
      named = ""
      if saved_files and now_files and split in saved_files and (
          split in now_files):
        named = f" ({_named_changes(saved_files[split], now_files[split])})"
      if a["examples"] != b["examples"]:
        diffs.append(f"split {split!r}: {a['examples']} examples in the "
                     f"workdir, {b['examples']} now{named}")
      else:
        diffs.append(f"split {split!r}: same size, other files or "
                     f"labels{named}")
  return diffs


def _data_differences(workdir, config, source):
  """`(refusals, warnings)`: how the data now differs from what the run in
  `workdir` trained on. A changed test split does not change what was
  trained — a file gone from test/ is named, not a reason to lose the
  run — so it is a warning; any other change is a refusal."""
  data_path = os.path.join(workdir, DATA_FILE)
  if not os.path.exists(data_path):
    return [], []
  saved = _json(data_path)
  files_path = os.path.join(workdir, SPLITS_FILE)
  saved_files = _json(files_path) if os.path.exists(files_path) else None
  now = fingerprint(config, source)
  diffs = fingerprint_differences(saved, now, saved_files,
                                  split_files(config, source))
  tolerated = [d for d in diffs if d.startswith("split 'test': ")
               and "absent" not in d]
  return [d for d in diffs if d not in tolerated], tolerated


def _corrections_text(fingerprint_):
  entry = fingerprint_.get("corrections")
  return (f"{entry['file']} (sha256 {entry['digest'][:12]}…)" if entry
          else "none")


# ------------------------------------------------------------- the workdir
def read_config(workdir):
  """The `TrainConfig` saved in a run's workdir (fields newer than the run
  take their defaults)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"--workdir={workdir}: no {CONFIG_FILE}, not a run.")
  with open(path) as f:
    saved = json.load(f)
  return config_lib.TrainConfig.from_dict(saved)


def has_checkpoint(workdir):
  directory = os.path.join(workdir, CHECKPOINTS)
  return bool(tf.train.latest_checkpoint(directory)
              or found_checkpoints(directory))


def found_checkpoints(directory):
  """The `ckpt-N` prefixes in `directory`, oldest first, read from the
  files themselves (the `checkpoint` state file may be gone)."""
  numbered = []
  for index in tf.io.gfile.glob(os.path.join(directory, "ckpt-*.index")):
    prefix = index[:-len(".index")]
    number = prefix.rsplit("-", 1)[1]
    if number.isdigit():
      numbered.append((int(number), prefix))
  return [prefix for _, prefix in sorted(numbered)]


def _json(path):
  with open(path) as f:
    return json.load(f)


def _check_resumable(config, source):
  """Refuses to resume a workdir that holds another configuration or was
  trained on other data (a changed test split is only warned about).
  Reads only."""
  workdir = config.workdir
  if not has_checkpoint(workdir):
    return
  config_path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(config_path):
    diffs = config.differences(_json(config_path))
    if diffs:
      raise ValueError(
          f"--workdir={workdir} holds a run with another configuration and "
          f"would resume it; differing flags: {'; '.join(diffs)}. Use a new "
          "--workdir, or the workdir's flags (its flags.txt works as a "
          "--flagfile).")
  diffs, changed_test = _data_differences(workdir, config, source)
  if diffs:
    raise ValueError(
        f"--workdir={workdir} holds a run trained on other data and would "
        f"resume it: {'; '.join(diffs)}. Use a new --workdir for new data.")
  for change in changed_test:
    logging.warning("The test files changed since this run began (%s); "
                    "training resumes, and test figures are of the files "
                    "there now.", change)


@contextlib.contextmanager
def _lock(workdir):
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise ValueError(
          f"--workdir={workdir} is in use by another run (it holds "
          f"{path}); wait for it to finish or use another --workdir.") from None
    yield
  finally:
    os.close(fd)  # Closing releases the lock (also when the process dies).


@contextlib.contextmanager
def claim(config, source, flags_text=None):
  """Claims `config.workdir` for training: refuses it if another run holds
  it, or if it holds a run of another configuration or other data (nothing
  is written then); otherwise writes config.json, flags.txt and data.json and
  holds the lock until the block ends."""
  workdir = config.workdir
  _check_resumable(config, source)  # Before creating or touching anything.
  os.makedirs(workdir, exist_ok=True)
  with _lock(workdir):
    _check_resumable(config, source)  # Still true now that we hold it.
    _write(os.path.join(workdir, CONFIG_FILE), config.to_json())
    if flags_text is not None:
      _write(os.path.join(workdir, FLAGS_FILE), flags_text)
    # What the run trains on, as it began: kept when it resumes, so that
    # later changes to the folder can be named.
    if not has_checkpoint(workdir) or not os.path.exists(
        os.path.join(workdir, DATA_FILE)):
      data = fingerprint(config, source)
      _write(os.path.join(workdir, DATA_FILE), json.dumps(data, indent=2))
      logging.info("Data fingerprint: %s", data)
      files = split_files(config, source)
      if files is not None:
        _write(os.path.join(workdir, SPLITS_FILE), json.dumps(files))
    yield workdir


@contextlib.contextmanager
def scratch(config, source):
  """A non-chief worker's stand-in for `claim`: the same checks of the
  workdir (read only), then a temporary folder for what the worker writes
  (its copies of checkpoints, logs and export), deleted at the end. The
  chief, alone, writes the workdir."""
  _check_resumable(config, source)
  with tempfile.TemporaryDirectory(prefix="advisor_tf_worker_") as tmp:
    yield tmp


def _write(path, text):
  """Writes through a temporary file, so a crash never leaves half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


# ----------------------------------------------------------- checkpoints
def checkpoint_of(model, with_optimizers=True):
  """The `tf.train.Checkpoint` of a run: model (backbone, head, advisor),
  both optimizers and the β draws' seed state."""
  objects = {"model": model,
             "advisor": model.advisor or tf.train.Checkpoint()}
  if with_optimizers:
    objects.update(
        optimizer=model.optimizer,
        advisor_optimizer=model.advisor_optimizer or tf.train.Checkpoint(),
        beta_seed=model.seed_generator_state)
  return tf.train.Checkpoint(**objects)


def checkpoint_manager(checkpoint, workdir, max_to_keep=None, recover=False):
  """The run's `tf.train.CheckpointManager`. With `recover` (the one process
  that writes the workdir), a `checkpoints/` folder whose `checkpoint` state
  file is gone gets it back, listing the `ckpt-N` files found there, so the
  run resumes from them instead of starting again and overwriting them."""
  directory = os.path.join(workdir, CHECKPOINTS)
  if recover and not tf.io.gfile.exists(os.path.join(directory,
                                                     "checkpoint")):
    found = found_checkpoints(directory)
    if found:
      logging.warning(
          "%s has no 'checkpoint' state file but holds %d checkpoint(s), "
          "newest %s: rebuilding the state file from them.", directory,
          len(found), os.path.basename(found[-1]))
      tf.compat.v1.train.update_checkpoint_state(
          directory, found[-1], all_model_checkpoint_paths=found)
  return tf.train.CheckpointManager(checkpoint, directory,
                                    max_to_keep=max_to_keep)


def nonfinite_variables(variables):
  """Paths of the float variables holding a NaN or an infinity."""
  bad = []
  for v in variables:
    if (tf.as_dtype(v.dtype).is_floating
        and not np.isfinite(np.asarray(v)).all()):
      bad.append(getattr(v, "path", None) or v.name)
  return bad


def _state_variables(model):
  variables = list(model.variables)
  for optimizer in (model.optimizer, model.advisor_optimizer):
    if optimizer is not None:
      variables += list(optimizer.variables)
  return variables


def check_finite(model, what):
  """Raises FloatingPointError naming the first non-finite variables."""
  bad = nonfinite_variables(_state_variables(model))
  if bad:
    raise FloatingPointError(
        f"{what}: non-finite values in {len(bad)} variable(s), first "
        f"{', '.join(bad[:3])}.")


def restore_latest(checkpoint, manager, partial=False):
  """Restores the newest readable checkpoint; returns its path or None.
  With `partial`, objects of the checkpoint that `checkpoint` lacks (e.g.
  the optimizers, when only analysing) are expected and not reported.

  A newest checkpoint that cannot be read (a partial or corrupted write) is
  reported and skipped in favour of the one before it.
  """
  # Without the state file the manager lists nothing: read the files.
  for path in reversed(manager.checkpoints
                       or found_checkpoints(manager.directory)):
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


class Checkpointing(keras.callbacks.Callback):
  """Checkpoints every `every` steps and at epoch ends; stops the run at the
  first non-finite loss or hypergradient.

  `AdvisorModel` skips a non-finite update (default strategy), so the state
  saved on the way out is the last good one. A state that holds any
  non-finite value (weights, BatchNorm statistics, optimizer slots) is never
  written: the run stops instead, and the newest checkpoint stays the last
  good one.
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
    if step == self.last_saved:
      return
    bad = nonfinite_variables(_state_variables(self.model))
    if bad:
      kept = (f"checkpoint ckpt-{self.last_saved}" if self.last_saved
              else "the newest checkpoint in the workdir, if any")
      raise FloatingPointError(
          f"Non-finite state at step {step} ({len(bad)} variable(s), first "
          f"{', '.join(bad[:3])}); it was not saved and {kept} holds the "
          "last good state. Lower --lr or --advisor_lr, or check the data.")
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


# ---------------------------------------------------------------- reload
@dataclasses.dataclass
class Run:
  """A finished (or interrupted) run, read back from its workdir.

  Attributes:
    config: its `TrainConfig`.
    source, split: its data, rebuilt from the config (same seed, same split).
    model: its `AdvisorModel` at the newest readable checkpoint.
    checkpoint: that checkpoint's path.
  """
  config: object
  source: object
  split: object
  model: object
  checkpoint: str


def load_data(workdir, data_dir=None, training_files=True):
  """A finished run's `(config, source, split)`: its `config.json`, the
  source as it is now (`data_dir` overrides where it is), and the split it
  trained on as recorded in the workdir (`TRAINED_SPLIT_FILE`) — the
  protocols and the meta selection are not run again. A workdir written
  before splits were recorded gets its split rebuilt from the
  configuration.

  Data that differs from the run's fingerprint is refused, naming what
  differs; but files changed in `test/` are a warning (the figures are of
  the files there now), and so are changed training or meta files when
  `training_files` is False (evaluation needs only the recorded labels of
  those).
  """
  config = read_config(workdir)
  if data_dir:
    config = dataclasses.replace(config, data_dir=data_dir)
  source = load_source(config)
  split = recorded_split(workdir)
  recorded = split is not None
  if not recorded:  # Written before splits were: rebuilt (and selected).
    split = meta_select.auto_split(config, apply_protocol(config, source),
                                   workdir)
  diffs, changed = _data_differences(workdir, config, source)
  if recorded and not training_files:
    changed += [d for d in diffs if d.startswith(("split 'train': ",
                                                  "split 'meta': "))
                and "absent" not in d]
    diffs = [d for d in diffs if d not in changed]
  if diffs:
    raise ValueError(f"--workdir={workdir} was trained on other data: "
                     f"{'; '.join(diffs)}.")
  for change in changed:
    logging.warning("The files changed since this run trained (%s); %s",
                    change, "test figures are of the files there now."
                    if change.startswith("split 'test'") else
                    "the run's split is read from its workdir.")
  return config, source, split


def restore_model(workdir, config, source, split):
  """The run's `AdvisorModel` at its newest readable checkpoint; returns
  `(model, checkpoint path)`. Refuses non-finite weights."""
  model = builder.build_model(
      config, source.image_shape, source.num_classes,
      class_counts=split.class_counts(source.num_classes),
      steps_per_epoch=max(steps_per_epoch(config, split), 1))
  checkpoint = checkpoint_of(model, with_optimizers=False)
  restored = restore_latest(checkpoint, checkpoint_manager(checkpoint,
                                                           workdir),
                            partial=True)
  if not restored:
    raise ValueError(f"--workdir={workdir}: no readable checkpoint in "
                     f"{os.path.join(workdir, CHECKPOINTS)}.")
  bad = nonfinite_variables(model.variables)
  if bad:
    raise ValueError(f"{restored}: the model holds non-finite weights "
                     f"({', '.join(bad[:3])}); refusing to use it.")
  return model, restored


def load(workdir, data_dir=None):
  """Rebuilds a run's data and model and restores its newest checkpoint."""
  config, source, split = load_data(workdir, data_dir)
  model, restored = restore_model(workdir, config, source, split)
  return Run(config, source, split, model, restored)
