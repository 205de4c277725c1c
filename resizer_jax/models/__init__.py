"""Models by name: resizers (resizer.py), backbones (one file per family), and their composition."""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resizer_jax import plan
from resizer_jax import tasks
from resizer_jax.models.densenet import DenseNet
from resizer_jax.models.efficientnet import EfficientNet
from resizer_jax.models.inception_v2 import InceptionV2
from resizer_jax.models.mobilenet_v2 import MobileNetV2
from resizer_jax.models.resizer import FixedResizer, LearnedResizer, METHODS, MullerResizer, RESIZERS, get_resizer, resize
from resizer_jax.models.resnet import ResNet

# name -> constructor taking num_classes (and dtype). Widths/depths are the published ones.
BACKBONES = {
    "resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck"),
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic"),
    # The CPU demo's backbone: 4 basic blocks, widths 16..128, a stem for inputs of 16-64 px.
    "resnet_tiny": functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block="basic", width=16,
                                     small_stem=True),
    "mobilenet_v2": MobileNetV2,
    "densenet121": functools.partial(DenseNet, block_sizes=(6, 12, 24, 16)),
    "efficientnet_b0": EfficientNet,
    "inception_v2": InceptionV2,
}


# Backbone options that change how a model trains but not what given weights compute: a warm start
# does not carry them from its source run (resizer_jax/preflight.py carries the others).
TRAINING_ONLY_OPTIONS = ("bn_momentum", "dropout_rate", "drop_path_rate", "zero_init_residual")


def get_backbone(name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(sorted(BACKBONES))}")
  return BACKBONES[name](num_classes=num_classes, **kwargs)


# Per-channel statistics of ImageNet, in [0, 255] units: inputs arrive as uint8-range pixels.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# config.normalization: how pixels are standardised before the resizer, name -> (mean, std) per
# channel in [0, 255] units. It is what a run's weights were trained on, so a warm start carries it
# (resizer_jax/preflight.py). None, in a config that preflight has not resolved: the default.
NORMALIZATIONS = {
    "imagenet": (MEAN_RGB, STDDEV_RGB),  # Our runs' default, and torchvision's weights.
    # pixels / 127.5 - 1, in [-1, 1]: TF-slim's Inception checkpoints (its inception_preprocessing).
    "inception": ((127.5,) * 3, (127.5,) * 3),
}
DEFAULT_NORMALIZATION = "imagenet"


def check_normalization(name: str | None) -> str:
  """`name`, or the default for None; a one-line error for an unknown one."""
  if name is None:
    return DEFAULT_NORMALIZATION
  if name not in NORMALIZATIONS:
    raise ValueError(f"unknown config.normalization {name!r}; valid: {', '.join(NORMALIZATIONS)}")
  return name


def normalize(images, dtype=jnp.float32, normalization: str = DEFAULT_NORMALIZATION):
  """uint8-range RGB pixels -> per-channel standardised floats, the space the resizer works in."""
  mean, std = NORMALIZATIONS[normalization]
  return (images.astype(dtype) - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype)


def resize_pixels(model: "ResizedModel", variables, pixels):
  """The model's resizer applied (eval mode) to uint8-range pixels, answered in pixel units."""
  resizer_vars = {k: v["resizer"] for k, v in variables.items() if "resizer" in v}
  out = model.resizer.apply(resizer_vars, normalize(pixels, normalization=model.normalization),
                            train=False)
  mean, std = NORMALIZATIONS[model.normalization]
  return out * jnp.asarray(std) + jnp.asarray(mean)


class ResizedModel(nn.Module):
  """pixels -> normalize -> resizer -> backbone (with its head).

  The resizer and the backbone are the submodules "resizer" and "backbone", so their variables are
  the subtrees of those names (what warm starts and notebooks pick out).
  """
  resizer: nn.Module
  backbone: nn.Module
  dtype: Any = jnp.float32
  normalization: str = DEFAULT_NORMALIZATION  # A name in NORMALIZATIONS.

  def __call__(self, images, train: bool = False):
    x = normalize(images, self.dtype, self.normalization)
    return self.backbone(self.resizer(x, train=train), train=train)


def backbone_options(backbone_config) -> dict:
  """Every `config.backbone` field but `name` that is set, as the backbone module's attributes.

  E.g. `config.backbone.dropout_rate = 0.75`, NIMA's dropout before the IQA head; None keeps the
  backbone's default.
  """
  return {k: v for k, v in backbone_config.items() if k != "name" and v is not None}


def from_config(config) -> ResizedModel:
  """The model described by `config.resizer`, `config.backbone`, `config.num_classes` and
  `config.normalization`.

  `config.task` only checks the head's width here (resizer_jax/tasks.py): IQA shares the resizer and
  backbone code, and its head is the backbone's classifier with 10 outputs whose softmax is the
  predicted score histogram.
  """
  tasks.get(config.task).check_num_classes(config.num_classes)
  dtype = jnp.dtype(plan.compute_dtype(config, jax.default_backend()))  # "auto": by platform.
  r = config.resizer
  learned = dict(num_filters=r.num_filters, num_res_blocks=r.num_res_blocks,
                 formulation=r.formulation,
                 interpolation=r.interpolation, zero_init_tail=r.zero_init_tail, dtype=dtype)
  normalization = check_normalization(config.normalization)
  # MULLER learns in [0, 1] pixels: it undoes `normalize` inside (see MullerResizer).
  mean, std = NORMALIZATIONS[normalization]
  muller = dict(interpolation=r.interpolation, pretrained=r.muller_pretrained,
                pixel_mean=mean, pixel_std=std, dtype=dtype)
  resizer_kwargs = {"learned": learned, "control": learned, "muller": muller}.get(r.name, {})
  resizer = get_resizer(r.name, output_size=r.output_size, antialias=r.antialias,
                        **resizer_kwargs)
  name, options = config.backbone.name, backbone_options(config.backbone)
  if name in BACKBONES:
    module = getattr(BACKBONES[name], "func", BACKBONES[name])  # Past functools.partial.
    valid = sorted(set(module.__dataclass_fields__) - {"parent", "name", "num_classes", "dtype"})
    unknown = sorted(set(options) - set(valid))
    if unknown:
      raise ValueError(f"config.backbone.{unknown[0]} is not an option of {name}; valid: "
                       f"{', '.join(valid)}")
  backbone = get_backbone(name, num_classes=config.num_classes, dtype=dtype, **options)
  return ResizedModel(resizer=resizer, backbone=backbone, dtype=dtype, normalization=normalization)
