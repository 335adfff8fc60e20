r"""See what the advisor learned in a run: figures, a report and label issues.

  advisor-analyze --workdir=runs/quickstart \
      [--out=WORKDIR/analysis] [--classes=3,8] [--num_examples=30] \
      [--ranking=cv_loss] [--num_suspects=24]

Restores the run's newest checkpoint, runs classifier and advisor over the
training split and writes into `--out`: PNG figures (PCA and t-SNE of the
attention masks, mask heat maps, s_k against class sizes over training,
per-class accuracy against class size, confusion matrix, label-issue
precision/recall, a gallery of the top suspected images with given and
predicted labels), `report.md`, `report.html`, `label_issues.csv` (training
examples ranked by `--ranking`) and `summary.json`.

`--ranking` (default `cv_loss`, the ranking with the best mean AP over the
dirty-labels grid, `python -m advisor_tf.experiments.dirty_labels`; the
report states the chosen ranking's mean AP over the grid):
  rank_average    mean percentile rank of `advisor` and `cleanlab_model`
                  (`cleanlab_model` alone for a run without an advisor)
  advisor         how strongly the advisor discounts the example's loss
  loss            the example's cross-entropy under the run's classifier
  cleanlab_model  cleanlab's confident-learning issues, then its label-quality
                  score, on the run's own predicted probabilities
  cleanlab_cv     the same on out-of-sample probabilities of `--folds`-fold
                  cross-entropy training of the run's configuration (the
                  usual confident-learning recipe): trains K models first,
                  cached in `--out`
  cv_loss         mean percentile rank of `cleanlab_cv` and `loss` (the K
                  models too)
  cv_advisor      mean percentile rank of `cleanlab_cv` and `advisor` (the K
                  models too)
The grid also measures `ce_loss` (a plain CE run's loss), which needs a run
of its own.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")  # Files only, no display needed.

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import flags  # noqa: E402

from advisor_tf import advice  # noqa: E402
from advisor_tf import analysis  # noqa: E402
from advisor_tf import crossval  # noqa: E402
from advisor_tf import run as run_lib  # noqa: E402

_WORKDIR, _DATA_DIR = cli.define_run_flags("analyse")
_OUT = flags.DEFINE_string("out", None, "Output folder (default "
                           "WORKDIR/analysis).")
_CLASSES = flags.DEFINE_list("classes", None,
                             "Class names for the mask heat maps (default: "
                             "the most and the least frequent class).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 50,
                                     "Rows of each mask heat map.",
                                     lower_bound=1)
_MAX_POINTS = flags.DEFINE_integer("max_points", 2000,
                                   "Training examples in the PCA / t-SNE "
                                   "plots (a seeded sample).", lower_bound=10)
_RANKING = flags.DEFINE_enum(
    "ranking", None, advice.RANKINGS,
    "How to rank the label issues (default "
    f"{advice.default_ranking_text()}): " + "; ".join(
        f"{name}: {advice.RANKING_HELP[name]}" for name in advice.RANKINGS)
    + ".")
_FOLDS = flags.DEFINE_integer("folds", crossval.FOLDS, "K of the K-fold "
                              "cross-entropy training behind "
                              "--ranking=cleanlab_cv.", lower_bound=2)
_NUM_SUSPECTS = flags.DEFINE_integer("num_suspects", 24,
                                     "Images in the gallery of the top "
                                     "suspects.", lower_bound=0)


def main(argv):
  del argv
  cli.quiet_logs()
  out = _OUT.value or os.path.join(_WORKDIR.value, "analysis")
  with cli.usage_errors():
    finished = run_lib.load(_WORKDIR.value, _DATA_DIR.value)
    summary = analysis.analyze_run(finished, out, class_names=_CLASSES.value,
                                   num_examples=_NUM_EXAMPLES.value,
                                   max_points=_MAX_POINTS.value,
                                   ranking=_RANKING.value,
                                   num_suspects=_NUM_SUSPECTS.value,
                                   folds=_FOLDS.value)
  for line in analysis._headline(summary):
    print(line)
  print(f"→ {os.path.join(out, 'report.html')} ({len(summary['figures'])} "
        "figures)")


GROUPS = {"run": ["workdir", "data_dir"],
          "report": ["out", "classes", "num_examples", "max_points",
                     "ranking", "folds", "num_suspects"]}


def console():
  """Console script `advisor-analyze`."""
  cli.run(main, __doc__, GROUPS)


if __name__ == "__main__":
  console()
