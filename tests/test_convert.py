"""resizer_jax.convert: torchvision's eval logits from our backbones, and nothing written on bad input.

The torchvision models are built without weights (nothing is downloaded) and given BatchNorm
statistics and affine parameters far from their defaults, so that a mix-up of BN's four tensors, of
its epsilon or of a kernel's layout shows in the logits.
"""
import os
import re
import subprocess
import sys

import helpers
from helpers import REPO
import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision

import resizer_jax
from resizer_jax import checkpoint
from resizer_jax import config_args
from resizer_jax import convert
from resizer_jax import models
from resizer_jax import preflight
from resizer_jax import train

NAMES = ("resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0")
# How each is written and converted: both file formats, and the real command line once.
HOW = {"resnet50": (".pth", "function"), "mobilenet_v2": (".safetensors", "command"),
       "densenet121": (".safetensors", "function"), "efficientnet_b0": (".safetensors", "function")}
TOLERANCE = 1e-4  # Max abs logit difference, float32 on both sides.


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)


def torch_input(images):
  """torchvision's eval preprocessing after the crop, NCHW."""
  x = (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  return torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2)


def randomised(name, x):
  """torchvision's `name` in eval mode with random BN statistics, scales and offsets; its logits.

  Each BN's statistics are drawn around those of its own input on `x`, set by a hook as the
  forward pass reaches it (so the pass's logits are those of the final model): arbitrary statistics
  compound over 50 layers into logits in the hundreds, whose float32 rounding alone would exceed
  any tolerance meant for the mapping.
  """
  torch.manual_seed(0)  # torchvision's own initialisation of the convolutions and the head.
  gen = torch.Generator().manual_seed(0)
  uniform = lambda like, lo, hi: lo + (hi - lo) * torch.rand(like.shape, generator=gen)

  def set_statistics(bn, inputs):
    (y,) = inputs
    mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3))
    bn.running_mean.copy_(mean + uniform(mean, -0.5, 0.5) * var.sqrt())
    bn.running_var.copy_(var * uniform(var, 0.5, 2.0))
    bn.weight.copy_(uniform(bn.weight, 0.5, 1.5))
    bn.bias.copy_(uniform(bn.bias, -0.5, 0.5))

  model = getattr(torchvision.models, name)(weights=None).eval()
  norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  hooks = [bn.register_forward_pre_hook(set_statistics) for bn in norms]
  with torch.no_grad():
    logits = model(x).numpy()
  for hook in hooks:
    hook.remove()
  return model, logits


