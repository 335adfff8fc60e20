"""MkDocs hooks of the advisor_tf documentation (see mkdocs.yml).

- `results/*.png` live outside `docs/`; every one is added to the site at
  the same path (`results/NAME.png`), so the pages link to them exactly as
  the repository's files are named, from a clean clone, under `--strict`.
- The page that holds the marker `<!-- advisor_tf:flags -->` gets the
  reference of every `advisor-train` flag, generated at build time from the
  absl flag definitions in `advisor_tf/cli_flags.py` (grouped as `--help`
  groups them, `cli_flags.GROUPS`), whose defaults come from `TrainConfig`
  and whose choices from `config.CHOICES`. Nothing is retyped: a flag added,
  renamed or given another default shows up in the next build.

The flags are read in a child Python process (one import of the package,
and so of TensorFlow, per build), so the absl flag registry of the
documentation build stays untouched.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[2]
MARKER = "<!-- advisor_tf:flags -->"

# Run in the child process: every flag of advisor_tf.cli_flags as JSON.
_DUMP = r"""
import json, re, sys
from absl import flags
from advisor_tf import cli_flags, config
FLAGS = flags.FLAGS
defined = [f.name for f in FLAGS.get_flags_for_module("advisor_tf.cli_flags")]
out = {"groups": {}, "choices": {k: [str(v) for v in vs]
                                  for k, vs in config.CHOICES.items()}}
grouped = set()
for group, names in cli_flags.GROUPS.items():
  rows = []
  for name in names:
    flag = FLAGS[name]
    grouped.add(name)
    rows.append({"name": name, "type": flag.flag_type(),
                 "default": (flag.default_as_str or "").strip("'"),
                 "enum": [str(v) for v in getattr(flag.parser, "enum_values", None) or []],
                 # absl puts "<a|b|c>: " before an enum's help.
                 "help": re.sub(r"^<[^>]*>: ", "", flag.help)})
  out["groups"][group] = rows
out["ungrouped"] = sorted(set(defined) - grouped)
json.dump(out, sys.stdout)
"""

_flags_cache: dict | None = None


def _train_flags() -> dict:
  global _flags_cache
  if _flags_cache is None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(
                   [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, "-c", _DUMP], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      raise RuntimeError("could not read advisor_tf.cli_flags:\n" + proc.stderr[-3000:])
    _flags_cache = json.loads(proc.stdout)
  return _flags_cache


def _cell(text: str) -> str:
  return " ".join(str(text).split()).replace("|", "\\|")


def flags_markdown(data: dict) -> str:
  """The flag reference as Markdown tables, one per `--help` group."""
  parts = []
  for group, rows in data["groups"].items():
    parts.append(f"### {group.capitalize()}\n")
    parts.append("| flag | type | default | allowed | meaning |")
    parts.append("|---|---|---|---|---|")
    for row in rows:
      default = row["default"]
      default = f"`{_cell(default)}`" if default not in ("", None) else "(unset)"
      allowed = " ".join(f"`{_cell(v)}`" for v in row["enum"]) or ""
      parts.append(f"| `--{row['name']}` | {row['type']} | {default} | "
                   f"{allowed} | {_cell(row['help'])} |")
    parts.append("")
  if data["ungrouped"]:
    raise RuntimeError("flags of advisor_tf/cli_flags.py in no --help group "
                       "(cli_flags.GROUPS): " + ", ".join(data["ungrouped"]))
  return "\n".join(parts)


def on_files(files, config):
  for png in sorted((ROOT / "results").glob("*.png")):
    files.append(File.generated(config, f"results/{png.name}",
                                abs_src_path=str(png)))
  return files


def on_page_markdown(markdown, page, config, files):
  if MARKER in markdown:
    markdown = markdown.replace(MARKER, flags_markdown(_train_flags()))
  return markdown
