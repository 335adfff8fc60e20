"""Every command-line flag of `advisor_tf.train`, defined and read here only.

Flags may come from a flagfile (`--flagfile=quickstart`, a bundled one by
name, or a path) and be overridden on the command line after it.
`to_config()` turns them into the frozen `TrainConfig` the library uses.
"""

from __future__ import annotations

import dataclasses

from absl import flags
from absl import logging

from advisor_tf import config as config_lib

_D = config_lib.TrainConfig()
_C = config_lib.CHOICES

# Data.
flags.DEFINE_enum("dataset", _D.dataset, _C["dataset"], "Dataset to train on.")
flags.DEFINE_string("data_dir", _D.data_dir,
                    "Where the dataset is: tfds data_dir for cifar10/100; the "
                    "manual-download folder for clothing1m, imagenet_lt, "
                    "places_lt; your folder for image_folder / image_csv.")
flags.DEFINE_integer("image_size", _D.image_size,
                     "Side of the images fed to the model (file datasets; "
                     "default 224 for clothing1m/imagenet_lt/places_lt, 32 "
                     "for image_folder/image_csv).")
flags.DEFINE_bool("augment", _D.augment,
                  "Augment training images (CIFAR: pad-4 crop + flip; "
                  "ImageNet-style data: random 224 crop of 256 + flip).")
flags.DEFINE_enum("augment_policy", _D.augment_policy, _C["augment_policy"],
                  "Batch-level augmentation after --augment's crop + flip, "
                  "on RGB data: autoaugment (AutoAugment's CIFAR-10 policy, "
                  "thesis Table 3.2), randaugment (keras.layers.RandAugment, "
                  "2 ops, factor 0.5, per image), augmix (AugMix, width 3, "
                  "severity 3). Every preset, --cutout and --gridmask draw "
                  "from (seed, step): bit-exact on resume.")
flags.DEFINE_bool("autoaugment", False,
                  "Deprecated spelling of --augment_policy=autoaugment.")
flags.DEFINE_integer("cutout", _D.cutout,
                     "Side in pixels of the Cutout square erased from every "
                     "training image, after --augment_policy (0: off; 16 for "
                     "CIFAR, thesis Table 3.2; keras-cv RandomCutout).")
flags.DEFINE_bool("gridmask", _D.gridmask,
                  "Add keras-cv's GridMask (its defaults) after --cutout.")
flags.DEFINE_enum("noise", _D.noise, _C["noise"],
                  "Synthetic label noise injected into the training labels "
                  "(none: your labels are used as given).")
flags.DEFINE_float("noise_rate", _D.noise_rate,
                   "Noise probability p in [0, 1).")
flags.DEFINE_enum("flip_targets", _D.flip_targets, _C["flip_targets"],
                  "Flip target rule: random (Meta-Weight-Net) or similar "
                  "(look-alike classes).")
flags.DEFINE_float("imbalance_factor", _D.imbalance_factor,
                   "Long-tail imbalance factor n_max/n_min (1 = balanced).")
flags.DEFINE_integer("train_examples", _D.train_examples,
                     "Train on a seeded, class-stratified subset of this many "
                     "training images, drawn before everything else (unset: "
                     "all of them); a quick trial run on a big data set.")
flags.DEFINE_integer("meta_per_class", _D.meta_per_class,
                     "Meta images per class, from where --meta_source says "
                     "(0: all of the dataset's own meta/val split). Unset: "
                     "all of a meta/ folder where there is one, else 10 per "
                     "class drawn out of train.")
flags.DEFINE_enum("meta_source", _D.meta_source, _C["meta_source"],
                  "Where the meta set comes from. folder: the dataset's own "
                  "trusted split (your meta/ folder or meta.csv); random: "
                  "--meta_per_class per class drawn out of train before any "
                  "synthetic --noise (clean labels under synthetic noise, "
                  "the thesis' protocol; your labels as given on your own "
                  "data) and taken out of training; random_noisy: the same "
                  "draw after the synthetic noise; auto: chosen from the "
                  "training labels as given, without any trusted label "
                  "(per class the examples whose label their nearest "
                  "neighbours agree with most, in the feature space of a "
                  "short warm-up; then taken out of training). "
                  "Unset: folder when the dataset has one, else auto.")
