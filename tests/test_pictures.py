"""The eval picture panel: original | baseline | learned, with its column captions and row labels."""
import types

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont
import pytest

from helpers import demo_config
from resizer_jax import models
from resizer_jax import pictures


def rendered(text: str, width: int) -> np.ndarray:
  """`text` as PIL draws it with its default font, white on black, in a cell of the strip's size."""
  cell = Image.new("RGB", (width, pictures.CAPTION_HEIGHT))
  ImageDraw.Draw(cell).text((2, 1), text, fill="white", font=ImageFont.load_default())
  return np.asarray(cell)


def test_the_panel_names_its_columns_and_labels_its_rows():
  config = demo_config(None)
  n, size = 2, 32
  resizer = models.MullerResizer(output_size=8, pretrained="resnet50")  # Cheaper than learned's.
  images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3)).astype(np.uint8)
  resizer_vars = jax.jit(resizer.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))
  model = types.SimpleNamespace(resizer=resizer, normalization=models.DEFAULT_NORMALIZATION)
  variables = {k: {"resizer": v} for k, v in resizer_vars.items()}
  labels = ["cat", "score 5.43"]
  picture = pictures.panel(model, variables, images, config, labels)
  cap = pictures.CAPTION_HEIGHT
  assert picture.dtype == np.uint8
  assert picture.shape == (cap + n * (cap + size), 3 * size, 3)  # Taller than the bare rows.

  # The header: each column's name in its own cell, drawn (not blank), and each different.
  for column, name in enumerate(pictures.COLUMNS):
    cell = picture[:cap, column * size:(column + 1) * size]
    np.testing.assert_array_equal(cell, rendered(name, size))
    assert cell.max() > 128
  assert len({picture[:cap, c * size:(c + 1) * size].tobytes() for c in range(3)}) == 3
  # Each row: its label over the three images, which are what the panel showed without captions.
  learned = np.asarray(jax.jit(lambda v, x: models.resize_pixels(model, v, x))(variables, images))
  baseline = np.asarray(models.resize(images.astype(np.float32), (8, 8), "bilinear", False))
  for i, label in enumerate(labels):
    top = cap + i * (cap + size)
    np.testing.assert_array_equal(picture[top:top + cap], rendered(label, 3 * size))
    row = picture[top + cap:top + cap + size]
    np.testing.assert_array_equal(row[:, :size], images[i])
    up = lambda a: np.repeat(np.repeat(a, size // 8, axis=0), size // 8, axis=1)
    np.testing.assert_array_equal(row[:, size:2 * size],
                                  up(np.clip(baseline[i], 0, 255)).round().astype(np.uint8))
    assert row[:, 2 * size:].min() == 0 and row[:, 2 * size:].max() == 255  # Stretched.
    stretched = (learned[i] - learned[i].min()) * (255 / (learned[i].max() - learned[i].min()))
    np.testing.assert_allclose(row[:, 2 * size:], up(stretched).round(), atol=1)
  # No labels: blank strips, same layout.
  bare = pictures.panel(model, variables, images, config)
  assert bare.shape == picture.shape and not bare[cap:2 * cap].any()
  with pytest.raises(ValueError, match="1 labels for 2 pictures"):
    pictures.panel(model, variables, images, config, ["cat"])


def test_row_labels_are_class_names_or_scores():
  batch = {"label": np.array([2, 0, 1]), "mask": np.array([True, True, False])}
  assert pictures.row_labels(batch, ("cat", "dog", "owl")) == ["owl", "cat", "unreadable"]
  assert pictures.row_labels({"label": np.array([3])}) == ["class 3"]
  distribution = np.zeros((2, 10), np.float32)
  distribution[0, 4] = 1.0  # All votes for 5.
  distribution[1, [1, 2]] = 0.5  # Half 2, half 3.
  assert pictures.row_labels({"distribution": distribution}) == ["score 5.00", "score 2.50"]
