r"""Digits under Flip noise: CE vs Meta-Weight-Net vs MFRW-MES, several seeds.

  python -m advisor_tf.experiments.digits_noise --out=results.json

Trains every (method, p, seed) with the quickstart settings (small CNN, 30
epochs, 10 clean meta images per class), prints mean ± std test top-1 and
writes `{method: {"0.6": [acc_seed0, ...], ...}, ...}` (percent).
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

from advisor_tf import trainer  # noqa: E402
from advisor_tf.experiments import BASE  # noqa: E402
from advisor_tf.model import MODES  # noqa: E402

_OUT = flags.DEFINE_string("out", "results.json", "Where to write the JSON.")
_METHODS = flags.DEFINE_list("methods", ["ce", "mwnet", "mfrw_mes"],
                             f"Methods, from {', '.join(MODES)}.")
_RATES = flags.DEFINE_list("noise_rates", ["0.0", "0.4", "0.6"],
                           "Flip noise rates p.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0 .. seeds-1.", lower_bound=1)
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Epochs per run.", lower_bound=1)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Keep each run here (default: a temp dir).")
_SCOPE = flags.DEFINE_enum("virtual_scope", "all", ["all", "last_stage", "head"],
                           "Virtual scope of the advisor methods.")
_ADVICE = flags.DEFINE_enum("advice", "exact", ["exact", "lagged"],
                            "Advice of the advisor methods' actual step.")
_META_EVERY = flags.DEFINE_integer("meta_update_every", 1,
                                   "Advisor update period of the advisor "
                                   "methods.", lower_bound=1)
_ADVISOR_LR = flags.DEFINE_float("advisor_lr", BASE.advisor_lr,
                                 "Advisor Adam learning rate of the advisor "
                                 "methods (the default's; 1e-4 reproduces "
                                 "the tables measured before 1e-3 became "
                                 "the default).")



def run(methods, rates, seeds, epochs, root, virtual_scope="all",
        meta_update_every=1, advice="exact", advisor_lr=BASE.advisor_lr):
  results = {m: {} for m in methods}
  for method in methods:
    for rate in rates:
      for seed in range(seeds):
        keras.backend.clear_session()
        config = dataclasses.replace(
            BASE, method=method, noise_rate=float(rate), seed=seed,
            epochs=epochs, lr_decay_epochs=(int(epochs * 2 / 3),
                                            int(epochs * 5 / 6)),
            workdir=os.path.join(root, f"{method}_p{rate}_s{seed}"))
        if method != "ce":
          config = dataclasses.replace(config, virtual_scope=virtual_scope,
                                       meta_update_every=meta_update_every,
                                       advice=advice, advisor_lr=advisor_lr)
        top1 = trainer.train(config)["test/top1"]
        results[method].setdefault(str(rate), []).append(top1)
        logging.warning("%s p=%s seed=%d: %.2f", method, rate, seed, top1)
  return results


def table(results):
  rates = list(next(iter(results.values())))
  lines = ["| method | " + " | ".join(f"p = {r}" for r in rates) + " |",
           "|---|" + "---|" * len(rates)]
  for method, by_rate in results.items():
    cells = [f"{np.mean(v):.1f} ± {np.std(v):.1f}" for v in by_rate.values()]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  cli.quiet_logs()
  for m in _METHODS.value:
    if m not in MODES:
      raise app.UsageError(f"--methods: {m!r} is not one of {', '.join(MODES)}.")
  rates = [f"{float(r):.1f}" for r in _RATES.value]
  try:  # Before any training: the flags' values, checked as a run's.
    dataclasses.replace(BASE, advisor_lr=_ADVISOR_LR.value).validate()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  with tempfile.TemporaryDirectory() as tmp:
    results = run(_METHODS.value, rates, _SEEDS.value, _EPOCHS.value,
                  _WORKDIR.value or tmp, _SCOPE.value, _META_EVERY.value,
                  _ADVICE.value, _ADVISOR_LR.value)
  with open(_OUT.value, "w") as f:
    json.dump(results, f, indent=2)
  print("Digits, Flip noise (random targets), test top-1 % "
        f"(mean ± std over {_SEEDS.value} seeds; virtual_scope="
        f"{_SCOPE.value}, meta_update_every={_META_EVERY.value}, advice="
        f"{_ADVICE.value}, advisor_lr={_ADVISOR_LR.value:g}):")
  print(table(results))


if __name__ == "__main__":
  app.run(main)
