"""`resizer_demo`: the embedded default dataset, built offline from photographs that ship in wheels.

What an example is: a square crop of a real photograph (scikit-image's `skimage.data` and
matplotlib's Grace Hopper portrait), side >= 256 px, Lanczos-downscaled to 256x256, then given one of
four degradations. **The label is the degradation, not the photo's content**:

  0 clean     the crop as is
  1 blur      Gaussian blur, sigma 2 px
  2 noise     additive Gaussian noise, sigma 20 grey levels
  3 jpeg      JPEG re-encoding at quality 8

Every crop appears once with each label, so a classifier can only win by seeing fine, pixel-level
structure -- exactly what a fixed downscale to 16-32 px throws away and a learned resizer may keep.
Crops are drawn where the photo has detail (the most detailed of a few random draws), because a flat
patch looks the same blurred or not. Train and test use disjoint photographs, so test accuracy
measures generalisation to unseen scenes.

Nothing is downloaded: the photos come from the pinned scikit-image and matplotlib packages; the
build is deterministic (fixed seeds, lossless PNG storage).
"""
import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

DEGRADATIONS = ("clean", "blur", "noise", "jpeg")
CROP_DRAWS = 8  # Keep the most detailed of this many random crops.
SIZE = 256
TRAIN_PHOTOS = ("astronaut", "camera", "moon", "rocket", "hubble_deep_field", "immunohistochemistry",
                "retina", "brick", "gravel", "cell", "grace_hopper")
TEST_PHOTOS = ("chelsea", "coffee", "coins", "grass")


def load_photo(name: str) -> np.ndarray:
  """An RGB uint8 photograph from a pinned package, by name."""
  if name == "grace_hopper":
    import matplotlib.cbook  # pylint: disable=g-import-not-at-top
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
      image = np.asarray(Image.open(f).convert("RGB"))
  else:
    import skimage.data  # pylint: disable=g-import-not-at-top
    image = getattr(skimage.data, name)()
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return np.ascontiguousarray(image[..., :3])


def degrade(crop: np.ndarray, label: int, rng: np.random.Generator) -> np.ndarray:
  name = DEGRADATIONS[label]
  if name == "clean":
    return crop
  if name == "blur":
    from scipy import ndimage  # pylint: disable=g-import-not-at-top
    return ndimage.gaussian_filter(crop.astype(np.float32), sigma=(2, 2, 0)).round().astype(np.uint8)
  if name == "noise":
    noisy = crop.astype(np.float32) + rng.normal(0.0, 20.0, crop.shape)
    return np.clip(noisy.round(), 0, 255).astype(np.uint8)
  if name == "jpeg":
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="JPEG", quality=8)
    return np.asarray(Image.open(buf).convert("RGB"))
  raise ValueError(f"unknown degradation {name!r}; valid: {', '.join(DEGRADATIONS)}")


def detail(image: np.ndarray) -> float:
  """Mean absolute Laplacian of the grey image: how much fine structure there is to degrade."""
  g = image.astype(np.float32).mean(-1)
  return float(np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean())


def random_crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  h, w = photo.shape[:2]
  crops = []
  for _ in range(CROP_DRAWS):
    side = int(rng.integers(SIZE, min(h, w) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[top:top + side, left:left + side])
    crops.append(np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.LANCZOS)))
  return max(crops, key=detail)


@dataclasses.dataclass
class DemoConfig(tfds.core.BuilderConfig):
  train_crops_per_photo: int = 24
  test_crops_per_photo: int = 64


class ResizerDemo(tfds.core.GeneratorBasedBuilder):
  """Degradation classification on crops of real, shipped photographs (see module docstring)."""

  VERSION = tfds.core.Version("3.0.0")
  RELEASE_NOTES = {"1.0.0": "Five degradations, random crops.",
                   "2.0.0": "Four, stronger degradations; crops drawn where the photo has detail.",
                   "3.0.0": "64 test crops per photo (1024 test examples), for tighter intervals."}
  BUILDER_CONFIGS = [
      DemoConfig(name="full", description="11 train photos x 24 crops, 4 test photos x 64 crops, "
                 "x 4 degradations (1056 / 1024 examples)."),
      DemoConfig(name="tiny", description="One crop per photo (44 / 16 examples), for tests.",
                 train_crops_per_photo=1, test_crops_per_photo=1),
  ]

  def planned_split_sizes(self, manual_dir: str | None = None) -> dict[str, int]:
    """The examples of each split before it is prepared (for a run plan)."""
    del manual_dir  # Made from files at hand, not from a download.
    c = self.builder_config
    return {"train": len(TRAIN_PHOTOS) * c.train_crops_per_photo * len(DEGRADATIONS),
            "test": len(TEST_PHOTOS) * c.test_crops_per_photo * len(DEGRADATIONS)}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(SIZE, SIZE, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=DEGRADATIONS),
            "photo": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {
        "train": self._generate_examples(TRAIN_PHOTOS, self.builder_config.train_crops_per_photo),
        "test": self._generate_examples(TEST_PHOTOS, self.builder_config.test_crops_per_photo),
    }

  def _generate_examples(self, photos, crops_per_photo):
    for p, name in enumerate(photos):
      photo = load_photo(name)
      # One generator per photo, keyed by its name, so that the examples do not depend on the order
      # or number of other photos.
      rng = np.random.default_rng([sum(map(ord, name)), p, crops_per_photo])
      for c in range(crops_per_photo):
        crop = random_crop(photo, rng)
        for label in range(len(DEGRADATIONS)):
          yield f"{name}/{c}/{label}", {"image": degrade(crop, label, rng), "label": label,
                                        "photo": name}
