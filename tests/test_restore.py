"""`resizer_jax.load`: a run restored from its workdir alone, on another device count."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import REPO, demo_config, one_device_env
import resizer_jax
from resizer_jax import checkpoint
from resizer_jax import models

# At configs/demo.py:tiny's input_size: what preprocess=None takes.
IMAGES = np.random.default_rng(0).integers(0, 256, (3, 128, 128, 3), np.uint8)


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
  small = run.resize(IMAGES, preprocess=None)
  assert small.shape == (3, 16, 16, 3)
  np.testing.assert_allclose(small, expected, rtol=1e-5, atol=1e-4)
  # Float images are read in [0, 1] and answered in [0, 1].
  np.testing.assert_allclose(run.resize(IMAGES / 255.0, preprocess=None), small / 255.0, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(run.resize(IMAGES[0], preprocess=None), small[:1], rtol=1e-5,
                             atol=1e-4)

  logits = run.predict(IMAGES, preprocess=None)
  want = model.apply({k: state[k] for k in ("params", "batch_stats")}, IMAGES, train=False)
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match=r"images must be \(H, W, 3\), \(N, H, W, 3\) or a list of "
                     r"\(H, W, 3\), got shape \(4, 4\)"):
    run.resize(np.zeros((4, 4)))


def test_predict_and_resize_preprocess_each_image_as_eval_does(learned_run):
  """The default preprocess="eval" is input_pipeline.preprocess_eval, per image of any size."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from resizer_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  run = resizer_jax.load(learned_run[0])
  size = run.config.data.input_size
  rng = np.random.default_rng(1)
  images = [rng.integers(0, 256, (h, w, 3), np.uint8)
            for h, w in ((300, 451), (451, 300), (100, 100), (size, size))]
  by_hand = np.stack([input_pipeline.preprocess_eval(tf.constant(x), run.config.data).numpy()
                      for x in images])
  logits, small = run.predict(images), run.resize(images)
  np.testing.assert_array_equal(logits, run.predict(by_hand, preprocess=None))
  np.testing.assert_array_equal(small, run.resize(by_hand, preprocess=None))
  # [0, 1] floats within half a level of the uint8 pixels round (and clip) to them.
  floats = [(x + rng.uniform(-0.45, 0.45, x.shape)) / 255 for x in images]
  np.testing.assert_array_equal(run.predict(floats), logits)
  np.testing.assert_allclose(run.resize(floats), small / 255.0, rtol=1e-6)
  # One HxWx3 image is a batch of one.
  np.testing.assert_allclose(run.predict(images[0]), logits[:1], rtol=1e-5, atol=1e-5)


def test_a_wrong_size_or_preprocess_is_one_line_naming_what_is_valid(learned_run):
  run = resizer_jax.load(learned_run[0])
  for method in (run.predict, run.resize):
    with pytest.raises(ValueError) as error:
      method(IMAGES[:, :100], preprocess=None)
    assert str(error.value) == (
        "images of 100x128 px with preprocess=None; the model takes 128x128 "
        "(config.data.input_size): give preprocess='eval' to resize and crop them as eval does")
    with pytest.raises(ValueError) as error:
      method(IMAGES, preprocess="train")
    assert str(error.value) == "unknown preprocess='train'; valid: 'eval', None"


def test_a_step_never_saved_is_one_line_naming_the_saved_steps(learned_run):
  workdir, _ = learned_run
  with pytest.raises(FileNotFoundError) as error:
    resizer_jax.load(workdir, step=7)
  assert str(error.value) == (
      f"no checkpoint of step 7 in {workdir}/checkpoints; saved steps: 6, 12")
  assert resizer_jax.load(workdir, step=6).step == 6


def test_a_run_trained_on_8_devices_loads_in_a_1_device_process(learned_run, tmp_path):
  workdir, _ = learned_run
  np.save(tmp_path / "images.npy", IMAGES)
  code = ("import json, sys, numpy as np, jax, resizer_jax; run = resizer_jax.load(sys.argv[1]); "
          "x = np.load(sys.argv[2]); print(json.dumps([jax.device_count(), run.step, "
          "run.resize(x, preprocess=None).tolist(), run.predict(x, preprocess=None).tolist()]))")
  env = one_device_env()
  out = subprocess.run([sys.executable, "-c", code, workdir, str(tmp_path / "images.npy")],
                       env=env, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  devices, step, small, logits = json.loads(out.stdout.strip().splitlines()[-1])
  run = resizer_jax.load(workdir)
  assert (devices, step) == (1, run.step)
  np.testing.assert_allclose(small, run.resize(IMAGES, preprocess=None), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(logits, run.predict(IMAGES, preprocess=None), rtol=1e-4, atol=1e-4)


def test_the_example_notebook_executes_on_one_cpu(learned_run, tmp_path):
  """Runs every code cell of notebooks/restore.ipynb, in order, in a fresh 1-device process."""
  with open(REPO / "notebooks" / "restore.ipynb") as f:
    cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
  script = tmp_path / "notebook.py"
  script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" +
                    "\n\n".join("".join(c["source"]) for c in cells) +
                    "\nprint('SHAPE', small.shape, 'LOGITS', logits.shape)\n")
  env = one_device_env(RESIZER_WORKDIR=learned_run[0])
  out = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "SHAPE (1, 16, 16, 3) LOGITS (1, 4)" in out.stdout
