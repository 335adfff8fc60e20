r"""Review the suspected labels of a run in the browser, fix them, retrain.

  advisor-review --workdir=runs/photos [--output=runs/photos/review.html]
  # open the page (file://), review with the keyboard, download
  # corrections.csv, then:
  advisor-train --flagfile=runs/photos/flags.txt --corrections=corrections.csv \
      --meta_from=runs/photos --workdir=runs/photos_fixed

Writes ONE self-contained HTML file (no server, nothing fetched: the
thumbnails are inlined as data URIs) with a card per training image, ranked
by the run's label-issue suspicion (`WORKDIR/analysis/label_issues.csv`,
written by `advisor-analyze`; run here first when absent, with
`--ranking`): the image, the given label, the classifier's suggested label
with its probability, the next classes ranked, the score.

Keys: → / j next, ← / k previous, a accept the suggestion, s keep the given
label, d drop the image, u unsure, 1–9 (0 = 10; two digits within a moment
for more classes) relabel to that class, z / Backspace undo, ? help.
Filters by given class, suggested class and minimum score; "Accept the
suggestions ≥ score in this filter" decides every undecided card shown at
once (one undo). Progress is kept in the browser (localStorage, keyed by the
run and its ranking) across reloads; "Download corrections.csv" writes

  path,given_label,action,new_label,score,suggested_label

one row per decided card (action relabel | keep | drop | unsure; `path`
relative to the run's --data_dir), and "Load corrections" reads such a file
back. `advisor-train --corrections=FILE` trains on the corrected labels
(`advisor_tf.data.corrections`); `--meta_from=RUN` keeps RUN's automatic
meta set (with the corrected labels) instead of choosing a new one.
"""

import os

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import flags  # noqa: E402

from advisor_tf import advice as advice_lib  # noqa: E402
from advisor_tf import review_page  # noqa: E402

_WORKDIR, _DATA_DIR = cli.define_run_flags("review")
_OUTPUT = flags.DEFINE_string("output", None, "The HTML file to write "
                              "(default WORKDIR/review.html).")
_ISSUES = flags.DEFINE_string("issues", None,
                              "The ranking to review: a label_issues.csv "
                              "(default WORKDIR/analysis/label_issues.csv; "
                              "written by running the analysis first when "
                              "absent).")
_RANKING = flags.DEFINE_enum(
    "ranking", None, advice_lib.RANKINGS,
    "Ranking of the analysis run when label_issues.csv is absent (default "
    f"{advice_lib.default_ranking_text()}, as advisor-analyze).")
_MAX_CARDS = flags.DEFINE_integer("max_cards", 2000,
                                  "Cards on the page: the most suspected "
                                  "images (0: every training image).",
                                  lower_bound=0)
_THUMBNAIL = flags.DEFINE_integer("thumbnail_size", 128,
                                  "Longest side of the inlined thumbnails, "
                                  "in pixels.", lower_bound=8)
_TOP_CLASSES = flags.DEFINE_integer("top_classes", 4,
                                    "Classes listed by probability on each "
                                    "card.", lower_bound=1)


def main(argv):
  del argv
  cli.quiet_logs()
  with cli.usage_errors():
    path, data = review_page.review_run(
        _WORKDIR.value, _OUTPUT.value, _DATA_DIR.value, _ISSUES.value,
        _RANKING.value, _MAX_CARDS.value, _THUMBNAIL.value,
        _TOP_CLASSES.value)
  print(f"{len(data['cards'])} cards (of {data['total']} training images) → "
        f"file://{os.path.abspath(path)}")


GROUPS = {"run": ["workdir", "data_dir"],
          "page": ["output", "issues", "ranking", "max_cards",
                   "thumbnail_size", "top_classes"]}


def console():
  """Console script `advisor-review`."""
  cli.run(main, __doc__, GROUPS)


if __name__ == "__main__":
  console()
