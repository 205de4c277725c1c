"""The run plan: batch, learning rate and steps follow the hardware; what cannot run says why."""
import os
import subprocess
import sys

import pytest

from helpers import REPO
from resizer_jax import plan
from resizer_jax.config_args import load_config

IMAGENET_TRAIN = plan.KNOWN_SPLITS["imagenet2012"]["train"][0]


def imagenet_plan(arg="input=448", devices=16, processes=4, **overrides):
  config = load_config(f"{REPO}/configs/imagenet.py:{arg}")
  for key, value in overrides.items():
    config[key] = value
  return plan.make(config, num_devices=devices, num_processes=processes, num_train=IMAGENET_TRAIN,
                   num_eval=50_000, platform="tpu",
                   bytes_per_example=plan.KNOWN_SPLITS["imagenet2012"]["train"][1])


def run_plan(*args, data_dir="/nonexistent"):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TFDS_DATA_DIR=data_dir)
  return subprocess.run([sys.executable, "-m", "resizer_jax.main", "--plan", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_batch_and_the_learning_rate_follow_the_device_count():
  v4_32, v4_64 = imagenet_plan(devices=16, processes=4), imagenet_plan(devices=32, processes=8)
  assert (v4_32.per_device_batch, v4_32.global_batch) == (128, 2048)
  assert v4_64.global_batch == 2 * v4_32.global_batch
  assert v4_32.peak_learning_rate == pytest.approx(0.05 * 2048 / 256)
  assert v4_64.peak_learning_rate == pytest.approx(2 * v4_32.peak_learning_rate)
  # Epoch-based schedules and cadences keep their meaning: half the steps on twice the devices.
  assert v4_32.steps_per_epoch == IMAGENET_TRAIN // 2048
  assert v4_32.total_steps == 90 * v4_32.steps_per_epoch
  assert v4_32.warmup_steps == 5 * v4_32.steps_per_epoch
  assert v4_32.eval_every_steps == 5 * v4_32.steps_per_epoch
  assert v4_32.checkpoint_every_steps == v4_32.steps_per_epoch
  # Smaller inputs take larger per-device batches; fine-tuning starts 10x lower.
  assert imagenet_plan("input=224").per_device_batch > v4_32.per_device_batch
  assert imagenet_plan("input=448,finetune").peak_learning_rate == pytest.approx(
      v4_32.peak_learning_rate / 10)
  assert v4_32.dtype == "bfloat16" and imagenet_plan().dtype == "bfloat16"
  cpu = plan.make(load_config(f"{REPO}/configs/imagenet.py"), num_devices=8, num_processes=1,
                  num_train=IMAGENET_TRAIN, num_eval=50_000, platform="cpu")
  assert cpu.dtype == "float32"


def test_host_side_figures_account_for_each_process_share():
  p = imagenet_plan(devices=16, processes=4)
  assert p.num_shards == 4 and p.shards_per_process == 1
  assert p.images_per_epoch_per_process == p.steps_per_epoch * 2048 // 4
  assert p.shuffle_bytes_per_process == pytest.approx(
      p.shuffle_buffer_per_shard * plan.KNOWN_SPLITS["imagenet2012"]["train"][1])
  assert p.eval_steps * p.eval_global_batch >= 50_000  # Every validation example is seen.


@pytest.mark.parametrize("kwargs,message", [
    (dict(devices=12, processes=8), r"12 devices do not split evenly over 8 processes"),
    (dict(mesh=(("data", -1), ("fsdp", 3))), r"config.mesh=\(\('data', -1\), \('fsdp', 3\)\) "
     r"does not fit 16 devices"),
    (dict(batch_size=100, per_device_batch_size=0), r"batch_size=100 is not divisible by the "
     r"number of devices \(16\); use a multiple of 16, or set per_device_batch_size"),
])
def test_a_config_that_cannot_run_says_why_and_what_to_change(kwargs, message):
  with pytest.raises(ValueError, match=message):
    imagenet_plan(**kwargs)


def test_num_shards_must_fit_the_processes():
  config = load_config(f"{REPO}/configs/imagenet.py")
  config.data.num_shards = 6
  with pytest.raises(ValueError, match=r"data.num_shards=6 must be a multiple of the number of "
                     r"processes \(4\) and divide the global batch \(2048\); set "
                     r"--config.data.num_shards"):
    plan.make(config, num_devices=16, num_processes=4, num_train=IMAGENET_TRAIN, num_eval=1)


def test_plan_command_prints_a_pod_plan_without_any_accelerator():
  out = run_plan("--config=configs/imagenet.py:input=448", "--devices=256", "--processes=64")
  assert out.returncode == 0, out.stderr
  text = out.stdout
  assert "devices 256 in 64 processes; mesh data=256; compute bfloat16" in text
  assert "batch 32768 global = 128 per device (512 per process)" in text
  assert "learning rate peak 6.4" in text
  assert f"{IMAGENET_TRAIN} train examples: 39 steps per epoch, 3510 steps in all" in text
  assert "warning: global batch 32768 is above 8192" in text


def test_plan_command_refuses_an_impossible_layout_in_one_line():
  out = run_plan("--config=configs/imagenet.py:input=448", "--devices=16", "--processes=3")
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "error: 16 devices do not split evenly over 3 processes  (--verbosity=1 shows the traceback)"]
