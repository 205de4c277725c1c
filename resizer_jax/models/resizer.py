"""The learned resizer of Talebi & Milanfar (ICCV 2021, Fig. 3), MULLER (Tu, Talebi & Milanfar,
ICCV 2023) and the fixed baselines they replace.

Every resizer is a Flax module called as ``module.apply(variables, images_nhwc, train=...)`` that maps
images of any size to ``output_size`` (or to ``scale`` times the input size), down or up, any aspect
ratio. The baselines have no parameters, so ``resizer=learned`` and ``resizer=bilinear`` differ in
that and nothing else.
"""
from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resizer_jax.models import fused_stem
from resizer_jax.models.conv import FORMULATIONS, pointwise_conv, resolve_formulation
from resizer_jax.models.resize_ops import METHODS, check_method, resize  # pylint: disable=unused-import

RESIZERS = ("learned", "control") + METHODS + ("muller",)

# MULLER's published parameters by name: (weight_1, bias_1, weight_2, bias_2, ...), for pixels in
# [0, 1]. "resnet50": the official demo notebook's (google-research muller/muller_demo.ipynb),
# trained in front of ResNet-50 on ImageNet.
MULLER_PRETRAINED = {"resnet50": (1.892, -0.014, -11.295, 0.003)}


def target_size(in_hw: Sequence[int], output_size=None, scale=None) -> tuple[int, int]:
  """The output (height, width): `output_size` as given, or `scale` times the input size."""
  if (output_size is None) == (scale is None):
    raise ValueError(f"give exactly one of output_size or scale (got output_size={output_size}, "
                     f"scale={scale})")
  if output_size is not None:
    hw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  else:
    s = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
    hw = tuple(int(round(d * f)) for d, f in zip(in_hw, s))
  if len(hw) != 2 or min(hw) < 1:
    raise ValueError(f"output size must be two positive integers (height, width), got {hw}")
  return int(hw[0]), int(hw[1])


class FixedResizer(nn.Module):
  """A parameter-free baseline resizer (bilinear, bicubic, ...)."""
  output_size: Any = None
  scale: Any = None
  method: str = "bilinear"
  antialias: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return resize(x, target_size(x.shape[1:3], self.output_size, self.scale), self.method,
                  self.antialias)


def moments(x):
  """(E[x], E[x^2]) per channel over batch and pixels, float32: BatchNorm's statistics."""
  xf = x.astype(jnp.float32)
  return jnp.mean(xf, axis=(0, 1, 2)), jnp.mean(jnp.square(xf), axis=(0, 1, 2))


class ResizedBatchNorm(nn.Module):
  """`resize(nn.BatchNorm(...)(x))` with fewer passes over the full-resolution `x`, called as
  `(lambda: resize(x), lambda: moments(x))`.

  The statistics are x's, as BatchNorm's, but the affine map is applied after `resize`: every resize
  here is linear with weights summing to one, so the two orders agree up to float rounding, and the
  normalised full-resolution tensor (and, going backward, its gradient and two reductions) never
  exists. The variables are BatchNorm's own names, shapes and initial values, so checkpoints of
  either load into the other. `x_moments` is called in training only, and before `resized`: the
  order the plain path has always traced in, so its compiled step, and a run's every bit, stay
  what they were before the fused stem shared this module.
  """
  use_running_average: bool
  momentum: float
  epsilon: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, resized, x_moments):
    features = (jax.eval_shape(resized).shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      # BatchNorm's: E[x^2] - E[x]^2 clipped at zero (use_fast_variance).
      mean, mean_sq = x_moments()
      var = jnp.maximum(0.0, mean_sq - jnp.square(mean))
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    y = (resized() - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype)


class ConvParams(nn.Module):
  """nn.Conv's parameters (same names, shapes and initialisers), for code that computes the
  convolution itself (the fused stem): the parameter tree stays nn.Conv's."""
  kernel_size: tuple[int, int]
  features: int

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param("kernel", nn.linear.default_kernel_init,
                        (*self.kernel_size, in_features, self.features), jnp.float32)
    return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)


class ResBlock(nn.Module):
  """h + BN(Conv3x3(LeakyReLU(BN(Conv3x3(h)))))."""
  num_filters: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, h):
    y = self.norm()(self.conv(self.num_filters, (3, 3), use_bias=False)(h))
    y = nn.leaky_relu(y, 0.2)
    y = self.norm()(self.conv(self.num_filters, (3, 3), use_bias=False)(y))
    return h + y


