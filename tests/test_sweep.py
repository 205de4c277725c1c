"""Sweeps: the demo's tiny sweep trained point by point, rerun without retraining, aggregated."""
import csv
import json
import math
import os
import pathlib
import socket
import subprocess
import sys

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest

from resizer_jax import sweep
from resizer_jax import train
from resizer_jax.config_args import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = f"{REPO}/configs/demo.py:tiny"


def test_points_are_config_arguments():
  points = sweep.points(TINY)
  assert len(points) == 8
  assert points[0] == {"name": "target=8,resizer=bilinear,seed=0",
                       "overrides": {"target": 8, "resizer": "bilinear", "seed": 0},
                       "arg": "tiny,target=8,resizer=bilinear,seed=0"}
  assert len({p["name"] for p in points}) == 8
  assert len(sweep.points(f"{REPO}/configs/demo.py")) == 2 * 4 * 5


@pytest.mark.parametrize("launch,prefix", [
    ([], "python -m resizer_jax.main"),
    (["--launch=slurm", "--launch_args=--nodes=1"], "sbatch --nodes=1 launch/slurm.sbatch"),
    (["--launch=tpu", "--launch_args=--zone=us-central2-b,--accelerator=v4-8"],
     "launch/tpu.sh --zone=us-central2-b --accelerator=v4-8 --name=sweep-0"),
])
def test_dry_run_prints_each_runs_command(tmp_path, launch, prefix):
  workdir = tmp_path / "sweep"
  out = subprocess.run([sys.executable, "-m", "resizer_jax.sweep", f"--config={TINY}",
                        f"--workdir={workdir}", "--dry_run", *launch], cwd=REPO,
                       capture_output=True, text=True, timeout=120, check=True)
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 8
  assert lines[0] == (f"{prefix} --config={REPO}/configs/demo.py:tiny,target=8,"
                      f"resizer=bilinear,seed=0 --workdir={workdir}/target=8,resizer=bilinear,seed=0")
  assert not os.path.exists(workdir)


def test_mean_ci_is_the_t_interval():
  mean, half = sweep.mean_ci([0.5, 0.7, 0.6])
  # sd = 0.1, n = 3, t(0.975, df=2) = 4.302653
  assert mean == pytest.approx(0.6)
  assert half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
  assert math.isnan(sweep.mean_ci([0.5])[1])


