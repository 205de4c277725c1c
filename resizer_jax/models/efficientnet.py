"""EfficientNet-B0 (Tan & Le, 2019): the torchvision layout, with the TF reference's BatchNorm.

Padding is explicit and equal to torchvision's, so the layout (5,288,548 parameters with 1000
classes) matches torchvision's leaf for leaf. BatchNorm defaults to the original TF implementation's
momentum 0.99 and epsilon 1e-3. torchvision's B0 keeps PyTorch's defaults (flax momentum 0.9,
epsilon 1e-5; only its B5-B7 use the TF values): pass those to run torchvision B0 weights exactly.

Stochastic depth and the classifier's dropout both draw from the "dropout" rng when training.
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# (expansion, kernel, first stride, output channels, repeats): Table 1 of the paper.
MBCONV_SETTING = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


class SqueezeExcite(nn.Module):
  """Channel gates from globally pooled features; 1x1 convs (with biases) as in torchvision."""
  squeeze_features: int
  conv: Any

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.silu(self.conv(self.squeeze_features, (1, 1), use_bias=True, name="reduce")(s))
    s = self.conv(x.shape[-1], (1, 1), use_bias=True, name="expand")(s)
    return x * nn.sigmoid(s)


class MBConv(nn.Module):
  """Expand 1x1 -> depthwise kxk -> squeeze-excite -> linear 1x1, plus a skip if shape is kept."""
  features: int
  kernel: int
  strides: int
  expansion: int
  drop_path_rate: float
  conv: Any
  norm: Any
  train: bool

  @nn.compact
  def __call__(self, x):
    in_features = x.shape[-1]
    hidden = in_features * self.expansion
    y = x
    if self.expansion != 1:
      y = nn.silu(self.norm()(self.conv(hidden, (1, 1))(y)))
    p = self.kernel // 2
    y = self.conv(hidden, (self.kernel,) * 2, (self.strides,) * 2, padding=((p, p), (p, p)),
                  feature_group_count=hidden)(y)
    y = nn.silu(self.norm()(y))
    # The squeeze width follows the block's input, not the expanded width (paper and torchvision).
    y = SqueezeExcite(max(1, in_features // 4), conv=self.conv)(y)
    y = self.norm()(self.conv(self.features, (1, 1))(y))
    if self.strides == 1 and in_features == self.features:
      # Stochastic depth: drop the whole residual branch per example, rescaling the survivors.
      y = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2, 3), deterministic=not self.train)(y)
      y = x + y
    return y


class EfficientNet(nn.Module):
  """EfficientNet-B0 with a global-average-pool + dropout + dense classifier head.

  Attributes:
    drop_path_rate: the stochastic-depth scale: block i of n (counting from 0) drops its residual
      branch with probability drop_path_rate * i / n, as in the paper and torchvision.
    dropout_rate: dropout before the classifier.
    bn_momentum, bn_epsilon: BatchNorm's (see the module docstring for torchvision's).
  """
  num_classes: int = 1000
  drop_path_rate: float = 0.2
  dropout_rate: float = 0.2
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=self.dtype)

    x = x.astype(self.dtype)
    x = conv(32, (3, 3), (2, 2), padding=((1, 1), (1, 1)), name="stem_conv")(x)
    x = nn.silu(norm(name="stem_bn")(x))
    num_blocks = sum(setting[-1] for setting in MBCONV_SETTING)
    block_id = 0
    for i, (expansion, kernel, strides, features, repeats) in enumerate(MBCONV_SETTING):
      for j in range(repeats):
        x = MBConv(features, kernel, strides if j == 0 else 1, expansion,
                   drop_path_rate=self.drop_path_rate * block_id / num_blocks, conv=conv, norm=norm,
                   train=train, name=f"stage{i + 1}_block{j + 1}")(x)
        block_id += 1
    x = nn.silu(norm(name="last_bn")(conv(4 * x.shape[-1], (1, 1), name="last_conv")(x)))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    # torchvision draws the classifier from U(+-1/sqrt(num_classes)) with a zero bias.
    return nn.Dense(self.num_classes, dtype=self.dtype,
                    kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_out", "uniform"),
                    name="head")(x)
