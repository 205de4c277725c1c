"""The metrics the trainer logs, as clu collections, per task.

  TrainMetrics     classification: loss, accuracy, learning rate, gradient norm (global L2)
  EvalMetrics      classification: loss, accuracy, top5_accuracy, skipped, examples
  IQATrainMetrics  image quality assessment (IQA): loss (mean EMD, r = 2), binary accuracy, learning rate,
                   gradient norm
  IQAEvalMetrics   emd (mean EMD), accuracy (binary, threshold 5), plcc and srcc of the mean score,
                   std_lcc and std_srcc of the score's standard deviation, skipped, examples

`skipped` counts the eval examples that could not be decoded (masked out of everything else);
`examples` counts those evaluated (not padding, not skipped).

Predicted and true statistics come from the 10-bin histograms: the mean score sum_i i * p_i and its
standard deviation. Binary accuracy counts an example right when the predicted and the true mean are
on the same side of 5 (above 5 = "high quality", as in the AVA literature).

**PLCC and SRCC are raw**: Pearson's and Spearman's correlation of the predictions themselves, with
no logistic (or other monotonic) fit of predictions to scores first, which some IQA papers apply
before PLCC. Spearman ranks ties by their average rank (scipy.stats.rankdata's default).

Correlations are over the *whole* eval split, not averaged per batch: each batch contributes its
per-example (prediction, target) pairs, `merge` concatenates them on the host, and `compute` drops the
masked (padding) rows and correlates the rest. Under jit on a global batch the eval step's output
holds every host's examples, so every host computes the same value over the same examples. The kept
pairs cost 12 bytes per example and metric (20k AVA test images: under 1 MB in all).

  eval_fn = jax.jit(lambda state, batch: IQAEvalMetrics.single_from_model_output(
      logits=apply(state, batch["image"]), distribution=batch["distribution"], mask=batch["mask"]))
  total = None
  for batch in eval_batches:
    m = eval_fn(state, batch)
    total = m if total is None else total.merge(m)
  total.compute()  # {"emd": ..., "accuracy": ..., "plcc": ..., "srcc": ..., "std_lcc": ..., ...}
"""
from typing import Any

from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from resizer_jax import losses

BINARY_THRESHOLD = 5.0


