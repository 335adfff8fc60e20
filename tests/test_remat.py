"""`--remat=blocks`: the backbone's blocks recomputed instead of kept alive.

A pure memory/time trade: every number of a step (hypergradient, weights,
BatchNorm statistics, optimizer state, logs) equals the plain step's in
float64, and a batch that does not fit ends the command in one line that
names the flags shrinking it."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from advisor_tf import backbones
from advisor_tf import cli
from advisor_tf import config as config_lib
from advisor_tf import model as model_lib
from conftest import assert_mirrored_step_equals_single, batches, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _chain(segments, x):
  for segment in segments:
    x = segment.model(x, training=False)
  return x


@pytest.mark.parametrize("name,shape", [("small_cnn", (8, 8, 1)),
                                        ("small_cnn_auto", (32, 32, 3)),
                                        ("resnet32", (32, 32, 3))])
def test_segments_chain_to_the_backbone_and_share_its_variables(name, shape):
  body = backbones.BACKBONES[name](shape)
  segments = backbones.remat_segments(body)
  assert len(segments) >= 3
  for segment in segments:  # Inputs excluded: at least 3 layers each.
    assert len(segment.model.operations) - 1 >= backbones.REMAT_MIN_LAYERS
  trainable = sorted(i for s in segments for i in s.trainable)
  non_trainable = sorted(i for s in segments for i in s.non_trainable)
  assert trainable == list(range(len(body.trainable_variables)))
  assert non_trainable == list(range(len(body.non_trainable_variables)))
  for segment in segments:  # The same variables, not copies.
    for i, v in zip(segment.trainable, segment.model.trainable_variables):
      assert v is body.trainable_variables[i]
  x = np.random.default_rng(0).random((2,) + shape).astype("float32")
  np.testing.assert_array_equal(np.asarray(_chain(segments, x)),
                                np.asarray(body(x, training=False)))


def test_resnet32_is_cut_at_its_residual_blocks():
  body = backbones.BACKBONES["resnet32"]((32, 32, 3))
  segments = backbones.remat_segments(body)
  ends = [s.model.outputs[0] for s in segments[:-1]]
  names = [t._keras_history.operation.name for t in ends]  # noqa: SLF001
  # The stem, then every residual block (at its sum: its ReLU opens the
  # next segment) but the last, whose segment takes the pooling too.
  assert names == ["stem_relu"] + [
      f"stage{s}_block{b}_add" for s in (1, 2, 3) for b in range(1, 6)][:-1]


def test_a_backbone_without_cuts_is_one_segment():
  inputs = keras.Input((8, 8, 1))
  a = keras.layers.Conv2D(2, 3, padding="same")(inputs)
  b = keras.layers.Conv2D(2, 3, padding="same")(inputs)
  body = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(
      keras.layers.Add()([a, b])))
  segments = backbones.remat_segments(body)
  assert len(segments) == 1 and segments[0].model is body


def _step_numbers(model, steps=2, graph=True):
  """Hypergradient (advisor modes), then `steps` train steps: every variable
  and the last logs, as float64 arrays."""
  out = {}
  x, y, xm, ym = batches(dtype="float64")
  if model.advisor is not None:
    grads, _ = model.meta_gradient(x, y, xm, ym)
    out.update({f"hyper/{i}": np.asarray(g) for i, g in enumerate(grads)})
  step = tf.function(model.train_step) if graph else model.train_step
  for seed in range(steps):
    x, y, xm, ym = batches(seed=seed, dtype="float64")
    logs = step(((tf.constant(x), tf.constant(y)),
                 (tf.constant(xm), tf.constant(ym))))
  out.update({f"logs/{k}": np.asarray(v) for k, v in logs.items()})
  out.update({f"var/{i}": np.asarray(v.numpy())
              for i, v in enumerate(model.variables)})
  out.update({f"opt/{i}": np.asarray(v.numpy())
              for i, v in enumerate(model.optimizer.variables)})
  return out


@pytest.mark.parametrize("mode,fields", [
    ("ce", {}),
    ("mfrw_mes", {}),
    # The speed knobs under remat: the whole suite (test_model,
    # test_hypergradient and test_step_golden check the knobs themselves,
    # and remat with meta_update_every=2, in the fast tier).
    pytest.param("mfrw_mes", {"advice": "lagged"}, marks=pytest.mark.slow),
    pytest.param("mfrw_mes", {"virtual_scope": "last_stage"},
                 marks=pytest.mark.slow),
    pytest.param("mwnet", {}, marks=pytest.mark.slow),
    pytest.param("mfrw_mes", {"meta_update_every": 2},
                 marks=pytest.mark.slow),
])
def test_remat_step_equals_the_plain_step_in_float64(mode, fields):
  keras.config.set_floatx("float64")
  kwargs = dict(mode=mode, rho=0.8, weight_decay=1e-2, momentum=0.9,
                last_stage_prefixes=("conv3", "bn3"), **fields)
  plain = _step_numbers(tiny_model(**kwargs))
  remat = _step_numbers(tiny_model(remat="blocks", **kwargs))
  assert sorted(plain) == sorted(remat)
  for key, value in plain.items():
    # float64 to 1e-10; the logged gradient norm is computed in float32
    # (`model._global_norm`), so to float32's precision.
    tol = 1e-6 if key.endswith("grad_norm") else 1e-10
    np.testing.assert_allclose(remat[key], value, rtol=tol, atol=tol,
                               err_msg=key)


@pytest.mark.slow  # Moved by measured duration (fast tier over budget).
def test_batchnorm_statistics_are_written_once_per_step():
  """The recomputations' statistics are discarded: after steps through
  `fit`'s train function, the moving statistics equal the plain step's —
  and have moved from their initial values (written, once)."""
  keras.config.set_floatx("float64")
  x, y, xm, ym = batches(n=8, m=6, dtype="float64")
  data = tf.data.Dataset.from_tensors(((x, y), (xm, ym))).repeat()
  stats = {}
  for remat in model_lib.REMAT_MODES:
    model = tiny_model("mfrw_mes", remat=remat)
    initial = [v.numpy().copy() for v in model.backbone.non_trainable_variables]
    model.make_train_function()
    iterator = iter(data)
    for _ in range(3):
      model.train_function(iterator)
    stats[remat] = [v.numpy() for v in model.backbone.non_trainable_variables]
    assert all(np.abs(s - i).max() > 1e-3 for s, i in zip(stats[remat],
                                                           initial))
  for plain, remat in zip(stats["none"], stats["blocks"]):
    np.testing.assert_allclose(remat, plain, rtol=1e-12, atol=1e-12)


def test_remat_recomputes_in_the_second_order_pass(monkeypatch):
  """The exact hypergradient under remat runs each segment's backward again
  inside the second-order pass (what it keeps alive is only the segments'
  inputs, weights and output cotangents)."""
  calls = []
  vjp = model_lib._segment_vjp  # noqa: SLF001

  def counted(*args, **kwargs):
    calls.append(args[0])
    return vjp(*args, **kwargs)

  monkeypatch.setattr(model_lib, "_segment_vjp", counted)
  model = tiny_model("mfrw_mes", remat="blocks")
  segments = model._remat_segments()  # noqa: SLF001
  x, y, xm, ym = batches()
  model.meta_gradient(x, y, xm, ym)
  # Per segment: the virtual step's backward, the meta loss' backward, and
  # the second-order pass recomputing the virtual step's backward.
  assert len(segments) == 3
  for segment in segments:
    assert sum(c is segment for c in calls) == 3


@pytest.mark.slow  # Moved by measured duration (fast tier over budget).
@pytest.mark.parametrize("mode", ["ce", "mfrw_mes"])
def test_remat_under_mirrored_strategy_equals_one_device(mode, monkeypatch):
  # Without BatchNorm (whose batch statistics are per replica), cut at every
  # layer: three segments of the two-conv backbone.
  monkeypatch.setattr(backbones, "REMAT_MIN_LAYERS", 1)
  assert len(tiny_model(mode, batchnorm=False, remat="blocks")
             ._remat_segments()) == 3  # noqa: SLF001
  assert_mirrored_step_equals_single(mode, batchnorm=False, lr=0.5,
                                     momentum=0.9, weight_decay=1e-3,
                                     remat="blocks")


@pytest.mark.slow  # An XLA compile: the GPU check's subject.
def test_remat_under_xla_equals_the_plain_step():
  x, y, xm, ym = batches()
  data = ((tf.constant(x), tf.constant(y)), (tf.constant(xm), tf.constant(ym)))
  plain = tiny_model("mfrw_mes", compile_kwargs={"jit_compile": False})
  xla = tiny_model("mfrw_mes", remat="blocks",
                   compile_kwargs={"jit_compile": True})
  tf.function(plain.train_step)(data)
  tf.function(xla.train_step, jit_compile=True)(data)
  for a, b in zip(plain.variables, xla.variables):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5,
                               err_msg=a.path)


def test_remat_is_a_choice_of_the_config_and_the_model():
  assert config_lib.CHOICES["remat"] == model_lib.REMAT_MODES == (
      "none", "blocks")
  assert config_lib.TrainConfig().remat == "none"  # Default off.
  assert "remat" in config_lib.RUN_ONLY_FIELDS  # The same gradients.
  with pytest.raises(ValueError, match="--remat='all' is not allowed"):
    config_lib.TrainConfig(remat="all").validate()
  with pytest.raises(ValueError, match="Unknown remat"):
    model_lib.AdvisorModel(backbones.small_cnn((8, 8, 1)),
                           backbones.linear_head(128, 5), remat="everything")
  model = tiny_model("mfrw_mes", remat="blocks")
  assert model.get_config()["remat"] == "blocks"
  # The cut segments are not tracked: no new variables, nothing new saved.
  assert len(model.variables) == len(tiny_model("mfrw_mes").variables)


_OOM = ("{{function_node __inference_one_step_on_data_4242}} OOM when "
        "allocating tensor with shape[16,256,56,56] and type float on "
        "/job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc"
        "\n\t [[{{node gradient_tape/resnet50/conv2_block1_1_conv/"
        "Conv2DBackpropFilter}}]]\nHint: If you want to see a list of "
        "allocated tensors when OOM happens, add report_tensor_allocations_"
        "upon_oom to RunOptions for current allocation info.")


def test_out_of_memory_is_one_line_naming_the_flags(capsys):
  with pytest.raises(SystemExit) as exit_info:
    with cli.usage_errors(after=lambda: "The run is kept at step 8."):
      raise tf.errors.ResourceExhaustedError(None, None, _OOM)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1
  line = err[0]
  assert "OOM when allocating tensor with shape[16,256,56,56]" in line
  for flag in ("--batch_size", "--virtual_scope", "--remat=blocks"):
    assert flag in line
  assert "GPU_0_bfc" not in line and "Hint" not in line
  assert line.endswith("The run is kept at step 8.")


def test_a_full_disk_stays_a_storage_fault_not_out_of_memory(capsys):
  with pytest.raises(SystemExit):
    with cli.usage_errors():
      raise tf.errors.ResourceExhaustedError(
          None, None, "ckpt_temp/part-0.data: No space left on device")
  line = capsys.readouterr().err.strip()
  assert "No space left on device" in line and "--remat" not in line


@pytest.mark.slow
def test_advisor_train_out_of_memory_is_one_line(tmp_path):
  """advisor-train whose step runs out of memory (simulated: the step raises
  what TensorFlow raises) ends with one line, no traceback."""
  script = textwrap.dedent(f"""
      import sys, tensorflow as tf
      from advisor_tf import model
      def train_step(self, data):
        raise tf.errors.ResourceExhaustedError(None, None, {_OOM!r})
      model.AdvisorModel.train_step = train_step
      from advisor_tf import train
      sys.argv = ["advisor-train"] + sys.argv[1:]
      train.console()
  """)
  proc = subprocess.run(
      [sys.executable, "-c", script, "--flagfile=flags/quickstart.cfg",
       "--telemetry_examples=0", "--noexport", "--remat=blocks",
       f"--workdir={tmp_path / 'run'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  lines = [l for l in proc.stderr.strip().splitlines()
           if l.startswith("advisor-train: error:")]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert "--batch_size" in lines[0] and "--remat=blocks" in lines[0]


def _peak_memory_alone(args, **kwargs):
  """`bench.peak_memory_alone` in a process of its own: the bench defines
  absl flags (`--backbone`, ...) that `advisor-train`'s, imported by other
  test modules of the same pytest process, define too."""
  script = ("import json, sys\nfrom advisor_tf.tools import bench\n"
            "print(json.dumps(bench.peak_memory_alone(*json.loads(sys.argv[1]),"
            " **json.loads(sys.argv[2]))))")
  proc = subprocess.run(
      [sys.executable, "-c", script, json.dumps(args), json.dumps(kwargs)],
      capture_output=True, text=True, timeout=600, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_remat_lowers_the_exact_steps_memory(tmp_path):
  """The bench's memory probe: the exact step with remat keeps less alive
  than without (small CNN, 32×32, batch 64). Remat saves about a quarter
  here (0.73-0.78 of the plain peak over repeated probes on 2 cores); the
  allocator adds a few MiB of noise to either probe, so each side is the
  smaller of two probes and the bound leaves room for that noise."""
  args = ("mfrw_mes", "all", "exact", "small_cnn", 32, 3, 10, 64, 50)
  rows = {remat: [_peak_memory_alone(args, remat=remat) for _ in range(2)]
          for remat in ("none", "blocks")}
  for row in rows["none"] + rows["blocks"]:
    assert row["peak_reset"] and row["baseline_memory_mb"] > 100
  plain, remat = (min(r["peak_memory_mb"] for r in rows[k])
                  for k in ("none", "blocks"))
  assert remat < 0.85 * plain, json.dumps(rows)
