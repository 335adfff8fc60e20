r"""Without a trusted set: which meta set (`--meta_source`) serves MFRW-MES
best when the labels are dirty, on the array grid and on the user's path.

  python -m advisor_tf.experiments.meta_source \
      --out=results/meta_source.json --workdir=runs/meta_source \
      [--grids=array,user_path] [--cells=sym0.4,flip0.4,lt20_sym0.4,sym0.6] \
      [--variants=ce,clean,random,auto] [--seeds=0,1,2] \
      [--set=meta_per_class=20 --out=OTHER.json --workdir=OTHER] \
      [--keep_below=1000000 --out=OTHER.json --workdir=OTHER] \
      [--spread=3 [--confirmed=0] [--lobe_check] --out=OTHER.json \
       --workdir=OTHER] [--noregions --out=OTHER.json --workdir=OTHER] \
      [--variants=oracle --out=OTHER.json --workdir=OTHER]

Grids (the dirty-labels cells, `dirty_labels.CELLS`, noisy ones only):

  array      the bundled 8×8 digits arrays (`dirty_labels.cell_config`:
             the repository's defaults, 30 epochs)
  user_path  the same split written as a class-per-folder PNG set at 32 px
             (`user_path.write_digits_folder`: the noise in the folder's
             labels, a clean meta/ folder of 10 per class), trained through
             `--dataset=image_folder --image_size=32` with the defaults a
             user gets (augmentation on, `--noise=none`: the run does not
             know which labels are wrong)

Variants (MFRW-MES unless said):

  ce      plain cross-entropy (no meta set)
  clean   a truly clean meta set of 10 per class — the reference a user
          without a trusted set cannot have: array `--meta_source=random`
          (drawn before the synthetic noise), user_path
          `--meta_source=folder` (the clean meta/ folder)
  random  10 per class drawn at random from the dirty labels and taken out
          of training: array `--meta_source=random_noisy`, user_path
          `--meta_source=random` (today's draw out of the train folder)
  auto    `--meta_source=auto` (`advisor_tf.meta_select`): chosen from the
          dirty labels after a short warm-up, held out of training
  oracle  (not in the default `--variants`) `auto`'s run with a pick that
          knows the truth: per class, 10 drawn at random among the training
          candidates whose label is right (then wrong ones, where a class
          has fewer right ones), held out of training as `auto`'s are
          (`oracle_pick`; written as the run's `meta_selection.json` before
          it starts). The best any selection out of the dirty training
          set can do — a bound on `auto`, where `clean` is not one: its 10
          are drawn before the noise, so they take mostly wrong labels
          out of training at high noise, where any pick out of the dirty
          labels takes right ones

Per (grid, cell, variant) the JSON holds, in the order of `seeds`:

  accuracy          test top-1 (%)
  purity            the fraction of right labels in the meta set the run
                    ended with (1.0 for `clean`; None for `ce`): from the
                    synthetic noise's clean labels on the array grid, from
                    the folder's manifest (`manifest.json`: every file's
                    clean label) on the user path
  suspect_classes   `auto`: the classes the run's warning named
  warned_classes    `auto`: the classes this version's warning names for the
                    run's recorded selection (`meta_select.record_suspects`;
                    the same as `suspect_classes` unless the rule changed
                    since the run)
  class_purity      `auto` and `random`: per class (the meta set's given
                    labels), the fraction of right labels; the warning is
                    scored against it (`warning_check`: a class whose
                    selection is less than half right should be named)
  class_noise       `auto` and `random`: per class (given labels), the
                    fraction of wrong labels among the training candidates
  purity_ceiling    `auto` and `random`: the highest purity any selection
                    of the same size per class could reach out of the
                    dirty training labels (per class, min(chosen, right-
                    labelled candidates)): in the long tail some classes
                    have fewer right labels than the set asks for
  train_seconds     wall time of the run

`class_purity`, `class_noise`, `purity_ceiling` and `warned_classes` of runs
recorded before they existed (or before the warning's rule changed) are
filled in from the kept `--workdir` (the run's `meta_selection.json` and
folders) without training again.

With `--reuse=results/user_path.json`, user-path `ce` and `clean` runs are
copied from the user-path grid (issue #20's `user_path.py`: the same folders,
configuration and defaults; its sym0.4 seed-0 runs, trained again here, came
out bit-identical), marked `"from": "user_path"`.

Resumable: the JSON is rewritten (atomically) after every run and a restart
skips the entries already in it; with a kept `--workdir`, an interrupted run
resumes from its checkpoints.
"""

