"""Timing train steps side by side (`bench`, `scale`): each runner's steps
in turn, round after round, so the machine's load falls on all alike."""

import time

import numpy as np


def sync(logs):
  """Waits for a step to finish (reading a value) and returns its loss."""
  return float(np.asarray(logs["loss"]))


def round_robin(runners, rounds, steps):
  """Runs each runner's `step()` `steps` times per round, for `rounds`
  rounds, appending each step's seconds to the runner's `times`."""
  for _ in range(rounds):
    for r in runners:
      for _ in range(steps):
        started = time.perf_counter()
        r["step"]()
        r["times"].append(time.perf_counter() - started)
