r"""Step-time benchmark of every method on identical data and weights.

  python -m advisor_tf.tools.bench --backbone=resnet32 --batch_size=128 \
      --meta_batch_size=100 --methods=ce,mwnet,mfrw_mes \
      --virtual_scopes=all,head --json=out.json

All models are built from one seed in one process and timed round-robin
(`--rounds` rounds of `--steps` steps each, after `--warmup` untimed steps), so
the ratios to the `ce` step are measured side by side under the same machine
load. Prints a table and writes JSON:
`{"results": [{"method", "virtual_scope", "median_s", "p10_s", "p90_s",
"ratio_to_ce", "images_per_s", "peak_mem_mib"}, ...], "device", "jit_compile",
"precision", "strategy", ...}`.

Peak memory: on a GPU, TensorFlow's allocator peak for that model's steps; on
CPU, the growth of the process's resident-set high-water mark while that
model was first built and run (later models reuse freed memory, so CPU figures
are upper-bound-ish indications, not allocator-exact).

The memory sweep of the exact step and its cheaper variants (issue #24):

  python -m advisor_tf.tools.bench --sweep --methods=ce,mfrw_mes \
      --virtual_scopes=all,head --advice=exact,lagged --remat=none,blocks \
      --sweep_groups='[["small_cnn", 32, 3, 10, [128], 100],
                       ["resnet32", 32, 3, 10, [128], 100],
                       ["resnet50", 224, 3, 14, [16], null]]' \
      --steps=2 --rounds=3 --warmup=1 \
      --json=results/bench_memory.json --plot=results/bench_memory.png

times ce, exact, exact+remat, lagged and head round-robin per group, and
measures each one's step memory in a fresh process (`peak_memory_alone`: VmHWM
over a step less the runtime's baseline after a warm-up step).
"""

import json
import os
import resource
import time

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from advisor_tf import backbones  # noqa: E402
from advisor_tf import builder  # noqa: E402
from advisor_tf import config as config_lib  # noqa: E402
from advisor_tf import distribute  # noqa: E402
from advisor_tf import model as model_lib  # noqa: E402
from advisor_tf.tools import timing  # noqa: E402

_BACKBONE = flags.DEFINE_string("backbone", "resnet32", "Backbone name.")
_INPUT = flags.DEFINE_integer("input_size", 32, "Square input side.")
_CHANNELS = flags.DEFINE_integer("channels", 3, "Input channels.")
_CLASSES = flags.DEFINE_integer("num_classes", 10, "Classes.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Train batch size.")
_META_BATCH = flags.DEFINE_integer("meta_batch_size", 100, "Meta batch size.")
_METHODS = flags.DEFINE_list("methods", ["ce", "mwnet", "mfrw_mes"],
                             "Methods to time (ce is always included).")
_SCOPES = flags.DEFINE_list("virtual_scopes", ["all"],
                            "Virtual scopes for the advisor methods.")
_ADVICE = flags.DEFINE_list("advice", ["exact"],
                            "Advice modes for the advisor methods (exact, "
                            "lagged).")
_REMAT = flags.DEFINE_list("remat", ["none"],
                           "Rematerialisation modes (none, blocks); with "
                           "--sweep a variant of the exact step.")
_META_EVERY = flags.DEFINE_integer("meta_update_every", 1,
                                   "Advisor update period k.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Round-robin rounds.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps (trace, compile).")
_JIT = flags.DEFINE_bool("jit_compile", False, "XLA-compile the steps.")
_PRECISION = flags.DEFINE_enum(
    "precision", "float32", config_lib.CHOICES["precision"],
    "Keras dtype policy of backbone and head.")
_STRATEGY = flags.DEFINE_enum("strategy", "default",
                              config_lib.CHOICES["strategy"],
                              "tf.distribute strategy.")
_INTRA = flags.DEFINE_integer(
    "intra_op_threads", 0, "Threads inside one op (0: TensorFlow's choice, "
    "the core count).", lower_bound=0)
_INTER = flags.DEFINE_integer(
    "inter_op_threads", 0, "Ops run side by side (0: TensorFlow's choice).",
    lower_bound=0)
_CE_SETTINGS = flags.DEFINE_bool(
    "ce_settings", False, "Tune the floor of everything: time the CE step "
    "alone under each CPU setting (threads, oneDNN, XLA, bfloat16), each in "
    "fresh processes, rounds interleaved; prints each setting's time and its "
    "ratio to TensorFlow's defaults.")
_SWEEP = flags.DEFINE_bool(
    "sweep", False, "Cost curves instead of one table: ce and, per advisor "
    "method, the exact step and each --virtual_scopes / --advice / --remat "
    "value off it alone, over batch sizes 32-256 on small_cnn and resnet32 "
    "(CIFAR inputs) and the Clothing1M ResNet-50 at 224 (batch 8, 16); time "
    "per step round-robin per group, step memory above the runtime's "
    "baseline per variant in a fresh process.")
_SWEEP_GROUPS = flags.DEFINE_string(
    "sweep_groups", None, "With --sweep: other groups, as JSON "
    "[[backbone, input_size, channels, classes, [batch sizes], meta batch "
    "or null], ...].")
_PLOT = flags.DEFINE_string("plot", None, "With --sweep: draw the curves "
                            "(time and peak memory against batch size) here.")