import dataclasses
import json
import os
import tempfile
import time
import types

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from advisor_tf import config as config_lib  # noqa: E402
from advisor_tf import meta_select  # noqa: E402
from advisor_tf import run as run_lib  # noqa: E402
from advisor_tf import trainer  # noqa: E402
from advisor_tf.experiments import dirty_labels  # noqa: E402
from advisor_tf.experiments import user_path  # noqa: E402

GRIDS = ("array", "user_path")
CELLS = ("sym0.4", "flip0.4", "lt20_sym0.4", "sym0.6")
VARIANTS = ("ce", "clean", "random", "auto")
OPTIONAL_VARIANTS = ("oracle",)  # Run when --variants names them.
SEEDS = (0, 1, 2)
IMAGE_SIZE = 32
# Variant → (method, --meta_source on the array grid, on the user path).
_SETTINGS = {"ce": ("ce", "random", "folder"),
             "clean": ("mfrw_mes", "random", "folder"),
             "random": ("mfrw_mes", "random_noisy", "random"),
             "auto": ("mfrw_mes", "auto", "auto"),
             "oracle": ("mfrw_mes", "auto", "auto")}


def run_config(grid, cell, variant, seed, root, epochs=None, overrides=None):
  """The `TrainConfig` of one run; `overrides` (`--set`) are further
  `TrainConfig` fields of the MFRW-MES variants (`ce` has no meta set)."""
  config = _base_config(grid, cell, variant, seed, root, epochs)
  if overrides and variant != "ce":
    config = dataclasses.replace(config, **overrides).validate()
  return config


def _base_config(grid, cell, variant, seed, root, epochs):
  epochs = epochs or config_lib.TrainConfig().epochs
  method, array_source, folder_source = _SETTINGS[variant]
  workdir = os.path.join(root, grid, cell, f"{variant}_s{seed}")
  if grid == "array":
    config = dirty_labels.cell_config(cell, method, seed, epochs)
    return dataclasses.replace(config, meta_source=array_source,
                               workdir=workdir).validate()
  return config_lib.TrainConfig(
      dataset="image_folder", data_dir=folder_of(root, cell, seed),
      image_size=IMAGE_SIZE, method=method, meta_source=folder_source,
      seed=seed, epochs=epochs,
      lr_decay_epochs=(max(1, int(epochs * 2 / 3)), max(1, int(epochs * 5 / 6))),
      workdir=workdir,
      verbose=0, export=False).validate()


def folder_of(root, cell, seed):
  return os.path.join(root, "folders", f"{cell}_s{seed}_{IMAGE_SIZE}px")


def write_folder(root, cell, seed):
  """The cell's digits as an image folder (issue #20's writer)."""
  return user_path.write_digits_folder(folder_of(root, cell, seed), cell, seed,
                                       image_size=IMAGE_SIZE)


# --------------------------------------------------------------- results
# The dirty-labels grid's: resumable, rewritten whole through a temporary
# file after every run.
load_results = dirty_labels.load_results
write_results = dirty_labels.write_results


# What `selection_scores` adds beside `purity`.
_SCORES = ("class_purity", "class_noise", "purity_ceiling")
_KEYS = ("accuracy", "purity", "suspect_classes", "warned_classes",
         *_SCORES, "train_seconds")
# Variants whose meta set is drawn out of the dirty training labels.
_DRAWN = ("random", "auto", "oracle")
# A class whose selection is less than this right is one the warning
# should name ("half or more of its labels may be wrong").
MOSTLY_WRONG_BELOW = 0.5


def done(results, grid, cell, variant, seed):
  return seed in results.get(grid, {}).get(cell, {}).get(variant, {}).get(
      "seeds", [])


