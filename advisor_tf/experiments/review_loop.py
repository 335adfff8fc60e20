r"""The review loop measured: suspects → corrected labels → a retrained model.

  python -m advisor_tf.experiments.review_loop \
      --out=results/review_loop.json --workdir=runs/review_loop \
      [--cell=sym0.4] [--seeds=0] [--fractions=0.05,0.1,0.2] [--epochs=30] \
      [--rankings=advisor,cv_loss]

On the digits written as a user's image folder with synthetic noise
(`user_path.write_digits_folder`: the noise is in the folder labels, the
meta/ folder holds 10 trusted images per class), or, with
`--cell=fashion_instance<rate>`, on `--train_images` Fashion-MNIST
photographs written as a user's folder under instance-dependent noise
(`tools.scale.write_folder`: no meta/, so every run chooses its own meta
set, `--meta_source=auto`, the way a user's run does), trains MFRW-MES and plain
cross-entropy the way a user does (`dataset=image_folder`, defaults
otherwise), ranks the training images by the MFRW-MES run's label-issue
rankings (`--rankings`: `advisor`, its own discount, and `cv_loss`, the
default ranking of `advisor-analyze` and `advisor-review`), and simulates
a reviewer who goes down a ranking and decides the top k cards correctly
(k = each of `--fractions` of the training set): a wrong label is
relabelled to the true class, a right one kept. The
decisions are written as the review page's corrections.csv and both methods
retrain with `--corrections`. One training process at a time.

Also the review effort: how many cards, in the ranking's order and in a
random order (expected: the same fraction of the set), a reviewer looks at
to find 50 / 80 / 90 / 95 % of the wrong labels.

Writes `{"setup", "seeds": {seed: {"first_run": {method: top1},
"corrected": {ranking: {fraction: {"cards", "labels_fixed",
"remaining_noise_rate", "suggestion_right", method: top1}}}, "effort":
{"random_order_mean": {found: cards}, ranking: {"cards": {found: cards},
"ap"}}}}, "mean": the same nesting, each number as {"mean", "std", "n"}
over the seeds}`.
"""

import csv
import dataclasses
import json
import os
import time

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from advisor_tf import advice as advice_lib  # noqa: E402
from advisor_tf import config as config_lib  # noqa: E402
from advisor_tf import crossval  # noqa: E402
from advisor_tf import run as run_lib  # noqa: E402
from advisor_tf import trainer  # noqa: E402
from advisor_tf.data import corrections  # noqa: E402
from advisor_tf.data import sources  # noqa: E402
from advisor_tf.experiments import user_path  # noqa: E402
from advisor_tf.tools import scale  # noqa: E402

METHODS = ("mfrw_mes", "ce")
FOUND = (0.5, 0.8, 0.9, 0.95)


def config_of(folder, method, workdir, seed, epochs, corrections_file=None,
              meta_from=None):
  """A user's run on the folder (defaults but for what the grid sets; all of
  the folder's meta/ as the trusted set where it has one; without one, the
  retrain keeps the meta set of the run it corrects, `meta_from`, as the
  documented retrain command does)."""
  has_meta = os.path.isdir(os.path.join(folder, "meta"))
  return dataclasses.replace(
      config_lib.TrainConfig(), dataset="image_folder", data_dir=folder,
      image_size=32, meta_per_class=0 if has_meta else None, method=method,
      seed=seed,
      epochs=epochs, lr_decay_epochs=(max(1, round(epochs * 2 / 3)),
                                      max(1, round(epochs * 5 / 6))),
      workdir=workdir, export=False, verbose=0,
      corrections=corrections_file,
      meta_from=None if has_meta else meta_from).validate()


def train_once(config):
  """Trains `config` (or reads the metrics of a finished run): test top-1."""
  path = os.path.join(config.workdir, "metrics.json")
  if not os.path.exists(path):
    start = time.time()
    trainer.train(config)
    print(f"  trained {config.workdir} in {time.time() - start:.0f} s")
  with open(path) as f:
    return float(json.load(f)["test/top1"])


def cards_to_find(order, noisy, fractions=FOUND):
  """Cards reviewed in `order` until each fraction of the wrong labels is
  found: `{fraction: cards}`."""
  found = np.cumsum(noisy[order])
  total = int(noisy.sum())
  return {f"{f:g}": int(np.searchsorted(found, np.ceil(f * total)) + 1)
          for f in fractions}