flags.DEFINE_string("meta_from", _D.meta_from,
                    "The workdir of a run with --meta_source=auto whose meta "
                    "set this run keeps instead of choosing its own (its "
                    "labels as this run's, --corrections applied): a retrain "
                    "after advisor-review, compared on the same meta set. "
                    "With any other meta source the meta set is already the "
                    "same, and the flag changes nothing.")
flags.DEFINE_string("corrections", _D.corrections,
                    "A corrections.csv from advisor-review (path,given_label,"
                    "action,new_label,...): trains with its relabel and drop "
                    "rows applied to the train split of image_folder / "
                    "image_csv (keep, unsure and unreviewed rows keep their "
                    "label); your files are not touched.")
# Method.
flags.DEFINE_enum("method", _D.method, _C["method"], "Training method.")
flags.DEFINE_integer("embedding_size", _D.embedding_size,
                     "Advisor embedding size E.")
flags.DEFINE_bool("advisor_label_input", _D.advisor_label_input,
                  "The advisor also reads each example's given label "
                  "(MFRW/MES; beyond the thesis, whose flagfiles turn it "
                  "off): a loss means something else in a tail class than "
                  "in a head class.")
flags.DEFINE_bool("advisor_example_weight", _D.advisor_example_weight,
                  "The advisor also reads out one weight per example that "
                  "multiplies its loss (MFRW/MES; beyond the thesis, whose "
                  "flagfiles turn it off): a per-example discount, for noise "
                  "that depends on the image.")
flags.DEFINE_enum("sample_selection", _D.sample_selection,
                  _C["sample_selection"],
                  "gmm: after --selection_warmup epochs, each epoch drops the "
                  "training images that a two-component Gaussian mixture on "
                  "their losses puts in the high-loss component (any method; "
                  "beyond the thesis): for noise that depends on the image. "
                  "gmm_relabel: the dropped images whose prediction is at "
                  "least --relabel_confidence likely train on that prediction "
                  "instead (label correction; the labels on disk are kept).")
flags.DEFINE_integer("selection_warmup", _D.selection_warmup,
                     "Epochs of plain training before --sample_selection "
                     "drops examples (unset: a third of --epochs).")
flags.DEFINE_float("relabel_confidence", _D.relabel_confidence,
                   "--sample_selection=gmm_relabel: the classifier's "
                   "probability of its prediction at which a dropped image "
                   "trains on the prediction (FixMatch's 0.95 by default).")
flags.DEFINE_float("rho", _D.rho, "MES Bernoulli probability ρ.")
flags.DEFINE_float("advisor_lr", _D.advisor_lr, "Advisor Adam learning rate "
                   "(the thesis flagfiles set its 1e-4).")
flags.DEFINE_float("eql_threshold", _D.eql_threshold,
                   "Equalization loss: classes with a smaller share of the "
                   "training images than this get no discouraging gradient.")
flags.DEFINE_float("focal_gamma", _D.focal_gamma, "Focal loss γ.")
# Classifier and optimisation.
flags.DEFINE_enum("backbone", _D.backbone, _C["backbone"], "Backbone.")
flags.DEFINE_string("pretrained_weights", _D.pretrained_weights,
                    "Local weights file for resnet50/resnet152 (e.g. the "
                    "ImageNet notop .h5); nothing is downloaded.")
flags.DEFINE_string("init_checkpoint", _D.init_checkpoint,
                    "Start the classifier from a previous run's checkpoints "
                    "folder (or a checkpoint prefix).")
flags.DEFINE_integer("epochs", _D.epochs, "Training epochs.")
flags.DEFINE_integer("train_steps", _D.train_steps,
                     "Train for this many iterations instead of --epochs "
                     "(schedules then run over iterations).")
flags.DEFINE_integer("steps_per_epoch", _D.steps_per_epoch,
                     "Steps per epoch (default: one pass over train).")
