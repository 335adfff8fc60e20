"""∇θ L_meta against central finite differences, in float64."""

import keras
import numpy as np
import pytest

from conftest import batches, directional_check, tiny_model


@pytest.mark.parametrize("mode", ["mwnet", "mfrw", "mes", "mfrw_mes"])
def test_hypergradient_matches_finite_differences(mode):
  keras.config.set_floatx("float64")
  model = tiny_model(mode, lr=0.5)
  x, y, xm, ym = batches(dtype="float64")
  grads, _ = model.meta_gradient(x, y, xm, ym)
  variables = model.advisor.trainable_variables
  assert len(grads) == len(variables)
  rng = np.random.default_rng(0)
  for _ in range(3):  # Random directions through all of θ.
    direction = [rng.standard_normal(v.shape) for v in variables]
    analytic, numeric = directional_check(model, x, y, xm, ym, direction)
    assert abs(numeric) > 1e-8  # The direction actually moves L_meta.
    assert abs(analytic - numeric) / abs(numeric) < 1e-4


def test_meta_gradient_changes_no_state():
  model = tiny_model("mfrw_mes")
  x, y, xm, ym = batches()
  before = [v.numpy().copy() for v in model.variables]
  model.meta_gradient(x, y, xm, ym)
  for b, v in zip(before, model.variables):
    np.testing.assert_array_equal(b, v.numpy())


def test_ce_mode_has_no_meta_gradient():
  model = tiny_model("ce")
  with pytest.raises(ValueError, match="no advisor"):
    model.meta_gradient(*batches())
