"""Convolution formulations shared by the models.

`pointwise_conv` computes every model's 1x1 convolutions. FORMULATIONS are the ways the learned
resizer's full-resolution 7x7 convolutions can be computed (`config.resizer.formulation`): each is a
drop-in for nn.Conv's `conv_general_dilated` that takes the same HWIO kernel, rearranged at trace
time, and returns the same convolution, values and gradients, up to float rounding. The parameter
tree, and so every checkpoint, is the same under all of them.
"""
import functools

import jax
import jax.numpy as jnp


def _nhwc(lhs, rhs):
  return jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))


def pointwise_conv(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` that computes an unpadded 1x1 NHWC/HWIO convolution as a matmul.

  XLA turns a stride-1 one into a dot going forward, but takes its kernel gradient as a convolution
  over transposed copies of both operands, and keeps strided ones as convolutions throughout;
  as a (strided slice and a) dot, both gradients are plain contractions. For nn.Conv's
  `conv_general_dilated`; any other convolution goes to lax unchanged.
  """
  # A 1x1 kernel needs no padding for "SAME" at any stride.
  unpadded = padding in ("SAME", "VALID") or all(tuple(p) == (0, 0) for p in padding)
  if (rhs.shape[:2] == (1, 1) and unpadded and feature_group_count == 1 and
      dimension_numbers == _nhwc(lhs, rhs) and lhs_dilation in (None, (1, 1))):
    # lax.slice, not lhs[:, ::sh, ::sw]: with a symbolic batch (an export) indexing becomes a
    # gather, which TFLite cannot convert.
    strided = jax.lax.slice(lhs, (0,) * 4, lhs.shape, (1, *window_strides, 1))
    return jax.lax.dot_general(strided, rhs[0, 0], (((3,), (0,)), ((), ())),
                               precision=precision)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision)


def _plain_padding(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                   dimension_numbers, feature_group_count):
  """The (low, high) zero padding of each spatial axis of a stride-1, ungrouped, undilated
  NHWC/HWIO convolution with a kernel larger than 1x1; None for any other."""
  ones = (None, (1, 1))
  if (tuple(window_strides) != (1, 1) or lhs_dilation not in ones or rhs_dilation not in ones or
      feature_group_count != 1 or dimension_numbers != _nhwc(lhs, rhs) or
      rhs.shape[:2] == (1, 1)):
    return None
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
  pads = [tuple(p) for p in padding]
  return pads if min(min(p) for p in pads) >= 0 else None


def space_to_depth_conv(lhs, rhs, window_strides, padding, *, lhs_dilation=None,
                        rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                        precision=None):
  """A stride-1 convolution as one on the 2x2 space-to-depth grids of its input and output.

  Output pixel (2I+p, 2J+q) reads padded input pixels (2I+p+a, 2J+q+b) for the kernel's taps a, b.
  Taking input and output pixels in 2x2 blocks makes that a VALID convolution on the half-resolution
  grid, from 4C to 4O channels with a (k//2+1)^2 kernel whose entry (A, B, (r, s, c), (p, q, o)) is
  w[2A+r-p, 2B+s-q, c, o], zero off the kernel: the same sums of the same products (the kernel's
  gradient adds up each weight's four copies). A 7x7 from 3 channels becomes a 4x4 from 12 to 4x16:
  1.31x the multiply-adds, in wider matmuls. Stride-1 convolutions with an even output only; any
  other goes to `pointwise_conv` unchanged.
  """
  kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                precision=precision)
  pads = _plain_padding(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                        dimension_numbers, feature_group_count)
  if pads is None:
    return pointwise_conv(lhs, rhs, window_strides, padding, **kwargs)
  kh, kw, c, o = rhs.shape
  n, h, w, _ = lhs.shape
  out_h, out_w = h + sum(pads[0]) - kh + 1, w + sum(pads[1]) - kw + 1
  if out_h % 2 or out_w % 2:
    return pointwise_conv(lhs, rhs, window_strides, padding, **kwargs)
  ta, tb = kh // 2 + 1, kw // 2 + 1  # The kernel's taps on the half-resolution grid.
  # The padded input spans the output plus 2 x (taps - 1) pixels: an even kernel needs one more
  # zero at the end than its own padding.
  x = jnp.pad(lhs, ((0, 0), (pads[0][0], out_h + 2 * ta - 2 - h - pads[0][0]),
                    (pads[1][0], out_w + 2 * tb - 2 - w - pads[1][0]), (0, 0)))
  gh, gw = x.shape[1] // 2, x.shape[2] // 2
  x = x.reshape(n, gh, 2, gw, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh, gw, 4 * c)
  # wp[1 + a] = w[a], zero elsewhere; rows 1-p .. 1-p+2ta are w[2A+r-p] for (A, r).
  wp = jnp.pad(rhs, ((1, 2 * ta - kh), (1, 2 * tb - kw), (0, 0), (0, 0)))
  k = jnp.stack([jnp.stack([wp[1 - p:1 - p + 2 * ta, 1 - q:1 - q + 2 * tb] for q in (0, 1)], -2)
                 for p in (0, 1)], -3)  # (2ta, 2tb, c, p, q, o)
  k = k.reshape(ta, 2, tb, 2, c, 2, 2, o).transpose(0, 2, 1, 3, 4, 5, 6, 7)
  y = jax.lax.conv_general_dilated(x, k.reshape(ta, tb, 4 * c, 4 * o), (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
  y = y.reshape(n, out_h // 2, out_w // 2, 2, 2, o).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, out_h, out_w, o)


def channel_padded_conv(lhs, rhs, window_strides, padding, *, multiple, lhs_dilation=None,
                        rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                        precision=None):
  """The convolution with input and output channels padded with zeros up to a `multiple`.

  Zero input channels meet zero kernel rows and the zero filters' outputs are sliced off, so the
  result and both gradients are the plain convolution's: for kernels that want channel counts of
  4 or 8 (3 -> 4 or 8 at the resizer's image end). Grouped convolutions go to lax unchanged.
  """
  kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                precision=precision)
  if feature_group_count != 1 or dimension_numbers != _nhwc(lhs, rhs):
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
  c, o = rhs.shape[2:]
  pad_c, pad_o = -c % multiple, -o % multiple
  lhs = jnp.pad(lhs, ((0, 0),) * 3 + ((0, pad_c),))
  rhs = jnp.pad(rhs, ((0, 0), (0, 0), (0, pad_c), (0, pad_o)))
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)[..., :o]


FORMULATIONS = {
    "plain": jax.lax.conv_general_dilated,
    "s2d": space_to_depth_conv,
    "pad4": functools.partial(channel_padded_conv, multiple=4),
    "pad8": functools.partial(channel_padded_conv, multiple=8),
    # The stem (7x7, LeakyReLU, 1x1, LeakyReLU, resize, BatchNorm statistics) as one Pallas kernel
    # (models/fused_stem.py), for the integer bilinear downscales it computes; every other
    # convolution, the tail's 7x7 included, is the plain one.
    "fused": jax.lax.conv_general_dilated,
}
# What "auto" picks, by platform: the fastest formulation as measured by the bench. CPU: the plain
# convolution (2-core x86, 2026-12-02: space-to-depth 0.61x, pad4 1.0x, pad8 0.82x on the resizer
# step). GPU: space-to-depth (one H200, 2026-12-04, bfloat16, batch 256: 2.16x plain on the resizer
# step, the fused stem 0.40x; tensor cores take its 12 -> 64 channels, not the stem's 3 -> 16).
# TPU: not measured, so the plain convolution. docs/performance.md has the tables.
AUTO_FORMULATION = {"cpu": "plain", "gpu": "s2d", "tpu": "plain"}


def resolve_formulation(name: str, platform: str) -> str:
  """`name`, or for "auto" AUTO_FORMULATION's pick for `platform` (e.g. jax.default_backend())."""
  if name == "auto":
    return AUTO_FORMULATION.get(platform, "plain")
  if name not in FORMULATIONS:
    raise ValueError(f"unknown resizer formulation {name!r}; valid: auto, {', '.join(FORMULATIONS)}")
  return name
