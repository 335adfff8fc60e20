"""Baseline losses (balanced softmax, equalization, focal) against hand
values."""

import numpy as np

from advisor_tf import losses


def test_balanced_softmax_hand_value():
  # logits 0, counts (1, 3): p_0 = 1/(1+3) → loss ln 4.
  got = losses.balanced_softmax(np.array([0]), np.zeros((1, 2)),
                                np.array([1, 3]))
  np.testing.assert_allclose(got, [np.log(4.0)], rtol=1e-6)


def test_equalization_softmax_hand_value():
  # counts (90, 10): class 1 is rare below λ = 0.2, so for a class-0 example
  # its logit is dropped from the denominator: loss = −z_0 + log e^{z_0} = 0.
  logits = np.array([[1.0, 3.0]])
  got = losses.equalization_softmax(np.array([0]), logits, [90, 10], 0.2)
  np.testing.assert_allclose(got, [0.0], atol=1e-6)
  # For the rare class's own example nothing is dropped: plain CE.
  got = losses.equalization_softmax(np.array([1]), logits, [90, 10], 0.2)
  np.testing.assert_allclose(got, [np.log(1 + np.exp(-2.0))], rtol=1e-6)


def test_focal_hand_value():
  # p_y = 1/2 with γ = 2: (1/2)² · ln 2.
  got = losses.focal(np.array([1]), np.zeros((1, 2)), 2.0)
  np.testing.assert_allclose(got, [0.25 * np.log(2.0)], rtol=1e-6)


# -------------------------------------------------------------- evaluation
