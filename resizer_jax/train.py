"""The trainer: `train_and_evaluate(config, workdir)`, meant to be read top to bottom.

One jit-compiled step on a device mesh (`config.mesh`): the global batch is sharded over every mesh
axis, the state is replicated -- or, with an `fsdp` axis, its large arrays are split over that axis
and gathered by XLA where the step needs them. Under jit the BatchNorm statistics of a sharded batch
are global without a pmean. The same code runs on one process or many (`jax.distributed`): every
process feeds its share of the batch and takes part in checkpoint saves; process 0 writes the logs.
"""
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import signal
import threading
import time
from typing import Any

from absl import logging
from clu import metric_writers
from clu import metrics as clu_metrics
from clu import periodic_actions
from etils import epath
from flax.training import train_state
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import optax

from resizer_jax import checkpoint
from resizer_jax import losses
from resizer_jax import metrics as metrics_lib
from resizer_jax import models
from resizer_jax import pictures
from resizer_jax import plan as plan_lib
from resizer_jax.data import input_pipeline


class TrainState(train_state.TrainState):
  batch_stats: Any
  skipped: jax.Array  # Undecodable training examples so far (checkpointed, so exact over restarts).
  # Steps whose loss, gradients or updated state were not finite: their update was dropped.
  nonfinite: jax.Array  # How many in all.
  nonfinite_run: jax.Array  # How many in a row, up to this step.
  longest_nonfinite_run: jax.Array  # The most in a row so far (checked at log steps only).
  first_nonfinite: jax.Array  # The first such step, or -1.
  # With config.ema_decay > 0: an exponential moving average of `params`, what eval uses.
  ema_params: Any = None


class NonFiniteError(FloatingPointError):
  """The run stopped on a non-finite loss or gradient (nothing non-finite was saved)."""


# ----------------------------------------------------------------------------------------------
# Optimiser: the paper's staircase decay; weight decay on kernels only.
# ----------------------------------------------------------------------------------------------
def make_schedule(config, steps_per_epoch: int, peak_learning_rate: float | None = None):
  """Linear warm-up to the peak (the plan's; default optimizer.learning_rate), then x decay_rate
  every decay_epochs."""
  peak = config.optimizer.learning_rate if peak_learning_rate is None else peak_learning_rate
  warmup, decay_steps = plan_lib.schedule_steps(config.optimizer, steps_per_epoch)
  decay = optax.exponential_decay(peak, decay_steps, config.optimizer.decay_rate, staircase=True)
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(config, schedule):
  """`config.optimizer.name`: "sgd" (the paper's: momentum, L2 decay) or "adamw" (decoupled decay)."""
  o = config.optimizer
  # BN scales/offsets and biases are 1-D; decaying them hurts and the reference recipes exclude them.
  kernels_only = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  if o.name == "sgd":
    return optax.chain(optax.add_decayed_weights(o.weight_decay, mask=kernels_only),
                       optax.sgd(schedule, momentum=o.momentum))
  if o.name == "adamw":
    return optax.adamw(schedule, weight_decay=o.weight_decay, mask=kernels_only)
  raise ValueError(f"unknown optimizer {o.name!r}; valid: {', '.join(OPTIMIZERS)}")


