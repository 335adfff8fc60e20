"""The documentation: `mkdocs build --strict` passes offline, the flag
reference is generated from the code, every result file is referenced from a
page (every figure shown), and the README stays short with CI's commands."""

import glob
import html
import html.parser as html_parser
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.parse

import pytest
from absl import flags

from advisor_tf import cli_flags
from advisor_tf import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
RESULTS = os.path.join(ROOT, "results")
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


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
    built = site / f"{name}.html"  # Files, not folders: see below.
    assert built.is_file(), page


def test_flag_reference_is_generated_from_the_flag_definitions(site):
  text = html.unescape(_read(site / "training-and-flags.html"))
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


class _Links(html_parser.HTMLParser):
  """The `href` and `src` values of a page."""

  def __init__(self):
    super().__init__()
    self.links = []

  def handle_starttag(self, tag, attrs):
    self.links += [value for name, value in attrs
                   if name in ("href", "src") and value]


def broken_links(site):
  """`(page, link)` of every link of the built site to a file of the site
  that is not a file there (missing, or a folder, which a browser shows as
  a listing from file://). 404.html is left out: a server shows it at any
  path, so its links start at the site's root."""
  broken = []
  for page in sorted(glob.glob(os.path.join(site, "**", "*.html"),
                               recursive=True)):
    if os.path.relpath(page, site) == "404.html":
      continue
    parser = _Links()
    parser.feed(_read(page))
    for link in parser.links:
      url = urllib.parse.urlsplit(link)
      if url.scheme or url.netloc or not url.path:
        continue  # Another site, a data: URI, or an anchor of this page.
      target = os.path.join(os.path.dirname(page),
                            urllib.parse.unquote(url.path))
      if url.path.startswith("/") or not os.path.isfile(target):
        broken.append((os.path.relpath(page, site), link))
  return broken


def test_the_built_site_browses_from_files(site):
  """Every page's links (navigation, pages, assets, figures) name files,
  so the site works opened as file:// as well as served."""
  assert (site / "search" / "search_index.js").is_file()  # Offline search,
  index = _read(site / "index.html")  # its worker shim from the site itself.
  assert '<script src="assets/iframe-worker/shim.js"' in index
  assert not re.search(r'<script[^>]+src="(https?:)?//', index)
  pages = glob.glob(os.path.join(site, "**", "*.html"), recursive=True)
  assert len(pages) >= len(doc_pages())
  assert broken_links(site) == []
  # The check sees a link to a folder, as use_directory_urls makes them.
  page = site / "faults.html"
  original = _read(page)
  try:
    with open(page, "w", encoding="utf-8") as f:
      f.write(original.replace('href="results.html"', 'href="results/"'))
    assert ("faults.html", "results/") in broken_links(site)
  finally:
    with open(page, "w", encoding="utf-8") as f:
      f.write(original)


def _why_no_browser():
  try:
    import selenium  # noqa: F401
  except ImportError:
    return "selenium is not installed (pip install -r requirements-dev.txt)"
  if not any(shutil.which(n) for n in CHROMIUM):
    return "no chromium on PATH (apt-get install chromium chromium-driver)"
  if not shutil.which("chromedriver"):
    return "no chromedriver on PATH (apt-get install chromium-driver)"
  return None


def test_the_built_site_opens_and_navigates_in_a_browser(site, tmp_path):
  reason = _why_no_browser()
  if reason:
    pytest.skip(reason)
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.common.exceptions import StaleElementReferenceException
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  options = webdriver.ChromeOptions()
  options.binary_location = next(shutil.which(n) for n in CHROMIUM
                                 if shutil.which(n))
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
              "--disable-dev-shm-usage", "--no-first-run",
              f"--user-data-dir={tmp_path / 'profile'}"):
    options.add_argument(arg)
  driver = webdriver.Chrome(options=options,
                            service=Service(shutil.which("chromedriver")))
  try:
    driver.get((site / "index.html").as_uri())
    assert "advisor_tf" in driver.title
    link = driver.find_element(By.XPATH,
                               "//nav//a[normalize-space()='Getting started']")
    driver.execute_script("arguments[0].click();", link)
    WebDriverWait(driver, 15).until(
        lambda d: d.current_url.endswith("/getting-started.html"))
    assert driver.title.startswith("Getting started")
    heading = driver.find_element(By.CSS_SELECTOR, "article h1").text
    assert heading and "Index of" not in driver.page_source
    # Search runs from file:// too (no server for its web worker).
    ActionChains(driver).send_keys("/").send_keys("flagfile").perform()
    # The results re-render as the query is typed: read the links in one
    # go, again if a re-render replaced them meanwhile.
    hrefs = WebDriverWait(
        driver, 15, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda d: [a.get_attribute("href") for a in d.find_elements(
        By.CSS_SELECTOR, ".md-search-result__item a")])
    assert hrefs[0].startswith("file://") and ".html" in hrefs[0]
  finally:
    driver.quit()


def test_readme_is_short_and_holds_the_commands_ci_runs():
  readme = _read(os.path.join(ROOT, "README.md"))
  assert len(readme.splitlines()) <= 120  # The first-hour issue's bound.
  commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
  setup = [c for c in commands if c.startswith("python3 -m venv .venv")]
  assert len(setup) == 2, commands
  quickstart, tests = setup
  assert shlex.split(quickstart)[-2:] == [
      "advisor_tf.train", "--flagfile=flags/quickstart.cfg"]
  assert os.path.isfile(os.path.join(ROOT, "flags", "quickstart.cfg"))
  # .ci/run runs exactly the README's test command.
  assert tests.endswith("python -m pytest -q -n 2 --dist loadfile tests")
  ci = [line for line in _read(os.path.join(ROOT, ".ci", "run")).splitlines()
        if "pytest" in line and not line.startswith("#")]
  assert [line.replace("pip install -q ", "pip install ")
          for line in ci] == [tests]
  # Every link of the README goes somewhere that exists.
  prose = re.sub(r"```.*?```", "", readme, flags=re.S)
  for target in re.findall(r"\]\(([^)#]+)", prose):
    assert os.path.exists(os.path.join(ROOT, target)), target


@pytest.mark.slow  # A second site build.
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