_MEMORY_OF = flags.DEFINE_string(
    "memory_of", None, "Internal (--sweep): build METHOD:SCOPE:ADVICE:REMAT "
    "alone, run --warmup steps, then --steps more and print their peak "
    "memory above the runtime's baseline as JSON.")
_VARIANTS = flags.DEFINE_string(
    "variants", None, "Internal (--sweep): the variants to time, as JSON "
    "[[method, virtual_scope, advice, remat], ...].")
_JSON = flags.DEFINE_string("json", None, "Write the results here.")
_PROFILE = flags.DEFINE_string(
    "profile", None, "Also write a TensorBoard profiler trace of three steps "
    "of the --breakdown method (or mfrw_mes) to this folder.")
_BREAKDOWN = flags.DEFINE_string(
    "breakdown", None, "Also time where this method's step goes: the "
    "floor parts alone (train and meta forward+backward, hypergradient, "
    "second-order term) and the model's phases (train_forward, "
    "virtual_step, meta_step, actual_step), per --advice.")


def _count_traces(model):
  """Counts the traces of the model's train step: Python runs `train_step`
  only while TensorFlow traces it, so more than one trace per replica means
  the step retraces."""
  count = [0]
  step = model.train_step

  def counted(data):
    count[0] += 1
    return step(data)

  model.train_step = counted
  return count


def _peak_mib(device_is_gpu):
  if device_is_gpu:
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
  # This process's own high-water mark: VmHWM belongs to its address space,
  # whereas Linux carries ru_maxrss over from the parent through fork/exec.
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_config(method, backbone, scope="all", advice="exact",
                 meta_update_every=1, jit_compile=False, precision="float32",
                 strategy="default", remat="none"):
  """The `TrainConfig` a bench row builds its model from (the training
  defaults, with the CIFAR optimiser of the thesis: SGD 0.1, momentum 0.9,
  weight decay 5e-4, constant rate; advisor Adam 1e-4)."""
  advisor = method in model_lib.ADVISOR_MODES
  return config_lib.TrainConfig(
      method=method, backbone=backbone, seed=0,
      virtual_scope=scope if advisor else "all",
      advice=advice if advisor else "exact",
      meta_update_every=meta_update_every if advisor else 1,
      remat=remat, lr=0.1, momentum=0.9, weight_decay=5e-4,
      lr_schedule="constant",
      advisor_lr=1e-4, precision=precision, strategy=strategy,
      jit_compile="true" if jit_compile else "false").validate()


def run(methods, scopes, backbone, input_size, channels, num_classes,
        batch_size, meta_batch_size, steps, rounds, warmup, jit_compile,
        precision, strategy_name, meta_update_every=1, advice=("exact",),
        remat=("none",), variants=None):
  """Times every variant round-robin; `variants` (METHOD, SCOPE, ADVICE,
  REMAT) tuples, else ce and every combination of `scopes`, `advice` and
  `remat` for each advisor method."""
  keras.mixed_precision.set_dtype_policy(precision)
  strategy = distribute.get_strategy(strategy_name)
  gpu = bool(tf.config.list_physical_devices("GPU"))
  rng = np.random.default_rng(0)
  shape = (input_size, input_size, channels)
  data = ((rng.random((batch_size,) + shape, np.float32),
           rng.integers(0, num_classes, batch_size)),
          (rng.random((meta_batch_size,) + shape, np.float32),
           rng.integers(0, num_classes, meta_batch_size)))
  dataset = tf.data.Dataset.from_tensors(data).repeat()
  if variants is None:
    variants = [("ce", "all", "exact", "none")] + [
        (m, s, a, r) for m in methods if m != "ce"
        for s in (scopes if m in model_lib.ADVISOR_MODES else ["all"])
        for a in (advice if m in model_lib.ADVISOR_MODES else ["exact"])
        for r in remat]
  runners = []
  for method, scope, adv, rem in variants:
    config = bench_config(method, backbone, scope, adv, meta_update_every,
                          jit_compile, precision, strategy_name, rem)
    mem_before = _peak_mib(gpu)
    if gpu:
      tf.config.experimental.reset_memory_stats("GPU:0")
    with strategy.scope():
      keras.utils.set_random_seed(0)  # Identical weights for every model.
      model = builder.build_model(config, shape, num_classes,
                                  class_counts=[batch_size] * num_classes)
    traces = _count_traces(model)
    model.make_train_function()
    train_function = model.train_function
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    for _ in range(warmup):
      timing.sync(train_function(iterator))
    peak = _peak_mib(gpu) - (0.0 if gpu else mem_before)
    runners.append({"method": method, "virtual_scope": scope, "advice": adv,
                    "remat": rem,
                    "step": lambda f=train_function, it=iterator:
                    timing.sync(f(it)),
                    "traces": traces,
                    "times": [], "peak_mem_mib": round(peak, 1)})
  timing.round_robin(runners, rounds, steps)
  ce_median = float(np.median(runners[0]["times"]))
  results = []
  for r in runners:
    t = np.asarray(r["times"])
    median = float(np.median(t))
    results.append({
        "method": r["method"], "virtual_scope": r["virtual_scope"],
        "advice": r["advice"], "remat": r["remat"],
        "seconds_per_step": round(median, 5),
        "peak_memory_mb": r["peak_mem_mib"],
        "median_s": round(median, 5),
        "p10_s": round(float(np.percentile(t, 10)), 5),
        "p90_s": round(float(np.percentile(t, 90)), 5),
        "ratio_to_ce": round(median / ce_median, 3),
        "images_per_s": round(batch_size / median, 1),
        "peak_mem_mib": r["peak_mem_mib"],
        # 1 unless the step retraces (a new graph per call would show here).
        "traces": r["traces"][0]})
  device = (tf.config.experimental.get_device_details(
      tf.config.list_physical_devices("GPU")[0]).get("device_name", "GPU")
            if gpu else f"CPU ({os.cpu_count()} cores)")
  return {"results": results, "device": device, "jit_compile": jit_compile,
          "precision": precision, "strategy": strategy_name,
          "replicas": strategy.num_replicas_in_sync, "backbone": backbone,
          "batch_size": batch_size, "meta_batch_size": meta_batch_size,
          "meta_update_every": meta_update_every,
          "steps_timed": steps * rounds}


