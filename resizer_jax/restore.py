"""`resizer_jax.load(workdir)`: a trained run in a notebook, without its config file or mesh.

  import resizer_jax
  run = resizer_jax.load("runs/demo")
  run.config.resizer, run.step
  run.class_names                # the dataset's class names, in label order (None: it has none)
  small = run.resize(images)     # the resizer's output, in the images' own value convention
  logits = run.predict(images)   # resizer -> backbone

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


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  step: int
  variables: dict  # {"params": ..., "batch_stats": ...} as numpy arrays: what eval used.
  model: Any
  # Recorded at save time; None for a dataset without class names (IQA), or a checkpoint older
  # than the record.
  class_names: tuple[str, ...] | None = None

  def _pixels(self, images):
    """uint8 images as they are; float images are taken in [0, 1] and scaled to pixel units."""
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be (H, W, 3) or (N, H, W, 3), got shape {images.shape}")
    if np.issubdtype(images.dtype, np.integer):
      return images.astype(np.float32), 1.0
    return images.astype(np.float32) * 255.0, 1.0 / 255.0

  def resize(self, images) -> np.ndarray:
    """The resizer's output for images of any size, float, in the input's value convention
    (0..255 for integer input, 0..1 for float input). Not clipped: a learned resizer's output is not
    meant to look natural."""
    pixels, unit = self._pixels(images)
    out = jax.jit(functools.partial(models.resize_pixels, self.model))(self.variables, pixels)
    return np.asarray(out) * unit

  def predict(self, images) -> np.ndarray:
    """Logits of the whole model (resizer -> backbone) in eval mode."""
    pixels, _ = self._pixels(images)
    predict = jax.jit(lambda variables, pixels: self.model.apply(variables, pixels, train=False))
    return np.asarray(predict(self.variables, pixels))


# What a config saved before these fields existed meant by their absence.
_ABSENT_MEANT = {"task": "classification",
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
