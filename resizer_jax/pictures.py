"""Pictures of what the resizer does (paper Fig. 2): original | baseline resize | learned resize.

The learned output is shown with its own per-image contrast stretch: it is not meant to look natural,
and clipping it to the pixel range would hide most of it.
"""
import io

from etils import epath
import jax
import numpy as np
from PIL import Image

from resizer_jax import models


def _upsample(image: np.ndarray, hw) -> np.ndarray:
  """Nearest-neighbour, so that the small image's pixels stay visible as pixels."""
  rows = np.arange(hw[0]) * image.shape[0] // hw[0]
  cols = np.arange(hw[1]) * image.shape[1] // hw[1]
  return image[rows][:, cols]


def _stretch(image: np.ndarray) -> np.ndarray:
  lo, hi = image.min(), image.max()
  return (image - lo) * (255.0 / max(hi - lo, 1e-6))


def panel(model, variables, images: np.ndarray, config) -> np.ndarray:
  """uint8 (N*H, 3*W, 3): one row per image of original, baseline and (stretched) learned output."""
  r = config.resizer
  learned = np.asarray(jax.jit(lambda v, x: models.resize_pixels(model, v, x))(variables, images))
  baseline = np.asarray(models.resize(images.astype(np.float32), learned.shape[1:3],
                                      r.interpolation, r.antialias))
  hw = images.shape[1:3]
  rows = [np.concatenate([image, _upsample(np.clip(b, 0, 255), hw), _upsample(_stretch(l), hw)],
                         axis=1) for image, b, l in zip(images.astype(np.float32), baseline, learned)]
  return np.concatenate(rows, axis=0).round().astype(np.uint8)


def write(writer, workdir: str, step: int, image: np.ndarray):
  """To TensorBoard (through the clu writer) and as workdir/pictures/step_<step>.png."""
  writer.write_images(step, {"resizer/original|baseline|learned": image[None]})
  folder = epath.Path(workdir) / "pictures"
  folder.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  (folder / f"step_{step:08d}.png").write_bytes(buf.getvalue())
