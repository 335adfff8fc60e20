"""The documentation: `mkdocs build --strict` passes offline, the flag
reference is generated from the code, every result file is referenced from a
page (every figure shown), and the README stays short with CI's commands."""

import glob
import html
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from absl import flags

from advisor_tf import cli_flags
from advisor_tf import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
RESULTS = os.path.join(ROOT, "results")


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def doc_pages():
  """{page name: Markdown} of every page under docs/, with the files the
  pages include (`--8<-- "path"`, pymdownx.snippets) inlined."""
  pages = {}
  for path in sorted(glob.glob(os.path.join(DOCS, "**", "*.md"),
                               recursive=True)):
    text = _read(path)
    text = re.sub(r'^--8<-- "([^"]+)"$',
                  lambda m: _read(os.path.join(ROOT, m.group(1))), text,
                  flags=re.M)
    pages[os.path.relpath(path, DOCS)] = text
  return pages


def unreferenced(names, pages):
  """The result files (`results/NAME`) no page names."""
  text = "\n".join(pages.values())
  return [name for name in names if f"results/{name}" not in text]


def not_shown(names, pages):
  """The figures (`results/NAME.png`) no page shows as an image."""
  text = "\n".join(pages.values())
  return [name for name in names
          if not re.search(r"!\[[^\]]*\]\(results/" + re.escape(name) + r"\)",
                           text)]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  """The site, built as CI builds it, with every proxy pointing at a closed
  port: anything fetched at build time would fail the build."""
  out = tmp_path_factory.mktemp("site")
  closed = "http://127.0.0.1:9"
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1", http_proxy=closed,
             https_proxy=closed, HTTP_PROXY=closed, HTTPS_PROXY=closed,
             no_proxy="", NO_PROXY="")
  proc = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
       str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return out


def test_site_builds_strict_with_every_page(site):
  for page in doc_pages():
    name = page[:-len(".md")]
    built = site / ("index.html" if name == "index" else
                    os.path.join(name, "index.html"))
    assert built.is_file(), page


def test_flag_reference_is_generated_from_the_flag_definitions(site):
  text = html.unescape(_read(site / "training-and-flags" / "index.html"))
  assert "advisor_tf:flags" not in text  # the marker was replaced
  text = text.split('id="every-flag-of-advisor-train"', 1)[1]
  names = [name for group in cli_flags.GROUPS.values() for name in group]
  defined = {f.name for f in
             flags.FLAGS.get_flags_for_module("advisor_tf.cli_flags")}
  assert set(names) == defined
  for name in names:
    flag = flags.FLAGS[name]
    row = re.search(r"<tr>\s*<td><code>--" + re.escape(name) +
                    r"</code></td>(.*?)</tr>", text, re.S)
    assert row, name
    default = (flag.default_as_str or "").strip("'")
    if default:
      assert f"<code>{default}</code>" in row.group(1), name
    for value in config_lib.CHOICES.get(name, ()):
      assert f"<code>{value}</code>" in row.group(1), (name, value)


def test_every_result_file_is_referenced_and_every_figure_shown(site):
  pages = doc_pages()
  files = sorted(os.path.basename(p) for p in
                 glob.glob(os.path.join(RESULTS, "*.json")) +
                 glob.glob(os.path.join(RESULTS, "*.png")))
  figures = sorted(n for n in files if n.endswith(".png"))
  assert "digits_noise.json" in files and figures
  assert unreferenced(files, pages) == []
  assert not_shown(figures, pages) == []
  for name in figures:  # and it is in the site, where the pages link it
    assert (site / "results" / name).is_file(), name
  # The checks see a missing reference: drop one file's name from the pages.
  for name in ("dirty_labels.json", figures[0]):
    without = {page: text.replace(f"results/{name}", "results/")
               for page, text in pages.items()}
    assert unreferenced(files, without) == [name]
  without = {page: text.replace(f"](results/{figures[0]})", ")")
             for page, text in pages.items()}
  assert not_shown(figures, without) == [figures[0]]


def test_readme_is_short_and_holds_the_commands_ci_runs():
  readme = _read(os.path.join(ROOT, "README.md"))
  assert len(readme.splitlines()) <= 200
  commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
  setup = [c for c in commands if c.startswith("python3 -m venv .venv")]
  assert len(setup) == 2, commands
  quickstart, tests = setup
  assert shlex.split(quickstart)[-2:] == [
      "advisor_tf.train", "--flagfile=flags/quickstart.cfg"]
  assert os.path.isfile(os.path.join(ROOT, "flags", "quickstart.cfg"))
  # .ci/run runs exactly the README's test command.
  assert tests.endswith("python -m pytest -q tests")
  ci = [line for line in _read(os.path.join(ROOT, ".ci", "run")).splitlines()
        if "pytest" in line and not line.startswith("#")]
  assert [line.replace("pip install -q ", "pip install ")
          for line in ci] == [tests]
  # Every link of the README goes somewhere that exists.
  prose = re.sub(r"```.*?```", "", readme, flags=re.S)
  for target in re.findall(r"\]\(([^)#]+)", prose):
    assert os.path.exists(os.path.join(ROOT, target)), target


def test_strict_build_fails_on_a_broken_link_or_anchor(tmp_path):
  """What CI relies on: a link to a missing page or to a missing heading in
  a page fails `mkdocs build --strict` (here on a copy of the sources)."""
  for name in ("docs", "advisor_tf", "results"):
    shutil.copytree(os.path.join(ROOT, name), tmp_path / name, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.json"))
  for name in ("mkdocs.yml", "CONTRIBUTING.md"):
    shutil.copy(os.path.join(ROOT, name), tmp_path / name)
  os.symlink(os.path.join("advisor_tf", "flags"), tmp_path / "flags")
  with open(tmp_path / "docs" / "faults.md", "a", encoding="utf-8") as f:
    f.write("\n[gone](no-such-page.md) and [moved](results.md#no-such-heading)\n")
  proc = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
       str(tmp_path / "site")], cwd=tmp_path, capture_output=True, text=True,
      env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
  assert proc.returncode != 0
  assert "'no-such-page.md'" in proc.stderr, proc.stderr[-3000:]
  assert "'#no-such-heading'" in proc.stderr, proc.stderr[-3000:]
