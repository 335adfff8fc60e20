r"""Is `--meta_source=auto`'s warning right when it speaks? Its precision and
recall on Fashion-MNIST, where the truth of every label is known.

  python -m advisor_tf.experiments.meta_warning \
      --out=results/meta_warning.json [--cells=pair0.35_3k,instance0.4] \
      [--seeds=0,1,2] [--rescore]

Each (cell, seed) runs only the automatic selection of a `mfrw_mes_auto` run
(`meta_select.select`: the warm-up, the neighbour vote, the regions; no
training), and records per class whether the warning names it (the rule of
this version, `meta_select.record_suspects`) and the truth:

  meta_right   the share of the class's selected meta examples whose label
               is right
  label_noise  the share of the training images labelled with the class
               whose label is wrong

A class is truly unreliable — what the warning claims: "the automatic
selection is unreliable for class c" — when `meta_right < RIGHT_BAR`: at
least 2 of its 10 meta labels are wrong. (A class whose labels are half
wrong but whose meta examples are right is not: its meta set serves the
advisor; `label_noise` is recorded beside.) Each entry also keeps the
selection's per-class signals the rule reads (`class_agreement`,
`selected_agreement`, `disputed`: the median neighbour agreement of the
selected ones), so that a rule can be measured on the same selections
again. Over every (cell, seed, class), precision = warned and
unreliable / warned, recall = warned and unreliable / unreliable; the issue's
bar is a precision of 0.8 ("right at least 4 times in 5 when it speaks").
The summary's `held_out` says how well the rule's two bars generalise:
each cell scored with the bars chosen on the other cells (`held_out`).

Cells: the Fashion-MNIST grid's (`fashion.cells`: instance 0.4 / 0.5 on all
60 000 images, symmetric 0.4, Flip 0.4 and long tail 100 + symmetric 0.2 on a
stratified 20 000), and two a user with a folder of photographs has:
`pair0.35_3k` (3 000 images, 35 % of each class's labels moved to its most
similar class, `--flip_targets=similar`: the first-hour issue's folder, where
the warning named three classes whose meta images were all right) and
`instance0.35_6k` (6 000 images, instance-dependent noise 0.35); and, as a
check on other data, the digits grid's noisy cells (`digits_sym0.4`, ...:
`dirty_labels.CELLS` on the bundled digits). The JSON is
rewritten after every selection; a restart skips what it holds.
"""

from __future__ import annotations

import dataclasses
import json
import os

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from advisor_tf import meta_select  # noqa: E402
from advisor_tf import run as run_lib  # noqa: E402
from advisor_tf.experiments import dirty_labels  # noqa: E402
from advisor_tf.experiments import fashion  # noqa: E402

RIGHT_BAR = 0.8
PRECISION_GOAL = 0.8
# The rule family `held_out` chooses from: `meta_select.suspects`'s two bars.
DISPUTED_BARS = (0.1, 0.15, 0.2, 0.25, 0.3)
RECOGNISED_BARS = (0.8, 0.9, 0.95, None)  # None: never exempt.
HELD_OUT_MIN_RECALL = 0.3
USER_CELLS = {"pair0.35_3k": dict(noise="flip", noise_rate=0.35,
                                  flip_targets="similar", train_examples=3000),
              "instance0.35_6k": dict(noise="instance", noise_rate=0.35,
                                      train_examples=6000)}


# A check on other data: the dirty-labels grid's noisy cells on the bundled
# digits (1 198 training images), `digits_` + the grid's cell name.
DIGITS_PREFIX = "digits_"


def cells():
  """Cell name → the `TrainConfig` fields it sets (over `fashion.BASE`, or
  over the digits grid's `BASE` for the `digits_` cells)."""
  grid_cells = {k: v for k, v in fashion.cells().items() if k != "clean"}
  digits = {DIGITS_PREFIX + k: v for k, v in dirty_labels.CELLS.items()
            if v.get("noise", "none") != "none"}
  return {**USER_CELLS, **grid_cells, **digits}


