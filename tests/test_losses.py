"""Meta Equalization Softmax against values computed by hand in numpy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from advisor_tf import losses


def _numpy_mes(labels, logits, s, beta):
  onehot = np.eye(logits.shape[1])[labels]
  w = 1.0 - beta * s * (1.0 - onehot)
  denom = (w * np.exp(logits)).sum(1)
  return -(logits * onehot).sum(1) + np.log(denom)


def test_matches_definition_on_small_input():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3))
  s = rng.random((4, 3))
  beta = rng.integers(0, 2, (4, 3)).astype(float)
  labels = np.array([0, 2, 1, 1])
  got = losses.meta_equalization_softmax(labels, logits, s, beta)
  np.testing.assert_allclose(got, _numpy_mes(labels, logits, s, beta),
                             rtol=1e-12)


def test_hand_computed_value():
  # z = (0, ln 2, ln 3), y = 0, s = (., 0.5, 1), β = 1:
  # w = (1, .5, 0); p_0 = 1 / (1 + .5·2 + 0·3) = 1/2.
  logits = np.log(np.array([[1.0, 2.0, 3.0]]))
  got = losses.meta_equalization_softmax(
      np.array([0]), logits, np.array([[0.9, 0.5, 1.0]]))
  np.testing.assert_allclose(got, [np.log(2.0)], rtol=1e-12)


def test_zero_suppression_is_cross_entropy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 5)).astype("float32") * 3
  labels = rng.integers(0, 5, 6)
  mes = losses.meta_equalization_softmax(labels, logits, np.zeros((6, 5)))
  ce = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                    from_logits=True)
  np.testing.assert_allclose(mes, ce, rtol=1e-5, atol=1e-6)


def test_zero_weight_class_gets_no_gradient():
  logits = tf.constant([[1.0, 2.0, -0.5, 0.3]])
  s = tf.constant([[0.2, 1.0, 0.4, 0.7]])  # ŵ_1 = 1 − 1·1·1 = 0.
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss = losses.meta_equalization_softmax(tf.constant([0]), logits, s)
  grad = tape.gradient(loss, logits).numpy()
  assert grad[0, 1] == 0.0
  assert np.all(grad[0, [0, 2, 3]] != 0.0)
  # The label itself is never suppressed: ŵ_y = 1 even when s_y = 1.
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss = losses.meta_equalization_softmax(tf.constant([1]), logits, s)
  assert tape.gradient(loss, logits).numpy()[0, 1] != 0.0


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_no_overflow_for_huge_logits(scale):
  logits = tf.constant([[scale, 0.0, -scale, 3.0]], tf.float32)
  s = tf.constant([[0.5, 0.5, 0.5, 0.5]])
  with tf.GradientTape() as tape:
    tape.watch([logits, s])
    loss = losses.meta_equalization_softmax(tf.constant([1]), logits, s)
  grads = tape.gradient(loss, [logits, s])
  assert np.isfinite(loss.numpy()).all()
  assert all(np.isfinite(g.numpy()).all() for g in grads)
  # Analytic: the largest logit (|scale|, weight 0.5) dominates the
  # denominator, and the label's logit is 0.
  np.testing.assert_allclose(loss.numpy(), [abs(scale) + np.log(0.5)],
                             rtol=1e-6)


def test_loss_class_matches_function_and_round_trips():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(5, 4)).astype("float32")
  s = rng.random((5, 4)).astype("float32")
  labels = rng.integers(0, 4, 5)
  loss = losses.MetaEqualizationSoftmax(rho=1.0, seed=3)
  value = loss(labels, losses.MetaEqualizationSoftmax.pack(logits, s))
  np.testing.assert_allclose(
      value, np.mean(_numpy_mes(labels, logits.astype(float), s, 1.0)),
      rtol=1e-5)
  clone = keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(loss))
  assert isinstance(clone, losses.MetaEqualizationSoftmax)
  assert clone.get_config() == loss.get_config()


def test_rho_draws_bernoulli():
  loss = losses.MetaEqualizationSoftmax(rho=0.0, seed=0)
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(8, 4)).astype("float32")
  labels = rng.integers(0, 4, 8)
  # ρ = 0: β = 0 everywhere, so MES is plain cross-entropy whatever s is.
  value = loss(labels, losses.MetaEqualizationSoftmax.pack(
      logits, np.ones_like(logits)))
  ce = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                    from_logits=True)
  np.testing.assert_allclose(value, np.mean(ce), rtol=1e-5)
  with pytest.raises(ValueError, match="rho"):
    losses.MetaEqualizationSoftmax(rho=1.5)


@pytest.mark.parametrize("mode", losses.BASELINE_MODES)
def test_baseline_loss_dispatches_to_the_named_loss(mode):
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(6, 5))
  labels = rng.integers(0, 5, 6)
  counts = [50, 20, 10, 5, 1]
  want = {
      "ce": lambda: keras.losses.sparse_categorical_crossentropy(
          labels, logits, from_logits=True),
      "balanced_softmax": lambda: losses.balanced_softmax(labels, logits,
                                                          counts),
      "eql": lambda: losses.equalization_softmax(labels, logits, counts, 0.05),
      "focal": lambda: losses.focal(labels, logits, 1.5),
  }[mode]()
  got = losses.baseline_loss(mode, labels, logits, class_counts=counts,
                             eql_threshold=0.05, focal_gamma=1.5)
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_baseline_loss_errors_name_the_allowed_values():
  with pytest.raises(ValueError, match="allowed: ce, balanced_softmax, eql"):
    losses.baseline_loss("mes", np.array([0]), np.zeros((1, 2)))
  with pytest.raises(ValueError, match="class_counts"):
    losses.baseline_loss("eql", np.array([0]), np.zeros((1, 2)))
