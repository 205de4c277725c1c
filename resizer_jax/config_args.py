"""Config files by path, and their short argument: `configs/x.py:resizer=bilinear,target=16,tiny`."""
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
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; valid: {', '.join(defaults)}")
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


# Global batch by resizer input size: the activations of the resizer's full-resolution layers grow
# with input**2, so the batch shrinks to keep memory per step roughly constant.
_BATCH_FOR_INPUT = {224: 256, 256: 256, 320: 128, 368: 128, 448: 64}


def batch_for_input(size: int) -> int:
  """The paper-scale configs' global batch for a resizer input of `size` pixels."""
  return _BATCH_FOR_INPUT.get(size, 64)
