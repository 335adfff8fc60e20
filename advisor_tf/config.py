"""The typed, frozen configuration of one training run, and every choice a
run offers.

Library code receives a `TrainConfig`; only `advisor_tf.cli_flags` reads absl
flags. The allowed values of every choice are typed once, next to their
implementation (methods in model.py, noises in data/noise.py, ...), and
gathered in `CHOICES`, which the flags, the validation and the docs read.
`TrainConfig.validate()` is the one place a configuration is checked: ranges,
finiteness and combinations, with errors naming the flag and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import os

from advisor_tf.backbones import BACKBONES
from advisor_tf.data.augment import POLICIES as AUGMENT_POLICIES
from advisor_tf.data.sources import SOURCES
from advisor_tf.data.noise import FLIP_TARGET_RULES, NOISE_TYPES
from advisor_tf.distribute import STRATEGIES
from advisor_tf.model import ADVICE_MODES, ADVISOR_MODES, MODES, VIRTUAL_SCOPES
from advisor_tf.model import REMAT_MODES
from advisor_tf.model import DEFAULT_ADVISOR_LR

LR_SCHEDULES = ("constant", "step", "cosine")
VERBOSITIES = ("auto", 0, 1, 2)
# Datasets that ship inside the tool and read no --data_dir.
BUNDLED_DATASETS = ("digits",)
# Defaults that adapt to the data and the run (`TrainConfig.resolved`).
DEFAULT_META_BATCH_SIZE = 50
DEFAULT_META_PER_CLASS = 10
ADAPTIVE_FIELDS = ("meta_batch_size", "lr_decay_epochs")
DEFAULT_DECAY_FRACTIONS = (2 / 3, 5 / 6)
# Where the meta set comes from (`advisor_tf.meta_select`); unset: `folder`
# when the dataset ships a trusted split, else `meta_select.DEFAULT_DRAW`.
META_SOURCES = ("folder", "random", "random_noisy", "auto")
JIT_CHOICES = ("auto", "true", "false")
SAMPLE_SELECTIONS = ("none", "gmm", "gmm_relabel")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# Every enumerated flag (the same name as its TrainConfig field) and its
# allowed values, in the order `--help` lists them.
CHOICES = {
    "dataset": tuple(sorted(SOURCES)),
    "augment_policy": AUGMENT_POLICIES,
    "noise": NOISE_TYPES,
    "flip_targets": FLIP_TARGET_RULES,
    "method": MODES,
    "advice": ADVICE_MODES,
    "backbone": tuple(sorted(BACKBONES)),
    "lr_schedule": LR_SCHEDULES,
    "virtual_scope": VIRTUAL_SCOPES,
    "remat": REMAT_MODES,
    "precision": PRECISIONS,
    "strategy": STRATEGIES,
    "jit_compile": JIT_CHOICES,
    "meta_source": META_SOURCES,
    "sample_selection": SAMPLE_SELECTIONS,
}
# Choices whose flag may stay unset (None: resolved by the run).
UNSET_CHOICES = ("meta_source",)
# Fields that may change when a run resumes in the same workdir: how the run
# is executed or reported, not what it computes.
RUN_ONLY_FIELDS = ("workdir", "data_dir", "verbose", "export", "init_checkpoint",
                   "pretrained_weights",
                   "eval_batch_size", "checkpoint_every", "keep_checkpoints",
                   "jit_compile", "telemetry_examples", "remat")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines a run. Field names equal the CLI flag names."""
  # Data.
  dataset: str = "digits"
  data_dir: str | None = None
  image_size: int | None = None
  augment: bool = True
  augment_policy: str = "none"
  cutout: int = 0
  gridmask: bool = False
  noise: str = "none"  # Users' labels are theirs: no noise unless asked.
  noise_rate: float = 0.4
  flip_targets: str = "random"
  imbalance_factor: float = 1.0
  train_examples: int | None = None  # None: the whole training split.
  # Unset: all of a dataset's own trusted split (a meta/ folder), else
  # DEFAULT_META_PER_CLASS per class drawn out of train.
  meta_per_class: int | None = None
  meta_source: str | None = None  # None: meta_select.resolve() decides.
  corrections: str | None = None  # advisor-review's corrections.csv.
  # A run's workdir whose automatic meta set (its meta_selection.json) this
  # run takes instead of choosing its own: a retrain after review keeps the
  # meta set of the run it corrects.
  meta_from: str | None = None
  # Method.
  method: str = "mfrw_mes"
  embedding_size: int = 100
  # The advisor also reads the given label (beyond the thesis; the thesis
  # flagfiles turn it off). Off: no consistent gain on the digits grids
  # (docs/results.md, "The advisor that also reads the label").
  advisor_label_input: bool = False
  # The advisor also reads out a per-example loss weight ω(f, L) (beyond the
  # thesis; the thesis flagfiles turn it off): the discount that
  # instance-dependent noise calls for (docs/results.md, Fashion-MNIST).
  advisor_example_weight: bool = False
  # Sample selection (beyond the thesis; any method): after
  # `selection_warmup` epochs of plain training (None: a third of --epochs),
  # each epoch's loss drops
  # the training examples that a two-component Gaussian mixture on their
  # losses of the given labels puts in the high-loss component (DivideMix's
  # split, Li et al. 2020): the small-loss trick for noise that depends on
  # the image, where the MFRW mask discounts no example. `gmm_relabel`
  # trains a dropped example instead on the classifier's prediction where
  # that is at least `relabel_confidence` likely (label correction; the
  # user's labels are not changed).
  sample_selection: str = "none"
  selection_warmup: int | None = None
  relabel_confidence: float = 0.95
  rho: float = 0.9
  advisor_lr: float = DEFAULT_ADVISOR_LR  # The thesis flagfiles set 1e-4.
  eql_threshold: float = 0.01
  focal_gamma: float = 2.0
  # Classifier and optimisation.
  backbone: str = "small_cnn_auto"  # = small_cnn at 8×8 (user_path grid).
  pretrained_weights: str | None = None
  init_checkpoint: str | None = None
  epochs: int = 30
  train_steps: int | None = None
  steps_per_epoch: int | None = None
  batch_size: int = 64
  meta_batch_size: int | None = None  # None: min(50, the meta set).
  lr: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 5e-4
  lr_schedule: str = "step"
  lr_decay_epochs: tuple = ()  # (): at 2/3 and 5/6 of --epochs (20, 25 of 30).
  lr_decay_steps: tuple = ()
  lr_decay_factor: float = 0.1
  # Speed and scale.
  advice: str = "exact"
  virtual_scope: str = "all"
  remat: str = "none"  # Memory for recomputation; the same gradients.
  meta_update_every: int = 1
  precision: str = "float32"
  strategy: str = "default"
  # Run.
  seed: int = 0
  workdir: str = "runs/quickstart"
  jit_compile: str = "auto"
  deterministic: bool = True
  eval_batch_size: int = 256
  export: bool = True
  verbose: str | int = "auto"  # Keras' own: a bar on a terminal, else a
  # line per epoch (`progress_verbosity`).
  checkpoint_every: int = 200
  keep_checkpoints: int = 3
  telemetry_examples: int = 2048

  def validate(self):
    """Raises ValueError naming the flag and what is allowed."""
    for name, allowed in CHOICES.items():
      if getattr(self, name) is not None or name not in UNSET_CHOICES:
        _choice(name, getattr(self, name), allowed)
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"--{field.name}={value} must be a finite number.")
    if not self.workdir:
      raise ValueError("--workdir is empty; give the folder the run writes "
                       "(e.g. --workdir=runs/photos).")
    if self.data_dir and self.dataset in BUNDLED_DATASETS:
      raise ValueError(f"--data_dir={self.data_dir} is not read by --dataset="
                       f"{self.dataset} (bundled with the tool); drop "
                       "--data_dir, or choose the --dataset it holds "
                       "(image_folder, image_csv, cifar10, ...).")
    if self.meta_update_every < 1:
      raise ValueError(f"--meta_update_every={self.meta_update_every} must be "
                       ">= 1.")
    if self.meta_update_every > 1 and self.strategy != "default":
      raise ValueError("--meta_update_every > 1 needs --strategy=default (one "
                       "replica).")
    if self.method not in ADVISOR_MODES and (
        self.virtual_scope != "all" or self.meta_update_every != 1
        or self.advice != "exact"):
      raise ValueError("--virtual_scope, --meta_update_every and --advice "
                       "apply to the advisor methods "
                       f"({', '.join(ADVISOR_MODES)}), not "
                       f"--method={self.method}.")
    if self.advisor_example_weight and self.method not in ("mfrw", "mes",
                                                           "mfrw_mes"):
      raise ValueError("--advisor_example_weight adds a head to the advisor "
                       "network of mfrw, mes and mfrw_mes, not "
                       f"--method={self.method}.")
    if self.selection_warmup is not None and (
        self.sample_selection == "none" or self.selection_warmup < 1
        or (self.train_steps is None
            and self.selection_warmup >= self.epochs)):
      raise ValueError(f"--selection_warmup={self.selection_warmup}: the "
                       "epochs of plain training before --sample_selection "
                       f"drops examples, 1 to --epochs − 1 ({self.epochs - 1}),"
                       " with --sample_selection=gmm or gmm_relabel (unset: a third of "
                       "--epochs).")
    if (self.relabel_confidence != TrainConfig.relabel_confidence
        and self.sample_selection != "gmm_relabel"):
      raise ValueError(f"--relabel_confidence={self.relabel_confidence} "
                       "applies to --sample_selection=gmm_relabel, not "
                       f"--sample_selection={self.sample_selection}.")
    if not 0 < self.relabel_confidence <= 1:
      raise ValueError(f"--relabel_confidence={self.relabel_confidence}: the "
                       "classifier's probability of its prediction at which "
                       "--sample_selection=gmm_relabel trains a dropped image "
                       "on it, in (0, 1].")
    if self.advice == "lagged" and self.meta_update_every != 1:
      raise ValueError("--advice=lagged reuses the virtual step's gradient "
                       "and needs --meta_update_every=1.")
    if self.cutout < 0:
      raise ValueError(f"--cutout={self.cutout} must be >= 0 (0: off).")
    if self.focal_gamma < 0:
      raise ValueError(f"--focal_gamma={self.focal_gamma} must be >= 0.")
    if not 0 < self.eql_threshold < 1:
      raise ValueError(f"--eql_threshold={self.eql_threshold} must be in "
                       "(0, 1).")
    if self.telemetry_examples < 0:
      raise ValueError(f"--telemetry_examples={self.telemetry_examples} must "
                       "be >= 0 (0: no advisor telemetry).")
    if self.checkpoint_every < 0:
      raise ValueError(f"--checkpoint_every={self.checkpoint_every} must be "
                       ">= 0 (0: at epoch ends only).")
    if self.keep_checkpoints < 1:
      raise ValueError(f"--keep_checkpoints={self.keep_checkpoints} must be "
                       ">= 1.")
    if not 0.0 <= self.noise_rate < 1.0:
      raise ValueError(f"--noise_rate={self.noise_rate} must be in [0, 1).")
    if self.imbalance_factor < 1.0:
      raise ValueError(f"--imbalance_factor={self.imbalance_factor} must be >= "
                       "1 (1 means balanced).")
    if not 0.0 <= self.rho <= 1.0:
      raise ValueError(f"--rho={self.rho} must be in [0, 1].")
    for name in ("epochs", "batch_size", "meta_batch_size", "embedding_size",
                 "eval_batch_size", "train_examples"):
      if getattr(self, name) is not None and getattr(self, name) < 1:
        raise ValueError(f"--{name}={getattr(self, name)} must be >= 1.")
    if self.meta_per_class == 0 and self.meta_source not in (None, "folder"):
      raise ValueError(f"--meta_source={self.meta_source} draws "
                       "--meta_per_class examples per class out of train; "
                       "--meta_per_class=0 (all of a dataset's own meta "
                       "split) needs --meta_source=folder.")
    if self.meta_per_class is not None and self.meta_per_class < 0:
      raise ValueError(f"--meta_per_class={self.meta_per_class} must be >= 1 "
                       "(or 0: all of a dataset's own meta split).")
    if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
      raise ValueError(f"--steps_per_epoch={self.steps_per_epoch} must be >= 1 "
                       "or unset (one pass over the training set).")
    for name in ("lr", "advisor_lr"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name}={getattr(self, name)} must be > 0.")
    if self.weight_decay < 0:
      raise ValueError(f"--weight_decay={self.weight_decay} must be >= 0.")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"--momentum={self.momentum} must be in [0, 1).")
    if not 0 < self.lr_decay_factor <= 1:
      raise ValueError(f"--lr_decay_factor={self.lr_decay_factor} must be in "
                       "(0, 1].")
    if self.verbose not in VERBOSITIES:
      raise ValueError(f"--verbose={self.verbose} must be auto, 0, 1 or 2.")
    if self.train_steps is not None and self.train_steps < 1:
      raise ValueError(f"--train_steps={self.train_steps} must be >= 1.")
    if self.lr_decay_steps and self.lr_schedule != "step":
      raise ValueError("--lr_decay_steps needs --lr_schedule=step.")
    if self.corrections is not None:
      if self.dataset not in ("image_folder", "image_csv"):
        raise ValueError(f"--corrections={self.corrections} applies to "
                         "--dataset=image_folder or image_csv (files a row "
                         f"can name), not --dataset={self.dataset}.")
      if not os.path.isfile(self.corrections):
        raise ValueError(f"--corrections={self.corrections}: no such file.")
    if self.meta_from is not None and not os.path.isdir(self.meta_from):
      raise ValueError(f"--meta_from={self.meta_from}: no such run folder "
                       "(give the workdir of the run whose meta set to keep).")
    if self.image_size is not None and self.image_size < 8:
      raise ValueError(f"--image_size={self.image_size} must be >= 8.")
    if self.lr_schedule == "step" and not self.lr_decay_steps and any(
        e < 1 or e > self.epochs for e in self.lr_decay_epochs):
      raise ValueError(f"--lr_decay_epochs={list(self.lr_decay_epochs)} must "
                       f"lie in [1, --epochs={self.epochs}].")
    return self

  def decay_epochs(self):
    """The step schedule's decay epochs: `--lr_decay_epochs`, or by default
    at 2/3 and 5/6 of the run (20 and 25 of the default 30 epochs), so any
    `--epochs` works without setting them."""
    if self.lr_decay_epochs:
      return tuple(self.lr_decay_epochs)
    return tuple(sorted({max(1, round(self.epochs * f))
                         for f in DEFAULT_DECAY_FRACTIONS}))

  def resolved(self, meta_examples):
    """This config with the defaults that adapt to the data and the run
    length made concrete: `(config, [what was chosen, in words])`. A run
    stores the resolved config, so its workdir says what it trained with."""
    changes, chosen = {}, []
    if self.meta_batch_size is None:
      changes["meta_batch_size"] = min(DEFAULT_META_BATCH_SIZE,
                                       int(meta_examples))
      chosen.append(f"--meta_batch_size={changes['meta_batch_size']} "
                    f"(the smaller of {DEFAULT_META_BATCH_SIZE} and the meta "
                    f"set's {meta_examples} images)")
    if self.lr_schedule == "step" and not (self.lr_decay_epochs
                                           or self.lr_decay_steps):
      changes["lr_decay_epochs"] = self.decay_epochs()
      chosen.append("--lr_decay_epochs="
                    f"{','.join(map(str, changes['lr_decay_epochs']))} "
                    f"(2/3 and 5/6 of --epochs={self.epochs})")
    return dataclasses.replace(self, **changes), chosen

  @classmethod
  def from_dict(cls, saved):
    """A config from a saved dict (config.json); unknown keys are ignored
    and fields newer than the saved run take their defaults."""
    saved = _upgrade(saved)
    for key in ("lr_decay_epochs", "lr_decay_steps"):
      if key in saved:
        saved[key] = tuple(saved[key])
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in saved.items() if k in known})

  def to_json(self):
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  def differences(self, saved):
    """Flags whose values differ from a saved config dict (run-only flags
    excepted), as `--name: saved → now` strings."""
    now = json.loads(self.to_json())
    # A field newer than the saved run had its default value there.
    defaults = json.loads(TrainConfig().to_json())
    saved = {**defaults, **_upgrade(saved)}
    # An adaptive default saved unresolved ("auto") resolves as this run's
    # does: the same data (checked apart) and --epochs give the same value.
    auto = {k for k in ADAPTIVE_FIELDS if saved.get(k) in (None, [], ())}
    # An unset --meta_per_class: the run reads its recorded split back.
    auto |= {k for k in ("meta_per_class",) if now[k] is None}
    return [f"--{k}: {saved.get(k)!r} in the workdir, {now[k]!r} now"
            for k in sorted(now) if k not in RUN_ONLY_FIELDS
            and k not in auto and saved.get(k) != now[k]]