def pearson(x, y) -> float:
  """Pearson's r in float64; NaN with fewer than 2 pairs or a constant side (as scipy, minus the warning)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2:
    return float("nan")
  x, y = x - x.mean(), y - y.mean()
  norm = np.sqrt(np.dot(x, x) * np.dot(y, y))
  return float(np.dot(x, y) / norm) if norm > 0 else float("nan")


def spearman(x, y) -> float:
  """Spearman's rho: Pearson's r of the ranks, ties given their average rank."""
  return pearson(stats.rankdata(x), stats.rankdata(y))


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Accuracy
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")
  grad_norm: clu_metrics.Average.from_output("grad_norm")


@flax.struct.dataclass
class Total(clu_metrics.Metric):
  """A sum over all batches (clu has averages, not sums); `Total.from_output(name)` sums `name`."""
  total: jax.Array

  @classmethod
  def from_output(cls, name: str):
    @flax.struct.dataclass
    class FromOutput(cls):
      @classmethod
      def from_model_output(cls, **outputs):
        return cls(total=jnp.sum(outputs[name].astype(jnp.int32)))
    return FromOutput

  @classmethod
  def empty(cls):
    return cls(total=jnp.zeros((), jnp.int32))

  def merge(self, other):
    return type(self)(total=self.total + other.total)

  def compute(self):
    return self.total


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Accuracy
  top5_accuracy: clu_metrics.Average.from_output("top5")
  skipped: Total.from_output("skipped")
  examples: Total.from_output("mask")  # Each example of the split once, whatever the hosts.


@flax.struct.dataclass
class Pairs(clu_metrics.Metric):
  """Every (predicted, target) pair seen, with its mask; subclasses say what to compute from them.

  A batch's arrays are made under jit; `merge` concatenates on the host, because a whole split's
  values have no fixed shape to jit.
  """
  predicted: Any
  target: Any
  mask: Any

  @classmethod
  def from_model_output(cls, predicted, target, mask=None, **_):
    predicted, target = jnp.asarray(predicted, jnp.float32), jnp.asarray(target, jnp.float32)
    if predicted.shape != target.shape or predicted.ndim != 1:
      raise ValueError(f"{cls.__name__} needs predicted and target of one shape (batch,), got "
                       f"{predicted.shape} and {target.shape}")
    mask = jnp.ones(predicted.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    return cls(predicted=predicted, target=target, mask=mask)

  @classmethod
  def empty(cls):
    return cls(predicted=np.zeros(0, np.float32), target=np.zeros(0, np.float32),
               mask=np.zeros(0, bool))

  def merge(self, other):
    return type(self)(**{k: np.concatenate([np.asarray(getattr(self, k)), np.asarray(getattr(other, k))])
                         for k in ("predicted", "target", "mask")})

  def reduce(self):
    # After an all_gather (pmap): (devices, batch) -> (devices * batch,).
    return type(self)(**{k: jnp.reshape(getattr(self, k), (-1,)) for k in ("predicted", "target", "mask")})

  def pairs(self):
    """(predicted, target) of the unmasked examples, as float64 numpy arrays."""
    keep = np.asarray(self.mask, bool)
    return (np.asarray(self.predicted, np.float64)[keep], np.asarray(self.target, np.float64)[keep])

  def compute(self):
    raise NotImplementedError("use Pairs.correlation(...)")

  @classmethod
  def correlation(cls, kind: str, predicted: str, target: str):
    """A metric class: the `kind` ("pearson" or "spearman") correlation of the model outputs named
    `predicted` and `target` over every unmasked example merged into it."""
    fn = {"pearson": pearson, "spearman": spearman}.get(kind)
    if fn is None:
      raise ValueError(f"unknown correlation {kind!r}; valid: pearson, spearman")

    @flax.struct.dataclass
    class Correlation(cls):

      @classmethod
      def from_model_output(cls, mask=None, **outputs):
        return super().from_model_output(outputs[predicted], outputs[target], mask)

      def compute(self):
        return fn(*self.pairs())

    return Correlation


def iqa_outputs(logits, distribution) -> dict:
  """Per-example quantities the IQA metrics read, from the head's logits and the true histograms."""
  predicted = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  distribution = jnp.asarray(distribution, jnp.float32)
  predicted_mean, true_mean = losses.mean_score(predicted), losses.mean_score(distribution)
  return {
      "emd": losses.emd_loss(predicted, distribution),
      "binary_correct": ((predicted_mean > BINARY_THRESHOLD) ==
                         (true_mean > BINARY_THRESHOLD)).astype(jnp.float32),
      "predicted_mean": predicted_mean, "true_mean": true_mean,
      "predicted_std": losses.score_std(predicted), "true_std": losses.score_std(distribution),
  }


@flax.struct.dataclass
class IQATrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Average.from_output("binary_correct")
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")
  grad_norm: clu_metrics.Average.from_output("grad_norm")

  @classmethod
  def single_from_model_output(cls, *, loss, logits, distribution, learning_rate, grad_norm):
    """`loss`: this step's mean EMD; `logits` and `distribution`: (batch, 10)."""
    correct = iqa_outputs(logits, distribution)["binary_correct"]
    return super().single_from_model_output(loss=loss, binary_correct=correct,
                                            learning_rate=learning_rate, grad_norm=grad_norm)


@flax.struct.dataclass
class IQAEvalMetrics(clu_metrics.Collection):
  emd: clu_metrics.Average.from_output("emd")
  accuracy: clu_metrics.Average.from_output("binary_correct")
  plcc: Pairs.correlation("pearson", "predicted_mean", "true_mean")
  srcc: Pairs.correlation("spearman", "predicted_mean", "true_mean")
  std_lcc: Pairs.correlation("pearson", "predicted_std", "true_std")
  std_srcc: Pairs.correlation("spearman", "predicted_std", "true_std")
  skipped: Total.from_output("skipped")
  examples: Total.from_output("mask")

  @classmethod
  def single_from_model_output(cls, *, logits, distribution, mask=None, skipped=None):
    """`logits`, `distribution`: (batch, 10); `mask`: (batch,), False for padding examples;
    `skipped`: (batch,), 1 for examples that could not be decoded."""
    if skipped is None:
      skipped = jnp.zeros(jnp.shape(logits)[:1], jnp.int32)
    if mask is None:
      mask = jnp.ones(jnp.shape(logits)[:1], bool)
    return super().single_from_model_output(**iqa_outputs(logits, distribution), skipped=skipped,
                                            mask=mask)
