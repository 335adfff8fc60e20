"""The review page (`advisor-review`) in a real browser: headless Chromium
driven by Selenium from file://. Keys change the cards, the download holds
the expected rows (and `--corrections` reads it), a reload keeps progress,
a corrections file loads back. Skipped, with the reason, where Selenium,
Chromium or ChromeDriver is absent (`.ci/run` installs them)."""

import csv
import os
import shutil
import time

import numpy as np
import pytest

from advisor_tf import review_page as review
from advisor_tf.data import corrections
from advisor_tf.data import sources

from test_own_data import digits_folder

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser",
                                           "google-chrome")
                 if shutil.which(n)), None)
CHROMEDRIVER = shutil.which("chromedriver")


def _why_skip():
  try:
    import selenium  # noqa: F401
  except ImportError:
    return "selenium is not installed (pip install -r requirements-dev.txt)"
  if not CHROMIUM:
    return "no chromium on PATH (apt-get install chromium chromium-driver)"
  if not CHROMEDRIVER:
    return "no chromedriver on PATH (apt-get install chromium-driver)"
  return None


NAMES = ["digit_0", "digit_1", "digit_2"]


def _page(tmp_path):
  """A page over six training images of a digits folder, ranked by a
  made-up score, with made-up suggestions."""
  folder = digits_folder(tmp_path / "data", per_split=(4, 3, 2))
  source = sources.image_folder(folder, image_size=8)
  cards = []
  suggested = [1, 2, 0, 0, 1, 2, 0, 1, 2, 2, 1, 0]
  for i in range(6):
    path = os.path.relpath(source.paths["train"][i], folder)
    given = int(source.labels["train"][i])
    s = suggested[i]
    cards.append({"path": path.replace(os.sep, "/"), "index": i,
                  "given": given, "suggested": s, "p": 0.9 - 0.1 * i,
                  "top": [[(s + 1) % 3, 0.05], [(s + 2) % 3, 0.01]],
                  "score": round(1.0 - 0.1 * i, 3),
                  "image": review.thumbnail_uri(source.paths["train"][i],
                                                64)})
  data = {"run_key": f"test{time.time_ns()}", "workdir": "runs/test",
          "data_dir": folder, "ranking": "advisor", "class_names": NAMES,
          "total": len(source.labels["train"]), "cards": cards}
  return review.write_page(data, str(tmp_path / "review.html")), data, source


def _chromium(tmp_path, size="1280,900"):
  """Headless Chromium with a fresh profile under `tmp_path`, downloading
  into `tmp_path/downloads` (`driver.downloads`)."""
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  downloads = tmp_path / "downloads"
  downloads.mkdir(exist_ok=True)
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
              "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              "--hide-scrollbars", f"--window-size={size}",
              f"--user-data-dir={tmp_path / 'profile'}"):
    options.add_argument(arg)
  options.add_experimental_option("prefs", {
      "download.default_directory": str(downloads),
      "download.prompt_for_download": False})
  driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
  driver.execute_cdp_cmd("Browser.setDownloadBehavior", {
      "behavior": "allow", "downloadPath": str(downloads)})
  driver.downloads = downloads
  return driver


@pytest.fixture
def browser(tmp_path):
  reason = _why_skip()
  if reason:
    pytest.skip(reason)
  driver = _chromium(tmp_path)
  try:
    yield driver
  finally:
    driver.quit()


def _key(driver, *keys):
  from selenium.webdriver.common.action_chains import ActionChains
  for k in keys:
    ActionChains(driver).send_keys(k).perform()


def _cards(driver):
  """`[(path, decision text, current?)]` of the shown cards."""
  return driver.execute_script(
      "return [...document.querySelectorAll('.card')].map(e => "
      "[e.dataset.path, e.querySelector('.decision').textContent, "
      "e.classList.contains('current')]);")


def _download(driver):
  for f in driver.downloads.iterdir():
    f.unlink()
  driver.find_element("id", "download").click()
  deadline = time.time() + 10
  target = driver.downloads / "corrections.csv"
  while time.time() < deadline:
    if target.exists() and not any(
        f.suffix == ".crdownload" for f in driver.downloads.iterdir()):
      with open(target, newline="") as f:
        return list(csv.reader(f))
    time.sleep(0.1)
  raise AssertionError(f"no corrections.csv in {driver.downloads}: "
                       f"{list(driver.downloads.iterdir())}")


