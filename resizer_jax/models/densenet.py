"""DenseNet-121 (Huang et al., 2017) as in torchvision: growth rate 32, blocks (6, 12, 24, 16).

Padding is explicit and equal to torchvision's, so the layout (7,978,856 parameters with 1000
classes) matches torchvision's leaf for leaf. The network downsamples 32x, so 32 px is the smallest
input that still leaves a 1x1 map for the last dense block (the transitions' 2x2 pools are unpadded,
as in torchvision).
"""
from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class DenseLayer(nn.Module):
  """BN-ReLU-Conv1x1 bottleneck, BN-ReLU-Conv3x3; returns only the `growth_rate` new channels."""
  growth_rate: int
  bn_size: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.bn_size * self.growth_rate, (1, 1))(nn.relu(self.norm()(x)))
    return self.conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)))(nn.relu(self.norm()(y)))


class Transition(nn.Module):
  """BN-ReLU-Conv1x1 to `features` channels, then a 2x2 average pool."""
  features: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, (1, 1))(nn.relu(self.norm()(x)))
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """A DenseNet with a global-average-pool + dense classifier head.

  Attributes:
    block_sizes: dense layers per block.
    growth_rate: channels each dense layer adds.
    bn_size: bottleneck width as a multiple of `growth_rate`.
    stem_features: channels out of the 7x7 stem; every transition halves the channel count.
    dropout_rate: dropout before the classifier (none in torchvision's; NIMA's IQA head uses 0.75).
  """
  block_sizes: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  bn_size: int = 4
  stem_features: int = 64
  num_classes: int = 1000
  dropout_rate: float = 0.0
  # The running statistics' decay (PyTorch's momentum is 1 - this); 0 keeps the last batch's.
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=1e-5, dtype=self.dtype)

    x = x.astype(self.dtype)
    x = conv(self.stem_features, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_layers in enumerate(self.block_sizes):
      for j in range(num_layers):
        y = DenseLayer(self.growth_rate, self.bn_size, conv=conv, norm=norm,
                       name=f"block{i + 1}_layer{j + 1}")(x)
        x = jnp.concatenate([x, y], axis=-1)
      if i < len(self.block_sizes) - 1:
        x = Transition(x.shape[-1] // 2, conv=conv, norm=norm, name=f"transition{i + 1}")(x)
    x = nn.relu(norm(name="final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    # torchvision keeps nn.Linear's default U(+-1/sqrt(fan_in)) weights and zeroes the bias.
    return nn.Dense(self.num_classes, dtype=self.dtype,
                    kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                    name="head")(x)
