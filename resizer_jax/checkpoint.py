"""The checkpoint layout: Orbax under `workdir/checkpoints/<step>/{state,meta}`.

`state` is the TrainState (step, params, batch_stats, opt_state, skipped); `meta` is JSON: the model signature
(what must match to resume) and the whole config (so a checkpoint is usable without its config file).
"""
import json
import os

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp


def manager(workdir: str, max_to_keep: int | None = None, create: bool = False):
  # Orbax wants absolute paths; gs://... and other remote paths already are.
  root = workdir if "://" in workdir else os.path.abspath(workdir)
  return ocp.CheckpointManager(
      os.path.join(root, "checkpoints"),
      item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create))


def model_signature(config) -> dict:
  """What makes two checkpoints the same model; restoring across a difference is refused."""
  return json.loads(ml_collections.ConfigDict({
      "resizer": config.resizer, "backbone": config.backbone,
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


def save(mngr: ocp.CheckpointManager, step: int, state, config):
  """Asynchronous: returns once the arrays are copied off the devices."""
  meta = {"model": model_signature(config), "config": json.loads(config.to_json_best_effort())}
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)))


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, config):
  """The newest checkpointed state placed with `abstract_state`'s shardings, or None."""
  step = mngr.latest_step()
  if step is None:
    return None
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  check_same_model(meta["model"], model_signature(config), str(mngr.directory))
  logging.info("Resuming from %s at step %d.", mngr.directory, step)
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))["state"]


def load(workdir: str, step: int | None = None):
  """(step, state as nested dicts of arrays on one local device, meta), whatever mesh saved it."""
  with manager(workdir) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {mngr.directory}")
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
