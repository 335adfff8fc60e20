"""∇θ L_meta against central finite differences, in float64."""

import keras
import numpy as np
import pytest

from conftest import batches, directional_check, tiny_model


# Under remat, the combined mode in the fast tier and every mode in the full
# suite (`test_remat_hypergradient_equals_the_plain_one` checks remat's
# hypergradient against the plain one in the fast tier too).
@pytest.mark.parametrize("mode,remat", [
    (mode, remat) if remat == "none" or mode == "mfrw_mes" else
    pytest.param(mode, remat, marks=pytest.mark.slow)
    for remat in ("none", "blocks")
    for mode in ("mwnet", "mfrw", "mes", "mfrw_mes")])
def test_hypergradient_matches_finite_differences(mode, remat):
  keras.config.set_floatx("float64")
  model = tiny_model(mode, lr=0.5, remat=remat)
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


@pytest.mark.parametrize("label_input", [False, True])
@pytest.mark.parametrize("mode", ["mfrw", "mes", "mfrw_mes"])
def test_hypergradient_of_either_advisor_matches_finite_differences(
    mode, label_input):
  """The thesis' advisor Ψ(f, L) and the one that also reads the label: the
  label embedding's weights get their share of ∇θ L_meta, exactly."""
  keras.config.set_floatx("float64")
  model = tiny_model(mode, lr=0.5, advisor_label_input=label_input)
  assert model.advisor.label_input is label_input
  x, y, xm, ym = batches(dtype="float64")
  grads, _ = model.meta_gradient(x, y, xm, ym)
  variables = model.advisor.trainable_variables
  assert len(grads) == len(variables)
  names = [v.path for v in variables]
  assert any("label_embedding" in n for n in names) is label_input
  rng = np.random.default_rng(1)
  # Through all of θ, then through the label embedding alone (the thesis'
  # advisor: through its feature embedding alone).
  alone = "label_embedding" if label_input else "feature_embedding"
  for only in (None, alone):
    direction = [rng.standard_normal(v.shape)
                 if only is None or only in n else np.zeros(v.shape)
                 for v, n in zip(variables, names)]
    analytic, numeric = directional_check(model, x, y, xm, ym, direction)
    assert abs(numeric) > 1e-8, only  # The direction moves L_meta.
    assert abs(analytic - numeric) / abs(numeric) < 1e-4, only


@pytest.mark.parametrize("mode", ["mfrw_mes", "mes"])
def test_hypergradient_through_the_example_weight_matches_finite_differences(
    mode):
  """`advisor_example_weight`: ω(f, L) multiplies each example's loss in
  the virtual step, so its head gets its share of ∇θ L_meta, exactly."""
  keras.config.set_floatx("float64")
  model = tiny_model(mode, lr=0.5, advisor_example_weight=True)
  x, y, xm, ym = batches(dtype="float64")
  grads, _ = model.meta_gradient(x, y, xm, ym)
  variables = model.advisor.trainable_variables
  names = [v.path for v in variables]
  assert any("weight_head" in n for n in names)
  assert len(grads) == len(variables)
  rng = np.random.default_rng(2)
  for only in (None, "weight_head"):
    direction = [rng.standard_normal(v.shape)
                 if only is None or only in n else np.zeros(v.shape)
                 for v, n in zip(variables, names)]
    analytic, numeric = directional_check(model, x, y, xm, ym, direction)
    assert abs(numeric) > 1e-8, only
    assert abs(analytic - numeric) / abs(numeric) < 1e-4, only


@pytest.mark.parametrize("scope", ["all", "last_stage", "head"])
@pytest.mark.parametrize("mode", ["mwnet", "mfrw_mes"])
def test_remat_hypergradient_equals_the_plain_one(mode, scope):
  """Rematerialisation recomputes; it does not approximate: ∇θ L_meta with
  the backbone's blocks recomputed equals the plain one to 1e-10 (float64)."""
  keras.config.set_floatx("float64")
  x, y, xm, ym = batches(dtype="float64")
  grads = {}
  for remat in ("none", "blocks"):
    model = tiny_model(mode, lr=0.5, remat=remat, virtual_scope=scope,
                       last_stage_prefixes=("conv3", "bn3"), rho=0.7)
    grads[remat], _ = model.meta_gradient(x, y, xm, ym)
  assert any(float(np.abs(np.asarray(g)).max()) > 1e-6
             for g in grads["none"])
  for plain, remat in zip(grads["none"], grads["blocks"]):
    np.testing.assert_allclose(np.asarray(remat), np.asarray(plain),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("remat", ["none", "blocks"])
def test_meta_gradient_changes_no_state(remat):
  model = tiny_model("mfrw_mes", remat=remat)
  x, y, xm, ym = batches()
  before = [v.numpy().copy() for v in model.variables]
  model.meta_gradient(x, y, xm, ym)
  for b, v in zip(before, model.variables):
    np.testing.assert_array_equal(b, v.numpy())


def test_ce_mode_has_no_meta_gradient():
  model = tiny_model("ce")
  with pytest.raises(ValueError, match="no advisor"):
    model.meta_gradient(*batches())
