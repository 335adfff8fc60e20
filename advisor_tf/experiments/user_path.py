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
`--set=field=value,...` overrides TrainConfig fields (the ablations).

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
import numpy as np  # noqa: E402

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

  from advisor_tf import run as run_lib
  from advisor_tf.experiments import dirty_labels
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
