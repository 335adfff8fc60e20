"""Faults a user's machine has: Ctrl-C, a full disk, a read-only workdir,
missing or contradictory flags. Each ends in one line that says what is kept
and how to go on, never a traceback, and loses no finished step."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf

from conftest import snapshot

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["--flagfile=flags/quickstart.cfg", "--embedding_size=8",
       "--telemetry_examples=0", "--noexport", "--checkpoint_every=4"]


def _train(workdir, *extra, wait=True, code=None):
  """`advisor-train` in a process of its own; `code` runs first (a fault
  to inject)."""
  prologue = code or ""
  script = textwrap.dedent(prologue) + textwrap.dedent("""
      import sys
      from advisor_tf import train
      sys.argv = ["advisor-train"] + sys.argv[1:]
      train.console()
  """)
  args = [sys.executable, "-c", script, *RUN, f"--workdir={workdir}", *extra]
  if wait:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
  # Ctrl-C as at a terminal, also when the suite itself runs in the
  # background of a non-interactive shell (which starts it, and so the run,
  # with SIGINT ignored: Python then installs no KeyboardInterrupt handler).
  return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=_default_sigint)


def _default_sigint():
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def _error_line(stderr):
  lines = [l for l in stderr.strip().splitlines()
           if l.startswith("advisor-train: error:")]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
  return lines[0]


def _steps(workdir):
  state = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
  return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]


def test_ctrl_c_keeps_the_step_it_stopped_at_and_says_how_to_resume(
    tmp_path):
  workdir = tmp_path / "run"
  proc = _train(workdir, "--epochs=30", wait=False)
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / "checkpoint").exists():
    assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
    time.sleep(0.05)
  time.sleep(1.0)  # Mid-run, between two periodic checkpoints.
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-3000:]
  line = _error_line(err)
  stopped = max(_steps(workdir))
  assert line == (
      "advisor-train: error: interrupted (Ctrl-C). The run is kept at step "
      f"{stopped} ({workdir}/checkpoints/ckpt-{stopped}); the same command "
      "resumes it from there.")
  assert not (workdir / "metrics.json").exists()
  proc = _train(workdir, "--epochs=30")
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["resumed_from_step"] == stopped


_FULL_DISK = """
    import errno, os, tensorflow as tf
    real = tf.train.CheckpointManager.save
    def save(self, checkpoint_number=None, **kwargs):
      if checkpoint_number and checkpoint_number > 4:  # The disk fills up.
        raise tf.errors.ResourceExhaustedError(
            None, None, os.path.join(self.directory, "ckpt_temp/part-0.data: "
            + os.strerror(errno.ENOSPC)))
      return real(self, checkpoint_number=checkpoint_number, **kwargs)
    tf.train.CheckpointManager.save = save
