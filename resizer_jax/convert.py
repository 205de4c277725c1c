r"""Published weights -> a run directory of our backbone behind a bilinear 224 -> 224 resizer.

  python -m resizer_jax.convert --source=torchvision --backbone=resnet50 \
      --weights=resnet50.safetensors --workdir=runs/tv_resnet50
  python -m resizer_jax.convert --source=tfslim --backbone=inception_v2 \
      --weights=inception_v2.ckpt --workdir=runs/tfslim_inception_v2

--source=torchvision: resnet50, mobilenet_v2, densenet121, efficientnet_b0; --weights is a
torchvision state dict: .safetensors (read without torch) or .pth/.pt (needs torch).
--source=tfslim: inception_v2; --weights is a TF-slim checkpoint (tensorflow/models research/slim,
built with `inception_arg_scope()`): its prefix (DIR/model.ckpt of model.ckpt.index and
model.ckpt.data-*), or the one file of a V1 checkpoint such as the published inception_v2.ckpt.

The workdir is a normal run directory: `--config.init_from=DIR` warm-starts a training run's
backbone from it, and `resizer_jax.load(DIR).predict(uint8 images, preprocess=None)` gives the
source's eval logits (the resize 224 -> 224 is the identity) on the inputs it was trained on,
which the run records as config.normalization: torchvision's `(images / 255 - mean) / std`
("imagenet"), TF-slim's `images / 127.5 - 1` ("inception").

What else the source's numerics need, the run records as backbone options, which a run
warm-started from it takes (resizer_jax/preflight.py), as it takes the normalization:
torchvision's EfficientNet-B0 uses PyTorch's BatchNorm, not our module's TF defaults
(bn_epsilon=1e-5; bn_momentum=0.9 too, which changes only training and is not carried: give
--config.backbone.bn_momentum=0.9); TF-slim's inception_v2 has a stem with a bias and no BatchNorm
(stem_batch_norm=False, resizer_jax/models/inception_v2.py). TF-slim's 1001 classes start with a
background class, which is dropped: the converted model is 1000-way, in the label order of TFDS's
imagenet2012 (the sorted synsets, slim's classes 1..1000), so that it fine-tunes on it as it is.

Every tensor of the file must land on a variable of ours and every variable must be filled, with
the same shape; else nothing is written. The directory appears whole (written beside it, then
renamed) or not at all.
"""
import json
import os
import pathlib
import re
import shutil
import uuid

from absl import app
from absl import flags
import flax
import jax
import jax.numpy as jnp
import numpy as np

from resizer_jax import checkpoint
from resizer_jax import cli
from resizer_jax import config_args
from resizer_jax import models
from resizer_jax.models.efficientnet import MBCONV_SETTING
from resizer_jax.models.mobilenet_v2 import INVERTED_RESIDUAL_SETTING

FLAGS = flags.FLAGS

# The eval crop of both sources' ImageNet models (torchvision's: resize to 256, centre crop 224).
INPUT_SIZE = 224
IMAGENET_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "imagenet.py"


def _numbers(name: str) -> list[int]:
  """"stage2_block1" -> [2, 1]; "Conv_0" -> [0]."""
  return [int(n) for n in re.findall(r"\d+", name)]


def _layer(name: str, convs: list[str], norms: list[str]) -> str:
  """Flax's auto-named Conv_i / BatchNorm_i of a block -> the i-th torch conv / norm in it."""
  kind, i = name.rsplit("_", 1)
  return {"Conv": convs, "BatchNorm": norms}[kind][int(i)]


# Each takes a module's path in our variables and gives torchvision's name for that module.
def _resnet50(path):
  top = {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc"}
  if path[0] in top:
    return top[path[0]]
  stage, block = _numbers(path[0])
  layer = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}.get(path[1]) or _layer(
      path[1], ["conv1", "conv2", "conv3"], ["bn1", "bn2", "bn3"])
  return f"layer{stage}.{block - 1}.{layer}"


def _mobilenet_v2(path):
  num_blocks = sum(n for _, _, n, _ in INVERTED_RESIDUAL_SETTING)
  top = {"stem_conv": "features.0.0", "stem_bn": "features.0.1", "head": "classifier.1",
         "last_conv": f"features.{num_blocks + 1}.0", "last_bn": f"features.{num_blocks + 1}.1"}
  if path[0] in top:
    return top[path[0]]
  stage, block = _numbers(path[0])
  index = 1 + sum(n for _, _, n, _ in INVERTED_RESIDUAL_SETTING[:stage - 1]) + block - 1
  # Without expansion torchvision's block is [dw conv-bn-relu6, conv, bn], else with one in front.
  if INVERTED_RESIDUAL_SETTING[stage - 1][0] == 1:
    layer = _layer(path[1], ["conv.0.0", "conv.1"], ["conv.0.1", "conv.2"])
  else:
    layer = _layer(path[1], ["conv.0.0", "conv.1.0", "conv.2"], ["conv.0.1", "conv.1.1", "conv.3"])
  return f"features.{index}.{layer}"


