"""A pod rehearsed on this machine: 64 devices as 4 processes x 16 simulated CPU devices over gloo,
configs/imagenet.py on a fake ILSVRC2012 through the real `imagenet2012` builder, a data x fsdp mesh.

SIGTERM to one process only: every process saves the same step and exits 0. The run resumes on
2 processes x 32 devices, keeping the data stream its checkpoint recorded (4 streams), and ends as
an uninterrupted 1 process x 64 devices run reading the same 4 streams.
"""
import json
import os
import signal

import psutil
import pytest

from helpers import REPO, assert_same_training, launch_local, metrics_lines, saved_state
from resizer_jax.data import imagenet_fixture
from resizer_jax.data import input_pipeline
from resizer_jax.config_args import load_config

STEPS = 8
NUM_VAL = 32


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
  """(data_dir, manual_dir): 64 train photos in 8 classes and 32 validation photos, prepared once."""
  root = tmp_path_factory.mktemp("pod_imagenet")
  manual = str(root / "manual")
  imagenet_fixture.write_manual_dir(manual, num_classes=8, train_per_class=8, num_val=NUM_VAL,
                                    min_side=48, max_side=96)
  data = load_config(f"{REPO}/configs/imagenet.py").data
  data.data_dir, data.manual_dir = str(root / "tfds"), manual
  input_pipeline.get_builder(data, 1000)
  return data.data_dir, manual


def main_args(imagenet, workdir, *extra):
  data_dir, manual = imagenet
  return ["--config=configs/imagenet.py:backbone=resnet_tiny,input=48,target=24",
          f"--config.data.data_dir={data_dir}", f"--config.data.manual_dir={manual}",
          "--config.mesh=(('data', -1), ('fsdp', 2))",
          "--config.per_device_batch_size=1", "--config.per_device_eval_batch_size=1",
          f"--config.num_train_steps={STEPS}", "--config.log_every_steps=1",
          "--config.eval_every_epochs=0", "--config.eval_every_steps=4",
          "--config.checkpoint_every_epochs=0", "--config.checkpoint_every_steps=4",
          "--config.max_checkpoints_to_keep=10", "--config.num_pictures=0",
          f"--workdir={workdir}", *extra]


def launch(processes, args, *, term_process=None, term_after_step=None):
  """launch/local.py with `processes` x (64 / processes) devices; (exit status, output, seconds).

  With term_process: SIGTERM to that one process (not the launcher) once process 0 has logged
  step term_after_step."""
  sent = []

  def on_line(line, launcher):
    if term_process is not None and not sent and line.startswith(f"[0] step {term_after_step}/"):
      child = next(c for c in psutil.Process(launcher.pid).children()
                   if f"--process_id={term_process}" in c.cmdline())
      child.send_signal(signal.SIGTERM)
      sent.append(child.pid)
  return launch_local(processes, 64 // processes, args, on_line=on_line)


def test_a_64_device_pod_preempted_on_one_host_resumes_on_fewer_hosts_and_ends_as_one_run(
    imagenet, tmp_path):
  workdir, reference = str(tmp_path / "pod"), str(tmp_path / "reference")

  rc, out, first = launch(4, main_args(imagenet, workdir), term_process=2, term_after_step=2)
  assert rc == 0, out[-6000:]
  assert "[0]   devices 64 in 4 processes; mesh data=32 x fsdp=2" in out
  assert "[0]   data: 4 shuffled streams, 1 per process" in out
  stopped = saved_state(workdir)[0]
  assert f"[0] Preempted: saved step {stopped} of {STEPS}" in out and 2 < stopped < STEPS
  assert len(metrics_lines(workdir)) == stopped

  # On 2 hosts: the recorded 4 streams are kept (2 per process), so the batches are the same.
  rc, out, second = launch(2, main_args(imagenet, workdir))
  assert rc == 0, out[-6000:]
  assert f"resuming at step {stopped}" in out
  assert "[0]   data: 4 shuffled streams, 2 per process" in out

  rc, out, third = launch(1, main_args(imagenet, reference, "--config.data.num_shards=4"))
  assert rc == 0, out[-6000:]
  print(f"pod rehearsal: 4x16 preempted at step {stopped} {first:.0f} s, 2x32 resume "
        f"{second:.0f} s, 1x64 reference {third:.0f} s")

  assert saved_state(workdir)[0] == STEPS
  assert_same_training(workdir, reference, early_step=4)
  for run in (workdir, reference):
    with open(os.path.join(run, "result.json")) as f:
      result = json.load(f)
    assert result["eval/examples"] == NUM_VAL and result["eval/skipped"] == 0
  evals = [l for l in metrics_lines(workdir) if "eval/examples" in l]
  assert [l["eval/examples"] for l in evals] == [NUM_VAL] * len(evals) and evals