def record(results, grid, cell, variant, seed, values):
  """Adds one run, keeping the per-seed lists in the order of the seeds."""
  entry = results.setdefault(grid, {}).setdefault(cell, {}).setdefault(
      variant, {"seeds": []})
  seeds = entry["seeds"]
  at = int(np.searchsorted(seeds, seed))
  old = len(seeds)
  seeds.insert(at, seed)
  for key in list(_KEYS) + sorted(set(values) - set(_KEYS)):
    if key in values or key in entry:
      entry.setdefault(key, [None] * old).insert(at, values.get(key))
  return entry


# ------------------------------------------------------------------ runs
def _manifest_truth(data_dir):
  """File (relative to the folder) → clean label, from the manifest."""
  with open(os.path.join(data_dir, "manifest.json")) as f:
    manifest = json.load(f)
  return {row[0]: row[2] for row in manifest["splits"]["train"]}


def selection_truth(grid, config, workdir):
  """The given and the clean labels of a run's training candidates (before
  any meta set is taken out) and of the meta set it trained with (`auto`:
  the selection recorded in `workdir`): `((given, clean), (given, clean))`.
  The clean labels come from the synthetic noise on the array grid, from
  the folder's manifest on the user path (the run does not know them)."""
  source, split = run_lib.prepare_data(config)
  chosen = meta_select.auto_split(config, split, workdir)
  if grid == "array":
    return ((split.train_labels, split.train_clean_labels),
            (chosen.meta_labels, chosen.meta_clean_labels))
  truth = _manifest_truth(config.data_dir)
  paths = source.paths["train"]

  def clean(indices):
    return np.asarray([truth[os.path.relpath(str(paths[i]), config.data_dir)]
                       for i in indices])

  return ((split.train_labels, clean(split.train_indices)),
          (chosen.meta_labels, clean(chosen.meta_indices)))


def _per_class_share(flags, labels, classes):
  """Per class c, the share of `flags` among the examples labelled c (None
  for a class with none), to 4 digits."""
  return [round(float(np.mean(flags[labels == c])), 4)
          if np.any(labels == c) else None for c in range(classes)]


def selection_scores(train, meta):
  """`purity`, `class_purity`, `class_noise` and `purity_ceiling` (see the
  module docstring) of a meta set `meta = (given, clean)` drawn out of the
  training candidates `train = (given, clean)`."""
  given, clean = (np.asarray(a, np.int64) for a in meta)
  train_given, train_clean = (np.asarray(a, np.int64) for a in train)
  classes = int(max(given.max(), train_given.max())) + 1
  right = given == clean
  chosen = np.bincount(given, minlength=classes)
  available = np.bincount(train_given[train_given == train_clean],
                          minlength=classes)
  return {"purity": float(np.mean(right)),
          "class_purity": _per_class_share(right, given, classes),
          "class_noise": _per_class_share(train_given != train_clean,
                                          train_given, classes),
          "purity_ceiling": round(float(
              np.minimum(chosen, available).sum() / chosen.sum()), 4)}


def drawn_scores(grid, config, workdir):
  """`selection_scores` of a run whose meta set was drawn out of train."""
  return selection_scores(*selection_truth(grid, config, workdir))


def backfill_scores(results, root, overrides=None):
  """Fills in `class_purity`, `class_noise` and `purity_ceiling` of drawn
  (`random`, `auto`) runs recorded without them, and `warned_classes` of
  every `auto` run, from the kept runs under `root` (an `auto` run needs its
  `meta_selection.json`; `overrides`: the runs' `--set`). Returns how many
  entries changed."""
  changed = 0
  for grid, by_cell in results.items():
    for cell, by_variant in by_cell.items():
      for variant in _DRAWN:
        entry = by_variant.get(variant)
        if not entry:
          continue
        for at, seed in enumerate(entry["seeds"]):
          config = run_config(grid, cell, variant, seed, root,
                              overrides=overrides)
          record = meta_select.read_record(config.workdir)
          if variant == "auto" and record is None:
            continue
          values = {}
          if variant == "auto":
            values["warned_classes"] = meta_select.record_suspects(record)
          if (any((entry.get(key) or [None] * (at + 1))[at] is None
                  for key in _SCORES)
              and (grid == "array" or os.path.isdir(config.data_dir))):
            scores = drawn_scores(grid, config, config.workdir)
            values.update({key: scores[key] for key in _SCORES})
          for key, value in values.items():
            column = entry.setdefault(key, [None] * len(entry["seeds"]))
            if column[at] != value:
              column[at] = value
              changed += 1
  return changed


