"""tf.distribute strategies by name.

`mirrored`: all GPUs of this host (or the CPU when there is none).
`multi_worker`: several hosts, configured by the `TF_CONFIG` environment
variable as TensorFlow documents; every worker runs the same command.
Build the model, both optimizers, metrics and checkpoints under
`strategy.scope()`; `AdvisorModel` scales its losses by the replica count and
averages the virtual step's gradients across replicas itself.
"""

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def get_strategy(name):
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    if not tf.config.list_physical_devices("GPU"):
      # CPU replicas: TF's CPU collectives can mis-order the several
      # all-reduces of one meta step; reduce through one device instead.
      # Every logical CPU device is a replica (one, unless configured).
      return tf.distribute.MirroredStrategy(
          [d.name for d in tf.config.list_logical_devices("CPU")],
          cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"--strategy={name!r} is not allowed; choose one of: "
                   f"{', '.join(STRATEGIES)}.")
