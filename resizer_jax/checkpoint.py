"""The checkpoint layout: Orbax under `workdir/checkpoints/<step>/{state,meta}`.

`state` is the TrainState (step, params, batch_stats, opt_state, skipped); `meta` is JSON: the model signature
(what must match to resume), the whole config (so a checkpoint is usable without its config file)
and, when the trainer gives them, the identity of the train data stream
(`input_pipeline.stream_identity`) and the dataset's class names (so that a notebook without the
dataset can name the predictions).

A checkpoint that cannot be read (truncated or missing files, garbage metadata) is moved aside to
`workdir/checkpoints_unreadable/<step>` by `restore_latest`, which resumes from the newest readable
one.
"""
import functools
import json
import logging as std_logging
import os

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

# Named explicitly (it is Orbax's default) so that this module can find a step's directory.
STEP_FORMAT = ocp.step.standard_name_format()
UNREADABLE = "checkpoints_unreadable"  # Next to checkpoints/ in the workdir.
# TensorStore's and gRPC's status codes for failures of access or capacity, not of the data.
_TRANSIENT = ("PERMISSION_DENIED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
              "UNAUTHENTICATED", "ABORTED")


def _not_the_files(error: BaseException) -> bool:
  """Whether `error` (or what caused it) is about access or capacity rather than the bytes read."""
  while error is not None:
    if (isinstance(error, (PermissionError, ConnectionError, TimeoutError, MemoryError)) or
        any(code in str(error) for code in _TRANSIENT)):
      return True
    error = error.__cause__ or error.__context__
  return False


class NoReadableCheckpointError(ValueError):
  """Every checkpoint of a workdir was unreadable; they were moved aside, none deleted."""


@functools.cache  # Once per process.
def _no_replica_parallel_saves_on_cpu():
  """On a CPU in one process, Orbax's replica-parallel save slices every replicated array into one
  piece per device and compiles an eager slice per shape: about 150 compiles, a third of a fresh
  process's tiny demo run on 8 devices (35 -> 23 s), to split the writes among threads of one
  process. The files are the same either way (Orbax turns it off on GPUs likewise). Several
  processes keep Orbax's default: with it off there too, a two-process gloo run hung once in its
  resumed run (tests/test_distributed.py; whether this was the cause is not known)."""
  if jax.default_backend() != "cpu" or jax.process_count() > 1:
    return
  default = ocp.type_handlers.get_type_handler(jax.Array)
  # Orbax warns of any override, even a deliberate one. The logger's own level is put back as it
  # was (often unset), not as the effective level absl's get_verbosity reports.
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(std_logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
        array_metadata_store=getattr(default, "_array_metadata_store", None),
        use_replica_parallel=False), override=True)
  finally:
    absl_logger.setLevel(level)


def manager(workdir: str, max_to_keep: int | None = None, create: bool = False):
  _no_replica_parallel_saves_on_cpu()
  # Orbax wants absolute paths; gs://... and other remote paths already are.
  root = workdir if "://" in workdir else os.path.abspath(workdir)
  return ocp.CheckpointManager(
      os.path.join(root, "checkpoints"),
      item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                           step_name_format=STEP_FORMAT))


def model_signature(config) -> dict:
  """What makes two checkpoints the same model; restoring across a difference is refused.

  Not the resizer's `formulation`: every one computes the same function of the same parameters."""
  resizer = {k: v for k, v in config.resizer.items() if k != "formulation"}
  return json.loads(ml_collections.ConfigDict({
      "resizer": resizer, "backbone": config.backbone,
      "num_classes": config.num_classes}).to_json_best_effort())


def _flatten(d, prefix=""):
  if not isinstance(d, dict):
    return {prefix[:-1]: d}
  return {k: v for key, sub in d.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}


def check_same_model(saved: dict, wanted: dict, ckpt_dir: str):
  saved, wanted = _flatten(saved), _flatten(wanted)
  diff = [f"{k}: {saved.get(k)!r} in checkpoint vs {wanted.get(k)!r} in config"
          for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
  if diff:
    raise ValueError(f"{ckpt_dir} holds a checkpoint of a different model ({'; '.join(diff)}); "
                     "use a new --workdir, or the config it was trained with")


def save(mngr: ocp.CheckpointManager, step: int, state, config, stream: dict | None = None,
         class_names=None):
  """Asynchronous: returns once the arrays are copied off the devices."""
  meta = {"model": model_signature(config), "config": json.loads(config.to_json_best_effort())}
  if stream is not None:
    meta["stream"] = stream
  if class_names is not None:
    meta["class_names"] = list(class_names)
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)))


def _step_dir(mngr: ocp.CheckpointManager, step: int) -> epath.Path:
  return epath.Path(mngr.directory) / STEP_FORMAT.build_name(step)


def _read_meta(step_dir: epath.Path) -> dict:
  meta = ocp.JsonCheckpointHandler().restore(step_dir / "meta")
  if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
    raise ValueError("its meta holds no model signature")
  return meta