def test_review_page_keys_download_reload_and_load(browser, tmp_path):
  from selenium.webdriver.common.keys import Keys
  page, data, source = _page(tmp_path)
  cards = data["cards"]
  paths = [c["path"] for c in cards]
  browser.get("file://" + page)
  shown = _cards(browser)
  assert [p for p, _, _ in shown] == paths  # Ranked by score.
  assert shown[0][2] and not any(c for _, _, c in shown[1:])
  assert f"given {NAMES[cards[0]['given']]}" in browser.find_element(
      "css selector", ".card").text

  # a: accept (card 0: suggestion ≠ given → relabel); d: drop card 1;
  # → skips card 2; 3 relabels card 3 to digit_2, z undoes it; u: unsure;
  # s: keep card 4.
  _key(browser, "a", "d", Keys.ARROW_RIGHT, "3")
  assert _cards(browser)[3][1] == "→ relabel to digit_2"
  _key(browser, "z")
  shown = _cards(browser)
  assert shown[3][1] == "" and shown[3][2]  # Undone, and current again.
  _key(browser, "u", "s")
  shown = _cards(browser)
  expected = {
      paths[0]: ("relabel", NAMES[cards[0]["suggested"]]),
      paths[1]: ("drop", ""),
      paths[3]: ("unsure", ""),
      paths[4]: ("keep", "")}
  assert cards[0]["suggested"] != cards[0]["given"]
  assert shown[0][1] == f"→ relabel to {NAMES[cards[0]['suggested']]}"
  assert [d for _, d, _ in shown] == [
      shown[0][1], "✗ drop", "", "? unsure", "✓ keep", ""]
  assert shown[5][2]  # Deciding moved on.
  assert "reviewed 4 / 6" in browser.find_element("id", "progress").text

  rows = _download(browser)
  assert rows[0] == list(corrections.HEADER)
  got = {r[0]: (r[2], r[3]) for r in rows[1:]}
  assert got == expected
  for r in rows[1:]:
    card = cards[paths.index(r[0])]
    assert r[1] == NAMES[card["given"]] and float(r[4]) == card["score"]
    assert r[5] == NAMES[card["suggested"]]
  # What advisor-train --corrections reads from it.
  downloaded = browser.downloads / "corrections.csv"
  relabel, drop = corrections.read(str(downloaded), source,
                                   data["data_dir"])
  assert relabel == {cards[0]["index"]: cards[0]["suggested"]}
  assert drop.tolist() == [cards[1]["index"]]

  # A reload keeps the decisions and the position.
  browser.refresh()
  again = _cards(browser)
  assert [d for _, d, _ in again] == [d for _, d, _ in shown]
  assert again[5][2]

  # Batch: score ≥ 0.75 in the filter decides the undecided card 2 only.
  score = browser.find_element("id", "f-score")
  score.clear()
  score.send_keys("0.75")
  browser.execute_script("arguments[0].dispatchEvent(new Event('change'))",
                         score)
  assert len(_cards(browser)) == 3
  browser.find_element("id", "batch").click()
  card2 = cards[2]
  want = ("✓ keep" if card2["suggested"] == card2["given"]
          else f"→ relabel to {NAMES[card2['suggested']]}")
  assert _cards(browser)[2][1] == want
  _key(browser, "z")  # One undo takes the whole batch back.
  assert _cards(browser)[2][1] == ""

  # Load a corrections file back: card 5 dropped, card 0 kept.
  loaded = tmp_path / "back.csv"
  with open(loaded, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(corrections.HEADER)
    writer.writerow([paths[5], "", "drop", "", "", ""])
    writer.writerow([paths[0], "", "keep", "", "", ""])
    writer.writerow(["train/elsewhere.png", "", "drop", "", "", ""])
  score.clear()
  browser.execute_script("arguments[0].dispatchEvent(new Event('change'))",
                         score)
  browser.find_element("id", "load").send_keys(str(loaded))
  deadline = time.time() + 5
  while "loaded" not in browser.find_element("id", "message").text:
    assert time.time() < deadline, "the corrections file did not load"
    time.sleep(0.1)
  assert "1 row(s) not on this page" in browser.find_element(
      "id", "message").text
  decisions = [d for _, d, _ in _cards(browser)]
  assert decisions[0] == "✓ keep" and decisions[5] == "✗ drop"


def test_page_is_self_contained(tmp_path):
  """One file, nothing fetched: no http(s) URL, script or stylesheet
  source; every image a data URI."""
  page, data, _ = _page(tmp_path)
  text = open(page, encoding="utf-8").read()
  assert "http://" not in text and "https://" not in text
  assert "<script src" not in text and "<link" not in text
  assert text.count("data:image/png;base64,") == len(data["cards"])
  assert data["run_key"] in text


def test_issues_file_must_rank_the_runs_examples(tmp_path):
  path = tmp_path / "label_issues.csv"
  path.write_text("rank,index,path\n1,0,a.png\n")
  with pytest.raises(ValueError, match="not a label_issues.csv"):
    review.read_issues(str(path))
  path.write_text("rank,index,path,score\n2,5,b,0.1\n1,7,a,0.9\n")
  assert [r["index"] for r in review.read_issues(str(path))] == ["7", "5"]
  assert np.asarray(review._png_uri(np.zeros((4, 4, 1), np.uint8)) != "")


@pytest.mark.slow  # Two command starts: about 15 s on 2 CPU cores.
def test_command_help_and_bad_workdir(tmp_path):
  import subprocess
  import sys
  from test_own_data import ENV, ROOT
  proc = subprocess.run([sys.executable, "-m", "advisor_tf.review", "--help"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=ENV)
  assert proc.returncode == 0, proc.stderr
  assert "\nrun:\n" in proc.stdout and "\npage:\n" in proc.stdout
  assert "  --max_cards: " in proc.stdout
  proc = subprocess.run([sys.executable, "-m", "advisor_tf.review",
                         f"--workdir={tmp_path}/absent"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, env=ENV)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"advisor-review: error: --workdir={tmp_path}/absent: no config.json, "
      "not a run."]


@pytest.mark.slow
def test_a_run_to_its_page_to_a_corrected_run(tmp_path, monkeypatch):
  """A tiny image_folder run → advisor-review's page data (ranked, paths
  relative to --data_dir) → its corrections trained with --corrections:
  the run records the file and what changed."""
  import dataclasses
  import json

  from advisor_tf import config as config_lib
  from advisor_tf import run as run_lib
  from advisor_tf import trainer
  folder = digits_folder(tmp_path / "data")
  config = config_lib.TrainConfig(
      dataset="image_folder", data_dir=folder, image_size=8,
      meta_per_class=0, epochs=1, lr_decay_epochs=(1,), batch_size=8,
      meta_batch_size=6, export=False, verbose=0, telemetry_examples=0,
      workdir=str(tmp_path / "run")).validate()
  trainer.train(config)
  page, data = review.review_run(config.workdir, ranking="advisor",
                                 thumbnail_size=16)
  cards = data["cards"]
  assert page == os.path.join(config.workdir, "review.html")
  assert len(cards) == data["total"] == 36
  assert [c["score"] for c in cards] == sorted(
      [c["score"] for c in cards], reverse=True)
  assert all(os.path.isfile(os.path.join(folder, c["path"])) for c in cards)
  assert all(len(c["top"]) == 2 and 0 <= c["p"] <= 1 for c in cards)
  assert data["ranking"] == "advisor"
  # Read again from the label_issues.csv the analysis left: same page data;
  # from a large set (here: from 1 image), it says what it builds.
  from absl import logging as absl_logging
  said = []
  monkeypatch.setattr(review, "_SAY_FROM", 1)
  monkeypatch.setattr(absl_logging, "warning",
                      lambda msg, *a: said.append(msg % a))
  again = review.review_run(config.workdir, output=str(tmp_path / "p.html"),
                            thumbnail_size=16)[1]
  assert again["cards"] == cards and again["run_key"] == data["run_key"]
  said = [line for line in said if line.startswith("Review page")]
  assert said[0].startswith("Review page: the model's classes for the 36 "
                            "training images, then 36 cards")
  assert said[1].startswith("Review page: 36 cards built in ")

  fixes = tmp_path / "corrections.csv"
  with open(fixes, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(corrections.HEADER)
    first, second = cards[0], cards[1]
    other = NAMES[(first["given"] + 1) % 3]
    writer.writerow([first["path"], NAMES[first["given"]], "relabel", other,
                     first["score"], NAMES[first["suggested"]]])
    writer.writerow([second["path"], NAMES[second["given"]], "drop", "",
                     second["score"], NAMES[second["suggested"]]])
  fixed = dataclasses.replace(config, corrections=str(fixes),
                              workdir=str(tmp_path / "fixed")).validate()
  metrics = trainer.train(fixed)
  assert metrics["train/examples"] == 35
  changes = metrics["train/corrections"]
  assert changes["relabelled"] == 1 and changes["dropped"] == 1
  assert changes["per_class"][other]["relabelled_in"] == 1
  with open(os.path.join(fixed.workdir, "data.json")) as f:
    assert json.load(f)["corrections"]["digest"] == corrections.digest(fixes)
  with open(os.path.join(fixed.workdir, "config.json")) as f:
    assert json.load(f)["corrections"] == str(fixes)
  # The corrected run reloads (analysis, evaluation) with its corrections.
  assert len(run_lib.load(fixed.workdir).split.train_indices) == 35


def screenshot(page, out, keys="", size="1400,900"):
  """A PNG of the page after `keys` (the README's results/review_page.png:
  `python tests/test_review.py PAGE OUT [KEYS]`)."""
  import pathlib
  import tempfile
  with tempfile.TemporaryDirectory() as tmp:
    driver = _chromium(pathlib.Path(tmp), size)
    try:
      driver.get("file://" + os.path.abspath(page))
      _key(driver, *keys)
      driver.save_screenshot(out)
    finally:
      driver.quit()


if __name__ == "__main__":
  import sys
  screenshot(*sys.argv[1:])
