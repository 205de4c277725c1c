"""Runs every test on 8 simulated CPU devices: the sharded code paths are the ones under test."""
import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data dir holding the `resizer_demo/tiny` build, built once through the real builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from resizer_jax.data import demo  # pylint: disable=g-import-not-at-top,unused-import
  path = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder("resizer_demo/tiny", data_dir=path).download_and_prepare()
  return path


@pytest.fixture(scope="session")
def tiny_run(data_dir, tmp_path_factory):
  """(workdir, final eval metrics) of the demo's tiny variant trained on 8 devices, once per session.

  Tests may read it and rerun on it, but must leave it as an uninterrupted run left it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from helpers import demo_config  # pylint: disable=g-import-not-at-top
  from resizer_jax import train  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  return workdir, train.train_and_evaluate(demo_config(data_dir), workdir)
