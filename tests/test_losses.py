"""The EMD loss against independent computations, hand-worked cases, zeros, and its gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from resizer_jax import losses

SCORES = np.arange(1, 11)


def random_distributions(n, seed=0, zeros=True):
  rng = np.random.default_rng(seed)
  p = rng.dirichlet(np.full(10, 0.7), size=n)
  if zeros:  # Real AVA histograms have empty bins, often at the ends.
    p[rng.uniform(size=p.shape) < 0.3] = 0.0
    p[:, 4] += 1e-3  # Keep every row non-empty.
    p /= p.sum(-1, keepdims=True)
  return p


def one_hot(score):
  return np.eye(10)[score - 1]


@pytest.mark.parametrize("p_score,q_score,expected", [
    # CDFs differ by 1 on k = 1..9 (9 of the 10 terms).
    (1, 10, np.sqrt(9 / 10)),
    # Differ by 1 on k = 3, 4.
    (3, 5, np.sqrt(2 / 10)),
    (5, 3, np.sqrt(2 / 10)),
    (7, 7, 0.0),
])
def test_hand_computed_one_hot_pairs(p_score, q_score, expected):
  got = losses.emd_loss(one_hot(p_score)[None], one_hot(q_score)[None])
  np.testing.assert_allclose(got, [expected], rtol=1e-6)


def test_hand_computed_spread_distribution():
  # p: half at 1, half at 2 -> CDF 0.5, 1, 1, ...; q: all at 2 -> CDF 0, 1, 1, ...
  p = np.array([[0.5, 0.5] + [0.0] * 8])
  q = one_hot(2)[None]
  np.testing.assert_allclose(losses.emd_loss(p, q), [np.sqrt(0.25 / 10)], rtol=1e-6)
  np.testing.assert_allclose(losses.emd_loss(p, q, r=1), [0.5 / 10], rtol=1e-6)


def test_r1_equals_scipy_wasserstein_over_n():
  p, q = random_distributions(64, seed=1), random_distributions(64, seed=2)
  expected = [stats.wasserstein_distance(SCORES, SCORES, a, b) / 10 for a, b in zip(p, q)]
  np.testing.assert_allclose(losses.emd_loss(p, q, r=1), expected, rtol=1e-5, atol=1e-7)


def test_r2_equals_scipy_energy_distance():
  # In 1-D the energy distance is sqrt(2 * integral (F - G)^2), and the CDFs are steps of width 1
  # at 1..10, so EMD_2 = sqrt(integral / 10) = energy_distance / sqrt(20).
  p, q = random_distributions(64, seed=3), random_distributions(64, seed=4)
  expected = [stats.energy_distance(SCORES, SCORES, a, b) / np.sqrt(20) for a, b in zip(p, q)]
  np.testing.assert_allclose(losses.emd_loss(p, q), expected, rtol=1e-5, atol=1e-7)


def test_one_value_per_example_and_jit():
  p, q = random_distributions(5, seed=5), random_distributions(5, seed=6)
  got = jax.jit(losses.emd_loss)(p.astype(np.float32), q.astype(np.float32))
  assert got.shape == (5,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, losses.emd_loss(p, q), rtol=1e-6)
  # Symmetric, zero on the diagonal.
  np.testing.assert_allclose(losses.emd_loss(q, p), losses.emd_loss(p, q), rtol=1e-6)
  np.testing.assert_array_equal(losses.emd_loss(p, p), np.zeros(5))


@pytest.mark.parametrize("r", [1, 2, 3])
def test_gradient_is_finite_at_zero_emd_and_with_empty_bins(r):
  target = random_distributions(8, seed=7)

  def loss(logits, target):
    return losses.emd_loss(jax.nn.softmax(logits), target, r=r).mean()

  grad = jax.jit(jax.grad(loss))
  # Predicted == target (EMD exactly 0, where the root's derivative is infinite): zero, not NaN.
  same = np.eye(10)[np.arange(8) % 10]
  g = grad(jnp.log(jnp.asarray(same) + 1e-30), same)
  assert np.all(np.isfinite(g))
  g = jax.grad(lambda p: losses.emd_loss(p, p, r=r).sum())(jnp.asarray(target, jnp.float32))
  assert np.all(np.isfinite(g))
  # Elsewhere, with empty target bins: finite and non-zero, and the loss goes down along it.
  logits = jnp.asarray(np.random.default_rng(8).normal(size=(8, 10)), jnp.float32)
  g = grad(logits, target)
  assert np.all(np.isfinite(g)) and np.any(g != 0)
  assert loss(logits - 0.5 * g, target) < loss(logits, target)


def test_bad_arguments_are_named():
  p = random_distributions(2)
  with pytest.raises(ValueError, match="r >= 1"):
    losses.emd_loss(p, p, r=0.5)
  with pytest.raises(ValueError, match="one shape"):
    losses.emd_loss(p, p[:, :9])


def test_mean_and_std_of_a_histogram():
  p = random_distributions(16, seed=9)
  mean = (p * SCORES).sum(-1)
  np.testing.assert_allclose(losses.mean_score(p), mean, rtol=1e-6)
  np.testing.assert_allclose(losses.score_std(p),
                             np.sqrt((p * (SCORES - mean[:, None]) ** 2).sum(-1)), rtol=1e-5)
  assert losses.score_std(one_hot(4)[None].astype(np.float32))[0] == 0.0


def test_cross_entropy_with_label_smoothing():
  logits = np.random.default_rng(10).normal(size=(4, 5)).astype(np.float32)
  labels = np.array([0, 3, 4, 1])
  log_p = jax.nn.log_softmax(logits)
  targets = np.full((4, 5), 0.1 / 5) + 0.9 * np.eye(5)[labels]
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, 0.1), -(targets * log_p).sum(-1),
                             rtol=1e-5)
  np.testing.assert_allclose(losses.cross_entropy(logits, labels),
                             optax.softmax_cross_entropy_with_integer_labels(logits, labels),
                             rtol=1e-6)
