"""The notebooks in colab/ run where they are opened.

Each offline notebook is executed twice, in a clean temporary copy of the
repository (advisor_tf/ with its bundled flagfiles, colab/, results/,
pyproject.toml — no `flags` link, no runs/): once with the notebook's own
folder as the working directory (what Jupyter and VS Code do) and once with
the repository root. The kernel imports the copy's advisor_tf (PYTHONPATH),
and the notebooks' default run folders must land in the copy's runs/,
whichever the working directory. Environment variables keep the training
small. The install cell is also run where advisor_tf cannot be imported: it
finds the clone around the notebook, installs the wheel ADVISOR_TF_SOURCE
names, or, with none set, stops with one sentence naming ADVISOR_TF_SOURCE.
"""

import json
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("quickstart.ipynb", "analysis.ipynb", "reproduce_cifar.ipynb")
WHERE = ("colab", "root")  # The working directory: the notebook's or the root.

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def _copy_repository(tmp_path):
  """A clean copy of what the notebooks need; returns its root."""
  root = tmp_path / "repo"
  skip = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "runs")
  for folder in ("advisor_tf", "colab", "results"):
    if os.path.isdir(os.path.join(ROOT, folder)):
      shutil.copytree(os.path.join(ROOT, folder), root / folder, ignore=skip)
  shutil.copy(os.path.join(ROOT, "pyproject.toml"), root)
  return root