def saved_stream(mngr: ocp.CheckpointManager) -> dict | None:
  """The data stream identity recorded in the latest checkpoint (None if it recorded none)."""
  step = mngr.latest_step()
  return None if step is None else _read_meta(_step_dir(mngr, step)).get("stream")


def _reason(error: Exception) -> str:
  """One line: TensorStore's and Orbax's messages can run to pages."""
  text = (str(error).strip().splitlines() or [""])[0]
  text = text if len(text) <= 200 else text[:200] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _agreed(what: str, read):
  """(read(), None), or (None, why reading `what` failed) if it failed here or on another process.

  Every process must skip the same checkpoints, and a process whose own read failed must not wait
  in a barrier the others never reach: hence the handlers below are called without Orbax's
  Checkpointer, whose restore ends in one, and one all-gather settles each read.
  """
  try:
    value, reason = read(), None
  # What damaged or missing files raise varies (JSONDecodeError, KeyError, FileNotFoundError,
  # TensorStore's DATA_LOSS or OUT_OF_RANGE wrapped by Orbax in a plain Exception). No permission,
  # a storage outage or no memory is not the checkpoint's fault, and must not move a good one
  # aside: those propagate.
  except Exception as e:  # pylint: disable=broad-exception-caught
    if _not_the_files(e):
      raise
    value, reason = None, f"{what}: {_reason(e)}"
  if jax.process_count() > 1:
    failed = np.asarray(multihost_utils.process_allgather(np.int32(reason is not None)))
    if reason is None and failed.any():
      value, reason = None, (f"{what}: unreadable on process "
                             f"{', '.join(map(str, np.flatnonzero(failed)))}")
  return value, reason


def _check_same_layout(saved_tree, abstract_state, step_dir):
  """A readable state of another structure (e.g. another optimiser) is refused, not moved aside."""
  shapes = lambda tree: {"/".join(k): getattr(v, "shape", None)
                         for k, v in ocp.tree.to_flat_dict(tree).items()}
  saved, wanted = shapes(saved_tree), shapes(abstract_state)
  diff = [f"{k}: {saved[k] if k in saved else 'missing'} in checkpoint vs "
          f"{wanted[k] if k in wanted else 'missing'} in this run"
          for k in sorted(set(saved) | set(wanted))
          if k not in saved or k not in wanted or tuple(saved[k] or ()) != tuple(wanted[k] or ())]
  if diff:
    more = f"; and {len(diff) - 3} more" if len(diff) > 3 else ""
    raise ValueError(f"{step_dir} holds a train state of another layout ({'; '.join(diff[:3])}"
                     f"{more}); use a new --workdir, or the code and config that wrote it")


