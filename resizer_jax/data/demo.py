"""`resizer_demo`: the embedded default dataset, built offline from photographs that ship in wheels.

What an example is: a square crop of a real photograph (scikit-image's `skimage.data` and
matplotlib's Grace Hopper portrait), side >= 256 px, Lanczos-downscaled to 256x256, then given one of
five degradations. **The label is the degradation, not the photo's content**:

  0 clean     the crop as is
  1 blur      Gaussian blur, sigma 1.5 px
  2 noise     additive Gaussian noise, sigma 10 grey levels
  3 jpeg      JPEG re-encoding at quality 15
  4 lowres    4x box downscale then bicubic upscale back to 256 px

Every crop appears once with each label, so a classifier can only win by seeing fine, pixel-level
structure — exactly what a fixed downscale to 16-32 px throws away and a learned resizer may keep.
Train and test use disjoint photographs, so test accuracy measures generalisation to unseen scenes.

Nothing is downloaded: the photos come from the pinned scikit-image and matplotlib packages; the
build is deterministic (fixed seeds, lossless PNG storage).
"""
import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

DEGRADATIONS = ("clean", "blur", "noise", "jpeg", "lowres")
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
    return ndimage.gaussian_filter(crop.astype(np.float32), sigma=(1.5, 1.5, 0)).round().astype(np.uint8)
  if name == "noise":
    noisy = crop.astype(np.float32) + rng.normal(0.0, 10.0, crop.shape)
    return np.clip(noisy.round(), 0, 255).astype(np.uint8)
  if name == "jpeg":
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="JPEG", quality=15)
    return np.asarray(Image.open(buf).convert("RGB"))
  if name == "lowres":
    small = Image.fromarray(crop).resize((SIZE // 4, SIZE // 4), Image.Resampling.BOX)
    return np.asarray(small.resize((SIZE, SIZE), Image.Resampling.BICUBIC))
  raise ValueError(f"unknown degradation {name!r}; valid: {', '.join(DEGRADATIONS)}")


def random_crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  h, w = photo.shape[:2]
  side = int(rng.integers(SIZE, min(h, w) + 1))
  top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
  crop = Image.fromarray(photo[top:top + side, left:left + side])
  return np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.LANCZOS))


@dataclasses.dataclass
class DemoConfig(tfds.core.BuilderConfig):
  train_crops_per_photo: int = 24
  test_crops_per_photo: int = 16


class ResizerDemo(tfds.core.GeneratorBasedBuilder):
  """Degradation classification on crops of real, shipped photographs (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      DemoConfig(name="full", description="11 train photos x 24 crops, 4 test photos x 16 crops, "
                 "x 5 degradations (1320 / 320 examples)."),
      DemoConfig(name="tiny", description="One crop per photo (55 / 20 examples), for tests.",
                 train_crops_per_photo=1, test_crops_per_photo=1),
  ]

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
