"""MobileNet-v2 (Sandler et al., 2018) as in torchvision, width multiplier 1.0.

Padding is explicit and equal to torchvision's, so the layout (3,504,872 parameters with 1000
classes) matches torchvision's leaf for leaf. The dropout (0.2) before the classifier, as in
torchvision, draws from the "dropout" rng when training.
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# (expansion t, output channels c, repeats n, first stride s): Table 2 of the paper.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
  """1x1 expand -> 3x3 depthwise -> linear 1x1 project, with a skip when the shape is kept."""
  features: int
  strides: int
  expansion: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    hidden = x.shape[-1] * self.expansion
    y = x
    if self.expansion != 1:
      y = nn.relu6(self.norm()(self.conv(hidden, (1, 1))(y)))
    y = self.conv(hidden, (3, 3), (self.strides,) * 2, padding=((1, 1), (1, 1)),
                  feature_group_count=hidden)(y)
    y = nn.relu6(self.norm()(y))
    # No activation after the projection: the paper's "linear bottleneck".
    y = self.norm()(self.conv(self.features, (1, 1))(y))
    if self.strides == 1 and x.shape[-1] == self.features:
      y = x + y
    return y


class MobileNetV2(nn.Module):
  """MobileNet-v2 with a global-average-pool + dropout + dense classifier head."""
  num_classes: int = 1000
  dropout_rate: float = 0.2
  # The running statistics' decay (PyTorch's momentum is 1 - this); 0 keeps the last batch's.
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=1e-5, dtype=self.dtype)

    x = x.astype(self.dtype)
    x = conv(32, (3, 3), (2, 2), padding=((1, 1), (1, 1)), name="stem_conv")(x)
    x = nn.relu6(norm(name="stem_bn")(x))
    for i, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
      for j in range(n):
        x = InvertedResidual(c, strides=s if j == 0 else 1, expansion=t, conv=conv, norm=norm,
                             name=f"stage{i + 1}_block{j + 1}")(x)
    x = nn.relu6(norm(name="last_bn")(conv(1280, (1, 1), name="last_conv")(x)))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
                    name="head")(x)
