r"""The dirty-labels grid: every method on noisy and long-tailed digits, and
which signal finds the corrupted labels best.

  python -m advisor_tf.experiments.dirty_labels \
      --out=results/dirty_labels.json \
      [--cells=sym0.4,flip0.4] [--methods=ce,mfrw_mes] [--seeds=0,1,2] \
      [--epochs=30] [--workdir=runs/dirty_labels] [--folds=5] \
      [--set=advisor_label_input=true --out=results/OTHER.json]

Offline, on the bundled digits (scikit-learn's 1 797 8×8 images: 1 198
training images, of which 10 per class are taken out, clean, as the meta set;
599 test images). Every run uses the repository's defaults (`TrainConfig`:
small CNN, 30 epochs, SGD lr 0.05 with momentum 0.9 and weight decay 5e-4,
decayed ×0.1 at 2/3 and 5/6 of the epochs (20 and 25), batch 64, meta batch
50, augmentation on), with `export=False, verbose=0`. The cells (`CELLS`),
each applied to the training split after the meta split; the noise is drawn
from the run's seed:

  sym0.2, sym0.4, sym0.6  symmetric noise at rate p: a label moves to each of
                          the 9 other classes with probability p / 9
  flip0.4                 Flip noise at 0.4: each class has one target class,
                          drawn at random per seed (`flip_targets=random`, as
                          in the other digits experiments' BASE), that 40 % of
                          its labels move to
  lt20, lt50              long tail with imbalance factor 20 / 50 (class c
                          keeps n_max · IF^(−c/9) images: class 0 the most,
                          class 9 the fewest), no noise
  lt20_sym0.4             long tail 20, then symmetric noise 0.4
  lt20_flip0.4            long tail 20, then Flip noise 0.4 (random targets)

Methods ce, mwnet, mfrw, mes, mfrw_mes; seeds 0, 1, 2. Per (cell, method)
the JSON holds, in the order of `seeds`:

  accuracy             test top-1 (%)
  tail_accuracy        mean test accuracy (%) of the tail classes: the rarest
                       third (C // 3 = 3 of 10) of the classes by clean
                       training count in the long-tailed cells, which are
                       classes 7, 8, 9; in the balanced cells the same classes
                       by index order (`tail_classes`)
  realised_noise_rate  the fraction of wrong training labels (noisy cells)
  label_issue_ap, label_issue_precision_at_k
                       `{ranking: [per seed]}`, average precision and
                       precision at k = the true number of corrupted labels,
                       of each ranking of the training examples for finding
                       the corrupted ones (empty in cells without noise):
    advisor            the advisor's discount (advisor methods only)
    loss               the per-example loss of the same run
    ce_loss            the per-example loss of the `ce` run of the same cell
                       and seed (same data)
    cleanlab_cv        cleanlab 2.9 (`advice.cleanlab_scores`: issues found
                       by `find_label_issues` first, then by
                       `get_label_quality_scores`) on out-of-sample predicted
                       probabilities of K-fold cross-entropy training: the
                       usual confident-learning recipe; the same for every
                       method of a (cell, seed)
    cleanlab_model     the same cleanlab ranking on this run's own predicted
                       probabilities
    rank_average       mean percentile rank of `advisor` and `cleanlab_model`
                       (advisor methods only)
    cv_loss            mean percentile rank of `cleanlab_cv` and `loss`
                       (`analyze`'s default: the best grid mean)
    cv_advisor         mean percentile rank of `cleanlab_cv` and `advisor`
  train_seconds        wall time of the run's training

The K fold trainings (`crossval.cross_validated_probabilities`) train the `ce`
configuration of the cell (same backbone, epochs, optimizer, schedule,
augmentation and data stream as a `ce` run) on 4/5 of the run's training
split (stratified by given label, seeded by the run's seed) and predict the
held-out fifth. They are done with `builder.build_model` and a plain
Keras `fit` (the trainer trains on whole splits), without checkpoints or
per-epoch test evaluation.

Resumable and incremental: after every finished training run the JSON is
rewritten (atomically), and a restart skips the (cell, method, seed) entries
already in it, so the grid (about two hours on two CPU cores) can be run
across sessions. `ce_loss` and `cleanlab_cv` of a (cell, seed) are read back
from its `ce` entry; the `ce` run of a noisy (cell, seed) is therefore done
(and recorded) first, even if `--methods` leaves `ce` out. With a kept
`--workdir`, an interrupted run resumes from its checkpoints and the folds'
out-of-sample probabilities are reused (`cv_probs.npy`).
"""