def progress_verbosity(verbose, stream=None):
  """Keras' `fit(verbose=...)` for a run's `--verbose`. `auto` is what Keras'
  own "auto" means to do: the per-step progress bar (1) on a terminal, one
  line per epoch (2) otherwise — a log file or a pipe would otherwise get
  thousands of carriage-return updates on one line (Keras 3 takes any POSIX
  process for a terminal)."""
  if verbose != "auto":
    return int(verbose)
  stream = sys.stdout if stream is None else stream
  return 1 if getattr(stream, "isatty", lambda: False)() else 2


def _upgrade(saved):
  """A saved config dict in today's fields: runs saved before
  `augment_policy` stored `autoaugment: true|false`."""
  saved = dict(saved)
  # Runs saved before `advisor_label_input` had the thesis' advisor.
  saved.setdefault("advisor_label_input", False)
  # Runs saved before `advisor_example_weight`: the advisor had no ω head.
  saved.setdefault("advisor_example_weight", False)
  # Runs saved before `sample_selection` kept every example.
  saved.setdefault("sample_selection", "none")
  saved.setdefault("selection_warmup", None)
  saved.setdefault("relabel_confidence", 0.95)
  saved.setdefault("meta_from", None)
  # Runs saved before `meta_source` took the dataset's own meta split where
  # it shipped one (`folder`) and otherwise drew it out of train before the
  # noise (`random`); a user's folder may or may not have had one (unset).
  if "meta_source" not in saved:
    saved["meta_source"] = {"clothing1m": "folder", "imagenet_lt": "folder",
                            "places_lt": "folder", "image_folder": None,
                            "image_csv": None}.get(saved.get("dataset"),
                                                   "random")
  autoaugment = saved.pop("autoaugment", None)
  if autoaugment is not None and "augment_policy" not in saved:
    saved["augment_policy"] = "autoaugment" if autoaugment else "none"
  return saved


def _choice(flag, value, allowed):
  if value not in allowed:
    raise ValueError(f"--{flag}={value!r} is not allowed; choose one of: "
                     f"{', '.join(allowed)}.")
