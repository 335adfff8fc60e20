"""Property tests: random labels, class counts, noise and imbalance settings
against the invariants of the data protocols."""

import numpy as np
from hypothesis import given, settings, strategies as st

from advisor_tf.data import noise, protocols


@st.composite
def label_arrays(draw):
  num_classes = draw(st.integers(2, 12))
  meta_per_class = draw(st.integers(1, 5))
  counts = draw(st.lists(st.integers(meta_per_class + 1, 80),
                         min_size=num_classes, max_size=num_classes))
  labels = np.repeat(np.arange(num_classes), counts)
  order = np.random.default_rng(draw(st.integers(0, 10**6))).permutation(
      len(labels))
  return labels[order], num_classes, meta_per_class


@settings(max_examples=60, deadline=None)
@given(data=label_arrays(),
       kind=st.sampled_from(noise.NOISE_TYPES),
       rate=st.floats(0.0, 0.95),
       imbalance=st.one_of(st.just(1.0), st.floats(1.0, 300.0)),
       seed=st.integers(0, 2**31 - 1))
def test_protocol_invariants(data, kind, rate, imbalance, seed):
  labels, num_classes, per_class = data
  if kind in ("flip2", "flip3") and num_classes <= int(kind[-1]):
    kind = "flip"
  proto = protocols.Protocol(noise=kind, noise_rate=rate,
                             imbalance_factor=imbalance,
                             meta_per_class=per_class)
  # The "images" instance-dependent noise reads: a vector per example.
  pixels = np.random.default_rng(seed).normal(size=(len(labels), 6))

  def images(indices):
    return iter([pixels[indices]])

  split = protocols.apply(proto, labels, num_classes, seed, images=images)
  # Labels in range; the clean labels are the source's labels.
  assert split.train_labels.min() >= 0
  assert split.train_labels.max() < num_classes
  np.testing.assert_array_equal(labels[split.train_indices],
                                split.train_clean_labels)
  # Meta set: balanced, clean, disjoint from train, no duplicates.
  np.testing.assert_array_equal(
      np.bincount(split.meta_labels, minlength=num_classes),
      [per_class] * num_classes)
  np.testing.assert_array_equal(labels[split.meta_indices], split.meta_labels)
  assert not set(split.meta_indices.tolist()) & set(
      split.train_indices.tolist())
  assert len(set(split.train_indices.tolist())) == len(split.train_indices)
  # Long tail: exactly the prescribed counts of what was left.
  available = np.bincount(labels, minlength=num_classes) - per_class
  np.testing.assert_array_equal(
      np.bincount(split.train_clean_labels, minlength=num_classes),
      protocols.long_tail_counts(available, imbalance)
      if imbalance > 1 else available)
  # Transition matrix is row-stochastic with the asked diagonal, and labels
  # only move where it allows.
  t = split.transition
  np.testing.assert_allclose(t.sum(1), 1.0)
  if kind != "none" and rate > 0:
    moved = split.train_labels != split.train_clean_labels
    assert np.all(t[split.train_clean_labels[moved],
                    split.train_labels[moved]] > 0)
  else:
    np.testing.assert_array_equal(split.train_labels, split.train_clean_labels)
  # Same seed, same split.
  again = protocols.apply(proto, labels, num_classes, seed, images=images)
  np.testing.assert_array_equal(again.train_indices, split.train_indices)
  np.testing.assert_array_equal(again.train_labels, split.train_labels)


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(["flip", "flip2", "flip3", "symmetric"]),
       rate=st.floats(0.05, 0.9), seed=st.integers(0, 2**31 - 1))
def test_realised_noise_rate_close_to_p(kind, rate, seed):
  clean = np.repeat(np.arange(10), 2000)
  rng = np.random.default_rng(seed)
  t = noise.transition_matrix(kind, rate, 10, rng)
  noisy, _ = noise.corrupt(clean, t, rng)
  assert abs(np.mean(noisy != clean) - rate) < 0.02