def run_one(grid, cell, variant, seed, root, epochs=None, overrides=None):
  """Trains one run; returns its values."""
  config = run_config(grid, cell, variant, seed, root, epochs, overrides)
  if grid == "user_path":
    write_folder(root, cell, seed)
  keras.backend.clear_session()
  start = time.time()
  if variant == "oracle" and meta_select.read_record(config.workdir) is None:
    write_oracle_record(grid, config)
  metrics = trainer.train(config)
  values = {"accuracy": metrics["test/top1"],
            "train_seconds": round(time.time() - start, 1)}
  if variant == "ce":
    return values
  if variant in _DRAWN:
    values.update(drawn_scores(grid, config, config.workdir))
  elif grid == "array":  # `clean`: drawn before the synthetic noise.
    values["purity"] = metrics.get("meta/purity")
  else:  # `clean`: the folder's own meta/ (written with clean labels).
    values["purity"] = 1.0
  if variant == "auto":
    values["suspect_classes"] = metrics.get("meta/suspect_classes")
    values["warned_classes"] = meta_select.record_suspects(
        meta_select.read_record(config.workdir))
  return values


def oracle_pick(given, clean, per_class, num_classes, seed):
  """Sorted positions of a meta set that knows the truth: per class (given
  labels), `per_class` drawn at random (seeded) among the examples whose
  label is right, then among the wrong ones where a class has fewer right
  ones (the `purity_ceiling`)."""
  given, clean = np.asarray(given, np.int64), np.asarray(clean, np.int64)
  rng = np.random.default_rng([seed, 21])
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(given == c)
    right = members[clean[members] == c]
    wrong = members[clean[members] != c]
    chosen.append(np.concatenate([rng.permutation(right),
                                  rng.permutation(wrong)])[:per_class])
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def write_oracle_record(grid, config):
  """Writes an `oracle` run's meta set (`oracle_pick`) as its workdir's
  `meta_selection.json`, which the run (`--meta_source=auto`) then reads
  instead of selecting; held out of training as `auto`'s selection is
  (`meta_select.KEEP_BELOW`)."""
  source, split = run_lib.prepare_data(config)
  resolved, _ = config.resolved(len(split.meta_indices))  # As trainer does.
  (given, clean), _ = selection_truth(grid, config, config.workdir)
  given = np.asarray(given, np.int64)
  k, classes = meta_select.per_class(config, "auto"), source.num_classes
  positions = oracle_pick(given, clean, k, classes, config.seed)
  record = {
      "source": "oracle", "per_class": k, "warmup_epochs": 0,
      "rule": "per class, drawn at random among the right labels (knows "
              "the truth: an experiment's bound)",
      "positions": positions.tolist(),
      "indices": np.asarray(split.train_indices)[positions].tolist(),
      "labels": given[positions].tolist(),
      "purity": float(np.mean(given[positions]
                              == np.asarray(clean)[positions])),
      "suspect_classes": [], "class_agreement": [None] * classes,
      "kept_in": meta_select.kept_in(given, k, classes),
      "train_examples": int(len(given)),
      "config": json.loads(resolved.to_json())}
  meta_select.write_record(config.workdir, record)


def reuse_user_path(results, path, cells, seeds):
  """Copies user-path `ce` and `clean` (`mfrw_mes` with the clean meta/
  folder) runs from the user-path grid's JSON (`user_path.py`: the same
  folders, configuration and defaults), marked `"from": "user_path"`.
  Returns how many were copied."""
  if not path or not os.path.exists(path):
    return 0
  with open(path) as f:
    grid = json.load(f)
  copied = 0
  for cell in cells:
    for variant, method in (("ce", "ce"), ("clean", "mfrw_mes")):
      entry = grid.get(cell, {}).get(method, {})
      for seed in seeds:
        if (seed in entry.get("seeds", [])
            and not done(results, "user_path", cell, variant, seed)):
          at = entry["seeds"].index(seed)
          values = {"accuracy": entry["accuracy"][at], "from": "user_path",
                    "train_seconds": (entry.get("train_seconds") or
                                      [None] * (at + 1))[at]}
          if variant == "clean":
            values["purity"] = 1.0
          record(results, "user_path", cell, variant, seed, values)
          copied += 1
  return copied


