"""The fixed resizes that every resizer applies, and the bilinear taps and pixel phases behind them.

`resize` is the one entry point (the resizers and the fused stem's reference call it); the fused
stem (models/fused_stem.py) reads `phase_weights`, whose integer-phase check (`block_phases`) is the
one `resize` takes its fast path by.
"""
from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np

# Interpolations of the fixed resizers. "area" is the box filter over each output pixel's footprint
# (tf.image.resize "area"); it always integrates, so `antialias` does not change it.
METHODS = ("bilinear", "bicubic", "lanczos3", "lanczos5", "nearest", "area")


def check_method(method: str) -> str:
  if method not in METHODS:
    raise ValueError(f"unknown interpolation {method!r}; valid: {', '.join(METHODS)}")
  return method


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights: the overlap of each input pixel with an output pixel's footprint."""
  edges = np.arange(n_out + 1) * (n_in / n_out)
  lo, hi = edges[:-1, None], edges[1:, None]
  j = np.arange(n_in)[None, :]
  overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
  return (overlap / (hi - lo)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def two_taps(n_in: int, n_out: int, method: str, antialias: bool):
  """(index0, index1, weight0, weight1) per output pixel if jax.image.resize's weights along an axis
  have at most two non-zero taps per output pixel (bilinear without antialias, or any upscale), else
  None. The weights are jax's own: its resize applied to an identity matrix.

  index0 < index1, but from a side of 1, where both are 0 (weight1 = 0). An output pixel with one
  non-zero tap (every pixel of an odd integer downscale or of 1x) has a second of weight 0, which
  is the lowest-indexed other pixel: either of the two may be the zero.
  """
  with jax.ensure_compile_time_eval():
    weights = np.asarray(jax.image.resize(jnp.eye(n_in, dtype=jnp.float32), (n_out, n_in),
                                          method=method, antialias=antialias))
  if (np.count_nonzero(weights, axis=1) > 2).any():
    return None
  if n_in == 1:  # Every output pixel is the one input pixel (weight 1).
    zeros = np.zeros(n_out, np.int64)
    return zeros, zeros, weights[:, 0], np.zeros(n_out, np.float32)
  idx = np.sort(np.argsort(-np.abs(weights), axis=1, kind="stable")[:, :2], axis=1)
  w = np.take_along_axis(weights, idx, axis=1)
  return idx[:, 0], idx[:, 1], w[:, 0], w[:, 1]


def block_phases(taps, n_in: int):
  """(k, ((phase, weight), ...)): the one or two pixels (`phase` in 0..k-1) of its block of k that
  every output pixel mixes, with the same non-zero weights, if `taps` (two_taps') resize n_in
  pixels by an integer factor k (or 1x) so; else None. The one test of this, for `resize`'s fast
  path and the fused stem's."""
  i0, i1, w0, w1 = taps
  n_out = len(i0)
  k, rest = divmod(n_in, n_out)
  if rest or k < 1:
    return None
  # Each pixel's non-zero taps, in index order: (first, second), second = first with weight 0 for
  # a pixel with one.
  one = (w0 == 0) | (w1 == 0)
  first, first_w = np.where(w0 != 0, i0, i1), np.where(w0 != 0, w0, w1)
  second, second_w = np.where(one, first, i1), np.where(one, np.float32(0), w1)
  block = k * np.arange(n_out)
  if not (np.all(first - block == first[0]) and np.all(second - block == second[0]) and
          np.all(first_w == first_w[0]) and np.all(second_w == second_w[0])):
    return None
  return k, ((int(first[0]), first_w[0]),) + (
      ((int(second[0]), second_w[0]),) if second_w[0] else ())


def phase_weights(n_in: int, n_out: int) -> np.ndarray | None:
  """The weight of each of the k = n_in / n_out pixel phases of a block in a bilinear resize
  without antialias from n_in to n_out pixels, if it is an integer downscale (or 1x) where every
  output pixel mixes the same phases of its block; else None. For the fused stem."""
  if n_in % n_out:  # Not an integer downscale: no need to compute the taps.
    return None
  phases = block_phases(two_taps(n_in, n_out, "bilinear", False), n_in)
  if phases is None:
    return None
  k, taps = phases
  weights = np.zeros(k, np.float32)
  for phase, weight in taps:
    weights[phase] += weight
  return weights


def _take(x, indices: np.ndarray, axis: int):
  # Evenly spaced indices (every integer downscale) are a strided slice, whose gradient is a cheap
  # interior pad rather than a scatter.
  step = int(indices[1] - indices[0]) if len(indices) > 1 else 1
  if step > 0 and np.array_equal(indices, indices[0] + step * np.arange(len(indices))):
    return jax.lax.slice_in_dim(x, int(indices[0]), int(indices[-1]) + 1, step, axis)
  return jnp.take(x, indices, axis=axis)


def _resize_two_taps(x, axis: int, taps):
  i0, i1, w0, w1 = taps
  n_out = len(i0)
  phases = block_phases(taps, x.shape[axis])
  if phases is not None:
    # An integer downscale (448 -> 224, 672 -> 224): every output pixel mixes the same one or two
    # pixels of its block of k. Reading them off a reshape makes the gradient a broadcast, which
    # fuses into the full-resolution consumer, where strided slices make it two interior pads
    # materialised at (half) full resolution.
    k, block_taps = phases
    blocks = x.reshape(x.shape[:axis] + (n_out, k) + x.shape[axis + 1:])
    terms = [jax.lax.index_in_dim(blocks, phase, axis + 1, keepdims=False) * x.dtype.type(weight)
             for phase, weight in block_taps]
    return sum(terms[1:], terms[0])
  shape = [1] * x.ndim
  shape[axis] = -1
  y = _take(x, i0, axis) * jnp.asarray(w0.reshape(shape), x.dtype)
  if np.any(w1):
    y = y + _take(x, i1, axis) * jnp.asarray(w1.reshape(shape), x.dtype)
  return y


def resize(x: jax.Array, out_hw: Sequence[int], method: str, antialias: bool) -> jax.Array:
  """Resizes NHWC images spatially; `antialias` must be stated because it changes the baseline.

  Bilinear resizes whose weights have two taps per pixel are computed as two gathers per axis
  instead of jax.image.resize's dense weight matrices: the same weights, a fraction of the FLOPs
  (448->224 on 16 channels: 2.2 GFLOPs dense), equal to jax.image.resize up to float rounding.
  """
  check_method(method)
  h, w = out_hw
  if method == "area":
    mh = jnp.asarray(area_matrix(x.shape[1], h), x.dtype)
    mw = jnp.asarray(area_matrix(x.shape[2], w), x.dtype)
    return jnp.einsum("oh,pw,nhwc->nopc", mh, mw, x)
  if method == "bilinear":
    taps_h = two_taps(x.shape[1], h, method, antialias)
    taps_w = two_taps(x.shape[2], w, method, antialias)
    if taps_h is not None and taps_w is not None:
      return _resize_two_taps(_resize_two_taps(x, 1, taps_h), 2, taps_w)
  return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), method=method, antialias=antialias)