class LearnedResizer(nn.Module):
  """Fig. 3 of the paper.

  Attributes:
    output_size: (height, width) or an int for a square output; or None when `scale` is given.
    scale: output size as a factor of the input size (a float or an (h, w) pair).
    num_filters: n, the width of every hidden conv.
    num_res_blocks: r.
    interpolation: used both for the image skip and for resizing the features.
    antialias: passed to every resize (jax antialiases downscales by default; tf does not).
    zero_init_tail: zero-initialise the last 7x7 conv, so that a fresh resizer is exactly the
      baseline resize and training departs from it.
    features_at_target: the capacity control (resizer name "control"): resize first, then apply
      the very same layers (same parameter count) at the target resolution. It tells whether a gain
      comes from learned features at full resolution or merely from the extra parameters.
    formulation: how the full-resolution 7x7 convolutions are computed, a name in
      models.conv.FORMULATIONS, or "auto" for the platform's fastest as measured
      (models.conv.AUTO_FORMULATION). All compute the same function from the same parameters.
  """
  output_size: Any = None
  scale: Any = None
  num_filters: int = 16
  num_res_blocks: int = 1
  interpolation: str = "bilinear"
  antialias: bool = False
  zero_init_tail: bool = False
  features_at_target: bool = False
  formulation: str = "auto"
  bn_momentum: float = 0.9  # PyTorch's momentum=0.1, as in the public ports.
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_method(self.interpolation)
    out_hw = target_size(x.shape[1:3], self.output_size, self.scale)
    x = x.astype(self.dtype)
    n = self.num_filters
    conv = functools.partial(nn.Conv, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=self.dtype)
    size = functools.partial(resize, out_hw=out_hw, method=self.interpolation,
                             antialias=self.antialias)

    skip = size(x)
    if self.features_at_target:
      x = skip
      size = lambda h: h
    formulation = resolve_formulation(self.formulation, jax.default_backend())
    conv7x7 = functools.partial(conv, conv_general_dilated=FORMULATIONS[formulation])
    stem_bn = ResizedBatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                               epsilon=self.bn_epsilon, dtype=self.dtype, name="stem_bn")
    fused_hw = out_hw if not self.features_at_target else x.shape[1:3]
    if formulation == "fused" and fused_stem.applies(x.shape[1:3], fused_hw, self.interpolation,
                                                     self.antialias):
      w1, b1 = ConvParams((7, 7), n, name="stem_conv7x7")(x.shape[-1])
      w2, b2 = ConvParams((1, 1), n, name="stem_conv1x1")(n)
      resized, mean, mean_sq = fused_stem.stem(x, w1, b1, w2[0, 0], b2, fused_hw, self.dtype)
      b = stem_bn(lambda: resized, lambda: (mean, mean_sq))
    else:
      h = nn.leaky_relu(conv7x7(n, (7, 7), name="stem_conv7x7")(x), 0.2)
      h = nn.leaky_relu(conv(n, (1, 1), conv_general_dilated=pointwise_conv,
                             name="stem_conv1x1")(h), 0.2)
      b = stem_bn(lambda: size(h), lambda: moments(h))
    h = b
    for i in range(self.num_res_blocks):
      h = ResBlock(n, conv, norm, name=f"res_block{i}")(h)
    h = norm(name="mid_bn")(conv(n, (3, 3), use_bias=False, name="mid_conv3x3")(h))
    tail_init = nn.initializers.zeros if self.zero_init_tail else nn.linear.default_kernel_init
    h = conv7x7(3, (7, 7), kernel_init=tail_init, name="tail_conv7x7")(h + b)
    return h + skip


def gaussian_taps(size: int, stddev: float) -> np.ndarray:
  """The normalised 1-D Gaussian of `size` taps."""
  x = np.arange(size) - size // 2
  taps = np.exp(-x**2 / (2.0 * stddev**2))
  return taps / taps.sum()


def gaussian_blur(x: jax.Array, taps: np.ndarray) -> jax.Array:
  """The separable blur of NHWC `x` with zero padding: tf.nn.depthwise_conv2d(padding="SAME") with
  these taps along W then H, as MULLER's official code blurs."""
  radius = len(taps) // 2
  for axis in (2, 1):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad)
    n = x.shape[axis]
    # Shifted slices rather than a depthwise conv, which XLA:CPU runs 14x slower (two blurs forward
    # and backward, 8 x 448^2: 7.1 s vs 0.49 s). Fusing them, XLA recomputes some: its cost
    # analysis counts 90 FLOPs per pixel for two blurs in a row, not 2 x 18.
    x = sum(jax.lax.slice_in_dim(padded, k, k + n, axis=axis) * x.dtype.type(t)
            for k, t in enumerate(taps))
  return x