import contextlib
import dataclasses
import fcntl
import json
import logging as pylogging
import os
import tempfile
import time
import types

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

import keras  # noqa: E402

from advisor_tf import advice  # noqa: E402
from advisor_tf import analysis  # noqa: E402
from advisor_tf import config as config_lib  # noqa: E402
from advisor_tf import crossval  # noqa: E402
from advisor_tf import run as run_lib  # noqa: E402
from advisor_tf import telemetry  # noqa: E402
from advisor_tf import trainer  # noqa: E402
from advisor_tf.experiments import BASE  # noqa: E402

METHODS = ("ce", "mwnet", "mfrw", "mes", "mfrw_mes")
# Cell name → the TrainConfig fields it sets (over `BASE`).
CELLS = {
    "sym0.2": dict(noise="symmetric", noise_rate=0.2),
    "sym0.4": dict(noise="symmetric", noise_rate=0.4),
    "sym0.6": dict(noise="symmetric", noise_rate=0.6),
    "flip0.4": dict(noise="flip", noise_rate=0.4),
    "lt20": dict(noise="none", noise_rate=0.0, imbalance_factor=20.0),
    "lt50": dict(noise="none", noise_rate=0.0, imbalance_factor=50.0),
    "lt20_sym0.4": dict(noise="symmetric", noise_rate=0.4,
                        imbalance_factor=20.0),
    "lt20_flip0.4": dict(noise="flip", noise_rate=0.4, imbalance_factor=20.0),
}
SEEDS = (0, 1, 2)
FOLDS = crossval.FOLDS
DEFAULT_EPOCHS = config_lib.TrainConfig().epochs


@dataclasses.dataclass(frozen=True)
class Grid:
  """A grid of runs: cells × methods × seeds over one base configuration.

  Attributes:
    name: the grid's name (log lines, temporary files).
    base: the `TrainConfig` every run starts from.
    cells: cell name → the `TrainConfig` fields it sets (over `base`).
    methods: method name (a key of the results) → the `TrainConfig` fields
      it sets (`method`, and e.g. `meta_source`).
  """
  name: str
  base: config_lib.TrainConfig
  cells: dict
  methods: dict

  def config(self, cell, method, seed, epochs, root, overrides=None):
    """The `TrainConfig` of one run; `overrides` (`--set`) are further
    fields of every run."""
    if cell not in self.cells:
      raise ValueError(f"--cells: {cell!r} is not one of "
                       f"{', '.join(self.cells)}.")
    if method not in self.methods:
      raise ValueError(f"--methods: {method!r} is not one of "
                       f"{', '.join(self.methods)}.")
    return dataclasses.replace(
        self.base, **{**self.cells[cell], **self.methods[method],
                      **(overrides or {})}, seed=seed,
        epochs=epochs, lr_decay_epochs=decay_epochs(epochs),
        workdir=os.path.join(root, cell, f"{method}_s{seed}")).validate()

  def is_noisy(self, cell):
    return self.cells[cell].get("noise", self.base.noise) != "none"


# The digits grid of this module.
DIGITS = Grid("dirty_labels", BASE, CELLS, {m: {"method": m} for m in METHODS})

# ---------------------------------------------------------------- protocol
def parse_overrides(text):
  """`field=value,...` → `{field: value}` typed as `TrainConfig`'s fields
  (`--set`; booleans: true/false; tuples: values joined by `/`)."""
  fields = {f.name: f for f in dataclasses.fields(config_lib.TrainConfig)}
  defaults = config_lib.TrainConfig()
  out = {}
  for item in [t for t in (text or "").split(",") if t.strip()]:
    name, _, value = item.partition("=")
    name = name.strip()
    if name not in fields or not _:
      raise ValueError(f"--set: {item!r} is not field=value of a TrainConfig "
                       "field.")
    default = getattr(defaults, name)
    if isinstance(default, bool):
      if value.lower() not in ("true", "false"):
        raise ValueError(f"--set: {name}={value} must be true or false.")
      out[name] = value.lower() == "true"
      continue
    if isinstance(default, tuple):
      kind, convert = "integers joined by /", (
          lambda v: tuple(int(x) for x in v.split("/") if x))
    elif isinstance(default, int) or fields[name].type in ("int | None",):
      kind, convert = "an integer", int
    elif isinstance(default, float):
      kind, convert = "a number", float
    else:
      kind, convert = "text", str
    try:
      out[name] = convert(value)
    except ValueError:
      raise ValueError(f"--set: {name}={value} must be {kind}.") from None
  return out


