"""The run plan: batch, learning rate and steps follow the hardware; what cannot run says why."""
import json
import re
import subprocess
import sys

import pytest

from helpers import REPO, one_device_env
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
  env = one_device_env(TFDS_DATA_DIR=data_dir)
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


# --- Costs from measured throughputs.

def throughput(**overrides):
  """A hand-made train record: 2000 images/s on 4 devices, 500 per device."""
  record = dict(workload="train", device_kind="NVIDIA H200", platform="gpu", num_devices=4,
                backbone="resnet50", resizer="learned", formulation="plain", input=448, output=224,
                dtype="bfloat16", global_batch=1024, images_per_s=2000.0, date="2026-12-01")
  return {**record, **overrides}


R50_448 = dict(backbone="resnet50", resizer="learned", input_size=448, output_size=224,
               dtype="bfloat16")


@pytest.mark.parametrize("change", [
    dict(backbone="resnet18"), dict(resizer="bilinear", formulation=None), dict(input=447),
    dict(output=192), dict(dtype="float32"), dict(workload="resizer", backbone=None)])
def test_a_throughput_matches_only_its_exact_point(change):
  assert plan.find_throughput([throughput()], **R50_448) == throughput()
  assert plan.find_throughput([throughput(**change)], **R50_448) is None


def test_throughput_lookup_filters_device_kind_formulation_and_batch_when_named():
  h200, v5e = throughput(), throughput(device_kind="TPU v5 lite", images_per_s=900.0)
  assert plan.find_throughput([h200, v5e], **R50_448, device_kind="tpu V5 Lite") == v5e
  assert plan.find_throughput([h200], **R50_448, device_kind="TPU v4") is None
  with pytest.raises(ValueError, match=r"measured on several device kinds \(NVIDIA H200, TPU v5 "
                     r"lite\); name the one meant"):
    plan.find_throughput([h200, v5e], **R50_448)
  s2d = throughput(formulation="s2d", images_per_s=2500.0)
  assert plan.find_throughput([h200, s2d], **R50_448, formulation="s2d") == s2d
  with pytest.raises(ValueError, match=r"several formulations \(plain, s2d\)"):
    plan.find_throughput([h200, s2d], **R50_448)
  # Several batches: the largest per device, unless the caller demands one.
  small = throughput(global_batch=32, images_per_s=700.0, date="2026-12-02")
  assert plan.find_throughput([h200, small], **R50_448) == h200
  assert plan.find_throughput([h200, small], **R50_448, per_device_batch=8) == small
  assert plan.find_throughput([h200, small], **R50_448, per_device_batch=128) is None
  # The same batch measured twice: the later date, then the later line.
  again = throughput(images_per_s=2100.0, date="2026-12-03")
  assert plan.find_throughput([again, h200], **R50_448) == again
  assert plan.find_throughput([h200, throughput(images_per_s=1.0)], **R50_448)["images_per_s"] == 1


def test_cost_is_steps_times_batch_over_the_per_device_throughput_times_the_devices():
  p = imagenet_plan(devices=16, processes=4)
  assert (p.total_steps, p.global_batch, p.eval_every_steps, p.eval_steps) == (56250, 2048, 3125, 25)
  c = plan.cost(p, throughput())
  # 56250 x 2048 images at 2000 / 4 x 16 = 8000 images/s: 14400 s, 4 h on 16 devices, 64 device-h.
  assert (c.steps, c.images) == (56250, 115_200_000)
  assert c.images_per_s == 8000.0
  assert c.wall_hours == pytest.approx(4.0) and c.device_hours == pytest.approx(64.0)
  assert c.eval_steps == 18 * 25  # 56250 / 3125 = 18 evaluations of 25 batches; not in the hours.
  assert "at batch 1024 (256 per device; the plan's 128), measured 2026-12-01" in c.source
  assert "4 h wall, 64 device-hours (excluding eval)" in c.line()
  # Twice the devices, twice the images/s; device-hours are images over the per-device rate
  # (here 28080 steps of 4096: the epoch's steps round down at the larger batch).
  c32 = plan.cost(imagenet_plan(devices=32, processes=8), throughput())
  assert (c32.images, c32.images_per_s) == (28080 * 4096, 16000.0)
  assert c32.device_hours == pytest.approx(28080 * 4096 / 500 / 3600)
  assert c32.wall_hours == pytest.approx(c32.device_hours / 32)
  unknown = plan.cost(p, None)
  assert (unknown.steps, unknown.images, unknown.eval_steps) == (56250, 115_200_000, 450)
  assert unknown.wall_hours is unknown.device_hours is unknown.source is None
  assert "hours unknown" in unknown.line()