# ----------------------------------------------------------------------------------------------
# The steps.
# ----------------------------------------------------------------------------------------------
def ema_decay_at(decay: float, step):
  """The EMA's decay after `step` updates: ramped up as TF's ExponentialMovingAverage does with
  num_updates, so that a short run's average is not dominated by the initialisation."""
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def train_step(state: TrainState, batch, *, model, schedule,
               label_smoothing: float, seed: int, task: str = "classification",
               ema_decay: float = 0.0):
  """One SGD step on a global batch; returns the new state and this step's metrics.

  task="classification": softmax cross-entropy on batch["label"]; task="iqa": NIMA's EMD (r = 2)
  between the softmax of the 10 logits and batch["distribution"], the vote histogram.
  With `ema_decay` > 0 the state's `ema_params` follow the new params.
  """
  dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)

  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  batch["image"], train=True, mutable=["batch_stats"],
                                  rngs={"dropout": dropout_rng})
    logits = logits.astype(jnp.float32)
    if task == "iqa":
      loss = losses.emd_loss(jax.nn.softmax(logits), batch["distribution"])
    else:
      loss = losses.cross_entropy(logits, batch["label"], label_smoothing)
    return loss.mean(), (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.global_norm(grads)
  if task == "iqa":
    metrics = metrics_lib.IQATrainMetrics.single_from_model_output(
        loss=loss, logits=logits, distribution=batch["distribution"],
        learning_rate=schedule(state.step), grad_norm=grad_norm)
  else:
    metrics = metrics_lib.TrainMetrics.single_from_model_output(
        loss=loss, logits=logits, labels=batch["label"], learning_rate=schedule(state.step),
        grad_norm=grad_norm)
  # A global sum under jit: the count over every host's share of the batch.
  skipped = state.skipped + jnp.sum(batch["skipped"])
  new = state.apply_gradients(grads=grads, batch_stats=batch_stats, skipped=skipped)
  if ema_decay:
    new = new.replace(ema_params=optax.incremental_update(
        new.params, state.ema_params, 1.0 - ema_decay_at(ema_decay, new.step)))
  # A finite loss can still take the state to inf (a huge update): check what would be kept too.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(
      optax.global_norm((new.params, new.batch_stats)))
  # The update of a non-finite step is dropped, so that no non-finite value is ever in the state
  # (nor saved); the step still counts, so the data stream and schedule stay where they were.
  kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o),
                      (new.params, new.opt_state, new.batch_stats, new.ema_params),
                      (state.params, state.opt_state, state.batch_stats, state.ema_params))
  new = new.replace(
      params=kept[0], opt_state=kept[1], batch_stats=kept[2], ema_params=kept[3],
      nonfinite=state.nonfinite + (~finite),
      nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1),
      longest_nonfinite_run=jnp.maximum(state.longest_nonfinite_run,
                                        jnp.where(finite, 0, state.nonfinite_run + 1)),
      first_nonfinite=jnp.where((state.first_nonfinite < 0) & ~finite, state.step + 1,
                                state.first_nonfinite))
  # A dropped step weighs nothing in the logged averages (loss, accuracy, gradient norm).
  drop = lambda m: jax.tree.map(lambda x: jnp.where(finite, x, jnp.zeros_like(x)), m)
  return new, metrics.replace(**{f.name: drop(getattr(metrics, f.name))
                                 for f in dataclasses.fields(metrics)
                                 if isinstance(getattr(metrics, f.name), clu_metrics.Average)})


def make_mesh(axes=(("data", -1),)):
  """A mesh over all devices from `config.mesh`: (name, size) pairs, one size may be -1 (the rest)."""
  shape = plan_lib.mesh_shape(axes, jax.device_count())
  names, sizes = tuple(shape), tuple(shape.values())
  # Auto axes: shardings are given at the jit boundary; the model code stays sharding-agnostic.
  return jax.make_mesh(sizes, names,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names))


FSDP_MIN_SIZE = 1024  # Smaller arrays cost more to gather than to keep everywhere.


def state_sharding(abstract_state, mesh):
  """Replicated, except with an `fsdp` mesh axis: each array of FSDP_MIN_SIZE elements or more is
  split over it along its largest divisible dimension (parameters and optimiser state alike)."""
  replicated = NamedSharding(mesh, P())
  fsdp = mesh.shape.get("fsdp", 1)

  def spec(x):
    if fsdp == 1 or x.size < FSDP_MIN_SIZE:
      return replicated
    for dim in sorted(range(x.ndim), key=lambda d: -x.shape[d]):
      if x.shape[dim] % fsdp == 0:
        return NamedSharding(mesh, P(*[None] * dim, "fsdp"))
    return replicated
  return jax.tree.map(spec, abstract_state)


def make_init(model, tx, input_size: int, ema: bool = False):
  """rng -> a fresh TrainState (jit it with out_shardings to create it sharded)."""
  def init(rng):
    variables = model.init(rng, jnp.zeros((1, input_size, input_size, 3), jnp.uint8), train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             ema_params=variables["params"] if ema else None,
                             batch_stats=variables.get("batch_stats", {}),
                             skipped=jnp.zeros((), jnp.int32), nonfinite=jnp.zeros((), jnp.int32),
                             nonfinite_run=jnp.zeros((), jnp.int32),
                             longest_nonfinite_run=jnp.zeros((), jnp.int32),
                             first_nonfinite=jnp.full((), -1, jnp.int32))
  return init


