"""Sweeps: points from a file or a grid, staged points, their states, launch commands, the plan, the
results; the demo's tiny sweep trained point by point, rerun without retraining, aggregated."""
import csv
import json
import math
import os
import pathlib
import re
import shlex
import socket
import subprocess
import sys
import time

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest

from resizer_jax import results
from resizer_jax.data import demo_ava
from resizer_jax.data import input_pipeline
from resizer_jax import sweep
from resizer_jax import train
from resizer_jax.config_args import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = f"{REPO}/configs/demo.py:tiny"


def test_points_are_config_arguments():
  points = sweep.load(TINY).points
  assert len(points) == 8
  assert (points[0].name, points[0].overrides, points[0].arg, points[0].stage) == (
      "target=8,resizer=bilinear,seed=0", {"target": 8, "resizer": "bilinear", "seed": 0},
      "tiny,target=8,resizer=bilinear,seed=0", 0)
  assert len({p.name for p in points}) == 8
  assert len(sweep.load(f"{REPO}/configs/demo.py").points) == 2 * 4 * 5


def sweep_cli(*args, check=True, env=None):
  out = subprocess.run([sys.executable, "-m", "resizer_jax.sweep", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert not check or out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out


@pytest.mark.parametrize("launch,prefix", [
    ([], "python -m resizer_jax.main"),
    (["--launch=slurm", "--launch_args=--nodes=1"], "sbatch --parsable --nodes=1 launch/slurm.sbatch"),
])
def test_dry_run_prints_each_runs_command(tmp_path, launch, prefix):
  workdir = tmp_path / "sweep"
  lines = sweep_cli(f"--config={TINY}", f"--workdir={workdir}", "--dry_run", *launch
                    ).stdout.strip().splitlines()
  assert lines[0] == "# stage 0: 8 points" and len(lines) == 9
  assert lines[1] == (f"{prefix} --config={REPO}/configs/demo.py:tiny,target=8,"
                      f"resizer=bilinear,seed=0 --workdir={workdir}/target=8,resizer=bilinear,seed=0")
  assert not os.path.exists(workdir)


def test_the_imagenet_table1_sweep_is_staged_for_every_launcher(tmp_path, checkout):
  """Table 1's four backbones: a baseline each, then 4 resizers x 3 seeds fine-tuned from it."""
  config, workdir = f"{REPO}/configs/imagenet.py", str(tmp_path / "t1")
  table = sweep.load(config)
  assert [p.stage for p in table.points] == [0] * 4 + [1] * 48
  base = "backbone=resnet50,resizer=bilinear,input=224,target=224,seed=0"
  learned = [p for p in table.points if p.overrides.get("resizer") == "learned"
             and p.overrides["backbone"] == "resnet50"]
  assert [(p.init_from, p.overrides["input"], p.overrides["seed"]) for p in learned] == [
      (base, 448, s) for s in range(3)]
  assert all(p.init_from == base.replace("resnet50", p.overrides["backbone"]) for p in table.points[4:])
  assert learned[0].arg == "backbone=resnet50,resizer=learned,input=448,target=224,finetune=true,seed=0"
  assert sweep.point_config(table, learned[0], workdir).init_from == f"{workdir}/{base}"
  assert sweep.point_config(table, learned[0]).optimizer.learning_rate == 0.005  # The fine-tune's.

  local = sweep.launch_commands(table, workdir, "local")
  assert local[4][-2:] == [f"--config.init_from={workdir}/{base}".replace("resnet50", "inception_v2"),
                           f"--workdir={workdir}/{learned[0].name}".replace("resnet50", "inception_v2")]
  slurm = sweep.launch_commands(table, workdir, "slurm")
  assert slurm[4][2:4] == ["--dependency=afterok:<job of backbone=inception_v2,resizer=bilinear,"
                           "input=224,target=224,seed=0>", "--kill-on-invalid-dep=yes"]
  assert not any(a.startswith("--dependency") for a in slurm[0])
  tpu = sweep.launch_commands(table, workdir, "tpu", ["--zone=us-central2-b", "--accelerator=v4-32"])
  assert len(tpu) == 4  # A chain per backbone: its baseline, then its 12 fine-tunes, on one slice.
  steps = [a[len("--step="):] for a in tpu[2] if a.startswith("--step=")]
  assert tpu[2][:6] == ["launch/tpu.sh", "--name=t1-2", "--zone=us-central2-b",
                        "--accelerator=v4-32", "--queued", "--detach"]
  assert len(steps) == 13 and steps[0].endswith(f"--workdir={workdir}/{base}")
  assert shlex.split(steps[1]) == sweep.main_args(table, learned[0], workdir)
  # The launcher takes the chain as the sweep gives it (its checks: names, steps, order), from a
  # committed checkout as workers get it; the config check, seconds a step, is test_launch.py's.
  shipped = sweep.launch_commands(sweep.load(f"{checkout}/configs/imagenet.py:table1=densenet121"),
                                  workdir, "tpu", ["--zone=us-central2-b", "--accelerator=v4-32"])
  shown = subprocess.run(["bash", *shipped[0], "--dry-run"], cwd=checkout, capture_output=True,
                         text=True, timeout=60,
                         env=dict(os.environ, RESIZER_JAX_TPU_CHECK_CONFIG="0"))
  assert shown.returncode == 0, shown.stderr
  assert "gcloud compute tpus queued-resources create t1-0" in shown.stdout

  out = sweep_cli(f"--config={config}:table1=resnet50,seeds=2,inputs=320+448",
                  f"--workdir={tmp_path}", "--dry_run").stdout.splitlines()
  assert out[0] == "# stage 0: 1 points"
  assert out[2] == "# stage 1: 16 points, each after the point it starts from"
  assert len(out) == 2 + 1 + 16


def test_a_grid_from_python_or_the_command_line_and_bad_sweeps_in_one_line(tmp_path):
  demo = f"{REPO}/configs/demo.py"
  points = sweep.load(demo, {"target": [8, 16, 32], "resizer": ["bilinear", "learned"],
                             "seed": [0, 1]}).points
  assert len(points) == 12 and points[-1].name == "target=32,resizer=learned,seed=1"
  with_field = sweep.load(f"{demo}:tiny", {"config.num_train_steps": [3, 5]}, {"optimizer.learning_rate": 0.1})
  config = sweep.point_config(with_field, with_field.points[1])
  assert (config.num_train_steps, config.optimizer.learning_rate) == (5, 0.1)
  assert sweep.main_args(with_field, with_field.points[1], "/w") == [
      f"--config={demo}:tiny", "--config.optimizer.learning_rate=0.1", "--config.num_train_steps=5",
      "--workdir=/w/config.num_train_steps=5"]

  out = sweep_cli(f"--config={demo}", f"--workdir={tmp_path}", "--dry_run", "--grid=target=8,16,32",
                  "--grid=resizer=bilinear,learned", "--config.num_epochs=2").stdout.splitlines()
  assert len(out) == 1 + 6 and out[1].endswith(
      "--config.num_epochs=2.0 --workdir=" + str(tmp_path / "target=8,resizer=bilinear"))

  staged = tmp_path / "staged.py"
  for body, error in [
      ("grid={'tgt': [8]}", "unknown config argument 'tgt' in 'tgt=8' (did you mean 'target'?); "
       "valid: resizer, input, target"),
      ("grid={'resizer': ['bilnear']}", "point 'resizer=bilnear': unknown resizer 'bilnear'; valid: "),
      ("grid={'config.optimiser.name': ['sgd']}",
       "config has no field 'optimiser' (did you mean 'optimizer'?); valid: backbone"),
      ("sweep=lambda add, arg: [add(seed=0, init_from='seed=1'), add(seed=1, init_from='seed=0')]",
       "the points start from each other in a cycle: seed=0 -> seed=1 -> seed=0"),
      ("sweep=lambda add, arg: add(seed=0, init_from=sweep_lib.load(demo, {'seed': [0]}).points[0])",
       "init_from='seed=0' is a point of another sweep"),
      ("sweep=lambda add, arg: add(seed=0, init_from='seed=3')",
       "point 'seed=0' starts from 'seed=3', which the sweep does not add; valid: seed=0"),
      ("", f"{staged} defines no sweep(add, arg=None); give the points with --grid=KEY=V1,V2")]:
    grid_axes = eval(body.partition("=")[2]) if body.startswith("grid=") else None  # pylint: disable=eval-used
    staged.write_text("from resizer_jax import config_args\nfrom resizer_jax import sweep as sweep_lib\n"
                      f"demo = {demo!r}\nget_config = config_args.load_module(demo).get_config\n"
                      + (body if body.startswith("sweep=") else ""))
    with pytest.raises(ValueError, match=re.escape(error)):
      sweep.load(str(staged), grid_axes)
  out = sweep_cli(f"--config={staged}", f"--workdir={tmp_path}/w", "--dry_run", check=False)
  assert out.returncode == 2 and out.stderr.count("\n") == 1 and "defines no sweep" in out.stderr
  assert not os.path.exists(tmp_path / "w")


def test_mean_ci_is_the_t_interval():
  mean, half = results.mean_ci([0.5, 0.7, 0.6])
  # sd = 0.1, n = 3, t(0.975, df=2) = 4.302653
  assert mean == pytest.approx(0.6)
  assert half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
  assert math.isnan(results.mean_ci([0.5])[1])


@pytest.mark.slow  # Second tier (.ci/run): a real bootstrap or a long rehearsal.
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
  assert len(rows) == 8 and {r["state"] for r in rows} == {"finished"}
  for point in sweep.load(TINY).points:  # Each point trained once, by one process; no lock left.
    steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, point.name, "metrics.jsonl"))]
    assert len(steps) == len(set(steps)) and steps[-1] == 12
    assert not os.path.exists(os.path.join(workdir, point.name, sweep.LOCK))
  assert {(r["target"], r["resizer"], r["seed"]) for r in rows} == {
      (t, r, s) for t in (8, 16) for r in ("bilinear", "learned") for s in (0, 1)}
  assert all(r["step"] == 12 and 0 <= r["eval/accuracy"] <= 1 for r in rows)

  # Later points loaded the compiled steps of earlier ones from the sweep's cache, and trained what
  # a point compiled afresh trains; the cache is this process's no longer.
  assert len(os.listdir(os.path.join(workdir, sweep.COMPILE_CACHE))) >= 2
  assert after is None
  point = sweep.load(TINY).points[-1]
  train.train_and_evaluate(load_config(f"{REPO}/configs/demo.py:{point.arg}"), str(tmp_path / "cold"))
  with open(tmp_path / "cold" / "result.json") as cold, open(
      os.path.join(workdir, point.name, "result.json")) as cached:
    assert json.load(cold) == json.load(cached)

  checkpoints = {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("checkpoints/*")}
  assert sweep.run(TINY, workdir) == rows
  assert {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("checkpoints/*")} == checkpoints

  with open(os.path.join(workdir, "results.csv")) as f:
    table = list(csv.DictReader(f))
  assert len(table) == 8 and {"point", "state", "resizer", "target", "seed", "step",
                              "eval/accuracy"} <= set(table[0])

  md = open(os.path.join(workdir, "results.md")).read()
  for target in (8, 16):
    learned = [r["eval/accuracy"] for r in rows if (r["target"], r["resizer"]) == (target, "learned")]
    mean, half = results.mean_ci(learned)
    assert f"| resizer=learned, target={target} | 2 | {mean:.4f} | {half:.4f} |" in md
    by_seed = {(r["resizer"], r["seed"]): r["eval/accuracy"] for r in rows if r["target"] == target}
    diff_mean, diff_half = results.mean_ci([by_seed["learned", s] - by_seed["bilinear", s]
                                          for s in (0, 1)])
    assert f"| target={target} | learned − bilinear | 2 | {diff_mean:+.4f} | {diff_half:.4f} |" in md
  with open(os.path.join(workdir, "results.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  # A launched sweep: only unfinished points are handed to the launcher; --collect writes what is
  # finished.
  tiny = sweep.load(TINY)
  assert not sweep.launch_commands(tiny, workdir, "slurm")
  os.remove(os.path.join(workdir, "target=16,resizer=learned,seed=1", "result.json"))
  assert sweep.launch_commands(tiny, workdir, "slurm") == [[
      "sbatch", "--parsable", "launch/slurm.sbatch", f"--config={REPO}/configs/demo.py:tiny,"
      "target=16,resizer=learned,seed=1", f"--workdir={workdir}/target=16,resizer=learned,seed=1"]]
  collected = sweep.collect(TINY, workdir)
  assert [r for r in collected if r["state"] == "finished"] == [
      r for r in rows if (r["target"], r["resizer"], r["seed"]) != (16, "learned", 1)]
  with open(os.path.join(workdir, "results.csv")) as f:
    assert [r["state"] for r in csv.DictReader(f)] == ["finished"] * 7 + ["unfinished"]
  assert "| target=16,resizer=learned,seed=1 | unfinished |" in open(
      os.path.join(workdir, "results.md")).read()
  with pytest.raises(ValueError, match="unknown launcher 'k8s'; valid: local, slurm, tpu"):
    sweep.launch_commands(tiny, workdir, "k8s")


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
  results.write(rows, str(tmp_path), "eval/live_running/accuracy")
  md = (tmp_path / "results.md").read_text()
  assert md.startswith("eval/live_running/accuracy: mean")
  live = {(r["resizer"], r["seed"]): r["eval/live_running/accuracy"] for r in rows}
  mean, half = results.mean_ci([live["learned", s] - live["bilinear", s] for s in range(4)])
  assert f"| target=16 | learned − bilinear | 4 | {mean:+.4f} | {half:.4f} |" in md
  assert results.eval_variants(rows, "eval/accuracy") == ["ema_running", "live_running"]
  stds = {}
  for variant in ("ema_running", "live_running"):
    for resizer in ("bilinear", "learned"):
      values = [r[f"eval/{variant}/accuracy"] for r in rows if r["resizer"] == resizer]
      stds[variant, resizer] = np.std(values, ddof=1)
      assert f"| resizer={resizer}, target=16 | {variant} | 4 | {np.mean(values):.4f} |" in md
    pooled = math.sqrt((stds[variant, "bilinear"]**2 + stds[variant, "learned"]**2) / 2)
    assert f"| {variant} | 2 | {pooled:.4f} |" in md
  with pytest.raises(ValueError, match="not every run reports 'eval/ema_recomputed/accuracy'"):
    results.write(rows, str(tmp_path), "eval/ema_recomputed/accuracy")


STAGED = """from resizer_jax import config_args
get_config = config_args.load_module({demo!r}).get_config


def sweep(add, arg=None):
  good = add(resizer="bilinear")
  # Passes every check before training, and diverges at its first step.
  bad = add(resizer="bilinear", seed=1, **{{"config.optimizer.learning_rate": 1e30}})
  add(resizer="learned", init_from=good)
  add(resizer="learned", seed=1, init_from=bad)
  add(resizer="muller", **{{"config.init_from": {missing!r}}})
"""


@pytest.mark.slow  # Second tier (.ci/run): a real bootstrap or a long rehearsal.
def test_a_staged_sweep_trains_sources_first_and_a_failure_blocks_only_what_starts_from_it(
    data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  config = tmp_path / "staged.py"
  config.write_text(STAGED.format(demo=f"{REPO}/configs/demo.py", missing=str(tmp_path / "gone")))
  workdir = tmp_path / "sweep"
  good, bad, missing, learned, blocked = (p.name for p in sweep.load(f"{config}:tiny").points)
  assert missing == f"resizer=muller,config.init_from={str(tmp_path / 'gone').replace('/', '_')}"
  # Two workers: the second one waits for the source of the point it would take next.
  rows = sweep.run(f"{config}:tiny", str(workdir), workers=2)
  assert {r["point"]: r["state"] for r in rows} == {
      good: "finished", bad: "nonfinite", learned: "finished", blocked: "blocked", missing: "failed"}
  assert (workdir / learned / "config.json").stat().st_mtime >= (workdir / good / "result.json").stat().st_mtime
  assert json.load(open(workdir / learned / "config.json"))["init_from"] == str(workdir / good)
  errors = {r["point"]: r.get("error") for r in rows}
  assert re.match(r"step \d+: the loss or gradient norm is not finite; stopped without saving",
                  errors[bad])
  assert errors[missing].startswith(f"init_from={tmp_path / 'gone'} holds no checkpoint")
  assert not (workdir / missing / "checkpoints").exists()  # A refused start wrote nothing.
  assert not (workdir / blocked).exists()
  md = (workdir / "results.md").read_text()
  assert f"| {blocked} | blocked | it starts from {bad}, which did not finish |" in md

  # The command line: a rerun tries the failed points again, retrains nothing finished, and ends
  # with one line per point that did not finish and exit status 2.
  finished = {p: p.stat().st_mtime_ns for p in workdir.rglob("checkpoints/*")}
  out = sweep_cli(f"--config={config}:tiny", f"--workdir={workdir}", check=False,
                  env={**os.environ, "TFDS_DATA_DIR": data_dir})
  assert out.returncode == 2, out.stderr
  assert sorted(l.partition(": ")[2].partition(": ")[0] for l in out.stderr.splitlines()) == sorted(
      f"point {p} {s}" for p, s in ((bad, "nonfinite"), (blocked, "blocked"), (missing, "failed")))
  assert "sweep: 2 finished, 1 failed, 1 nonfinite, 1 blocked" in out.stdout
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("checkpoints/*")} == finished
  assert not any("INFO" in l or l.startswith("I0000") for l in out.stdout.splitlines() + out.stderr.splitlines())


def test_table1_shape_pairs_each_fine_tune_with_its_fixed_twin_and_its_baseline(tmp_path):
  acc = {"bilinear": [0.71, 0.72, 0.70], "learned": [0.74, 0.75, 0.73]}
  base = {"point": "b", "backbone": "resnet50", "resizer": "bilinear", "input": 224, "seed": 0,
          "stage": 0, "from": "", "state": "finished", "step": 9, "eval/accuracy": 0.70}
  rows = [base] + [
      {"point": f"{r}{s}", "backbone": "resnet50", "resizer": r, "input": 448, "finetune": True,
       "seed": s, "stage": 1, "from": "b", "state": "finished", "step": 3, "eval/accuracy": a}
      for r, values in acc.items() for s, a in enumerate(values)]
  rows.append({**rows[-1], "point": "learned3", "seed": 3, "state": "failed", "error": "boom"})
  del rows[-1]["eval/accuracy"], rows[-1]["step"]
  results.write(rows, str(tmp_path), paper={"resnet50": {"bilinear": 24.7, "learned": 23.0}})
  md = (tmp_path / "results.md").read_text()
  t = 4.302653 / math.sqrt(3)  # t(0.975, 2) / sqrt(n)
  # Top-1 error in percent: learned 26, 25, 27 -> 26 ± t; against bilinear's fine-tune -3 each
  # (no spread); against the baseline (30) -4, -5, -3 -> -4 ± t: both intervals exclude zero.
  assert ("| backbone=resnet50, input=224, resizer=bilinear | baseline (bilinear) | 1 | "
          "30.00 ± nan | | | 24.7 |") in md
  assert (f"| | resizer=learned | 3 | 26.00 ± {t:.2f} | bilinear: -3.00 ± 0.00 (3), better | "
          f"-4.00 ± {t:.2f} (3), better | 23.0 |") in md
  assert f"| | resizer=bilinear | 3 | 29.00 ± {t:.2f} |  | -1.00 ± {t:.2f} (3), within noise |  |" in md
  assert "| learned3 | failed | boom |" in md
  with open(tmp_path / "results.csv") as f:
    assert [r["state"] for r in csv.DictReader(f)] == ["finished"] * 7 + ["failed"]

  # Cells in numeric order: 8, 16, 32 (not 16, 32, 8).
  grid_rows = [{"point": f"t{t}", "target": t, "resizer": "bilinear", "seed": 0, "step": 1,
                "eval/accuracy": 0.5} for t in (16, 32, 8)]
  results.write(grid_rows, str(tmp_path))
  md = (tmp_path / "results.md").read_text()
  assert md.index("target=8 |") < md.index("target=16 |") < md.index("target=32 |")


def test_the_plan_gives_device_hours_where_measured_and_says_unknown_elsewhere(tmp_path):
  throughput = f"{REPO}/docs/throughput/h200.jsonl"
  [record] = [json.loads(l) for l in open(throughput) if '"bfloat16"' in l and '"global_batch": 256'
              in l and '"train"' in l]
  out = sweep_cli(f"--config={REPO}/configs/imagenet.py:table1=resnet50,seeds=1",
                  f"--workdir={tmp_path}", "--plan", "--devices=32", "--processes=4",
                  f"--throughput={throughput}").stdout
  # A fine-tune at 448 on 32 devices: 128 per device, 4096 global; 1,281,167 // 4096 = 312 steps
  # per epoch, 10 epochs; the H200's images/s per device times 32.
  images = 3120 * 4096
  wall = images / (record["images_per_s"] * 32) / 3600
  learned = "backbone=resnet50,resizer=learned,input=448,target=224,finetune=true,seed=0"
  assert f"| {learned} | 1 | 3,120 | {images:,} | 26 | {wall:.3g} | {wall * 32:.4g} |" in out
  baseline = "backbone=resnet50,resizer=bilinear,input=224,target=224,seed=0"
  assert f"| {baseline} | 0 | 14,040 | " in out and out.count("| unknown | unknown |") == 4
  assert (f"stage 1: 4 points, 12,480 steps; device-hours unknown: {wall * 32:.4g} for the 1 of 4 "
          "points measured, the rest not measured") in out
  out = sweep_cli(f"--config={REPO}/configs/imagenet.py", f"--workdir={tmp_path}", "--plan",
                  check=False)
  assert out.returncode == 2 and "--plan needs --devices=N" in out.stderr


CHAINS = """from resizer_jax import config_args
get_config = config_args.load_module({demo!r}).get_config


def sweep(add, arg=None):
  for seed in (0, 1):
    add(resizer="learned", seed=seed, init_from=add(resizer="bilinear", seed=seed))
"""


def test_a_slurm_sweep_submits_each_fine_tune_after_its_baseline_and_never_after_a_failed_one(
    tmp_path):
  """Against the stand-in sbatch, with a stand-in trainer (the python on PATH, --venv=none) that
  takes a second, records its arguments and fails for seed 1's baseline."""
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "python").write_text(
      "#!/usr/bin/env bash\n"
      "for a; do case $a in --workdir=*) wd=${a#*=} ;; esac; done\n"
      "mkdir -p \"$wd\" && echo \"$*\" > \"$wd/args\" && sleep 1\n"
      "[[ $wd == *resizer=bilinear,seed=1 ]] && exit 3\n"
      "echo '{\"step\": 1, \"eval/accuracy\": 0.5}' > \"$wd/result.json\"\n")
  (fake / "python").chmod(0o755)
  config = tmp_path / "chains.py"
  config.write_text(CHAINS.format(demo=f"{REPO}/configs/demo.py"))
  workdir = tmp_path / "sweep"
  env = {**os.environ, "PATH": f"{fake}:{REPO}/tests/standins:{os.environ['PATH']}",
         "STANDIN_ROOT": str(tmp_path / "cloud"), "RESIZER_JAX_VENV": "none"}
  out = subprocess.run([sys.executable, "-m", "resizer_jax.sweep", f"--config={config}:tiny",
                        f"--workdir={workdir}", "--launch=slurm",
                        f"--launch_args=--output={tmp_path}/slurm-%j.out"],
                       env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  names = [p.name for p in sweep.load(f"{config}:tiny").points]
  jobs = {n: (workdir / n / sweep.SLURM_JOB).read_text() for n in names}
  assert [l.split()[1] for l in out.stdout.splitlines()[:4]] == [f"{n}:" for n in names]

  def job(name):
    spool = tmp_path / "cloud" / "slurm" / f"job-{jobs[name]}"
    return {k: (spool / k).read_text().strip() if (spool / k).exists() else None
            for k in ("state", "reason", "started", "ended")}

  base0, base1, learned0, learned1 = names
  deadline = time.time() + 60
  while time.time() < deadline and not (job(learned0)["state"] == "COMPLETED" and
                                        job(learned1)["state"] == "CANCELLED"):
    time.sleep(0.2)
  assert float(job(learned0)["started"]) >= float(job(base0)["ended"])
  assert (workdir / learned0 / "args").read_text().split()[-2:] == [
      f"--config.init_from={workdir / base0}", f"--workdir={workdir / learned0}"]
  # --kill-on-invalid-dep=yes: cancelled once its baseline failed, never started.
  assert job(learned1)["state"] == "CANCELLED" and job(learned1)["started"] is None
  assert not (workdir / learned1 / "args").exists()
  rows = sweep.collect(f"{config}:tiny", str(workdir))
  assert [r["state"] for r in rows] == ["finished", "unfinished", "finished", "unfinished"]


def test_the_ava_table1_sweep_starts_each_baseline_from_the_imagenet_sweeps_baseline(tmp_path):
  data = {"data.data_dir": str(tmp_path / "tfds")}
  with pytest.raises(FileNotFoundError, match=r"^point 'backbone=inception_v2,resizer=bicubic,"
                     r"seed=0': ava is not prepared in .*missing: AVA.txt, aesthetics_image_lists/"):
    sweep.load(f"{REPO}/configs/ava.py:imagenet={tmp_path}/table1", fields=data)
  # With the release at hand (the stand-in's, in TFDS's default manual dir), the plan counts its
  # image lists without preparing it.
  demo_ava.write_release(tmp_path / "tfds" / "downloads" / "manual", "tiny")
  table = sweep.load(f"{REPO}/configs/ava.py:imagenet={tmp_path}/table1", fields=data)
  assert [p.stage for p in table.points] == [0] * 3 + [1] * 36
  base = table.points[0]
  assert base.name == "backbone=inception_v2,resizer=bicubic,seed=0"
  config = sweep.point_config(table, base)
  assert config.init_from == (f"{tmp_path}/table1/backbone=inception_v2,resizer=bilinear,input=224,"
                              "target=224,seed=0")  # The ImageNet Table 1 sweep's point.
  assert not config.init_head  # A fresh 10-way head on the ImageNet backbone.
  train_size, eval_size, _, source = input_pipeline.split_sizes(config.data)
  assert (train_size, eval_size) == (22, 8) and "the run prepares it at start" in source
  learned = table.points[3]
  assert (learned.init_from, sweep.point_config(table, learned, str(tmp_path)).init_head) == (
      base.name, True)
  with pytest.raises(ValueError, match=r"configs/ava.py's sweep needs imagenet=DIR"):
    sweep.load(f"{REPO}/configs/ava.py")
