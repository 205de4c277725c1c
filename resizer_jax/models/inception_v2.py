"""Inception-v2 (BN-Inception, Ioffe & Szegedy 2015) as in TF-slim's `nets/inception_v2.py`.

Reference matched: TF-slim `inception_v2` with its defaults (depth_multiplier=1.0, min_depth=16,
use_separable_conv=True, dropout_keep_prob=0.8) under `inception_arg_scope()` (BatchNorm decay
0.9997, epsilon 0.001, no scale). Layer for layer:

  Conv2d_1a_7x7   separable: 7x7 depthwise, multiplier 8 (3 -> 24 channels), stride 2; 1x1 to 64
  MaxPool_2a_3x3  stride 2
  Conv2d_2b_1x1   64
  Conv2d_2c_3x3   192
  MaxPool_3a_3x3  stride 2
  Mixed_3b..5c    the inception modules tabulated in MIXED below
  Logits          average pool, dropout 0.2, 1x1 conv (with bias) to num_classes

Every conv is followed by BatchNorm and ReLU and has no bias; the BatchNorm has an offset (beta) but
no scale (gamma), because slim's batch_norm defaults to `scale=False` and the arg scope keeps that
default. All convs and pools pad "SAME" as in TF-slim: stride 2 pads bottom/right (flax's "SAME" is
TF's), the stride-1 3x3 average pools divide by the number of real (unpadded) pixels, and a stride-2
layer keeps ceil(size / 2) pixels, so no input collapses to an empty map (32 px ends at 1x1).

With 1000 classes there are 11,178,336 trainable parameters. TF-slim's ImageNet checkpoint has 1001
classes (class 0 is background), which adds one 1024-wide logits column and its bias: 11,179,361;
its conversion drops class 0 (resizer_jax/convert.py), back to 11,178,336. (BatchNorm scales would
add 9,952 more; the reference has none.)

Two differences from the public TF-slim file, neither changing the parameter count:
  - In the public file `inception_arg_scope` sets BatchNorm only for `slim.conv2d`, so the separable
    stem conv gets a bias and no BatchNorm; here, by default, it gets BatchNorm like every other
    conv (its 64 offsets replace the 64 biases), as BN-Inception normalises every conv.
    `stem_batch_norm=False` builds the public file's stem, which its checkpoints need
    (resizer_jax/convert.py --source=tfslim): then fine-tuning trains that bias, and the stem
    keeps no running statistics (128 fewer).
  - TF-slim's final pool is 7x7 VALID, shrunk to the final map when that is smaller; here it is a
    global average. They agree wherever the public file gives logits: up to 224 px (a 7x7 map) its
    pool covers the whole map, and beyond it leaves more than 1x1, which its logits' squeeze
    refuses. The global average keeps logits a vector at every input size.
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# Standard modules: (name, 1x1, (3x3 reduce, 3x3), (double-3x3 reduce, double-3x3), pool, pool 1x1).
# Reduction modules (stride 2, no pool projection): (name, (3x3 reduce, 3x3), (reduce, double-3x3)).
MIXED = (
    ("mixed_3b", 64, (64, 64), (64, 96), "avg", 32),
    ("mixed_3c", 64, (64, 96), (64, 96), "avg", 64),
    ("mixed_4a", (128, 160), (64, 96)),
    ("mixed_4b", 224, (64, 96), (96, 128), "avg", 128),
    ("mixed_4c", 192, (96, 128), (96, 128), "avg", 128),
    ("mixed_4d", 160, (128, 160), (128, 160), "avg", 96),
    ("mixed_4e", 96, (128, 192), (160, 192), "avg", 96),
    ("mixed_5a", (128, 192), (192, 256)),
    ("mixed_5b", 352, (192, 320), (160, 224), "avg", 128),
    ("mixed_5c", 352, (192, 320), (192, 224), "max", 128),
)


def _trunc_normal(stddev: float):
  """TF-slim's `trunc_normal`: a normal of this stddev cut at two stddevs (not rescaled)."""
  return nn.initializers.truncated_normal(stddev)


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm (offset only) -> ReLU: TF-slim's `conv2d` in its arg scope."""
  features: int
  kernel: int
  conv: Any
  norm: Any
  strides: int = 1
  kernel_init: Any = None

  @nn.compact
  def __call__(self, x):
    kwargs = {} if self.kernel_init is None else {"kernel_init": self.kernel_init}
    x = self.conv(self.features, (self.kernel,) * 2, (self.strides,) * 2, **kwargs)(x)
    return nn.relu(self.norm()(x))


