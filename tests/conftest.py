import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from advisor_tf import backbones  # noqa: E402
from advisor_tf import model as model_lib  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras():
  keras.backend.clear_session()
  keras.config.set_floatx("float32")
  yield
  keras.config.set_floatx("float32")


def tiny_model(mode, num_classes=5, rho=1.0, seed=0, lr=0.5, widths=(4, 4, 8),
               embedding_size=6, weight_decay=0.0, momentum=0.0):
  """A small CNN on 8×8×1 inputs with a tiny advisor, compiled."""
  keras.utils.set_random_seed(seed)
  body = backbones.small_cnn((8, 8, 1), widths=widths)
  head = backbones.linear_head(widths[-1], num_classes)
  model = model_lib.AdvisorModel(body, head, mode=mode, rho=rho, seed=seed,
                                 embedding_size=embedding_size)
  model.compile(optimizer=keras.optimizers.SGD(lr, momentum=momentum),
                advisor_optimizer=keras.optimizers.Adam(1e-2),
                weight_decay=weight_decay)
  return model


def batches(num_classes=5, n=12, m=10, seed=0, dtype="float32"):
  rng = np.random.default_rng(seed)
  return (rng.random((n, 8, 8, 1)).astype(dtype),
          rng.integers(0, num_classes, n),
          rng.random((m, 8, 8, 1)).astype(dtype),
          rng.integers(0, num_classes, m))
