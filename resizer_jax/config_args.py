"""Config files by path, and their short argument: `configs/x.py:resizer=bilinear,target=16,tiny`."""
import ast
import contextlib
import difflib
import importlib.util
import os


def load_module(path: str):
  """The config file at `path` as a module (its get_config, and sweep if it has one)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config file at {path!r}")
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path_and_arg: str):
  """`get_config(arg)` of the config file at `path[:arg]`, as --config=path[:arg] would give it."""
  path, _, arg = path_and_arg.partition(":")
  return load_module(path).get_config(arg or None)


def parse_arg(arg: str | None, **defaults) -> dict:
  """`key=value` pairs (typed like their defaults) and bare `flag`s (True) over `defaults`."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}{did_you_mean(key, defaults)}; "
                       f"valid: {', '.join(defaults)}")
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      values[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={value!r} must be true or false")
      values[key] = value.lower() in ("true", "1")
    elif default is None or isinstance(default, str):
      values[key] = value
    else:
      try:
        values[key] = type(default)(value)
      except ValueError:
        raise ValueError(f"config argument {key}={value!r} must be a {type(default).__name__}") from None
  return values


# Per-device batch by resizer input size for ResNet-50 in bfloat16, sized to about 80% of a 16 GB
# chip (TPU v5e; v4 has 32 GB). From the bench's peak memory on an H200 (docs/performance.md,
# resizer + ResNet-50 448 -> 224: 0.91 GB at batch 8, 21.0 GB at 256; the resizer alone 11.2 GB at
# 256): about 37 MB per image for the backbone at 224 plus 44 MB x (input / 448)^2 for the resizer's
# full-resolution layers. XLA:TPU lays out arrays differently from XLA:GPU, so on a TPU these are
# estimates until measured there: --config.per_device_batch_size overrides.
_PER_DEVICE_BATCH = {224: 256, 256: 224, 320: 192, 368: 160, 448: 128}


def per_device_batch_for_input(size: int) -> int:
  """The paper-scale configs' per-device batch for a resizer input of `size` pixels; sizes off the
  table by the same memory model (12.8 GB, 80% of a 16 GB chip), in multiples of 8."""
  if size in _PER_DEVICE_BATCH:
    return _PER_DEVICE_BATCH[size]
  return max(8, int(12_800 / (37 + 44 * (size / 448)**2)) // 8 * 8)


def follow_the_hardware(config, input_size: int, *, eval_every_epochs: float,
                        checkpoint_every_epochs: float = 1.0):
  """What the paper-scale configs share: batch per device, learning rate per reference batch,
  bfloat16 on accelerators, cadences in epochs (the step counts follow the batch)."""
  config.dtype = "auto"  # bfloat16 on GPU/TPU (params, optimiser state, loss stay float32).
  config.per_device_batch_size = per_device_batch_for_input(input_size)
  config.per_device_eval_batch_size = config.per_device_batch_size
  config.batch_size = 0  # Unused: per_device_batch_size x devices is the global batch.
  config.eval_batch_size = 0
  config.optimizer.reference_batch = 256  # learning_rate is the peak at this global batch.
  config.log_every_steps = 100
  config.eval_every_epochs = eval_every_epochs
  config.checkpoint_every_epochs = checkpoint_every_epochs
  config.eval_every_steps = 0  # Unused: the *_every_epochs above.
  config.checkpoint_every_steps = 0
  return config


def evaluation(config, *, ema_decay: float = 0.0, bn_recompute_batches: int = 0,
               all_variants: bool = False):
  """What every config says about the parameters and BatchNorm statistics that eval uses.

  ema_decay > 0: eval (and `load`, exports) use an exponential moving average of the parameters.
  bn_recompute_batches > 0: before each eval, the BatchNorm statistics are recomputed for the
  evaluated parameters over that many train batches, replacing the running averages.
  all_variants: the last eval also reports every combination the two allow, as
  eval/<ema|live>_<recomputed|running>/... (one eval pass each), for measuring what they change.
  """
  config.ema_decay = ema_decay
  config.bn_recompute_batches = bn_recompute_batches
  config.eval_all_variants = all_variants
  return config


def override(config, dotted: str, value):
  """config.<dotted> = value, as --config.<dotted>=value sets it: a string value is read as the
  field's type. An unknown field is a ValueError naming the valid ones at that level."""
  *parents, leaf = dotted.split(".")
  node = config
  for i, key in enumerate(parents):
    if not hasattr(node, "keys") or key not in node:
      valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none (not a group)"
      raise ValueError(f"config has no field {'.'.join(parents[:i + 1])!r}"
                       f"{did_you_mean(key, node)}; valid: {valid}")
    node = node[key]
  if not hasattr(node, "keys") or leaf not in node:
    valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none (not a group)"
    raise ValueError(f"config has no field {dotted!r}{did_you_mean(leaf, node)}; valid at that "
                     f"level: {valid}")
  current = node[leaf]
  if hasattr(current, "keys") and not hasattr(value, "keys"):
    raise ValueError(f"config.{dotted} is a group of fields, not a value: set one of them "
                     f"({', '.join(f'{dotted}.{k}' for k in sorted(current.keys()))})")
  if isinstance(value, str) and current is not None and not isinstance(current, str):
    kind = type(current)
    if isinstance(current, (tuple, list, dict)):  # --config.mesh="(('data', -1),)"
      try:
        value = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        raise ValueError(f"config.{dotted}={value!r} must be a Python {kind.__name__} literal") from None
    elif kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config.{dotted}={value!r} must be true or false")
      value = value.lower() in ("true", "1")
    else:
      try:
        value = kind(value)
      except (TypeError, ValueError):
        raise ValueError(f"config.{dotted}={value!r} must be of type {kind.__name__}") from None
  with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
    # A string into a None placeholder (e.g. of type int): as given, then as the command line reads it.
    for candidate in (value, parse_value(value)) if isinstance(value, str) else (value,):
      try:
        node[leaf] = candidate
        return
      except TypeError as e:
        error = e
    raise ValueError(f"config.{dotted}={value!r}: {' '.join(str(error).split())}")


def did_you_mean(word: str, choices) -> str:
  """" (did you mean 'x'?)" for the closest of `choices` (a dict's keys, say), or ""."""
  close = difflib.get_close_matches(word, list(choices.keys() if hasattr(choices, "keys") else
                                               choices), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def parse_value(text: str):
  """A command-line value (--grid, --config.x into an untyped field): a bool or a number where it
  reads as one, else the string."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text
