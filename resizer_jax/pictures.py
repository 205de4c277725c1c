"""Pictures of what the resizer does (paper Fig. 2): original | baseline resize | learned resize.

The learned output is shown with its own per-image contrast stretch: it is not meant to look natural,
and clipping it to the pixel range would hide most of it.

The panel says so itself: a caption strip on top names the columns, and a strip above each row
gives the image's label (its class name, or for IQA its mean opinion score).
"""
import io

from etils import epath
import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from resizer_jax import losses
from resizer_jax import models

COLUMNS = ("original", "baseline", "learned")
CAPTION_HEIGHT = 14  # Pixels of each caption strip: PIL's default font (10 px) and a margin.


def _upsample(image: np.ndarray, hw) -> np.ndarray:
  """Nearest-neighbour, so that the small image's pixels stay visible as pixels."""
  rows = np.arange(hw[0]) * image.shape[0] // hw[0]
  cols = np.arange(hw[1]) * image.shape[1] // hw[1]
  return image[rows][:, cols]


def _stretch(image: np.ndarray) -> np.ndarray:
  lo, hi = image.min(), image.max()
  return (image - lo) * (255.0 / max(hi - lo, 1e-6))


def caption(texts, width: int) -> np.ndarray:
  """uint8 (CAPTION_HEIGHT, len(texts) * width, 3): white text on black, one text per cell of
  `width` pixels, each clipped to its cell."""
  font = ImageFont.load_default()
  cells = []
  for text in texts:
    cell = Image.new("RGB", (width, CAPTION_HEIGHT))
    ImageDraw.Draw(cell).text((2, 1), text, fill=(255, 255, 255), font=font)
    cells.append(np.asarray(cell))
  return np.concatenate(cells, axis=1)


def row_labels(batch, class_names=None) -> list[str]:
  """What each example of an eval `batch` is: its class name (or number), or for IQA its mean
  opinion score; "unreadable" for an example the pipeline could not decode."""
  if "distribution" in batch:
    labels = [f"score {s:.2f}" for s in np.asarray(losses.mean_score(batch["distribution"]))]
  else:
    labels = [class_names[int(l)] if class_names else f"class {int(l)}" for l in batch["label"]]
  if "mask" in batch:
    labels = [l if ok else "unreadable" for l, ok in zip(labels, batch["mask"])]
  return labels


def panel(model, variables, images: np.ndarray, config, labels=None) -> np.ndarray:
  """uint8 (CAPTION_HEIGHT + N * (CAPTION_HEIGHT + H), 3 * W, 3): the column captions (COLUMNS),
  then per image its label (`labels`, strings; none given: blank) over its row of original,
  baseline and (stretched) learned output."""
  labels = [""] * len(images) if labels is None else list(labels)
  if len(labels) != len(images):
    raise ValueError(f"{len(labels)} labels for {len(images)} pictures")
  r = config.resizer
  learned = np.asarray(jax.jit(lambda v, x: models.resize_pixels(model, v, x))(variables, images))
  baseline = np.asarray(models.resize(images.astype(np.float32), learned.shape[1:3],
                                      r.interpolation, r.antialias))
  hw = images.shape[1:3]
  rows = [caption(COLUMNS, hw[1])]
  for image, b, l, label in zip(images.astype(np.float32), baseline, learned, labels):
    rows.append(caption([label], 3 * hw[1]))
    pixels = np.concatenate([image, _upsample(np.clip(b, 0, 255), hw), _upsample(_stretch(l), hw)],
                            axis=1)
    rows.append(pixels.round().astype(np.uint8))
  return np.concatenate(rows, axis=0)


def write(writer, workdir: str, step: int, image: np.ndarray):
  """To TensorBoard (through the clu writer) and as workdir/pictures/step_<step>.png."""
  writer.write_images(step, {"resizer/original|baseline|learned": image[None]})
  folder = epath.Path(workdir) / "pictures"
  folder.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  (folder / f"step_{step:08d}.png").write_bytes(buf.getvalue())
