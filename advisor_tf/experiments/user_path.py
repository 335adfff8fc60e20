r"""The user-path grid: the dirty-labels cells on the digits written as an
image folder, trained the way a user trains on their own photos.

  python -m advisor_tf.experiments.user_path \
      --out=results/user_path.json --workdir=runs/user_path \
      [--cells=sym0.4,flip0.4,lt20_sym0.4,lt20] \
      [--methods=ce,mwnet,mfrw_mes] [--seeds=0,1,2] [--image_size=32]

The folder writer other code imports is `write_digits_folder(root, cell,
seed, image_size=32)`: it writes the bundled digits
(`advisor_tf.data.sources.digits`) as a class-per-folder PNG image set

  root/train/<given label>/<index>.png   the training split, its noise and
                                         long tail written into the folder
                                         labels (a mislabelled image sits in
                                         its noisy class's folder)
  root/meta/<label>/<index>.png          10 clean images per class, taken out
                                         of train before corruption
  root/test/<label>/<index>.png          the fixed test split (599 images)
  root/manifest.json                     per split: file, given label, clean
                                         label; the cell, seed and the
                                         realised noise rate

The split is exactly the one the array grid (`dirty_labels`) trains on for
the same (cell, seed): `run.prepare_data` of `dirty_labels.cell_config`
(meta split → long tail → noise, one seed), so the two grids differ only in
how the images reach the model. Images are RGB (grey tiled), 0..255
(`round(v / 16 · 255)`), upsampled from 8×8 by nearest neighbour (every
pixel becomes an `image_size / 8` square: no new values, and reading the
folder back at `--image_size=8` gives the 8×8 arrays exactly). `<index>` is
the image's index in the digits' train or test split.

Each run then trains through `trainer.train` with `dataset="image_folder"`,
`data_dir=` the cell's folder, `image_size`, and otherwise the defaults a
user gets (`TrainConfig()`: small CNN, 30 epochs, augmentation on — for a
folder, a random horizontal flip —, noise none since the noise is in the
folder), with `export=False, verbose=0` (neither changes what is trained).
`--set=field=value,...` overrides TrainConfig fields, `--tag=@name` suffixes
the cell keys and workdirs of such a variant, `--folder_size` writes the
folder at another size than `--image_size` reads it (the ablations of README
"The user-path grid"; `user_path_ablations` adds the method variants no
option offers, `user_path_features` measures kept runs).

Results are in the dirty-labels schema (`dirty_labels.record`: cell →
method → per-seed lists, resumable, the JSON rewritten after each run and
finished runs skipped), with, per run:

  accuracy, tail_accuracy, realised_noise_rate, train_seconds
  mask_mean          the advisor's mean W_f over a probe of training images,
                     per epoch (from the run's advisor_trace.jsonl)
  suppression_mean   the mean MES s_k (the mean of the per-class means), per
                     epoch
  mask_mean_noisy, mask_mean_clean
                     the last epoch's mean W_f on the mislabelled and on the
                     correctly labelled probe images (from the manifest)
"""

import dataclasses
import json
import os
import tempfile
import time
import types

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from advisor_tf import advice  # noqa: E402
from advisor_tf import config as config_lib  # noqa: E402
from advisor_tf import run as run_lib  # noqa: E402
from advisor_tf import telemetry  # noqa: E402
from advisor_tf import trainer  # noqa: E402
from advisor_tf.experiments import dirty_labels  # noqa: E402

MANIFEST = "manifest.json"
CELLS = ("sym0.4", "flip0.4", "lt20_sym0.4", "lt20")
METHODS = ("ce", "mwnet", "mfrw_mes")
SEEDS = (0, 1, 2)


# ---------------------------------------------------------------- folders
def _pixels(image, image_size):
  """One digits image (8×8 floats in [0, 1]) → uint8 RGB `image_size`²."""
  if image_size % 8:
    raise ValueError(f"--image_size={image_size} must be a multiple of 8 "
                     "(nearest-neighbour upsampling of the 8×8 digits).")
  grey = np.round(np.asarray(image, np.float64)[..., 0] * 255).astype(np.uint8)
  factor = image_size // 8
  grey = np.repeat(np.repeat(grey, factor, axis=0), factor, axis=1)
  return np.repeat(grey[..., None], 3, axis=-1)


