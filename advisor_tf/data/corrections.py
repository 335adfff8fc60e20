"""A reviewer's label corrections (`advisor-train --corrections=FILE`),
applied to the training split of a file dataset without touching its files.

The file is what `advisor-review`'s page downloads, one row per training
image it listed:

  path,given_label,action,new_label,score,suggested_label
  train/cat/001.jpg,cat,relabel,dog,0.93,dog
  train/cat/002.jpg,cat,drop,,0.88,dog
  train/dog/117.jpg,dog,keep,,0.41,cat

`path` is relative to `--data_dir` (or absolute, or as `label_issues.csv`
writes it); `action` is one of `ACTIONS` or empty (not reviewed yet).
`relabel` trains the image as `new_label`; `drop` leaves it out of
training; `keep`, `unsure` and unreviewed rows keep its label. Only
`path`, `action` and `new_label` are read (`given_label`, `score` and
`suggested_label` are for the reviewer); a row that names a file not in the
train split, a class not in the class list or an unknown action stops the run
with one error naming the file and line.

The corrections are applied to the source's train labels before the
protocol (meta set, long tail, synthetic noise) sees them, so the meta set
taken out of train, if any, is drawn from the corrected labels. The run's
data fingerprint holds the file's digest (`run.fingerprint`), its metrics
how many labels changed per class (`report`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from advisor_tf.data import sources

ACTIONS = ("relabel", "keep", "drop", "unsure")
HEADER = ("path", "given_label", "action", "new_label", "score",
          "suggested_label")
# The datasets whose training images are files a row can name.
FILE_DATASETS = ("image_folder", "image_csv")


@dataclasses.dataclass(frozen=True)
class CorrectedSource(sources.Source):
  """A `Source` whose train split has corrections applied; `corrections`
  is their `report`."""
  corrections: Optional[dict] = None


def digest(path):
  """SHA-256 of the corrections file's bytes."""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _key(path):
  return os.path.normcase(os.path.abspath(path))


def read(path, source, data_dir=None):
  """Parses `path` against the train split of `source`: returns
  `(relabel, drop)`, `{train index: new class id}` and the sorted train
  indices to leave out. Raises ValueError naming `path:line`."""
  if not os.path.isfile(path):
    raise ValueError(f"--corrections={path}: no such file.")
  paths = (source.paths or {}).get("train")
  if paths is None:
    raise ValueError(f"--corrections={path}: the dataset {source.name!r} has "
                     "no image files to correct; corrections apply to "
                     f"{' and '.join(FILE_DATASETS)}.")
  index = {_key(p): i for i, p in enumerate(paths)}
  names = [str(c) for c in source.class_names]
  relabel, drop, seen = {}, set(), {}
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
      raise ValueError(f"{path}:1: empty; expected the header "
                       f"{','.join(HEADER)}.")
    header = [h.strip() for h in header]
    missing = [c for c in ("path", "action", "new_label") if c not in header]
    if missing:
      raise ValueError(f"{path}:1: the header lacks {', '.join(missing)}; "
                       f"expected {','.join(HEADER)}.")
    col = {name: header.index(name) for name in header}
    for row in reader:
      line = reader.line_num
      if not any(cell.strip() for cell in row):
        continue

      def cell(name, row=row):
        i = col.get(name)
        return row[i].strip() if i is not None and i < len(row) else ""

      file, action, new = cell("path"), cell("action").lower(), cell(
          "new_label")
      if action and action not in ACTIONS:
        raise ValueError(f"{path}:{line}: action {action!r} is not one of "
                         f"{', '.join(ACTIONS)} (or empty: not reviewed).")
      if not file:
        raise ValueError(f"{path}:{line}: no path.")
      candidates = [file] if os.path.isabs(file) else (
          [os.path.join(data_dir, file)] if data_dir else []) + [file]
      i = next((index[_key(c)] for c in candidates if _key(c) in index), None)
      if i is None:
        raise ValueError(f"{path}:{line}: {file} is not an image of the "
                         "train split of "
                         f"--data_dir={data_dir} ({len(paths)} images).")
      if i in seen:
        raise ValueError(f"{path}:{line}: {file} is listed twice (also on "
                         f"line {seen[i]}).")
      seen[i] = line
      given = cell("given_label")
      if given and given not in names:
        raise ValueError(f"{path}:{line}: given_label {given!r} is not in the "
                         f"class list {names}.")
      if action == "relabel":
        if new not in names:
          raise ValueError(f"{path}:{line}: new_label {new!r} is not in the "
                           f"class list {names}.")
        relabel[i] = names.index(new)
      elif action == "drop":
        drop.add(i)
  return relabel, np.asarray(sorted(drop), np.int64)


def report(labels, relabel, drop, class_names, path):
  """How the corrections change the train labels `labels`: totals and, per
  class (by its name), labels relabelled away from it, relabelled into it
  and images dropped from it. Relabelling to the label an image has is no
  change."""
  per_class = {str(c): {"relabelled_away": 0, "relabelled_in": 0,
                        "dropped": 0} for c in class_names}
  relabelled = 0
  for i, new in relabel.items():
    old = int(labels[i])
    if new != old:
      relabelled += 1
      per_class[str(class_names[old])]["relabelled_away"] += 1
      per_class[str(class_names[new])]["relabelled_in"] += 1
  for i in drop:
    per_class[str(class_names[int(labels[i])])]["dropped"] += 1
  return {"file": os.path.abspath(path), "digest": digest(path),
          "relabelled": relabelled, "dropped": int(len(drop)),
          "per_class": {k: v for k, v in per_class.items() if any(v.values())}}


def apply(source, path, data_dir=None):
  """`source` with the corrections of the file `path` applied to its train
  split (a `CorrectedSource`; the files themselves are only read)."""
  relabel, drop = read(path, source, data_dir)
  labels = np.array(source.labels["train"], np.int64)
  summary = report(labels, relabel, drop, source.class_names, path)
  for i, new in relabel.items():
    labels[i] = new
  kept = np.setdiff1d(np.arange(len(labels)), drop)
  if not len(kept):
    raise ValueError(f"--corrections={path} drops every training image.")
  def kept_only(base):  # A loader of the kept training images only.
    def loader(split):
      load = base(split)
      if load is None or split != "train" or len(kept) == len(labels):
        return load
      table = tf.constant(kept, tf.int64)
      return lambda index: load(tf.gather(table, index))  # noqa: E731
    return loader

  paths = dict(source.paths)
  paths["train"] = np.asarray(source.paths["train"])[kept]
  fields = {f.name: getattr(source, f.name)
            for f in dataclasses.fields(sources.Source)}
  fields.update(labels={**source.labels, "train": labels[kept]}, paths=paths,
                image_loader_fn=kept_only(source.image_loader_fn),
                batch_loader_fn=(source.batch_loader_fn
                                 and kept_only(source.batch_loader_fn)),
                corrections=summary)
  return CorrectedSource(**fields)


def describe(summary):
  """The report in one line, for the run's log."""
  per_class = "; ".join(
      f"{name}: -{c['relabelled_away']} +{c['relabelled_in']} relabelled, "
      f"{c['dropped']} dropped" for name, c in summary["per_class"].items())
  return (f"{summary['relabelled']} label(s) changed, {summary['dropped']} "
          f"image(s) dropped by {summary['file']}"
          + (f" ({per_class})" if per_class else ""))
