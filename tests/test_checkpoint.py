"""Checkpoints: loading whatever mesh wrote them, and the paper's warm start."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import demo_config
from resizer_jax import checkpoint
from resizer_jax import models
from resizer_jax import train


@pytest.fixture(scope="module")
def bilinear_run(data_dir, tmp_path_factory):
  """A baseline trained with a fixed resizer on 8 devices: what the paper warm-starts from."""
  workdir = str(tmp_path_factory.mktemp("bilinear"))
  train.train_and_evaluate(demo_config(data_dir, "tiny,resizer=bilinear"), workdir)
  return workdir


def fresh_state(config):
  model = models.from_config(config)
  tx = train.make_optimizer(config, train.make_schedule(config, steps_per_epoch=10))
  return jax.jit(train.make_init(model, tx, config.data.input_size))(jax.random.key(config.seed))


def test_a_checkpoint_written_on_8_devices_loads_in_a_1_device_process(bilinear_run):
  step, state, meta = checkpoint.load(bilinear_run)
  assert step == demo_config(None).num_train_steps
  assert meta["model"]["resizer"]["name"] == "bilinear"
  assert meta["config"]["data"]["name"] == "resizer_demo/tiny"
  code = ("import json, sys, numpy as np, jax; from resizer_jax import checkpoint; "
          "step, state, _ = checkpoint.load(sys.argv[1]); "
          "print(json.dumps([jax.device_count(), step, "
          "float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(state['params'])))]))")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run([sys.executable, "-c", code, bilinear_run], env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  devices, step_1, total = json.loads(out.stdout.strip().splitlines()[-1])
  assert (devices, step_1) == (1, step)
  expected = sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(state["params"]))
  assert total == pytest.approx(float(expected), rel=1e-6)


def test_warm_start_loads_exactly_the_backbone_and_leaves_the_resizer_fresh(bilinear_run, data_dir):
  config = demo_config(data_dir)
  fresh = fresh_state(config)
  warm = checkpoint.warm_start(fresh, bilinear_run)
  _, saved, _ = checkpoint.load(bilinear_run)
  for collection in ("params", "batch_stats"):
    for got, want in zip(jax.tree.leaves(getattr(warm, collection)["backbone"]),
                         jax.tree.leaves(saved[collection]["backbone"]), strict=True):
      np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(warm.params["resizer"]),
                       jax.tree.leaves(fresh.params["resizer"]), strict=True):
    np.testing.assert_array_equal(got, want)
  # The trained backbone really differs from a fresh one, so the comparison above means something.
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fresh.params["backbone"]),
                                                      jax.tree.leaves(warm.params["backbone"])))


def test_warm_start_through_the_trainer(bilinear_run, data_dir, tmp_path):
  config = demo_config(data_dir)
  config.init_from = bilinear_run
  final = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(final["eval/loss"])
  _, state, meta = checkpoint.load(str(tmp_path))
  assert meta["config"]["init_from"] == bilinear_run
  assert "resizer" in state["params"] and "backbone" in state["params"]


def test_warm_start_into_another_backbone_names_the_paths_and_loads_nothing(bilinear_run, data_dir):
  config = demo_config(data_dir)
  config.backbone.name = "resnet18"
  fresh = fresh_state(config)
  with pytest.raises(ValueError, match=r"init_from=.* does not fit this model: params\.backbone\."
                     r"head\.kernel: \(128, 4\) in checkpoint vs \(512, 4\) in model"):
    checkpoint.warm_start(fresh, bilinear_run)
  with pytest.raises(FileNotFoundError, match="no checkpoint under"):
    checkpoint.warm_start(fresh, os.path.join(bilinear_run, "nowhere"))