def write_digits_folder(root, cell, seed, image_size=32):
  """Writes the digits of the dirty-labels `cell` (seed `seed`) as an image
  folder under `root` (train/, meta/, test/, manifest.json; see the module
  docstring). Rewrites nothing when `root` already holds the same cell, seed
  and size. Returns the manifest dict."""
  from PIL import Image

  path = os.path.join(root, MANIFEST)
  want = {"cell": cell, "seed": int(seed), "image_size": int(image_size),
          "upsampling": "nearest"}
  if os.path.isfile(path):
    with open(path) as f:
      manifest = json.load(f)
    if all(manifest.get(k) == v for k, v in want.items()):
      return manifest
    raise ValueError(f"{root} holds another folder ({manifest.get('cell')}, "
                     f"seed {manifest.get('seed')}); use an empty folder.")
  config = dirty_labels.cell_config(cell, "ce", seed)
  source, split = run_lib.prepare_data(config)
  arrays = {name: _digits_images(source, name) for name in ("train", "test")}
  manifest = dict(want, realised_noise_rate=split.noise_rate, splits={})
  parts = {
      "train": (split.train_indices, split.train_labels,
                split.train_clean_labels, "train"),
      "meta": (split.meta_indices, split.meta_labels, split.meta_labels,
               "train"),
      "test": (np.arange(len(source.labels["test"])), source.labels["test"],
               source.labels["test"], "test")}
  tmp = os.path.abspath(root).rstrip(os.sep) + ".partial"
  if os.path.isdir(tmp):
    import shutil
    shutil.rmtree(tmp)
  for name, (indices, given, clean, origin) in parts.items():
    rows = []
    for index, label, true in zip(indices, given, clean):
      folder = os.path.join(tmp, name, source.class_names[int(label)])
      os.makedirs(folder, exist_ok=True)
      file = os.path.join(name, source.class_names[int(label)],
                          f"{origin}{int(index):04d}.png")
      Image.fromarray(_pixels(arrays[origin][int(index)], image_size)).save(
          os.path.join(tmp, file))
      rows.append([file, int(label), int(true)])
    manifest["splits"][name] = rows
  with open(os.path.join(tmp, MANIFEST), "w") as f:
    json.dump(manifest, f)
  if os.path.isdir(root) and not os.listdir(root):
    os.rmdir(root)
  os.replace(tmp, root)
  return manifest


def _digits_images(source, split):
  """The digits' images of `split` as an [N, 8, 8, 1] array in [0, 1]."""
  import tensorflow as tf
  count = len(source.labels[split])
  return np.asarray(source.image_loader(split)(tf.range(count,
                                                        dtype=tf.int64)))


# ------------------------------------------------------------------ runs
def folder_of(root, cell, seed, image_size):
  """Where the (cell, seed)'s folder at `image_size` px is written."""
  return os.path.join(root, "folders", f"{cell}_s{seed}_{image_size}px")


def run_config(cell, method, seed, root, image_size=32, folder_size=None,
               epochs=None, overrides=None, tag=""):
  """The `TrainConfig` of one user-path run: a user's defaults on the
  cell's folder (`overrides`: the ablation's fields)."""
  folder = folder_of(root, cell, seed, folder_size or image_size)
  fields = dict(dataset="image_folder", data_dir=folder,
                image_size=image_size, method=method, seed=seed,
                export=False, verbose=0,
                workdir=os.path.join(root, cell + tag, f"{method}_s{seed}"))
  if epochs is not None:
    fields.update(epochs=epochs,
                  lr_decay_epochs=dirty_labels.decay_epochs(epochs))
  fields.update(overrides or {})
  return dataclasses.replace(config_lib.TrainConfig(), **fields).validate()


def trace_values(workdir):
  """Per-epoch `mask_mean` and `suppression_mean` from the run's trace."""
  records = telemetry.read_trace(workdir)
  values = {}
  masks = [r.get("mask_mean") for r in records]
  if any(v is not None for v in masks):
    values["mask_mean"] = [None if v is None else round(v, 5) for v in masks]
  sup = [r.get("class_suppression") for r in records]
  if any(v is not None for v in sup):
    values["suppression_mean"] = [None if v is None else
                                  round(float(np.mean(v)), 5) for v in sup]
  weight = [r.get("example_weight_mean") for r in records]
  if any(v is not None for v in weight):
    values["weight_mean"] = [None if v is None else round(v, 5)
                             for v in weight]
  return values


def clean_labels(manifest, source, root):
  """The clean label of each training image of the folder source at `root`
  (in the source's order), from the manifest."""
  truth = {os.path.normpath(f): clean
           for f, _, clean in manifest["splits"]["train"]}
  root = os.path.abspath(root)
  return np.array([truth[os.path.relpath(os.path.abspath(p), root)]
                   for p in source.paths["train"]])


def _noisy_mask(manifest, source):
  """Per training image of the folder source (in its order): is the folder
  label wrong?"""
  return clean_labels(manifest, source, manifest["_root"]) != np.asarray(
      source.labels["train"])