def _densenet121(path):
  top = {"stem_conv": "features.conv0", "stem_bn": "features.norm0", "final_bn": "features.norm5",
         "head": "classifier"}
  if path[0] in top:
    return top[path[0]]
  if path[0].startswith("transition"):
    return f"features.{path[0]}.{_layer(path[1], ['conv'], ['norm'])}"
  block, layer = _numbers(path[0])
  return (f"features.denseblock{block}.denselayer{layer}."
          f"{_layer(path[1], ['conv1', 'conv2'], ['norm1', 'norm2'])}")


def _efficientnet_b0(path):
  last = len(MBCONV_SETTING) + 1
  top = {"stem_conv": "features.0.0", "stem_bn": "features.0.1", "head": "classifier.1",
         "last_conv": f"features.{last}.0", "last_bn": f"features.{last}.1"}
  if path[0] in top:
    return top[path[0]]
  stage, block = _numbers(path[0])
  expanding = MBCONV_SETTING[stage - 1][0] != 1
  # torchvision's block: [expand conv-bn-silu (if expanding), dw conv-bn-silu, SE, project conv-bn].
  parts = ["0", "1", "3"] if expanding else ["0", "2"]
  if path[1].startswith("SqueezeExcite"):
    layer = f"{2 if expanding else 1}.{'fc1' if path[2] == 'reduce' else 'fc2'}"
  else:
    layer = _layer(path[1], [f"{p}.0" for p in parts], [f"{p}.1" for p in parts])
  return f"features.{stage}.{block - 1}.block.{layer}"


TORCH_NAMES = {"resnet50": _resnet50, "mobilenet_v2": _mobilenet_v2, "densenet121": _densenet121,
               "efficientnet_b0": _efficientnet_b0}
# --source -> the backbones it publishes weights of.
SOURCES = {"torchvision": tuple(sorted(TORCH_NAMES)), "tfslim": ("inception_v2",)}
# What each source's models were trained on (resizer_jax.models.NORMALIZATIONS).
NORMALIZATION = {"torchvision": "imagenet", "tfslim": "inception"}
# Our module options that a source's numerics need. torchvision's EfficientNet-B0 keeps PyTorch's
# BatchNorm (eps 1e-5, torch momentum 0.1 = flax 0.9), not the TF reference's 1e-3 / 0.99 that ours
# defaults to; its others already use PyTorch's. TF-slim's inception_v2 has the public file's stem.
OPTIONS = {"torchvision": {"efficientnet_b0": {"bn_epsilon": 1e-5, "bn_momentum": 0.9}},
           "tfslim": {"inception_v2": {"stem_batch_norm": False}}}
# torchvision renamed DenseNet's "norm.1" to "norm1" (and so on); old files, its own URLs among
# them, still hold the dotted names, which its loader renames with a pattern like this one.
_DENSENET_LEGACY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12]\.)")
# (collection, our leaf name) -> torch's name.
_TORCH_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight",
               ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
               ("batch_stats", "var"): "running_var"}
# torch layout -> ours by rank: OIHW -> HWIO (a depthwise (C, 1, kh, kw) becomes flax's grouped
# (kh, kw, 1, C)), Linear's (out, in) -> Dense's (in, out).
_PERMUTATION = {4: (2, 3, 1, 0), 2: (1, 0), 1: (0,)}


def _check_backbone(source: str, backbone: str):
  if backbone not in SOURCES[source]:
    elsewhere = [f" ({backbone}'s weights are --source={s}'s)" for s in SOURCES
                 if backbone in SOURCES[s]]
    raise ValueError(f"unknown backbone {backbone!r} for --source={source}; valid: "
                     f"{', '.join(SOURCES[source])}{''.join(elsewhere)}")


def _listing(what: str, keys: list[str], details: dict | None, sep: str) -> str:
  """"3 missing (fc.{bias,weight}, layer1.0.bn3.weight)": the first few modules, with details."""
  leaves = {}
  for key in sorted(keys):
    module, leaf = key.rsplit(sep, 1)
    leaves.setdefault(module, []).append(leaf + (f" {details[key]}" if details else ""))
  shown = [f"{m}{sep}{l[0]}" if len(l) == 1 else f"{m}{sep}{{{', '.join(l)}}}"
           for m, l in leaves.items()]
  return f"{len(keys)} {what} ({', '.join(shown[:3])}{', ...' if len(shown) > 3 else ''})"


