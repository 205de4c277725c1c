r"""A trained run as serving artifacts that need neither this package nor the checkpoint.

  python -m resizer_jax.export --workdir=runs/demo --what=model --out=exports/demo [--step=N]

--what=model: uint8 RGB images (N, S, S, 3) -> the backbone's logits, as `run.predict`;
--what=resizer: -> the resizer's output, float32 in 0..255 pixel units, not clipped, as `run.resize`
of uint8 images. S is the config's data.input_size, fixed: the resizers compute their interpolation
weights from the input size when traced. N is symbolic. Eval mode: BatchNorm uses the checkpoint's
running statistics.

--out (absent, or an empty directory) receives
  jax_export.bin  `jax.export.Exported.serialize()`: one argument, the images; the variables are
                  constants inside; lowered for cpu, cuda and tpu
  saved_model/    a TF SavedModel (jax2tf, native serialization), the variables as tf.Variables;
                  signature serving_default: images uint8 (None, S, S, 3) -> {"logits"|"resized"}
  export.json     what a server needs: input and output shapes, dtypes and meaning, the model
                  config, step, class names
built beside it and renamed into place at the end, so that it appears whole or not at all.
Serving each: docs/export.md.
"""
import functools
import json
import os
import shutil
import tempfile

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from resizer_jax import checkpoint
from resizer_jax import cli
from resizer_jax import models
from resizer_jax import restore
from resizer_jax import tasks

FLAGS = flags.FLAGS

WHAT = ("model", "resizer")
OUTPUT_NAME = {"model": "logits", "resizer": "resized"}
# Lowering for an accelerator needs no accelerator: export on a laptop, serve on a GPU or TPU.
PLATFORMS = ("cpu", "cuda", "tpu")
JAX_EXPORT, SAVED_MODEL, INFO = "jax_export.bin", "saved_model", "export.json"


def serving_function(run: restore.Run, what: str):
  """(variables, uint8 images) -> float32 output, computed as `run.predict` / `run.resize` compute
  it; and the variables it reads (the resizer's alone for --what=resizer)."""
  if what == "model":
    return (lambda variables, images: run.model.apply(
        variables, images.astype(jnp.float32), train=False)), run.variables
  variables = {k: {"resizer": v["resizer"]} for k, v in run.variables.items() if "resizer" in v}
  return (lambda variables, images: models.resize_pixels(
      run.model, variables, images.astype(jnp.float32))), variables


def _output_meaning(config, what: str) -> str:
  if what == "resizer":
    return ("the resizer's output, RGB in 0..255 pixel units, not clipped (a learned resizer's "
            "output is not meant to look natural)")
  return tasks.get(config.task).output_meaning


def _write_saved_model(fn, variables, size: int, what: str, path: str):
  # Imported here: cli.quiet_console() must import TensorFlow first, to silence its start-up lines.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # TensorFlow only traces and writes here.
  module = tf.Module()
  # Variables rather than constants in the graph: a GraphDef must stay under 2 GB, and the
  # variables/ files are what TF Serving and the TFLite converter expect to read weights from.
  module.model_variables = tf.nest.map_structure(
      lambda x: tf.Variable(x, trainable=False), variables)
  fn_tf = jax2tf.convert(fn, polymorphic_shapes=[None, "(b, ...)"], with_gradient=False,
                         native_serialization_platforms=PLATFORMS)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec((None, size, size, 3), tf.uint8, name="images")])
  def serve(images):
    return {OUTPUT_NAME[what]: fn_tf(module.model_variables, images)}

  tf.saved_model.save(module, path, signatures={"serving_default": serve})


def export(workdir: str, what: str, out: str, step: int | None = None) -> dict:
  """Writes the directory `out` (see the module docstring) and returns its export.json."""
  if what not in WHAT:
    raise ValueError(f"unknown --what={what!r}; valid: {', '.join(WHAT)}")
  out = os.path.abspath(out)
  if os.path.lexists(out) and not (os.path.isdir(out) and not os.listdir(out)):
    raise ValueError(f"{out} exists and is not an empty directory; give a new --out")
  run = restore.load(workdir, step)
  size = run.config.data.input_size
  fn, variables = serving_function(run, what)

  batch, = jax.export.symbolic_shape("b")
  exported = jax.export.export(jax.jit(functools.partial(fn, variables)), platforms=PLATFORMS)(
      jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8))
  shape = lambda aval: [d if isinstance(d, int) else None for d in aval.shape]
  info = {
      "what": what, "workdir": workdir, "step": run.step,
      "input": {"name": "images", "shape": shape(exported.in_avals[0]), "dtype": "uint8",
                "meaning": "RGB pixels 0..255; the batch (None) is any size from 1"},
      "output": {"name": OUTPUT_NAME[what], "shape": shape(exported.out_avals[0]),
                 "dtype": str(exported.out_avals[0].dtype),
                 "meaning": _output_meaning(run.config, what)},
      "mode": "eval: BatchNorm applies the checkpoint's running statistics",
      **checkpoint.model_signature(run.config),
      "task": run.config.task,
      "class_names": (None if getattr(run, "class_names", None) is None else
                      list(run.class_names)),
      "compute_dtype": jnp.dtype(run.model.dtype).name,
      "platforms": list(PLATFORMS),
      "files": {"jax_export": JAX_EXPORT, "saved_model": SAVED_MODEL},
      "jax_version": jax.__version__,
  }

  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the export from a server's user.
  try:
    with open(os.path.join(tmp, JAX_EXPORT), "wb") as f:
      f.write(exported.serialize())
    _write_saved_model(fn, variables, size, what, os.path.join(tmp, SAVED_MODEL))
    with open(os.path.join(tmp, INFO), "w") as f:
      json.dump(info, f, indent=2)
    os.rename(tmp, out)  # Replaces an empty directory; fails on anything else.
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return info


def _size(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _define_flags():
  # Only when run as a program: the tests import several command modules, each with its own
  # --workdir, into one process.
  flags.DEFINE_string("workdir", None, "The run directory (a --workdir of resizer_jax.main).")
  flags.DEFINE_string("what", None, "model (resizer -> backbone logits) or resizer (its output).")
  flags.DEFINE_string("out", None, "The directory to create (absent or empty).")
  flags.DEFINE_integer("step", None, "The checkpoint to export (default: the latest).")
  flags.mark_flags_as_required(["workdir", "what", "out"])


def main(argv):
  with cli.command(argv):
    info = export(FLAGS.workdir, FLAGS.what, FLAGS.out, FLAGS.step)
  out = os.path.abspath(FLAGS.out)
  print(json.dumps({"out": out, "what": info["what"], "step": info["step"], "bytes": {
      name: _size(os.path.join(out, name)) for name in (JAX_EXPORT, SAVED_MODEL, INFO)}}))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
