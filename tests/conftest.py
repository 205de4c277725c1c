"""Runs every test on 8 simulated CPU devices: the sharded code paths are the ones under test.

The suite trains the same small programs many times, in this process and in the subprocesses it
starts (which inherit the environment): JAX's persistent compilation cache, in a directory new for
each session, compiles each of them once. A cache hit is the same executable a compile would give.
Only programs that take a while to compile are kept: the eager ops of module inits and unit tests
compile in milliseconds, hundreds per test, and kept they grew the directory that every cache write
scans to tens of thousands of files, tripling late tests' times.
"""
import atexit
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

# Must happen before jax is imported anywhere.
# Once: pytest-xdist's workers import this file again, with the environment it set here.
# LLVM without optimisation: the suite's programs are tiny and run a few steps, so compiling them
# is most of a test's time (a tiny demo run: 20-30 s -> 15-17 s); the results differ by rounding.
_OURS = ("--xla_force_host_platform_device_count=", "--xla_backend_optimization_level=")
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_OURS)] +
    ["--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="resizer_jax_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  # The size limit turns on JAX's file lock: the processes of a multi-process run compile the same
  # programs at once, and one must not read an entry another is still writing.
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
                    JAX_COMPILATION_CACHE_MAX_SIZE=str(1 << 40))

# Once TensorFlow is loaded, importing triton (torchvision -> torch._dynamo -> triton) segfaults in
# this environment; the tests run torch on the CPU and never need it, and then torch does without.
sys.modules.setdefault("triton", None)

import pytest  # pylint: disable=g-import-not-at-top


def _once(tmp_path_factory, name, build):
  """`build()`'s JSON-able result, built by one process of the session: pytest-xdist's workers each
  run session fixtures, and these are minutes of the suite. The first worker to get here builds,
  the others wait for it and read its result (paths into its temp dir, which outlives the session)."""
  if "PYTEST_XDIST_WORKER" not in os.environ:
    return build()
  import filelock  # pylint: disable=g-import-not-at-top
  result = tmp_path_factory.getbasetemp().parent / f"{name}.json"
  with filelock.FileLock(f"{result}.lock"):
    if not result.is_file():
      result.write_text(json.dumps(build()))
    return json.loads(result.read_text())


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data dir holding the `resizer_demo/tiny` build, built once through the real builder."""
  def build():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from resizer_jax.data import demo  # pylint: disable=g-import-not-at-top,unused-import
    path = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("resizer_demo/tiny", data_dir=path).download_and_prepare()
    return path
  return _once(tmp_path_factory, "data_dir", build)


@pytest.fixture(scope="session")
def tiny_run(data_dir, tmp_path_factory):
  """(workdir, final eval metrics) of the demo's tiny variant trained on 8 devices, once per session.

  Tests may read it and rerun on it, but must leave it as an uninterrupted run left it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from helpers import demo_config  # pylint: disable=g-import-not-at-top
  from resizer_jax import train  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8
  def build():
    workdir = str(tmp_path_factory.mktemp("tiny_run"))
    return workdir, train.train_and_evaluate(demo_config(data_dir), workdir)
  return tuple(_once(tmp_path_factory, "tiny_run", build))


@pytest.fixture(scope="session")
def fake_imagenet(tmp_path_factory):
  """A fake ILSVRC2012 (64 train photos in 8 classes, 32 validation) prepared once by the real
  `imagenet2012` builder: {data_dir, manual_dir, num_val}, for configs/imagenet.py runs."""
  from helpers import REPO  # pylint: disable=g-import-not-at-top
  from resizer_jax.config_args import load_config  # pylint: disable=g-import-not-at-top
  from resizer_jax.data import imagenet_fixture  # pylint: disable=g-import-not-at-top
  from resizer_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  def build():
    root = tmp_path_factory.mktemp("fake_imagenet")
    manual, num_val = str(root / "manual"), 32
    imagenet_fixture.write_manual_dir(manual, num_classes=8, train_per_class=8, num_val=num_val,
                                      min_side=48, max_side=96)
    data = load_config(f"{REPO}/configs/imagenet.py").data
    data.data_dir, data.manual_dir = str(root / "tfds"), manual
    input_pipeline.get_builder(data, 1000)
    return dict(data_dir=data.data_dir, manual_dir=manual, num_val=num_val)
  return _once(tmp_path_factory, "fake_imagenet", build)


REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path):
  """A git checkout holding this working tree's files as its HEAD: what the launchers ship."""
  path = tmp_path / "checkout"
  files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
  for name in filter(None, (f.decode() for f in files)):
    if os.path.isfile(REPO / name):
      os.makedirs(path / os.path.dirname(name), exist_ok=True)
      shutil.copy2(REPO / name, path / name)
  git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
  for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the working tree"]):
    subprocess.run([*git, *cmd], cwd=path, check=True)
  return path