def _assign(model, tensors: dict, locate, what: str, sep: str) -> dict:
  """{"params", "batch_stats"} of `model` (numpy) from `tensors`, or a ValueError starting with
  `what` that lists the tensors missing, unused and of another shape.

  `locate(path, shape)` gives, for our variable at `path` (collection, *modules, leaf) of `shape`,
  the tensor's name, its shape there and the function that takes it to ours.
  """
  target = flax.traverse_util.flatten_dict(jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))))
  variables, missing, misshapen, used = {}, [], {}, set()
  for path, spec in target.items():
    key, expected, to_ours = locate(path, spec.shape)
    if key not in tensors:
      missing.append(key)
      continue
    used.add(key)
    value = tensors[key]
    if tuple(value.shape) != expected:
      misshapen[key] = f"{tuple(value.shape)} vs {expected}"
      continue
    variables[path] = to_ours(value).astype(spec.dtype)
  unused = set(tensors) - used
  if missing or unused or misshapen:
    problems = [_listing(kind, keys, details, sep) for kind, keys, details in (
        ("missing", missing, None), ("unused", unused, None),
        ("of another shape (file vs ours)", misshapen, misshapen)) if keys]
    raise ValueError(f"{what}: {'; '.join(problems)}")
  return flax.traverse_util.unflatten_dict(variables)


def to_variables(backbone: str, state_dict: dict) -> tuple[dict, int]:
  """({"params", "batch_stats"} of our backbone as numpy arrays, num_classes) from torch's tensors."""
  _check_backbone("torchvision", backbone)
  # Counters of BatchNorm's training updates: nothing of ours holds them, nothing in eval uses them.
  tensors = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}
  if backbone == "densenet121":
    renamed = {_DENSENET_LEGACY.sub(r"\1\2", k): v for k, v in tensors.items()}
    if len(renamed) < len(tensors):
      raise ValueError("the densenet121 state dict holds layers under both their old names "
                       "(norm.1) and their new ones (norm1)")
    tensors = renamed
  torch_name = TORCH_NAMES[backbone]
  head = tensors.get(f"{torch_name(('head',))}.weight")
  # Without a 2-d head weight the default width is built; the head is then reported below.
  num_classes = head.shape[0] if head is not None and head.ndim == 2 else 1000
  model = models.get_backbone(backbone, num_classes, **OPTIONS["torchvision"].get(backbone, {}))

  def locate(path, shape):
    collection, *module, leaf = path
    permutation = _PERMUTATION[len(shape)]
    return (f"{torch_name(tuple(module))}.{_TORCH_LEAF[collection, leaf]}",
            tuple(shape[i] for i in np.argsort(permutation)),  # In torch's layout.
            lambda value: np.transpose(value, permutation))

  return _assign(model, tensors, locate, f"the state dict is not torchvision's {backbone} "
                 "(another architecture or size?)", sep="."), num_classes


# TF-slim's scope of each of our inception_v2 layers (an inception module's units under its
# Mixed_* scope); ConvBN's conv and BatchNorm share their unit's scope.
_SLIM_SCOPES = {
    "stem_depthwise": "Conv2d_1a_7x7", "stem_pointwise": "Conv2d_1a_7x7",
    "conv_2b": "Conv2d_2b_1x1", "conv_2c": "Conv2d_2c_3x3", "head": "Logits/Conv2d_1c_1x1",
    "b0_1x1": "Branch_0/Conv2d_0a_1x1", "b0_3x3": "Branch_0/Conv2d_1a_3x3",
    "b1_1x1": "Branch_1/Conv2d_0a_1x1", "b1_3x3": "Branch_1/Conv2d_0b_3x3",
    "b1_3x3a": "Branch_1/Conv2d_0b_3x3", "b1_3x3b": "Branch_1/Conv2d_1a_3x3",
    "b2_1x1": "Branch_2/Conv2d_0a_1x1", "b2_3x3a": "Branch_2/Conv2d_0b_3x3",
    "b2_3x3b": "Branch_2/Conv2d_0c_3x3", "b3_1x1": "Branch_3/Conv2d_0b_1x1",
}
# (our last module, our leaf) -> TF-slim's variable in that scope.
_SLIM_LEAF = {
    ("Conv_0", "kernel"): "weights", ("BatchNorm_0", "bias"): "BatchNorm/beta",
    ("BatchNorm_0", "mean"): "BatchNorm/moving_mean",
    ("BatchNorm_0", "var"): "BatchNorm/moving_variance",
    ("stem_depthwise", "kernel"): "depthwise_weights",
    ("stem_pointwise", "kernel"): "pointwise_weights", ("stem_pointwise", "bias"): "biases",
    ("head", "kernel"): "weights", ("head", "bias"): "biases",
}
# TF-slim's training-step counter: nothing of ours holds it.
_SLIM_BOOKKEEPING = ("global_step",)


