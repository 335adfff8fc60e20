import hashlib
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The image-decode cache (advisor_tf.data.sources.inspect_files) of the
# tests' generated folders stays out of the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="advisor_tf_cache_")

import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so that MirroredStrategy can be tested on one CPU.
# Must happen before TensorFlow initialises its runtime.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from advisor_tf import backbones  # noqa: E402
from advisor_tf import builder  # noqa: E402
from advisor_tf import config as config_lib  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras():
  keras.backend.clear_session()
  keras.config.set_floatx("float32")
  yield
  keras.config.set_floatx("float32")


def no_bn_cnn(widths=(4, 8)):
  """Conv + ReLU layers and pooling: a backbone without BatchNorm."""
  inputs = keras.Input((8, 8, 1))
  x = inputs
  for i, w in enumerate(widths):
    x = keras.layers.Conv2D(w, 3, strides=1 + i, padding="same",
                            activation="relu", name=f"conv{i + 1}")(x)
  return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def tiny_model(mode, num_classes=5, rho=1.0, seed=0, lr=0.5, widths=(4, 4, 8),
               embedding_size=6, weight_decay=0.0, momentum=0.0,
               batchnorm=True, compile_kwargs=None, precision="float32",
               class_counts=None, last_stage_prefixes=None, **config_fields):
  """A small CNN on 8×8×1 inputs with a tiny advisor, built and compiled by
  `builder.build_model` (as training does) at a constant learning rate;
  advisor Adam at 1e-2. `config_fields` are further `TrainConfig` fields
  (virtual_scope, meta_update_every, advice, ...)."""
  keras.utils.set_random_seed(seed)
  body = (backbones.small_cnn((8, 8, 1), widths=widths) if batchnorm
          else no_bn_cnn(widths[:2]))
  head = backbones.linear_head(body.output_shape[-1], num_classes)
  jit = (compile_kwargs or {}).get("jit_compile", "auto")
  config = config_lib.TrainConfig(
      method=mode, rho=rho, seed=seed, lr=lr, lr_schedule="constant",
      momentum=momentum, weight_decay=weight_decay,
      embedding_size=embedding_size, advisor_lr=1e-2, precision=precision,
      jit_compile=str(jit).lower(), **config_fields).validate()
  return builder.build_model(config, (8, 8, 1), num_classes,
                             class_counts=class_counts, classifier=(body, head),
                             last_stage_prefixes=last_stage_prefixes)


def batches(num_classes=5, n=12, m=10, seed=0, dtype="float32"):
  rng = np.random.default_rng(seed)
  return (rng.random((n, 8, 8, 1)).astype(dtype),
          rng.integers(0, num_classes, n),
          rng.random((m, 8, 8, 1)).astype(dtype),
          rng.integers(0, num_classes, m))


def directional_check(model, x, y, xm, ym, direction, eps=1e-5):
  """(analytic, central-difference) derivative of L_meta along `direction`
  (one array per advisor variable); the advisor is restored afterwards."""
  grads, _ = model.meta_gradient(x, y, xm, ym)
  variables = model.advisor.trainable_variables
  original = [v.numpy() for v in variables]

  def meta_loss_at(step):
    for v, o, d in zip(variables, original, direction):
      v.assign(o + step * d)
    value = float(model.meta_gradient(x, y, xm, ym)[1])
    for v, o in zip(variables, original):
      v.assign(o)
    return value

  numeric = (meta_loss_at(eps) - meta_loss_at(-eps)) / (2 * eps)
  analytic = sum(float(np.sum(np.asarray(g) * d))
                 for g, d in zip(grads, direction))
  return analytic, numeric


def snapshot(directory):
  """Every file under `directory` → the SHA-256 of its bytes (to assert a
  refused run changed nothing)."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[path] = hashlib.sha256(f.read()).hexdigest()
  return out


def assert_mirrored_step_equals_single(mode, **model_kwargs):
  """One train step on two CPU replicas (MirroredStrategy) leaves the same
  variables as one step on one device with the same global batch."""
  devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
  assert len(devices) == 2
  x, y, xm, ym = batches(n=8, m=6)
  data = tf.data.Dataset.from_tensors(((x, y), (xm, ym)))
  single = tiny_model(mode, **model_kwargs)
  tf.function(single.train_step)(next(iter(data)))
  strategy = tf.distribute.MirroredStrategy(
      devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
  with strategy.scope():
    mirrored = tiny_model(mode, **model_kwargs)
  batch = next(iter(strategy.experimental_distribute_dataset(data)))

  @tf.function
  def step(batch):
    return strategy.run(mirrored.train_step, args=(batch,))

  step(batch)
  for a, b in zip(single.variables, mirrored.variables):
    b = strategy.experimental_local_results(b)[0] if hasattr(
        b, "values") else b
    np.testing.assert_allclose(np.asarray(b), a.numpy(), rtol=1e-5, atol=1e-6,
                               err_msg=a.path)