def write_fixes(path, rows):
  """The simulated reviewer's decisions as the page's corrections.csv."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(corrections.HEADER)
    writer.writerows(rows)


FASHION = "fashion_instance"


def write_folder(folder, cell, seed, train_images):
  """The cell's folder (digits, or Fashion-MNIST under instance noise):
  `(manifest, realised noise rate)`."""
  if cell.startswith(FASHION):
    manifest = scale.write_folder(folder, train_images, seed,
                                  rate=float(cell[len(FASHION):]))
    # The manifest numbers classes in Zalando's order, a folder source by
    # its sorted class folders: the same labels in the run's numbering.
    written = [n.replace("/", "_") for n in sources.FASHION_MNIST_CLASSES]
    order = sorted(written)
    run_label = [order.index(n) for n in written]
    manifest = dict(manifest, splits={
        split: [[f, run_label[given], run_label[true]]
                for f, given, true in rows]
        for split, rows in manifest["splits"].items()})
    return manifest, manifest["realised_rate"]
  manifest = user_path.write_digits_folder(folder, cell, seed)
  return manifest, manifest["realised_noise_rate"]


def one_seed(root, cell, seed, epochs, ranking_names, fractions,
             train_images=6000):
  """The loop for one seed in `root`: its folder, first runs, rankings,
  corrected runs; returns its result dict."""
  folder = os.path.join(root, "folder")
  manifest, realised = write_folder(folder, cell, seed, train_images)
  truth = {file: (given, true) for file, given, true in
           manifest["splits"]["train"]}
  first = {m: train_once(config_of(folder, m, os.path.join(root, f"first_{m}"),
                                   seed, epochs)) for m in METHODS}
  print(f"seed {seed} first runs: {first}")
  run = run_lib.load(os.path.join(root, "first_mfrw_mes"), folder)
  adv = advice_lib.advise(run.model, run.source, run.split)
  rankings = advice_lib.single_run_rankings(adv)
  if any(r in advice_lib.TRAINED_RANKINGS for r in ranking_names):
    cv = crossval.cross_validated_probabilities(
        run.config, run.source, run.split,
        cache=os.path.join(root, "cv_probabilities_5fold.npy"))
    rankings.update(advice_lib.cv_rankings(rankings, advice_lib.cleanlab_scores(
        adv.given, cv[adv.positions])))
  probs = advice_lib.probabilities(adv)
  names = list(run.source.class_names)
  indices = np.asarray(run.split.train_indices)[adv.positions]
  files = [os.path.relpath(os.path.abspath(run.source.paths["train"][i]),
                           os.path.abspath(folder)).replace(os.sep, "/")
           for i in indices]
  given = np.array([truth[f][0] for f in files])
  clean = np.array([truth[f][1] for f in files])
  assert (given == adv.given).all(), "the folder's labels are not the run's"
  noisy = given != clean
  rng = np.random.default_rng(seed)
  random_orders = [rng.permutation(len(noisy)) for _ in range(100)]
  effort = {
      "wrong_labels": int(noisy.sum()), "train_images": int(len(noisy)),
      "random_order_mean": {
          k: float(np.mean([cards_to_find(o, noisy)[k]
                            for o in random_orders]))
          for k in map(lambda f: f"{f:g}", FOUND)}}
  for name, scores in sorted(rankings.items()):
    effort[name] = {
        "cards": cards_to_find(np.argsort(-scores, kind="stable"), noisy),
        "ap": advice_lib.ranking_quality(scores, noisy)["ap"]}
  def trained(name):  # Reported without asking: its runs are all there.
    return all(os.path.exists(os.path.join(
        root, f"{name}_top{float(f):g}_{m}", "metrics.json"))
               for f in fractions for m in METHODS)
  corrected = {}
  for name in list(ranking_names) + sorted(
      n for n in rankings if n not in ranking_names and trained(n)):
    scores = rankings[name]
    order = np.argsort(-scores, kind="stable")
    corrected[name] = {}
    for fraction in map(float, fractions):
      k = int(round(fraction * len(order)))
      top = order[:k]
      rows = [[files[i], names[given[i]],
               "relabel" if noisy[i] else "keep",
               names[clean[i]] if noisy[i] else "", f"{scores[i]:.6g}",
               names[int(probs[i].argmax())]] for i in top]
      path = os.path.join(root, f"{name}_corrections_top{fraction:g}.csv")
      write_fixes(path, rows)
      entry = {"cards": k, "labels_fixed": int(noisy[top].sum()),
               "remaining_noise_rate": float(
                   (noisy.sum() - noisy[top].sum()) / len(noisy)),
               "suggestion_right": float(np.mean(
                   probs[top].argmax(axis=1) == clean[top]))}
      for m in METHODS:
        run_dir = os.path.join(root, f"{name}_top{fraction:g}_{m}")
        if os.path.isdir(os.path.join(folder, "meta")):  # A trusted meta/.
          entry[m] = train_once(config_of(folder, m, run_dir, seed, epochs,
                                          path))
          continue
        entry[m] = train_once(config_of(
            folder, m, run_dir + "_kept_meta", seed, epochs, path,
            meta_from=os.path.join(root, f"first_{m}")))
        # Before `--meta_from`, the retrain chose its own meta set: kept
        # beside where that run is there (it is not trained again).
        if os.path.exists(os.path.join(run_dir, "metrics.json")):
          entry[f"{m}_own_meta"] = train_once(config_of(
              folder, m, run_dir, seed, epochs, path))
      corrected[name][f"{fraction:g}"] = entry
      print(f"seed {seed} {name} top {fraction:.0%}: {entry}")
  return {"realised_noise_rate": realised,
          "first_run": first, "corrected": corrected, "effort": effort}


def _mean(values):
  values = [v for v in values if v is not None]
  return ({"mean": float(np.mean(values)), "std": float(np.std(values)),
           "n": len(values)} if values else None)


def summarise(per_seed):
  """Means (and std, n) over seeds of every number of `one_seed`'s
  results, in the same nesting."""
  def walk(parts):
    first = parts[0]
    if isinstance(first, dict):
      keys = sorted({k for p in parts for k in p})
      return {k: walk([p[k] for p in parts if k in p]) for k in keys}
    return _mean(parts)
  return walk(list(per_seed.values()))


def main(argv):
  del argv
  cli.quiet_logs()
  per_seed = {}
  for seed in map(int, _SEEDS.value):
    per_seed[str(seed)] = one_seed(
        os.path.join(_WORKDIR.value, f"s{seed}"), _CELL.value, seed,
        _EPOCHS.value, _RANKINGS.value, _FRACTIONS.value,
        _TRAIN_IMAGES.value)
  setup = ({"train_images": _TRAIN_IMAGES.value}
           if _CELL.value.startswith(FASHION) else {})
  result = {"setup": {"cell": _CELL.value, **setup, "seeds": list(per_seed),
                      "epochs": _EPOCHS.value,
                      "rankings": "of each seed's first MFRW-MES run",
                      "methods": list(METHODS)},
            "mean": summarise(per_seed), "seeds": per_seed}
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result["mean"], indent=2))


_OUT = flags.DEFINE_string("out", "results/review_loop.json", "Results JSON.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/review_loop",
                               "Folder of the image folder and the runs.")
_CELL = flags.DEFINE_enum("cell", "sym0.4", ["sym0.2", "sym0.4", "sym0.6",
                                             "flip0.4", FASHION + "0.4",
                                             FASHION + "0.5"],
                          "The cell written into the folder: the digits "
                          "under a dirty-labels cell, or Fashion-MNIST "
                          "photographs under instance-dependent noise.")
_TRAIN_IMAGES = flags.DEFINE_integer(
    "train_images", 6000, "Training photographs of a Fashion-MNIST cell.",
    lower_bound=100)
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds of the noise and the runs "
                           "(one folder and set of runs each, in "
                           "WORKDIR/s<seed>).")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Epochs of every run.",
                               lower_bound=1)
_RANKINGS = flags.DEFINE_list(
    "rankings", ["advisor", advice_lib.DEFAULT_RANKING],
    "Rankings whose top suspects the reviewer fixes, each retrained (from "
    f"{', '.join(advice_lib.RANKINGS)}; the default "
    f"{advice_lib.DEFAULT_RANKING} is what advisor-review shows, and trains "
    "5 cross-entropy folds first).")
_FRACTIONS = flags.DEFINE_list("fractions", ["0.05", "0.1", "0.2"],
                               "Top fractions of the training set reviewed.")
GROUPS = {"experiment": ["out", "workdir", "cell", "train_images", "seeds",
                         "epochs", "rankings", "fractions"]}


def console():
  cli.run(main, __doc__, GROUPS)


if __name__ == "__main__":
  console()