def _slim_locate(path, shape):
  """_assign's `locate` for TF-slim's inception_v2: its conv kernels are HWIO like ours."""
  _, *module, leaf = path  # The leaf names tell params from batch_stats.
  scope = [f"Mixed_{m[len('mixed_'):]}" if m.startswith("mixed_") else _SLIM_SCOPES[m]
           for m in module if m not in ("Conv_0", "BatchNorm_0")]
  name = f"InceptionV2/{'/'.join(scope)}/{_SLIM_LEAF[module[-1], leaf]}"
  if module == ["stem_depthwise"]:
    # slim's depthwise kernel (kh, kw, 3, multiplier) is flax's grouped (kh, kw, 1, 3 x multiplier):
    # output channel c * multiplier + m reads input channel c in both.
    return name, (*shape[:2], 3, shape[3] // 3), lambda value: value.reshape(shape)
  if module == ["head"]:
    # The logits are a 1x1 conv over 1 + num_classes classes, class 0 the background, dropped.
    if leaf == "kernel":
      return name, (1, 1, shape[0], shape[1] + 1), lambda value: value[0, 0, :, 1:]
    return name, (shape[0] + 1,), lambda value: value[1:]
  return name, tuple(shape), lambda value: value


def slim_to_variables(backbone: str, tensors: dict) -> tuple[dict, int]:
  """({"params", "batch_stats"} of our backbone as numpy arrays, num_classes) from a TF-slim
  checkpoint's tensors: ImageNet's 1000 classes, its background class dropped."""
  _check_backbone("tfslim", backbone)
  tensors = {k: v for k, v in tensors.items() if k not in _SLIM_BOOKKEEPING}
  model = models.get_backbone(backbone, 1000, **OPTIONS["tfslim"][backbone])
  return _assign(model, tensors, _slim_locate, f"the checkpoint is not TF-slim's {backbone} with "
                 "1001 classes (another network or size?)", sep="/"), 1000


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--weights={path}: no such file")
  if path.endswith(".safetensors"):
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    try:
      return safetensors.numpy.load_file(path)
    except safetensors.SafetensorError as e:
      raise ValueError(f"--weights={path} is not a readable safetensors file: {e}") from e
  if not path.endswith((".pth", ".pt")):
    raise ValueError(f"--weights={path}: expected a .safetensors, .pth or .pt file")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f"reading {path} needs torch (pip install torch), or save the state dict as "
                     ".safetensors, which needs no torch") from e
  try:
    # weights_only: a .pth is a pickle, and unpickling anything else can run arbitrary code.
    loaded = torch.load(path, weights_only=True, map_location="cpu")
  except Exception as e:  # pylint: disable=broad-exception-caught
    # Torch raises UnpicklingError, RuntimeError or EOFError, each with pages of advice.
    raise ValueError(f"--weights={path} is not a readable torch file: "
                     f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}") from e
  if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
    found = sorted(loaded)[:4] if isinstance(loaded, dict) else type(loaded).__name__
    raise ValueError(f"--weights={path} holds no state dict of tensors (found {found}); save "
                     "model.state_dict() itself")
  # .float(): numpy has no bfloat16; every leaf of ours is float32 anyway.
  return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in loaded.items()}