def cell_config(cell, method, seed, epochs=DEFAULT_EPOCHS, root="runs",
                overrides=None, grid=DIGITS):
  """The `TrainConfig` of one run of `grid`; `overrides` (`--set`) are
  further `TrainConfig` fields."""
  return grid.config(cell, method, seed, epochs, root, overrides)


def decay_epochs(epochs):
  """The grid's step schedule: ×0.1 at 2/3 and 5/6 of `epochs`."""
  return (max(1, int(epochs * 2 / 3)), max(1, int(epochs * 5 / 6)))


def is_noisy(cell, grid=DIGITS):
  return grid.is_noisy(cell)


def tail_classes(split, num_classes, imbalance_factor):
  """The tail: the rarest third (`num_classes // 3`, at least one) of the
  classes by clean training count when the cell is long-tailed (ties: the
  higher index is rarer), the last third by index when it is balanced."""
  size = max(1, num_classes // 3)
  if imbalance_factor <= 1:
    return np.arange(num_classes - size, num_classes)
  counts = np.bincount(split.train_clean_labels, minlength=num_classes)
  order = np.lexsort((-np.arange(num_classes), counts))  # Rarest first.
  return np.sort(order[:size])


def tail_accuracy(per_class_accuracy, tail):
  values = [per_class_accuracy[k] for k in tail
            if per_class_accuracy[k] is not None]
  return float(np.mean(values)) if values else None


# ----------------------------------------------------------- K-fold CE
# --------------------------------------------------------------- results
def load_results(path):
  """The grid's results so far (`{}` when `path` does not exist)."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


class Busy(RuntimeError):
  """Another grid command holds the JSON (`exclusive`)."""


@contextlib.contextmanager
def exclusive(path):
  """Holds `path`'s lock file (`path + ".lock"`) while a grid command reads
  and rewrites `path`: a second command on the same JSON would write back
  its own older copy over the first one's runs, so it is refused at once,
  naming the file."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with open(path + ".lock", "w") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise Busy(
          f"another grid command is writing {path}; wait for it, or give "
          "this one another --out.") from None
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def write_results(path, results):
  """Writes through a temporary file, so a crash never leaves half a JSON."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".dirty_labels.", dir=folder)
  with os.fdopen(fd, "w") as f:
    json.dump(results, f, indent=2)
  os.replace(tmp, path)


def done(results, cell, method, seed):
  """Whether the (cell, method, seed) run is in `results`."""
  return seed in results.get(cell, {}).get(method, {}).get("seeds", [])


def record(results, cell, method, seed, values, rankings=None):
  """Adds one run to `results`, keeping every per-seed list in the order of
  `seeds` (a value missing for a seed is None).

  Args:
    results: the grid's dict (changed in place).
    cell, method, seed: the run.
    values: `{key: value}` of per-seed scalars (accuracy, ...).
    rankings: `{"label_issue_ap": {ranking: value}, ...}`.
  """
  entry = results.setdefault(cell, {}).setdefault(method, {"seeds": []})
  seeds = entry["seeds"]
  if seed in seeds:
    raise ValueError(f"{cell}/{method}/seed {seed} is already recorded.")
  at = int(np.searchsorted(seeds, seed))
  old = len(seeds)
  seeds.insert(at, seed)

  def put(table, key, value):
    table.setdefault(key, [None] * old).insert(at, value)

  for key in set(values) | {k for k, v in entry.items()
                            if k != "seeds" and isinstance(v, list)}:
    put(entry, key, values.get(key))
  for group in ("label_issue_ap", "label_issue_precision_at_k"):
    table = entry.setdefault(group, {})
    new = (rankings or {}).get(group, {})
    for key in set(new) | set(table):
      put(table, key, new.get(key))
    entry[group] = _ordered(table, analysis.GRID_RANKINGS)
  results[cell][method] = _ordered(entry, _KEYS)
  return results[cell][method]


_KEYS = ("seeds", "accuracy", "tail_accuracy", "realised_noise_rate",
         "train_seconds", "label_issue_ap", "label_issue_precision_at_k")


def _ordered(table, first):
  """`table` with the keys of `first` first (in that order), then the others
  sorted: a stable, readable JSON."""
  keys = [k for k in first if k in table] + sorted(set(table) - set(first))
  return {k: table[k] for k in keys}


def per_seed(results, cell, method, seed, group, ranking):
  """One recorded ranking value (None when absent)."""
  entry = results.get(cell, {}).get(method, {})
  if seed not in entry.get("seeds", []):
    return None
  values = entry.get(group, {}).get(ranking)
  return None if values is None else values[entry["seeds"].index(seed)]


def _mean(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


# -------------------------------------------------------------- the runs
def _train_and_advise(config):
  keras.backend.clear_session()
  start = time.time()
  metrics = trainer.train(config)
  seconds = time.time() - start
  adv, finished = _advise(config.workdir)
  return metrics, adv, finished, seconds


def _quality(scores, noisy):
  quality = advice.ranking_quality(scores, noisy)
  return {"label_issue_ap": None if quality is None else quality["ap"],
          "label_issue_precision_at_k": advice.precision_at_k(scores, noisy)}


def measure_rankings(adv, method, shared, cv_scores=None, train_indices=None):
  """`{ranking: {group: value}}` of a noisy run's advice `adv`: every
  single-run ranking, `ce_loss` for the `ce` run, the (cell, seed)'s
  `shared` qualities and, given `cv_scores` (cleanlab's out-of-sample
  scores, `{dataset index: (given label, score)}` of the `ce` run's
  training split) and the run's `train_indices`, the rankings built on
  them. Those are measured on the examples both splits train on (a run
  whose meta set came out of training elsewhere trains on a few the `ce`
  run held out), and only where both carry the same labels: a run whose
  noise was drawn otherwise (`--meta_source=auto` draws the protocol in
  another order) gets no `cleanlab_cv` of its own."""
  single = advice.single_run_rankings(adv)
  measured = {name: _quality(scores, adv.noisy)
              for name, scores in single.items()}
  if cv_scores is not None:
    indices = np.asarray(train_indices)[adv.positions]
    both = np.array([int(i) in cv_scores for i in indices], bool)
    same = all(cv_scores[int(i)][0] == int(y)
               for i, y in zip(indices[both], adv.given[both]))
    if same:  # Folds trained on other labels rank nothing of this run.
      common = {name: scores[both] for name, scores in single.items()}
      cv = advice.cv_rankings(common, np.array(
          [cv_scores[int(i)][1] for i in indices[both]], np.float64))
      measured.update({name: _quality(scores, adv.noisy[both])
                       for name, scores in cv.items()})
  if method == "ce":
    measured["ce_loss"] = measured["loss"]
  measured.update({k: v for k, v in shared.items() if k not in measured})
  return measured


def run_one(cell, method, seed, epochs, root, shared, cv_scores=None,
            overrides=None, grid=DIGITS):
  """Trains one run of `grid` and measures it. `shared` holds the (cell,
  seed)'s `ce_loss` and `cleanlab_cv` qualities (`{ranking: {group:
  value}}`) when known; `cv_scores` cleanlab's out-of-sample scores;
  `overrides` further `TrainConfig` fields. Returns `(values, rankings,
  advice)`."""
  config = grid.config(cell, method, seed, epochs, root, overrides)
  metrics, adv, finished, seconds = _train_and_advise(config)
  num_classes = finished.source.num_classes
  tail = tail_classes(finished.split, num_classes, config.imbalance_factor)
  values = {"accuracy": metrics["test/top1"],
            "tail_accuracy": tail_accuracy(
                metrics["test/per_class_accuracy"], tail),
            "train_seconds": round(seconds, 1)}
  values.update(run_statistics(config.workdir, metrics))
  rankings = {"label_issue_ap": {}, "label_issue_precision_at_k": {}}
  if grid.is_noisy(cell):
    values["realised_noise_rate"] = float(adv.noisy.mean())
    measured = measure_rankings(adv, method, shared, cv_scores,
                                finished.split.train_indices)
    for name, quality in measured.items():
      for group, value in quality.items():
        rankings[group][name] = value
  return values, rankings, adv


LAST_FRACTION = 0.1  # The published convention: the last 10 % of epochs.


def run_statistics(workdir, metrics):
  """A finished run's per-seed values beyond the final test top-1:

    accuracy_last10    mean test top-1 (%) over the last 10 % of epochs
                       (at least one; the literature's convention), from
                       the run's `history.csv`
    meta_purity        the fraction of right labels in the meta set
                       (synthetic noise only)
    mask_mean_noisy, mask_mean_clean, weight_mean_noisy, weight_mean_clean,
    suppression_mean   the advisor's MFRW mask (mean over examples and
                       features) on the probe's mislabelled and clean
                       examples, Meta-Weight-Net's weights likewise, and
                       the mean MES suppression, at the last epoch of the
                       run's trace (advisor methods)
    selection_kept_share, selection_dropped_mislabelled_share,
    selection_mislabelled_dropped_share, selection_relabelled_share,
    selection_relabelled_right_share
                       `--sample_selection`: its last selection's share of
                       the training set kept, and the dropped images'
                       share of mislabelled ones and the mislabelled ones'
                       share dropped; with `gmm_relabel`, the share of the
                       training set relabelled and the relabelled ones'
                       share now right
  """
  out = {}
  accuracy = trainer.epoch_accuracies(workdir)
  if accuracy:
    last = max(1, int(round(len(accuracy) * LAST_FRACTION)))
    out["accuracy_last10"] = round(float(np.mean(accuracy[-last:])), 4)
  if metrics.get("meta/purity") is not None:
    out["meta_purity"] = metrics["meta/purity"]
  for key in ("kept_share", "dropped_mislabelled_share",
              "mislabelled_dropped_share", "relabelled_share",
              "relabelled_right_share"):
    if metrics.get(f"selection/{key}") is not None:
      out[f"selection_{key}"] = metrics[f"selection/{key}"]
  trace = telemetry.read_trace(workdir)
  if trace:
    final = trace[-1]
    for key in ("mask_mean_noisy", "mask_mean_clean", "weight_mean_noisy",
                "weight_mean_clean"):
      if final.get(key) is not None:
        out[key] = round(float(final[key]), 5)
    if final.get("class_suppression") is not None:
      out["suppression_mean"] = round(float(np.mean(
          final["class_suppression"])), 5)
  return out


def _shared(results, cell, seed, grid=DIGITS):
  """`ce_loss` and `cleanlab_cv` of a (cell, seed), as recorded with any of
  its runs (the `ce` run first)."""
  out = {}
  for name in ("ce_loss", "cleanlab_cv"):
    for method in grid.methods:
      quality = {group: per_seed(results, cell, method, seed, group, name)
                 for group in ("label_issue_ap",
                               "label_issue_precision_at_k")}
      if quality["label_issue_ap"] is not None:
        out[name] = quality
        break
  return out


def cv_cache(cell, seed, epochs, root, folds):
  """Where the (cell, seed)'s out-of-sample probabilities are kept."""
  return os.path.join(root, cell, f"folds{folds}_e{epochs}_s{seed}",
                      "cv_probs.npy")


def cv_scores_of(cell, seed, epochs, root, folds=FOLDS, grid=DIGITS):
  """cleanlab's scores on the (cell, seed)'s out-of-sample probabilities
  (K-fold CE, cached under `root`) and their quality: `(scores, quality)`,
  the scores as `{dataset index: (given label, score)}` of the `ce` run's
  training split."""
  config = grid.config(cell, "ce", seed, epochs, root)
  source, split = run_lib.prepare_data(config)
  probs = crossval.cross_validated_probabilities(
      config, source, split, folds, cv_cache(cell, seed, epochs, root, folds))
  scores = advice.cleanlab_scores(split.train_labels, probs)
  noisy = split.train_labels != split.train_clean_labels
  return ({int(i): (int(y), float(v)) for i, y, v in zip(
      split.train_indices, split.train_labels, scores)},
          _quality(scores, noisy))


def rescore(out, root, epochs=DEFAULT_EPOCHS, folds=FOLDS, log=print,
            grid=DIGITS, cells=None, seeds=None):
  """Measures every ranking again, without training, for the runs of `out`
  whose workdirs are kept under `root` (so new rankings reach finished
  runs): reloads each run's checkpoint, advises, and rewrites its ranking
  values; only in `cells` and for `seeds` where given. Returns the results
  dict."""
  with exclusive(out):
    return _rescore(out, root, epochs, folds, log, grid, cells, seeds)


def _rescore(out, root, epochs, folds, log, grid, cells, seeds):
  results = load_results(out)
  for cell, by_method in results.items():
    if not grid.is_noisy(cell) or (cells is not None and cell not in cells):
      continue
    for seed in sorted({s for e in by_method.values() for s in e["seeds"]
                        if seeds is None or s in seeds}):
      cv_scores, quality = cv_scores_of(cell, seed, epochs, root, folds,
                                        grid)
      shared = {"cleanlab_cv": quality}
      for method, entry in by_method.items():
        config = grid.config(cell, method, seed, epochs, root)
        if seed not in entry["seeds"] or not run_lib.has_checkpoint(
            config.workdir):
          continue
        adv, finished = _advise(config.workdir)
        measured = measure_rankings(adv, method, shared, cv_scores,
                                    finished.split.train_indices)
        at = entry["seeds"].index(seed)
        for name, values in measured.items():
          for group, value in values.items():
            table = entry.setdefault(group, {})
            table.setdefault(name, [None] * len(entry["seeds"]))[at] = value
        for group in ("label_issue_ap", "label_issue_precision_at_k"):
          for name, values in entry.get(group, {}).items():
            if name in advice.TRAINED_RANKINGS and name not in measured:
              values[at] = None  # No longer measured: not kept.
          entry[group] = _ordered(entry[group], analysis.GRID_RANKINGS)
      write_results(out, results)
      log(f"rescored {cell} seed {seed}")
  return results


def _advise(workdir):
  """The advice of the run kept in `workdir`, and the run: `(advice, run)`."""
  keras.backend.clear_session()
  finished = run_lib.load(workdir)
  return advice.advise(finished.model, finished.source, finished.split,
                       batch_size=finished.config.eval_batch_size), finished


def run_grid(out, cells, methods, seeds, epochs, root, folds=FOLDS,
             cleanlab_cv=True, log=print, overrides=None, grid=DIGITS):
  """Runs the missing (cell, method, seed) entries of `grid`, rewriting
  `out` after each (one command per `out` at a time: `exclusive`);
  `overrides` are further `TrainConfig` fields of every run (an ablation:
  give it its own `out`). `seeds` is a list, or a `{cell: seeds}` dict
  where cells differ. Returns the results dict."""
  with exclusive(out):
    return _run_grid(out, cells, methods, seeds, epochs, root, folds,
                     cleanlab_cv, log, overrides, grid)


def _run_grid(out, cells, methods, seeds, epochs, root, folds, cleanlab_cv,
              log, overrides, grid):
  results = load_results(out)
  seeds_of = (seeds.get if isinstance(seeds, dict) else
              (lambda _, s=tuple(seeds): s))
  runs = [(c, s, m) for c in cells for s in seeds_of(c) for m in methods]
  todo = [(c, s, m) for c, s, m in runs if not done(results, c, m, s)]
  already = len(runs) - len(todo)
  todo += sorted({(c, s, "ce") for c, s, _ in todo  # ce_loss needs ce.
                  if grid.is_noisy(c) and "ce" not in methods
                  and not done(results, c, "ce", s)})
  log(f"{grid.name}: {len(todo)} run(s) to do, {already} already in "
      f"{out}.")
  count = 0
  for cell in cells:
    for seed in seeds_of(cell):
      wanted = [m for m in methods if not done(results, cell, m, seed)]
      if not wanted:
        continue
      shared, cv_scores = {}, None
      if grid.is_noisy(cell):
        shared = _shared(results, cell, seed, grid)
        # The ce run measures ce_loss for all: it goes first.
        if not done(results, cell, "ce", seed):
          wanted = ["ce"] + [m for m in wanted if m != "ce"]
        # Out-of-sample scores: trained once per (cell, seed), then read
        # from the JSON (their quality) or the kept workdir (the scores).
        if cleanlab_cv and ("cleanlab_cv" not in shared or os.path.exists(
            cv_cache(cell, seed, epochs, root, folds))):
          start = time.time()
          cv_scores, quality = cv_scores_of(cell, seed, epochs, root, folds,
                                            grid)
          shared["cleanlab_cv"] = quality
          log(f"  {cell} seed {seed}: {folds}-fold CE for cleanlab_cv, AP "
              f"{quality['label_issue_ap']:.4f} ({time.time() - start:.0f} s)")
      for method in wanted:
        values, rankings, _ = run_one(cell, method, seed, epochs, root, shared,
                                      cv_scores, overrides, grid)
        record(results, cell, method, seed, values, rankings)
        write_results(out, results)
        if method == "ce" and grid.is_noisy(cell):
          shared = {**_shared(results, cell, seed, grid), **shared}
        count += 1
        ap = rankings.get("label_issue_ap", {})
        log(f"[{count}/{len(todo)}] {cell} {method} seed {seed}: top-1 "
            f"{values['accuracy']:.2f}, tail "
            + (f"{values['tail_accuracy']:.2f}"
               if values["tail_accuracy"] is not None else "-")
            + "".join(f", {k} AP {v:.3f}" for k, v in sorted(ap.items())
                      if v is not None)
            + f" ({values.get('train_seconds', 0):.0f} s) → {out}")
  return results


# ---------------------------------------------------------------- tables
def tables(results, methods=METHODS):
  """Markdown tables: test top-1 and tail accuracy per cell and method
  (mean ± std over seeds); per noisy cell, the mean AP and precision@k of
  each ranking over the advisor methods and seeds."""
  methods = [m for m in methods if any(m in r for r in results.values())]
  lines = ["Test top-1 % / tail accuracy % (mean ± std over seeds):", "",
           "| cell | " + " | ".join(methods) + " |",
           "|---|" + "---|" * len(methods)]

  def stat(values):
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if values else "-"

  for cell, by_method in results.items():
    row = [f"{stat(by_method[m].get('accuracy', []))} / "
           f"{stat(by_method[m].get('tail_accuracy', []))}"
           if m in by_method else "-" for m in methods]
    lines.append(f"| {cell} | " + " | ".join(row) + " |")
  names = analysis.GRID_RANKINGS
  for group, title in (("label_issue_ap", "average precision"),
                       ("label_issue_precision_at_k",
                        "precision at the true number of corrupted labels")):
    lines += ["", f"Finding the corrupted labels, {title} (mean over the "
              "advisor methods and seeds):", "",
              "| cell | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for cell in results:
      means = analysis.grid_ranking_means({cell: results[cell]}, group)
      if means:
        lines.append(f"| {cell} | " + " | ".join(
            f"{means[n]:.3f}" if means.get(n) is not None else "-"
            for n in names) + " |")
  return "\n".join(lines)


def goal_check(results, ranking=None):
  """Per noisy cell, whether `ranking` (default: `analyze`'s) has a mean AP
  (over the advisor methods and seeds) at least cleanlab's, both
  `cleanlab_cv` and `cleanlab_model`: the issue's goal. Lines of text."""
  ranking = ranking or advice.DEFAULT_RANKING
  lines = []
  for cell in results:
    means = analysis.grid_ranking_means({cell: results[cell]})
    if not means or means.get(ranking) is None:
      continue
    verdicts = [f"{'≥' if means[ranking] >= means[c] else '<'} {c} "
                f"{means[c]:.3f}" for c in ("cleanlab_cv", "cleanlab_model")
                if means.get(c) is not None]
    lines.append(f"{cell}: {ranking} {means[ranking]:.3f} "
                 + ", ".join(verdicts))
  return lines


class _NoRetracingWarnings(pylogging.Filter):
  """Drops TensorFlow's retracing warning: each fold and run is a new model,
  so `advice.advise` traces once per model, as intended."""

  def filter(self, record):
    return "triggered tf.function retracing" not in record.getMessage()


def _define_flags():
  """The command's flags. Defined only when the module runs as a command,
  so that importing it (tests, notebooks) defines no second `--epochs` or
  `--workdir` beside `advisor_tf.cli_flags`."""
  return types.SimpleNamespace(
      out=flags.DEFINE_string("out", "results/dirty_labels.json",
                              "Where to write (and resume) the JSON."),
      cells=flags.DEFINE_list("cells", list(CELLS),
                              f"Cells, from {', '.join(CELLS)}."),
      methods=flags.DEFINE_list("methods", list(METHODS),
                                f"Methods, from {', '.join(METHODS)}."),
      seeds=flags.DEFINE_list("seeds", [str(s) for s in SEEDS],
                              "Seeds (integers >= 0)."),
      epochs=flags.DEFINE_integer("epochs", DEFAULT_EPOCHS,
                                  "Epochs per run (default: TrainConfig's).",
                                  lower_bound=1),
      folds=flags.DEFINE_integer("folds", FOLDS, "K of the K-fold "
                                 "cross-entropy training behind the "
                                 "cleanlab_cv ranking.", lower_bound=2),
      cleanlab_cv=flags.DEFINE_bool(
          "cleanlab_cv", True, "Measure the cleanlab_cv ranking (K extra "
          "cross-entropy trainings per noisy cell and seed)."),
      workdir=flags.DEFINE_string("workdir", None, "Keep each run here "
                                  "(default: a temp dir)."),
      set=flags.DEFINE_string("set", "", "Ablations: TrainConfig fields "
                              "field=value,... of every run (give them "
                              "their own --out)."),
      rescore=flags.DEFINE_bool(
          "rescore", False, "Train nothing: measure every ranking again for "
          "the runs in --out whose workdirs are kept in --workdir."))


def grid_flags(f, cells, methods):
  """A grid command's `--cells`, `--methods`, `--seeds` and `--set`,
  checked against the `cells` and `methods` it knows: `(cells, methods,
  sorted seeds, overrides)`, or `app.UsageError` naming the flag."""
  for name, allowed, values in (("cells", cells, f.cells.value),
                                ("methods", methods, f.methods.value)):
    for value in values:
      if value not in allowed:
        raise app.UsageError(f"--{name}: {value!r} is not one of "
                             f"{', '.join(allowed)}.")
  try:
    seeds = sorted({int(s) for s in f.seeds.value})
  except ValueError:
    seeds = []
  if not seeds or min(seeds) < 0:
    raise app.UsageError(f"--seeds={','.join(f.seeds.value)} must be "
                         "integers >= 0.")
  try:
    overrides = parse_overrides(f.set.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  return f.cells.value, f.methods.value, seeds, overrides


def rescore_flags(f, overrides):
  """`app.UsageError` where `--rescore` meets flags it cannot honour."""
  if overrides:
    raise app.UsageError("--rescore trains nothing, so --set has no "
                         "effect there; drop --set.")
  if not f.workdir.value:
    raise app.UsageError("--rescore needs --workdir, the folder the grid's "
                         "runs were kept in.")


def main(argv, f):
  del argv
  cli.quiet_logs()
  pylogging.getLogger("tensorflow").addFilter(_NoRetracingWarnings())
  cells, methods, seeds, overrides = grid_flags(f, CELLS, METHODS)
  try:
    results = _main_runs(f, cells, methods, seeds, overrides)
  except Busy as e:
    raise app.UsageError(str(e)) from None
  _print_summary(results)


def _main_runs(f, cells, methods, seeds, overrides):
  if f.rescore.value:
    rescore_flags(f, overrides)
    results = rescore(f.out.value, f.workdir.value, f.epochs.value,
                      f.folds.value, cells=cells, seeds=seeds)
  else:
    with tempfile.TemporaryDirectory() as tmp:
      results = run_grid(f.out.value, cells, methods, seeds, f.epochs.value,
                         f.workdir.value or tmp, f.folds.value,
                         f.cleanlab_cv.value, overrides=overrides)
  return results


def _print_summary(results):
  print(tables(results))
  print("\nDefault ranking against cleanlab, per cell (mean AP):")
  print("\n".join(goal_check(results)) or "(no noisy cell measured)")
  means = analysis.grid_ranking_means(results)
  if means:
    best = max((n for n in advice.RANKINGS if means.get(n) is not None),
               key=means.get, default=None)
    print("Mean AP over the grid: " + ", ".join(
        f"{n} {v:.4f}" for n, v in means.items() if v is not None)
          + f"; best ranking: {best} (analyze's default: "
          f"{advice.DEFAULT_RANKING}).")


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