def breakdown(method, backbone, input_size, channels, num_classes, batch_size,
              meta_batch_size, repeats=5, advice="exact", scope="all"):
  """Where the time of one step goes, one device, float32 (median seconds).

  `floor/*` are the unavoidable parts measured alone: the train batch's
  forward+backward (the virtual step's backward; the actual step's is the
  same size), the meta batch's forward+backward at ŵ, and the hypergradient
  (steps 1–3: forward, virtual backward, meta forward+backward and the
  second-order pass), whose excess over the first two is the second-order
  term. `phase/*` split the real `train_step` into the model's named phases by
  running its prefix up to each phase: `train_forward`, `virtual_step`
  (under the meta tape), `meta_step` (with the advisor's update),
  `actual_step` (backward, weight decay, optimizer update, BatchNorm commit).
  `overhead` is the whole step minus the sum of the floor parts (the
  hypergradient, plus one more train backward for the actual step).
  """
  rng = np.random.default_rng(0)
  shape = (input_size, input_size, channels)
  x = tf.constant(rng.random((batch_size,) + shape, np.float32))
  y = tf.constant(rng.integers(0, num_classes, batch_size), tf.int32)
  xm = tf.constant(rng.random((meta_batch_size,) + shape, np.float32))
  ym = tf.constant(rng.integers(0, num_classes, meta_batch_size), tf.int32)
  keras.utils.set_random_seed(0)
  model = builder.build_model(bench_config(method, backbone, scope, advice),
                              shape, num_classes,
                              class_counts=[batch_size] * num_classes)
  variables = model.classifier_variables

  def grads_on(images, labels):
    with tf.GradientTape() as tape:
      logits = model.head(model.backbone(images, training=True))
      loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
          labels, logits, from_logits=True))
    return tape.gradient(loss, variables)

  def up_to_virtual():
    beta = model._beta(batch_size)  # noqa: SLF001 — the step's own draws.
    with tf.GradientTape():
      forward = model.train_forward(x, y)
      return model.virtual_step(forward, y, beta).fast_weights

  def up_to_meta():
    beta = model._beta(batch_size)  # noqa: SLF001
    forward = model.train_forward(x, y)
    return model.meta_step(forward, y, xm, ym, beta)[1].meta_loss

  phases = {
      "floor/train forward": lambda: model.backbone(x, training=True),
      "floor/train forward+backward": lambda: grads_on(x, y),
      "floor/meta forward+backward": lambda: grads_on(xm, ym),
      "phase/train_forward": lambda: model.train_forward(x, y).logits,
      "whole step": lambda: model.train_step(((x, y), (xm, ym))),
  }
  if model.advisor is not None:
    phases.update({
        "floor/hypergradient (steps 1-3)":
            lambda: model.meta_gradient(x, y, xm, ym)[0],
        "phase/+virtual_step": up_to_virtual,
        "phase/+meta_step": up_to_meta,
    })
  out = {}
  for name, fn in phases.items():
    fn = tf.function(fn, autograph=False)
    for _ in range(2):
      tf.nest.map_structure(np.asarray, fn())
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      tf.nest.map_structure(np.asarray, fn())
      times.append(time.perf_counter() - start)
    out[name] = round(float(np.median(times)), 4)
  if model.advisor is not None:
    hyper = out["floor/hypergradient (steps 1-3)"]
    out["floor/second-order term"] = round(
        hyper - out["floor/train forward+backward"]
        - out["floor/meta forward+backward"], 4)
    actual_backward = (0.0 if advice == "lagged" else
                       out["floor/train forward+backward"]
                       - out["floor/train forward"])
    out["floor/sum"] = round(hyper + actual_backward, 4)
    out["overhead above the floor"] = round(out["whole step"]
                                            - out["floor/sum"], 4)
  return out