def config_of(cell, seed, data_dir=None):
  """The `mfrw_mes_auto` configuration of a (cell, seed)."""
  if cell.startswith(DIGITS_PREFIX):
    return dataclasses.replace(
        dirty_labels.BASE, **cells()[cell], meta_source="auto",
        seed=seed).validate()
  return dataclasses.replace(
      fashion.BASE, **cells()[cell], meta_source="auto", seed=seed,
      data_dir=data_dir).validate()


def class_truth(record, split, num_classes):
  """Per class `(meta_right, label_noise)` of a selection `record` made on
  `split` (None where the class has no meta example / no image)."""
  positions = np.asarray(record["positions"], np.int64)
  given = np.asarray(split.train_labels)
  clean = np.asarray(split.train_clean_labels)
  out = []
  for c in range(num_classes):
    chosen = positions[given[positions] == c]
    labelled = given == c
    out.append((float(np.mean(clean[chosen] == c)) if len(chosen) else None,
                float(np.mean(clean[labelled] != c)) if labelled.any()
                else None))
  return out


def unreliable(meta_right):
  """Whether a class is what the warning says it is."""
  return meta_right is not None and meta_right < RIGHT_BAR


def measure(record, split, num_classes):
  """One selection's per-class entry for the JSON."""
  warned = set(meta_select.record_suspects(record))
  truth = class_truth(record, split, num_classes)
  labels = np.asarray(record["labels"], np.int64)
  disputed = meta_select.class_median(record["neighbour_agreement"], labels,
                                      np.arange(len(labels)), num_classes)
  return {"warned": sorted(warned),
          "unreliable": [c for c, t in enumerate(truth) if unreliable(t[0])],
          "meta_right": [t[0] for t in truth],
          "label_noise": [t[1] for t in truth],
          "purity": record["purity"],
          "class_agreement": record["class_agreement"],
          "selected_agreement": record["selected_agreement"],
          "disputed": disputed,
          "overlap": record.get("selected_overlap")}


def rescore(results):
  """Applies this version's rule (`meta_select.suspects`) to every entry's
  recorded signals (its `warned`, rewritten in place), and summarises over
  every (cell, seed, class), for the Fashion-MNIST cells, the digits cells
  and all: `{group: {warnings, right, unreliable, precision, recall}}`
  (precision / recall None without a warning / an unreliable class)."""
  counts = {g: [0, 0, 0] for g in ("fashion", "digits", "all")}
  for cell, by_seed in results.items():
    group = "digits" if cell.startswith(DIGITS_PREFIX) else "fashion"
    for entry in by_seed.values():
      if "disputed" in entry:
        entry["warned"] = meta_select.suspects(
            entry["class_agreement"], entry["selected_agreement"],
            entry["disputed"])
      w, u = set(entry["warned"]), set(entry["unreliable"])
      for g in (group, "all"):
        counts[g][0] += len(w)
        counts[g][1] += len(w & u)
        counts[g][2] += len(u)
  return {g: {"warnings": w, "right": r, "unreliable": u,
              "precision": r / w if w else None,
              "recall": r / u if u else None}
          for g, (w, r, u) in counts.items()}


def _entries(results):
  return [(cell, entry) for cell, by_seed in results.items()
          for entry in by_seed.values() if "disputed" in entry]


def _count(entries, bars):
  warned = right = unreliable_ = 0
  for _, entry in entries:
    w = set(meta_select.suspects(
        entry["class_agreement"], entry["selected_agreement"],
        entry["disputed"], disputed_below=bars[0],
        recognised_from=2.0 if bars[1] is None else bars[1]))
    u = set(entry["unreliable"])
    warned, right, unreliable_ = (warned + len(w), right + len(w & u),
                                  unreliable_ + len(u))
  return warned, right, unreliable_


