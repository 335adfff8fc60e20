r"""Does the advisor find the corrupted labels better than the loss does?

  python -m advisor_tf.experiments.label_issues --out=ap.json \
      [--figure=pr.png] [--seeds=3] [--noise_rate=0.6] [--method=mfrw_mes]

On digits with Flip noise (quickstart settings), trains the advisor method for
each seed, ranks the training examples by the advisor's discount and by their
plain loss (same classifier), and measures each ranking's average precision
for the truly corrupted labels. With `--ce_baseline` (default) it also trains
plain cross-entropy and ranks by that model's loss: what a label-cleaning
tool gets without the advisor. Writes

  {"advisor_ap": mean, "loss_ap": mean, "noise_rate": p,
   "ce_loss_ap": mean, "realised_noise_rate": mean, "per_seed": [...]}
"""

import dataclasses
import json
import os
import tempfile

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

import keras  # noqa: E402

from advisor_tf import advice  # noqa: E402
from advisor_tf import analysis  # noqa: E402
from advisor_tf import run as run_lib  # noqa: E402
from advisor_tf import trainer  # noqa: E402
from advisor_tf.experiments import BASE  # noqa: E402
from advisor_tf.model import ADVISOR_MODES  # noqa: E402

_OUT = flags.DEFINE_string("out", "ap.json", "Where to write the JSON.")
_FIGURE = flags.DEFINE_string("figure", None,
                              "Also save the precision/recall curves of "
                              "seed 0 here (PNG).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0 .. seeds-1.", lower_bound=1)
_RATE = flags.DEFINE_float("noise_rate", 0.6, "Flip noise rate p.",
                           lower_bound=0.0, upper_bound=0.95)
_METHOD = flags.DEFINE_enum("method", "mfrw_mes", ADVISOR_MODES,
                            "The advisor method.")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Epochs per run.", lower_bound=1)
_CE = flags.DEFINE_bool("ce_baseline", True,
                        "Also rank by the loss of a plain cross-entropy run.")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Keep each run here (default: a temp dir).")


def _config(method, rate, seed, epochs, root):
  return dataclasses.replace(
      BASE, method=method, noise_rate=rate, seed=seed, epochs=epochs,
      lr_decay_epochs=(int(epochs * 2 / 3), int(epochs * 5 / 6)),
      workdir=os.path.join(root, f"{method}_p{rate}_s{seed}"))


def _advice(config):
  keras.backend.clear_session()
  trainer.train(config)
  keras.backend.clear_session()
  finished = run_lib.load(config.workdir)
  return advice.advise(finished.model, finished.source, finished.split)


def run(method, rate, seeds, epochs, root, ce_baseline=True):
  """Returns (result dict, seed-0 precision/recall curves)."""
  per_seed, curves = [], None
  for seed in range(seeds):
    adv = _advice(_config(method, rate, seed, epochs, root))
    scores = advice.label_issue_scores(adv)
    quality = {name: advice.ranking_quality(scores[name], adv.noisy)
               for name in ("advisor", "loss")}
    entry = {"seed": seed, "advisor_ap": quality["advisor"]["ap"],
             "loss_ap": quality["loss"]["ap"],
             "realised_noise_rate": float(adv.noisy.mean())}
    if ce_baseline:
      plain = _advice(_config("ce", rate, seed, epochs, root))
      quality["loss of a plain CE run"] = advice.ranking_quality(
          plain.loss, plain.noisy)
      entry["ce_loss_ap"] = quality["loss of a plain CE run"]["ap"]
    per_seed.append(entry)
    curves = curves or quality
    logging.warning("seed %d: %s", seed, entry)
  result = {"advisor_ap": float(np.mean([e["advisor_ap"] for e in per_seed])),
            "loss_ap": float(np.mean([e["loss_ap"] for e in per_seed])),
            "noise_rate": rate, "method": method, "seeds": seeds,
            "realised_noise_rate": float(np.mean(
                [e["realised_noise_rate"] for e in per_seed]))}
  if ce_baseline:
    result["ce_loss_ap"] = float(np.mean([e["ce_loss_ap"] for e in per_seed]))
  result["per_seed"] = per_seed
  return result, curves


def main(argv):
  del argv
  cli.quiet_logs()
  with tempfile.TemporaryDirectory() as tmp:
    result, curves = run(_METHOD.value, _RATE.value, _SEEDS.value,
                         _EPOCHS.value, _WORKDIR.value or tmp, _CE.value)
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=2)
  if _FIGURE.value:
    names = {"advisor": "advisor's discount",
             "loss": "loss of the same classifier"}
    fig = analysis.plot_label_issue_curves(
        {names.get(k, k): v for k, v in curves.items()})
    fig.axes[0].set_title(f"Digits, Flip p = {_RATE.value}: finding the "
                          "corrupted labels (seed 0)", fontsize=9)
    fig.savefig(_FIGURE.value, dpi=110)
  print(f"{_METHOD.value}, digits Flip p={_RATE.value}, {_SEEDS.value} seeds: "
        f"advisor AP {result['advisor_ap']:.4f}, loss AP "
        f"{result['loss_ap']:.4f}" + (f", plain-CE loss AP "
                                      f"{result['ce_loss_ap']:.4f}"
                                      if _CE.value else "") + f" → {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