def _kernel_env(root, env):
  """The test's environment, the copy first on PYTHONPATH, and `env`."""
  kernel_env = {k: v for k, v in os.environ.items()
                if not k.startswith("ADVISOR_TF_")}
  kernel_env["PYTHONPATH"] = os.pathsep.join(
      [str(root)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  kernel_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  kernel_env.update(env)
  return kernel_env


def _execute(book, cwd, env, timeout=900, allow_errors=False):
  client = nbclient.NotebookClient(
      book, timeout=timeout, kernel_name="python3",
      allow_errors=allow_errors, resources={"metadata": {"path": str(cwd)}})
  client.execute(env=env)
  return book


def _run_notebook(root, notebook, where, env):
  """Executes the copy's `notebook` from colab/ or the root; the book."""
  book = nbformat.read(str(root / "colab" / notebook), as_version=4)
  cwd = root / "colab" if where == "colab" else root
  book = _execute(book, cwd, _kernel_env(root, env))
  # The copy's advisor_tf was used, and nothing ran outside the copy.
  first = _text(book.cells[1:2])
  assert f"advisor_tf from {root / 'advisor_tf'}" in first, first
  assert f"runs under {root / 'runs'}" in first, first
  return book


def _text(cells):
  return "".join(o.get("text", "") for cell in cells
                 for o in cell.get("outputs", []))


def _figures(summary_path):
  with open(summary_path) as f:
    figures = json.load(f)["figures"]
  assert figures and all(os.path.getsize(v["path"]) > 5000
                         for v in figures.values())
  return set(figures)


def _images_shown(book):
  return sum(1 for cell in book.cells if cell.cell_type == "code"
             for o in cell.get("outputs", [])
             if "image/png" in o.get("data", {}))


@pytest.mark.slow
@pytest.mark.parametrize("where", WHERE)
def test_quickstart_notebook(tmp_path, where):
  root = _copy_repository(tmp_path)
  book = _run_notebook(root, "quickstart.ipynb", where,
                       {"ADVISOR_TF_NB_EPOCHS": "2"})
  workdir = root / "runs" / "colab_quickstart"  # The default, from ROOT.
  run = workdir / "mfrw_mes"
  assert {"mask_pca", "confusion"} <= _figures(
      run / "analysis" / "summary.json")
  assert (workdir / "ce" / "saved_model").is_dir()
  text = _text(book.cells)
  assert "mfrw_mes  test top-1" in text and "ce        test top-1" in text
  assert "reloaded SavedModel agrees" in text
  assert _images_shown(book) >= 2
  assert not (root / "colab" / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("where", WHERE)
def test_analysis_notebook_trains_the_quickstart_flagfile(tmp_path, where):
  # No run yet at the default WORKDIR (ROOT/runs/quickstart, where the CLI's
  # `--flagfile=flags/quickstart.cfg` writes): the notebook trains it from
  # the bundled flagfile, whatever the working directory.
  root = _copy_repository(tmp_path)
  book = _run_notebook(root, "analysis.ipynb", where,
                       {"ADVISOR_TF_NB_EPOCHS": "2"})
  run = root / "runs" / "quickstart"
  with open(run / "config.json") as f:
    config = json.load(f)
  assert (config["dataset"], config["noise"], config["noise_rate"],
          config["epochs"]) == ("digits", "flip", 0.4, 2)
  assert _images_shown(book) >= 5  # PCA, t-SNE, heat map, s_k, prec./recall.
  assert {"mask_pca", "mask_tsne", "suppression_vs_class_size",
          "per_class_accuracy", "confusion",
          "label_issue_precision_recall"} <= _figures(
              run / "analysis" / "summary.json")


@pytest.mark.slow
@pytest.mark.parametrize("where", WHERE)
def test_cifar_notebook_runs_on_tfds_mock_data(tmp_path, where):
  overrides = {"train_steps": 2, "epochs": 1, "batch_size": 8,
               "meta_batch_size": 8, "lr_decay_epochs": [1],
               "lr_decay_steps": [1], "embedding_size": 8, "export": False,
               "verbose": 0, "deterministic": False,
               "telemetry_examples": 64, "eval_batch_size": 200}
  root = _copy_repository(tmp_path)
  book = _run_notebook(root, "reproduce_cifar.ipynb", where, {
      "ADVISOR_TF_NB_MOCK": "1",
      "ADVISOR_TF_NB_DATA_DIR": str(tmp_path / "tfds"),
      "ADVISOR_TF_NB_OVERRIDES": json.dumps(overrides)})
  text = _text(book.cells)
  assert "mfrw_mes  CIFAR-10 Flip p=0.4: test top-1" in text
  assert "ce        CIFAR-10 Flip p=0.4: test top-1" in text
  assert {"mask_pca", "confusion"} <= _figures(
      root / "runs" / "colab_cifar" / "mfrw_mes_p0.4" / "analysis"
      / "summary.json")


# ------------------------------------------------------------ install cell
# Runs first in the kernel: makes advisor_tf unimportable from where the test
# suite finds it (the repository on sys.path or the working directory), as in
# a fresh Colab runtime.
_HIDE_ADVISOR_TF = f"""
import importlib, importlib.util, os, sys
_hidden = {{os.path.realpath(p) for p in {[ROOT, os.getcwd()]!r}}}
sys.path[:] = [p for p in sys.path
               if os.path.realpath(p or os.getcwd()) not in _hidden]
sys.meta_path[:] = [f for f in sys.meta_path
                    if "advisor_tf" not in repr(f)]  # Editable installs.
importlib.invalidate_caches()
"""


def _install_cell(notebook):
  book = nbformat.read(os.path.join(ROOT, "colab", notebook), as_version=4)
  cell = book.cells[1]
  assert cell.cell_type == "code" and "ADVISOR_TF_SOURCE = \"\"" in (
      cell.source)
  return cell


def test_the_notebooks_share_one_install_cell():
  cells = {_install_cell(name).source for name in NOTEBOOKS}
  assert len(cells) == 1
  assert "advisor-tf/advisor_tf" not in cells.pop()  # No invented URL.


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_install_cell_without_advisor_tf_or_a_source_stops_with_a_sentence(
    tmp_path, notebook):
  elsewhere = tmp_path / "content"  # No clone here, as in Colab's /content.
  elsewhere.mkdir()
  book = nbformat.v4.new_notebook(cells=[
      nbformat.v4.new_code_cell(_HIDE_ADVISOR_TF), _install_cell(notebook)])
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "ADVISOR_TF_SOURCE")}
  book.cells[0].source += (
      "\nassert importlib.util.find_spec('advisor_tf') is None, sys.path")
  _execute(book, elsewhere, env, timeout=120, allow_errors=True)
  assert not book.cells[0].outputs, book.cells[0].outputs
  errors = [o for o in book.cells[1].outputs if o.output_type == "error"]
  assert len(errors) == 1, book.cells[1].outputs
  error = errors[0]
  assert error.ename == "AdvisorTfNotInstalled", error
  assert error.evalue.startswith("advisor_tf is not installed: set "
                                 "ADVISOR_TF_SOURCE at the top of this cell")
  assert "pip wheel . --no-deps -w dist" in error.evalue
  assert "\n" not in error.evalue and error.evalue.endswith(".")
  assert error.traceback == [f"AdvisorTfNotInstalled: {error.evalue}"]
  assert not list(elsewhere.iterdir())  # Nothing cloned, nothing written.


@pytest.mark.slow
@pytest.mark.parametrize("where", WHERE)
def test_install_cell_finds_the_clone_around_the_notebook(tmp_path, where):
  # Jupyter in a clone's colab/ without `pip install -e .`: the clone is used.
  root = _copy_repository(tmp_path)
  book = nbformat.v4.new_notebook(cells=[
      nbformat.v4.new_code_cell(_HIDE_ADVISOR_TF),
      _install_cell("analysis.ipynb"),
      nbformat.v4.new_code_cell(
          "print(advisor_tf.flagfile('quickstart'))")])
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "ADVISOR_TF_SOURCE")}
  _execute(book, root / "colab" if where == "colab" else root, env,
           timeout=120)
  assert _text(book.cells[1:2]).startswith(
      f"advisor_tf from {root / 'advisor_tf'} | runs under {root / 'runs'}")
  assert _text(book.cells[2:]).strip() == str(
      root / "advisor_tf" / "flags" / "quickstart.cfg")


