"""The trainer: `train_and_evaluate(config, workdir)`, meant to be read top to bottom.

One jit-compiled step on a device mesh (`config.mesh`): the global batch is sharded over every mesh
axis, the state is replicated -- or, with an `fsdp` axis, its large arrays are split over that axis
and gathered by XLA where the step needs them. Under jit the BatchNorm statistics of a sharded batch
are global without a pmean. The same code runs on one process or many (`jax.distributed`): every
process feeds its share of the batch and takes part in checkpoint saves; process 0 writes the logs.

What the task trains and reports is resizer_jax/tasks.py's; evaluation is resizer_jax/evaluator.py's;
non-finite steps are resizer_jax/nonfinite.py's; the metric files resizer_jax/writers.py's.
"""
import contextlib
import functools
import json
import signal
import threading
import time
from typing import Any

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath
from flax.training import train_state
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import optax

from resizer_jax import checkpoint
from resizer_jax import evaluator as evaluator_lib
from resizer_jax import models
from resizer_jax import nonfinite
from resizer_jax import pictures
from resizer_jax import plan as plan_lib
from resizer_jax import preflight
from resizer_jax import tasks
from resizer_jax import writers
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
               label_smoothing: float, seed: int, task: tasks.Task = tasks.CLASSIFICATION,
               ema_decay: float = 0.0):
  """One SGD step on a global batch; returns the new state and this step's metrics.

  `task` says what the loss and the metrics are (resizer_jax/tasks.py): softmax cross-entropy on
  batch["label"], or for IQA NIMA's EMD (r = 2) between the softmax of the 10 logits and
  batch["distribution"], the vote histogram. With `ema_decay` > 0 the state's `ema_params` follow
  the new params. A step that is not finite changes nothing but the counts (resizer_jax/nonfinite.py).
  """
  dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)

  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  batch["image"], train=True, mutable=["batch_stats"],
                                  rngs={"dropout": dropout_rng})
    logits = logits.astype(jnp.float32)
    return task.loss(logits, batch, label_smoothing).mean(), (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.global_norm(grads)
  metrics = task.train_metrics(loss=loss, logits=logits, batch=batch,
                               learning_rate=schedule(state.step), grad_norm=grad_norm)
  # A global sum under jit: the count over every host's share of the batch.
  skipped = state.skipped + jnp.sum(batch["skipped"])
  new = state.apply_gradients(grads=grads, batch_stats=batch_stats, skipped=skipped)
  if ema_decay:
    new = new.replace(ema_params=optax.incremental_update(
        new.params, state.ema_params, 1.0 - ema_decay_at(ema_decay, new.step)))
  return nonfinite.keep_finite(state, new, metrics, loss=loss, grad_norm=grad_norm)


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
                        task=tasks.get(config.task), ema_decay=config.ema_decay),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, NamedSharding(batch_sharding.mesh, P())), donate_argnums=0)


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


def _train_and_evaluate(config, workdir, preempted) -> dict:
  # A copy (data.num_shards is set below), with what the data and a warm start's weights decide;
  # the model and options are checked before any data is read (resizer_jax/preflight.py).
  config = preflight.resolve(config, workdir)
  preflight.check_model(config)
  is_chief = jax.process_index() == 0
  say = print if is_chief else lambda *_: None

  # --- Data and the plan: batch, learning rate and steps follow the hardware (resizer_jax/plan.py).
  task = tasks.get(config.task)
  builder = input_pipeline.get_builder(config.data, config.num_classes, task.name)
  input_pipeline.check_splits(builder, config.data)
  splits = builder.info.splits
  train_split = splits[config.data.train_split]

  def make_plan(num_shards=None):
    return plan_lib.make(
        config, num_devices=jax.device_count(), num_processes=jax.process_count(),
        num_train=train_split.num_examples, num_eval=splits[config.data.eval_split].num_examples,
        platform=jax.default_backend(), num_shards=num_shards,
        bytes_per_example=train_split.num_bytes / max(1, train_split.num_examples))
  plan = make_plan()

  # --- Devices and mesh: the batch is split over every mesh axis.
  mesh = make_mesh(config.mesh)
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(mesh.axis_names))

  def to_global(batch):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharded, x), batch)

  # --- Model, optimiser and state (created directly with its sharding, never on one host first).
  model = models.from_config(config)  # dtype "auto" resolves there, as in a notebook restore.
  schedule = make_schedule(config, plan.steps_per_epoch, plan.peak_learning_rate)
  tx = make_optimizer(config, schedule)
  init = make_init(model, tx, config.data.input_size, ema=bool(config.ema_decay))
  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  shardings = state_sharding(abstract, mesh)
  if config.init_from and not checkpoint.has_checkpoint(workdir):
    # Refused before anything is written here: no empty checkpoints/ left behind.
    checkpoint.check_has_checkpoint(config.init_from, "init_from")
  mngr = checkpoint.manager(workdir, config.max_checkpoints_to_keep, create=True)
  state = checkpoint.restore_latest(mngr, jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings),
      config)

  # --- The data stream: a resume reads the stream its checkpoint recorded, or refuses.
  recorded = checkpoint.saved_stream(mngr) if state is not None else None
  if recorded and not config.data.num_shards:
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

  warm_started = state is None and bool(config.init_from)
  if state is None:
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
    if warm_started:
      # init_head=False: e.g. IQA's 10-way head on a backbone from an ImageNet run.
      state = checkpoint.warm_start(state, config.init_from,
                                    keep_fresh=() if config.init_head else ("head",))
      if config.ema_decay:  # The average starts from the warm-started parameters (own buffers).
        state = state.replace(ema_params=jax.tree.map(jnp.copy, state.params))
  start_step = int(state.step)
  total_steps = plan.total_steps

  # --- Evaluation (resizer_jax/evaluator.py) and the compiled train step.
  evaluator = evaluator_lib.Evaluator(config, model, builder, plan=plan, shardings=shardings,
                                      batch_sharding=sharded, to_global=to_global)
  train_fn = jit_train_step(config, model, schedule, shardings, sharded)

  # --- Logging (host 0 only writes), config.json, and what the run is.
  writer = writers.create(workdir, start_step=start_step, total_steps=total_steps,
                          is_chief=is_chief)
  if is_chief:
    writers.write_atomically(epath.Path(workdir) / "config.json",
                             config.to_json_best_effort(indent=2))
  params = sum(x.size for x in jax.tree.leaves(abstract.params))
  resizer_params = sum(x.size for x in jax.tree.leaves(abstract.params.get("resizer", {})))
  say(f"{preflight.describe(config)}; {params:,} parameters ({resizer_params:,} in the resizer)")
  say(f"workdir {workdir}: " + (f"resuming at step {start_step}" if start_step else "new run"))
  if warm_started:
    say(f"  backbone{'' if config.init_head else ' (not its head)'} from {config.init_from}; the "
        "resizer starts fresh")
  for line in [*plan.lines(), evaluator.describe()]:
    say("  " + line)

  # --- Pictures of the resizer's output on a few fixed eval images (resizers with parameters).
  draw = config.num_pictures and "resizer" in abstract.params
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
        nonfinite.check(state, config, mngr)
        if (due(plan.eval_every_steps) or last) and not stop:
          with progress.timed("eval"):
            eval_metrics, evaluated, state = evaluator.run(state, last)
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
        eval_metrics, _, state = evaluator.run(state, last=True)
      if is_chief:  # Written last: its presence says the run is finished (sweeps rely on it).
        writers.write_atomically(epath.Path(workdir) / "result.json",
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
