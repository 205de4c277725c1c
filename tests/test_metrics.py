"""IQA metrics: whole-split correlations equal scipy's, also when the split is evaluated in padded,
masked batches sharded over 8 devices under jit and merged on the host."""
import math

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest
from scipy import stats

from resizer_jax import losses
from resizer_jax import metrics

N, BATCH = 203, 32  # 7 batches of 32 over 8 devices; the last has 21 padding rows.
SCORES = np.arange(1, 11)


def softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def made_up_split(seed=0):
  """Histograms and logits that predict them imperfectly, with ties on both sides."""
  rng = np.random.default_rng(seed)
  votes = rng.multinomial(120, rng.dirichlet(np.full(10, 2.0), size=N))
  votes[10:20] = votes[0]  # Ten true histograms alike: tied true means and stds.
  distribution = (votes / votes.sum(-1, keepdims=True)).astype(np.float32)
  logits = (np.log(distribution + 0.02) + rng.normal(0, 0.8, (N, 10))).astype(np.float32)
  logits[30:45] = logits[29]  # Sixteen identical predictions: tied predicted means and stds.
  return logits, distribution


def expected(logits, distribution):
  p = softmax(logits.astype(np.float64))
  q = distribution.astype(np.float64)
  pm, tm = p @ SCORES, q @ SCORES
  ps = np.sqrt((p * (SCORES - pm[:, None]) ** 2).sum(-1))
  ts = np.sqrt((q * (SCORES - tm[:, None]) ** 2).sum(-1))
  emd = np.sqrt(np.mean((np.cumsum(p, -1) - np.cumsum(q, -1)) ** 2, -1))
  return {"plcc": stats.pearsonr(pm, tm)[0], "srcc": stats.spearmanr(pm, tm)[0],
          "std_lcc": stats.pearsonr(ps, ts)[0], "std_srcc": stats.spearmanr(ps, ts)[0],
          "emd": emd.mean(), "accuracy": np.mean((pm > 5) == (tm > 5))}


def padded_batches(logits, distribution):
  """As the input pipeline pads: full batches, padding rows with mask False. Padding here carries
  garbage logits and an all-zero histogram, which the metrics must ignore."""
  steps = math.ceil(len(logits) / BATCH)
  pad = steps * BATCH - len(logits)
  rng = np.random.default_rng(1)
  logits = np.concatenate([logits, rng.normal(0, 30, (pad, 10)).astype(np.float32)])
  distribution = np.concatenate([distribution, np.zeros((pad, 10), np.float32)])
  mask = np.arange(steps * BATCH) < N
  for i in range(steps):
    s = slice(i * BATCH, (i + 1) * BATCH)
    yield {"logits": logits[s], "distribution": distribution[s], "mask": mask[s]}


