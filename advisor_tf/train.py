r"""Command line: train a classifier with a meta-learned advisor.

  python -m advisor_tf.train --flagfile=flags/quickstart.cfg [--workdir=DIR]

Flags are defined in `advisor_tf.cli_flags`; the work is `trainer.train`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from advisor_tf import cli  # noqa: E402
from advisor_tf import cli_flags  # noqa: E402


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_logs()
  with cli.usage_errors():
    config = cli_flags.to_config()
  if flags.FLAGS.dry_run:
    print(config.to_json())
    return
  from advisor_tf import trainer
  with cli.usage_errors():  # Bad configuration, workdir or data.
    metrics = trainer.train(config, flags_text=flags.FLAGS.flags_into_string())
  print(f"test top-1 {metrics['test/top1']:.2f}%  (realised noise rate "
        f"{metrics['train/realised_noise_rate']:.3f}); wrote {config.workdir}")


if __name__ == "__main__":
  app.run(main)