flags.DEFINE_integer("batch_size", _D.batch_size, "Train batch size.")
flags.DEFINE_integer("meta_batch_size", _D.meta_batch_size,
                     "Meta batch size (default: the smaller of "
                     f"{config_lib.DEFAULT_META_BATCH_SIZE} and the meta "
                     "set).")
flags.DEFINE_float("lr", _D.lr, "Classifier SGD learning rate.")
flags.DEFINE_float("momentum", _D.momentum, "SGD momentum.")
flags.DEFINE_float("weight_decay", _D.weight_decay,
                   "L2 weight decay added to the gradients (coupled).")
flags.DEFINE_enum("lr_schedule", _D.lr_schedule, _C["lr_schedule"],
                  "Learning-rate schedule.")
flags.DEFINE_list("lr_decay_epochs", [str(e) for e in _D.lr_decay_epochs],
                  "Epochs at which the step schedule multiplies the learning "
                  "rate by --lr_decay_factor (default: at 2/3 and 5/6 of "
                  "--epochs).")
flags.DEFINE_list("lr_decay_steps", [],
                  "Iterations at which the step schedule decays (instead of "
                  "--lr_decay_epochs).")
flags.DEFINE_float("lr_decay_factor", _D.lr_decay_factor, "Step decay factor.")
# Speed and scale.
flags.DEFINE_enum("advice", _D.advice, _C["advice"],
                  "Advice of the actual step: exact (recomputed with the "
                  "updated advisor, the paper's method) or lagged (the "
                  "virtual step's, whose gradient it reuses: no actual "
                  "backward).")
flags.DEFINE_enum("virtual_scope", _D.virtual_scope, _C["virtual_scope"],
                  "Weights the virtual step moves: all (exact), last_stage, "
                  "head.")
flags.DEFINE_enum("remat", _D.remat, _C["remat"],
                  "Rematerialisation: none (keep every activation for the "
                  "backward passes) or blocks (keep the backbone's block "
                  "boundaries only and recompute inside a block: less memory "
                  "for more time, the same gradients).")
flags.DEFINE_integer("meta_update_every", _D.meta_update_every,
                     "Update the advisor every k-th step.")
flags.DEFINE_enum("precision", _D.precision, _C["precision"],
                  "Keras dtype policy of backbone and head (the advisor and "
                  "the losses stay float32).")
flags.DEFINE_enum("strategy", _D.strategy, _C["strategy"],
                  "tf.distribute strategy: default (one device), mirrored "
                  "(all GPUs of this host), multi_worker (TF_CONFIG).")
# Run.
flags.DEFINE_integer("seed", _D.seed, "Seed of every split, init and draw.")
flags.DEFINE_string("workdir", _D.workdir, "Where the run writes everything.")
flags.DEFINE_enum("jit_compile", _D.jit_compile, _C["jit_compile"],
                  "XLA-compile the train step (auto: on GPU only).")
flags.DEFINE_bool("deterministic", _D.deterministic,
                  "Enable TensorFlow op determinism (same seed ⇒ same weights).")
flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size,
                     "Evaluation batch size.")
flags.DEFINE_bool("export", _D.export, "Export the classifier as a SavedModel.")
flags.DEFINE_enum("verbose", str(_D.verbose), [str(v) for v in
                                                 config_lib.VERBOSITIES],
                  "Keras progress output: auto (a progress bar on a "
                  "terminal, a line per epoch in a log file or pipe), 0 "
                  "(silent), 1 (progress bar), 2 (a line per epoch).")
flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every,
                     "Also checkpoint every N steps (0: at epoch ends only).")
flags.DEFINE_integer("keep_checkpoints", _D.keep_checkpoints,
                     "How many recent checkpoints to keep.")
flags.DEFINE_integer("telemetry_examples", _D.telemetry_examples,
                     "Training examples the advisor telemetry probes every "
                     "epoch (TensorBoard `advisor/*`, advisor_trace.jsonl); "
                     "0: off.")


def _int_list(flag_name, values):
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise flags.ValidationError(
        f"--{flag_name}={','.join(values)} must be a comma-separated list of "
        "integers.") from None


