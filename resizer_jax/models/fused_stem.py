"""The learned resizer's stem as one Pallas kernel, forward and backward (formulation "fused").

The stem is h = LeakyReLU(Conv1x1(LeakyReLU(Conv7x7(x)))) at the input resolution, followed by
BatchNorm, whose statistics are h's and whose affine map follows the resize (ResizedBatchNorm).
Unfused, h and its gradient cross memory at full resolution, 16 channels each, several times over.
Here each program computes, for a band of target rows of one image, every full-resolution pixel of
the band from the image alone and keeps only what the rest of the model reads: `resize(h)` at the
target resolution and the per-channel sums of h and h^2. The backward pass recomputes the band the
same way and returns partial parameter gradients that XLA adds up, so no full-resolution tensor
exists in either direction.

The resize must be an integer downscale (or 1x) by bilinear without antialias, where every output
pixel is a fixed mix of one or two pixels of its k x k block (one for odd k, as 672 -> 224; two
for even k; models/resize_ops.py finds them): the kernel walks the k^2 pixel
phases (a, b) of the blocks, reading the image with stride k, so that each phase is a target-sized
tile (every phase enters the statistics, the tap phases the resize). Other resizes keep the plain
path (`applies`).

On a CPU the kernel runs in Pallas' interpret mode (slow, for tests); on a GPU it is lowered by
Pallas, which no run has done yet (no GPU was lent while it was written): its speed is unmeasured.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from resizer_jax.models import resize_ops

SLOPE = 0.2  # The resizer's LeakyReLU.
# Target rows per program: one row of 224 (padded to 256) columns x 16 features is 32 float32 per
# thread of 4 warps for each live tile, which fits the registers Triton allocates; 8 rows would spill.
ROWS = 1


def applies(in_hw, out_hw, method: str, antialias: bool) -> bool:
  """Whether the fused stem computes this resize (else the plain layers do)."""
  return (method == "bilinear" and not antialias and
          all(resize_ops.phase_weights(i, o) is not None for i, o in zip(in_hw, out_hw)))


def _lrelu_slope(z):
  return jnp.where(z > 0, 1.0, SLOPE).astype(z.dtype)


def _taps(x_ref, row, col, c, k, rows, cols):
  """(rows, cols, 1): channel c of the image's pixels (row + k_h i, col + k_w j) for the band's
  target pixels (i, j). One channel at a time: Triton takes power-of-two shapes only."""
  return x_ref[pl.ds(row, rows, stride=k[0]), pl.ds(col, cols, stride=k[1]), pl.ds(c, 1)]


def _phase(x_ref, w1_ref, b1_ref, w2_ref, b2_ref, row0, a, b, *, k, rows, cols):
  """(pixels of phase (a, b) in the band: z1, h1, z2, h2, each (rows, cols, features))."""
  kh, kw, c_in, feats = w1_ref.shape

  def tap_row(dy, z):
    for dx in range(kw):
      for c in range(c_in):
        xs = _taps(x_ref, row0 * k[0] + a + dy, b + dx, c, k, rows, cols)
        z = z + xs * w1_ref[dy, dx, c, :][None, None, :]
    return z

  z1 = jax.lax.fori_loop(0, kh, tap_row, jnp.zeros((rows, cols, feats), jnp.float32))
  z1 = z1 + b1_ref[...][None, None, :]
  h1 = jnp.where(z1 > 0, z1, SLOPE * z1)
  z2 = jnp.dot(h1.reshape(rows * cols, feats), w2_ref[...],
               preferred_element_type=jnp.float32).reshape(rows, cols, feats)
  z2 = z2 + b2_ref[...][None, None, :]
  return z1, h1, z2, jnp.where(z2 > 0, z2, SLOPE * z2)


def _phase_weight(a, weights):
  """weights[a] for a traced phase index, from Python scalars (a kernel captures no arrays)."""
  zero = jnp.float32(0)
  return sum((jnp.where(a == i, jnp.float32(w), zero) for i, w in enumerate(weights) if w), zero)


def _valid(out_rows, out_cols, rows, cols):
  """(rows, cols, 1): 1 where this program's target pixel is inside the image, not padding."""
  r = pl.program_id(1) * rows + jax.lax.broadcasted_iota(jnp.int32, (rows, cols, 1), 0)
  c = jax.lax.broadcasted_iota(jnp.int32, (rows, cols, 1), 1)
  return ((r < out_rows) & (c < out_cols)).astype(jnp.float32)


def _forward_kernel(x_ref, w1_ref, b1_ref, w2_ref, b2_ref, y_ref, s1_ref, s2_ref, *, k, weights,
                    out_hw, rows, cols):
  row0 = pl.program_id(1) * rows
  valid = _valid(*out_hw, rows, cols)
  feats = w1_ref.shape[-1]

  def phase(p, carry):
    y, s1, s2 = carry
    a, b = jax.lax.div(p, k[1]), jax.lax.rem(p, k[1])  # p >= 0: no sign fix-up
    h2 = _phase(x_ref, w1_ref, b1_ref, w2_ref, b2_ref, row0, a, b, k=k, rows=rows, cols=cols)[3]
    h2v = h2 * valid
    wgt = _phase_weight(a, weights[0]) * _phase_weight(b, weights[1])
    return (y + wgt * h2, s1 + jnp.sum(h2v, axis=(0, 1)), s2 + jnp.sum(h2v * h2, axis=(0, 1)))

  zeros = jnp.zeros((feats,), jnp.float32)
  y, s1, s2 = jax.lax.fori_loop(0, k[0] * k[1], phase,
                                (jnp.zeros((rows, cols, feats), jnp.float32), zeros, zeros))
  y_ref[...] = y.astype(y_ref.dtype)
  s1_ref[...] = s1
  s2_ref[...] = s2


