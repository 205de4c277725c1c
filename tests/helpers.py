"""What several test files need: the demo config on the test build, and reading a run's outputs."""
import json
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from resizer_jax.config_args import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def demo_config(data_dir, arg="tiny", **overrides):
  config = load_config(f"{REPO}/configs/demo.py:{arg}")
  config.data.data_dir = data_dir
  for key, value in overrides.items():
    config[key] = value
  return config


def saved_state(workdir, step=None):
  """(step, state) of a run's checkpoint (the latest by default), restored as saved."""
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                             item_names=("state", "meta")) as mngr:
    step = mngr.latest_step() if step is None else step
    return step, mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]


def metrics_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def assert_trees_close(a, b, **tol):
  flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path), **tol)