def held_out(results, min_recall=HELD_OUT_MIN_RECALL):
  """How the rule's bars generalise: per cell, the bars of the family
  (`DISPUTED_BARS` × `RECOGNISED_BARS`) with the highest precision, among
  those naming at least `min_recall` of the unreliable classes, on every
  other cell, then applied to that cell; summed over the cells:
  `{warnings, right, unreliable, precision, recall, chosen}` (`chosen`: how
  often each pair of bars was chosen). Without held-out data the chosen
  rule's precision on the data that chose it would flatter it."""
  entries = _entries(results)
  family = [(d, r) for d in DISPUTED_BARS for r in RECOGNISED_BARS]
  total, chosen = [0, 0, 0], {}
  for cell in sorted({c for c, _ in entries}):
    rest = [e for e in entries if e[0] != cell]
    best = None
    for bars in family:
      warned, right, unreliable_ = _count(rest, bars)
      if warned and right >= min_recall * unreliable_:
        key = (right / warned, right)
        if best is None or key > best[0]:
          best = (key, bars)
    if best is None:
      continue
    key = f"{best[1][0]:g}/{best[1][1]}"
    chosen[key] = chosen.get(key, 0) + 1
    for i, n in enumerate(_count([e for e in entries if e[0] == cell],
                                 best[1])):
      total[i] += n
  warned, right, unreliable_ = total
  return {"warnings": warned, "right": right, "unreliable": unreliable_,
          "precision": right / warned if warned else None,
          "recall": right / unreliable_ if unreliable_ else None,
          "chosen": chosen}


def _write(out, results):
  summary = dict(rescore(results), held_out=held_out(results))
  tmp = out + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"summary": summary, "cells": results}, f, indent=1)
  os.replace(tmp, out)
  return summary


def run(out, cells_, seeds, data_dir=None, log=print):
  """Selects for every missing (cell, seed), rewriting `out` after each."""
  results = {}
  if os.path.exists(out):
    with open(out) as f:
      results = json.load(f).get("cells", {})
  for cell in cells_:
    for seed in seeds:
      if str(seed) in results.get(cell, {}):
        continue
      config = config_of(cell, seed, data_dir)
      source, split = run_lib.prepare_data(config)
      record = meta_select.select(config, source, split)
      entry = measure(record, split, source.num_classes)
      results.setdefault(cell, {})[str(seed)] = entry
      _write(out, results)
      log(f"{cell} seed {seed}: warned {entry['warned']}, unreliable "
          f"{entry['unreliable']}, purity {entry['purity']:.3f} → {out}")
  if results:  # Today's rule over every selection kept, new or not.
    _write(out, results)
  return results


def _define_flags():
  return dict(
      out=flags.DEFINE_string("out", "results/meta_warning.json",
                              "Where to write (and resume) the JSON."),
      data_dir=flags.DEFINE_string(
          "data_dir", None, "The folder of Fashion-MNIST's four IDX files "
          "(default: the Debian package's)."),
      cells=flags.DEFINE_list("cells", list(cells()),
                              f"Cells, from {', '.join(cells())}."),
      seeds=flags.DEFINE_list("seeds", ["0", "1", "2"],
                              "Seeds (integers >= 0)."),
      rescore=flags.DEFINE_bool(
          "rescore", False, "Select nothing: apply this version's rule to "
          "every selection kept in --out and rewrite its summary."))


def main(argv, f):
  del argv
  for cell in f["cells"].value:
    if cell not in cells():
      raise app.UsageError(f"--cells: {cell!r} is not one of "
                           f"{', '.join(cells())}.")
  try:
    seeds = sorted({int(s) for s in f["seeds"].value})
  except ValueError:
    seeds = [-1]
  if not seeds or min(seeds) < 0:
    raise app.UsageError(f"--seeds={','.join(f['seeds'].value)} must be "
                         "integers >= 0.")
  cli.quiet_logs()
  if f["rescore"].value:
    if not os.path.exists(f["out"].value):
      raise app.UsageError(f"--rescore: {f['out'].value} does not exist.")
    results = run(f["out"].value, [], [])
  else:
    results = run(f["out"].value, f["cells"].value, seeds,
                  f["data_dir"].value)
  for group, values in dict(rescore(results),
                            held_out=held_out(results)).items():
    print(f"{group}: {values['right']} of {values['warnings']} warnings "
          f"right, {values['right']} of {values['unreliable']} unreliable "
          "classes named; precision "
          + (f"{values['precision']:.2f}" if values["precision"] is not None
             else "-") + f" (goal >= {PRECISION_GOAL}), recall "
          + (f"{values['recall']:.2f}" if values["recall"] is not None
             else "-"))


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
