"""Scale-out on one machine: real processes over gloo, an FSDP mesh, SIGTERM, and the launch scripts."""
import functools
import json
import os
import signal

import jax
import pytest

from helpers import assert_same_training, demo_config, launch_local, metrics_lines, saved_state
from resizer_jax import train
from resizer_jax import writers
from resizer_jax.data import input_pipeline


def test_mesh_from_config():
  assert dict(train.make_mesh().shape) == {"data": 8}
  assert dict(train.make_mesh((("data", -1), ("fsdp", 2))).shape) == {"data": 4, "fsdp": 2}
  with pytest.raises(ValueError, match=r"config.mesh=\(\('data', 3\),\) does not fit 8 devices"):
    train.make_mesh((("data", 3),))
  with pytest.raises(ValueError, match=r"has 4 devices but there are 8"):
    train.make_mesh((("data", 2), ("fsdp", 2)))


def test_fsdp_mesh_trains_the_same_model_as_data_parallel(tiny_run, data_dir, tmp_path):
  config = demo_config(data_dir, mesh=(("data", 4), ("fsdp", 2)))
  train.train_and_evaluate(config, str(tmp_path))
  # The large arrays really were split: each device holds half of them.
  _, state = saved_state(str(tmp_path))
  mesh = train.make_mesh(config.mesh)
  shardings = train.state_sharding(jax.eval_shape(lambda: state), mesh)
  split = [s for s in jax.tree.leaves(shardings) if s.spec != jax.sharding.PartitionSpec()]
  assert len(split) >= len(jax.tree.leaves(state["params"])) // 2
  assert_same_training(str(tmp_path), tiny_run[0], config.checkpoint_every_steps)


def test_sigterm_saves_the_current_step_and_the_rerun_ends_as_uninterrupted(
    tiny_run, data_dir, tmp_path, monkeypatch):
  """Also with metrics.jsonl written as on gs:// (no appends): rewritten with each checkpoint, not
  at every log step, and nothing logged before the preemption save is lost."""
  config = demo_config(data_dir)
  real_train_dataset = input_pipeline.train_dataset
  term_at = 9  # Not a checkpoint or log step; after the checkpoint at 6 and the log line at 8.

  def terminated_while_reading(*args, **kwargs):
    ds = real_train_dataset(*args, **kwargs)

    class Signalling:
      def as_numpy_iterator(self):
        for i, batch in enumerate(ds.as_numpy_iterator(), start=1):
          if i == term_at:
            os.kill(os.getpid(), signal.SIGTERM)
          yield batch
    return Signalling()

  workdir = str(tmp_path)
  monkeypatch.setattr(input_pipeline, "train_dataset", terminated_while_reading)
  monkeypatch.setattr(writers, "JsonlWriter", functools.partial(writers.JsonlWriter, append=False))
  real_write, writes = writers.write_atomically, []
  def counted_write(path, text):
    if path.name == "metrics.jsonl":
      writes.append([json.loads(line)["step"] for line in text.splitlines()])
    real_write(path, text)
  monkeypatch.setattr(writers, "write_atomically", counted_write)
  assert train.train_and_evaluate(config, workdir) == {}
  assert saved_state(workdir)[0] == term_at
  assert writes == [[4, 6], [4, 6, 8, 9]]  # At the checkpoint of step 6 and the preemption save.
  assert metrics_lines(workdir)[-1]["step"] == term_at  # What the saved steps trained is logged.

  monkeypatch.setattr(input_pipeline, "train_dataset", real_train_dataset)
  final = train.train_and_evaluate(config, workdir)
  assert final == pytest.approx(tiny_run[1], rel=1e-4)
  assert_same_training(workdir, tiny_run[0], config.checkpoint_every_steps)


def _launch(workdir, data_dir, stop_after_first_log=False):
  """launch/local.py with 2 processes x 4 devices; (exit status, output, seconds)."""
  sent = []

  def on_line(line, launcher):
    if stop_after_first_log and not sent and line.startswith("[0] step "):
      launcher.send_signal(signal.SIGTERM)  # As SLURM does: the launcher passes it on to both.
      sent.append(line)
  return launch_local(2, 4, ["--config=configs/demo.py:tiny", f"--config.data.data_dir={data_dir}",
                             f"--workdir={workdir}"], on_line=on_line, timeout=300)


@pytest.mark.slow  # Second tier (.ci/run): a real bootstrap or a long rehearsal.
def test_two_processes_over_gloo_train_as_one_and_survive_preemption(tiny_run, data_dir, tmp_path):
  """2 processes x 4 devices, preempted by SIGTERM after the first logged step and rerun, end like the
  uninterrupted 1 process x 8 devices run: the same global batches, parameters and metrics."""
  config = demo_config(data_dir)
  workdir = str(tmp_path)
  rc, out, first = _launch(workdir, data_dir, stop_after_first_log=True)
  assert rc == 0, out[-5000:]
  stopped_at = saved_state(workdir)[0]
  assert "Preempted: saved step" in out and stopped_at < config.num_train_steps

  rc, out, second = _launch(workdir, data_dir)
  assert rc == 0, out[-5000:]
  print(f"2-process runs: {first:.1f} s (preempted at step {stopped_at}) + {second:.1f} s")
  assert saved_state(workdir)[0] == config.num_train_steps
  assert_same_training(workdir, tiny_run[0], config.checkpoint_every_steps)

  # Only process 0 wrote the log, and it has the uninterrupted run's lines and values, plus a line
  # at the preemption step. Where the stop fell on a regular log step, that line skipped its eval;
  # elsewhere the next line's train averages cover only the steps since the restart.
  got = {l["step"]: l for l in metrics_lines(workdir)}
  expected = {l["step"]: l for l in metrics_lines(tiny_run[0])}
  assert set(got) == set(expected) | {stopped_at}
  first_after = min(s for s in expected if s > stopped_at)
  for step, line in expected.items():
    keys = [k for k in line if not k.endswith("_per_s")]  # Timings.
    if step == stopped_at:
      keys = [k for k in keys if not k.startswith("eval/")]
    elif step == first_after and stopped_at not in expected:
      keys = [k for k in keys if k.startswith("eval/")]
    for key in keys:
      assert got[step][key] == pytest.approx(line[key], rel=1e-3, abs=1e-5), (step, key)