@pytest.mark.parametrize("replicated_output", [True, False])
def test_whole_split_metrics_over_8_devices_with_padding_equal_scipy(replicated_output):
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = NamedSharding(mesh, P("data"))
  eval_fn = jax.jit(lambda b: metrics.IQAEvalMetrics.single_from_model_output(**b),
                    in_shardings=(sharded,),
                    out_shardings=NamedSharding(mesh, P()) if replicated_output else None)
  logits, distribution = made_up_split()

  total = None
  for batch in padded_batches(logits, distribution):
    m = eval_fn(jax.device_put(batch, sharded))
    total = m if total is None else total.merge(m)
  got = total.compute()

  assert set(got) == {"emd", "accuracy", "plcc", "srcc", "std_lcc", "std_srcc", "skipped",
                      "examples"}
  assert got["skipped"] == 0 and got["examples"] == N  # The padding is not counted.
  want = expected(logits, distribution)
  # The per-example statistics kept: exactly the N real examples, in order, as float64 numpy has them.
  p = softmax(logits.astype(np.float64))
  for name, predicted, target in (("plcc", p @ SCORES, distribution @ SCORES),
                                  ("std_lcc", losses.score_std(p), losses.score_std(distribution))):
    kept = getattr(total, name).pairs()
    assert kept[0].shape == kept[1].shape == (N,)
    np.testing.assert_allclose(kept[0], predicted, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(kept[1], target, rtol=1e-5, err_msg=name)
  predicted_means, true_means = total.srcc.pairs()
  assert len(set(predicted_means[29:45])) == 1 and len(set(true_means[10:20])) == 1  # Ties, ranked.
  # The correlations are scipy's on those very values: ranks (and so SRCC) are discontinuous, and
  # float32 and float64 break near-ties of the true means differently (votes / 120 make exact ties).
  for name, fn in (("plcc", stats.pearsonr), ("srcc", stats.spearmanr), ("std_lcc", stats.pearsonr),
                   ("std_srcc", stats.spearmanr)):
    np.testing.assert_allclose(got[name], fn(*getattr(total, name).pairs())[0], rtol=1e-10,
                               err_msg=name)
  # Pearson is continuous: within float32 rounding of the float64 computation.
  for name in ("plcc", "std_lcc"):
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(got["emd"], want["emd"], rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], want["accuracy"], rtol=1e-6)
  assert 0.3 < got["plcc"] < 0.99  # A real, imperfect correlation: the test is not vacuous.
  # Whole-split, not per batch: the mean of per-batch correlations is a different number.
  per_batch = [stats.pearsonr(softmax(logits[i:i + BATCH]) @ SCORES,
                              distribution[i:i + BATCH] @ SCORES)[0] for i in range(0, N, BATCH)]
  assert abs(np.mean(per_batch) - got["plcc"]) > 1e-4


def test_merge_order_and_empty_do_not_matter():
  logits, distribution = made_up_split(seed=2)
  parts = [metrics.IQAEvalMetrics.single_from_model_output(**b)
           for b in padded_batches(logits, distribution)]
  forward = metrics.IQAEvalMetrics.empty()
  for m in parts:
    forward = forward.merge(m)
  backward = parts[-1]
  for m in parts[-2::-1]:
    backward = backward.merge(m)
  a, b = forward.compute(), backward.compute()
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-6, err_msg=name)


def test_spearman_ranks_ties_by_their_average():
  x = np.array([1.0, 2.0, 2.0, 2.0, 5.0, 3.0, 3.0])
  y = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0])
  assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], rel=1e-12)
  assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], rel=1e-12)


def test_degenerate_splits_answer_nan_not_an_error():
  one = np.zeros((4, 10), np.float32)
  dist = np.tile(np.eye(10, dtype=np.float32)[4], (4, 1))
  # Constant predictions: no correlation is defined.
  got = metrics.IQAEvalMetrics.single_from_model_output(logits=one, distribution=dist).compute()
  assert np.isnan(got["plcc"]) and np.isnan(got["srcc"])
  # Everything masked.
  got = metrics.IQAEvalMetrics.single_from_model_output(
      logits=np.random.default_rng(0).normal(size=(4, 10)), distribution=dist,
      mask=np.zeros(4, bool)).compute()
  assert np.isnan(got["plcc"])


def test_train_metrics_average_the_loss_and_keep_the_last_learning_rate():
  logits, distribution = made_up_split(seed=3)
  total = None
  for i, lr in zip(range(0, 96, 32), (0.3, 0.2, 0.1)):
    loss = losses.emd_loss(jax.nn.softmax(logits[i:i + 32]), distribution[i:i + 32]).mean()
    m = jax.jit(metrics.IQATrainMetrics.single_from_model_output)(
        loss=loss, logits=logits[i:i + 32], distribution=distribution[i:i + 32], learning_rate=lr,
        grad_norm=np.float32(1.0))
    total = m if total is None else total.merge(m)
  got = total.compute()
  want = expected(logits[:96], distribution[:96])
  np.testing.assert_allclose(got["loss"], want["emd"], rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], want["accuracy"], rtol=1e-6)
  np.testing.assert_allclose(got["learning_rate"], 0.1, rtol=1e-6)


def test_unknown_correlation_is_named():
  with pytest.raises(ValueError, match="kendall.*pearson, spearman"):
    metrics.Pairs.correlation("kendall", "a", "b")