class Mixed(nn.Module):
  """An inception module: 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | 3x3 pool-1x1, concatenated."""
  branch0: int
  branch1: tuple[int, int]
  branch2: tuple[int, int]
  pool: str
  pool_proj: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    unit = functools.partial(ConvBN, conv=self.conv, norm=self.norm)
    b0 = unit(self.branch0, 1, name="b0_1x1")(x)
    # TF-slim gives the reduce and pool-projection 1x1s their own, narrower initialisers.
    b1 = unit(self.branch1[0], 1, kernel_init=_trunc_normal(0.09), name="b1_1x1")(x)
    b1 = unit(self.branch1[1], 3, name="b1_3x3")(b1)
    b2 = unit(self.branch2[0], 1, kernel_init=_trunc_normal(0.09), name="b2_1x1")(x)
    b2 = unit(self.branch2[1], 3, name="b2_3x3a")(b2)
    b2 = unit(self.branch2[1], 3, name="b2_3x3b")(b2)
    if self.pool == "avg":
      b3 = nn.avg_pool(x, (3, 3), padding="SAME", count_include_pad=False)
    else:
      b3 = nn.max_pool(x, (3, 3), padding="SAME")
    b3 = unit(self.pool_proj, 1, kernel_init=_trunc_normal(0.1), name="b3_1x1")(b3)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class MixedReduce(nn.Module):
  """A grid-reduction module: 1x1-3x3/2 | 1x1-3x3-3x3/2 | 3x3/2 max pool, concatenated."""
  branch0: tuple[int, int]
  branch1: tuple[int, int]
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    unit = functools.partial(ConvBN, conv=self.conv, norm=self.norm)
    b0 = unit(self.branch0[0], 1, kernel_init=_trunc_normal(0.09), name="b0_1x1")(x)
    b0 = unit(self.branch0[1], 3, strides=2, name="b0_3x3")(b0)
    b1 = unit(self.branch1[0], 1, kernel_init=_trunc_normal(0.09), name="b1_1x1")(x)
    b1 = unit(self.branch1[1], 3, name="b1_3x3a")(b1)
    b1 = unit(self.branch1[1], 3, strides=2, name="b1_3x3b")(b1)
    b2 = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    return jnp.concatenate([b0, b1, b2], axis=-1)


class InceptionV2(nn.Module):
  """BN-Inception with a global-average-pool + dropout + dense classifier head."""
  num_classes: int = 1000
  dropout_rate: float = 0.2
  # The running statistics' decay (PyTorch's momentum is 1 - this); 0 keeps the last batch's.
  bn_momentum: float = 0.9997
  # False: the public TF-slim file's stem, a bias and no BatchNorm (see the module docstring).
  stem_batch_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    # slim's variance_scaling_initializer(): truncated normal, factor 2, fan in.
    conv = functools.partial(nn.Conv, use_bias=False, padding="SAME", dtype=self.dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, "fan_in",
                                                                          "truncated_normal"))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=1e-3, use_scale=False, dtype=self.dtype)

    x = x.astype(self.dtype)
    # A separable stem: the depthwise multiplier is min(64 // 3, 8) = 8, with no norm in between.
    x = conv(8 * x.shape[-1], (7, 7), (2, 2), feature_group_count=x.shape[-1],
             kernel_init=_trunc_normal(1.0), name="stem_depthwise")(x)
    x = conv(64, (1, 1), use_bias=not self.stem_batch_norm, kernel_init=_trunc_normal(1.0),
             name="stem_pointwise")(x)
    x = nn.relu(norm(name="stem_bn")(x) if self.stem_batch_norm else x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    x = ConvBN(64, 1, conv=conv, norm=norm, kernel_init=_trunc_normal(0.1), name="conv_2b")(x)
    x = ConvBN(192, 3, conv=conv, norm=norm, name="conv_2c")(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for name, *widths in MIXED:
      if len(widths) == 2:
        x = MixedReduce(*widths, conv=conv, norm=norm, name=name)(x)
      else:
        x = Mixed(*widths, conv=conv, norm=norm, name=name)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    # TF-slim's logits are a 1x1 conv under the same variance-scaling initialiser, with a zero bias.
    return nn.Dense(self.num_classes, dtype=self.dtype,
                    kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal"),
                    name="head")(x)
