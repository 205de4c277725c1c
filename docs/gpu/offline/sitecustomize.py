"""Import-time stand-ins for TensorFlow, TFDS and TensorBoard on a GPU machine that lacks them.

The lent GPU machine is offline and its image has no TensorFlow (too large to carry). The model
workloads of resizer_jax.bench and the numerics tests import modules that import these at the top
but never use them; with this directory on PYTHONPATH, any such import gets an empty stand-in.
"""
import importlib.abc
import importlib.machinery
import sys
import types

_STUBBED = ("tensorflow", "tensorflow_datasets", "tensorboard", "tf_keras", "tf_slim")


class _Absent:
  """Anything reached through a stand-in: a base class, a decorator, a constant; no data."""

  def __init__(self, name):
    self._name = name

  def __getattr__(self, attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    return _Absent(f"{self._name}.{attr}")

  def __call__(self, *args, **kwargs):
    if len(args) == 1 and callable(args[0]) and not kwargs:  # A decorator: leave the function.
      return args[0]
    return _Absent(f"{self._name}()")  # Module-level constants (a dataset's VERSION, say).

  def __iter__(self):
    raise RuntimeError(f"{self._name} is a stand-in (docs/gpu/offline): not on this machine")

  def __mro_entries__(self, bases):
    return (_Base,)


def _accept(self, *args, **kwargs):
  del self, args, kwargs


class _Base:
  """What a class derived from a stand-in derives from: it takes any arguments, its dataclass
  subclasses too (an __init__ of the class's own is one that @dataclass leaves alone)."""
  __init__ = _accept

  def __init_subclass__(cls, **kwargs):
    if "__init__" not in cls.__dict__:
      cls.__init__ = _accept


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in _STUBBED:
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    module = types.ModuleType(spec.name)
    module.__path__ = []
    module.__getattr__ = lambda attr: (_ for _ in ()).throw(AttributeError(attr)) if (
        attr.startswith("__")) else _Absent(f"{spec.name}.{attr}")
    return module

  def exec_module(self, module):
    pass


sys.meta_path.insert(0, _Finder())
