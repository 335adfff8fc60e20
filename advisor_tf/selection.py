"""Sample selection (`--sample_selection=gmm`): which training examples the
loss keeps, chosen between epochs from their losses.

Beyond the thesis. Under noise that depends on the image (a person's kind of
mistake), the advisor's feature mask and class suppression discount no
single example, while the run's own per-example loss finds the wrong labels
almost perfectly (label-issue AP 0.98 on Fashion-MNIST at instance noise 0.4
and 0.5, docs/results.md). The small-loss trick of the sample-selection
literature turns that into training: after `--selection_warmup` epochs of
plain training, at the start of every epoch the classifier's loss of each training example's given
label (no augmentation) is fitted with a two-component Gaussian mixture,
and the examples the high-loss component owns (posterior of the low-loss
one below ½; DivideMix's split, Li et al., ICLR 2020) get weight 0 in the
epoch's training loss — step 2's virtual loss and step 4's actual loss —
the kept ones weight 1 (normalised per batch). The meta set is untouched.

The selection lives in the model's `example_keep` variable, so a checkpoint
within an epoch resumes with that epoch's selection, and one at an epoch's
end recomputes it from the same weights: a resumed run selects as an
uninterrupted one.
"""

from __future__ import annotations

from absl import logging
import keras
import numpy as np
from sklearn import mixture

from advisor_tf import advice


def start_epoch(config):
  """The first epoch (0-based) that selects: after `--selection_warmup`
  epochs, else after a third of the epochs."""
  if config.selection_warmup is not None:
    return config.selection_warmup
  return max(1, config.epochs // 3)


def gmm_keep(losses, seed=0):
  """Per example, whether the low-loss component of a two-component
  Gaussian mixture on the min-max-normalised `losses` owns it (posterior
  ≥ ½). Equal losses keep everything."""
  losses = np.asarray(losses, np.float64)
  spread = losses.max() - losses.min() if len(losses) else 0.0
  if len(losses) < 2 or not np.isfinite(spread) or spread <= 0:
    return np.ones(len(losses), bool)
  x = ((losses - losses.min()) / spread)[:, None]
  gmm = mixture.GaussianMixture(2, max_iter=20, tol=1e-2, reg_covar=5e-4,
                                random_state=seed).fit(x)
  low = int(np.argmin(gmm.means_.ravel()))
  return gmm.predict_proba(x)[:, low] >= 0.5


def describe(keep, noisy=None):
  """What a selection kept, as `metrics.json` entries (with synthetic
  noise, how many of the dropped are mislabelled, and of the mislabelled
  dropped)."""
  out = {"selection/kept_share": round(float(np.mean(keep)), 4)}
  if noisy is not None:
    dropped = ~keep
    out["selection/dropped_mislabelled_share"] = (
        round(float(np.mean(noisy[dropped])), 4) if dropped.any() else None)
    out["selection/mislabelled_dropped_share"] = (
        round(float(np.mean(dropped[noisy])), 4) if noisy.any() else None)
  return out


class SampleSelection(keras.callbacks.Callback):
  """Sets the model's `example_keep` at the start of every epoch from
  `start_epoch(config)` on (but not at the start of an epoch resumed within
  it, which keeps the checkpoint's)."""

  def __init__(self, config, source, split, steps_per_epoch, noisy=None):
    super().__init__()
    self.config, self.source, self.split = config, source, split
    self.steps_per_epoch = steps_per_epoch
    self.noisy = noisy
    self.last = {}

  def on_epoch_begin(self, epoch, logs=None):
    if epoch < start_epoch(self.config):
      return
    if int(self.model.optimizer.iterations.numpy()) % self.steps_per_epoch:
      return  # Resumed within the epoch: its selection came with the weights.
    adv = advice.advise(self.model, self.source, self.split,
                        batch_size=self.config.eval_batch_size)
    keep = gmm_keep(adv.loss, self.config.seed)
    self.model.example_keep.assign(keep.astype(np.float32))
    self.last = dict(describe(keep, self.noisy), **{"selection/epoch": epoch})
    extra = ""
    if "selection/dropped_mislabelled_share" in self.last:
      extra = (f"; {self.last['selection/dropped_mislabelled_share']:.1%} of "
               "the dropped are mislabelled, "
               f"{self.last['selection/mislabelled_dropped_share']:.1%} of "
               "the mislabelled dropped (synthetic noise)")
    logging.warning("Sample selection, epoch %d: training on %.1f%% of the "
                    "training images (%d dropped)%s.", epoch + 1,
                    100 * self.last["selection/kept_share"],
                    int((~keep).sum()), extra)