def profile(log_dir, method, backbone, input_size, channels, num_classes,
            batch_size, meta_batch_size, steps=3, advice="exact"):
  """Writes a TensorBoard profiler trace of `steps` train steps (after two
  untimed ones) to `log_dir` (TensorBoard's Profile tab)."""
  rng = np.random.default_rng(0)
  shape = (input_size, input_size, channels)
  data = ((tf.constant(rng.random((batch_size,) + shape, np.float32)),
           tf.constant(rng.integers(0, num_classes, batch_size), tf.int32)),
          (tf.constant(rng.random((meta_batch_size,) + shape, np.float32)),
           tf.constant(rng.integers(0, num_classes, meta_batch_size),
                       tf.int32)))
  keras.utils.set_random_seed(0)
  model = builder.build_model(bench_config(method, backbone, advice=advice),
                              shape, num_classes,
                              class_counts=[batch_size] * num_classes)
  step = tf.function(model.train_step)
  for _ in range(2):
    timing.sync(step(data))
  tf.profiler.experimental.start(log_dir)
  try:
    for i in range(steps):
      with tf.profiler.experimental.Trace("train", step_num=i, _r=1):
        timing.sync(step(data))
  finally:
    tf.profiler.experimental.stop()
  return log_dir


# (backbone, input side, channels, classes, batch sizes, meta batch) of the
# cost curves; the meta batch of a None entry is the train batch.
SWEEP_GROUPS = (("small_cnn", 32, 3, 10, (32, 64, 128, 256), 100),
                ("resnet32", 32, 3, 10, (32, 64, 128, 256), 100),
                ("resnet50", 224, 3, 14, (8, 16), None))


# The sweep's variants of each advisor method (one knob off the exact step at
# a time): (virtual_scope, advice, remat).
SWEEP_VARIANTS = (("all", "exact", "none"), ("all", "exact", "blocks"),
                  ("all", "lagged", "none"), ("head", "exact", "none"))


