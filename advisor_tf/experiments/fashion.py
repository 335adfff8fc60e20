r"""The Fashion-MNIST grid: every method on real photographs at real size,
beside the published instance-dependent-noise results.

  python -m advisor_tf.experiments.fashion --out=results/fashion.json \
      --workdir=runs/fashion [--cells=instance0.4,instance0.5] \
      [--methods=ce,mfrw_mes] [--seeds=0,1] [--epochs=12] \
      [--small_cells_examples=20000] [--nocleanlab_cv]
  # The published protocol (ResNet-18, 150 epochs, every cell at 60 000):
  python -m advisor_tf.experiments.fashion --flagfile=flags/experiments/fashion_gpu.cfg
  # cleanlab's K-fold ranking for runs trained with --nocleanlab_cv:
  python -m advisor_tf.experiments.fashion --rescore --cells=instance0.4 \
      --seeds=0

Zalando's Fashion-MNIST (`--dataset=fashion_mnist`: 60 000 training and
10 000 test photographs, 28×28 grayscale, 10 classes; read from the IDX files
of `apt-get install dataset-fashion-mnist`). Every run uses the project's
defaults (`TrainConfig`: `small_cnn_auto`, SGD lr 0.05 with momentum 0.9 and
weight decay 5e-4, ×0.1 at 2/3 and 5/6 of the epochs, batch 64, meta batch
50, augmentation on: 2-pixel shifts and flips) except what a cell or method
sets, with `export=False`. The cells (`cells()`):

  instance0.4, instance0.5  instance-dependent noise (`--noise=instance`,
                            Xia et al. 2020's generator) at mean rate
                            0.4 / 0.5, on all 60 000 training images
  sym0.4                    symmetric noise 0.4
  flip0.4                   Flip noise 0.4, random targets
  lt100_sym0.2              long tail 100, then symmetric noise 0.2
  (the last three on a seeded, stratified subset of `--small_cells_examples`
  training images, 20 000 by default; 0: all 60 000)
  clean                     no noise, all 60 000 images: the ceiling the
                            noisy cells are read against (not in the
                            default `--cells`; `--cells=clean`)

The methods (`METHODS`), keys of the results:

  ce               plain cross-entropy
  mwnet            Meta-Weight-Net
  mfrw_mes         MFRW-MES, 10 clean images per class taken out of the
                   training split before the noise (`clean`)
  mfrw_mes_auto    MFRW-MES with `--meta_source=auto`: no trusted label
  mfrw_mes_random  MFRW-MES with 10 per class drawn at random from the
                   dirty labels (`--meta_source=random_noisy`)
  mfrw_mes_weight  `mfrw_mes` with `--advisor_example_weight` (beyond the
                   thesis: the advisor also reads out a per-example loss
                   weight; not in the default `--methods`)
  mfrw_mes_select  `mfrw_mes` with `--sample_selection=gmm` (beyond the
                   thesis: after a third of the epochs, each epoch trains
                   only on the examples a Gaussian mixture on their losses
                   calls clean; not in the default `--methods`)
  ce_select        `ce` with `--sample_selection=gmm`: the selection alone
  mfrw_mes_relabel `mfrw_mes` with `--sample_selection=gmm_relabel` (the
                   selection, and label correction of the dropped images
                   the classifier is 95 % sure of; not in the defaults)
  ce_relabel       `ce` with `--sample_selection=gmm_relabel`

Per (cell, method) the JSON holds, per seed in the order of `seeds`, the
dirty-labels grid's values (`dirty_labels.run_one`: `accuracy` at the last
epoch, `accuracy_last10` the mean over the last 10 % of epochs, the
realised noise rate, the meta set's purity, the mask / weight on the
mislabelled and the clean examples, the mean MES suppression, the
label-issue AP and precision@k of every ranking, including `cv_loss`,
`analyze`'s default, and `cleanlab_cv`, cleanlab's) and `train_seconds`.

One grid runner (`dirty_labels.run_grid`): one run = one workdir under
`--workdir`; the JSON is rewritten after every finished run and a restart
skips what it holds, and an interrupted run resumes from its checkpoints,
so the grid fills over several sittings.
"""

from __future__ import annotations

