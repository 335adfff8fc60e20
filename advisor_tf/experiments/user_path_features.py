r"""What the backbone and the advisor of finished user-path runs do on their
training images (README "Why the advisor switched itself off"):

  python -m advisor_tf.experiments.user_path_features \
      runs/user_path/flip0.4@small_cnn/mfrw_mes_s0 runs/user_path/flip0.4/mfrw_mes_s0

One JSON line per workdir: the backbone's features on the unaugmented
training images (`feat_std_across_examples`: the mean over features of their
std across images; `feat_mean`), how well the classifier fits the given and
the clean labels (`train_acc_given`, `train_acc_clean`), the average
precision of its per-example loss at finding the mislabelled images
(`loss_ap`) and, for the advisor methods, the mask's mean, its spread across
images and its means on mislabelled / clean images.
"""

import json
import os
import sys

import keras
import numpy as np

from advisor_tf import advice
from advisor_tf import run as run_lib
from advisor_tf.data import pipeline
from advisor_tf.experiments import user_path


def feature_stats(workdir):
  """The statistics above for one finished run (a dict)."""
  keras.backend.clear_session()
  run = run_lib.load(workdir)
  adv = advice.advise(run.model, run.source, run.split, batch_size=256)
  with open(os.path.join(run.config.data_dir, user_path.MANIFEST)) as f:
    manifest = json.load(f)
  clean = user_path.clean_labels(manifest, run.source, run.config.data_dir)[
      run.split.train_indices[adv.positions]]
  noisy = clean != adv.given
  data = pipeline.unaugmented_train(run.source, run.split.train_indices,
                                    run.split.train_labels).batch(256)
  feats = np.concatenate([run.model.backbone(x, training=False).numpy()
                          for x, _ in data])
  predicted = adv.logits.argmax(1)
  quality = advice.ranking_quality(adv.loss, noisy)
  out = {"run": workdir, "feat_mean": float(feats.mean()),
         "feat_std_across_examples": float(feats.std(0).mean()),
         "train_acc_given": float((predicted == adv.given).mean()),
         "train_acc_clean": float((predicted == clean).mean()),
         "loss_ap": None if quality is None else quality["ap"]}
  if adv.mask is not None:
    out.update(mask_mean=float(adv.mask.mean()),
               mask_std_across_examples=float(adv.mask.std(0).mean()),
               mask_noisy=float(adv.mask[noisy].mean()),
               mask_clean=float(adv.mask[~noisy].mean()))
  return {k: round(v, 4) if isinstance(v, float) else v
          for k, v in out.items()}


if __name__ == "__main__":
  for path in sys.argv[1:]:
    print(json.dumps(feature_stats(path)))