# A V1 checkpoint (TF-slim's published 2016 files) is one sstable, which ends with these 8 bytes.
_SSTABLE_MAGIC = (0xdb4775248b80fb57).to_bytes(8, "little")


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
  """The tensors of the TensorFlow checkpoint `path`: a prefix (V2), or a V1 checkpoint's file."""
  if os.path.isdir(path):
    raise ValueError(f"--weights={path} is a directory; give the checkpoint's prefix in it "
                     "(DIR/model.ckpt for model.ckpt.index and model.ckpt.data-*)")
  if not os.path.isfile(path + ".index"):
    own = re.fullmatch(r"(.+)\.(index|meta|data-\d{5}-of-\d{5})", path)
    if own and os.path.isfile(own[1] + ".index"):
      raise ValueError(f"--weights={path} is one of a checkpoint's files; give its prefix {own[1]}")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--weights={path}: no TensorFlow checkpoint there (no {path}.index, "
                              "no such file); give a checkpoint's prefix, e.g. DIR/model.ckpt")
    with open(path, "rb") as f:
      f.seek(max(0, os.path.getsize(path) - len(_SSTABLE_MAGIC)))
      if f.read() != _SSTABLE_MAGIC:  # Else TensorFlow's reader logs its own lines first.
        raise ValueError(f"--weights={path} is not a TensorFlow checkpoint (no {path}.index, "
                         "and not a V1 checkpoint file); give a checkpoint's prefix, e.g. "
                         "DIR/model.ckpt")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # Only this source needs it.
  try:
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
  except tf.errors.OpError as e:  # Truncated or damaged files; its messages run to pages.
    raise ValueError(f"--weights={path} is not a readable TensorFlow checkpoint: "
                     f"{type(e).__name__}: {(e.message.splitlines() or [''])[0][:200]}") from e


def make_config(source: str, backbone: str, num_classes: int):
  """The ImageNet config of `backbone` behind a bilinear resize 224 -> 224, the source's numerics
  and normalization."""
  config = config_args.load_config(
      f"{IMAGENET_CONFIG}:backbone={backbone},resizer=bilinear,input={INPUT_SIZE},target={INPUT_SIZE}")
  config.num_classes = num_classes
  config.normalization = NORMALIZATION[source]
  config.backbone.update(OPTIONS[source].get(backbone, {}))
  # "auto" computes in bfloat16 on accelerators: the converted logits are meant to be the source's.
  config.dtype = "float32"
  return config


def _check_free(workdir: str):
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ValueError(f"--workdir={workdir} already holds a checkpoint; give a new directory")
  if os.path.exists(workdir) and not (os.path.isdir(workdir) and not os.listdir(workdir)):
    raise ValueError(f"--workdir={workdir} exists and is not an empty directory; give a new one")


def convert(source: str, backbone: str, weights: str, workdir: str):
  """Writes `workdir` from the `source` weights in `weights`; returns its config."""
  if source not in SOURCES:
    raise ValueError(f"unknown --source {source!r}; valid: {', '.join(SOURCES)}")
  _check_backbone(source, backbone)
  workdir = os.path.abspath(workdir)
  _check_free(workdir)
  if source == "torchvision":
    variables, num_classes = to_variables(backbone, read_state_dict(weights))
  else:
    variables, num_classes = slim_to_variables(backbone, read_checkpoint(weights))
  config = make_config(source, backbone, num_classes)
  state = {"step": np.zeros((), np.int32), **jax.tree.map(jnp.asarray, {
      "params": {"backbone": variables["params"]},
      "batch_stats": {"backbone": variables["batch_stats"]}})}

  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(workdir)}.converting-{uuid.uuid4().hex[:8]}")
  os.mkdir(tmp)  # Not mkdtemp: its mode 0700 would stay on the renamed run directory.
  try:
    with checkpoint.manager(tmp, create=True) as mngr:
      checkpoint.save(mngr, 0, state, config)
      mngr.wait_until_finished()
    with open(os.path.join(tmp, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.rename(tmp, workdir)  # Replaces an empty directory; fails on anything else.
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return config


def _define_flags():
  # Only when run as a program: the tests import several command modules, each with its own
  # --workdir, into one process.
  flags.DEFINE_string("source", None, "Where the weights come from: torchvision or tfslim.")
  flags.DEFINE_string("backbone", None, "torchvision: resnet50, mobilenet_v2, densenet121 or "
                      "efficientnet_b0; tfslim: inception_v2.")
  flags.DEFINE_string("weights", None, "torchvision: the state dict, .safetensors or .pth/.pt "
                      "(needs torch); tfslim: the checkpoint's prefix (DIR/model.ckpt) or V1 file.")
  flags.DEFINE_string("workdir", None, "The run directory to create (absent or empty).")
  flags.mark_flags_as_required(["source", "backbone", "weights", "workdir"])


def main(argv):
  # Only TF-slim's checkpoints load TensorFlow (importing it only to silence it takes seconds).
  with cli.command(argv, tensorflow=FLAGS.source == "tfslim"):
    config = convert(FLAGS.source, FLAGS.backbone, FLAGS.weights, FLAGS.workdir)
  print(json.dumps({"workdir": FLAGS.workdir, "backbone": FLAGS.backbone,
                    "num_classes": config.num_classes}))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
