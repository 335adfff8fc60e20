"""The command modules the other fast tests do not reach: each imports and
defines its own flags, so that the fast tier touches every module
of `advisor_tf` (their runs are measured by the slow tier and results/)."""

import json
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


# One process imports them in turn, each with the flag names it defines
# freed again for the next (their flags share names: --out, --epochs, ...).
_IMPORT_EACH = """
import importlib, json, sys
from absl import flags
defined = {}
for name in sys.argv[1:]:
  before = set(flags.FLAGS)
  importlib.import_module(name)
  defined[name] = sorted(set(flags.FLAGS) - before)
  for flag in defined[name]:
    delattr(flags.FLAGS, flag)
print(json.dumps(defined))
"""


def test_every_command_module_imports_and_defines_its_flags():
  proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *COMMANDS],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  defined = json.loads(proc.stdout.strip().splitlines()[-1])
  for name, flag in COMMANDS.items():
    assert flag.lstrip("-") in defined[name], (name, defined[name])


def test_the_user_path_analysis_modules_import_without_flags():
  # Library-style modules (no flags at import): their names are in place.
  assert set(user_path_ablations.VARIANTS) == {
      "advisor_input_std", "meta_bn_eval", "no_loss_input"}
  assert callable(user_path_ablations.apply_variant)
  assert callable(user_path_features.feature_stats)