import dataclasses
import logging as pylogging
import os
import types

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from advisor_tf import config as config_lib  # noqa: E402
from advisor_tf.experiments import dirty_labels  # noqa: E402

# The published figures the grid is read beside: Yao et al., NeurIPS 2021
# (CausalNL), Fashion-MNIST with Xia et al.'s instance-dependent noise,
# ResNet-18, mean test accuracy of the last 10 epochs, no trusted set.
PUBLISHED = {"instance0.4": {"CE": 84.22, "T-Revision": 89.46,
                             "CausalNL": 90.01},
             "instance0.5": {"CE": 52.32, "T-Revision": 68.99,
                             "CausalNL": 78.19}}
METHODS = {"ce": {"method": "ce"},
           "mwnet": {"method": "mwnet"},
           "mfrw_mes": {"method": "mfrw_mes", "meta_source": "random"},
           "mfrw_mes_auto": {"method": "mfrw_mes", "meta_source": "auto"},
           "mfrw_mes_random": {"method": "mfrw_mes",
                               "meta_source": "random_noisy"},
           # Beyond the thesis: the advisor also weighs each example
           # (`--advisor_example_weight`); runs only when named.
           "mfrw_mes_weight": {"method": "mfrw_mes", "meta_source": "random",
                               "advisor_example_weight": True},
           # Beyond the thesis: sample selection (`--sample_selection=gmm`),
           # with the advisor and, as its baseline, with plain CE; runs only
           # when named.
           "mfrw_mes_select": {"method": "mfrw_mes", "meta_source": "random",
                               "sample_selection": "gmm"},
           "ce_select": {"method": "ce", "sample_selection": "gmm"},
           # ... and with label correction of the dropped images.
           "mfrw_mes_relabel": {"method": "mfrw_mes", "meta_source": "random",
                                "sample_selection": "gmm_relabel"},
           "ce_relabel": {"method": "ce", "sample_selection": "gmm_relabel"}}
# The methods: what the grid runs unless --methods names others.
DEFAULT_METHODS = ("ce", "mwnet", "mfrw_mes", "mfrw_mes_auto",
                   "mfrw_mes_random")
FULL_CELLS = ("instance0.4", "instance0.5")
# The cells; `clean` (no noise) runs only when named.
DEFAULT_CELLS = ("instance0.4", "instance0.5", "sym0.4", "flip0.4",
                 "lt100_sym0.2")
SMALL_CELLS_EXAMPLES = 20_000
SEEDS = (0, 1)
# Chosen so that the grid runs over a few sittings on 2 CPU cores (the
# README gives the wall time per run); the GPU flagfile sets 150.
EPOCHS = 12
BASE = config_lib.TrainConfig(dataset="fashion_mnist",
                              backbone="small_cnn_auto", meta_source="random",
                              verbose=2, export=False)


def cells(small_cells_examples=SMALL_CELLS_EXAMPLES):
  """Cell name → the `TrainConfig` fields it sets; the cells beyond
  `FULL_CELLS` train on `small_cells_examples` images (0: all)."""
  subset = {"train_examples": small_cells_examples or None}
  return {"instance0.4": dict(noise="instance", noise_rate=0.4),
          "instance0.5": dict(noise="instance", noise_rate=0.5),
          "sym0.4": dict(noise="symmetric", noise_rate=0.4, **subset),
          "flip0.4": dict(noise="flip", noise_rate=0.4,
                          flip_targets="random", **subset),
          "lt100_sym0.2": dict(noise="symmetric", noise_rate=0.2,
                               imbalance_factor=100.0, **subset),
          "clean": dict(noise="none")}


def grid(small_cells_examples=SMALL_CELLS_EXAMPLES, data_dir=None):
  """The Fashion-MNIST grid (`dirty_labels.Grid`)."""
  return dirty_labels.Grid(
      "fashion", dataclasses.replace(BASE, data_dir=data_dir),
      cells(small_cells_examples), METHODS)


