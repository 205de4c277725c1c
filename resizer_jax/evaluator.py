"""Evaluation, BatchNorm-stable: the EMA of the parameters (kept by the train step) and BatchNorm
statistics recomputed for the parameters that are evaluated (docs/evaluation.md).

  evaluator = Evaluator(config, model, builder, plan=plan, shardings=shardings,
                        batch_sharding=sharded, to_global=to_global)
  metrics, evaluated, state = evaluator.run(state, last=step == total_steps)
"""
import functools
import itertools

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp

from resizer_jax import tasks
from resizer_jax.data import input_pipeline


def eval_step(variables, batch, *, model, task: tasks.Task = tasks.CLASSIFICATION):
  """The eval metrics of one global batch under `variables` ({"params", "batch_stats"})."""
  logits = model.apply(variables, batch["image"], train=False).astype(jnp.float32)
  return task.eval_metrics(logits, batch)


# ----------------------------------------------------------------------------------------------
# BatchNorm statistics recomputed for the parameters that are evaluated.
# ----------------------------------------------------------------------------------------------
def _map_batchnorm(fn, tree):
  """`fn({"mean": ..., "var": ...})` for each BatchNorm's statistics in a batch_stats tree."""
  if set(tree) == {"mean", "var"}:
    return fn(tree)
  return {k: _map_batchnorm(fn, v) for k, v in tree.items()}


def keeping_last_batch(model):
  """`model` whose BatchNorms store the last batch's statistics (momentum 0) as their running ones."""
  last = lambda m: m.clone(bn_momentum=0.0) if "bn_momentum" in m.__dataclass_fields__ else m
  return model.clone(resizer=last(model.resizer), backbone=last(model.backbone))


def batch_moments(params, batch_stats, images, *, model):
  """Each BatchNorm's mean and mean square over one global batch under `params`, in train mode as
  the running averages see it (a fixed dropout and stochastic-depth draw)."""
  _, updates = keeping_last_batch(model).apply(
      {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"],
      rngs={"dropout": jax.random.key(0)})
  return _map_batchnorm(lambda s: {"mean": s["mean"], "var": s["var"] + jnp.square(s["mean"])},
                        updates["batch_stats"])


def make_recompute(model, shardings, batch_sharding):
  """(params, batch_stats, batches) -> the BatchNorm statistics of all `batches` taken as one.

  These are the population's statistics under exactly the parameters evaluated ("precise BN", Wu &
  Johnson 2021), where the running averages mix statistics of the parameters of many past steps
  and, under an EMA, of other parameters altogether.
  """
  moments = jax.jit(functools.partial(batch_moments, model=model),
                    in_shardings=(shardings.params, shardings.batch_stats, batch_sharding),
                    out_shardings=shardings.batch_stats)
  add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), out_shardings=shardings.batch_stats)
  finish = jax.jit(lambda total, n: _map_batchnorm(
      lambda s: {"mean": s["mean"] / n,
                 "var": jnp.maximum(s["var"] / n - jnp.square(s["mean"] / n), 0.0)}, total),
                   out_shardings=shardings.batch_stats)

  def recompute(params, batch_stats, batches):
    total, n = None, 0
    for batch in batches:
      m = moments(params, batch_stats, batch["image"])
      total, n = (m if total is None else add(total, m)), n + 1
    if not n:
      raise ValueError("bn_recompute_batches: the train split gave no batch to recompute from")
    return finish(total, jnp.float32(n))
  return recompute


# ----------------------------------------------------------------------------------------------
# What a config evaluates, and the evaluator.
# ----------------------------------------------------------------------------------------------
def check_options(config):
  """ValueErrors for eval options that make no sense, before anything is written."""
  if not 0.0 <= config.ema_decay < 1.0:
    raise ValueError(f"ema_decay={config.ema_decay} is not in [0, 1): 0 turns the EMA off; 0.999 "
                     "is usual")
  if not isinstance(config.bn_recompute_batches, int) or config.bn_recompute_batches < 0:
    raise ValueError(f"bn_recompute_batches={config.bn_recompute_batches!r} is not a count of "
                     "batches >= 0 (0: eval uses the running statistics)")


