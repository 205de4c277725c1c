"""The trainer end to end: the demo's tiny variant on the real tiny build, real Orbax checkpoints."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from helpers import REPO, assert_same_training, assert_trees_close, demo_config, metrics_lines, saved_state
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
  assert set(final) == {"eval/loss", "eval/accuracy", "eval/top5_accuracy", "eval/skipped"}
  assert final["eval/skipped"] == 0 and all(l["data/skipped"] == 0 for l in lines)
  assert final == {k: v for k, v in lines[-1].items() if k.startswith("eval/")}
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  step, _ = saved_state(workdir)
  assert step == config.num_train_steps
  # Pictures at every eval: one row per sample image of original | baseline | learned.
  size = config.data.input_size
  for eval_step in (config.eval_every_steps, config.num_train_steps):
    with Image.open(os.path.join(workdir, "pictures", f"step_{eval_step:08d}.png")) as im:
      picture = np.asarray(im)
    assert picture.shape == (config.num_pictures * size, 3 * size, 3)
    baseline, learned = picture[:, size:2 * size], picture[:, 2 * size:]
    assert learned.min() == 0 and learned.max() == 255  # Stretched.
    assert not np.array_equal(baseline, learned)


def test_one_device_cli_run_ends_with_the_same_parameters(tiny_run, data_dir, tmp_path):
  """`python -m resizer_jax.main` on 1 device == the same steps sharded over 8 devices."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run(
      [sys.executable, "-m", "resizer_jax.main", "--config=configs/demo.py:tiny",
       f"--config.data.data_dir={data_dir}", f"--workdir={tmp_path}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  final = json.loads(out.stdout.strip().splitlines()[-1])
  assert final["eval/accuracy"] == pytest.approx(tiny_run[1]["eval/accuracy"])
  assert_same_training(str(tmp_path), tiny_run[0], demo_config(data_dir).checkpoint_every_steps)


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
  strip = lambda lines: [{k: v for k, v in l.items() if k != "train/images_per_s"} for l in lines]
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
  with pytest.raises(ValueError, match=r"unknown config argument 'resizr' in 'resizr=bilinear'; "
                     r"valid: resizer, input, target"):
    demo_config(data_dir, "resizr=bilinear")