for _name in ("lr_decay_epochs", "lr_decay_steps"):
  flags.register_validator(
      _name, lambda v, n=_name: bool(_int_list(n, v)) or True,
      message=f"--{_name} must be a comma-separated list of integers.")


def config_from_flagfile(path, **overrides):
  """The `TrainConfig` a flagfile gives (as the CLI would parse it), with
  field `overrides`; for notebooks and tests. Leaves absl's FLAGS unparsed."""
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(["advisor_tf", f"--flagfile={path}"])
    config = to_config()
  finally:
    flags.FLAGS.unparse_flags()
  return dataclasses.replace(config, **overrides)


def to_config(values=None) -> config_lib.TrainConfig:
  """The parsed flags as a validated `TrainConfig`."""
  values = values or flags.FLAGS
  kwargs = {}
  for field in dataclasses.fields(config_lib.TrainConfig):
    value = values[field.name].value
    if field.name in ("lr_decay_epochs", "lr_decay_steps"):
      value = _int_list(field.name, value)
    elif field.name == "verbose" and value != "auto":
      value = int(value)
    kwargs[field.name] = value
  if values["autoaugment"].value:  # The former flag.
    if kwargs["augment_policy"] not in ("none", "autoaugment"):
      raise ValueError("--autoaugment means --augment_policy=autoaugment; "
                       "drop one of it and --augment_policy="
                       f"{kwargs['augment_policy']}.")
    kwargs["augment_policy"] = "autoaugment"
  config = config_lib.TrainConfig(**kwargs).validate()
  if (config.noise == "none" and values["noise_rate"].present
      and config.noise_rate != 0):
    # A warning, not a refusal: a flagfile's rate under a command line's
    # --noise=none is a fair override.
    logging.warning("--noise_rate=%s has no effect with --noise=none (the "
                    "labels are used as given); to inject noise choose a "
                    "--noise (%s).", config.noise_rate,
                    ", ".join(n for n in _C["noise"] if n != "none"))
  return config

flags.DEFINE_bool("dry_run", False,
                  "Validate the configuration and print it resolved, without "
                  "reading data or building the model.")



def flags_text(values=None):
  """The train command's own flags with their values, one per line: the
  run's `flags.txt`, a `--flagfile` that reproduces (or resumes) it. Only
  the flags defined here — not absl's (`--helpfull`, `--flagfile`,
  `--verbosity`, ...) nor those TensorFlow defines, which the command does
  not accept back — and not `--dry_run`."""
  values = values or flags.FLAGS
  own = values.flags_by_module_dict().get(__name__, [])
  lines = [flag.serialize() for flag in own if flag.name != "dry_run"]
  return ("# The flags of this run. Retrain or resume with\n"
          "#   advisor-train --flagfile=THIS_FILE [--workdir=NEW] "
          "[--flag=value ...]\n"
          + "".join(f"{line}\n" for line in lines if line))


# `--help` of advisor-train: every flag above, by topic.
GROUPS = {
    "data": ["dataset", "data_dir", "image_size", "augment", "augment_policy",
             "cutout", "gridmask", "autoaugment", "noise", "noise_rate",
             "flip_targets", "imbalance_factor", "train_examples",
             "meta_per_class",
             "meta_source",
             "corrections", "meta_from"],
    "method": ["method", "embedding_size", "advisor_label_input",
               "advisor_example_weight", "sample_selection",
               "selection_warmup", "relabel_confidence", "rho",
               "advisor_lr", "eql_threshold", "focal_gamma", "advice",
               "virtual_scope", "meta_update_every"],
    "optimisation": ["backbone", "pretrained_weights", "init_checkpoint",
                     "epochs", "train_steps", "steps_per_epoch", "batch_size",
                     "meta_batch_size", "lr", "momentum", "weight_decay",
                     "lr_schedule", "lr_decay_epochs", "lr_decay_steps",
                     "lr_decay_factor", "precision", "strategy",
                     "jit_compile", "remat"],
    "run": ["workdir", "seed", "deterministic", "eval_batch_size", "export",
            "verbose", "checkpoint_every", "keep_checkpoints",
            "telemetry_examples", "dry_run"],
}