def run_grid(out, grids, cells, variants, seeds, root, epochs=None,
             reuse=None, log=print, overrides=None):
  """Runs the missing (grid, cell, seed, variant) entries, rewriting `out`
  after each (user-path `ce`/`clean` runs copied from `reuse` first, when
  given). Returns the results dict."""
  results = load_results(out)
  if "user_path" in grids and reuse_user_path(results, reuse, cells, seeds):
    write_results(out, results)
  if backfill_scores(results, root, overrides):
    write_results(out, results)
  todo = [(g, c, s, v) for g in grids for s in seeds for c in cells
          for v in variants if not done(results, g, c, v, s)]
  log(f"meta_source: {len(todo)} run(s) to do → {out}")
  for count, (grid, cell, seed, variant) in enumerate(todo, 1):
    values = run_one(grid, cell, variant, seed, root, epochs, overrides)
    record(results, grid, cell, variant, seed, values)
    write_results(out, results)
    purity = values.get("purity")
    log(f"[{count}/{len(todo)}] {grid} {cell} {variant} seed {seed}: top-1 "
        f"{values['accuracy']:.2f}"
        + (f", purity {purity:.3f}" if purity is not None else "")
        + f" ({values['train_seconds']:.0f} s)")
  return results


# ---------------------------------------------------------------- tables
def beside(results, others):
  """`results` with the (grid, cell, variant) entries it lacks taken from
  `others` (the first that has one), for the tables (`--compare`)."""
  merged = json.loads(json.dumps(results))
  for other in others:
    for grid, by_cell in other.items():
      for cell, by_variant in by_cell.items():
        for variant, entry in by_variant.items():
          merged.setdefault(grid, {}).setdefault(cell, {}).setdefault(
              variant, entry)
  return merged


def _stat(values, scale=1.0, digits=1):
  values = [v * scale for v in values or [] if v is not None]
  if not values:
    return "-"
  return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def tables(results):
  """Markdown: per grid, test top-1 per cell and variant (mean ± std over
  seeds) and the purity (%) of the meta sets."""
  lines = []
  for grid, by_cell in results.items():
    variants = VARIANTS + tuple(
        v for v in OPTIONAL_VARIANTS
        if any(v in by_variant for by_variant in by_cell.values()))
    lines += [f"{grid}: test top-1 % (mean ± std over seeds); meta-set "
              "purity %", "",
              "| cell | " + " | ".join(variants)
              + " | purity random | purity auto |",
              "|---|" + "---|" * (len(variants) + 2)]
    for cell, by_variant in by_cell.items():
      row = [_stat(by_variant.get(v, {}).get("accuracy")) for v in variants]
      auto = by_variant.get("auto", {})
      row += [_stat(by_variant.get("random", {}).get("purity"), 100),
              _stat(auto.get("purity"), 100)]
      lines.append(f"| {cell} | " + " | ".join(row) + " |")
    lines.append("")
  return "\n".join(lines)


def goal_check(results):
  """The issue's goals per grid and cell, as lines of text: auto ≥ random +
  5, auto ≥ clean − 2, auto ≥ ce, purity ≥ 95 % at sym0.4 and flip0.4;
  beside them auto ≥ oracle − 2 (the bound, where `oracle` ran)."""
  lines = []

  def mean(entry, key="accuracy"):
    values = [v for v in (entry or {}).get(key, []) if v is not None]
    return float(np.mean(values)) if values else None

  for grid, by_cell in results.items():
    for cell, by_variant in by_cell.items():
      auto = mean(by_variant.get("auto"))
      if auto is None:
        continue
      parts = []
      for name, other, margin in (("random + 5", "random", 5.0),
                                  ("clean − 2", "clean", -2.0),
                                  ("ce", "ce", 0.0),
                                  ("oracle − 2", "oracle", -2.0)):
        value = mean(by_variant.get(other))
        if value is not None:
          ok = auto >= value + margin
          parts.append(f"{'≥' if ok else '<'} {name} ({value + margin:.1f})")
      purity = mean(by_variant.get("auto"), "purity")
      if purity is not None and cell in ("sym0.4", "flip0.4"):
        parts.append(f"purity {purity * 100:.1f} % "
                     f"{'≥' if purity >= 0.95 else '<'} 95 %")
      ceiling = mean(by_variant.get("auto"), "purity_ceiling")
      if purity is not None and ceiling is not None:
        parts.append(f"purity {purity * 100:.1f} % of a reachable "
                     f"{ceiling * 100:.1f} %")
      lines.append(f"{grid} {cell}: auto {auto:.1f} " + ", ".join(parts))
  return lines


