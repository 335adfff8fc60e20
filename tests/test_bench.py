"""The step-time benchmark tool: its rows, its breakdown and its profile."""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bench_rows_breakdown_and_profile(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, "-m", "advisor_tf.tools.bench", "--backbone=small_cnn",
       "--input_size=8", "--channels=1", "--batch_size=8",
       "--meta_batch_size=4", "--methods=ce,mfrw_mes",
       "--virtual_scopes=all,head", "--advice=exact,lagged", "--steps=1",
       "--rounds=1", "--warmup=1", "--breakdown=mfrw_mes",
       f"--profile={tmp_path / 'trace'}", f"--json={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  rows = {(r["method"], r["virtual_scope"], r["advice"]): r
          for r in report["results"]}
  assert set(rows) == {("ce", "all", "exact")} | {
      ("mfrw_mes", s, a) for s in ("all", "head")
      for a in ("exact", "lagged")}
  for row in rows.values():
    assert {"ratio_to_ce", "seconds_per_step", "peak_memory_mb",
            "images_per_s"} <= set(row)
    assert row["seconds_per_step"] > 0
  assert rows[("ce", "all", "exact")]["ratio_to_ce"] == 1.0
  phases = {b["advice"]: b["seconds"] for b in report["breakdown"]}
  assert set(phases) == {"exact", "lagged"}
  for seconds in phases.values():
    assert {"floor/train forward+backward", "floor/meta forward+backward",
            "floor/hypergradient (steps 1-3)", "floor/second-order term",
            "phase/train_forward", "phase/+virtual_step", "phase/+meta_step",
            "whole step", "overhead above the floor"} <= set(seconds)
  assert glob.glob(str(tmp_path / "trace" / "**" / "*.xplane.pb"),
                   recursive=True)


@pytest.mark.slow
def test_bench_refuses_unknown_choices_in_one_line():
  proc = subprocess.run(
      [sys.executable, "-m", "advisor_tf.tools.bench", "--methods=bogus"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "advisor-bench: error: --method='bogus' is not allowed; choose one of: "
      "ce, mwnet, mfrw, mes, mfrw_mes, balanced_softmax, eql, focal."]


@pytest.mark.slow
def test_sweep_measures_time_and_memory_per_variant_and_plots(tmp_path):
  out, plot = tmp_path / "sweep.json", tmp_path / "curves.png"
  proc = subprocess.run(
      [sys.executable, "-m", "advisor_tf.tools.bench", "--sweep",
       '--sweep_groups=[["small_cnn", 8, 1, 3, [4, 8], 4]]',
       "--methods=ce,mfrw_mes", "--virtual_scopes=all,head",
       "--advice=exact,lagged", "--remat=none,blocks", "--steps=1",
       "--rounds=1", "--warmup=1", f"--plot={plot}", f"--json={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  rows = report["sweep"]
  # ce, the exact step, and each knob off it alone.
  variants = {("ce", "all", "exact", "none"): "ce",
              ("mfrw_mes", "all", "exact", "none"): "exact",
              ("mfrw_mes", "all", "exact", "blocks"): "exact+remat",
              ("mfrw_mes", "all", "lagged", "none"): "lagged",
              ("mfrw_mes", "head", "exact", "none"): "head"}
  assert sorted((r["batch_size"], r["method"], r["virtual_scope"],
                 r["advice"], r["remat"]) for r in rows) == sorted(
                     (b,) + v for b in (4, 8) for v in variants)
  for r in rows:
    key = (r["method"], r["virtual_scope"], r["advice"], r["remat"])
    assert r["variant"] == variants[key]
    assert {"method", "virtual_scope", "advice", "remat", "peak_memory_mb",
            "baseline_memory_mb", "seconds_per_step"} <= set(r)
    assert r["baseline_memory_mb"] > 100 and r["peak_memory_mb"] >= 0
    assert r["peak_reset"] and r["seconds_per_step"] > 0
  assert all(r["memory_over_ce_mb"] == 0 for r in rows if r["method"] == "ce")
  assert {s["variant"] for s in report["scaling"]} == set(variants.values())
  assert "| exact+remat |" in proc.stdout  # The table.
  assert plot.stat().st_size > 10000