def run_one(cell, method, seed, root, image_size=32, folder_size=None,
            epochs=None, overrides=None, tag=""):
  """Writes the folder (once), trains one run and measures it: the values
  `dirty_labels.record` stores."""

  size = folder_size or image_size
  manifest = write_digits_folder(folder_of(root, cell, seed, size), cell,
                                 seed, size)
  config = run_config(cell, method, seed, root, image_size, folder_size,
                      epochs, overrides, tag)
  keras.backend.clear_session()
  start = time.time()
  metrics = trainer.train(config)
  seconds = time.time() - start
  clean = np.array([c for _, _, c in manifest["splits"]["train"]])
  split = types.SimpleNamespace(train_clean_labels=clean)
  tail = dirty_labels.tail_classes(
      split, 10, dirty_labels.CELLS[cell].get("imbalance_factor", 1.0))
  values = {"accuracy": metrics["test/top1"],
            "tail_accuracy": dirty_labels.tail_accuracy(
                metrics["test/per_class_accuracy"], tail),
            "realised_noise_rate": manifest["realised_noise_rate"]
            if dirty_labels.is_noisy(cell) else None,
            "train_seconds": round(seconds, 1)}
  values.update(trace_values(config.workdir))
  if method != "ce" and dirty_labels.is_noisy(cell):
    values.update(advice_values(config.workdir, manifest))
  return values


def advice_values(workdir, manifest):
  """The finished run's advice on its mislabelled vs correctly labelled
  training images (known from the folder's `manifest`): `mask_mean_noisy`,
  `mask_mean_clean` (MFRW) and `advisor_ap`, the average precision of the
  advisor's discount at finding the mislabelled ones."""
  keras.backend.clear_session()
  finished = run_lib.load(workdir)
  adv = advice.advise(finished.model, finished.source, finished.split,
                      batch_size=finished.config.eval_batch_size)
  noisy = _noisy_mask(dict(manifest, _root=finished.config.data_dir),
                      finished.source)[
                          finished.split.train_indices[adv.positions]]
  values = {}
  if adv.mask is not None:
    values["mask_mean_noisy"] = round(float(adv.mask[noisy].mean()), 5)
    values["mask_mean_clean"] = round(float(adv.mask[~noisy].mean()), 5)
  quality = advice.ranking_quality(
      advice.label_issue_scores(adv)["advisor"], noisy)
  values["advisor_ap"] = None if quality is None else round(quality["ap"], 4)
  return values


def run_grid(out, cells, methods, seeds, root, image_size=32,
             folder_size=None, epochs=None, overrides=None, tag="",
             log=print):
  """Runs the missing (cell, method, seed) entries, rewriting `out` after
  each (cell keys carry `tag`). Returns the results dict."""
  results = dirty_labels.load_results(out)
  # Seed by seed, so that an interrupted grid has every cell.
  runs = [(c, s, m) for s in seeds for c in cells for m in methods]
  todo = [(c, s, m) for c, s, m in runs
          if not dirty_labels.done(results, c + tag, m, s)]
  log(f"user_path: {len(todo)} run(s) to do, {len(runs) - len(todo)} "
      f"already in {out}.")
  for count, (cell, seed, method) in enumerate(todo, 1):
    values = run_one(cell, method, seed, root, image_size, folder_size,
                     epochs, overrides, tag)
    dirty_labels.record(results, cell + tag, method, seed, values)
    dirty_labels.write_results(out, results)
    last = {k: values[k][-1] for k in ("mask_mean", "suppression_mean")
            if values.get(k)}
    log(f"[{count}/{len(todo)}] {cell + tag} {method} seed {seed}: top-1 "
        f"{values['accuracy']:.2f}"
        + "".join(f", {k} {v:.3f}" for k, v in last.items())
        + f" ({values['train_seconds']:.0f} s) → {out}")
  return results


def tables(results, methods=METHODS):
  """Markdown: test top-1 (mean ± std over seeds) per cell and method, and
  the advisor's last-epoch mask / suppression means."""
  lines = ["| cell | " + " | ".join(methods) + " | MFRW-MES − CE | "
           "mask / suppression (mfrw_mes, last epoch) |",
           "|---|" + "---|" * (len(methods) + 2)]

  def values(cell, method, key="accuracy"):
    return [v for v in results[cell].get(method, {}).get(key, [])
            if v is not None]

  for cell in results:
    row = []
    for method in methods:
      acc = values(cell, method)
      row.append(f"{np.mean(acc):.1f} ± {np.std(acc):.1f} (n={len(acc)})"
                 if acc else "-")
    ce, ours = values(cell, "ce"), values(cell, "mfrw_mes")
    gain = (f"{np.mean(ours) - np.mean(ce):+.1f}" if ce and ours else "-")
    masks = [m[-1] for m in values(cell, "mfrw_mes", "mask_mean") if m]
    sups = [s[-1] for s in values(cell, "mfrw_mes", "suppression_mean") if s]
    stats = (f"{np.mean(masks):.3f} / {np.mean(sups):.3f}" if masks and sups
             else "-")
    lines.append(f"| {cell} | " + " | ".join(row) + f" | {gain} | {stats} |")
  return "\n".join(lines)


