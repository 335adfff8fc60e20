"""The review page of a run's suspected labels: one self-contained HTML
file (`advisor-review`, `advisor_tf/review.py`, is its command).

`cards_of_run` gathers a card per ranked training image (thumbnail as a
data URI, given label, suggested label and probability, the next classes,
the score); `write_page` writes the page; `review_run` does both for a
workdir, running the analysis first when its `label_issues.csv` is absent.
The page's keys, filters, storage and corrections.csv are described in
`advisor_tf/review.py`; `advisor_tf.data.corrections` applies the file.
"""

import base64
import csv
import hashlib
import html
import io
import json
import os
import time

from absl import logging
import numpy as np

from advisor_tf import advice as advice_lib
from advisor_tf import analysis
from advisor_tf import run as run_lib
from advisor_tf.data.corrections import ACTIONS, HEADER


# ------------------------------------------------------------------ data
def read_issues(path):
  """The rows of a `label_issues.csv`, in rank order, as dicts."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or not {"index", "score"} <= set(rows[0]):
    raise ValueError(f"--issues={path}: not a label_issues.csv (needs the "
                     "columns rank, index, score).")
  return sorted(rows, key=lambda r: int(r.get("rank") or 0))


def _png_uri(pixels):
  """uint8 `[H, W, 1|3]` pixels as a PNG data URI."""
  from PIL import Image
  pixels = np.asarray(pixels)
  if pixels.ndim == 3 and pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
  return "data:image/png;base64," + base64.b64encode(
      buffer.getvalue()).decode()


def thumbnail_uri(path, size):
  """A file's image, its longest side shrunk to `size` (never enlarged),
  as a data URI (JPEG for photos, PNG for small or paletted images)."""
  from PIL import Image, ImageOps
  with Image.open(path) as image:
    image = ImageOps.exif_transpose(image).convert("RGB")
    image.thumbnail((size, size))
    if image.width * image.height <= 64 * 64:
      return _png_uri(np.asarray(image))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
  return "data:image/jpeg;base64," + base64.b64encode(
      buffer.getvalue()).decode()


def _model_pixels(source, indices):
  """Training images as the model sees them, back to uint8 pixels (for
  in-memory datasets, which have no files)."""
  out = []
  for x in source.images("train", indices):
    x = np.asarray(x, np.float64)
    if source.pixel_std is not None:
      x = x * np.asarray(source.pixel_std) + np.asarray(source.pixel_mean)
    out.append((np.clip(x, 0, 1) * 255).round().astype(np.uint8))
  return out


# From this many training images, building the page says what it does.
_SAY_FROM = 2000


def cards_of_run(run, issues_path, max_cards=2000, thumbnail_size=128,
                 top_classes=4, ranking_name=None):
  """The page's data for `run` (a `run.Run`) ranked by `issues_path`:
  `{"run_key", "workdir", "ranking", "class_names", "cards": [...]}`, one
  card per ranked training image (the first `max_cards`; 0: all)."""
  config, source, split = run.config, run.source, run.split
  rows = read_issues(issues_path)
  started = time.time()
  loud = len(split.train_indices) >= _SAY_FROM  # A stage outside fit().
  if loud:
    logging.warning("Review page: the model's classes for the %d training "
                    "images, then %d cards with thumbnails.",
                    len(split.train_indices),
                    min(len(rows), max_cards) if max_cards else len(rows))
  adv = advice_lib.advise(run.model, source, split,
                          batch_size=config.eval_batch_size)
  probs = advice_lib.probabilities(adv)
  train_indices = np.asarray(split.train_indices)[adv.positions]
  position = {int(index): p for p, index in enumerate(train_indices)}
  if len(rows) != len(position) or any(int(r["index"]) not in position
                                       for r in rows):
    raise ValueError(f"--issues={issues_path} ranks other training examples "
                     f"({len(rows)} rows) than the run's train split "
                     f"({len(position)}); re-run advisor-analyze "
                     f"--workdir={config.workdir}.")
  rows = rows[:max_cards] if max_cards else rows
  names = [str(c) for c in source.class_names]
  paths = (source.paths or {}).get("train")
  root = os.path.abspath(config.data_dir) if config.data_dir else None
  indices = [int(r["index"]) for r in rows]
  pixels = None if paths is not None else _model_pixels(source, indices)
  cards = []
  for k, (row, index) in enumerate(zip(rows, indices)):
    p = position[index]
    order = np.argsort(-probs[p], kind="stable")[:max(top_classes, 1) + 1]
    if paths is not None:
      file = str(paths[index])
      image = thumbnail_uri(file, thumbnail_size)
      shown = (os.path.relpath(os.path.abspath(file), root) if root
               else file).replace(os.sep, "/")
    else:
      image, shown = _png_uri(pixels[k]), f"train[{index}]"
    cards.append({"path": shown, "index": index,
                  "given": int(adv.given[p]), "suggested": int(order[0]),
                  "p": round(float(probs[p, order[0]]), 4),
                  "top": [[int(c), round(float(probs[p, c]), 4)]
                          for c in order[1:top_classes + 1]],
                  "score": float(row["score"]), "image": image})
  if loud:
    logging.warning("Review page: %d cards built in %.0f s.", len(cards),
                    time.time() - started)
  with open(issues_path, "rb") as f:
    issues_digest = hashlib.sha256(f.read()).hexdigest()
  key = hashlib.sha256(f"{os.path.abspath(config.workdir)}\n{run.checkpoint}"
                       f"\n{issues_digest}".encode()).hexdigest()[:16]
  return {"run_key": key, "workdir": config.workdir,
          "data_dir": config.data_dir, "ranking": ranking_name or "",
          "class_names": names, "total": len(position), "cards": cards}


# ------------------------------------------------------------------ page
def write_page(data, output):
  """Writes the review page for `data` (`cards_of_run`'s dict) to
  `output`; returns its path."""
  payload = json.dumps({**data, "header": list(HEADER),
                        "actions": list(ACTIONS)}, separators=(",", ":"))
  payload = payload.replace("</", "<\\/")  # Never ends the script element.
  title = html.escape(f"Review labels · {data.get('workdir') or 'run'}")
  page = (_PAGE.replace("__TITLE__", title)
          .replace("__DATA__", payload))
  folder = os.path.dirname(os.path.abspath(output))
  os.makedirs(folder, exist_ok=True)
  tmp = output + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(page)
  os.replace(tmp, output)
  return output


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#f6f6f4}
header{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #ccc;padding:8px 14px}
header h1{font-size:16px;margin:0 0 6px}
header .row{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin:3px 0}
header label{white-space:nowrap}
#progress{font-weight:600}
#message{color:#a33}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:10px;padding:12px}
.card{background:#fff;border:2px solid #ddd;border-radius:6px;padding:8px;cursor:pointer}
.card.current{border-color:#1565c0;box-shadow:0 0 0 3px #90caf9}
.card img{display:block;width:128px;height:128px;object-fit:contain;margin:0 auto 6px;image-rendering:pixelated;background:#eee}
.card .given b{color:#444}
.card .sugg{color:#1565c0}
.card .top{color:#666;font-size:12px}
.card .score{float:right;color:#666;font-size:12px}
.card .path{color:#888;font-size:11px;word-break:break-all}
.card .decision{margin-top:4px;font-weight:600;min-height:1.4em}
.card.relabel{background:#e8f5e9}.card.keep{background:#f1f8ff}.card.drop{background:#fdecea}.card.unsure{background:#fff8e1}
.relabel .decision{color:#2e7d32}.keep .decision{color:#1565c0}.drop .decision{color:#c62828}.unsure .decision{color:#b26a00}
#classes span{display:inline-block;margin-right:8px;font-size:12px}
#help{display:none;background:#fffde7;border:1px solid #e0d890;padding:6px 10px;margin-top:6px}
#help.shown{display:block}
kbd{border:1px solid #aaa;border-radius:3px;padding:0 4px;background:#fafafa;font-size:12px}
</style></head><body>
<header>
<h1>__TITLE__ <small id="ranking"></small></h1>
<div class="row">
<label>Given <select id="f-given"><option value="">any</option></select></label>
<label>Suggested <select id="f-sugg"><option value="">any</option></select></label>
<label>Score ≥ <input id="f-score" type="number" step="any" style="width:7em"></label>
<span id="shown"></span>
<button id="batch">Accept the suggestions ≥ score in this filter</button>
<button id="undo">Undo (z)</button>
<button id="download">Download corrections.csv</button>
<label>Load corrections <input id="load" type="file" accept=".csv,text/csv"></label>
<button id="help-btn">Keys (?)</button>
</div>
<div class="row"><span id="progress"></span><span id="message"></span></div>
<div class="row" id="classes"></div>
<div id="help"><kbd>→</kbd>/<kbd>j</kbd> next · <kbd>←</kbd>/<kbd>k</kbd> previous ·
<kbd>a</kbd>/<kbd>Enter</kbd> accept the suggestion · <kbd>s</kbd> keep the given label ·
<kbd>d</kbd> drop the image · <kbd>u</kbd> unsure · <kbd>1</kbd>–<kbd>9</kbd>, <kbd>0</kbd> = 10 relabel to that
class (two digits quickly for classes above 9) · <kbd>z</kbd>/<kbd>Backspace</kbd> undo · <kbd>?</kbd> this help.
Deciding moves to the next card. Progress is kept in this browser; download corrections.csv and train with
<code>advisor-train … --corrections=corrections.csv --meta_from=RUN</code>.</div>
</header>
<main id="cards"></main>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const NAMES = DATA.class_names, CARDS = DATA.cards;
const KEY = "advisor-review:" + DATA.run_key;
const byPath = new Map(CARDS.map((c, i) => [c.path, i]));
let state = {decisions: {}, pos: 0, given: "", sugg: "", score: ""};
let history = [];
let filtered = [];
let digitBuffer = "", digitTimer = null;

function load() {
  try { const saved = JSON.parse(localStorage.getItem(KEY) || "null");
        if (saved && saved.decisions) state = Object.assign(state, saved); }
  catch (e) { /* A damaged entry: start afresh. */ }
}
function save() { try { localStorage.setItem(KEY, JSON.stringify(state)); } catch (e) {} }
function pct(p) { return (100 * p).toFixed(1) + " %"; }
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;"}[c])); }

function decisionText(d) {
  if (!d) return "";
  if (d.action === "relabel") return "→ relabel to " + d.new_label;
  return {keep: "✓ keep", drop: "✗ drop", unsure: "? unsure"}[d.action] || d.action;
}

function applyFilter() {
  const g = state.given, s = state.sugg, t = state.score === "" ? -Infinity : Number(state.score);
  filtered = [];
  CARDS.forEach((c, i) => {
    if (g !== "" && c.given !== Number(g)) return;
    if (s !== "" && c.suggested !== Number(s)) return;
    if (!(c.score >= t)) return;
    filtered.push(i);
  });
  if (state.pos >= filtered.length) state.pos = Math.max(filtered.length - 1, 0);
}

function cardHtml(i) {
  const c = CARDS[i], d = state.decisions[c.path];
  const top = c.top.map(([k, p]) => esc(NAMES[k]) + " " + pct(p)).join(" · ");
  return `<div class="card ${d ? d.action : ""}" data-i="${i}" data-path="${esc(c.path)}">
<span class="score" title="suspicion score">${c.score.toPrecision(4)}</span>
<img alt="${esc(c.path)}" src="${c.image}">
<div class="given">given <b>${esc(NAMES[c.given])}</b></div>
<div class="sugg">suggested <b>${esc(NAMES[c.suggested])}</b> ${pct(c.p)}</div>
<div class="top">then ${top || "–"}</div>
<div class="path">#${i + 1} ${esc(c.path)}</div>
<div class="decision">${esc(decisionText(d))}</div></div>`;
}

function render(scroll) {
  applyFilter();
  document.getElementById("cards").innerHTML = filtered.map(cardHtml).join("");
  refresh(scroll);
}

function refresh(scroll) {  // Progress, position and storage; not the cards.
  const counts = {relabel: 0, keep: 0, drop: 0, unsure: 0};
  let n = 0;
  for (const c of CARDS) { const d = state.decisions[c.path]; if (d) { n++; counts[d.action]++; } }
  document.getElementById("progress").textContent =
    `reviewed ${n} / ${CARDS.length} (relabel ${counts.relabel}, keep ${counts.keep}, drop ${counts.drop}, unsure ${counts.unsure})` +
    (DATA.total > CARDS.length ? ` — the ${CARDS.length} most suspected of ${DATA.total} training images` : "");
  document.getElementById("shown").textContent = `${filtered.length} shown`;
  highlight(scroll);
  save();
}

function highlight(scroll) {
  document.querySelectorAll(".card.current").forEach(e => e.classList.remove("current"));
  const el = document.querySelector(`.card[data-i="${filtered[state.pos]}"]`);
  if (el) { el.classList.add("current"); if (scroll !== false) el.scrollIntoView({block: "nearest"}); }
}

function currentCard() { return filtered.length ? CARDS[filtered[state.pos]] : null; }
function move(step) {
  if (!filtered.length) return;
  state.pos = Math.min(Math.max(state.pos + step, 0), filtered.length - 1);
  highlight(); save();
}

function decisionFor(c, action, cls) {
  if (action === "accept") cls = c.suggested;
  if (cls !== undefined) return cls === c.given ? {action: "keep", new_label: ""}
                                                : {action: "relabel", new_label: NAMES[cls]};
  return {action: action, new_label: ""};
}

function decide(changes) {  // changes: [[path, decision or null]]
  history.push(changes.map(([p]) => [p, state.decisions[p] || null]));
  setDecisions(changes);
}

function setDecisions(changes) {  // Redraws only the cards that changed.
  for (const [p, d] of changes) {
    if (d) state.decisions[p] = d; else delete state.decisions[p];
    const el = document.querySelector(`.card[data-i="${byPath.get(p)}"]`);
    if (el) el.outerHTML = cardHtml(byPath.get(p));
  }
}

function decideCurrent(action, cls) {
  const c = currentCard();
  if (!c) return;
  decide([[c.path, decisionFor(c, action, cls)]]);
  if (state.pos < filtered.length - 1) state.pos++;
  refresh();
}

function undo() {
  const last = history.pop();
  if (!last) { message("nothing to undo"); return; }
  setDecisions(last);
  if (last.length === 1) {  // Back to the card that was decided.
    const at = filtered.indexOf(byPath.get(last[0][0]));
    if (at >= 0) state.pos = at;
  }
  refresh();
}

function batchAccept() {
  const t = state.score === "" ? -Infinity : Number(state.score);
  const changes = filtered.map(i => CARDS[i])
      .filter(c => c.score >= t && !state.decisions[c.path])
      .map(c => [c.path, decisionFor(c, "accept")]);
  if (!changes.length) { message("no undecided card in this filter"); return; }
  decide(changes);
  message(`accepted ${changes.length} suggestion(s)`);
  refresh();
}

function message(text) { document.getElementById("message").textContent = text ? " — " + text : ""; }

function csvCell(v) { v = String(v); return /[",\r\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
function correctionsCsv() {
  const lines = [DATA.header.join(",")];
  for (const c of CARDS) {
    const d = state.decisions[c.path];
    if (!d) continue;
    lines.push([c.path, NAMES[c.given], d.action, d.new_label || "", c.score, NAMES[c.suggested]].map(csvCell).join(","));
  }
  return lines.join("\n") + "\n";
}
function download() {
  const blob = new Blob([correctionsCsv()], {type: "text/csv"});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "corrections.csv";
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function parseCsv(text) {
  const rows = []; let row = [], cell = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') { cell += '"'; i++; }
      else if (ch === '"') quoted = false;
      else cell += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ",") { row.push(cell); cell = ""; }
    else if (ch === "\n" || ch === "\r") {
      if (ch === "\r" && text[i + 1] === "\n") i++;
      row.push(cell); rows.push(row); row = []; cell = "";
    } else cell += ch;
  }
  if (cell !== "" || row.length) { row.push(cell); rows.push(row); }
  return rows.filter(r => r.some(c => c.trim() !== ""));
}
function loadCorrections(text, name) {
  const rows = parseCsv(text.replace(/^\ufeff/, ""));
  const head = (rows.shift() || []).map(h => h.trim());
  const col = n => head.indexOf(n);
  if (col("path") < 0 || col("action") < 0) { message(name + ": no path,action header"); return; }
  const changes = []; let unknown = 0, bad = 0;
  for (const r of rows) {
    const path = (r[col("path")] || "").trim(), action = (r[col("action")] || "").trim().toLowerCase();
    const label = col("new_label") >= 0 ? (r[col("new_label")] || "").trim() : "";
    if (!byPath.has(path)) { unknown++; continue; }
    if (!action) continue;
    if (!DATA.actions.includes(action) || (action === "relabel" && !NAMES.includes(label))) { bad++; continue; }
    changes.push([path, {action: action, new_label: action === "relabel" ? label : ""}]);
  }
  if (changes.length) decide(changes);
  refresh();
  message(`${name}: loaded ${changes.length} decision(s)` + (unknown ? `, ${unknown} row(s) not on this page` : "") +
          (bad ? `, ${bad} row(s) with an unknown action or class` : ""));
}

function pickDigit(ch) {
  digitBuffer += ch;
  clearTimeout(digitTimer);
  const apply = () => {
    let n = Number(digitBuffer); digitBuffer = "";
    if (n === 0) n = 10;
    if (n >= 1 && n <= NAMES.length) decideCurrent("relabel", n - 1);
    else message(`no class ${n}`);
  };
  if (NAMES.length <= 10 || Number(digitBuffer) * 10 > NAMES.length || digitBuffer.length >= 2) apply();
  else digitTimer = setTimeout(apply, 700);
}

document.addEventListener("keydown", e => {
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  if (k === "ArrowRight" || k === "j") move(1);
  else if (k === "ArrowLeft" || k === "k") move(-1);
  else if (k === "a" || k === "Enter") decideCurrent("accept");
  else if (k === "s") decideCurrent("keep");
  else if (k === "d") decideCurrent("drop");
  else if (k === "u") decideCurrent("unsure");
  else if (k === "z" || k === "Backspace") undo();
  else if (k === "?") document.getElementById("help").classList.toggle("shown");
  else if (/^[0-9]$/.test(k)) pickDigit(k);
  else return;
  e.preventDefault();
});

function setupFilters() {
  for (const id of ["f-given", "f-sugg"]) {
    const sel = document.getElementById(id);
    NAMES.forEach((n, i) => { const o = document.createElement("option"); o.value = i; o.textContent = `${i + 1}. ${n}`; sel.appendChild(o); });
  }
  const bind = (id, field) => {
    const el = document.getElementById(id);
    el.value = state[field];
    el.addEventListener("change", () => { state[field] = el.value; state.pos = 0; render(); el.blur(); });
  };
  bind("f-given", "given"); bind("f-sugg", "sugg"); bind("f-score", "score");
  document.getElementById("classes").innerHTML = "Classes: " +
      NAMES.map((n, i) => `<span><kbd>${i + 1 <= 9 ? i + 1 : (i + 1 === 10 ? 0 : i + 1)}</kbd> ${esc(n)}</span>`).join("");
  document.getElementById("ranking").textContent = DATA.ranking ? `(ranking: ${DATA.ranking})` : "";
  document.getElementById("batch").onclick = batchAccept;
  document.getElementById("undo").onclick = undo;
  document.getElementById("download").onclick = download;
  document.getElementById("help-btn").onclick = () => document.getElementById("help").classList.toggle("shown");
  document.getElementById("load").addEventListener("change", e => {
    const file = e.target.files[0]; if (!file) return;
    file.text().then(t => loadCorrections(t, file.name)); e.target.value = "";
  });
  document.getElementById("cards").addEventListener("click", e => {
    const el = e.target.closest(".card"); if (!el) return;
    const at = filtered.indexOf(Number(el.dataset.i)); if (at >= 0) { state.pos = at; highlight(false); save(); }
  });
}

load();
setupFilters();
render();
</script></body></html>
"""


def review_run(workdir, output=None, data_dir=None, issues=None, ranking=None,
               max_cards=2000, thumbnail_size=128, top_classes=4):
  """Writes the review page of the run in `workdir`; returns
  `(path, data)`. Runs the analysis (`analysis.analyze_run`, ranking
  `ranking`) first when `issues` (default WORKDIR/analysis/label_issues.csv)
  does not exist."""
  output = output or os.path.join(workdir, "review.html")
  run = run_lib.load(workdir, data_dir)
  analysis_dir = os.path.join(workdir, "analysis")
  issues_path = issues or os.path.join(analysis_dir, "label_issues.csv")
  summary_path = os.path.join(os.path.dirname(issues_path), "summary.json")
  if not os.path.exists(issues_path):
    if issues:
      raise ValueError(f"--issues={issues}: no such file.")
    print(f"No {issues_path}: running the analysis first "
          f"(advisor-analyze --workdir={workdir}).")
    analysis.analyze_run(run, analysis_dir, ranking=ranking)
  name = ""
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      name = json.load(f).get("label_issue_ranking", "")
  data = cards_of_run(run, issues_path, max_cards, thumbnail_size,
                      top_classes, ranking_name=name)
  return write_page(data, output), data