def published_table(results):
  """Markdown: the instance cells beside the published figures (mean over
  seeds of the last-10 %-of-epochs accuracy, as published)."""
  lines = ["| cell | " + " | ".join(f"{m} (ours)" for m in METHODS)
           + " | " + " | ".join(f"{k} (published)" for k in
                                PUBLISHED["instance0.4"]) + " |",
           "|---|" + "---|" * (len(METHODS) + 3)]
  for cell, published in PUBLISHED.items():
    ours = []
    for method in METHODS:
      entry = results.get(cell, {}).get(method, {})
      values = [v for v in entry.get("accuracy_last10", []) if v is not None]
      ours.append(f"{sum(values) / len(values):.2f}" if values else "-")
    lines.append(f"| {cell} | " + " | ".join(ours) + " | " + " | ".join(
        f"{v:.2f}" for v in published.values()) + " |")
  return "\n".join(lines)


def _define_flags():
  """The command's flags (defined only when run as a command)."""
  return types.SimpleNamespace(
      out=flags.DEFINE_string("out", "results/fashion.json",
                              "Where to write (and resume) the JSON."),
      workdir=flags.DEFINE_string("workdir", "runs/fashion",
                                  "Where each run keeps its workdir (an "
                                  "interrupted run resumes from it)."),
      data_dir=flags.DEFINE_string(
          "data_dir", None, "The folder of Fashion-MNIST's four IDX files "
          "(default: the Debian package's)."),
      cells=flags.DEFINE_list("cells", list(DEFAULT_CELLS),
                              f"Cells, from {', '.join(cells())}."),
      methods=flags.DEFINE_list("methods", list(DEFAULT_METHODS),
                                f"Methods, from {', '.join(METHODS)}."),
      seeds=flags.DEFINE_list("seeds", [str(s) for s in SEEDS],
                              "Seeds (integers >= 0)."),
      epochs=flags.DEFINE_integer("epochs", EPOCHS, "Epochs per run.",
                                  lower_bound=1),
      small_cells_examples=flags.DEFINE_integer(
          "small_cells_examples", SMALL_CELLS_EXAMPLES,
          "Training images of the cells beyond "
          f"{', '.join(FULL_CELLS)} (0: all 60 000).", lower_bound=0),
      folds=flags.DEFINE_integer("folds", dirty_labels.FOLDS, "K of the "
                                 "K-fold cross-entropy behind cleanlab_cv.",
                                 lower_bound=2),
      cleanlab_cv=flags.DEFINE_bool(
          "cleanlab_cv", True, "Measure cleanlab's ranking and analyze's "
          "default (K extra cross-entropy trainings per cell and seed)."),
      set=flags.DEFINE_string("set", "", "TrainConfig fields field=value,... "
                              "of every run (e.g. backbone=resnet18)."),
      rescore=flags.DEFINE_bool(
          "rescore", False, "Train nothing: measure every ranking again, "
          "cleanlab_cv's K folds included, for the runs of --cells and "
          "--seeds in --out whose workdirs are kept in --workdir."))


def main(argv, f):
  del argv
  cli.quiet_logs()
  pylogging.getLogger("tensorflow").addFilter(
      dirty_labels._NoRetracingWarnings())  # pylint: disable=protected-access
  the_grid = grid(f.small_cells_examples.value, f.data_dir.value)
  cells_, methods, seeds, overrides = dirty_labels.grid_flags(
      f, the_grid.cells, METHODS)
  if f.rescore.value:
    dirty_labels.rescore_flags(f, overrides)
    try:
      results = dirty_labels.rescore(
          f.out.value, os.path.abspath(f.workdir.value), f.epochs.value,
          f.folds.value, grid=the_grid, cells=cells_, seeds=seeds)
    except dirty_labels.Busy as e:
      raise app.UsageError(str(e)) from None
    print(dirty_labels.tables(results, list(METHODS)))
    return
  try:  # --set values a run would refuse, before anything trains (the
    # ce run of a noisy cell included: every other method's ranks need it).
    for method in set(methods) | {"ce"}:
      the_grid.config(cells_[0], method, 0, f.epochs.value, f.workdir.value,
                      overrides)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  try:
    results = dirty_labels.run_grid(
        f.out.value, cells_, methods, seeds, f.epochs.value,
        os.path.abspath(f.workdir.value), f.folds.value, f.cleanlab_cv.value,
        overrides=overrides, grid=the_grid)
  except dirty_labels.Busy as e:
    raise app.UsageError(str(e)) from None
  print(dirty_labels.tables(results, list(METHODS)))
  print("\nBeside the published figures (mean of the last 10 % of epochs):")
  print(published_table(results))


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