def eval_kinds(config) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(parameters, statistics) this config can evaluate, the headline first: ("ema", "live") with
  config.ema_decay > 0, and ("recomputed", "running") with config.bn_recompute_batches > 0."""
  params = ("ema", "live") if config.ema_decay else ("live",)
  stats = ("recomputed", "running") if config.bn_recompute_batches else ("running",)
  return params, stats


class Evaluator:
  """Evaluates train states on the eval split as the config says: the EMA or the live parameters,
  recomputed or running BatchNorm statistics, and with config.eval_all_variants every variant at
  the last eval. Built once per run: its steps compile once."""

  def __init__(self, config, model, builder, *, plan, shardings, batch_sharding, to_global):
    """`plan`: the run's (resizer_jax/plan.py); `shardings`: the TrainState's; `to_global`: a
    host's batch -> the global batch, sharded as `batch_sharding`."""
    self._config, self._builder, self._plan, self._to_global = config, builder, plan, to_global
    self._kinds = eval_kinds(config)
    self._variants = config.eval_all_variants and len(self._kinds[0]) * len(self._kinds[1]) > 1
    variables_sharding = {"params": shardings.params, "batch_stats": shardings.batch_stats}
    self._eval_fn = jax.jit(
        functools.partial(eval_step, model=model, task=tasks.get(config.task)),
        in_shardings=(variables_sharding, batch_sharding),
        out_shardings=NamedSharding(batch_sharding.mesh, P()))
    self._recompute = make_recompute(model, shardings, batch_sharding)

  def describe(self) -> str:
    """What eval uses, in one line."""
    c = self._config
    params = f"the EMA of the parameters (decay {c.ema_decay})" if c.ema_decay else "the parameters"
    stats = (f"BatchNorm statistics recomputed over {c.bn_recompute_batches} train batches"
             if c.bn_recompute_batches else "the running BatchNorm statistics")
    also = "; the last eval also reports eval/<parameters>_<statistics>/..." if self._variants else ""
    return f"eval: {params}, {stats}{also}"

  def run(self, state, last: bool = False):
    """(eval metrics, the variables evaluated, the state holding those variables' statistics);
    the `last` eval also reports every variant when config.eval_all_variants.

    Recomputed statistics replace the running ones in the state, so that checkpoints, `load` and
    exports use what eval used; training never reads them (train-mode BatchNorm uses the batch's).
    """
    stats = {}  # Recomputed statistics, by the parameters they are of ("ema" or "live").

    def variables(params_kind, stats_kind):
      params = state.ema_params if params_kind == "ema" else state.params
      if stats_kind == "running":
        return {"params": params, "batch_stats": state.batch_stats}
      if params_kind not in stats:  # The same first batches of the train stream every time.
        batches = input_pipeline.train_dataset(
            self._builder, self._config.data, global_batch=self._plan.global_batch,
            seed=self._config.seed).take(self._config.bn_recompute_batches)
        stats[params_kind] = self._recompute(params, state.batch_stats,
                                             map(self._to_global, batches.as_numpy_iterator()))
      return {"params": params, "batch_stats": stats[params_kind]}

    head = (self._kinds[0][0], self._kinds[1][0])
    metrics = self._evaluate(variables(*head))
    if last and self._variants:
      for kind in itertools.product(*self._kinds):
        found = metrics if kind == head else self._evaluate(variables(*kind))
        metrics = {**metrics, **{f"eval/{'_'.join(kind)}/{k[len('eval/'):]}": v
                                 for k, v in found.items()
                                 if k.count("/") == 1 and k not in ("eval/examples", "eval/skipped")}}
    evaluated = variables(*head)
    if head[1] == "recomputed":
      state = state.replace(batch_stats=stats[head[0]])
    return metrics, evaluated, state

  def _evaluate(self, variables) -> dict:
    config = self._config
    ds, _ = input_pipeline.eval_dataset(self._builder, config.data,
                                        global_batch=self._plan.eval_global_batch)
    total = None
    for batch in ds.as_numpy_iterator():
      m = self._eval_fn(variables, self._to_global(batch))
      total = m if total is None else total.merge(m)
    if total is None:
      raise ValueError(f"eval split {config.data.eval_split!r} of {config.data.name} is empty")
    return {f"eval/{k}": float(v) for k, v in total.compute().items()}