def warning_check(results):
  """How often `auto`'s warning (`warned_classes`: this version's rule) was
  right, as lines of text per grid and cell (runs that recorded
  `class_purity`). The warning says that half or more of a class's labels
  may be wrong, and its meta examples with them; scored are the classes
  whose selection is mostly wrong (purity below `MOSTLY_WRONG_BELOW`) and
  those whose training labels are (`class_noise` of at least
  1 − `MOSTLY_WRONG_BELOW`): how many of each it named, and how many it
  named that are neither; and the runs below CE of the same seed, and how
  many of them carried a warning."""
  lines = []
  for grid, by_cell in results.items():
    for cell, by_variant in by_cell.items():
      auto = by_variant.get("auto") or {}
      ce = by_variant.get("ce") or {}
      count = dict.fromkeys(("runs", "selected", "selected_named", "labels",
                             "labels_named", "named", "neither", "below",
                             "below_warned"), 0)
      for at, seed in enumerate(auto.get("seeds", [])):
        purity = (auto.get("class_purity") or [None] * (at + 1))[at]
        noise = (auto.get("class_noise") or [None] * (at + 1))[at]
        if purity is None or noise is None:
          continue
        named = set((auto.get("warned_classes") or [None] * (at + 1))[at]
                    or [])
        selected = {c for c, p in enumerate(purity)
                    if p is not None and p < MOSTLY_WRONG_BELOW}
        labels = {c for c, n in enumerate(noise)
                  if n is not None and n >= 1 - MOSTLY_WRONG_BELOW}
        count["runs"] += 1
        count["selected"] += len(selected)
        count["selected_named"] += len(selected & named)
        count["labels"] += len(labels)
        count["labels_named"] += len(labels & named)
        count["named"] += len(named)
        count["neither"] += len(named - selected - labels)
        if seed in ce.get("seeds", []) and (
            auto["accuracy"][at] < ce["accuracy"][ce["seeds"].index(seed)]):
          count["below"] += 1
          count["below_warned"] += bool(named)
      if count["runs"]:
        lines.append(
            f"{grid} {cell}: {count['runs']} auto run(s); classes with a "
            f"mostly wrong selection: {count['selected']}, named "
            f"{count['selected_named']}; with mostly wrong training labels: "
            f"{count['labels']}, named {count['labels_named']}; classes "
            f"named: {count['named']}, neither: {count['neither']}; runs "
            f"below CE: {count['below']}, with a warning: "
            f"{count['below_warned']}")
  return lines


