"""`resizer_jax.load`: a run restored from its workdir alone, on another device count."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import REPO, demo_config
import resizer_jax
from resizer_jax import checkpoint
from resizer_jax import models

IMAGES = np.random.default_rng(0).integers(0, 256, (3, 100, 90, 3), np.uint8)


@pytest.fixture
def learned_run(tiny_run, data_dir):
  return tiny_run[0], demo_config(data_dir)


def test_load_gives_config_step_variables_and_the_trained_resizer(learned_run):
  workdir, config = learned_run
  run = resizer_jax.load(workdir)
  assert run.step == config.num_train_steps
  assert run.config.resizer.name == "learned" and run.config.num_classes == 4
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(run.variables))

  # The trainer's own path: its model, its checkpointed state, eval mode.
  _, state, _ = checkpoint.load(workdir)
  model = models.from_config(config)
  resizer_vars = {k: state[k]["resizer"] for k in ("params", "batch_stats")}
  expected = model.resizer.apply(resizer_vars, models.normalize(IMAGES), train=False)
  expected = expected * np.asarray(models.STDDEV_RGB) + np.asarray(models.MEAN_RGB)
  small = run.resize(IMAGES)
  assert small.shape == (3, 16, 16, 3)
  np.testing.assert_allclose(small, expected, rtol=1e-5, atol=1e-4)
  # Float images are read in [0, 1] and answered in [0, 1].
  np.testing.assert_allclose(run.resize(IMAGES / 255.0), small / 255.0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(run.resize(IMAGES[0]), small[:1], rtol=1e-5, atol=1e-4)

  logits = run.predict(IMAGES)
  want = model.apply({k: state[k] for k in ("params", "batch_stats")}, IMAGES, train=False)
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match=r"images must be \(H, W, 3\) or \(N, H, W, 3\), got shape"):
    run.resize(np.zeros((4, 4)))


def test_a_run_trained_on_8_devices_loads_in_a_1_device_process(learned_run, tmp_path):
  workdir, _ = learned_run
  np.save(tmp_path / "images.npy", IMAGES)
  code = ("import json, sys, numpy as np, jax, resizer_jax; run = resizer_jax.load(sys.argv[1]); "
          "x = np.load(sys.argv[2]); print(json.dumps([jax.device_count(), run.step, "
          "run.resize(x).tolist(), run.predict(x).tolist()]))")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run([sys.executable, "-c", code, workdir, str(tmp_path / "images.npy")],
                       env=env, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  devices, step, small, logits = json.loads(out.stdout.strip().splitlines()[-1])
  run = resizer_jax.load(workdir)
  assert (devices, step) == (1, run.step)
  np.testing.assert_allclose(small, run.resize(IMAGES), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(logits, run.predict(IMAGES), rtol=1e-4, atol=1e-4)


def test_the_example_notebook_executes_on_one_cpu(learned_run, tmp_path):
  """Runs every code cell of notebooks/restore.ipynb, in order, in a fresh 1-device process."""
  with open(REPO / "notebooks" / "restore.ipynb") as f:
    cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
  script = tmp_path / "notebook.py"
  script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" +
                    "\n\n".join("".join(c["source"]) for c in cells) +
                    "\nprint('SHAPE', small.shape, 'LOGITS', logits.shape)\n")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             RESIZER_WORKDIR=learned_run[0])
  out = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "SHAPE (1, 16, 16, 3) LOGITS (1, 4)" in out.stdout