def _backward_kernel(x_ref, w1_ref, b1_ref, w2_ref, b2_ref, gy_ref, gs1_ref, gs2_ref,
                     dw1_ref, db1_ref, dw2_ref, db2_ref, *, k, weights, out_hw, rows, cols):
  row0 = pl.program_id(1) * rows
  valid = _valid(*out_hw, rows, cols)
  kh, kw, c_in, feats = w1_ref.shape
  gy = gy_ref[...].astype(jnp.float32)

  def zero_row(dy, carry):  # By (16,) rows: Triton takes power-of-two shapes only.
    for dx in range(kw):
      for c in range(c_in):
        dw1_ref[dy, dx, c, :] = jnp.zeros((feats,), jnp.float32)
    return carry

  jax.lax.fori_loop(0, kh, zero_row, 0)
  db1_ref[...] = jnp.zeros(db1_ref.shape, jnp.float32)
  dw2_ref[...] = jnp.zeros(dw2_ref.shape, jnp.float32)
  db2_ref[...] = jnp.zeros(db2_ref.shape, jnp.float32)

  def phase(p, carry):
    a, b = jax.lax.div(p, k[1]), jax.lax.rem(p, k[1])  # p >= 0: no sign fix-up
    z1, h1, z2, h2 = _phase(x_ref, w1_ref, b1_ref, w2_ref, b2_ref, row0, a, b, k=k, rows=rows,
                            cols=cols)
    wgt = _phase_weight(a, weights[0]) * _phase_weight(b, weights[1])
    dh2 = (wgt * gy + gs1_ref[...][None, None, :] + 2 * h2 * gs2_ref[...][None, None, :]) * valid
    dz2 = dh2 * _lrelu_slope(z2)
    flat = lambda t: t.reshape(rows * cols, feats)
    dw2_ref[...] += jax.lax.dot_general(flat(h1), flat(dz2), (((0,), (0,)), ((), ())),
                                        preferred_element_type=jnp.float32)
    db2_ref[...] += jnp.sum(dz2, axis=(0, 1))
    dh1 = jnp.dot(flat(dz2), w2_ref[...].T, preferred_element_type=jnp.float32)
    dz1 = dh1.reshape(rows, cols, feats) * _lrelu_slope(z1)
    db1_ref[...] += jnp.sum(dz1, axis=(0, 1))

    def tap_row(dy, carry):
      for dx in range(kw):
        for c in range(c_in):
          xs = _taps(x_ref, row0 * k[0] + a + dy, b + dx, c, k, rows, cols)
          dw1_ref[dy, dx, c, :] += jnp.sum(xs * dz1, axis=(0, 1))
      return carry

    jax.lax.fori_loop(0, kh, tap_row, 0)
    return carry

  jax.lax.fori_loop(0, k[0] * k[1], phase, 0)


