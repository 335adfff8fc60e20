"""The command modules the other fast tests do not reach: each starts and
lists its own flags (`--help`), so that the fast tier touches every module
of `advisor_tf` (their runs are measured by the slow tier and results/)."""

import os
import subprocess
import sys

from advisor_tf.experiments import user_path_ablations
from advisor_tf.experiments import user_path_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Command module → a flag its --help must list.
COMMANDS = {"advisor_tf.experiments.digits_noise": "--methods",
            "advisor_tf.experiments.label_issues": "--out",
            "advisor_tf.experiments.review_loop": "--out",
            "advisor_tf.tools.bench": "--backbone",
            "advisor_tf.tools.bench_augment": "--batches"}


def test_every_command_module_starts_and_lists_its_flags():
  # All at once: one TensorFlow start's wall time, not five.
  running = {name: subprocess.Popen(
      [sys.executable, "-m", name, "--help"], cwd=ROOT, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for name in COMMANDS}
  for name, proc in running.items():
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode in (0, 1), (name, out[-2000:])  # absl: 1.
    assert COMMANDS[name] in out, (name, out[-2000:])
    assert "Traceback" not in out, (name, out[-2000:])


def test_the_user_path_analysis_modules_import_without_flags():
  # Library-style modules (no flags at import): their names are in place.
  assert set(user_path_ablations.VARIANTS) == {
      "advisor_input_std", "meta_bn_eval", "no_loss_input"}
  assert callable(user_path_ablations.apply_variant)
  assert callable(user_path_features.feature_stats)
