"""--strategy=multi_worker: two worker processes on localhost, configured by
TF_CONFIG as on two hosts, train MFRW-MES on digits.

Two references:

* For what a job computes: one process with the same global batch on two
  replicas (MirroredStrategy over conftest's two logical CPUs). A
  multi-worker job with one replica per worker computes the same
  mathematics — the same per-replica halves of each global batch (BatchNorm
  statistics are per replica in both) and the same all-reduced gradients
  and hypergradients — but in other processes, thread pools and collective
  kernels, so the two agree to float32 rounding, not bit for bit (measured:
  at most 1.2e-7 on any tensor over the first 8 steps). Training amplifies
  rounding: once a unit's pre-activation sits within rounding of a ReLU's
  kink, the two runs take visibly different steps (in the killed job's
  configuration, at step 9: 3e-5, growing to 1e-2 by step 32). So this
  comparison is short (6 steps).
* For resuming: an uninterrupted job of the same workers. A multi-worker
  job is deterministic (the same job twice gives bit-identical
  checkpoints), so a killed and resumed one must equal it bit for bit —
  weights, BatchNorm statistics, both optimizers' slots and the β draws'
  state — exactly as the single-process resume test asserts.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from advisor_tf import config as config_lib
from advisor_tf import trainer

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = dict(dataset="digits", method="mfrw_mes", backbone="small_cnn",
                noise="flip", noise_rate=0.4, batch_size=32,
                meta_batch_size=20, embedding_size=8, lr_decay_epochs=(1,),
                telemetry_examples=0, export=False, verbose=0)


def _config(workdir, **changes):
  return dataclasses.replace(config_lib.TrainConfig(**SETTINGS),
                             workdir=str(workdir), **changes)


def _flags(config):
  args = []
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if value is None or field.name == "strategy":
      continue
    if isinstance(value, tuple):
      if not value:
        continue
      value = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
      value = str(value).lower()
    args.append(f"--{field.name}={value}")
  return args + ["--strategy=multi_worker"]


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start_workers(config, logs):
  """Two `advisor-train` workers of one job; worker 0 is the chief."""
  cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
  procs = []
  for index in range(2):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    log = open(logs / f"worker{index}.log", "ab")  # noqa: SIM115
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "advisor_tf.train", *_flags(config)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def _wait(procs, logs, timeout=300):
  try:
    for index, proc in enumerate(procs):
      rc = proc.wait(timeout=timeout)
      assert rc == 0, (logs / f"worker{index}.log").read_text()[-3000:]
  finally:
    for proc in procs:  # A failed worker leaves the other waiting for it.
      if proc.poll() is None:
        proc.kill()
        proc.wait()


def _final_weights(workdir):
  reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
  return {key: reader.get_tensor(key)
          for key in reader.get_variable_to_shape_map()
          if not key.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def _assert_same_weights(got, want):
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5,
                               err_msg=key)


def _reference(tmp_path, **changes):
  """The same run in this process: one process, two replicas."""
  config = _config(tmp_path / "single", strategy="mirrored", **changes)
  metrics = trainer.train(config)
  return metrics, _final_weights(config.workdir)


def test_multi_worker_training_equals_one_process_with_the_same_batch(
    tmp_path):
  config = _config(tmp_path / "job", epochs=2, steps_per_epoch=3)
  procs = _start_workers(config, tmp_path)
  _wait(procs, tmp_path)
  with open(os.path.join(config.workdir, "metrics.json")) as f:
    metrics = json.load(f)
  want_metrics, want = _reference(tmp_path, epochs=2, steps_per_epoch=3)
  assert metrics["train/steps"] == want_metrics["train/steps"] == 6
  _assert_same_weights(_final_weights(config.workdir), want)
  assert metrics["test/top1"] == pytest.approx(want_metrics["test/top1"])


def test_multi_worker_job_killed_mid_run_resumes_from_the_chiefs_checkpoint(
    tmp_path):
  changes = dict(epochs=4, steps_per_epoch=8, lr_decay_epochs=(3,),
                 checkpoint_every=2)
  straight = _config(tmp_path / "straight", **changes)
  (tmp_path / "straight_logs").mkdir()
  _wait(_start_workers(straight, tmp_path / "straight_logs"),
        tmp_path / "straight_logs")

  config = _config(tmp_path / "job", **changes)
  ckpt_dir = os.path.join(config.workdir, "checkpoints")
  procs = _start_workers(config, tmp_path)
  chief_pids = {str(procs[0].pid)}
  deadline = time.time() + 300
  while not (tf.train.latest_checkpoint(ckpt_dir) or "").endswith(
      ("-4", "-6", "-8")):
    assert time.time() < deadline and all(p.poll() is None for p in procs), (
        (tmp_path / "worker0.log").read_text()[-3000:])
    time.sleep(0.05)
  for proc in procs:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert not os.path.exists(os.path.join(config.workdir, "metrics.json"))
  killed_at = int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])
  assert 0 < killed_at < 32

  procs = _start_workers(config, tmp_path)
  chief_pids.add(str(procs[0].pid))
  _wait(procs, tmp_path)
  with open(os.path.join(config.workdir, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["train/steps"] == 32
  assert killed_at <= metrics["resumed_from_step"] < 32
  for index in range(2):
    log = (tmp_path / f"worker{index}.log").read_text()
    assert f"Resuming from {ckpt_dir}" in log, log[-3000:]
  # Bit for bit the uninterrupted job: every checkpointed tensor (weights,
  # BatchNorm statistics, both optimizers' slots and step counters, the β
  # draws' seed state), as the single-process resume test asserts.
  want, got = _final_weights(straight.workdir), _final_weights(config.workdir)
  assert set(got) == set(want)
  assert any(key.startswith("optimizer/") for key in want)
  assert any(key.startswith("advisor_optimizer/") for key in want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  with open(os.path.join(straight.workdir, "metrics.json")) as f:
    assert metrics["test/top1"] == json.load(f)["test/top1"]
  # Only the chief wrote the workdir: the TensorBoard event files carry the
  # writing process's id, and every one is a chief's (of either launch).
  events = [name for _, _, names in os.walk(
      os.path.join(config.workdir, "tensorboard")) for name in names
            if ".tfevents." in name]
  assert events
  assert {e.split(".")[-3] for e in events} <= chief_pids, events