GOALS = {"flip0.4": 25.0, "sym0.4": 8.0, "lt20_sym0.4": 8.0}


def goal_check(results):
  """Per cell, issue #20's goal on the seed means: MFRW-MES at least CE +
  `GOALS[cell]` points, and not below the better of CE and MW-Net minus
  that method's standard deviation over seeds. Lines of text."""
  lines = []
  for cell, by_method in results.items():
    acc = {m: [v for v in e.get("accuracy", []) if v is not None]
           for m, e in by_method.items()}
    if not acc.get("mfrw_mes") or not acc.get("ce"):
      continue
    ours, ce = np.mean(acc["mfrw_mes"]), np.mean(acc["ce"])
    best = max((m for m in ("ce", "mwnet") if acc.get(m)),
               key=lambda m: np.mean(acc[m]))
    floor = np.mean(acc[best]) - np.std(acc[best])
    verdicts = [f"MFRW-MES {ours:.1f} vs CE {ce:.1f}: {ours - ce:+.1f}"]
    base = cell.split("@")[0]
    if base in GOALS:
      verdicts.append(f"goal +{GOALS[base]:.0f} "
                      + ("met" if ours - ce >= GOALS[base] else "NOT met"))
    verdicts.append(f"{'≥' if ours >= floor else '<'} {best} − 1 std "
                    f"{floor:.1f}")
    lines.append(f"{cell} (n={len(acc['mfrw_mes'])}): " + ", ".join(verdicts))
  return lines


def _define_flags():
  """The command's flags (defined only when run as a command)."""
  return types.SimpleNamespace(
      out=flags.DEFINE_string("out", "results/user_path.json",
                              "Where to write (and resume) the JSON."),
      workdir=flags.DEFINE_string("workdir", "runs/user_path", "Folders and "
                                  "runs are kept here (resumable)."),
      cells=flags.DEFINE_list("cells", list(CELLS), "Cells of the dirty-labels "
                              "grid (dirty_labels.CELLS)."),
      methods=flags.DEFINE_list("methods", list(METHODS), "Methods."),
      seeds=flags.DEFINE_list("seeds", [str(s) for s in SEEDS],
                              "Seeds (integers >= 0)."),
      image_size=flags.DEFINE_integer("image_size", 32, "Side the runs read "
                                      "the images at (--image_size of the "
                                      "run).", lower_bound=8),
      folder_size=flags.DEFINE_integer("folder_size", None, "Side the folder "
                                       "is written at (default: "
                                       "--image_size).", lower_bound=8),
      epochs=flags.DEFINE_integer("epochs", None, "Epochs per run (default: "
                                  "TrainConfig's).", lower_bound=1),
      set=flags.DEFINE_string("set", "", "Ablations: TrainConfig fields "
                              "changed from the defaults, field=value,..."),
      tag=flags.DEFINE_string("tag", "", "Suffix of the cell keys (and "
                              "workdirs) of this variant, e.g. @noaug."))


def main(argv, f):
  del argv
  cli.quiet_logs()
  for cell in f.cells.value:
    if cell not in dirty_labels.CELLS:
      raise app.UsageError(f"--cells: {cell!r} is not one of "
                           f"{', '.join(dirty_labels.CELLS)}.")
  for method in f.methods.value:
    if method not in dirty_labels.METHODS:
      raise app.UsageError(f"--methods: {method!r} is not one of "
                           f"{', '.join(dirty_labels.METHODS)}.")
  try:
    seeds = sorted({int(s) for s in f.seeds.value})
    overrides = dirty_labels.parse_overrides(f.set.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if f.image_size.value % 8 and not f.folder_size.value:
    raise app.UsageError(f"--image_size={f.image_size.value} must be a "
                         "multiple of 8 (or give --folder_size).")
  results = run_grid(f.out.value, f.cells.value, f.methods.value, seeds,
                     f.workdir.value, f.image_size.value, f.folder_size.value,
                     f.epochs.value, overrides, f.tag.value)
  print(tables(results, [m for m in dirty_labels.METHODS
                         if any(m in r for r in results.values())]))
  print("\n".join(goal_check(results)))


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