def _define_flags():
  return types.SimpleNamespace(
      out=flags.DEFINE_string("out", "results/meta_source.json",
                              "Where to write (and resume) the JSON."),
      grids=flags.DEFINE_list("grids", list(GRIDS),
                              f"Grids, from {', '.join(GRIDS)}."),
      cells=flags.DEFINE_list("cells", list(CELLS), "Noisy cells of "
                              "dirty_labels.CELLS."),
      variants=flags.DEFINE_list(
          "variants", list(VARIANTS), "Variants, from "
          f"{', '.join(VARIANTS + OPTIONAL_VARIANTS)}."),
      seeds=flags.DEFINE_list("seeds", [str(s) for s in SEEDS],
                              "Seeds (integers >= 0)."),
      epochs=flags.DEFINE_integer("epochs", None, "Epochs per run (default: "
                                  "TrainConfig's).", lower_bound=1),
      workdir=flags.DEFINE_string("workdir", None, "Keep runs and folders "
                                  "here (default: a temp dir)."),
      keep_below=flags.DEFINE_integer(
          "keep_below", None, "Ablation of `auto`: meta_select.KEEP_BELOW "
          f"(default {meta_select.KEEP_BELOW}; 0: every class's meta "
          "examples held out of training, 1000000: kept in by every class; "
          "give it its own --out and --workdir).", lower_bound=0),
      spread=flags.DEFINE_integer(
          "spread", None, "Ablation of `auto`: meta_select.SPREAD (default "
          f"{meta_select.SPREAD}; the pick spreads over this × k candidates "
          "per class; give it its own --out and --workdir).", lower_bound=1),
      confirmed=flags.DEFINE_float(
          "confirmed", None, "Ablation of `auto`: meta_select.CONFIRMED "
          f"(default {meta_select.CONFIRMED}; 0: the spread pick may take "
          "any of its candidates).", lower_bound=0.0, upper_bound=1.0),
      lobe_check=flags.DEFINE_bool(
          "lobe_check", None, "Ablation of `auto`: meta_select.LOBE_CHECK "
          f"(default {meta_select.LOBE_CHECK}; with --spread: a class whose "
          "disputed labels mostly look like one other class is not "
          "spread)."),
      regions=flags.DEFINE_bool(
          "regions", None, "Ablation of `auto`: meta_select.REGIONS "
          f"(default {meta_select.REGIONS}; a class picked in another "
          "class's region of the feature space moves to its own; give "
          "--noregions its own --out and --workdir)."),
      set=flags.DEFINE_string("set", "", "Ablations: TrainConfig fields "
                              "field=value,... of the MFRW-MES runs (give "
                              "them their own --out and --workdir)."),
      compare=flags.DEFINE_list(
          "compare", [], "Other results of this command (JSON paths): the "
          "variants --out lacks are taken from them for the printed tables "
          "and goals (nothing of theirs is written to --out)."),
      reuse=flags.DEFINE_string(
          "reuse", None, "The user-path grid's JSON (results/user_path.json): "
          "copy its ce and mfrw_mes (clean meta/ folder) runs as this grid's "
          "user-path ce and clean instead of training them again."))


def main(argv, f):
  del argv
  cli.quiet_logs()
  if f.keep_below.value is not None:
    # Ablation of `auto`'s hold-out: classes with fewer than this × k other
    # examples keep their meta examples in training (0: every class holds
    # them out; a huge value: every class keeps them in).
    meta_select.KEEP_BELOW = f.keep_below.value
  if f.spread.value is not None:
    meta_select.SPREAD = f.spread.value  # Ablation of `auto`'s pick.
  if f.confirmed.value is not None:
    meta_select.CONFIRMED = f.confirmed.value
  if f.lobe_check.value is not None:
    meta_select.LOBE_CHECK = f.lobe_check.value
  if f.regions.value is not None:
    meta_select.REGIONS = f.regions.value
  for name, values, allowed in (("grids", f.grids.value, GRIDS),
                                ("variants", f.variants.value,
                                 VARIANTS + OPTIONAL_VARIANTS)):
    for value in values:
      if value not in allowed:
        raise app.UsageError(f"--{name}: {value!r} is not one of "
                             f"{', '.join(allowed)}.")
  for cell in f.cells.value:
    if cell not in dirty_labels.CELLS or not dirty_labels.is_noisy(cell):
      raise app.UsageError(f"--cells: {cell!r} is not a noisy cell of "
                           f"{', '.join(dirty_labels.CELLS)}.")
  try:
    seeds = sorted({int(s) for s in f.seeds.value})
  except ValueError:
    raise app.UsageError(f"--seeds={','.join(f.seeds.value)} must be "
                         "integers >= 0.") from None
  for path in f.compare.value:
    if not os.path.isfile(path):
      raise app.UsageError(f"--compare: {path!r} is not a file (results of "
                           "this command, e.g. results/meta_source.json).")
  try:
    overrides = dirty_labels.parse_overrides(f.set.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  with tempfile.TemporaryDirectory() as tmp:
    results = run_grid(f.out.value, f.grids.value, f.cells.value,
                       f.variants.value, seeds, f.workdir.value or tmp,
                       f.epochs.value, f.reuse.value, overrides=overrides)
  results = beside(results, [load_results(path) for path in f.compare.value])
  print(tables(results))
  print("\n".join(goal_check(results)))
  print("The warning (`auto`):")
  print("\n".join(warning_check(results)))


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
