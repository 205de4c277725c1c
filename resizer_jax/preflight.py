"""Pre-flight: what can be known about a run before anything is created, written or paid for.

`check(config, num_devices=N, ...)` is the one check that `--plan`, `resizer_jax.main` (before it
trains), the sweep (for every point) and the launchers (through `--plan`, before a slice or a job
exists) run. Each failure is a ValueError or FileNotFoundError of one line naming the value and the
valid choices, which the command lines print as `error: ...` with exit status 2:

  - the task, the resizer and the backbone with their options, the eval and non-finite options;
  - the model builds at the configured sizes (`jax.eval_shape`: traced, never compiled or run);
  - with `num_devices`: the mesh and the batch fit the devices and processes (resizer_jax/plan.py);
  - the data: prepared (where the run will look: data.data_dir, else $TFDS_DATA_DIR), or prepared
    by the run itself, or what is missing and the command that prepares it.

It also settles what the config leaves to the data and the weights (`resolve`): an image folder's
class count, and the backbone settings a warm start's weights were trained with.
"""
import dataclasses
import functools
import json

import ml_collections

from resizer_jax import checkpoint
from resizer_jax import evaluator
from resizer_jax import models
from resizer_jax import nonfinite
from resizer_jax import plan as plan_lib
from resizer_jax import tasks
from resizer_jax.data import input_pipeline


@dataclasses.dataclass(frozen=True)
class Checked:
  config: ml_collections.ConfigDict  # Resolved: what the run trains.
  plan: plan_lib.Plan | None  # None without num_devices.
  data: str  # Where the split sizes come from (prepared, to be prepared by the run, published).


def _source(config, workdir: str | None) -> tuple[str, dict] | None:
  """(where, saved config) of the run whose weights this one starts from: `workdir`'s own
  checkpoint when it resumes (it recorded what it carried), else config.init_from's."""
  for source in (workdir, config.init_from):
    try:
      saved = source and checkpoint.saved_config(source)
    except (FileNotFoundError, ValueError):
      saved = None  # Not there yet (e.g. a chain's earlier step): checked again when it starts.
    if saved:
      return source, saved
  return None


def resolve(config, workdir: str | None = None) -> ml_collections.ConfigDict:
  """A copy of `config` with what its data and weights decide filled in, or a one-line error:

  - num_classes, when the config leaves it unset (None): the dataset's classes (an image folder's
    class sub-folders); a number set that differs from the dataset's is refused.
  - the backbone options of config.init_from's run that change what its weights compute (BatchNorm
    epsilon, the stem...; not training-only ones such as dropout or BatchNorm momentum): carried when
    this config leaves them unset, refused when it sets another value.
  - normalization, the same way, from the weights it starts from: init_from's, or its own
    checkpoint's when it resumes (without an init_from too: the model signature that refuses a
    resume of another backbone predates this field); else the default (models.NORMALIZATIONS).
  """
  config = config.copy_and_resolve_references()
  builder = input_pipeline.get_builder(config.data, config.num_classes, config.task, prepare=False)
  with config.unlocked():
    if config.num_classes is None:
      config.num_classes = tasks.of_dataset(builder).dataset_classes(builder.info.features)
    source = _source(config, workdir) if config.init_from or workdir else None
    where, saved = source or (None, {})
    if config.init_from and saved.get("backbone", {}).get("name") == config.backbone.name:
      for key, value in sorted(saved["backbone"].items()):
        if key == "name" or value is None or key in models.TRAINING_ONLY_OPTIONS:
          continue
        mine = config.backbone.get(key)
        if mine is None:
          config.backbone[key] = value
        elif mine != value:
          raise ValueError(f"config.backbone.{key}={mine!r} but the weights of init_from={where} "
                           f"were trained with {key}={value!r}, and compute other outputs with "
                           f"another; drop --config.backbone.{key} (it is carried) or give {value!r}")
    # A run saved before the field existed, or with it unresolved, was standardised the default way.
    theirs = models.check_normalization(saved.get("normalization")) if source else None
    mine = config.normalization
    if mine is None:
      config.normalization = theirs or models.DEFAULT_NORMALIZATION
    elif theirs and mine != theirs:
      raise ValueError(f"config.normalization={mine!r} but the weights of {where} were trained on "
                       f"normalization={theirs!r} inputs, and compute other outputs on others; "
                       f"drop --config.normalization (it is carried) or give {theirs!r}")
  return config


@functools.lru_cache(maxsize=64)
def _builds(model_json: str, input_size: int):
  """The model's variables, traced at `input_size` (cached: a sweep's points share models)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model = models.from_config(ml_collections.ConfigDict(json.loads(model_json)))
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, input_size, input_size, 3), jnp.uint8), train=False))


def check_model(config):
  """The task, model and options of `config`, and the model traced at data.input_size."""
  tasks.get(config.task)
  nonfinite.check_policy(config)
  evaluator.check_options(config)
  models.from_config(config)  # Unknown names and options, in its words.
  fields = {k: config[k] for k in ("task", "dtype", "resizer", "backbone", "num_classes",
                                   "normalization")}
  try:
    _builds(ml_collections.ConfigDict(fields).to_json(sort_keys=True), config.data.input_size)
  except (TypeError, ValueError, ArithmeticError) as e:  # In the words of the layer that fails.
    raise ValueError(f"the model does not build at data.input_size={config.data.input_size} -> "
                     f"resizer.output_size={config.resizer.output_size} with "
                     f"{config.backbone.name}: {' '.join(str(e).split())[:300]}") from None


def check(config, *, num_devices: int | None = None, num_processes: int = 1,
          platform: str = "cpu", workdir: str | None = None) -> Checked:
  """Everything above; with `num_devices`, also the run plan on that hardware."""
  config = resolve(config, workdir)
  check_model(config)
  num_train, num_eval, size, source = input_pipeline.split_sizes(config.data)
  plan = None if num_devices is None else plan_lib.make(
      config, num_devices=num_devices, num_processes=num_processes, num_train=num_train,
      num_eval=num_eval, platform=platform, bytes_per_example=size)
  return Checked(config=config, plan=plan, data=source)


def describe(config) -> str:
  """The config in one line."""
  r, data = config.resizer, config.data
  out = r.output_size
  out = "x".join(map(str, out)) if isinstance(out, (tuple, list)) else out
  return (f"{r.name} resizer {data.input_size} px -> {out} px, {config.backbone.name}, "
          f"{config.task} on {data.name} ({config.num_classes} classes)")