def test_tiny_sweep_trains_reruns_without_retraining_and_aggregates(data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  workdir = str(tmp_path)
  # This process without the test session's compilation cache (conftest.py): it uses the sweep's.
  # The other worker inherits $JAX_COMPILATION_CACHE_DIR, which a sweep leaves to the user's.
  session_cache = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)
  try:
    rows = sweep.run(TINY, workdir, workers=2)  # This process and one more take turns.
    after = jax.config.jax_compilation_cache_dir
  finally:
    jax.config.update("jax_compilation_cache_dir", session_cache)
    compilation_cache.reset_cache()
  assert len(rows) == 8
  for point in sweep.points(TINY):  # Each point trained once, by one process; no lock left.
    steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, point["name"], "metrics.jsonl"))]
    assert len(steps) == len(set(steps)) and steps[-1] == 12
    assert not os.path.exists(os.path.join(workdir, point["name"], sweep.LOCK))
  assert {(r["target"], r["resizer"], r["seed"]) for r in rows} == {
      (t, r, s) for t in (8, 16) for r in ("bilinear", "learned") for s in (0, 1)}
  assert all(r["step"] == 12 and 0 <= r["eval/accuracy"] <= 1 for r in rows)

  # Later points loaded the compiled steps of earlier ones from the sweep's cache, and trained what
  # a point compiled afresh trains; the cache is this process's no longer.
  assert len(os.listdir(os.path.join(workdir, sweep.COMPILE_CACHE))) >= 2
  assert after is None
  point = sweep.points(TINY)[-1]
  train.train_and_evaluate(load_config(f"{REPO}/configs/demo.py:{point['arg']}"), str(tmp_path / "cold"))
  with open(tmp_path / "cold" / "result.json") as cold, open(
      os.path.join(workdir, point["name"], "result.json")) as cached:
    assert json.load(cold) == json.load(cached)

  checkpoints = {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("checkpoints/*")}
  assert sweep.run(TINY, workdir) == rows
  assert {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("checkpoints/*")} == checkpoints

  with open(os.path.join(workdir, "results.csv")) as f:
    table = list(csv.DictReader(f))
  assert len(table) == 8 and {"resizer", "target", "seed", "step", "eval/accuracy"} <= set(table[0])

  md = open(os.path.join(workdir, "results.md")).read()
  for target in (8, 16):
    learned = [r["eval/accuracy"] for r in rows if (r["target"], r["resizer"]) == (target, "learned")]
    mean, half = sweep.mean_ci(learned)
    assert f"| resizer=learned, target={target} | 2 | {mean:.4f} | {half:.4f} |" in md
    by_seed = {(r["resizer"], r["seed"]): r["eval/accuracy"] for r in rows if r["target"] == target}
    diff_mean, diff_half = sweep.mean_ci([by_seed["learned", s] - by_seed["bilinear", s]
                                          for s in (0, 1)])
    assert f"| target={target} | learned − bilinear | 2 | {diff_mean:+.4f} | {diff_half:.4f} |" in md
  with open(os.path.join(workdir, "results.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  # A launched sweep: only unfinished points are handed to the launcher; --collect writes what is
  # finished.
  assert not sweep.launch_commands(TINY, workdir, "slurm")
  os.remove(os.path.join(workdir, "target=16,resizer=learned,seed=1", "result.json"))
  assert sweep.launch_commands(TINY, workdir, "slurm") == [[
      "sbatch", "launch/slurm.sbatch", f"--config={REPO}/configs/demo.py:tiny,target=16,"
      "resizer=learned,seed=1", f"--workdir={workdir}/target=16,resizer=learned,seed=1"]]
  collected = sweep.collect(TINY, workdir)
  assert collected == [r for r in rows if (r["target"], r["resizer"], r["seed"]) != (16, "learned", 1)]
  with open(os.path.join(workdir, "results.csv")) as f:
    assert len(list(csv.DictReader(f))) == 7
  with pytest.raises(ValueError, match="unknown launcher 'k8s'; valid: local, slurm, tpu"):
    sweep.launch_commands(TINY, workdir, "k8s")


def test_a_point_is_trained_by_one_process_and_a_dead_ones_lock_is_taken_over(tmp_path):
  lock = tmp_path / sweep.LOCK
  assert sweep._claim(str(tmp_path))
  assert lock.read_text() == f"{socket.gethostname()} {os.getpid()}"
  assert not sweep._claim(str(tmp_path))  # Held by a live process (this one).
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  lock.write_text(f"{socket.gethostname()} {gone}")
  assert sweep._claim(str(tmp_path))  # Its holder was killed: taken over.
  lock.write_text(f"another-host {gone}")
  assert not sweep._claim(str(tmp_path))  # Another host's process cannot be checked from here.
  with pytest.raises(ValueError, match="workers=0"):
    sweep.run(TINY, str(tmp_path), workers=0)


def test_results_for_an_eval_variant_and_the_spread_under_each(tmp_path):
  rng = np.random.default_rng(0)
  rows = []
  for resizer in ("bilinear", "learned"):
    for seed in range(4):
      live, ema = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
      rows.append({"resizer": resizer, "target": 16, "seed": seed, "step": 10,
                   "eval/accuracy": ema, "eval/ema_running/accuracy": ema,
                   "eval/live_running/accuracy": live, "eval/live_running/loss": 1.0})
  sweep.write_results(rows, str(tmp_path), "eval/live_running/accuracy")
  md = (tmp_path / "results.md").read_text()
  assert md.startswith("eval/live_running/accuracy: mean")
  live = {(r["resizer"], r["seed"]): r["eval/live_running/accuracy"] for r in rows}
  mean, half = sweep.mean_ci([live["learned", s] - live["bilinear", s] for s in range(4)])
  assert f"| target=16 | learned − bilinear | 4 | {mean:+.4f} | {half:.4f} |" in md
  assert sweep.eval_variants(rows, "eval/accuracy") == ["ema_running", "live_running"]
  stds = {}
  for variant in ("ema_running", "live_running"):
    for resizer in ("bilinear", "learned"):
      values = [r[f"eval/{variant}/accuracy"] for r in rows if r["resizer"] == resizer]
      stds[variant, resizer] = np.std(values, ddof=1)
      assert f"| resizer={resizer}, target=16 | {variant} | 4 | {np.mean(values):.4f} |" in md
    pooled = math.sqrt((stds[variant, "bilinear"]**2 + stds[variant, "learned"]**2) / 2)
    assert f"| {variant} | 2 | {pooled:.4f} |" in md
  with pytest.raises(ValueError, match="not every run reports 'eval/ema_recomputed/accuracy'"):
    sweep.write_results(rows, str(tmp_path), "eval/ema_recomputed/accuracy")
