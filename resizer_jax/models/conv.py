"""Convolution formulations shared by the models."""
import jax


def pointwise_conv(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` that computes an unpadded 1x1 NHWC/HWIO convolution as a matmul.

  XLA turns a stride-1 one into a dot going forward, but takes its kernel gradient as a convolution
  over transposed copies of both operands, and keeps strided ones as convolutions throughout;
  as a (strided slice and a) dot, both gradients are plain contractions. For nn.Conv's
  `conv_general_dilated`; any other convolution goes to lax unchanged.
  """
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  # A 1x1 kernel needs no padding for "SAME" at any stride.
  unpadded = padding in ("SAME", "VALID") or all(tuple(p) == (0, 0) for p in padding)
  if (rhs.shape[:2] == (1, 1) and unpadded and feature_group_count == 1 and
      dimension_numbers == nhwc and lhs_dilation in (None, (1, 1))):
    sh, sw = window_strides
    return jax.lax.dot_general(lhs[:, ::sh, ::sw], rhs[0, 0], (((3,), (0,)), ((), ())),
                               precision=precision)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision)
