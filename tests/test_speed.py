"""Fast-path features of the meta step: no retracing, XLA, virtual scopes,
sparse advisor updates, mixed precision, tf.distribute equivalence."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advisor_tf import backbones
from conftest import (assert_mirrored_step_equals_single, batches,
                      directional_check, tiny_model)


def _dataset(n=16, m=10, batch=4, meta_batch=5, seed=0):
  x, y, xm, ym = batches(n=n, m=m, seed=seed)
  return tf.data.Dataset.zip(
      tf.data.Dataset.from_tensor_slices((x, y)).batch(batch,
                                                       drop_remainder=True),
      tf.data.Dataset.from_tensor_slices((xm, ym)).repeat().batch(
          meta_batch, drop_remainder=True))


@pytest.mark.parametrize("mode,remat", [("ce", "none"), ("mfrw_mes", "none"),
                                        ("mfrw_mes", "blocks")])
def test_train_step_traced_once_over_epochs(mode, remat):
  model = tiny_model(mode, remat=remat)
  traces = []
  original = model.train_step

  def counting(data):
    traces.append(1)  # Python side effect: runs only while tracing.
    return original(data)

  model.train_step = counting
  model.fit(_dataset(), epochs=3, verbose=0)
  assert model.optimizer.iterations.numpy() == 12
  assert len(traces) == 1


@pytest.fixture
def no_op_determinism():
  # Keras turns XLA off while TF op determinism is on (enabled by runs of
  # the trainer earlier in the session).
  from tensorflow.python.framework import config as tf_config
  was_on = tf_config.is_op_determinism_enabled()
  tf_config.disable_op_determinism()
  yield
  if was_on:
    tf.config.experimental.enable_op_determinism()


@pytest.mark.slow
def test_xla_step_matches_graph_step(no_op_determinism):
  data = _dataset()
  plain = tiny_model("mfrw_mes", compile_kwargs={"jit_compile": False})
  xla = tiny_model("mfrw_mes", compile_kwargs={"jit_compile": True})
  plain.fit(data, epochs=1, verbose=0)
  xla.fit(data, epochs=1, verbose=0)
  assert xla.jit_compile
  for a, b in zip(plain.variables, xla.variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-3, atol=2e-4,
                               err_msg=a.path)


@pytest.mark.parametrize("scope", ["head", "last_stage"])
def test_restricted_virtual_step_hypergradient(scope):
  keras.config.set_floatx("float64")
  model = tiny_model("mfrw_mes", virtual_scope=scope,
                     last_stage_prefixes=backbones.last_stage_prefixes(
                         "small_cnn"))
  x, y, xm, ym = batches(dtype="float64")
  direction = [np.random.default_rng(1).standard_normal(v.shape)
               for v in model.advisor.trainable_variables]
  analytic, numeric = directional_check(model, x, y, xm, ym, direction)
  assert abs(analytic - numeric) / abs(numeric) < 1e-4
  grads, _ = model.meta_gradient(x, y, xm, ym)
  # The restricted step is a different (cheaper) approximation than "all".
  full = tiny_model("mfrw_mes")
  full_grads, _ = full.meta_gradient(x, y, xm, ym)
  assert not np.allclose(full_grads[-1], grads[-1])


def test_virtual_scope_selects_variables():
  model = tiny_model("mfrw", virtual_scope="last_stage",
                     last_stage_prefixes=("conv3", "bn3"))
  flags = model._virtual_flags()
  moved = {v.path for v, f in zip(model.classifier_variables, flags) if f}
  assert any("conv3" in p for p in moved) and any("logits" in p for p in moved)
  assert not any("conv1" in p or "bn2" in p for p in moved)
  with pytest.raises(ValueError, match="No backbone layer name starts with"):
    tiny_model("mfrw", virtual_scope="last_stage",
               last_stage_prefixes=("nope",))._virtual_flags()


@pytest.mark.slow
def test_meta_update_every_k_steps():
  model = tiny_model("mfrw_mes", meta_update_every=2)
  x, y, xm, ym = batches()
  data = ((tf.constant(x), tf.constant(y)), (tf.constant(xm), tf.constant(ym)))
  step = tf.function(model.train_step)
  changed = []
  for _ in range(4):
    before = [v.numpy().copy() for v in model.advisor.trainable_variables]
    step(data)
    changed.append(any(not np.array_equal(b, v.numpy()) for b, v in
                       zip(before, model.advisor.trainable_variables)))
  assert changed == [True, False, True, False]
  assert model.advisor_optimizer.iterations.numpy() == 2
  assert model.optimizer.iterations.numpy() == 4


def _mixed_model(policy):
  keras.mixed_precision.set_dtype_policy(policy)
  try:  # As training builds it: loss scaling for float16 included.
    model = tiny_model("mfrw_mes", lr=0.1, precision=policy)
  finally:
    keras.mixed_precision.set_dtype_policy("float32")
  return model


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_hypergradient_and_fit(policy):
  reference = _mixed_model("float32")
  model = _mixed_model(policy)
  assert model.backbone.layers[1].compute_dtype == policy.split("_")[1]
  assert model.advisor.hidden.compute_dtype == "float32"
  x, y, xm, ym = batches()
  want, _ = reference.meta_gradient(x, y, xm, ym)
  got, _ = model.meta_gradient(x, y, xm, ym)
  assert all(g.dtype == "float32" for g in got)
  want = np.concatenate([np.ravel(g) for g in want])
  got = np.concatenate([np.ravel(g) for g in got])
  # Half precision: the hypergradient points the same way, within a few %.
  cosine = got @ want / np.linalg.norm(got) / np.linalg.norm(want)
  assert cosine > 0.98
  assert abs(np.linalg.norm(got) / np.linalg.norm(want) - 1) < 0.1
  history = model.fit(_dataset(), epochs=2, verbose=0)
  assert all(v.dtype == "float32" for v in model.trainable_variables)
  assert np.isfinite(history.history["loss"]).all()
  assert np.isfinite(history.history["advisor_grad_norm"]).all()
  assert history.history["advisor_grad_norm"][-1] > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ce", "mwnet", "mfrw_mes"])
def test_mirrored_step_equals_single_device_step(mode):
  assert_mirrored_step_equals_single(mode, batchnorm=False, lr=0.5,
                                     momentum=0.9, weight_decay=1e-3)