def _layout(x_shape, w1_shape, out_hw):
  """The phase weights per axis, and the grid and padding: target rows in bands of ROWS, target
  columns padded to a power of two (block shapes a GPU lowering accepts), the image padded to match
  (zeros: the 7x7's SAME)."""
  weights = tuple(tuple(resize_ops.phase_weights(i, o)) for i, o in zip(x_shape[1:3], out_hw))
  n, h, w, _ = x_shape
  kh, kw = w1_shape[:2]
  k = (h // out_hw[0], w // out_hw[1])
  bands = pl.cdiv(out_hw[0], ROWS)
  cols = pl.next_power_of_2(out_hw[1])
  pad_h = (kh // 2, bands * ROWS * k[0] + kh - 1 - kh // 2 - h)
  pad_w = (kw // 2, cols * k[1] + kw - 1 - kw // 2 - w)
  return weights, n, k, bands, cols, ((0, 0), pad_h, pad_w, (0, 0))


def _specs(x_pad, w1, b1, w2, b2):
  image = pl.BlockSpec((None, *x_pad.shape[1:]), lambda i, t: (i, 0, 0, 0))
  whole = lambda a: pl.BlockSpec(a.shape, lambda i, t: (0,) * a.ndim)
  return [image, whole(w1), whole(b1), whole(w2), whole(b2)]


# Triton rather than Mosaic GPU: Mosaic stages every block in shared memory, and a whole image
# (what each program reads its band from) does not fit there.
_GPU = pl_triton.CompilerParams(num_warps=4)


def _interpret() -> bool:
  return jax.default_backend() == "cpu"


def _stem(x, w1, b1, w2, b2, out_hw, dtype):
  weights, n, k, bands, cols, pads = _layout(x.shape, w1.shape, out_hw)
  feats = w1.shape[-1]
  x_pad = jnp.pad(x.astype(jnp.float32), pads)
  partial = lambda: jax.ShapeDtypeStruct((n, bands, feats), jnp.float32)
  y, s1, s2 = pl.pallas_call(
      functools.partial(_forward_kernel, k=k, weights=weights, out_hw=tuple(out_hw), rows=ROWS,
                        cols=cols),
      out_shape=(jax.ShapeDtypeStruct((n, bands * ROWS, cols, feats), dtype), partial(), partial()),
      grid=(n, bands),
      in_specs=_specs(x_pad, w1, b1, w2, b2),
      out_specs=(pl.BlockSpec((None, ROWS, cols, feats), lambda i, t: (i, t, 0, 0)),
                 pl.BlockSpec((None, None, feats), lambda i, t: (i, t, 0)),
                 pl.BlockSpec((None, None, feats), lambda i, t: (i, t, 0))),
      interpret=_interpret(), name="fused_stem_forward", compiler_params=_GPU,
  )(x_pad, w1, b1, w2, b2)
  count = n * x.shape[1] * x.shape[2]
  return (y[:, :out_hw[0], :out_hw[1]], jnp.sum(s1, axis=(0, 1)) / count,
          jnp.sum(s2, axis=(0, 1)) / count)


def reference(x, w1, b1, w2, b2, out_hw, dtype=jnp.float32):
  """What `stem` computes, with XLA's convolution and the model's resize: for tests and for the
  input's gradient."""
  x = x.astype(jnp.float32)
  z1 = jax.lax.conv_general_dilated(x, w1, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC")) + b1
  h1 = jnp.where(z1 > 0, z1, SLOPE * z1)
  z2 = jnp.einsum("nhwc,cd->nhwd", h1, w2) + b2
  h2 = jnp.where(z2 > 0, z2, SLOPE * z2)
  y = resize_ops.resize(h2, out_hw, "bilinear", False)
  return y.astype(dtype), jnp.mean(h2, axis=(0, 1, 2)), jnp.mean(jnp.square(h2), axis=(0, 1, 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def stem(x, w1, b1, w2, b2, out_hw, dtype=jnp.float32):
  """(resize(h), E[h], E[h^2]) for h = LeakyReLU(LeakyReLU(x * w1 + b1) @ w2 + b2), the 7x7
  convolution `SAME`, NHWC/HWIO, the means over batch and pixels, float32 but `resize(h)` (dtype).
  `out_hw` must pass `applies` with bilinear, no antialias."""
  return _stem(x, w1, b1, w2, b2, out_hw, dtype)


def _stem_fwd(x, w1, b1, w2, b2, out_hw, dtype):
  return _stem(x, w1, b1, w2, b2, out_hw, dtype), (x, w1, b1, w2, b2)


def _stem_bwd(out_hw, dtype, residuals, cotangents):
  x, w1, b1, w2, b2 = residuals
  gy, g_mean, g_mean_sq = cotangents
  weights, n, k, bands, cols, pads = _layout(x.shape, w1.shape, out_hw)
  count = n * x.shape[1] * x.shape[2]
  x_pad = jnp.pad(x.astype(jnp.float32), pads)
  gy = jnp.pad(gy.astype(jnp.float32),
               ((0, 0), (0, bands * ROWS - out_hw[0]), (0, cols - out_hw[1]), (0, 0)))
  per_program = lambda a: jax.ShapeDtypeStruct((n, bands, *a.shape), jnp.float32)
  block = lambda a: pl.BlockSpec((None, None, *a.shape), lambda i, t: (i, t) + (0,) * a.ndim)
  vector = pl.BlockSpec(g_mean.shape, lambda i, t: (0,))
  dw1, db1, dw2, db2 = pl.pallas_call(
      functools.partial(_backward_kernel, k=k, weights=weights, out_hw=tuple(out_hw), rows=ROWS,
                        cols=cols),
      out_shape=tuple(per_program(a) for a in (w1, b1, w2, b2)),
      grid=(n, bands),
      in_specs=_specs(x_pad, w1, b1, w2, b2) + [
          pl.BlockSpec((None, ROWS, cols, gy.shape[-1]), lambda i, t: (i, t, 0, 0)), vector,
          vector],
      out_specs=tuple(block(a) for a in (w1, b1, w2, b2)),
      interpret=_interpret(), name="fused_stem_backward", compiler_params=_GPU,
  )(x_pad, w1, b1, w2, b2, gy, g_mean / count, g_mean_sq / count)
  grads = [jnp.sum(g, axis=(0, 1)).astype(p.dtype) for g, p in zip((dw1, db1, dw2, db2),
                                                                   (w1, b1, w2, b2))]
  # The image's gradient (no train step asks for it, so XLA drops this) from the plain layers.
  _, image_vjp = jax.vjp(lambda v: reference(v, w1, b1, w2, b2, out_hw, dtype), x)
  return (image_vjp(cotangents)[0], *grads)


stem.defvjp(_stem_fwd, _stem_bwd)
