"""ResNets: ResNet-50 v1.5 as in torchvision (stride on the 3x3 conv), and a small one for the CPU demo.

Padding is explicit and equal to torchvision's, so the layouts (and parameter counts: 25,557,032 for
ResNet-50 with 1000 classes) match and torchvision weights could be ported leaf for leaf.
"""
from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resizer_jax.models.conv import pointwise_conv


def _pad(k: int):
  return ((k // 2, k // 2), (k // 2, k // 2))


class BasicBlock(nn.Module):
  filters: int
  strides: int
  conv: Any
  norm: Any
  last_scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, (3, 3), (self.strides,) * 2, padding=_pad(3))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3), padding=_pad(3))(y)
    y = self.norm(scale_init=self.last_scale_init)(y)
    if x.shape != y.shape:
      x = self.norm()(self.conv(self.filters, (1, 1), (self.strides,) * 2, name="proj_conv")(x))
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  filters: int
  strides: int
  conv: Any
  norm: Any
  last_scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = self.conv(self.filters, (3, 3), (self.strides,) * 2, padding=_pad(3))(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.norm(scale_init=self.last_scale_init)(y)
    if x.shape != y.shape:
      x = self.conv(self.filters * 4, (1, 1), (self.strides,) * 2, name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A ResNet with a global-average-pool + dense classifier head.

  Attributes:
    stage_sizes: blocks per stage; stage i has width `width * 2**i` (times 4 out of a bottleneck).
    small_stem: a 3x3 stride-1 stem without max-pool, for inputs of a few dozen pixels.
    zero_init_residual: zero the last BN scale of each block, so blocks start as identities.
    dropout_rate: dropout before the classifier (none in torchvision's; NIMA's IQA head uses 0.75).
  """
  stage_sizes: Sequence[int]
  block: str = "bottleneck"
  num_classes: int = 1000
  width: int = 64
  small_stem: bool = False
  zero_init_residual: bool = True
  dropout_rate: float = 0.0
  # The running statistics' decay (PyTorch's momentum is 1 - this); 0 keeps the last batch's.
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    # 1x1 convolutions as dots: on XLA:CPU both their gradients become plain contractions (train
    # step 1.16x, docs/performance.md); a GPU or TPU runs them as matmuls either way.
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                             conv_general_dilated=pointwise_conv)
    last_scale_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=1e-5, dtype=self.dtype)
    block_cls = {"basic": BasicBlock, "bottleneck": BottleneckBlock}[self.block]

    x = x.astype(self.dtype)
    if self.small_stem:
      x = nn.relu(norm(name="stem_bn")(conv(self.width, (3, 3), padding=_pad(3), name="stem_conv")(x)))
    else:
      x = conv(self.width, (7, 7), (2, 2), padding=_pad(7), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = block_cls(self.width * 2**i, strides=2 if i > 0 and j == 0 else 1, conv=conv, norm=norm,
                      last_scale_init=last_scale_init, name=f"stage{i + 1}_block{j + 1}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