class MullerResizer(nn.Module):
  """MULLER: the base resize plus `num_layers` resized Laplacian bands, each through a tanh with one
  weight and one bias shared by all channels and pixels (four parameters at the default).

    net = resize(p); for each layer l: blurred = G * p; net += tanh(w_l resize(blurred - p) + b_l);
    p = blurred

  G is the normalised `kernel_size`-tap Gaussian of `stddev`, zero-padded at the border, at the
  input resolution; resize is `interpolation` (bilinear without antialias in the paper). The
  official layer's `avg_pool` option (off in its demo) is left out.

  Pixel range: the bands are taken and the tanh terms added in [0, 1] pixels, as in the official
  code (its demo divides pixels by 255): the range sets the scale of tanh's input and output, and
  the zero padding is black there, so the published weights (MULLER_PRETRAINED) mean something only
  in it. The input arrives standardised, x = (255 p - pixel_mean) / pixel_std (models.normalize;
  from_config passes its statistics; the defaults take x = p), and the output is in x's units:
  resize(x) + (255 / pixel_std) * sum_l tanh(...), which is the official MULLER applied to p and
  then standardised, exactly (every resize here is linear with weights summing to one). A fresh
  MULLER (all zeros) is therefore exactly the base resize.

  Attributes:
    output_size: (height, width) or an int for a square output; or None when `scale` is given.
    scale: output size as a factor of the input size (a float or an (h, w) pair).
    num_layers: the number of Laplacian bands.
    kernel_size, stddev: the Gaussian blur.
    interpolation, antialias: the base resize, also applied to every band.
    pretrained: a name in MULLER_PRETRAINED to start from, or None for zeros.
    pixel_mean, pixel_std: per-channel, in [0, 255] units: how the input was standardised.
    dtype: the output's; parameters and computation are float32.
  """
  output_size: Any = None
  scale: Any = None
  num_layers: int = 2
  kernel_size: int = 5
  stddev: float = 1.0
  interpolation: str = "bilinear"
  antialias: bool = False
  pretrained: str | None = None
  pixel_mean: Sequence[float] = (0.0, 0.0, 0.0)
  pixel_std: Sequence[float] = (255.0, 255.0, 255.0)
  dtype: Any = jnp.float32

  def __post_init__(self):
    # Here rather than at init: a bad name fails where the model is built, outside any trace.
    if self.kernel_size < 1 or self.kernel_size % 2 != 1:
      # An even blur is centred between pixels: every band shifted by half a pixel.
      raise ValueError(f"MULLER kernel_size={self.kernel_size!r}; valid: odd sizes (1, 3, 5, ...)")
    if self.pretrained is not None:
      if self.pretrained not in MULLER_PRETRAINED:
        raise ValueError(f"unknown MULLER weights {self.pretrained!r}; valid: "
                         f"{', '.join(MULLER_PRETRAINED)}")
      if len(MULLER_PRETRAINED[self.pretrained]) != 2 * self.num_layers:
        raise ValueError(f"MULLER weights {self.pretrained!r} have "
                         f"{len(MULLER_PRETRAINED[self.pretrained]) // 2} layers, not "
                         f"num_layers={self.num_layers}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    check_method(self.interpolation)
    init = MULLER_PRETRAINED[self.pretrained] if self.pretrained else (0.0,) * (2 * self.num_layers)
    size = functools.partial(resize, out_hw=target_size(x.shape[1:3], self.output_size, self.scale),
                             method=self.interpolation, antialias=self.antialias)
    # float32 whatever the model's dtype: the bands are differences of nearly equal pixels, which
    # bfloat16's 8 bits swamp (with the ResNet-50 weights, 0.3 standardised units off).
    x = x.astype(jnp.float32)
    std = np.asarray(self.pixel_std, np.float64)
    p = x * (std / 255).astype(np.float32) + (np.asarray(self.pixel_mean) / 255).astype(np.float32)
    taps = gaussian_taps(self.kernel_size, self.stddev)
    bands = 0
    for layer in range(1, self.num_layers + 1):
      w0, b0 = init[2 * layer - 2:2 * layer]
      weight = self.param(f"weight_{layer}", nn.initializers.constant(w0), (), jnp.float32)
      bias = self.param(f"bias_{layer}", nn.initializers.constant(b0), (), jnp.float32)
      blurred = gaussian_blur(p, taps)
      bands = bands + jnp.tanh(weight * size(blurred - p) + bias)
      p = blurred
    return (size(x) + bands * (255 / std).astype(np.float32)).astype(self.dtype)


def get_resizer(name: str, *, output_size=None, scale=None, antialias: bool, **kwargs):
  """The resizer called `name` (see RESIZERS); `kwargs` go to learned/control (LearnedResizer) and
  muller (MullerResizer) only."""
  if name in ("learned", "control"):
    return LearnedResizer(output_size=output_size, scale=scale, antialias=antialias,
                          features_at_target=name == "control", **kwargs)
  if name == "muller":
    return MullerResizer(output_size=output_size, scale=scale, antialias=antialias, **kwargs)
  if name in METHODS:
    return FixedResizer(output_size=output_size, scale=scale, method=name, antialias=antialias)
  raise ValueError(f"unknown resizer {name!r}; valid: {', '.join(RESIZERS)}")