def test_a_last_eval_off_the_cadence_is_counted():
  p = imagenet_plan(devices=16, processes=4, num_train_steps=7000)
  assert plan.num_evals(p) == 3  # At 3125, 6250 and the end.


def test_appending_throughputs_keeps_every_line_whole(tmp_path):
  path = tmp_path / "sub" / "t.jsonl"
  plan.append_throughputs(path, [throughput()])
  with open(path, "a") as f:
    f.write(json.dumps(throughput(images_per_s=1.5)))  # A hand edit without its newline.
  plan.append_throughputs(path, [throughput(images_per_s=2.5), throughput(images_per_s=3.5)])
  assert [r["images_per_s"] for r in plan.read_throughputs(path)] == [2000.0, 1.5, 2.5, 3.5]


@pytest.mark.parametrize("text,error", [
    (None, r"throughput file {path} does not exist; write one with python -m resizer_jax.bench"),
    (json.dumps(throughput()) + "\nnot json\n", r"throughput file {path}, line 2: not JSON \(Expecting value\)"),
    ("[1, 2]\n", r"throughput file {path}, line 1: a JSON list, not an object"),
    (json.dumps({"images_per_s": 3}), r"throughput file {path}, line 1: missing fields workload, "
     r"device_kind, num_devices"),
    ("\n" + json.dumps(throughput(images_per_s=0)), r"line 2: images_per_s is 0, not a positive"),
    (json.dumps(throughput(num_devices="4")), r"line 1: num_devices is '4', not a positive"),
])
def test_a_bad_throughput_file_says_which_line_and_what_is_wrong(text, error, tmp_path):
  path = tmp_path / "t.jsonl"
  if text is not None:
    path.write_text(text)
  with pytest.raises((ValueError, FileNotFoundError)) as e:
    plan.read_throughputs(path)
  assert re.search(error.format(path=re.escape(str(path))), str(e.value))
  assert "\n" not in str(e.value)


def test_the_h200_example_holds_only_the_figures_measured_in_docs_gpu():
  example = plan.read_throughputs(REPO / "docs/throughput/h200.jsonl")
  measured = [json.loads(line) for line in open(REPO / "docs/gpu/h200_2026-11-26.jsonl")]
  measured = [r for r in measured if r["impl"] == "jax"]
  assert [(r["workload"], r["backbone"], r["input"], r["output"], r["dtype"], r["global_batch"],
           r["images_per_s"], r["num_devices"], r["device_kind"]) for r in example] == [
      (r["workload"], r["backbone"], r["input"], r["output"], r["dtype"], r["batch"],
       r["images_per_s"], r["devices"], r["device_kind"]) for r in measured]
  record = plan.find_throughput(example, **R50_448, device_kind="NVIDIA H200")
  assert (record["global_batch"], record["images_per_s"]) == (256, 2102.348)


def test_plan_module_imports_neither_jax_nor_tensorflow():
  out = subprocess.run([sys.executable, "-c", "import sys, resizer_jax.plan; "
                        "print(sorted(m for m in ('jax', 'tensorflow') if m in sys.modules))"],
                       capture_output=True, text=True, check=True, cwd=REPO)
  assert out.stdout.split("\n")[-2] == "[]"