def jit_train_step(config, model, schedule, state_sharding, batch_sharding):
  """The compiled train step; the state's buffers are donated to the new state."""
  return jax.jit(
      functools.partial(train_step, model=model, schedule=schedule,
                        label_smoothing=config.optimizer.label_smoothing, seed=config.seed,
                        task=config.get("task", "classification"),
                        ema_decay=config.get("ema_decay", 0.0)),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, NamedSharding(batch_sharding.mesh, P())), donate_argnums=0)


def eval_step(variables, batch, *, model, task: str = "classification"):
  """The eval metrics of one global batch under `variables` ({"params", "batch_stats"})."""
  logits = model.apply(variables, batch["image"], train=False).astype(jnp.float32)
  if task == "iqa":
    return metrics_lib.IQAEvalMetrics.single_from_model_output(
        logits=logits, distribution=batch["distribution"], skipped=batch["skipped"],
        mask=batch["mask"])
  labels = batch["label"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  top5 = jnp.any(jax.lax.top_k(logits, min(5, logits.shape[-1]))[1] == labels[:, None], axis=-1)
  return metrics_lib.EvalMetrics.single_from_model_output(loss=loss, logits=logits, labels=labels,
                                              top5=top5.astype(jnp.float32), mask=batch["mask"],
                                              skipped=batch["skipped"])


# ----------------------------------------------------------------------------------------------
# BatchNorm-stable evaluation: the EMA of the parameters (train_step), and BatchNorm statistics
# recomputed for the parameters that are evaluated.
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


def eval_kinds(config) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(parameters, statistics) this config can evaluate, the headline first: ("ema", "live") with
  config.ema_decay > 0, and ("recomputed", "running") with config.bn_recompute_batches > 0."""
  params = ("ema", "live") if config.get("ema_decay", 0.0) else ("live",)
  stats = ("recomputed", "running") if config.get("bn_recompute_batches", 0) else ("running",)
  return params, stats


# ----------------------------------------------------------------------------------------------
# Metrics: TensorBoard through clu, and workdir/metrics.jsonl (one JSON object per logged step).
# ----------------------------------------------------------------------------------------------
def _write_atomically(path: epath.Path, text: str):
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


class _ScalarsOnly(metric_writers.interface.MetricWriter):
  """A writer of scalars only: the other summaries go to TensorBoard."""
  def write_summaries(self, step, values, metadata=None): pass
  def write_images(self, step, images): pass
  def write_videos(self, step, videos): pass
  def write_audios(self, step, audios, *, sample_rate): pass
  def write_texts(self, step, texts): pass
  def write_histograms(self, step, arrays, num_buckets=None): pass
  def write_hparams(self, hparams): pass
  def flush(self): pass
  def close(self): pass


class JsonlWriter(_ScalarsOnly):
  """`{"step": ..., name: value, ...}` lines.

  Appended to at every log step locally. Object stores such as gs:// cannot append, and rewriting
  the whole file at every log step costs a synchronous upload of all of it: there the lines are
  kept and the file is rewritten at `flush`, which the trainer calls with every checkpoint save
  (including the preemption save) and at the end. What a crash loses is what the resume drops anyway.
  """

  def __init__(self, path: str, resume_step: int, append: bool | None = None):
    self._path = epath.Path(path)
    self._lines = []
    self._append = "://" not in str(path) if append is None else append
    if self._path.exists():  # Drop what a crashed run logged after its last checkpoint.
      self._lines = [line for line in self._path.read_text().splitlines()
                     if line.strip() and json.loads(line)["step"] <= resume_step]
      _write_atomically(self._path, "".join(l + "\n" for l in self._lines))
    self._unwritten = False

  def write_scalars(self, step, scalars):
    line = json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}})
    self._lines.append(line)
    if self._append:
      with self._path.open("a") as f:
        f.write(line + "\n")
    else:
      self._unwritten = True

  def flush(self):
    if self._unwritten:
      _write_atomically(self._path, "".join(l + "\n" for l in self._lines))
      self._unwritten = False

  def close(self):
    self.flush()


def _duration(seconds: float) -> str:
  seconds = round(seconds)
  if seconds < 120:
    return f"{seconds} s"
  if seconds < 7200:
    return f"{seconds // 60} min {seconds % 60:02d} s"
  return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ConsoleWriter(_ScalarsOnly):
  """One line per logged step (loss, accuracy, speed, ETA) and one per eval, on stdout."""

  TRAIN_KEYS = ("loss", "accuracy", "grad_norm")

  def __init__(self, total_steps: int):
    self._total = total_steps

  def write_scalars(self, step, scalars):
    parts = [f"step {step:>{len(str(self._total))}}/{self._total}"]
    parts += [f"{k} {float(scalars['train/' + k]):.4g}" for k in self.TRAIN_KEYS
              if "train/" + k in scalars]
    if scalars.get("train/nonfinite_skipped"):
      parts.append(f"skipped-nonfinite {int(scalars['train/nonfinite_skipped'])}")
    rate = scalars.get("train/steps_per_s")
    if rate:
      parts.append(f"{rate:.3g} steps/s")
      if step < self._total:
        parts.append(f"ETA {_duration((self._total - step) / rate)}")
    print("  ".join(parts), flush=True)
    evals = {k[len("eval/"):]: v for k, v in scalars.items() if k.startswith("eval/")}
    if evals:
      print(f"eval at step {step}: " + "  ".join(f"{k} {float(v):.4g}" for k, v in evals.items()),
            flush=True)


def evaluate(eval_fn, variables, builder, config, to_global, global_batch: int) -> dict:
  ds, _ = input_pipeline.eval_dataset(builder, config.data, global_batch=global_batch)
  total = None
  for batch in ds.as_numpy_iterator():
    m = eval_fn(variables, to_global(batch))
    total = m if total is None else total.merge(m)
  if total is None:
    raise ValueError(f"eval split {config.data.eval_split!r} of {config.data.name} is empty")
  return {f"eval/{k}": float(v) for k, v in total.compute().items()}


NONFINITE = ("stop", "skip")


def check_finite(state, config, mngr):
  """Raises NonFiniteError when the non-finite steps so far call for a stop (config.nonfinite)."""
  policy = config.get("nonfinite", "stop")
  count, run = int(state.nonfinite), int(state.longest_nonfinite_run)
  first = int(state.first_nonfinite)
  limit = config.get("max_nonfinite_in_row", 10)
  if count == 0 or (policy == "skip" and run < limit):
    return
  last_good = mngr.latest_step()
  good = (f"last good checkpoint: step {last_good} in {mngr.directory}" if last_good is not None
          else "no checkpoint was saved")
  if policy == "stop":
    raise NonFiniteError(
        f"step {first}: the loss or gradient norm is not finite; stopped without saving it ({good}). "
        "Lower optimizer.learning_rate, or set --config.nonfinite=skip to drop such steps")
  raise NonFiniteError(
      f"{run} steps in a row by step {int(state.step)} had a non-finite loss or gradient norm "
      f"(max_nonfinite_in_row={limit}); stopped ({good}). Lower optimizer.learning_rate")


# ----------------------------------------------------------------------------------------------
# Preemption: SIGTERM (TPU maintenance, SLURM preemption) ends the run after a checkpoint.
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def preemption_notice():
  """Yields `reached(step, mngr) -> bool`, true once the run should save and stop at `step`.

  With several processes JAX's preemption service (started by jax.distributed.initialize) catches
  SIGTERM on any of them and all agree on the step to stop at; Orbax asks it. A single process has
  no such service, so a Python handler notes the signal and the current step is the stop step.
  """
  noticed = threading.Event()
  previous = None
  if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
    previous = signal.signal(signal.SIGTERM, lambda *_: noticed.set())
  try:
    yield lambda step, mngr: noticed.is_set() or mngr.reached_preemption(step)
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns final eval metrics,
  also written to `workdir/result.json` with the step when the run is finished.

  On SIGTERM it finishes the current step, saves it and returns {}: the same call continues.
  """
  with preemption_notice() as preempted:
    return _train_and_evaluate(config, workdir, preempted)


def describe(config) -> str:
  """The config in one line."""
  r, data = config.resizer, config.data
  out = r.get("output_size") or f"x{r.get('scale')}"
  out = "x".join(map(str, out)) if isinstance(out, (tuple, list)) else out
  return (f"{r.name} resizer {data.input_size} px -> {out} px, {config.backbone.name}, "
          f"{config.get('task', 'classification')} on {data.name} ({config.num_classes} classes)")


def _train_and_evaluate(config, workdir, preempted) -> dict:
  config = config.copy_and_resolve_references()  # Resolved below (data.num_shards); not the caller's.
  is_chief = jax.process_index() == 0
  say = print if is_chief else lambda *_: None

  # --- Data and the plan: batch, learning rate and steps follow the hardware (resizer_jax/plan.py).
  task = config.get("task", "classification")
  builder = input_pipeline.get_builder(config.data, config.num_classes, task)
  splits = builder.info.splits
  for split in (config.data.train_split, config.data.eval_split):
    if split not in splits:
      raise ValueError(f"{config.data.name} in {builder.data_dir} has no {split!r} split (it has "
                       f"{', '.join(splits) or 'none'}): it was prepared without that split's "
                       "files; delete that directory and prepare it again with them (docs/data.md)")
  train_split = splits[config.data.train_split]

  def make_plan(num_shards=None):
    return plan_lib.make(
        config, num_devices=jax.device_count(), num_processes=jax.process_count(),
        num_train=train_split.num_examples, num_eval=splits[config.data.eval_split].num_examples,
        platform=jax.default_backend(), num_shards=num_shards,
        bytes_per_example=train_split.num_bytes / max(1, train_split.num_examples))
  plan = make_plan()

  # --- Devices and mesh: the batch is split over every mesh axis.
  mesh = make_mesh(config.get("mesh", (("data", -1),)))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(mesh.axis_names))

  def to_global(batch):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharded, x), batch)

  # --- Model, optimiser and state (created directly with its sharding, never on one host first).
  model = models.from_config(config)  # dtype "auto" resolves there, as in a notebook restore.
  schedule = make_schedule(config, plan.steps_per_epoch, plan.peak_learning_rate)
  tx = make_optimizer(config, schedule)
  if config.get("nonfinite", "stop") not in NONFINITE:
    raise ValueError(f"unknown nonfinite={config.nonfinite!r}; valid: {', '.join(NONFINITE)}")

  ema_decay, recompute_batches = config.get("ema_decay", 0.0), config.get("bn_recompute_batches", 0)
  if not 0.0 <= ema_decay < 1.0:
    raise ValueError(f"ema_decay={ema_decay} is not in [0, 1): 0 turns the EMA off; 0.999 is usual")
  if not isinstance(recompute_batches, int) or recompute_batches < 0:
    raise ValueError(f"bn_recompute_batches={recompute_batches!r} is not a count of batches >= 0 "
                     "(0: eval uses the running statistics)")
  init = make_init(model, tx, config.data.input_size, ema=bool(ema_decay))
  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  shardings = state_sharding(abstract, mesh)
  if config.get("init_from") and not checkpoint.has_checkpoint(workdir):
    # Refused before anything is written here: no empty checkpoints/ left behind.
    checkpoint.check_has_checkpoint(config.init_from, "init_from")
  mngr = checkpoint.manager(workdir, config.max_checkpoints_to_keep, create=True)
  state = checkpoint.restore_latest(mngr, jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings),
      config)

  # --- The data stream: a resume reads the stream its checkpoint recorded, or refuses.
  recorded = checkpoint.saved_stream(mngr) if state is not None else None
  if recorded and not config.data.get("num_shards"):
    if recorded["num_shards"] % jax.process_count():
      raise ValueError(f"{mngr.directory} was trained reading {recorded['num_shards']} data "
                       f"streams, which {jax.process_count()} processes cannot share: resume on a "
                       f"process count that divides {recorded['num_shards']}, or use a new --workdir")
    plan = make_plan(recorded["num_shards"])  # Keep the run's streams on another process count.
  with config.unlocked():
    config.data.num_shards = plan.num_shards
  stream = input_pipeline.stream_identity(builder, config.data, global_batch=plan.global_batch,
                                          seed=config.seed, num_shards=plan.num_shards)
  if recorded:
    checkpoint.check_same_stream(recorded, stream, str(mngr.directory))

  warm_started = state is None and bool(config.get("init_from"))
  if state is None:
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
    if warm_started:
      # init_head=False: e.g. IQA's 10-way head on a backbone from an ImageNet run.
      state = checkpoint.warm_start(state, config.init_from,
                                    keep_fresh=() if config.get("init_head", True) else ("head",))
      if ema_decay:  # The average starts from the warm-started parameters (in buffers of its own).
        state = state.replace(ema_params=jax.tree.map(jnp.copy, state.params))
  start_step = int(state.step)
  total_steps = plan.total_steps

  # --- Logging (host 0 only writes), config.json, and the compiled steps.
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if is_chief:
    writer = metric_writers.MultiWriter(
        [writer, JsonlWriter(os.path.join(workdir, "metrics.jsonl"), start_step),
         ConsoleWriter(total_steps)])
    _write_atomically(epath.Path(workdir) / "config.json", config.to_json_best_effort(indent=2))
  params = sum(x.size for x in jax.tree.leaves(abstract.params))
  resizer_params = sum(x.size for x in jax.tree.leaves(abstract.params.get("resizer", {})))
  say(f"{describe(config)}; {params:,} parameters ({resizer_params:,} in the resizer)")
  say(f"workdir {workdir}: " + (f"resuming at step {start_step}" if start_step else "new run"))
  if warm_started:
    say(f"  backbone{'' if config.get('init_head', True) else ' (not its head)'} from "
        f"{config.init_from}; the resizer starts fresh")
  for line in plan.lines():
    say("  " + line)
  kinds = eval_kinds(config)
  variants = config.get("eval_all_variants") and len(kinds[0]) * len(kinds[1]) > 1
  say(f"  eval: {f'the EMA of the parameters (decay {ema_decay})' if ema_decay else 'the parameters'}, "
      + (f"BatchNorm statistics recomputed over {recompute_batches} train batches"
         if recompute_batches else "the running BatchNorm statistics")
      + ("; the last eval also reports eval/<parameters>_<statistics>/..." if variants else ""))

  train_fn = jit_train_step(config, model, schedule, shardings, sharded)
  variables_sharding = {"params": shardings.params, "batch_stats": shardings.batch_stats}
  eval_fn = jax.jit(functools.partial(eval_step, model=model, task=task),
                    in_shardings=(variables_sharding, sharded), out_shardings=replicated)
  recompute = make_recompute(model, shardings, sharded)

  def run_eval(state, last: bool = False):
    """(eval metrics, the variables evaluated, the state holding those variables' statistics);
    the `last` eval also reports every variant when config.eval_all_variants.

    Recomputed statistics replace the running ones in the state, so that checkpoints, `load` and
    exports use what eval used; training never reads them (train-mode BatchNorm uses the batch's).
    """
    stats = {}

    def variables(params_kind, stats_kind):
      params = state.ema_params if params_kind == "ema" else state.params
      if stats_kind == "running":
        return {"params": params, "batch_stats": state.batch_stats}
      if params_kind not in stats:  # The same first batches of the train stream every time.
        batches = input_pipeline.train_dataset(builder, config.data, global_batch=plan.global_batch,
                                               seed=config.seed).take(recompute_batches)
        stats[params_kind] = recompute(params, state.batch_stats,
                                       map(to_global, batches.as_numpy_iterator()))
      return {"params": params, "batch_stats": stats[params_kind]}

    head = (kinds[0][0], kinds[1][0])
    metrics = evaluate(eval_fn, variables(*head), builder, config, to_global, plan.eval_global_batch)
    if last and variants:
      for kind in itertools.product(*kinds):
        found = metrics if kind == head else evaluate(
            eval_fn, variables(*kind), builder, config, to_global, plan.eval_global_batch)
        metrics = {**metrics, **{f"eval/{'_'.join(kind)}/{k[len('eval/'):]}": v
                                 for k, v in found.items()
                                 if k.count("/") == 1 and k not in ("eval/examples", "eval/skipped")}}
    if head[1] == "recomputed":
      state = state.replace(batch_stats=stats[head[0]])
    return metrics, variables(*head), state

  # --- Pictures of the resizer's output on a few fixed eval images (resizers with parameters).
  draw = config.get("num_pictures") and "resizer" in abstract.params
  # Every process takes part in gathering the resizer's variables (FSDP may have split them over
  # hosts); process 0 draws.
  def resizer_variables(variables):
    return {k: {"resizer": v["resizer"]} for k, v in variables.items() if "resizer" in v}
  gather_resizer = jax.jit(resizer_variables, out_shardings=replicated)
  sample = sample_labels = None
  if is_chief and draw:
    ds, _ = input_pipeline.eval_dataset(builder, config.data, global_batch=plan.eval_global_batch)
    first = next(ds.as_numpy_iterator())
    sample = first["image"][:config.num_pictures]
    sample_labels = pictures.row_labels(first, input_pipeline.class_names(builder))[:len(sample)]
  if is_chief and start_step < total_steps:  # Not finished any more (e.g. more steps asked for).
    (epath.Path(workdir) / "result.json").unlink(missing_ok=True)

  # --- Train.
  train_iter = input_pipeline.train_dataset(builder, config.data, global_batch=plan.global_batch,
                                            seed=config.seed, start_step=start_step)
  train_iter = train_iter.as_numpy_iterator()
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, every_secs=30)
  hooks = [progress] if is_chief else []
  eval_metrics, train_metrics, last_log = {}, None, (time.time(), start_step)
  if preempted(start_step, mngr):  # While preparing: the workdir already holds this state.
    logging.warning("Preempted before training; rerun the same command to continue.")
    mngr.close()
    return {}
  try:
    with metric_writers.ensure_flushes(writer):
      for step in range(start_step + 1, total_steps + 1):
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          state, metrics = train_fn(state, to_global(next(train_iter)))
        train_metrics = metrics if train_metrics is None else train_metrics.merge(metrics)
        for hook in hooks:
          hook(step)
        last, stop = step == total_steps, preempted(step, mngr)
        due = lambda every: step % every == 0
        save = due(plan.checkpoint_every_steps) or last or stop
        if not (due(plan.log_every_steps) or due(plan.eval_every_steps) or save):
          continue
        scalars = {f"train/{k}": v for k, v in train_metrics.compute().items()}
        # Train time only: last_log is taken after the previous eval and save.
        elapsed, steps = time.time() - last_log[0], step - last_log[1]
        scalars["train/steps_per_s"] = steps / max(elapsed, 1e-9)
        scalars["train/images_per_s"] = steps * plan.global_batch / max(elapsed, 1e-9)
        scalars["data/skipped"] = int(state.skipped)  # Now: the state is donated to the next step.
        scalars["train/nonfinite_skipped"] = int(state.nonfinite)
        train_metrics = None
        check_finite(state, config, mngr)
        if (due(plan.eval_every_steps) or last) and not stop:
          with progress.timed("eval"):
            eval_metrics, evaluated, state = run_eval(state, last)
          scalars.update(eval_metrics)
          if draw:
            resizer_vars = gather_resizer(evaluated)
            if is_chief:
              pictures.write(writer, workdir, step, pictures.panel(
                  model, jax.device_get(resizer_vars), sample, config, sample_labels))
        writer.write_scalars(step, scalars)
        if save:
          checkpoint.save(mngr, step, state, config, stream=stream,
                          class_names=input_pipeline.class_names(builder))
          writer.flush()  # Remote metrics.jsonl is written with each checkpoint.
        last_log = (time.time(), step)
        if stop:
          say(f"Preempted: saved step {step} of {total_steps} in {mngr.directory}; rerun the "
              "same command to continue")
          return {}
      if not eval_metrics:  # Nothing left to train: report the checkpoint's metrics.
        eval_metrics, _, state = run_eval(state, last=True)
      if is_chief:  # Written last: its presence says the run is finished (sweeps rely on it).
        _write_atomically(epath.Path(workdir) / "result.json",
                          json.dumps({"step": total_steps, **eval_metrics}))
      say(f"checkpoints: steps {', '.join(map(str, mngr.all_steps()))} in {mngr.directory}")
      if draw:
        say(f"pictures: {epath.Path(workdir) / 'pictures'}/step_*.png (and TensorBoard: "
            f"tensorboard --logdir {workdir})")
  finally:
    # A save may still be in flight (saves are async); a crash must not lose that checkpoint.
    mngr.wait_until_finished()
    mngr.close()
  return eval_metrics
