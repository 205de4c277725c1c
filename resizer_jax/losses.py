"""Losses, one value per example: softmax cross-entropy for classification, and NIMA's earth mover's
distance (EMD) between histograms over the ordered scores 1..10 for image quality assessment (IQA).

The batch mean is the caller's: `emd_loss(p, q).mean()`. Everything here is jit-able.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

NUM_SCORES = 10
# The score each bin stands for (AVA and NIMA: 1..10). numpy, so that importing creates no device array.
SCORES = np.arange(1, NUM_SCORES + 1, dtype=np.float32)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Softmax cross-entropy against integer `labels` smoothed as in Inception (`optax.smooth_labels`)."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def emd_loss(predicted, target, r: float = 2):
  """Earth mover's distance between histograms over ordered bins, shape (..., N) -> (...).

    EMD(p, q) = ( (1/N) * sum_k |CDF_p(k) - CDF_q(k)|^r )^(1/r)

  as in NIMA (Talebi & Milanfar, 2018), with r = 2 there. Both arguments are probability
  distributions (each row sums to 1): pass `jax.nn.softmax(logits)`, not logits. Bins may be zero.
  With r = 1 this is the 1-D Wasserstein distance divided by N.

  The gradient is finite everywhere: where the two CDFs coincide (EMD = 0) the r-th root's derivative
  is infinite, so that point gets the zero subgradient (it is the minimum) instead of NaN.
  """
  if not r >= 1:
    # Below 1 it is not a distance, and |x|^r has an infinite derivative at x = 0.
    raise ValueError(f"emd_loss needs r >= 1, got r={r}")
  predicted, target = jnp.asarray(predicted), jnp.asarray(target)
  if predicted.shape != target.shape:
    raise ValueError(f"emd_loss needs predicted and target of one shape, got {predicted.shape} and "
                     f"{target.shape}")
  dtype = jnp.promote_types(jnp.result_type(predicted, target), jnp.float32)
  diff = jnp.cumsum(predicted.astype(dtype), -1) - jnp.cumsum(target.astype(dtype), -1)
  powered = jnp.square(diff) if r == 2 else jnp.abs(diff) ** r
  mean = jnp.mean(powered, axis=-1)
  positive = mean > 0
  # The inner where keeps the untaken branch's gradient finite; otherwise 0 * inf = NaN leaks through.
  root = jnp.sqrt if r == 2 else (lambda m: m ** (1.0 / r))
  return jnp.where(positive, root(jnp.where(positive, mean, 1.0)), 0.0)


def mean_score(distribution):
  """sum_i i * p_i over the scores 1..10: a histogram's mean opinion score."""
  return jnp.asarray(distribution) @ SCORES


def score_std(distribution):
  """The standard deviation of the score under the histogram."""
  distribution = jnp.asarray(distribution)
  deviation = SCORES - mean_score(distribution)[..., None]
  # Rounding can make a zero variance slightly negative, and sqrt would answer NaN.
  return jnp.sqrt(jnp.maximum(jnp.sum(distribution * deviation ** 2, axis=-1), 0.0))
