"""The train step: BatchNorm statistics, determinism, the four phases."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from advisor_tf import backbones
from advisor_tf import config as config_lib
from advisor_tf import layers
from advisor_tf import losses
from advisor_tf import model as model_lib
from conftest import assert_mirrored_step_equals_single, batches, tiny_model

MODES = ["ce", "mwnet", "mfrw", "mes", "mfrw_mes"]


def _step(model, x, y, xm, ym):
  return model.train_step(((tf.constant(x), tf.constant(y)),
                           (tf.constant(xm), tf.constant(ym))))


@pytest.mark.parametrize("mode", MODES)
def test_batchnorm_statistics_written_once_by_train_batch(mode):
  model = tiny_model(mode)
  reference = tiny_model(mode)  # Same seed, same initial weights.
  x, y, xm, ym = batches()
  _step(model, x, y, xm, ym)
  reference.backbone(x, training=True)  # One plain forward, training mode.
  moving = [v for v in model.backbone.non_trainable_variables]
  assert moving, "the backbone should have BatchNorm statistics"
  for got, want in zip(moving, reference.backbone.non_trainable_variables):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6,
                               atol=1e-7, err_msg=got.path)


@pytest.mark.parametrize("mode", MODES)
def test_rho_one_step_is_deterministic_and_updates_both_networks(mode):
  x, y, xm, ym = batches()
  a, b = tiny_model(mode), tiny_model(mode)
  before = [v.numpy().copy() for v in a.classifier_variables]
  advisor_before = ([v.numpy().copy() for v in a.advisor.trainable_variables]
                    if a.advisor else [])
  _step(a, x, y, xm, ym)
  _step(b, x, y, xm, ym)
  for va, vb in zip(a.variables, b.variables):
    np.testing.assert_array_equal(va.numpy(), vb.numpy())
  assert any(not np.allclose(p, v.numpy())
             for p, v in zip(before, a.classifier_variables))
  if a.advisor:
    assert any(not np.allclose(p, v.numpy())
               for p, v in zip(advisor_before, a.advisor.trainable_variables))


@pytest.mark.parametrize("mode", ["ce", "balanced_softmax", "focal"])
def test_baseline_step_is_plain_sgd_on_its_loss_with_coupled_weight_decay(
    mode):
  counts = [40, 20, 10, 5, 2]
  model = tiny_model(mode, lr=0.1, weight_decay=0.01, class_counts=counts)
  x, y, _, _ = batches()
  variables = model.classifier_variables
  w0 = [v.numpy().copy() for v in variables]
  with tf.GradientTape() as tape:
    logits = model.head(model.backbone(x, training=True), training=True)
    loss = tf.reduce_mean(losses.baseline_loss(
        mode, y, logits, class_counts=counts, focal_gamma=model.focal_gamma))
  grads = tape.gradient(loss, variables)
  if mode == "ce":
    np.testing.assert_allclose(float(loss), float(tf.reduce_mean(
        keras.losses.sparse_categorical_crossentropy(
            y, logits, from_logits=True))), rtol=1e-6)
  model2 = tiny_model(mode, lr=0.1, weight_decay=0.01, class_counts=counts)
  _step(model2, *batches())
  for w, g, v in zip(w0, grads, model2.classifier_variables):
    np.testing.assert_allclose(v.numpy(), w - 0.1 * (g.numpy() + 0.01 * w),
                               rtol=1e-4, atol=1e-6)


def test_actual_step_uses_updated_advisor():
  # With the advisor's learning rate at zero the actual step must equal a
  # hand-written step on the MES loss with the initial advisor.
  model = tiny_model("mfrw_mes", lr=0.1)
  model.advisor_optimizer.learning_rate.assign(0.0)
  x, y, xm, ym = batches()
  variables = model.classifier_variables
  w0 = [v.numpy().copy() for v in variables]
  with tf.GradientTape() as tape:
    f = model.backbone(x, training=True)
    ce = keras.losses.sparse_categorical_crossentropy(
        y, model.head(f, training=True), from_logits=True)
    advice = model.advise(f, ce, y)
    logits = model.head(f * advice["mask"], training=True)
    loss = tf.reduce_mean(losses.meta_equalization_softmax(
        y, logits, advice["suppression"]))
  grads = tape.gradient(loss, variables)
  other = tiny_model("mfrw_mes", lr=0.1)
  other.advisor_optimizer.learning_rate.assign(0.0)
  logs = _step(other, x, y, xm, ym)
  np.testing.assert_allclose(float(logs["loss"]), float(loss), rtol=1e-5)
  for w, g, v in zip(w0, grads, other.classifier_variables):
    np.testing.assert_allclose(v.numpy(), w - 0.1 * g.numpy(), rtol=1e-4,
                               atol=1e-6)


def test_call_is_plain_classifier_and_fit_runs():
  model = tiny_model("mfrw_mes")
  x, y, xm, ym = batches()
  np.testing.assert_allclose(
      model(x), model.head(model.backbone(x)), rtol=1e-6)
  data = tf.data.Dataset.zip(
      tf.data.Dataset.from_tensor_slices((x, y)).batch(4),
      tf.data.Dataset.from_tensor_slices((xm, ym)).repeat().batch(5))
  history = model.fit(data, epochs=2, verbose=0)
  assert set(history.history) == {"loss", "accuracy", "meta_loss",
                                  "advisor_grad_norm", "nonfinite_loss",
                                  "nonfinite_meta",
                                  "mask_mean", "suppression_mean"}
  assert np.isfinite(history.history["loss"]).all()


def test_rejects_unknown_mode_and_loss():
  model = tiny_model("ce")
  with pytest.raises(ValueError, match="allowed: ce, mwnet"):
    type(model)(model.backbone, model.head, mode="bogus")
  with pytest.raises(ValueError, match="loss"):
    model.compile(optimizer="sgd", loss="mse")


@pytest.mark.parametrize("mode", ["ce", "mwnet", "mes"])
def test_head_batchnorm_statistics_follow_the_plain_forward(mode):
  from advisor_tf import backbones
  from advisor_tf.model import AdvisorModel

  def build():
    keras.utils.set_random_seed(0)
    body = backbones.small_cnn((8, 8, 1), widths=(4, 4, 8))
    inputs = keras.Input((8,))
    head = keras.Model(inputs, keras.layers.Dense(5)(
        keras.layers.BatchNormalization(momentum=0.5)(inputs)))
    model = AdvisorModel(body, head, mode=mode, rho=1.0, embedding_size=6)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model

  model, reference = build(), build()
  x, y, xm, ym = batches()
  _step(model, x, y, xm, ym)
  reference.head(reference.backbone(x, training=True), training=True)
  moving = model.head.non_trainable_variables
  assert len(moving) == 2
  for got, want in zip(moving, reference.head.non_trainable_variables):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5,
                               atol=1e-6)
  assert not np.allclose(moving[0].numpy(), 0.0)  # The mean did move.


# ------------------------------------------------------------ lagged advice
def _hand_advised_loss(model, x, y):
  """mean L_train(w, θ) written out by hand, on a model that nobody steps."""
  f = model.backbone(x, training=True)
  ce = keras.losses.sparse_categorical_crossentropy(
      y, model.head(f, training=True), from_logits=True)
  if model.mode == "mwnet":
    return tf.reduce_mean(model.advisor(ce) * ce)
  advice = model.advise(f, ce, y)
  logits = model.head(f * advice["mask"], training=True)
  return tf.reduce_mean(losses.meta_equalization_softmax(
      y, logits, advice["suppression"]))


@pytest.mark.parametrize("mode,scope", [("mfrw_mes", "all"),
                                        ("mfrw_mes", "head"),
                                        ("mwnet", "all")])
def test_lagged_step_is_the_virtual_gradient_and_the_exact_meta_update(
    mode, scope):
  # rho = 1: deterministic. Lagged: classifier ← SGD on ∇w L_train(w, θ)
  # (the virtual step's gradient, for every weight even when the virtual
  # scope moves the head only) + weight decay; advisor ← the same meta update
  # as the exact method.
  kwargs = dict(lr=0.1, weight_decay=0.01, virtual_scope=scope)
  reference = tiny_model(mode, **kwargs)
  exact = tiny_model(mode, **kwargs)
  lagged = tiny_model(mode, advice="lagged", **kwargs)
  assert lagged.advice == "lagged" and exact.advice == "exact"
  x, y, xm, ym = batches()
  variables = reference.classifier_variables
  w0 = [v.numpy().copy() for v in variables]
  with tf.GradientTape() as tape:
    loss = _hand_advised_loss(reference, x, y)
  grads = tape.gradient(loss, variables)
  _step(exact, x, y, xm, ym)
  logs = _step(lagged, x, y, xm, ym)
  np.testing.assert_allclose(float(logs["loss"]), float(loss), rtol=1e-5)
  for w, g, v in zip(w0, grads, lagged.classifier_variables):
    np.testing.assert_allclose(v.numpy(), w - 0.1 * (g.numpy() + 0.01 * w),
                               rtol=1e-4, atol=1e-6, err_msg=v.path)
  for a, b in zip(exact.advisor.trainable_variables,
                  lagged.advisor.trainable_variables):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-7,
                               err_msg=b.path)
  assert any(not np.array_equal(a.numpy(), w) for a, w in
             zip(lagged.advisor.trainable_variables,
                 [v.numpy() for v in reference.advisor.trainable_variables]))
  # The advisor moved, so the exact step's advice (at θ′) differs from the
  # lagged one (at θ), and with it the classifier update.
  assert not all(np.allclose(v.numpy(), w - 0.1 * (g.numpy() + 0.01 * w),
                             rtol=1e-4, atol=1e-6)
                 for w, g, v in zip(w0, grads, exact.classifier_variables))
  for a, b in zip(exact.backbone.non_trainable_variables,
                  lagged.backbone.non_trainable_variables):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_lagged_advice_trains():
  model = tiny_model("mfrw_mes", lr=0.2, advice="lagged")
  x, y, xm, ym = batches()
  data = ((tf.constant(x), tf.constant(y)), (tf.constant(xm), tf.constant(ym)))
  step = tf.function(model.train_step)
  first = None
  for _ in range(8):
    model.reset_metrics()
    logs = step(data)
    first = float(logs["loss"]) if first is None else first
  assert float(logs["loss"]) < 0.9 * first
  assert model.advisor_optimizer.iterations.numpy() == 8
  assert np.isfinite(float(logs["meta_loss"]))


def test_advice_is_validated_and_round_trips():
  model = tiny_model("mfrw_mes", advice="lagged")
  cls = type(model)
  with pytest.raises(ValueError, match="allowed: exact, lagged"):
    cls(model.backbone, model.head, mode="mes", advice="stale")
  with pytest.raises(ValueError, match="advice='lagged'.*'ce'"):
    cls(model.backbone, model.head, mode="ce", advice="lagged")
  with pytest.raises(ValueError, match="meta_update_every=1"):
    cls(model.backbone, model.head, mode="mes", advice="lagged",
        meta_update_every=2)
  config = model.get_config()
  assert config["advice"] == "lagged"
  assert cls.from_config(config).advice == "lagged"


@pytest.mark.slow
def test_lagged_mirrored_step_equals_single_device_step():
  assert_mirrored_step_equals_single(
      "mfrw_mes", batchnorm=False, lr=0.5, momentum=0.9, weight_decay=1e-3,
      advice="lagged")

def test_a_run_saved_before_label_input_had_the_thesis_advisor():
  saved = json.loads(config_lib.TrainConfig().to_json())
  del saved["advisor_label_input"]
  assert not config_lib.TrainConfig.from_dict(saved).advisor_label_input
  assert config_lib.TrainConfig(advisor_label_input=True).differences(
      saved) == ["--advisor_label_input: False in the workdir, True now"]
  assert config_lib.TrainConfig().differences(saved) == []


def test_example_weight_is_an_advisor_network_option_off_by_default():
  """`--advisor_example_weight`: off by default and in a run saved before
  it; refused, naming the flag, by the methods without an advisor network;
  on, the model trains on ω / mean(ω) · loss and logs ω's mean."""
  saved = json.loads(config_lib.TrainConfig().to_json())
  del saved["advisor_example_weight"]
  assert not config_lib.TrainConfig.from_dict(saved).advisor_example_weight
  for method in ("ce", "mwnet"):
    with pytest.raises(ValueError, match="--advisor_example_weight"):
      config_lib.TrainConfig(method=method,
                             advisor_example_weight=True).validate()
  model = tiny_model("mfrw_mes", advisor_example_weight=True)
  assert model.advisor.example_weight
  assert tiny_model("mfrw_mes").advisor.weight_head is None
  x, y, xm, ym = batches()
  logs = model.train_step(((tf.constant(x), tf.constant(y)),
                           (tf.constant(xm), tf.constant(ym))))
  assert 0.0 < float(logs["example_weight_mean"]) < 1.0
  # The loss the step trains on is the unweighted one times ω.
  forward = model.train_forward(tf.constant(x), tf.constant(y))
  weighted = model._train_loss(forward, tf.constant(y), None)  # pylint: disable=protected-access
  advice = model.advise(forward.features, forward.ce, tf.constant(y))
  model.advisor.weight_head, head = None, model.advisor.weight_head
  try:
    plain = model._train_loss(forward, tf.constant(y), None)  # pylint: disable=protected-access
  finally:
    model.advisor.weight_head = head
  omega = np.asarray(advice["weight"])
  np.testing.assert_allclose(weighted.losses,
                             omega / omega.mean() * plain.losses, rtol=1e-5)
  # Normalised over the batch: scaling every ω alike changes nothing.
  assert np.std(omega) > 0  # The weights differ between examples.


def test_an_advisor_of_the_thesis_signature_still_fits():
  """A user's advisor layer with `call(features, losses)` (no labels) is
  called as before; one with `label_input` gets the labels."""
  seen = []

  class TwoArgumentAdvisor(layers.AdvisorNetwork):

    def call(self, features, losses):  # pylint: disable=arguments-differ
      seen.append("called")
      return super().call(features, losses)

  keras.utils.set_random_seed(0)
  body = backbones.small_cnn((8, 8, 1), widths=(4, 4, 8))
  head = backbones.linear_head(body.output_shape[-1], 5)
  advisor = TwoArgumentAdvisor(8, 5, embedding_size=6)
  model = model_lib.AdvisorModel(body, head, advisor=advisor, rho=1.0)
  model.compile(optimizer=keras.optimizers.SGD(0.1),
                advisor_optimizer=keras.optimizers.Adam(1e-2))
  logs = _step(model, *batches())
  assert seen and np.isfinite(float(logs["loss"]))
  labelled = tiny_model("mfrw_mes", advisor_label_input=True)
  assert labelled.advisor.label_input
  assert np.isfinite(float(_step(labelled, *batches())["loss"]))
