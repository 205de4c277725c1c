"""The IQA task through the trainer: the demo's tiny variant on the real `ava` builder, and the warm
start of an IQA run from a classification run (a new 10-way head on a trained backbone)."""
import json
import os

import jax
import numpy as np
import pytest

from helpers import REPO, metrics_lines
from resizer_jax import checkpoint
from resizer_jax import models
from resizer_jax import train
from resizer_jax.config_args import load_config


def iqa_config(data_dir, arg="tiny"):
  config = load_config(f"{REPO}/configs/demo_iqa.py:{arg}")
  config.data.data_dir = data_dir
  return config


def test_tiny_iqa_demo_trains_and_its_emd_falls(tmp_path):
  config = iqa_config(str(tmp_path / "tfds"))
  workdir = str(tmp_path / "run")
  final = train.train_and_evaluate(config, workdir)
  assert set(final) == {"eval/emd", "eval/accuracy", "eval/plcc", "eval/srcc", "eval/std_lcc",
                        "eval/std_srcc", "eval/skipped", "eval/examples"}
  assert final["eval/examples"] == 8  # The whole test split of ava/demo_tiny, once.
  evals = [l for l in metrics_lines(workdir) if "eval/emd" in l]
  assert [l["step"] for l in evals] == [config.eval_every_steps, config.num_train_steps]
  assert evals[-1]["eval/emd"] < evals[0]["eval/emd"]
  assert all(-1 <= final[k] <= 1 for k in ("eval/plcc", "eval/srcc"))
  with open(os.path.join(workdir, "result.json")) as f:
    assert json.load(f) == pytest.approx({"step": config.num_train_steps, **final})


def test_an_iqa_run_warm_starts_from_a_classification_run_with_a_fresh_head(tiny_run, tmp_path):
  config = iqa_config(str(tmp_path))
  config.unlock()
  config.init_head = False
  model = models.from_config(config)
  tx = train.make_optimizer(config, train.make_schedule(config, steps_per_epoch=10))
  fresh = jax.jit(train.make_init(model, tx, config.data.input_size))(jax.random.key(0))
  with pytest.raises(ValueError, match=r"params.backbone.head.kernel: \(128, 4\) in checkpoint vs "
                     r"\(128, 10\) in model"):
    checkpoint.warm_start(fresh, tiny_run[0])
  warm = checkpoint.warm_start(fresh, tiny_run[0], keep_fresh=("head",))
  _, saved, _ = checkpoint.load(tiny_run[0])
  for name, got in warm.params["backbone"].items():
    want = fresh.params["backbone"][name] if name == "head" else saved["params"]["backbone"][name]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(a, b)
