"""Pre-flight (resizer_jax/preflight.py): what cannot work is refused in one line before anything runs."""
import os
import re
import subprocess
import sys

import jax
import pytest

from helpers import REPO, one_device_env
from resizer_jax import checkpoint
from resizer_jax import config_args
from resizer_jax import preflight


def plan_command(*args, data_dir):
  env = one_device_env(TFDS_DATA_DIR=str(data_dir))
  return subprocess.run([sys.executable, "-m", "resizer_jax.main", "--plan", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("args, message", [
    (["--config=configs/imagenet.py:input=448,backbone=resnet5", "--devices=16", "--processes=4"],
     r"unknown backbone 'resnet5'; valid: densenet121, .*resnet50"),
    (["--config=configs/imagenet.py:inptu=448"],
     r"--config=configs/imagenet.py:inptu=448: unknown config argument 'inptu' in 'inptu=448' "
     r"\(did you mean 'input'\?\); valid: backbone, resizer, input,"),
    (["--config=configs/demo.py:tiny", "--config.optimizer.learning_rat=0.01"],
     r"config has no field 'optimizer.learning_rat' \(did you mean 'learning_rate'\?\); valid at "
     r"that level: .*learning_rate"),
    (["--config=configs/my_sweep.py"], r"--config=configs/my_sweep.py: no config file at "),
    # Found only when the resizer is traced: the abstract build catches it.
    (["--config=configs/demo.py:tiny", "--config.resizer.interpolation=bicubicc"],
     r"the model does not build .*: unknown interpolation 'bicubicc'; valid: bilinear, bicubic"),
    (["--config=configs/demo.py:tiny", "--devices=3"],
     r"batch_size=16 is not divisible by the number of devices \(3\)"),
])
def test_plan_refuses_what_the_run_would_in_one_line(args, message, tmp_path):
  out = plan_command(*args, data_dir=tmp_path)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and re.match(r"error: .*" + message, lines[0]), out.stderr
  assert out.stdout == ""


def test_a_plan_or_a_refusal_never_loads_tensorflow(data_dir, tmp_path):
  """The launchers run a plan per run before they create anything: it takes the seconds of JAX's
  import, not TensorFlow's too. A prepared dataset's sizes, an unprepared one's, and refusals."""
  probe = ("import atexit, runpy, sys; atexit.register(lambda: print('tensorflow loaded:', "
           "'tensorflow.python' in sys.modules)); sys.argv[0] = 'main'; "
           "runpy.run_module('resizer_jax.main', run_name='__main__')")
  for args, data, says in [
      (["--config=configs/demo.py:tiny"], data_dir, "44 train examples: 2 steps per epoch"),
      (["--config=configs/demo_iqa.py:tiny"], tmp_path, "22 train examples"),
      (["--config=configs/imagenet.py:backbone=resnet5"], tmp_path, "unknown backbone 'resnet5'"),
      (["--config=configs/ava.py"], tmp_path, "ava is not prepared in")]:
    out = subprocess.run([sys.executable, "-c", probe, "--plan", *args], cwd=REPO, text=True,
                         env=dict(os.environ, TFDS_DATA_DIR=str(data)), capture_output=True)
    assert says in out.stdout + out.stderr, out.stderr
    assert out.stdout.splitlines()[-1] == "tensorflow loaded: False", args


def test_plan_finds_the_data_where_the_run_would_and_says_how_to_prepare_it(tmp_path):
  # The demo before it is built: a plan, from the sizes the run will prepare, naming where.
  out = plan_command("--config=configs/demo.py:tiny", "--devices=2", data_dir=tmp_path)
  assert out.returncode == 0, out.stderr
  assert (f"split sizes: resizer_demo/tiny is not prepared yet in {tmp_path} ($TFDS_DATA_DIR); "
          "the run prepares it at start") in out.stdout
  assert "44 train examples: 2 steps per epoch" in out.stdout
  # The AVA stand-in is written by the run too.
  out = plan_command("--config=configs/demo_iqa.py:tiny", data_dir=tmp_path)
  assert out.returncode == 0, out.stderr
  assert "ava/demo_tiny is not prepared yet" in out.stdout and "22 train examples" in out.stdout
  # A dataset the run cannot prepare by itself: what is missing where, and the command.
  out = plan_command("--config=configs/ava.py", data_dir=tmp_path)
  assert out.returncode == 2
  assert re.fullmatch(
      rf"error: ava is not prepared in {tmp_path} \(\$TFDS_DATA_DIR\) and its split sizes are not "
      rf"known before it is; .* its manual download is not in manual_dir={tmp_path}/downloads/manual: "
      rf"expected AVA.txt, aesthetics_image_lists/, images/ there, .* or prepare once with: python -c "
      rf"\"import resizer_jax.data.input_pipeline; import tensorflow_datasets as tfds; "
      rf"tfds.builder\('ava', data_dir='{tmp_path}'\).download_and_prepare\(.*\)\" \(docs/iqa.md\)  \(.*\)\n",
      out.stderr), out.stderr
  assert os.listdir(tmp_path) == []  # A plan writes nothing.


def source_run(tmp_path, **backbone):
  """A workdir whose checkpoint recorded an EfficientNet-B0 config with `backbone` options (a real
  Orbax save; the state is small, only the recorded config is read)."""
  config = config_args.load_config(f"{REPO}/configs/imagenet.py:backbone=efficientnet_b0")
  config.backbone.update(backbone)
  workdir = str(tmp_path / "source")
  with checkpoint.manager(workdir, create=True) as mngr:
    checkpoint.save(mngr, 1, {"step": jax.numpy.zeros(())}, config)
    mngr.wait_until_finished()
  return workdir


def test_a_warm_start_takes_the_backbone_settings_its_weights_need(tmp_path):
  source = source_run(tmp_path, bn_epsilon=1e-5, bn_momentum=0.9, dropout_rate=0.3)
  config = config_args.load_config(f"{REPO}/configs/imagenet.py:backbone=efficientnet_b0,finetune")
  config.init_from = source
  resolved = preflight.resolve(config)
  assert resolved.backbone.bn_epsilon == 1e-5
  # Training-only settings stay this run's.
  assert resolved.backbone.bn_momentum is None and resolved.backbone.dropout_rate is None
  assert config.backbone.bn_epsilon is None  # The caller's config is left as it was.
  config.backbone.bn_epsilon = 1e-3
  with pytest.raises(ValueError, match=re.escape(
      f"config.backbone.bn_epsilon=0.001 but the weights of init_from={source} were trained with "
      "bn_epsilon=1e-05")):
    preflight.resolve(config)


def test_a_resumed_warm_start_keeps_what_it_carried_without_its_source(tmp_path):
  source = source_run(tmp_path, bn_epsilon=1e-5)
  config = config_args.load_config(f"{REPO}/configs/imagenet.py:backbone=efficientnet_b0,finetune")
  config.init_from = str(tmp_path / "gone")  # Deleted since the run started from it.
  assert preflight.resolve(config, workdir=source).backbone.bn_epsilon == 1e-5
  assert preflight.resolve(config).backbone.bn_epsilon is None  # Nothing to carry from.


def test_a_sweep_point_that_cannot_run_is_refused_before_any_trains(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "resizer_jax.sweep", "--config=configs/demo.py:tiny",
       f"--workdir={tmp_path}/sweep", "--grid=config.resizer.interpolation=bilinear,bicubicc"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds")))
  assert out.returncode == 2
  assert re.fullmatch(r"error: point 'config.resizer.interpolation=bicubicc': the model does not "
                      r"build .*unknown interpolation 'bicubicc'.*\n", out.stderr), out.stderr
  assert not os.path.exists(tmp_path / "sweep")


def test_the_shipped_configs_pass():
  """As a user first meets them, for a pod: no check refuses them."""
  for arg in ("configs/demo.py", "configs/demo.py:tiny", "configs/imagenet.py",
              "configs/imagenet.py:backbone=inception_v2,input=320,target=224"):
    checked = preflight.check(config_args.load_config(f"{REPO}/{arg}"), num_devices=8,
                              num_processes=2, platform="tpu")
    assert checked.plan.global_batch > 0 and checked.config.num_classes in (4, 1000), arg
