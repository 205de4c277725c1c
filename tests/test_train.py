"""The trainer end to end: the demo's tiny variant on the real tiny build, real Orbax checkpoints."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from helpers import (REPO, assert_same_training, assert_trees_close, demo_config, metrics_lines,
                     one_device_env, saved_state)
from resizer_jax import pictures
from resizer_jax import train
from resizer_jax.data import input_pipeline




def test_tiny_demo_trains_on_8_devices_and_loss_falls(tiny_run):
  workdir, final = tiny_run
  lines = metrics_lines(workdir)
  config = demo_config(None)
  assert [l["step"] for l in lines] == sorted({
      s for s in range(1, config.num_train_steps + 1)
      if s % config.log_every_steps == 0 or s % config.eval_every_steps == 0} |
      {config.num_train_steps})
  losses = [l["train/loss"] for l in lines]
  assert losses[-1] < losses[0]
  assert set(final) == {"eval/loss", "eval/accuracy", "eval/top5_accuracy", "eval/skipped",
                        "eval/examples"}
  assert final["eval/examples"] == 16  # The whole test split, once, over 8 devices.
  assert final["eval/skipped"] == 0 and all(l["data/skipped"] == 0 for l in lines)
  assert final == {k: v for k, v in lines[-1].items() if k.startswith("eval/")}
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  step, _ = saved_state(workdir)
  assert step == config.num_train_steps
  # Pictures at every eval: one row per sample image of original | baseline | learned, under the
  # column captions and each under its label (tests/test_pictures.py checks the text).
  size, cap = config.data.input_size, pictures.CAPTION_HEIGHT
  for eval_step in (config.eval_every_steps, config.num_train_steps):
    with Image.open(os.path.join(workdir, "pictures", f"step_{eval_step:08d}.png")) as im:
      picture = np.asarray(im)
    assert picture.shape == (cap + config.num_pictures * (cap + size), 3 * size, 3)
    rows = np.concatenate([picture[cap + i * (cap + size) + cap:][:size]
                           for i in range(config.num_pictures)])
    baseline, learned = rows[:, size:2 * size], rows[:, 2 * size:]
    assert learned.min() == 0 and learned.max() == 255  # Stretched.
    assert not np.array_equal(baseline, learned)


def test_one_device_cli_run_ends_with_the_same_parameters(tiny_run, data_dir, tmp_path):
  """`python -m resizer_jax.main` on 1 device == the same steps sharded over 8 devices."""
  env = one_device_env()
  out = subprocess.run(
      [sys.executable, "-m", "resizer_jax.main", "--config=configs/demo.py:tiny",
       f"--config.data.data_dir={data_dir}", f"--workdir={tmp_path}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  final = json.loads(out.stdout.strip().splitlines()[-1])
  assert final["eval/accuracy"] == pytest.approx(tiny_run[1]["eval/accuracy"])
  assert_same_training(str(tmp_path), tiny_run[0], demo_config(data_dir).checkpoint_every_steps)

  # The console at default verbosity, as a user reads it: nothing on stderr (no library logging);
  # a header (the model, the workdir, then the plan indented); one line per step the run logged
  # (not per step), with the figures metrics.jsonl holds, and an eval's on the line after its
  # step's; then where the checkpoints and pictures went, and the final JSON.
  assert out.stderr == "", out.stderr[-3000:]
  lines = out.stdout.splitlines()
  first = next(i for i, line in enumerate(lines) if line.startswith("step "))
  header, body, tail = lines[:first], lines[first:-3], lines[-3:]
  assert header[0].startswith("learned resizer 128 px -> 16x16 px, resnet_tiny, classification on "
                              "resizer_demo/tiny (4 classes); "), header
  assert header[1] == f"workdir {tmp_path}: new run", header
  assert 6 <= len(header) - 2 <= 8 and all(line.startswith("  ") for line in header[2:]), header
  # configs/demo.py:tiny: 12 steps, a log every 4 steps, an eval and a checkpoint every 6.
  logged = metrics_lines(str(tmp_path))
  assert [m["step"] for m in logged] == [4, 6, 8, 12]
  expected = []
  for m in logged:
    step = m["step"]
    expected.append((f"step {step:2d}/12  loss {m['train/loss']:.4g}  accuracy "
                     f"{m['train/accuracy']:.4g}  grad_norm {m['train/grad_norm']:.4g}  ",
                     " steps/s  ETA " if step < 12 else " steps/s"))
    if step in (6, 12):
      expected.append((f"eval at step {step}: loss {m['eval/loss']:.4g}  accuracy "
                       f"{m['eval/accuracy']:.4g}  top5_accuracy {m['eval/top5_accuracy']:.4g}  ",
                       "  skipped 0  examples 16"))
  assert len(body) == len(expected) == 6, out.stdout
  for line, (start, rest) in zip(body, expected):
    assert line.startswith(start) and (rest in line if "ETA" in rest else line.endswith(rest)), (
        line, start, rest)
  assert tail[0] == f"checkpoints: steps 6, 12 in {tmp_path}/checkpoints", tail
  assert tail[1].startswith(f"pictures: {tmp_path}/pictures/step_*.png"), tail


def test_a_missing_dataset_is_one_line_on_stderr_and_verbosity_shows_the_traceback(tmp_path):
  env = one_device_env(TFDS_DATA_DIR=str(tmp_path / "tfds"))
  cmd = [sys.executable, "-m", "resizer_jax.main", "--config=configs/imagenet.py",
         f"--workdir={tmp_path / 'run'}"]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and out.stdout == ""
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr
  assert lines[0].startswith(f"error: imagenet2012 is not prepared in data_dir={tmp_path / 'tfds'}")
  assert "ILSVRC2012_img_val.tar" in lines[0] and "docs/data.md" in lines[0]
  assert not (tmp_path / "run").exists()
  verbose = subprocess.run(cmd + ["--verbosity=1"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
  assert verbose.returncode != 0 and "Traceback (most recent call last)" in verbose.stderr


def test_a_crashed_run_resumes_and_ends_where_an_uninterrupted_run_ends(
    tiny_run, data_dir, tmp_path, monkeypatch):
  config = demo_config(data_dir)
  # Die one step before the end: past the last periodic checkpoint and past a metrics line.
  crash_after = config.num_train_steps - 1
  assert config.checkpoint_every_steps < crash_after
  real_train_dataset = input_pipeline.train_dataset

  def dies_after_a_few_batches(*args, **kwargs):
    ds = real_train_dataset(*args, **kwargs)

    class Crashing:
      def as_numpy_iterator(self):
        yield from ds.take(crash_after).as_numpy_iterator()
        raise RuntimeError("simulated crash")
    return Crashing()

  workdir = str(tmp_path)
  monkeypatch.setattr(input_pipeline, "train_dataset", dies_after_a_few_batches)
  with pytest.raises(RuntimeError, match="simulated crash"):
    train.train_and_evaluate(config, workdir)
  assert saved_state(workdir)[0] == config.checkpoint_every_steps
  assert max(l["step"] for l in metrics_lines(workdir)) > config.checkpoint_every_steps

  monkeypatch.setattr(input_pipeline, "train_dataset", real_train_dataset)
  resumed = train.train_and_evaluate(config, workdir)

  step, state = saved_state(workdir)
  _, reference = saved_state(tiny_run[0])
  assert step == config.num_train_steps
  assert_trees_close(state["params"], reference["params"], rtol=1e-5, atol=1e-6)
  assert_trees_close(state["opt_state"], reference["opt_state"], rtol=1e-5, atol=1e-6)
  assert resumed == pytest.approx(tiny_run[1])
  # The metrics log equals the uninterrupted run's: no lost lines, no duplicates from the crash.
  strip = lambda lines: [{k: v for k, v in l.items() if not k.endswith("_per_s")}  # Timings.
                         for l in lines]
  expected = strip(metrics_lines(tiny_run[0]))
  got = strip(metrics_lines(workdir))
  assert [l["step"] for l in got] == [l["step"] for l in expected]
  for g, e in zip(got, expected):
    assert g == pytest.approx(e, rel=1e-4)


def test_rerun_of_a_finished_run_trains_nothing_and_reports_its_metrics(tiny_run, data_dir):
  workdir, final = tiny_run
  before = metrics_lines(workdir)
  assert train.train_and_evaluate(demo_config(data_dir), workdir) == pytest.approx(final)
  assert metrics_lines(workdir) == before


def test_a_workdir_of_another_model_is_refused_and_left_untouched(tiny_run, data_dir):
  workdir, _ = tiny_run
  snapshot = {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("*")}
  with pytest.raises(ValueError, match=r"holds a checkpoint of a different model \(resizer.name: "
                     r"'learned' in checkpoint vs 'bilinear' in config\)"):
    train.train_and_evaluate(demo_config(data_dir, "tiny,resizer=bilinear"), workdir)
  assert {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("*")} == snapshot


def test_a_resume_that_would_change_the_data_stream_is_refused_and_left_untouched(
    tiny_run, data_dir):
  workdir, _ = tiny_run
  snapshot = {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("*")}
  config = demo_config(data_dir)
  config.data.num_shards = 4  # The run read 2 streams.
  with pytest.raises(ValueError, match=r"would change the data stream \(num_shards: 2 in "
                     r"checkpoint vs 4 now\); set --config.data.num_shards=2 and a process count "
                     r"that divides it, or use a new --workdir"):
    train.train_and_evaluate(config, workdir)
  assert {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("*")} == snapshot


def test_batch_not_divisible_by_devices_is_a_clear_error(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"batch_size=12 is not divisible by the number of devices "
                     r"\(8\); use a multiple of 8"):
    train.train_and_evaluate(demo_config(data_dir, batch_size=12), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_unknown_names_are_clear_errors(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"unknown resizer 'bilinar'; valid: learned, control, bilinear"):
    train.train_and_evaluate(demo_config(data_dir, "tiny,resizer=bilinar"), str(tmp_path))
  config = demo_config(data_dir)
  config.backbone.name = "resnet5O"
  with pytest.raises(ValueError, match=r"unknown backbone 'resnet5O'; valid: .*resnet50"):
    train.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(ValueError, match=r"unknown config argument 'resizr' in 'resizr=bilinear' "
                     r"\(did you mean 'resizer'\?\); valid: resizer, input, target"):
    demo_config(data_dir, "resizr=bilinear")


def test_bfloat16_compute_tracks_the_float32_loss_curve(tiny_run, data_dir, tmp_path):
  """dtype=bfloat16 (what dtype=auto gives on accelerators): parameters, optimiser state and the
  loss stay float32, and the loss curve stays close to the float32 run's."""
  train.train_and_evaluate(demo_config(data_dir, dtype="bfloat16"), str(tmp_path))
  _, state = saved_state(str(tmp_path))
  assert {np.asarray(x).dtype for x in jax.tree.leaves((state["params"], state["opt_state"]))
          if np.issubdtype(np.asarray(x).dtype, np.floating)} == {np.dtype(np.float32)}
  f32, bf16 = metrics_lines(tiny_run[0]), metrics_lines(str(tmp_path))
  assert [l["step"] for l in bf16] == [l["step"] for l in f32]
  # Measured: at most 0.014 apart in train loss (about 1%) and 0.003 in eval loss.
  for a, b in zip(f32, bf16):
    assert abs(a["train/loss"] - b["train/loss"]) < 0.03, (a, b)
    if "eval/loss" in a:
      assert abs(a["eval/loss"] - b["eval/loss"]) < 0.01, (a, b)