@pytest.fixture(scope="module")
def converted(images, tmp_path_factory):
  """name -> (workdir converted from a randomised torchvision model, its eval logits on `images`)."""
  cache = {}

  def get(name):
    if name not in cache:
      model, logits = randomised(name, torch_input(images))
      root = tmp_path_factory.mktemp(name)
      suffix, how = HOW[name]
      weights, workdir = str(root / f"{name}{suffix}"), str(root / "run")
      if suffix == ".pth":
        torch.save(model.state_dict(), weights)
      else:
        safetensors.torch.save_file(model.state_dict(), weights)
      if how == "command":
        out = subprocess.run([sys.executable, "-m", "resizer_jax.convert", "--source=torchvision",
                              f"--backbone={name}", f"--weights={weights}", f"--workdir={workdir}"],
                             cwd=REPO, capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr
        assert '"num_classes": 1000' in out.stdout
      else:
        convert.convert("torchvision", name, weights, workdir)
      cache[name] = workdir, logits
    return cache[name]
  return get


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_torchvisions(name, converted, images, record_property):
  workdir, want = converted(name)
  run = resizer_jax.load(workdir)
  assert (run.config.backbone.name, run.config.resizer.name, run.config.num_classes) == (
      name, "bilinear", 1000)
  got = run.predict(images, preprocess=None)  # Already the 224 px torchvision takes.
  diff = float(np.abs(got - want).max())
  print(f"{name}: max abs logit difference {diff:.2e} (logits up to {np.abs(want).max():.1f})")
  record_property("max_abs_logit_difference", diff)
  assert diff <= TOLERANCE


def test_bilinear_224_to_224_is_the_identity(converted, images):
  # The resizer of every converted run: the backbone must see exactly what torchvision's does.
  run = resizer_jax.load(converted("mobilenet_v2")[0])
  x = np.asarray(models.normalize(images))
  np.testing.assert_array_equal(run.model.resizer.apply({}, x), x)


def test_init_from_takes_the_converted_backbone(converted):
  workdir = converted("resnet50")[0]
  config = config_args.load_config(f"{REPO}/configs/imagenet.py:backbone=resnet50,resizer=learned,"
                                   "input=448,target=224")
  model = models.from_config(config)
  tx = train.make_optimizer(config, train.make_schedule(config, steps_per_epoch=10))
  # The state's exact structure, filled with numpy draws: compiling (or running eagerly) flax's
  # initialisers of ResNet-50 takes a minute here, and what is loaded does not depend on them.
  abstract = jax.eval_shape(train.make_init(model, tx, 32), jax.random.key(0))
  rng = np.random.default_rng(0)
  fresh = jax.tree.map(lambda s: jax.numpy.asarray(rng.normal(size=s.shape).astype(s.dtype)),
                       abstract)
  warm = checkpoint.warm_start(fresh, workdir)
  _, saved, _ = checkpoint.load(workdir)
  for collection in ("params", "batch_stats"):
    got = jax.tree_util.tree_flatten_with_path(getattr(warm, collection)["backbone"])[0]
    want = jax.tree.leaves(saved[collection]["backbone"])
    assert len(got) == len(want)
    for (path, x), y in zip(got, want):
      np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  for x, y in zip(jax.tree.leaves(warm.params["resizer"]), jax.tree.leaves(fresh.params["resizer"]),
                  strict=True):
    np.testing.assert_array_equal(x, y)


def test_a_warm_start_from_converted_weights_computes_torchvisions_logits(converted, images):
  """The converted EfficientNet-B0 recorded PyTorch's BatchNorm epsilon: a fine-tune from it that
  leaves the epsilon unset takes it (resizer_jax/preflight.py), so the same weights compute the same
  logits; with our default epsilon they would not."""
  workdir, want = converted("efficientnet_b0")
  config = config_args.load_config(f"{REPO}/configs/imagenet.py:backbone=efficientnet_b0,"
                                   "resizer=bilinear,input=224,target=224,finetune")
  config.init_from = workdir
  variables = resizer_jax.load(workdir).variables
  logits = lambda c: np.asarray(models.from_config(c).apply(variables, images, train=False))
  assert np.abs(logits(preflight.resolve(config)) - want).max() <= TOLERANCE
  assert np.abs(logits(config) - want).max() > 10 * TOLERANCE  # Without the carried epsilon.


def numpy_state_dict(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


def test_densenets_legacy_names_are_accepted():
  current = numpy_state_dict(torchvision.models.densenet121(weights=None))
  # How torchvision's own old checkpoints name them: "norm.1.weight" for "norm1.weight".
  legacy = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v
            for k, v in current.items()}
  assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
  variables, _ = convert.to_variables("densenet121", legacy)
  layer = variables["params"]["block1_layer1"]
  np.testing.assert_array_equal(layer["BatchNorm_0"]["scale"],
                                current["features.denseblock1.denselayer1.norm1.weight"])
  np.testing.assert_array_equal(layer["Conv_1"]["kernel"], current[
      "features.denseblock1.denselayer1.conv2.weight"].transpose(2, 3, 1, 0))
  with pytest.raises(ValueError, match=r"densenet121 state dict holds layers under both"):
    convert.to_variables("densenet121", {**current, **legacy})


def test_a_deeper_resnet_is_refused_by_its_unused_blocks():
  with torch.device("meta"):  # Shapes only: nothing allocated, nothing initialised.
    shapes = {k: v.shape for k, v in torchvision.models.resnet101(weights=None).state_dict().items()}
  state_dict = {k: np.broadcast_to(np.float32(0), shape) for k, shape in shapes.items()}
  # Layer 3 has 23 blocks instead of 6; each holds 3 convs and 3 BNs of 4 tensors.
  with pytest.raises(ValueError, match=r"not torchvision's resnet50 .*: 255 unused \(layer3\.10\."):
    convert.to_variables("resnet50", state_dict)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Weight files of other architectures, and of our resnet50 in shapes no converter accepts."""
  root = tmp_path_factory.mktemp("files")
  torch.manual_seed(0)
  paths = {"resnet18": str(root / "resnet18.safetensors"),
           "mobilenet_v2": str(root / "mobilenet_v2.safetensors"),
           "training_checkpoint": str(root / "checkpoint.pth"), "npz": str(root / "weights.npz")}
  safetensors.torch.save_file(torchvision.models.resnet18(weights=None).state_dict(),
                              paths["resnet18"])
  mobilenet = torchvision.models.mobilenet_v2(weights=None).state_dict()
  safetensors.torch.save_file(mobilenet, paths["mobilenet_v2"])
  torch.save({"model": mobilenet, "epoch": 3}, paths["training_checkpoint"])
  np.savez(paths["npz"], **numpy_state_dict(torchvision.models.resnet18(weights=None)))
  return paths


# (source, backbone, weights (a key of `files`, or a path), what the message must say).
BAD_INPUTS = {
    "resnet18 as resnet50": (
        "torchvision", "resnet50", "resnet18",
        r"^the state dict is not torchvision's resnet50 \(another architecture or size\?\): "
        r"165 missing \(layer1\.0\.bn3\.\{bias, running_mean, running_var, weight\}, "
        r"layer1\.0\.conv3\.weight, .*; 24 of another shape \(file vs ours\) \(fc\.weight "
        r"\(1000, 512\) vs \(1000, 2048\), layer1\.0\.conv1\.weight \(64, 64, 3, 3\) vs "
        r"\(64, 64, 1, 1\), "),
    "mobilenet_v2 as densenet121": (
        "torchvision", "densenet121", "mobilenet_v2",
        r"^the state dict is not torchvision's densenet121 .*: 606 missing \(classifier\.\{bias, "
        r"weight\}, features\.conv0\.weight, .*; 262 unused \(classifier\.1\.\{bias, weight\}, "
        r"features\.0\.0\.weight, "),
    "unknown backbone": (
        "torchvision", "resnet51", "resnet18",
        r"^unknown backbone 'resnet51' for --source=torchvision; valid: densenet121, "
        r"efficientnet_b0, mobilenet_v2, resnet50$"),
    "inception_v2": (
        "torchvision", "inception_v2", "resnet18",
        r"^unknown backbone 'inception_v2' for --source=torchvision; valid: .*, resnet50 "
        r"\(inception_v2's weights are --source=tfslim's\)$"),
    "unknown source": ("timm", "resnet50", "resnet18",
                       r"^unknown --source 'timm'; valid: torchvision, tfslim$"),
    "no such file": ("torchvision", "resnet50", "/nowhere/resnet50.pth",
                     r"^--weights=/nowhere/resnet50\.pth: no such file$"),
    "not a state dict": ("torchvision", "mobilenet_v2", "training_checkpoint",
                         r"holds no state dict of tensors \(found \['epoch', 'model'\]\); save "
                         r"model\.state_dict\(\) itself$"),
    "another format": ("torchvision", "resnet50", "npz",
                       r"weights\.npz: expected a \.safetensors, \.pth or \.pt file$"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_in_one_line_and_writes_nothing(case, files, tmp_path):
  source, backbone, weights, message = BAD_INPUTS[case]
  workdir = tmp_path / "run"
  with pytest.raises((ValueError, FileNotFoundError)) as e:
    convert.convert(source, backbone, files.get(weights, weights), str(workdir))
  assert re.search(message, str(e.value)), str(e.value)
  assert "\n" not in str(e.value)
  assert not os.listdir(tmp_path)


def test_a_pth_without_torch_is_refused(files, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError.
  with pytest.raises(ValueError, match=r"checkpoint\.pth needs torch \(pip install torch\), or save"
                                       r" the state dict as \.safetensors"):
    convert.convert("torchvision", "mobilenet_v2", files["training_checkpoint"],
                    str(tmp_path / "run"))
  assert not os.listdir(tmp_path)


def test_a_workdir_with_a_checkpoint_is_left_as_it_is(converted, files):
  workdir = converted("mobilenet_v2")[0]
  before = sorted(os.walk(workdir))
  siblings = os.listdir(os.path.dirname(workdir))
  with pytest.raises(ValueError, match=f"^--workdir={re.escape(workdir)} already holds a checkpoint"):
    convert.convert("torchvision", "mobilenet_v2", files["mobilenet_v2"], workdir)
  assert sorted(os.walk(workdir)) == before
  assert os.listdir(os.path.dirname(workdir)) == siblings


def test_a_failed_write_leaves_no_directory(files, tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(checkpoint, "save", fail)
  (tmp_path / "run").mkdir()  # An empty workdir is taken, and must be left as it was.
  with pytest.raises(OSError, match="disk full"):
    convert.convert("torchvision", "mobilenet_v2", files["mobilenet_v2"], str(tmp_path / "run"))
  assert os.listdir(tmp_path) == ["run"] and not os.listdir(tmp_path / "run")


def test_the_command_line_says_what_is_wrong_in_one_line(files, tmp_path):
  out = subprocess.run([sys.executable, "-m", "resizer_jax.convert", "--source=torchvision",
                        "--backbone=resnet50", f"--weights={files['mobilenet_v2']}",
                        f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
                       check=False)
  assert out.returncode == 2, out.stderr
  assert re.fullmatch(r"error: the state dict is not torchvision's resnet50 .*  \(--verbosity=1 "
                      r"shows the traceback\)\n", out.stderr), out.stderr
  assert not os.listdir(tmp_path)


@pytest.mark.slow  # Second tier (.ci/run): a real bootstrap or a long rehearsal.
def test_the_papers_recipe_fine_tunes_the_learned_resizer_from_torchvision_resnet50(
    converted, fake_imagenet, tmp_path):
  """docs/weights.md's two commands (convert, then configs/imagenet.py:...,finetune with init_from) on the
  fake ILSVRC2012, at 64 -> 32 px and 2 steps instead of 448 -> 224 px and 10 epochs."""
  converted_dir = converted("resnet50")[0]
  workdir = str(tmp_path / "finetune")
  out = subprocess.run(
      [sys.executable, "-m", "resizer_jax.main",
       "--config=configs/imagenet.py:backbone=resnet50,input=64,target=32,finetune",
       f"--config.init_from={converted_dir}", f"--workdir={workdir}",
       f"--config.data.data_dir={fake_imagenet['data_dir']}",
       f"--config.data.manual_dir={fake_imagenet['manual_dir']}",
       "--config.per_device_batch_size=1", "--config.per_device_eval_batch_size=4",
       "--config.num_train_steps=2", "--config.eval_every_epochs=0",
       "--config.checkpoint_every_epochs=0", "--config.num_pictures=0"],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert f"  backbone from {converted_dir}; the resizer starts fresh" in out.stdout
  # Fine-tuning's learning rate: 0.005 at a batch of 256, here 8.
  assert "learning rate peak 0.000156" in out.stdout, out.stdout

  run, start = resizer_jax.load(workdir), resizer_jax.load(converted_dir)
  assert run.step == 2 and run.config.resizer.name == "learned"
  # Two small steps away from torchvision's weights, not a fresh initialisation.
  start_params = start.variables["params"]["backbone"]
  moved = helpers.params_distance(run.variables["params"]["backbone"], start_params)
  assert 0 < moved < 1e-2 * helpers.params_distance(start_params, jax.tree.map(np.zeros_like,
                                                                                start_params))
  assert set(run.variables["params"]) == {"resizer", "backbone"}
