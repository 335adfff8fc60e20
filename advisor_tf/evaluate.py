r"""Re-evaluate a run on any split, from its checkpoint or its export.

  advisor-evaluate --workdir=runs/quickstart [--split=test] \
      [--model=checkpoint|saved_model]

Rebuilds the run's data from its `config.json` (same seed, same split),
computes top-1/3/5, per-class and many/medium/few-shot accuracy and the
confusion matrix, prints a summary and writes `eval_<split>_<model>.json`.
A model with non-finite weights is refused (exit status 2).
"""

import json
import os

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import flags  # noqa: E402

from advisor_tf import evaluation  # noqa: E402

_WORKDIR, _DATA_DIR = cli.define_run_flags("evaluate")
_SPLIT = flags.DEFINE_string("split", "test", "Split of the run's dataset.")
_MODEL = flags.DEFINE_enum("model", "checkpoint", ["checkpoint", "saved_model"],
                           "Evaluate the newest checkpoint or the export.")
GROUPS = {"run": ["workdir", "data_dir"], "evaluation": ["split", "model"]}


def main(argv):
  del argv
  cli.quiet_logs()
  out = os.path.join(_WORKDIR.value, f"eval_{_SPLIT.value}_{_MODEL.value}.json")
  with cli.usage_errors():  # Bad input, or a workdir that refuses writes.
    result = evaluation.evaluate_run(_WORKDIR.value, _SPLIT.value,
                                     _MODEL.value, _DATA_DIR.value)
    with open(out, "w") as f:
      json.dump(result, f, indent=2)
  summary = {k: result[k] for k in ("top1", "top3", "top5", "many_shot",
                                    "medium_shot", "few_shot") if k in result}
  print(json.dumps(summary), f"→ {out}")


def console():
  """Console script `advisor-evaluate`."""
  cli.run(main, __doc__, GROUPS)


if __name__ == "__main__":
  console()