"""


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path):
  workdir = tmp_path / "run"
  proc = _train(workdir, "--epochs=3", "--lr_decay_epochs=2",
                code=_FULL_DISK)
  assert proc.returncode == 1, proc.stderr[-3000:]
  line = _error_line(proc.stderr)
  assert "No space left on device" in line
  assert line.endswith(f"The run is kept at step 4 ({workdir}/checkpoints/"
                       "ckpt-4); the same command resumes it from there.")
  assert _steps(workdir) == [4]
  proc = _train(workdir, "--epochs=3", "--lr_decay_epochs=2")  # Space again.
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((workdir / "metrics.json").read_text())[
      "resumed_from_step"] == 4


@pytest.fixture
def read_only_mount(tmp_path):
  """A tmpfs mounted here, to be made read-only (skips where mounting is not
  permitted)."""
  mount = tmp_path / "mnt"
  mount.mkdir()
  if shutil.which("mount") is None or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
      capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here (needs root); the read-only "
                "workdir is tested where it can be")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_read_only_workdir_gets_one_line_from_every_command(
    tmp_path, read_only_mount):
  workdir = read_only_mount / "run"
  assert _train(workdir, "--epochs=1", "--lr_decay_epochs=1").returncode == 0
  subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)],
                 check=True)
  before = snapshot(workdir)
  proc = _train(workdir, "--epochs=1", "--lr_decay_epochs=1")  # Its rerun.
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Read-only file system" in _error_line(proc.stderr)
  for command in ("evaluate", "analyze"):
    proc = subprocess.run(
        [sys.executable, "-m", f"advisor_tf.{command}",
         f"--workdir={workdir}", "--folds=2"][:4 if command == "evaluate"
                                              else 5],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if "error:" in l]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "Read-only file system" in lines[0]
  assert snapshot(workdir) == before


@pytest.mark.parametrize("flags,message", [
    (["--workdir="], "--workdir is empty; give the folder the run writes"),
    (["--dataset=image_folder"],
     "--dataset=image_folder (a folder holding train/ and test/, one "
     "sub-folder per class) reads its images from --data_dir=DIR, which is "
     "not given."),
    (["--data_dir=/tmp"], "--data_dir=/tmp is not read by --dataset=digits"),
])
def test_missing_and_contradictory_flags_get_one_line(tmp_path, flags,
                                                      message):
  proc = subprocess.run(
      [sys.executable, "-m", "advisor_tf.train",
       "--flagfile=flags/quickstart.cfg", f"--workdir={tmp_path / 'run'}",
       *flags], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2
  assert message in _error_line(proc.stderr), proc.stderr
  assert not (tmp_path / "run").exists()


def test_a_noise_rate_without_noise_is_named_in_one_warning(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "advisor_tf.train",
       "--flagfile=flags/quickstart.cfg", f"--workdir={tmp_path / 'run'}",
       "--noise=none", "--noise_rate=0.5", "--dry_run"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  said = [l for l in proc.stderr.splitlines() if "--noise_rate" in l]
  assert len(said) == 1 and "--noise_rate=0.5 has no effect with " \
      "--noise=none" in said[0], proc.stderr


@pytest.mark.parametrize("line,message", [
    ("--epochz=3", "Unknown command line flag 'epochz'"),
    ("--lr=abc", "flag --lr=abc: could not convert string to float"),
])
def test_a_flagfile_error_names_the_file_and_line(tmp_path, line, message):
  inner = tmp_path / "inner.cfg"
  inner.write_text(f"# A comment.\n--epochs=3\n{line}\n")
  outer = tmp_path / "outer.cfg"
  outer.write_text(f"--flagfile=flags/quickstart.cfg\n--flagfile={inner}\n")
  proc = subprocess.run(
      [sys.executable, "-m", "advisor_tf.train", f"--flagfile={outer}",
       f"--workdir={tmp_path / 'run'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2
  assert _error_line(proc.stderr).startswith(
      f"advisor-train: error: {inner}:3: {message}"), proc.stderr
  assert not (tmp_path / "run").exists()


def _first_image(root, folder):
  return sorted(f for f in os.listdir(os.path.join(root, folder))
                if not f.startswith("."))[0]


def test_a_test_file_gone_after_training_is_named_not_a_lost_run(tmp_path):
  from test_own_data import digits_folder  # noqa: PLC0415 — a test helper.
  data = digits_folder(tmp_path / "photos", per_split=(24, 3, 4))
  workdir = tmp_path / "run"
  args = ["--dataset=image_folder", f"--data_dir={data}", "--image_size=8",
          "--meta_per_class=0", "--meta_source=folder", "--noise=none",
          "--batch_size=16", "--meta_batch_size=9", "--lr_decay_epochs=1"]
  assert _train(workdir, *args, "--epochs=1").returncode == 0
  files = json.loads((workdir / "splits.json").read_text())
  assert len(files["test"]) == 12 and len(files["train"]) == 72
  gone = os.path.join("test", "digit_1", _first_image(data, "test/digit_1"))
  os.remove(os.path.join(data, gone))
  proc = _train(workdir, *args, "--epochs=1")  # Finished: evaluated again.
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (f"split 'test': 12 examples in the workdir, 11 now (1 gone "
          f"({gone}))") in proc.stderr
  assert json.loads((workdir / "splits.json").read_text()) == files
  # A training file gone is another run's data: refused, naming it.
  lost = os.path.join("train", "digit_2",
                      _first_image(data, "train/digit_2"))
  os.remove(os.path.join(data, lost))
  proc = _train(workdir, *args, "--epochs=1")
  assert proc.returncode == 2
  assert (f"split 'train': 72 examples in the workdir, 71 now (1 gone "
          f"({lost}))") in _error_line(proc.stderr)
