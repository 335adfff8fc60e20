"""Golden regression numbers of the train step and the hypergradient.

`tests/data/step_golden.npz` holds, for every mode (and virtual scope, and
`meta_update_every=2`, and a head with BatchNorm under MFRW), what one
`meta_gradient` and two `train_step`s on fixed batches produce in float64 with
ρ = 1: the hypergradient, every classifier / advisor / BatchNorm / optimizer
variable after the steps, and the step's logs. Refactors of `model.py` must
reproduce them, and so must every case with `remat="blocks"` (a pure
memory/time trade: to 1e-10 of the same case without it, computed here, as
well as to the golden numbers); a change of the method itself must
regenerate them, on purpose:

    ADVISOR_TF_WRITE_GOLDEN=1 python -m pytest -q tests/test_step_golden.py
"""

import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from advisor_tf import backbones
from advisor_tf import model as model_lib

GOLDEN = pathlib.Path(__file__).parent / "data" / "step_golden.npz"
WRITE = os.environ.get("ADVISOR_TF_WRITE_GOLDEN") == "1"
TOLERANCE = 1e-6
REMAT_TOLERANCE = 1e-10  # Remat against the plain step, same machine.
CLASS_COUNTS = [40, 20, 10, 5, 2]


def _cases():
  """name → AdvisorModel keyword arguments."""
  cases = {}
  for mode in model_lib.BASELINE_MODES:
    cases[mode] = dict(mode=mode, class_counts=CLASS_COUNTS)
  for mode in model_lib.ADVISOR_MODES:
    for scope in ("all", "head"):
      cases[f"{mode}-{scope}"] = dict(mode=mode, virtual_scope=scope)
  cases["mfrw_mes-every2"] = dict(mode="mfrw_mes", meta_update_every=2)
  cases["mfrw-headbn"] = dict(mode="mfrw", head_batchnorm=True)
  # The advisor that also reads the given label (beyond the thesis).
  cases["mfrw_mes-label"] = dict(mode="mfrw_mes", advisor_label_input=True)
  # The advisor that also weighs each example (beyond the thesis).
  cases["mfrw_mes-weight"] = dict(mode="mfrw_mes",
                                  advisor_example_weight=True)
  return cases


CASES = _cases()


def _build(kwargs):
  """The model of one case, built here rather than by a shared helper so that
  only `model.py` can move the numbers: the small CNN of `backbones`, SGD
  (lr 0.1, momentum 0.9) with coupled weight decay 1e-2, advisor Adam 1e-2."""
  kwargs = dict(kwargs)
  keras.utils.set_random_seed(0)
  body = backbones.small_cnn((8, 8, 1), widths=(4, 4, 8))
  if kwargs.pop("head_batchnorm", False):
    # A head with its own BatchNorm: its statistics must come from the
    # attended-feature forward under MFRW.
    inputs = keras.Input((8,))
    head = keras.Model(inputs, keras.layers.Dense(5)(
        keras.layers.BatchNormalization(momentum=0.5)(inputs)))
  else:
    head = backbones.linear_head(body.output_shape[-1], 5)
  model = model_lib.AdvisorModel(body, head, rho=1.0, seed=0,
                                 embedding_size=6, **kwargs)
  model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                advisor_optimizer=keras.optimizers.Adam(1e-2),
                weight_decay=1e-2)
  return model


def _batches(seed):
  rng = np.random.default_rng(seed)
  return (rng.random((12, 8, 8, 1)), rng.integers(0, 5, 12),
          rng.random((10, 8, 8, 1)), rng.integers(0, 5, 10))


def _run(kwargs):
  """The numbers one case produces, as a flat {key: array}."""
  keras.config.set_floatx("float64")
  model = _build(kwargs)
  x, y, xm, ym = _batches(0)
  out = {}
  if model.advisor is not None:
    grads, meta_loss = model.meta_gradient(x, y, xm, ym)
    for i, g in enumerate(grads):
      out[f"hypergradient/{i}"] = np.asarray(g)
    out["meta_gradient_loss"] = np.asarray(meta_loss)
  for step in range(2):
    x, y, xm, ym = _batches(step)
    logs = model.train_step(((tf.constant(x), tf.constant(y)),
                             (tf.constant(xm), tf.constant(ym))))
    for name, value in logs.items():
      out[f"logs{step}/{name}"] = np.asarray(value)
  groups = {"classifier": model.classifier_variables,
            "backbone_stats": model.backbone.non_trainable_variables,
            "head_stats": model.head.non_trainable_variables,
            "optimizer": model.optimizer.variables}
  if model.advisor is not None:
    groups["advisor"] = model.advisor.trainable_variables
    groups["advisor_optimizer"] = model.advisor_optimizer.variables
  for group, variables in groups.items():
    for i, v in enumerate(variables):
      out[f"{group}/{i}"] = np.asarray(v.numpy())
  return out


def _write_golden():
  arrays = {}
  for name, kwargs in CASES.items():
    for key, value in _run(kwargs).items():
      arrays[f"{name}:{key}"] = value
  GOLDEN.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(GOLDEN, **arrays)


@pytest.fixture(scope="module")
def golden():
  if WRITE:
    _write_golden()
  if not GOLDEN.exists():
    pytest.fail(f"{GOLDEN} is missing; generate it with "
                "ADVISOR_TF_WRITE_GOLDEN=1.")
  with np.load(GOLDEN) as data:
    return {key: data[key] for key in data.files}


@pytest.mark.parametrize("name", list(CASES))
def test_step_reproduces_golden_numbers(name, golden):
  want = {k.split(":", 1)[1]: v for k, v in golden.items()
          if k.split(":", 1)[0] == name}
  assert want, f"no golden numbers for {name}"
  got = _run(CASES[name])
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, rtol=TOLERANCE,
                               atol=TOLERANCE, err_msg=f"{name}: {key}")


# Every advisor mode, a baseline, the sparse advisor update and the head with
# BatchNorm, with the backbone's blocks rematerialised.
REMAT_CASES = ["ce", "focal", "mfrw_mes-every2", "mfrw-headbn"] + [
    f"{mode}-{scope}" for mode in model_lib.ADVISOR_MODES
    for scope in ("all", "head")]
# The fast tier keeps a baseline, each advisor mode's whole-network scope and
# the combined mode's head scope (`test_remat` checks remat again, float64,
# for ce, mfrw_mes and mwnet); the rest run in the full suite.
FAST_REMAT_CASES = ("ce", "focal", "mwnet-all", "mfrw_mes-all",
                    "mfrw_mes-head")


@pytest.mark.parametrize("name", [
    name if name in FAST_REMAT_CASES else
    pytest.param(name, marks=pytest.mark.slow) for name in REMAT_CASES])
def test_remat_step_reproduces_the_plain_step_and_golden(name, golden):
  want = {k.split(":", 1)[1]: v for k, v in golden.items()
          if k.split(":", 1)[0] == name}
  plain = _run(CASES[name])
  got = _run(dict(CASES[name], remat="blocks"))
  assert sorted(got) == sorted(plain) == sorted(want)
  for key, value in plain.items():
    # The logged gradient norms are computed in float32 (model._global_norm).
    tol = TOLERANCE if key.endswith("grad_norm") else REMAT_TOLERANCE
    np.testing.assert_allclose(got[key], value, rtol=tol, atol=tol,
                               err_msg=f"{name}+remat: {key}")
    np.testing.assert_allclose(got[key], want[key], rtol=TOLERANCE,
                               atol=TOLERANCE, err_msg=f"{name}+remat: {key}")
