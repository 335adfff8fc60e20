"""tf.distribute strategies by name.

`mirrored`: all GPUs of this host (or the CPU when there is none).
`multi_worker`: several hosts (or processes), configured by the `TF_CONFIG`
environment variable as TensorFlow documents; every worker runs the same
command with the same --workdir (a folder all hosts see). Every worker
computes and saves alike (a save may read values through collectives), but
only the chief — task `chief`, or `worker` 0 when the cluster has no chief —
writes the workdir; the others write into a scratch folder that is deleted.
A restarted job resumes from the chief's newest checkpoint on every worker.
The strategy must exist before TensorFlow runs its first op, so `trainer`
creates it first.
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


def writes_workdir(strategy):
  """Whether this process writes the run's workdir: yes, except for the
  non-chief workers of a multi-worker job."""
  return strategy.extended.should_checkpoint