@pytest.mark.slow
def test_install_cell_installs_a_wheel_set_in_advisor_tf_source(tmp_path):
  # A fresh runtime without advisor_tf (a venv that sees this environment's
  # packages but not the repository), the wheel a user builds and uploads
  # (`pip wheel . --no-deps -w dist`) set in ADVISOR_TF_SOURCE: the cell
  # installs it, and the installed package has its flagfiles.
  import site
  import subprocess
  import venv
  build = tmp_path / "build"
  build.mkdir()
  for name in ("pyproject.toml", "requirements.txt", "README.md"):
    shutil.copy(os.path.join(ROOT, name), build)
  shutil.copytree(os.path.join(ROOT, "advisor_tf"), build / "advisor_tf",
                  ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps",
                  "--no-build-isolation", "-q", "-w", "dist"], cwd=build,
                 check=True)
  wheel, = (build / "dist").glob("advisor_tf-*.whl")
  runtime = tmp_path / "runtime"
  venv.create(runtime, with_pip=False)
  python = runtime / "bin" / "python"
  purelib = subprocess.run(
      [python, "-c", "import sysconfig; print(sysconfig.get_paths()"
       "['purelib'])"], capture_output=True, text=True,
      check=True).stdout.strip()
  with open(os.path.join(purelib, "shared.pth"), "w") as f:
    f.write("\n".join(site.getsitepackages()) + "\n")
  content = tmp_path / "content"
  content.mkdir()
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
  done = subprocess.run(
      [python, "-c", _install_cell("quickstart.ipynb").source], cwd=content,
      capture_output=True, text=True, timeout=300,
      env=dict(env, PIP_NO_INDEX="1", ADVISOR_TF_SOURCE=str(wheel)))
  assert done.returncode == 0, done.stderr
  assert (f"advisor_tf from {purelib}/advisor_tf | runs under "
          f"{content / 'runs'}") in done.stdout, done.stdout
  flagfile = subprocess.run(
      [python, "-c", "import advisor_tf; print(advisor_tf.flagfile("
       "'quickstart'))"], cwd=content, capture_output=True, text=True,
      env=env, check=True).stdout.strip()
  assert flagfile == f"{purelib}/advisor_tf/flags/quickstart.cfg"
  with open(flagfile) as f:
    assert "--noise=flip" in f.read()
  # The installed console scripts behave like their `python -m` forms from
  # any directory (here: one without a clone or flags/ folder).
  for command, group in (("advisor-train", "optimisation:"),
                         ("advisor-evaluate", "evaluation:"),
                         ("advisor-analyze", "report:"),
                         ("advisor-predict", "output:"),
                         ("advisor-bench", "workload:")):
    shown = subprocess.run([runtime / "bin" / command, "--help"], cwd=content,
                           capture_output=True, text=True, env=env,
                           timeout=300)
    assert shown.returncode == 0 and f"\n{group}\n" in shown.stdout, (
        command, shown.stderr[-2000:])
  resolved = subprocess.run(
      [runtime / "bin" / "advisor-train", f"--flagfile={flagfile}",
       "--dry_run"], cwd=content, capture_output=True, text=True, env=env,
      timeout=300)
  assert resolved.returncode == 0, resolved.stderr[-2000:]
  assert json.loads(resolved.stdout)["noise"] == "flip"
