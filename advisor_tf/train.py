r"""Train an image classifier with a meta-learned advisor.

  advisor-train --flagfile=quickstart [--workdir=DIR] [--flag=...]
  python -m advisor_tf.train --dataset=image_folder --data_dir=MY_PHOTOS

`--flagfile=NAME` takes a flagfile shipped with the package (quickstart,
cifar_flip, cifar_lt, ...: `advisor_tf/flags/`, also `flags/NAME.cfg` in a
clone) from any folder; a run's own `WORKDIR/flags.txt` retrains it.

Flags are defined in `advisor_tf.cli_flags`; the work is `trainer.train`.
A workdir holds one run: re-running the same command resumes it.
"""

import shutil

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import flags  # noqa: E402

from advisor_tf import cli_flags  # noqa: E402
from advisor_tf import trainer  # noqa: E402


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are "
             "--name=value; see --help).")
  cli.quiet_logs()
  with cli.usage_errors():
    config = cli_flags.to_config()
  if flags.FLAGS.dry_run:
    print(config.to_json())
    return
  print(f"Training {config.method} on {config.dataset}; synthetic label "
        f"noise: {trainer.describe_noise(config)}; workdir {config.workdir}")
  # Bad configuration, workdir or data; a full disk, a read-only workdir,
  # Ctrl-C: one line, saying what is kept and how to go on.
  with cli.usage_errors(after=lambda: trainer.resume_hint(config)):
    metrics = trainer.train(config, flags_text=cli_flags.flags_text())
  print(next_steps(config, metrics))


def _command(name):
  """`advisor-<name>` where the console scripts are installed (`pip install
  .`), else its `python -m` form."""
  script = f"advisor-{name}"
  return script if shutil.which(script) else f"python -m advisor_tf.{name}"


def next_steps(config, metrics):
  """The closing lines of a run: its result, where its outputs are and the
  commands to run next."""
  workdir = config.workdir
  noise = metrics.get("train/realised_noise_rate")
  lines = [f"test top-1 {metrics['test/top1']:.2f}%"
           + (f"  (realised noise rate {noise:.3f})" if noise is not None
              else "") + f"; run in {workdir}"]
  if config.export:
    lines.append(f"Exported classifier: {workdir}/saved_model (serves "
                 f"itself), {workdir}/classifier.keras (for Keras)")
  lines += ["Next:",
            f"  {_command('evaluate')} --workdir={workdir}",
            f"  {_command('predict')} --model={workdir}/saved_model "
            "IMAGE_OR_FOLDER",
            f"  {_command('analyze')} --workdir={workdir}    # report in "
            f"{workdir}/analysis/report.html"]
  return "\n".join(lines)


def console():
  """Console script `advisor-train`."""
  cli.run(main, __doc__, cli_flags.GROUPS)


if __name__ == "__main__":
  console()
