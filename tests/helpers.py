"""What several test files need: the demo config on the test build, and reading a run's outputs."""
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import jax
import numpy as np

from resizer_jax import checkpoint
from resizer_jax import preflight
from resizer_jax.config_args import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def one_device_env(**extra):
  """This environment for a subprocess on one CPU device: conftest.py's other XLA flags kept."""
  flags = os.environ["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8",
                                          "--xla_force_host_platform_device_count=1")
  assert flags != os.environ["XLA_FLAGS"], flags
  return dict(os.environ, XLA_FLAGS=flags, **extra)


def demo_config(data_dir, arg="tiny", **overrides):
  config = load_config(f"{REPO}/configs/demo.py:{arg}")
  config.data.data_dir = data_dir
  for key, value in overrides.items():
    config[key] = value
  return preflight.resolve(config)  # What the trainer builds (num_classes: the dataset's).


def saved_state(workdir, step=None):
  """(step, state) of a run's checkpoint (the latest by default), whatever topology wrote it."""
  step, state, _ = checkpoint.load(workdir, step)
  return step, state


def metrics_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def assert_trees_close(a, b, **tol):
  flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path), **tol)


def params_distance(a, b):
  return float(np.sqrt(sum(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64))**2)
                           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))))


def assert_same_training(workdir, reference, early_step):
  """The run in `workdir` trained as `reference` did, up to float rounding of another reduction
  order (other device or process counts, another mesh).

  Measured against how far training moved the parameters from `early_step` to the end: AdamW
  divides by sqrt(v), which turns rounding of near-zero gradients into visible differences in single
  parameters, so an element-wise tolerance would be arbitrary, while a wrong batch, step or
  learning rate moves the whole tree by a fraction of that distance.
  """
  (_, early), (_, end) = saved_state(workdir, early_step), saved_state(workdir)
  (_, ref_early), (_, ref_end) = saved_state(reference, early_step), saved_state(reference)
  moved = params_distance(ref_end["params"], ref_early["params"])
  ratios = {"params early": params_distance(early["params"], ref_early["params"]) / moved,
            "batch_stats early": params_distance(early["batch_stats"], ref_early["batch_stats"]) /
                                 params_distance(ref_end["batch_stats"], ref_early["batch_stats"]),
            "params end": params_distance(end["params"], ref_end["params"]) / moved}
  print("distance / distance moved:", ratios)
  # Seen: up to 7e-4 early, and up to 0.065 at the end, where AdamW's sign-like updates of
  # parameters with near-zero gradients have flipped with the rounding for a few more steps; the
  # same run reading its batches in another order: 1.3 and 2.3.
  assert ratios["params early"] < 5e-3 and ratios["batch_stats early"] < 5e-3, ratios
  assert ratios["params end"] < 0.25, ratios


def launch_local(num_processes, cpu_devices_per_process, args, *, on_line=None, timeout=900):
  """launch/local.py with these main `args`; (exit status, output, seconds).

  on_line(line, launcher) sees each output line as it comes (e.g. to send a signal)."""
  cmd = [sys.executable, "launch/local.py", f"--num_processes={num_processes}",
         f"--cpu_devices_per_process={cpu_devices_per_process}", *args]
  start = time.time()
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []

  def read():
    for line in proc.stdout:
      lines.append(line)
      if on_line:
        on_line(line, proc)
  reader = threading.Thread(target=read)
  reader.start()
  try:
    proc.wait(timeout=timeout)
  finally:
    proc.kill()
    reader.join()
  return proc.returncode, "".join(lines), time.time() - start
