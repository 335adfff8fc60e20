"""Advisor layers: shapes, ranges, serialization round trips."""

import keras
import numpy as np
import pytest

from advisor_tf import layers


def _round_trip(layer):
  clone = keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(layer))
  assert type(clone) is type(layer)
  assert clone.get_config() == layer.get_config()
  return clone


@pytest.mark.parametrize("mask,classes", [(True, True), (True, False),
                                          (False, True)])
def test_advisor_heads_shapes_and_round_trip(mask, classes):
  advisor = layers.AdvisorNetwork(feature_dim=7, num_classes=3,
                                  embedding_size=5, feature_mask=mask,
                                  class_weights=classes)
  f = np.random.default_rng(0).normal(size=(4, 7)).astype("float32")
  out = advisor(f, np.arange(4, dtype="float32"))
  assert set(out) == ({"mask"} if mask else set()) | (
      {"suppression"} if classes else set())
  if mask:
    assert out["mask"].shape == (4, 7)
  if classes:
    assert out["suppression"].shape == (4, 3)
  for value in out.values():
    assert np.all((value.numpy() > 0) & (value.numpy() < 1))
  # E-sized embeddings, a 2E hidden layer, one head per method.
  assert advisor.hidden.kernel.shape == (10, 10)
  clone = _round_trip(advisor)
  clone(f, np.arange(4, dtype="float32"))
  clone.set_weights(advisor.get_weights())
  for key, value in clone(f, np.arange(4, dtype="float32")).items():
    np.testing.assert_allclose(value, out[key])


def test_label_input_makes_the_advice_depend_on_the_given_label():
  advisor = layers.AdvisorNetwork(feature_dim=7, num_classes=3,
                                  embedding_size=5, label_input=True)
  f = np.random.default_rng(0).normal(size=(4, 7)).astype("float32")
  loss = np.full(4, 0.5, "float32")
  # The same feature and loss, labelled 0 or 2: different advice.
  out = [advisor(np.repeat(f[:1], 4, 0), loss, np.array([c, c, 2, 0]))
         for c in (0, 1)]
  for head in ("mask", "suppression"):
    a, b = (o[head].numpy() for o in out)
    np.testing.assert_allclose(a[2:], b[2:])  # Same labels, same advice.
    assert not np.allclose(a[0], b[0])  # Label 0 against label 1.
  # Three E-sized embeddings before the 2E hidden layer.
  assert advisor.hidden.kernel.shape == (15, 10)
  clone = _round_trip(advisor)
  clone(f, loss, np.arange(4) % 3)
  clone.set_weights(advisor.get_weights())
  for key, value in clone(f, loss, np.arange(4) % 3).items():
    np.testing.assert_allclose(value, advisor(f, loss, np.arange(4) % 3)[key])
  with pytest.raises(ValueError, match="needs the labels"):
    advisor(f, loss)


def test_example_weight_head_reads_one_weight_per_example():
  """`example_weight=True`: a third sigmoid head, one ω in (0, 1) per
  example, read from its loss alone; the other heads are as without it, and
  the layer round-trips through its config."""
  advisor = layers.AdvisorNetwork(feature_dim=7, num_classes=3,
                                  embedding_size=5, example_weight=True)
  rng = np.random.default_rng(0)
  f = rng.normal(size=(4, 7)).astype("float32")
  loss = np.array([0.1, 0.5, 2.0, 4.0], "float32")
  out = advisor(f, loss)
  assert set(out) == {"mask", "suppression", "weight"}
  weight = out["weight"].numpy()
  assert weight.shape == (4,) and ((weight > 0) & (weight < 1)).all()
  assert len(set(np.round(weight, 7))) == 4  # Per example, not one value.
  # A function of the loss alone (Meta-Weight-Net's): another loss, another
  # weight; another feature, the same.
  other = advisor(f, loss[::-1].copy())["weight"].numpy()
  np.testing.assert_allclose(other, weight[::-1], rtol=1e-6)
  np.testing.assert_allclose(advisor(f[::-1].copy(), loss)["weight"], weight,
                             rtol=1e-6)
  assert advisor.weight_head.kernel.shape == (5, 1)
  plain = layers.AdvisorNetwork(feature_dim=7, num_classes=3,
                                embedding_size=5)
  assert plain.weight_head is None and "weight" not in plain(f, loss)
  clone = _round_trip(advisor)
  assert clone.example_weight
  clone(f, loss)
  clone.set_weights(advisor.get_weights())
  np.testing.assert_allclose(clone(f, loss)["weight"], weight, rtol=1e-6)


def test_advisor_argument_errors():
  with pytest.raises(ValueError, match="num_classes"):
    layers.AdvisorNetwork(feature_dim=4, class_weights=True)
  with pytest.raises(ValueError, match="label_input=True needs num_classes"):
    layers.AdvisorNetwork(feature_dim=4, class_weights=False,
                          label_input=True)
  with pytest.raises(ValueError, match="feature_mask, class_weights or "
                     "example_weight"):
    layers.AdvisorNetwork(feature_dim=4, num_classes=2, feature_mask=False,
                          class_weights=False)


def test_meta_weight_net():
  net = layers.MetaWeightNet(hidden_units=8)
  w = net(np.array([0.1, 2.0, 5.0], "float32"))
  assert w.shape == (3,)
  assert np.all((w.numpy() > 0) & (w.numpy() < 1))
  assert _round_trip(net).hidden_units == 8


def test_feature_reweighting_only_in_training():
  layer = layers.FeatureReweighting()
  f = np.ones((2, 3), "float32")
  mask = np.array([[0.0, 0.5, 1.0], [1.0, 1.0, 0.25]], "float32")
  np.testing.assert_allclose(layer(f, mask, training=True), mask)
  np.testing.assert_allclose(layer(f, mask, training=False), f)
  _round_trip(layer)
