"""A pod rehearsed on this machine: 16 devices as 4 processes x 4 simulated CPU devices over gloo,
configs/imagenet.py on a fake ILSVRC2012 through the real `imagenet2012` builder, a data x fsdp mesh.

SIGTERM to one process only: every process saves the same step and exits 0. The run resumes on
2 processes x 8 devices, keeping the data stream its checkpoint recorded (4 streams), and ends as
an uninterrupted run of the same global batch on 1 process x 8 devices reading the same 4 streams
(2 per device: what the batch is does not depend on how many devices split it).

What is rehearsed is the number of hosts and their streams, not the device count: 16 devices (64
before; 11 minutes for this test on the 2-core CI machine) keep the second tier short.
"""
import json
import os
import signal

import psutil
import pytest

from helpers import assert_same_training, launch_local, metrics_lines, saved_state

STEPS = 8


def main_args(imagenet, workdir, *extra, per_device_batch=1):
  data_dir, manual = imagenet["data_dir"], imagenet["manual_dir"]
  return ["--config=configs/imagenet.py:backbone=resnet_tiny,input=48,target=24",
          f"--config.data.data_dir={data_dir}", f"--config.data.manual_dir={manual}",
          "--config.mesh=(('data', -1), ('fsdp', 2))",
          f"--config.per_device_batch_size={per_device_batch}",
          f"--config.per_device_eval_batch_size={per_device_batch}",
          f"--config.num_train_steps={STEPS}", "--config.log_every_steps=1",
          "--config.eval_every_epochs=0", f"--config.eval_every_steps={STEPS}",
          "--config.checkpoint_every_epochs=0", "--config.checkpoint_every_steps=4",
          "--config.max_checkpoints_to_keep=10", "--config.num_pictures=0",
          f"--workdir={workdir}", *extra]


def launch(processes, args, *, devices=16, term_process=None, term_after_step=None):
  """launch/local.py with `processes` x (devices / processes) devices; (exit status, output, seconds).

  With term_process: SIGTERM to that one process (not the launcher) once process 0 has logged
  step term_after_step."""
  sent = []

  def on_line(line, launcher):
    if term_process is not None and not sent and line.startswith(f"[0] step {term_after_step}/"):
      child = next(c for c in psutil.Process(launcher.pid).children()
                   if f"--process_id={term_process}" in c.cmdline())
      child.send_signal(signal.SIGTERM)
      sent.append(child.pid)
  return launch_local(processes, devices // processes, args, on_line=on_line)


@pytest.mark.slow  # Second tier (.ci/run): a real bootstrap or a long rehearsal.
def test_a_4_host_pod_preempted_on_one_host_resumes_on_fewer_hosts_and_ends_as_one_run(
    fake_imagenet, tmp_path):
  workdir, reference = str(tmp_path / "pod"), str(tmp_path / "reference")

  rc, out, first = launch(4, main_args(fake_imagenet, workdir), term_process=2, term_after_step=2)
  assert rc == 0, out[-6000:]
  assert "[0]   devices 16 in 4 processes; mesh data=8 x fsdp=2" in out
  assert "[0]   data: 4 shuffled streams, 1 per process" in out
  stopped = saved_state(workdir)[0]
  assert f"[0] Preempted: saved step {stopped} of {STEPS}" in out and 2 < stopped < STEPS
  assert len(metrics_lines(workdir)) == stopped

  # On 2 hosts: the recorded 4 streams are kept (2 per process), so the batches are the same.
  rc, out, second = launch(2, main_args(fake_imagenet, workdir))
  assert rc == 0, out[-6000:]
  assert f"resuming at step {stopped}" in out
  assert "[0]   data: 4 shuffled streams, 2 per process" in out

  rc, out, third = launch(1, main_args(fake_imagenet, reference, "--config.data.num_shards=4",
                                       per_device_batch=2), devices=8)
  assert rc == 0, out[-6000:]
  assert "[0]   devices 8 in 1 processes; mesh data=4 x fsdp=2" in out
  print(f"pod rehearsal: 4x4 preempted at step {stopped} {first:.0f} s, 2x8 resume "
        f"{second:.0f} s, 1x8 reference {third:.0f} s")

  assert saved_state(workdir)[0] == STEPS
  assert_same_training(workdir, reference, early_step=4)
  for run in (workdir, reference):
    with open(os.path.join(run, "result.json")) as f:
      result = json.load(f)
    assert result["eval/examples"] == fake_imagenet["num_val"] and result["eval/skipped"] == 0
  evals = [l for l in metrics_lines(workdir) if "eval/examples" in l]
  assert [l["eval/examples"] for l in evals] == [fake_imagenet["num_val"]] * len(evals) and evals
