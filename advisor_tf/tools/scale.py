r"""Every stage of a user's run, measured against the data's size (issue #36).

  python -m advisor_tf.tools.scale --out=results/scale.json \
      --plot=results/scale.png --root=runs/scale [--sizes=6000,20000,60000]

Fashion-MNIST written as a user's folder (`write_folder`: PNG, one folder per
class, no `meta/`, 40 % instance-dependent noise on the training labels, the
10 000 test photographs in `test/`) at each size N, then each stage a user
runs, as the user runs it, in a fresh process, timed (wall seconds) and
measured (peak resident memory of the process, `os.wait4`):

  check_first    reading the folder and the image check, cache empty
  check_cached   the same with the check's cache (a second run)
  select         the data a new run trains on: read (cached) and
                 `--meta_source=auto`'s selection (warm-up, neighbour vote,
                 regions)
  train          `advisor-train` with the defaults (MFRW-MES, exact advice,
                 automatic meta set, augmentation) for `--train_epochs`;
                 `metrics.json` gives its median step
  evaluate       `advisor-evaluate` (the 10 000 test images)
  analyze_<r>    `advisor-analyze --ranking=<r>` for each of `--rankings`
  review         `advisor-review` (its default card count) on the label
                 issues of `advisor-analyze`'s default ranking at that size
                 (the page alone; the analysis is `analyze_<default>`)
  page_load      the review page opened in headless Chromium (Selenium):
                 DOMContentLoaded and load, in seconds (skipped, with the
                 reason, without Selenium or Chromium)
  export         the trained classifier written as a SavedModel
  predict        `advisor-predict` of the 10 000 test files
  throughput     images/s of the train step of CE, MFRW-MES exact, `head`
                 and `lagged` on the folder's real input stream, and the
                 share of each step spent waiting on input: the same step
                 timed round-robin on the stream and on one batch repeated
                 (no input work), `1 − t_repeated / t_stream`; and what
                 the input costs the cores at all: the stream alone,
                 seconds per step's batches over the step's seconds
                 (`input_cost_share`, steadier than the wait on a machine
                 that is not idle)

Per stage the JSON holds `seconds` and `peak_rss_mib` per size and the
exponent of a least-squares fit `seconds ∝ N^k` over the sizes; `training`
holds the default run's median step and the estimated wall time of a
default run (`--epochs` of the defaults, 30, times its steps); `goals` the
issue's goals read off them (every stage but training with k ≤ 1.1, every
peak ≤ 4 GiB, everything outside training ≤ 25 % of the default run's
training, the page open in ≤ 3 s). The grid resumes stage by stage: the
JSON is rewritten after every stage and a finished (size, stage) is not run
again.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import time

from advisor_tf import cli  # Quiets TensorFlow before it is imported.

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from advisor_tf import advice  # noqa: E402
from advisor_tf import builder  # noqa: E402
from advisor_tf import config as config_lib  # noqa: E402
from advisor_tf import meta_select  # noqa: E402
from advisor_tf import run as run_lib  # noqa: E402
from advisor_tf import trainer  # noqa: E402
from advisor_tf.data import noise  # noqa: E402
from advisor_tf.data import protocols  # noqa: E402
from advisor_tf.data import sources  # noqa: E402
from advisor_tf.tools import timing  # noqa: E402

SIZES = (6000, 20000, 60000)
RANKINGS = ("loss", "cleanlab_model", "advisor", "rank_average", "cv_loss")
VARIANTS = {"ce": {"method": "ce"},
            "mfrw_mes": {},
            "mfrw_mes_head": {"virtual_scope": "head"},
            "mfrw_mes_lagged": {"advice": "lagged"}}
# Stages that are not training (the issue's "everything outside training").
OUTSIDE_TRAINING = ("check_first", "select", "evaluate", "review", "export")
GOALS = {"exponent": 1.1, "peak_gib": 4.0, "outside_share": 0.25,
         "page_seconds": 3.0, "input_wait": 0.05}
NOISE_RATE = 0.4

FLAGS = flags.FLAGS


def _define_flags():
  """The command's flags, defined when it runs (tests import the module
  beside the other commands' flags)."""
  flags.DEFINE_string("out", "results/scale.json", "The results JSON.")
  flags.DEFINE_string("plot", None, "Also draw seconds and peak memory "
                      "against N here (PNG).")
  flags.DEFINE_string("root", "runs/scale", "Where the folders, the runs and "
                      "the logs go.")
  flags.DEFINE_list("sizes", [str(n) for n in SIZES],
                    "Training images per folder.")
  flags.DEFINE_list("rankings", list(RANKINGS),
                    "The `advisor-analyze --ranking`s to time.")
  flags.DEFINE_integer("train_epochs", 1, "Epochs of the measured training "
                       "run (and of cv_loss's folds).", lower_bound=1)
  flags.DEFINE_integer("throughput_steps", 10, "Timed steps per round of the "
                       "throughput stage.", lower_bound=2)
  flags.DEFINE_integer("throughput_rounds", 3, "Round-robin rounds of the "
                       "throughput stage.", lower_bound=1)
  flags.DEFINE_string("fashion_dir", None, "The folder of Fashion-MNIST's "
                      "four IDX files (default: the Debian package's).")
  flags.DEFINE_integer("seed", 0, "Seed of the subset and the noise.")
  flags.DEFINE_bool("report", False, "Only print the table (and draw --plot) "
                    "of what --out holds; run nothing.")
  # Internal: one in-process stage, run by the parent in a fresh process.
  flags.DEFINE_enum("stage", None, ["load", "select", "export", "throughput",
                                    "page_load"],
                    "Internal: run one stage in this process.")
  flags.DEFINE_string("data_dir", None, "Internal: the folder.")
  flags.DEFINE_string("workdir", None, "Internal: the run.")