def _status_mib(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024.0
  raise OSError(f"/proc/self/status has no {field}")


# The memory probe's process: TensorFlow's plain CPU allocator (with oneDNN,
# TensorFlow's default on x86, tensors come from a BFC allocator that keeps
# every region it grew, so the resident set would stay at the first step's
# peak), and glibc returning every freed block of 64 KiB or more (it
# otherwise raises its mmap threshold after the first frees, up to 32 MiB,
# and keeps freed tensors in its heap): the resident set then follows the
# live tensors, and a step's high-water mark is what that step kept alive.
PROBE_ENV = {"TF_ENABLE_ONEDNN_OPTS": "0", "MALLOC_MMAP_THRESHOLD_": "65536"}


def _reset_peak():
  """Resets this process's VmHWM to its current resident set (Linux >= 4.0:
  `echo 5 > /proc/self/clear_refs`); False where that is refused."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def variant_label(method, scope, advice, remat):
  """`ce`; an advisor method's `exact`, `exact+remat`, `lagged`, `head`, ...
  (the knobs off the exact step)."""
  if method not in model_lib.ADVISOR_MODES:
    return method
  label = advice
  if scope != "all":
    label = scope if advice == "exact" else f"{advice}+{scope}"
  if remat != "none":
    label += "+remat" if remat == "blocks" else f"+remat={remat}"
  return label


def peak_memory_alone(method, scope, advice, backbone, input_size, channels,
                      num_classes, batch_size, meta_batch_size, warmup=1,
                      remat="none", steps=1):
  """Memory of this one model's train steps, by a fresh process (under
  `PROBE_ENV`) that builds it alone and runs `warmup` steps (tracing, graph
  optimisation, first allocations), resets its high-water mark and runs
  `steps` more. Returns, in MiB: `baseline_memory_mb`, the runtime's
  baseline: the resident set after the warm-up (TensorFlow, the model, its
  optimizer state, the traced and optimised step, the input pipeline);
  `peak_memory_mb`, the VmHWM over the later steps less that baseline (what
  a step keeps alive at its peak: on a GPU, the device memory it needs);
  `warmup_growth_mb`, what the warm-up added to the resident set of the
  built model (mostly the traced step's graph, host memory on any device);
  `peak_reset`, False where the kernel refused the reset (the peak then
  includes the warm-up's)."""
  import subprocess
  import sys
  proc = subprocess.run(
      [sys.executable, "-m", "advisor_tf.tools.bench",
       f"--memory_of={method}:{scope}:{advice}:{remat}",
       f"--backbone={backbone}",
       f"--input_size={input_size}", f"--channels={channels}",
       f"--num_classes={num_classes}", f"--batch_size={batch_size}",
       f"--meta_batch_size={meta_batch_size}", f"--warmup={warmup}",
       f"--steps={steps}"],
      capture_output=True, text=True, check=False,
      env=dict(os.environ, **PROBE_ENV))
  if proc.returncode:
    raise RuntimeError(f"memory probe of {method}/{scope}/{advice}/{remat} "
                       f"failed: {proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_probe(spec):
  method, scope, advice, remat = (spec.split(":") + ["none"])[:4]
  shape = (_INPUT.value, _INPUT.value, _CHANNELS.value)
  rng = np.random.default_rng(0)
  data = ((rng.random((_BATCH.value,) + shape, np.float32),
           rng.integers(0, _CLASSES.value, _BATCH.value)),
          (rng.random((_META_BATCH.value,) + shape, np.float32),
           rng.integers(0, _CLASSES.value, _META_BATCH.value)))
  config = bench_config(method, _BACKBONE.value, scope, advice, remat=remat)
  model = builder.build_model(config, shape, _CLASSES.value,
                              class_counts=[_BATCH.value] * _CLASSES.value)
  model.make_train_function()
  iterator = iter(tf.data.Dataset.from_tensors(data).repeat())
  built = _status_mib("VmRSS")
  for _ in range(max(_WARMUP.value, 1)):
    timing.sync(model.train_function(iterator))
  baseline = _status_mib("VmRSS")
  reset = _reset_peak()
  for _ in range(max(_STEPS.value, 1)):
    timing.sync(model.train_function(iterator))
  peak = _status_mib("VmHWM")
  print(json.dumps({"peak_memory_mb": round(peak - baseline, 1),
                    "baseline_memory_mb": round(baseline, 1),
                    "warmup_growth_mb": round(baseline - built, 1),
                    "vmhwm_mb": round(peak, 1), "peak_reset": reset}))


def _group_in_fresh_process(variants, backbone, side, channels, classes,
                            batch, meta_batch, steps, rounds, warmup):
  """The round-robin table of one sweep group, timed by a fresh process (a
  process that timed other models keeps their thread pools and input
  pipelines, which then compete with the models being timed)."""
  import subprocess
  import sys
  import tempfile
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "group.json")
    proc = subprocess.run(
        [sys.executable, "-m", "advisor_tf.tools.bench",
         f"--variants={json.dumps(variants)}", f"--backbone={backbone}",
         f"--input_size={side}", f"--channels={channels}",
         f"--num_classes={classes}", f"--batch_size={batch}",
         f"--meta_batch_size={meta_batch}", f"--steps={steps}",
         f"--rounds={rounds}", f"--warmup={warmup}", f"--json={out}"],
        capture_output=True, text=True, check=False)
    if proc.returncode:
      raise RuntimeError(f"timing {backbone} batch {batch} failed: "
                         f"{proc.stderr[-2000:]}")
    with open(out) as f:
      return json.load(f)


def sweep_variants(methods, scopes=("all",), advice=("exact",),
                   remat=("none",)):
  """ce, then per advisor method the exact step and each asked-for knob off
  it alone: (METHOD, SCOPE, ADVICE, REMAT) tuples."""
  out = [("ce", "all", "exact", "none")]
  for m in methods:
    if m == "ce":
      continue
    if m not in model_lib.ADVISOR_MODES:
      out.append((m, "all", "exact", "none"))
      continue
    out.append((m, "all", "exact", "none"))
    out += [(m, s, "exact", "none") for s in scopes if s != "all"]
    out += [(m, "all", a, "none") for a in advice if a != "exact"]
    out += [(m, "all", "exact", r) for r in remat if r != "none"]
  return out


def sweep(variants, steps, rounds, warmup, groups=SWEEP_GROUPS, path=None):
  """Time per step and peak memory over batch sizes and backbones: each
  group's variants are timed round-robin in one fresh process, each
  variant's memory in a process of its own (`peak_memory_alone`). With
  `path`, the report so far is written after every group."""
  rows = []
  report = {"sweep": rows, "device": f"CPU ({os.cpu_count()} cores)",
            "steps_timed": steps * rounds,
            "memory": "per variant, a fresh process ("
                      + " ".join(f"{k}={v}" for k, v in PROBE_ENV.items())
                      + f"): {warmup} warm-up step(s), VmHWM reset, one "
                      "step; peak_memory_mb = VmHWM less the resident set "
                      "after the warm-up (baseline_memory_mb)"}
  for backbone, side, channels, classes, batches, meta in groups:
    for batch in batches:
      meta_batch = meta or batch
      timed = _group_in_fresh_process(variants, backbone, side, channels,
                                      classes, batch, meta_batch, steps,
                                      rounds, warmup)
      for row in timed["results"]:
        row = dict(row, backbone=backbone, input_size=side,
                   batch_size=batch, meta_batch_size=meta_batch,
                   variant=variant_label(row["method"], row["virtual_scope"],
                                         row["advice"], row["remat"]))
        row.update(peak_memory_alone(
            row["method"], row["virtual_scope"], row["advice"], backbone,
            side, channels, classes, batch, meta_batch, warmup=warmup,
            remat=row["remat"]))
        row["peak_mem_mib"] = row["peak_memory_mb"]
        rows.append(row)
      group = rows[-len(timed["results"]):]
      ce = group[0]
      for r in group:  # What the nested tapes cost over plain training.
        r["memory_over_ce_mb"] = round(r["peak_memory_mb"]
                                       - ce["peak_memory_mb"], 1)
        r["memory_ratio_to_ce"] = round(
            r["peak_memory_mb"] / max(ce["peak_memory_mb"], 1e-9), 3)
      print(f"{backbone} batch {batch}: " + ", ".join(
          f"{r['method']}/{r['variant']} {r['seconds_per_step']:.3f}s "
          f"{r['peak_memory_mb']:.0f}MiB" for r in group), flush=True)
      if any(r["remat"] != "none" for r in group):
        report.setdefault("kept_alive", []).append(kept_alive(
            backbone, side, channels, classes, batch, meta_batch))
      if path:
        with open(path, "w") as f:
          json.dump(report, f, indent=2)
  return report


def kept_alive(backbone, input_size, channels, num_classes, batch_size,
               meta_batch_size):
  """What the exact step must keep alive under `--remat=blocks`, from the
  backbone's shapes (float32 MiB): the inputs of its segments at the train
  batch (kept from the forward to the actual step's backward), the virtual
  step's cotangents at the segments' outputs (kept by the meta tape for the
  second-order pass), the segments' inputs at the meta batch (to the meta
  loss' backward), the weights four times over (w, the virtual gradient, ŵ,
  and the second-order pass' cotangent of ŵ), and the largest segment's own
  activations twice (recomputed forward and backward, at the train batch:
  the second-order pass differentiates one segment at a time); `sum_mb`,
  their sum, bounds the remat step's peak from above. Beside them,
  every layer output of the backbone at the train batch: what a plain
  step's tape keeps (CE: once; the exact step without remat: the forward's,
  the virtual backward's of the same size, and the meta batch's)."""
  shape = (input_size, input_size, channels)
  body = backbones.BACKBONES[backbone](shape)
  segments = backbones.remat_segments(body)

  def mib(tensors, batch):
    return sum(int(np.prod(t.shape[1:])) for t in tensors) * batch * 4 / 2**20

  def outputs(model):
    return [t for op in model.operations
            if not isinstance(op, keras.layers.InputLayer)
            for t in op._inbound_nodes[0].output_tensors]  # noqa: SLF001
  inputs = [s.model.inputs[0] for s in segments]
  ends = [s.model.outputs[0] for s in segments]
  weights = sum(int(np.prod(v.shape)) for v in body.trainable_variables)
  weights += (int(body.output_shape[-1]) + 1) * num_classes  # The head.
  out = {
      "backbone": backbone, "input_size": input_size,
      "batch_size": batch_size, "meta_batch_size": meta_batch_size,
      "segments": len(segments),
      "train_segment_inputs_mb": mib(inputs, batch_size),
      "virtual_cotangents_mb": mib(ends, batch_size),
      "meta_segment_inputs_mb": mib(inputs, meta_batch_size),
      "weights_x4_mb": 4 * weights * 4 / 2**20,
      "largest_segment_x2_mb": 2 * max(mib(outputs(s.model), batch_size)
                                       for s in segments),
      "all_activations_train_batch_mb": mib(outputs(body), batch_size),
  }
  # Not all of it is alive at once (the second-order pass frees each
  # segment's cotangent and meta input as it passes it): an upper bound.
  out["sum_mb"] = sum(
      out[k] for k in ("train_segment_inputs_mb", "virtual_cotangents_mb",
                       "meta_segment_inputs_mb", "weights_x4_mb",
                       "largest_segment_x2_mb"))
  return {k: round(v, 1) if isinstance(v, float) else v
          for k, v in out.items()}


def memory_table(rows):
  """Markdown: memory and time of every variant, per backbone and batch."""
  lines = ["| backbone | batch | method | variant | step memory MiB | "
           "× ce memory | baseline MiB | s/step | × ce time |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['backbone']} {r['input_size']}px | {r['batch_size']} | "
        f"{r['method']} | {r['variant']} | {r['peak_memory_mb']:.0f} | "
        f"{r['memory_ratio_to_ce']:.2f} | {r['baseline_memory_mb']:.0f} | "
        f"{r['seconds_per_step']:.3f} | {r['ratio_to_ce']:.2f} |")
  return "\n".join(lines)


def scaling(rows):
  """Fitted exponents of time and memory in the batch size (log-log slope)
  per backbone, method and scope, over the batch sizes measured."""
  out = []
  keys = sorted({(r["backbone"], r["method"], r["virtual_scope"],
                  r.get("variant", r["virtual_scope"])) for r in rows})
  for backbone, method, scope, variant in keys:
    sel = sorted((r for r in rows if (r["backbone"], r["method"],
                                      r["virtual_scope"],
                                      r.get("variant", r["virtual_scope"]))
                  == (backbone, method, scope, variant)
                  and r["peak_memory_mb"] > 0),
                 key=lambda r: r["batch_size"])
    if len(sel) < 2:
      continue
    b = np.log([r["batch_size"] for r in sel])
    out.append({"backbone": backbone, "method": method,
                "virtual_scope": scope, "variant": variant,
                "time_exponent": round(float(np.polyfit(b, np.log(
                    [r["seconds_per_step"] for r in sel]), 1)[0]), 2),
                "memory_exponent": round(float(np.polyfit(b, np.log(
                    [r["peak_memory_mb"] for r in sel]), 1)[0]), 2)})
  return out


# The CE step's CPU settings: (name, environment, bench flags).
CE_SETTINGS = (
    ("defaults", {}, []),
    ("oneDNN off", {"TF_ENABLE_ONEDNN_OPTS": "0"}, []),
    ("intra 2 / inter 1", {}, ["--intra_op_threads=2", "--inter_op_threads=1"]),
    ("intra 1 / inter 2", {}, ["--intra_op_threads=1", "--inter_op_threads=2"]),
    ("intra 2 / inter 2", {}, ["--intra_op_threads=2", "--inter_op_threads=2"]),
    ("XLA (jit_compile)", {}, ["--jit_compile"]),
    ("mixed_bfloat16", {}, ["--precision=mixed_bfloat16"]),
)


def ce_settings(backbone, input_size, channels, num_classes, batch_size,
                steps, rounds, warmup, settings=CE_SETTINGS):
  """The CE step's time under each setting. Each round runs every setting
  once, in a fresh process (threads and oneDNN are fixed at start-up), in
  the same order, so the settings share the machine's drift; a setting's
  figure is the median over rounds of its per-process median."""
  import subprocess
  import sys
  import tempfile
  times = {name: [] for name, _, _ in settings}
  traces = {}
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "ce.json")
    for _ in range(rounds):
      for name, env, extra in settings:
        proc = subprocess.run(
            [sys.executable, "-m", "advisor_tf.tools.bench", "--methods=ce",
             f"--backbone={backbone}", f"--input_size={input_size}",
             f"--channels={channels}", f"--num_classes={num_classes}",
             f"--batch_size={batch_size}", f"--steps={steps}", "--rounds=1",
             f"--warmup={warmup}", f"--json={out}", *extra],
            env=dict(os.environ, **env), capture_output=True, text=True,
            check=False)
        if proc.returncode:
          raise RuntimeError(f"CE step under {name!r} failed: "
                             f"{proc.stderr[-2000:]}")
        with open(out) as f:
          row = json.load(f)["results"][0]
        times[name].append(row["seconds_per_step"])
        traces[name] = row["traces"]
  base = float(np.median(times[settings[0][0]]))
  rows = []
  for name, env, extra in settings:
    median = float(np.median(times[name]))
    rows.append({"setting": name, "environment": env, "flags": extra,
                 "seconds_per_step": round(median, 4),
                 "per_round": times[name],
                 "ratio_to_defaults": round(median / base, 3),
                 "images_per_s": round(batch_size / median, 1),
                 "traces": traces[name]})
  return {"ce_settings": rows, "device": f"CPU ({os.cpu_count()} cores)",
          "backbone": backbone, "batch_size": batch_size,
          "steps_per_process": steps, "rounds": rounds}


def plot_memory_time(rows, path):
  """One panel per backbone and batch: each variant's step memory against
  its time per step, both as multiples of the CE step's."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  groups = list(dict.fromkeys((r["backbone"], r["input_size"],
                               r["batch_size"]) for r in rows))
  fig, axes = plt.subplots(1, len(groups), figsize=(4.4 * len(groups), 4.2),
                           squeeze=False)
  for ax, (backbone, side, batch) in zip(axes[0], groups):
    sel = [r for r in rows if (r["backbone"], r["input_size"],
                               r["batch_size"]) == (backbone, side, batch)]
    for r in sel:
      ax.scatter(r["ratio_to_ce"], r["memory_ratio_to_ce"], s=40)
      ax.annotate(r["variant"], (r["ratio_to_ce"], r["memory_ratio_to_ce"]),
                  textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(1.3, color="grey", lw=0.8, ls="--")
    ax.set(title=f"{backbone} {side}px, batch {batch}",
           xlabel="seconds per step (× ce)",
           ylabel="step memory above baseline (× ce)",
           xlim=(0, max(r["ratio_to_ce"] for r in sel) * 1.25),
           ylim=(0, max(r["memory_ratio_to_ce"] for r in sel) * 1.15))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_sweep(rows, path):
  """Time and memory against the batch size; where every backbone was
  measured at one batch size, memory against time (`plot_memory_time`)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  backbones = list(dict.fromkeys(r["backbone"] for r in rows))
  if "memory_ratio_to_ce" in rows[0] and all(
      len({r["batch_size"] for r in rows if r["backbone"] == b}) == 1
      for b in backbones):
    return plot_memory_time(rows, path)
  fig, axes = plt.subplots(2, len(backbones), figsize=(4.2 * len(backbones),
                                                        7), squeeze=False)
  for j, backbone in enumerate(backbones):
    variants = dict.fromkeys((r["method"], r["virtual_scope"],
                              r.get("variant", r["virtual_scope"]))
                             for r in rows if r["backbone"] == backbone)
    for method, scope, variant in variants:
      sel = sorted((r for r in rows if r["backbone"] == backbone
                    and r["method"] == method
                    and r.get("variant", r["virtual_scope"]) == variant),
                   key=lambda r: r["batch_size"])
      label = method if method == "ce" else f"{method} / {variant}"
      style = ("-" if scope == "all" else ("--" if scope == "last_stage"
                                           else ":"))
      if "remat" in variant:
        style = "-."
      batch = [r["batch_size"] for r in sel]
      axes[0, j].plot(batch, [r["seconds_per_step"] for r in sel], style,
                      marker="o", label=label)
      axes[1, j].plot(batch, [r["peak_memory_mb"] for r in sel], style,
                      marker="o", label=label)
    axes[0, j].set(title=backbone, ylabel="seconds per step", xscale="log",
                   yscale="log")
    axes[1, j].set(xlabel="batch size", ylabel=(
        "step memory above baseline (MiB)" if "baseline_memory_mb" in rows[0]
        else "peak memory (MiB)"), xscale="log")
    for ax in axes[:, j]:
      ax.set_xticks(sorted({r["batch_size"] for r in rows
                            if r["backbone"] == backbone}))
      ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
      ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def table(report):
  lines = [f"device: {report['device']}  jit_compile: {report['jit_compile']}"
           f"  precision: {report['precision']}  strategy: "
           f"{report['strategy']} ({report['replicas']} replica(s))",
           "| method | virtual_scope | advice | remat | median s/step | p10 | "
           "p90 | × ce | images/s | peak MiB |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in report["results"]:
    lines.append(f"| {r['method']} | {r['virtual_scope']} | {r['advice']} | "
                 f"{r['remat']} | "
                 f"{r['median_s']:.4f}"
                 f" | {r['p10_s']:.4f} | {r['p90_s']:.4f} | "
                 f"{r['ratio_to_ce']:.2f} | {r['images_per_s']:.0f} | "
                 f"{r['peak_mem_mib']:.0f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  cli.quiet_logs()
  # Every timed model has its own train function, by design: TensorFlow's
  # "excessive retracing" warning does not apply.
  tf.get_logger().setLevel("ERROR")
  if _INTRA.value or _INTER.value:  # Before TensorFlow's runtime starts.
    tf.config.threading.set_intra_op_parallelism_threads(_INTRA.value)
    tf.config.threading.set_inter_op_parallelism_threads(_INTER.value)
  if _MEMORY_OF.value:
    _memory_probe(_MEMORY_OF.value)
    return
  if _CE_SETTINGS.value:
    report = ce_settings(_BACKBONE.value, _INPUT.value, _CHANNELS.value,
                         _CLASSES.value, _BATCH.value, _STEPS.value,
                         _ROUNDS.value, _WARMUP.value)
    print("| CE step setting | s/step | × defaults | images/s | traces |")
    print("|---|---|---|---|---|")
    for r in report["ce_settings"]:
      print(f"| {r['setting']} | {r['seconds_per_step']:.4f} | "
            f"{r['ratio_to_defaults']:.3f} | {r['images_per_s']:.0f} | "
            f"{r['traces']} |")
    if _JSON.value:
      with open(_JSON.value, "w") as f:
        json.dump(report, f, indent=2)
    return
  with cli.usage_errors():  # Every choice is checked by TrainConfig.
    for m in _METHODS.value:
      for scope in _SCOPES.value:
        for adv in _ADVICE.value:
          for rem in _REMAT.value:
            bench_config(m, _BACKBONE.value, scope, adv, _META_EVERY.value,
                         _JIT.value, _PRECISION.value, _STRATEGY.value, rem)
  if _SWEEP.value:
    groups = (json.loads(_SWEEP_GROUPS.value) if _SWEEP_GROUPS.value
              else SWEEP_GROUPS)
    report = sweep(sweep_variants(_METHODS.value, _SCOPES.value,
                                  _ADVICE.value, _REMAT.value),
                   _STEPS.value, _ROUNDS.value, _WARMUP.value, groups,
                   path=_JSON.value)
    print(memory_table(report["sweep"]))
    report["scaling"] = scaling(report["sweep"])
    for line in report["scaling"]:
      print(line)
    if _PLOT.value:
      plot_sweep(report["sweep"], _PLOT.value)
    if _JSON.value:
      with open(_JSON.value, "w") as f:
        json.dump(report, f, indent=2)
    return
  report = run(_METHODS.value, _SCOPES.value, _BACKBONE.value, _INPUT.value,
               _CHANNELS.value, _CLASSES.value, _BATCH.value,
               _META_BATCH.value, _STEPS.value, _ROUNDS.value, _WARMUP.value,
               _JIT.value, _PRECISION.value, _STRATEGY.value,
               _META_EVERY.value, tuple(_ADVICE.value), tuple(_REMAT.value),
               variants=([tuple(v) for v in json.loads(_VARIANTS.value)]
                         if _VARIANTS.value else None))
  print(table(report))
  if _BREAKDOWN.value:
    report["breakdown"] = []
    for adv in _ADVICE.value:
      seconds = breakdown(
          _BREAKDOWN.value, _BACKBONE.value, _INPUT.value, _CHANNELS.value,
          _CLASSES.value, _BATCH.value, _META_BATCH.value, advice=adv)
      report["breakdown"].append({"method": _BREAKDOWN.value, "advice": adv,
                                  "seconds": seconds})
      print(f"Where the time of a {_BREAKDOWN.value} step (advice={adv}) "
            "goes (median s):")
      for name, sec in seconds.items():
        print(f"  {name:34s} {sec:.4f}")
  if _PROFILE.value:
    profile(_PROFILE.value, _BREAKDOWN.value or "mfrw_mes", _BACKBONE.value,
            _INPUT.value, _CHANNELS.value, _CLASSES.value, _BATCH.value,
            _META_BATCH.value, advice=_ADVICE.value[0])
    print(f"Profiler trace → {_PROFILE.value} (tensorboard --logdir="
          f"{_PROFILE.value}, Profile tab)")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(report, f, indent=2)


GROUPS = {"model": ["backbone", "input_size", "channels", "num_classes",
                    "methods", "virtual_scopes", "advice", "remat",
                    "meta_update_every"],
          "workload": ["batch_size", "meta_batch_size", "precision",
                       "strategy", "jit_compile", "intra_op_threads",
                       "inter_op_threads"],
          "timing": ["steps", "rounds", "warmup", "breakdown", "profile",
                     "sweep", "sweep_groups", "plot", "json", "memory_of",
                     "variants",
                     "ce_settings"]}


def console():
  """Console script `advisor-bench`."""
  cli.run(main, __doc__, GROUPS)


if __name__ == "__main__":
  console()
