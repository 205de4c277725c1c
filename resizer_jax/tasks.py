"""The tasks a config can train (`config.task`): what differs between classification and image
quality assessment (IQA), in one place.

The trainer, the input pipeline, the models, export and the results tables look their task up here
(`get(config.task)`, or `of_dataset(builder)` for what a dataset supplies) and ask it; none of them
tests a task's name.

  classification  a class label per image; softmax cross-entropy; accuracy (top-1, top-5)
  iqa             a 10-bin histogram of opinion-score votes per image (AVA); NIMA's EMD (r = 2)
                  between the softmax of 10 logits and the histogram; PLCC, SRCC, binary accuracy
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resizer_jax import losses
from resizer_jax import metrics


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  # What a batch supplies besides the image: batch[target], of this dtype and per-example shape.
  target: str
  target_dtype: Any
  target_shape: tuple[int, ...]
  # (logits, batch, label_smoothing) -> the loss of each example.
  loss: Callable
  # (loss=, logits=, batch=, learning_rate=, grad_norm=) -> this step's metrics (a clu Collection).
  train_metrics: Callable
  # (logits, batch) -> one eval batch's metrics (a clu Collection), masked by batch["mask"].
  eval_metrics: Callable
  # num_classes -> None, or a ValueError when the head cannot be this task's.
  check_num_classes: Callable
  # A TFDS builder's features -> its number of classes, or None when they do not say.
  dataset_classes: Callable
  headline_metric: str  # What results tables lead with (resizer_jax/results.py).
  output_meaning: str  # What the model's logits are, for an export's export.json.


# --- Classification.
def _cross_entropy(logits, batch, label_smoothing):
  return losses.cross_entropy(logits, batch["label"], label_smoothing)


def _classification_train_metrics(*, loss, logits, batch, learning_rate, grad_norm):
  return metrics.TrainMetrics.single_from_model_output(
      loss=loss, logits=logits, labels=batch["label"], learning_rate=learning_rate,
      grad_norm=grad_norm)


def _classification_eval_metrics(logits, batch):
  labels = batch["label"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  top5 = jnp.any(jax.lax.top_k(logits, min(5, logits.shape[-1]))[1] == labels[:, None], axis=-1)
  return metrics.EvalMetrics.single_from_model_output(
      loss=loss, logits=logits, labels=labels, top5=top5.astype(jnp.float32), mask=batch["mask"],
      skipped=batch["skipped"])


def _any_num_classes(num_classes):
  del num_classes  # The dataset's classes decide (input_pipeline.get_builder checks them).


CLASSIFICATION = Task(
    name="classification",
    target="label", target_dtype=np.int32, target_shape=(),
    loss=_cross_entropy,
    train_metrics=_classification_train_metrics,
    eval_metrics=_classification_eval_metrics,
    check_num_classes=_any_num_classes,
    # A label that is no ClassLabel (e.g. a plain integer) does not say how many classes there are.
    dataset_classes=lambda features: getattr(features["label"], "num_classes", None),
    headline_metric="eval/accuracy",
    output_meaning="logits over the classes (class_names, in label order, when the run recorded them)",
)


# --- Image quality assessment: NIMA's head, a softmax over the opinion scores 1..10.
def _emd(logits, batch, label_smoothing):
  del label_smoothing  # Classification's; the EMD compares histograms.
  return losses.emd_loss(jax.nn.softmax(logits), batch["distribution"])


def _iqa_train_metrics(*, loss, logits, batch, learning_rate, grad_norm):
  return metrics.IQATrainMetrics.single_from_model_output(
      loss=loss, logits=logits, distribution=batch["distribution"], learning_rate=learning_rate,
      grad_norm=grad_norm)


def _iqa_eval_metrics(logits, batch):
  return metrics.IQAEvalMetrics.single_from_model_output(
      logits=logits, distribution=batch["distribution"], skipped=batch["skipped"],
      mask=batch["mask"])


def _ten_scores(num_classes):
  if num_classes != losses.NUM_SCORES:
    raise ValueError(f"task=iqa needs num_classes={losses.NUM_SCORES} (scores 1..10), got "
                     f"{num_classes}")


IQA = Task(
    name="iqa",
    target="distribution", target_dtype=np.float32, target_shape=(losses.NUM_SCORES,),
    loss=_emd,
    train_metrics=_iqa_train_metrics,
    eval_metrics=_iqa_eval_metrics,
    check_num_classes=_ten_scores,
    dataset_classes=lambda features: features["distribution"].shape[-1],  # One logit per score bin.
    headline_metric="eval/plcc",
    output_meaning="logits over the opinion scores 1..10: their softmax is the predicted score histogram",
)


TASKS = {task.name: task for task in (CLASSIFICATION, IQA)}
# A sweep's results carry no task: the tables lead with the first of these that every run reports.
# IQA's first, because IQA reports an eval/accuracy (binary) too.
HEADLINE_METRICS = (IQA.headline_metric, CLASSIFICATION.headline_metric)


def get(name: str) -> Task:
  """The task called `name` (config.task); a ValueError naming the valid ones otherwise."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
  return TASKS[name]


def of_dataset(builder) -> Task:
  """The task a TFDS dataset serves: IQA when its examples carry a vote histogram, else
  classification."""
  return IQA if IQA.target in builder.info.features else CLASSIFICATION