# -------------------------------------------------------------- the folder
def write_folder(root, size, seed=0, rate=NOISE_RATE, fashion_dir=None):
  """Fashion-MNIST as a user's folder under `root`: a seeded, stratified
  subset of `size` training photographs in `train/<class>/` under labels
  with instance-dependent noise at mean rate `rate` (`noise.instance_labels`
  on the normalised pixels), all 10 000 test photographs in `test/<class>/`,
  no `meta/`; `manifest.json` keeps each training file's given and true
  label. Writes nothing when `root` already holds this folder; a partial
  folder is written aside and moved in whole. Returns the manifest."""
  from PIL import Image

  want = {"size": int(size), "seed": int(seed), "noise": "instance",
          "rate": float(rate)}
  path = os.path.join(root, "manifest.json")
  if os.path.isfile(path):
    with open(path) as f:
      manifest = json.load(f)
    if all(manifest.get(k) == v for k, v in want.items()):
      return manifest
    raise ValueError(f"{root} holds another folder; use an empty one.")
  folder = fashion_dir or sources.FASHION_MNIST_DIR
  arrays = {}
  for split, (images, labels) in sources.FASHION_MNIST_FILES.items():
    found = [sources._idx_path(folder, stem) for stem in (images, labels)]
    if None in found:
      raise ValueError(f"--fashion_dir={folder}: Fashion-MNIST's IDX files "
                       "are missing; `apt-get install dataset-fashion-mnist`"
                       " or point --fashion_dir at them.")
    arrays[split] = tuple(sources.read_idx(p) for p in found)
  # Folder names: Zalando's, with "/" (T-shirt/top) made a "_".
  names = [n.replace("/", "_") for n in sources.FASHION_MNIST_CLASSES]
  rng = np.random.default_rng(seed)
  images, clean = arrays["train"]
  chosen = protocols.stratified_subset(clean, size, rng, len(names))
  pixels = (images[chosen] / 255.0 - sources.FASHION_MNIST_MEAN[0]) / (
      sources.FASHION_MNIST_STD[0])
  given, _ = noise.instance_labels(np.array_split(pixels, max(size // 5000, 1)),
                                   clean[chosen], rate, len(names), rng)
  tmp = os.path.abspath(root).rstrip(os.sep) + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  rows = {"train": [], "test": []}
  parts = {"train": (images[chosen], given, clean[chosen], chosen),
           "test": (*arrays["test"][:1], arrays["test"][1],
                    arrays["test"][1], np.arange(len(arrays["test"][1])))}
  for split, (x, labels, truth, index) in parts.items():
    for name in names:
      os.makedirs(os.path.join(tmp, split, name))
    for image, label, true, i in zip(x, labels, truth, index):
      file = f"{split}/{names[int(label)]}/{split}{int(i):05d}.png"
      Image.fromarray(np.asarray(image, np.uint8)).save(os.path.join(tmp, file))
      rows[split].append([file, int(label), int(true)])
  manifest = dict(want, realised_rate=float(np.mean(given != clean[chosen])),
                  splits=rows)
  with open(os.path.join(tmp, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  shutil.rmtree(root, ignore_errors=True)
  os.replace(tmp, root)
  return manifest


# ------------------------------------------------------------- measuring
# Starts the measured command and reports its exit status and peak resident
# memory. Linux carries a process's high-water mark into the children it
# forks, so the command is started from this small interpreter, not from
# the caller (which may hold a gigabyte of TensorFlow).
_LAUNCHER = ("import json, os, subprocess, sys\n"
             "child = subprocess.Popen(sys.argv[2:])\n"
             "_, status, usage = os.wait4(child.pid, 0)\n"
             "with open(sys.argv[1], 'w') as f:\n"
             "  json.dump([os.waitstatus_to_exitcode(status), "
             "usage.ru_maxrss], f)\n")


def measure(argv, log_path, env=None):
  """Runs `argv` in a fresh process (output to `log_path`): `{"seconds",
  "peak_rss_mib"}`, the wall time and the peak resident memory of the
  process (and of the children it waited for). A failing stage raises,
  naming its log."""
  report = f"{log_path}.rss"
  with open(log_path, "w") as log:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", _LAUNCHER, report, *argv],
                   stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    seconds = time.monotonic() - started
  try:
    with open(report) as f:
      status, peak_kib = json.load(f)
    os.remove(report)
  except (OSError, ValueError):
    status, peak_kib = "unknown", 0
  if status != 0:
    raise RuntimeError(f"{' '.join(argv)} exited with status {status}; see "
                       f"{log_path}.")
  return {"seconds": round(seconds, 2),
          "peak_rss_mib": round(peak_kib / 1024.0, 1)}


def exponent(sizes, seconds):
  """k of the least-squares fit `seconds ∝ N^k` (log-log), or None with
  fewer than two sizes measured."""
  pairs = [(n, s) for n, s in zip(sizes, seconds) if s]
  if len(pairs) < 2:
    return None
  x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
  return round(float(np.polyfit(x, y, 1)[0]), 3)


def _python(module, *args):
  return [sys.executable, "-m", module, *args]


def stages(size, folder, workdir, rankings, epochs, steps=10, rounds=3):
  """`(name, argv, env changes)` of every stage at one size, in order."""
  me = "advisor_tf.tools.scale"
  cache = os.path.join(os.path.dirname(workdir), f"cache_n{size}")
  common = [f"--data_dir={folder}"]
  train = _python("advisor_tf.train", "--dataset=image_folder", *common,
                  f"--workdir={workdir}", f"--epochs={epochs}", "--noexport")
  out = [("check_first", _python(me, "--stage=load", *common),
          {"XDG_CACHE_HOME": cache, "_fresh": cache}),
         ("check_cached", _python(me, "--stage=load", *common),
          {"XDG_CACHE_HOME": cache}),
         ("select", _python(me, "--stage=select", *common),
          {"XDG_CACHE_HOME": cache}),
         ("train", train, {"XDG_CACHE_HOME": cache, "_fresh": workdir}),
         ("throughput", _python(me, "--stage=throughput", *common,
                                f"--throughput_steps={steps}",
                                f"--throughput_rounds={rounds}"),
          {"XDG_CACHE_HOME": cache}),
         ("evaluate", _python("advisor_tf.evaluate", f"--workdir={workdir}"),
          {"XDG_CACHE_HOME": cache})]
  for ranking in rankings:
    out.append((f"analyze_{ranking}", _python(
        "advisor_tf.analyze", f"--workdir={workdir}", f"--ranking={ranking}",
        f"--out={os.path.join(workdir, 'analysis_' + ranking)}"),
        {"XDG_CACHE_HOME": cache}))
  page = os.path.join(workdir, "review.html")
  # A user runs advisor-analyze, then advisor-review on its ranking (without
  # one, the review runs the analysis with the default ranking itself).
  default, _ = advice.resolve_ranking(None, advice.RANKINGS, size)
  issues = ([f"--issues={os.path.join(workdir, 'analysis_' + default)}"
             "/label_issues.csv"] if default in rankings else [])
  out += [("review", _python("advisor_tf.review", f"--workdir={workdir}",
                             f"--output={page}", *issues),
           {"XDG_CACHE_HOME": cache}),
          ("page_load", _python(me, "--stage=page_load", f"--workdir={page}"),
           {}),
          ("export", _python(me, "--stage=export", f"--workdir={workdir}"),
           {"XDG_CACHE_HOME": cache}),
          ("predict", _python(
              "advisor_tf.predict",
              f"--model={os.path.join(workdir, 'saved_model')}",
              f"--output={os.path.join(workdir, 'predictions.csv')}",
              os.path.join(folder, "test")), {})]
  return out


def _load(path):
  if os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  return {}


def _write(path, results):
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, path)


def summarize(results):
  """Adds the fitted exponents, the estimated default training time and the
  goals read off the measured stages (in place; returns `results`)."""
  sizes = results["sizes"]
  for name, entry in results["stages"].items():
    seconds = [entry["seconds"].get(str(n)) for n in sizes]
    entry["exponent"] = exponent(sizes, seconds)
  training = results.setdefault("training", {})
  default_epochs = 30
  estimated, shares = {}, {}
  for n in sizes:
    step = training.get("seconds_per_step", {}).get(str(n))
    steps = training.get("steps_per_epoch", {}).get(str(n))
    if step is None or steps is None:
      continue
    estimated[str(n)] = round(default_epochs * steps * step, 1)
    outside = [results["stages"].get(s, {}).get("seconds", {}).get(str(n))
               for s in OUTSIDE_TRAINING]
    outside.append(_default_analyze(results, n))
    if None not in outside:
      shares[str(n)] = round(sum(outside) / estimated[str(n)], 3)
  training.update(default_epochs=default_epochs,
                  estimated_default_seconds=estimated)
  results["outside_training_share"] = shares
  not_training = [s for s in results["stages"]
                  if s not in ("train", "throughput", "page_load")
                  and not s.startswith("analyze_cv")]
  worst = max(((results["stages"][s]["exponent"], s) for s in not_training
               if results["stages"][s]["exponent"] is not None),
              default=(None, None))
  peaks = [(v, s, n) for s, e in results["stages"].items()
           for n, v in e.get("peak_rss_mib", {}).items()]
  top = max(peaks, default=(None, None, None))
  page = results["stages"].get("page_load", {}).get("load_seconds", {})
  largest = str(max(sizes))
  results["goals"] = {
      "largest_exponent": {"value": worst[0], "stage": worst[1],
                           "goal": GOALS["exponent"],
                           "met": None if worst[0] is None
                           else worst[0] <= GOALS["exponent"]},
      "largest_peak_gib": {"value": None if top[0] is None
                           else round(top[0] / 1024, 2), "stage": top[1],
                           "size": top[2], "goal": GOALS["peak_gib"],
                           "met": None if top[0] is None
                           else top[0] / 1024 <= GOALS["peak_gib"]},
      "outside_training_share": {
          "value": shares.get(largest), "goal": GOALS["outside_share"],
          "met": None if largest not in shares
          else shares[largest] <= GOALS["outside_share"]},
      "page_load_seconds": {
          "value": page.get(largest), "goal": GOALS["page_seconds"],
          "met": None if page.get(largest) is None
          else page[largest] <= GOALS["page_seconds"]}}
  variants = results["stages"].get("throughput", {}).get(
      "variants", {}).get(largest)
  if variants:
    wait, step = max((v["input_wait_share"], k) for k, v in variants.items())
    results["goals"]["largest_input_wait"] = {
        "value": wait, "step": step, "goal": GOALS["input_wait"],
        "met": wait <= GOALS["input_wait"]}
  return results


def _default_analyze(results, size):
  """Seconds of `advisor-analyze` with the default ranking at `size`."""
  ranking, _ = advice.resolve_ranking(None, advice.RANKINGS, size)
  return results["stages"].get(f"analyze_{ranking}", {}).get(
      "seconds", {}).get(str(size))


def run(out, root, sizes, rankings, epochs, fashion_dir=None, seed=0,
        steps=10, rounds=3, log=print):
  """Measures every stage at every size (resuming `out`); returns the
  results dict."""
  results = _load(out)
  results.update(sizes=[int(n) for n in sizes], seed=seed,
                 noise=f"instance {NOISE_RATE}", train_epochs=epochs,
                 machine=f"{platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} CPU cores, {_memory_gib()} GiB")
  results.setdefault("stages", {})
  training = results.setdefault("training", {})
  for size in sizes:
    folder = os.path.join(root, f"fashion_n{size}")
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
      log(f"scale: writing {size} training images to {folder} ...")
      started = time.monotonic()
      write_folder(folder, size, seed, fashion_dir=fashion_dir)
      log(f"scale: written in {time.monotonic() - started:.0f} s.")
    workdir = os.path.join(root, "runs", f"n{size}")
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    for name, argv, env_changes in stages(size, folder, workdir, rankings,
                                          epochs, steps, rounds):
      entry = results["stages"].setdefault(
          name, {"seconds": {}, "peak_rss_mib": {}})
      if str(size) in entry["seconds"]:
        continue
      env = dict(os.environ, **{k: v for k, v in env_changes.items()
                                if not k.startswith("_")})
      if "_fresh" in env_changes:
        shutil.rmtree(env_changes["_fresh"], ignore_errors=True)
      log(f"scale: N={size} {name} ...")
      log_path = os.path.join(root, "logs", f"n{size}_{name}.log")
      measured = measure(argv, log_path, env)
      entry["seconds"][str(size)] = measured["seconds"]
      entry["peak_rss_mib"][str(size)] = measured["peak_rss_mib"]
      _read_stage_output(name, size, workdir, log_path, entry, training,
                         epochs)
      log(f"scale: N={size} {name}: {measured['seconds']:.1f} s, "
          f"{measured['peak_rss_mib']:.0f} MiB")
      _write(out, summarize(results))
  return summarize(results)


def _read_stage_output(name, size, workdir, log_path, entry, training,
                       epochs):
  """What a stage reports beyond its time and memory."""
  key = str(size)
  if name == "train":
    with open(os.path.join(workdir, "metrics.json")) as f:
      metrics = json.load(f)
    training.setdefault("seconds_per_step", {})[key] = metrics[
        "train/seconds_per_step"]
    training.setdefault("fit_seconds", {})[key] = metrics["train/seconds"]
    training.setdefault("steps_per_epoch", {})[key] = (
        metrics["train/steps"] // epochs)
    training.setdefault("test_top1", {})[key] = metrics["test/top1"]
  elif name in ("throughput", "page_load"):
    with open(log_path) as f:
      report = [json.loads(line[len("RESULT "):]) for line in f
                if line.startswith("RESULT ")]
    if name == "throughput":
      entry.setdefault("variants", {})[key] = report[-1]
    else:
      for field, value in report[-1].items():
        entry.setdefault(field, {})[key] = value


def _memory_gib():
  try:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                 / 2**30)
  except (ValueError, OSError):
    return None


# ------------------------------------------------- the in-process stages
def _default_config(data_dir, **changes):
  """The defaults' configuration on the folder (the in-process stages write
  nothing into its workdir)."""
  return config_lib.TrainConfig(dataset="image_folder", data_dir=data_dir,
                                workdir=os.path.join(data_dir, "unused"),
                                **changes).validate()


def stage_throughput(data_dir, steps, rounds):
  """Per variant: the median step on the real stream and on one of its
  batches repeated, timed round-robin; images/s and the input-wait share."""
  import keras
  import tensorflow as tf

  base = _default_config(data_dir, meta_source="random")
  source, split = run_lib.prepare_data(base)
  runners, streams = [], {}
  for name, changes in VARIANTS.items():
    config = _default_config(data_dir, meta_source="random", **changes)
    keras.utils.set_random_seed(0)
    model = builder.build_model(config, source.image_shape,
                                source.num_classes,
                                class_counts=split.class_counts(
                                    source.num_classes))
    model.make_train_function()
    stream = streams[name] = trainer.train_stream(config, source, split)
    one = tf.data.Dataset.from_tensors(next(iter(stream))).repeat()
    for data in (stream, one):
      iterator = iter(data)
      for _ in range(2):  # Tracing, the first batches.
        timing.sync(model.train_function(iterator))
      runners.append({"name": name, "repeated": data is one,
                      "step": lambda f=model.train_function, it=iterator:
                      timing.sync(f(it)), "times": []})
  timing.round_robin(runners, rounds, steps)
  report = {}
  for stream, repeated in zip(runners[::2], runners[1::2]):
    t, t_one = np.median(stream["times"]), np.median(repeated["times"])
    alone = _input_alone(streams[stream["name"]], steps * rounds)
    report[stream["name"]] = {
        "seconds_per_step": round(float(t), 5),
        "images_per_s": round(base.batch_size / float(t), 1),
        "seconds_per_step_repeated_batch": round(float(t_one), 5),
        "input_wait_share": round(max(0.0, 1.0 - float(t_one / t)), 3),
        "input_seconds_per_step": round(alone, 5),
        "input_cost_share": round(alone / float(t), 3)}
  return report


def _input_alone(stream, steps):
  """Median seconds the input pipeline takes to yield a step's batches
  with nothing else running: what it costs the cores a step runs on (the
  wait share above is how much of that the step did not hide)."""
  iterator = iter(stream)
  for _ in range(3):
    next(iterator)
  times = []
  for _ in range(steps):
    started = time.perf_counter()
    next(iterator)
    times.append(time.perf_counter() - started)
  return float(np.median(times))


def stage_page_load(page):
  """Opens the review page in headless Chromium: seconds to
  DOMContentLoaded and to load, and the cards it shows."""
  import tempfile
  try:
    from selenium import webdriver
  except ImportError:
    return {"skipped": "selenium is not installed"}
  browser = next((shutil.which(n) for n in ("chromium", "chromium-browser",
                                            "google-chrome")
                  if shutil.which(n)), None)
  if not browser or not shutil.which("chromedriver"):
    return {"skipped": "no chromium and chromedriver on PATH"}
  options = webdriver.ChromeOptions()
  options.binary_location = browser
  with tempfile.TemporaryDirectory() as profile:
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
      options.add_argument(arg)
    driver = webdriver.Chrome(options=options)
    try:
      driver.get("file://" + os.path.abspath(page))
      timing = driver.execute_script(
          "const n = performance.getEntriesByType('navigation')[0];"
          "return [n.domContentLoadedEventEnd, n.loadEventEnd];")
    finally:
      driver.quit()
  return {"dom_content_loaded_seconds": round(timing[0] / 1000, 3),
          "load_seconds": round(timing[1] / 1000, 3),
          "page_mib": round(os.path.getsize(page) / 2**20, 2)}


def stage_export(workdir):
  """What `--export` does at the end of a run: the classifier as a
  SavedModel and a `.keras` file (here from the run's checkpoint)."""
  config, source, split = run_lib.load_data(workdir, training_files=False)
  model, _ = run_lib.restore_model(workdir, config, source, split)
  trainer.export_classifier(model, source, workdir)


def _child(stage):
  if stage == "load":
    run_lib.load_source(_default_config(FLAGS.data_dir))
  elif stage == "select":
    config = _default_config(FLAGS.data_dir)
    source, split = run_lib.prepare_data(config)
    if split.meta_source == "auto":  # What a new run does before step 1.
      meta_select.select(config, source, split)
  elif stage == "export":
    stage_export(FLAGS.workdir)
  elif stage == "throughput":
    print("RESULT " + json.dumps(stage_throughput(
        FLAGS.data_dir, FLAGS.throughput_steps, FLAGS.throughput_rounds)),
          flush=True)
  elif stage == "page_load":
    print("RESULT " + json.dumps(stage_page_load(FLAGS.workdir)), flush=True)


# ------------------------------------------------------------------ plot
def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  sizes = results["sizes"]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for ax in axes:  # A colour per stage (matplotlib's default has ten).
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
  for name, entry in sorted(results["stages"].items()):
    for ax, field in zip(axes, ("seconds", "peak_rss_mib")):
      points = [(n, entry[field].get(str(n))) for n in sizes]
      points = [(n, v) for n, v in points if v]
      if points:
        label = name if field == "peak_rss_mib" else (
            f"{name} (k={entry['exponent']})" if entry.get("exponent")
            is not None else name)
        ax.plot(*zip(*points), marker="o", label=label)
  for ax, title in zip(axes, ("wall seconds", "peak resident MiB")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training images N")
    ax.set_title(title)
  axes[0].legend(fontsize=7, ncol=2)
  fig.suptitle(f"Every stage of a user's run ({results.get('machine')})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def table(results):
  """The measured stages as a Markdown table: seconds (peak MiB) per size,
  and the fitted exponent."""
  sizes = results["sizes"]
  lines = ["| stage | " + " | ".join(f"N = {n}" for n in sizes)
           + " | k |", "|---" * (len(sizes) + 2) + "|"]
  for name, entry in results["stages"].items():
    cells = []
    for n in sizes:
      sec = entry["seconds"].get(str(n))
      peak = entry["peak_rss_mib"].get(str(n))
      cells.append("–" if sec is None else f"{sec:.0f} s ({peak:.0f} MiB)")
    k = entry.get("exponent")
    lines.append(f"| {name} | " + " | ".join(cells)
                 + f" | {'–' if k is None else f'{k:.2f}'} |")
  return "\n".join(lines)


def checked_sizes(sizes, rankings):
  """`--sizes` as sorted ints; raises ValueError naming a bad `--sizes` or
  `--rankings`."""
  try:
    values = sorted(int(n) for n in sizes)
  except ValueError:
    values = []
  if not values or min(values) < 100:
    raise ValueError(f"--sizes={','.join(sizes)}: give training set sizes of "
                     "at least 100 images.")
  bad = [r for r in rankings if r not in advice.RANKINGS]
  if bad:
    raise ValueError(f"--rankings: {', '.join(bad)} is not a ranking; "
                     f"allowed: {', '.join(advice.RANKINGS)}.")
  return values


def main(argv):
  del argv
  cli.quiet_logs()
  if FLAGS.stage:
    _child(FLAGS.stage)
    return
  if FLAGS.report:
    with cli.usage_errors():
      if not os.path.isfile(FLAGS.out):
        raise ValueError(f"--out={FLAGS.out}: no such file to report on.")
      results = summarize(_load(FLAGS.out))
    print(table(results))
    if FLAGS.plot:
      plot(results, FLAGS.plot)
    print(json.dumps(results["goals"], indent=1))
    return
  with cli.usage_errors():
    sizes = checked_sizes(FLAGS.sizes, FLAGS.rankings)
    results = run(FLAGS.out, FLAGS.root, sizes, FLAGS.rankings,
                  FLAGS.train_epochs, FLAGS.fashion_dir, FLAGS.seed,
                  FLAGS.throughput_steps, FLAGS.throughput_rounds)
  print(table(results))
  if FLAGS.plot:
    plot(results, FLAGS.plot)
  print(json.dumps(results["goals"], indent=1))


def console():
  _define_flags()
  cli.run(main, __doc__, {})


if __name__ == "__main__":
  console()
