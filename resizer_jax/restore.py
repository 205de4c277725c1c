"""`resizer_jax.load(workdir)`: a trained run in a notebook, without its config file or mesh.

  import resizer_jax
  run = resizer_jax.load("runs/demo")
  run.config.resizer, run.step
  run.class_names                # the dataset's class names, in label order (None: it has none)
  small = run.resize(images)     # the resizer's output, in the images' own value convention
  logits = run.predict(images)   # resizer -> backbone

`images`: uint8 (or [0, 1] float) HxWx3, NxHxWx3, or a list of HxWx3 of different sizes. Both
methods first resize and crop each image as eval does (preprocess="eval", the default:
`input_pipeline.preprocess_eval`); preprocess=None takes input_size x input_size images as they are.

Everything comes from the checkpoint (its `meta` item carries the config); arrays are restored onto
this process's first device whatever mesh wrote them, and `variables` are host numpy arrays.
"""
import dataclasses
import functools
from typing import Any

import jax
import ml_collections
import numpy as np

from resizer_jax import checkpoint
from resizer_jax import models

PREPROCESS = ("eval", None)  # What `preprocess` of Run.resize and Run.predict may be.


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  step: int
  variables: dict  # {"params": ..., "batch_stats": ...} as numpy arrays: what eval used.
  model: Any
  # Recorded at save time; None for a dataset without class names (IQA), or a checkpoint older
  # than the record.
  class_names: tuple[str, ...] | None = None

  def _pixels(self, images, preprocess):
    """(float32 pixels [N, input_size, input_size, 3] in 0..255, 255 for float images else 1)."""
    if preprocess not in PREPROCESS:
      raise ValueError(f"unknown preprocess={preprocess!r}; valid: 'eval', None")
    images = _as_list(images)
    floats = [np.issubdtype(x.dtype, np.floating) for x in images]
    if any(floats) != all(floats):
      raise ValueError("images mix integer and float dtypes; give uint8 or [0, 1] float images")
    scale = 255.0 if all(floats) else 1.0
    if preprocess == "eval":
      # Here, not at the top: `import resizer_jax` must not load TensorFlow.
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      from resizer_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
      images = [input_pipeline.preprocess_eval(tf.constant(
          np.clip(np.round(x * scale), 0, 255).astype(np.uint8)), self.config.data).numpy()
                for x in images]
      return np.stack(images).astype(np.float32), scale
    size = self.config.data.input_size
    for x in images:
      if x.shape[:2] != (size, size):
        raise ValueError(f"images of {x.shape[0]}x{x.shape[1]} px with preprocess=None; the model "
                         f"takes {size}x{size} (config.data.input_size): give preprocess='eval' "
                         "to resize and crop them as eval does")
    return np.stack(images).astype(np.float32) * np.float32(scale), scale

  def resize(self, images, preprocess: str | None = "eval") -> np.ndarray:
    """The resizer's output, float, in the images' value convention (0..255 for integer images,
    0..1 for float ones). Not clipped: a learned resizer's output is not meant to look natural.

    `images` and `preprocess` as for `predict`. preprocess=None refuses other sizes than
    input_size as `predict` does: the resizer was trained to map input_size to its output (its
    filters work at that scale), and resize(x, None) is then exactly what predict(x, None) gives
    the backbone. `models.resize_pixels(run.model, run.variables, pixels)` takes any size.
    """
    pixels, scale = self._pixels(images, preprocess)
    out = jax.jit(functools.partial(models.resize_pixels, self.model))(self.variables, pixels)
    return np.asarray(out) / scale

  def predict(self, images, preprocess: str | None = "eval") -> np.ndarray:
    """Logits of the whole model (resizer -> backbone) in eval mode.

    `images`: an HxWx3 image, an NxHxWx3 batch or a list of HxWx3 images of any sizes; integer ones
    are pixels, float ones are taken in [0, 1]. preprocess="eval" first makes each image uint8 as
    the pipeline sees a decoded JPEG (floats x255 and rounded, all clipped to 0..255), then applies
    `input_pipeline.preprocess_eval` with this run's config.data: the shorter side resized to
    input_size / eval_crop_fraction, then the central input_size square. preprocess=None takes the
    images as they are (floats x255, not rounded), which must then be input_size square.
    """
    pixels, _ = self._pixels(images, preprocess)
    predict = jax.jit(lambda variables, pixels: self.model.apply(variables, pixels, train=False))
    return np.asarray(predict(self.variables, pixels))


def _as_list(images) -> list[np.ndarray]:
  """The HxWx3 images of an HxWx3 image, an NxHxWx3 batch or a list of HxWx3 images."""
  if isinstance(images, (list, tuple)):
    images = [np.asarray(x) for x in images]
  else:
    images = np.asarray(images)
    images = list(images) if images.ndim == 4 else [images]  # Other shapes fail below, as given.
  bad = [x.shape for x in images if x.ndim != 3 or x.shape[-1] != 3]
  if bad or not images:
    raise ValueError("images must be (H, W, 3), (N, H, W, 3) or a list of (H, W, 3), got "
                     f"{f'shape {bad[0]}' if bad else 'none'}")
  return images


# What a config saved before these fields existed meant by their absence.
_ABSENT_MEANT = {"task": "classification", "normalization": "imagenet",
                 "resizer": {"formulation": "auto", "muller_pretrained": None}}


def _completed(saved: dict, absent_meant: dict = _ABSENT_MEANT) -> dict:
  """A saved config with each field an older run's lacks at the value its absence meant."""
  out = {k: _completed(v, absent_meant[k]) if isinstance(absent_meant.get(k), dict) else v
         for k, v in saved.items()}
  return {**out, **{k: v for k, v in absent_meant.items() if k not in out}}


def load(workdir: str, step: int | None = None) -> Run:
  """The run in `workdir` at `step` (default: the latest checkpoint)."""
  step, state, meta = checkpoint.load(workdir, step)
  config = ml_collections.ConfigDict(_completed(meta["config"]))
  # What the run evaluated: its EMA parameters when it kept one (config.ema_decay), and the
  # BatchNorm statistics the last eval left (recomputed ones with config.bn_recompute_batches).
  params = state.get("ema_params") or state["params"]
  variables = jax.device_get({"params": params, **(
      {"batch_stats": state["batch_stats"]} if state.get("batch_stats") else {})})
  names = meta.get("class_names")
  return Run(config=config, step=step, variables=variables, model=models.from_config(config),
             class_names=None if names is None else tuple(names))