def _move_aside(mngr: ocp.CheckpointManager, unreadable: list) -> list[str]:
  """Moves each (step, reason) to workdir/checkpoints_unreadable/; "step S (why) to DIR" for each.

  Process 0 moves; every process waits for it, then makes its manager forget the moved steps.
  """
  root = epath.Path(mngr.directory).parent / UNREADABLE
  taken, moves = set(), []
  for step, reason in unreadable:
    name, k = STEP_FORMAT.build_name(step), 0
    while (root / name).exists() or name in taken:  # An earlier run moved this step aside too.
      k += 1
      name = f"{STEP_FORMAT.build_name(step)}.{k}"
    taken.add(name)
    moves.append((step, reason, _step_dir(mngr, step), root / name))
  sync = (multihost_utils.sync_global_devices if jax.process_count() > 1 else lambda _: None)
  sync("resizer_jax: unreadable checkpoints named")  # No process looks while process 0 moves.
  for step, reason, src, dest in moves:
    if jax.process_index() == 0:
      root.mkdir(parents=True, exist_ok=True)
      src.rename(dest)
    logging.warning("Checkpoint step %d in %s is unreadable (%s); moved it to %s.", step,
                    mngr.directory, reason, dest)
  sync("resizer_jax: unreadable checkpoints moved")
  mngr.reload()
  return [f"step {step} ({reason}) to {dest}" for step, reason, _, dest in moves]


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, config):
  """The newest readable checkpointed state placed with `abstract_state`'s shardings, or None.

  Newer checkpoints that cannot be read are moved aside (never deleted) and forgotten, so the run
  goes on from the newest readable one and saves those steps afresh. A checkpoint of another model
  or state layout is refused with a ValueError, and nothing is moved.
  """
  handler = ocp.StandardCheckpointHandler()
  unreadable, state = [], None
  try:
    for step in sorted(mngr.all_steps(), reverse=True):
      step_dir = _step_dir(mngr, step)
      meta, reason = _agreed("meta", lambda: _read_meta(step_dir))
      if reason is None:
        check_same_model(meta["model"], model_signature(config), str(mngr.directory))
        tree, reason = _agreed("state metadata", lambda: handler.metadata(step_dir / "state").tree)
      if reason is None:
        _check_same_layout(tree, abstract_state, step_dir)
        state, reason = _agreed("state", lambda: handler.restore(
            step_dir / "state", args=ocp.args.StandardRestore(abstract_state)))
      if reason is None:
        break
      unreadable.append((step, reason))
  finally:
    handler.close()
  moved = _move_aside(mngr, unreadable) if unreadable else []
  if state is None and moved:
    raise NoReadableCheckpointError(
        f"no readable checkpoint in {mngr.directory}: moved {'; '.join(moved)}; nothing was "
        "deleted. Rerun to start from step 0, or repair one and move it back")
  if state is not None:
    logging.info("Resuming from %s at step %d.", mngr.directory, step)
  return state


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a checkpoint (read only: nothing is created)."""
  with manager(workdir) as mngr:
    return mngr.latest_step() is not None


def saved_config(workdir: str) -> dict | None:
  """The config recorded with `workdir`'s latest checkpoint (None without a checkpoint); only its
  meta is read."""
  with manager(workdir) as mngr:
    step = mngr.latest_step()
    return None if step is None else _read_meta(_step_dir(mngr, step))["config"]


def check_has_checkpoint(workdir: str, what: str):
  """A FileNotFoundError naming `what` unless `workdir` holds a checkpoint."""
  if not has_checkpoint(workdir):
    raise FileNotFoundError(f"{what}={workdir} holds no checkpoint (no {os.path.join(workdir, 'checkpoints')}"
                            "/<step>); give a finished run's workdir or a converted one "
                            "(python -m resizer_jax.convert)")


def load(workdir: str, step: int | None = None):
  """(step, state as nested dicts of arrays on one local device, meta), whatever mesh saved it."""
  with manager(workdir) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {mngr.directory}: give the workdir of a run "
                              "that has saved one")
    if step not in mngr.all_steps():  # Else Orbax's error, which does not say what is there.
      raise FileNotFoundError(f"no checkpoint of step {step} in {mngr.directory}; saved steps: "
                              f"{', '.join(map(str, sorted(mngr.all_steps()))) or 'none'}")
    tree = mngr.item_metadata(step)["state"]
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return step, restored["state"], restored["meta"]


def warm_start(state, init_from: str, subtrees=("backbone",), keep_fresh=()):
  """`state` with the `subtrees` of its params and batch_stats taken from the run in `init_from`.

  The paper's recipe: the backbone (with its head) from a run trained with a fixed resizer, the
  resizer fresh. Every leaf must exist with the same shape on both sides, else nothing is loaded.
  `keep_fresh` names children of each subtree that stay as initialised: ("head",) starts IQA's
  10-way head on a backbone from an ImageNet run.
  """
  step, saved, _ = load(init_from)
  updates, problems = {}, []
  for collection in ("params", "batch_stats"):
    fresh = getattr(state, collection)
    for name in subtrees:
      if name not in fresh:
        continue
      if name not in saved.get(collection, {}):
        problems.append(f"{collection}.{name}: missing in checkpoint")
        continue
      fresh_part = {k: v for k, v in dict(fresh[name]).items() if k not in keep_fresh}
      saved_part = {k: v for k, v in saved[collection][name].items() if k not in keep_fresh}
      want, have = _flatten(jax.tree.map(lambda x: x.shape, fresh_part)), _flatten(
          jax.tree.map(lambda x: x.shape, saved_part))
      mismatched = [f"{collection}.{name}.{k}: {have.get(k, 'missing')} in checkpoint vs "
                    f"{want.get(k, 'missing')} in model" for k in sorted(set(want) | set(have))
                    if want.get(k) != have.get(k)]
      problems += mismatched
      if mismatched:
        continue
      updates.setdefault(collection, dict(fresh))[name] = {**dict(fresh[name]), **jax.tree.map(
          # Through host memory: `new` may be sharded over other hosts' devices.
          lambda new, old: jax.device_put(np.asarray(old, new.dtype), new.sharding),
          fresh_part, saved_part)}
  if problems:
    raise ValueError(f"init_from={init_from} does not fit this model: {'; '.join(problems)}")
  logging.info("Warm start: %s from %s (step %d).", ", ".join(subtrees), init_from, step)
  # The optimiser state stays the fresh one: zero momentum for the loaded leaves too.
  return state.replace(**updates)


def check_same_stream(saved: dict, wanted: dict, ckpt_dir: str):
  """A resume must read the stream the checkpoint's run read: else its batches silently change."""
  diff = [f"{k}: {saved.get(k)!r} in checkpoint vs {wanted.get(k)!r} now"
          for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
  if diff:
    hint = (f"; set --config.data.num_shards={saved['num_shards']} and a process count that "
            "divides it" if "num_shards" in saved and saved.get("num_shards") != wanted.get(
                "num_shards") else "")
    raise ValueError(f"resuming {ckpt_dir} would change the data stream ({'; '.join(diff)}){hint}, "
                     "or use a new --workdir")
