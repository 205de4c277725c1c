"""`ava`: AVA, the Aesthetic Visual Analysis dataset (Murray, Marchesotti & Perronnin, CVPR 2012), for
image quality assessment with NIMA's 10-bin score histograms.

AVA may not be redistributed, so the default config prepares from a manual download (see
MANUAL_DOWNLOAD_INSTRUCTIONS and docs/iqa.md). Two more configs, `demo` and `demo_tiny`, generate a
stand-in release offline (resizer_jax/data/demo_ava.py: degraded crops of shipped photographs with
simulated votes; technical quality, not aesthetics) and read it through the very same code.

Splits: `train` is the image list `aesthetics_image_lists/generic_ls_train.jpgl` (about 235.6k ids)
and `test` is `generic_test.jpgl` (about 19.9k ids), the standard AVA split. Other lists of the
release (e.g. generic_ss_train, or the per-category lists) are chosen with a config:
`tfds.builder("ava", config=AvaConfig(name="ss", train_list="generic_ss_train"))`. The builder makes no
validation split: hold one out of `train` with TFDS slicing (e.g. train "train[:95%]", eval
"train[95%:]") and report on `test`.

Each example: the image (the release's JPEG bytes, unchanged), `votes` (the 10 vote counts for the
scores 1..10), `distribution` (votes / their sum), `mean_score` (sum_i i * distribution_i),
`image_id`, and the row's `semantic_tags` (0 = none) and `challenge` id.

Ids of a list with no usable image are skipped, never fatal: no `images/<id>.jpg`, a file that does
not decode, an id missing from AVA.txt, or a row without votes. The counts per reason and split are
logged at the end of each split and kept in `builder.info.metadata["skipped"]`.
"""
import collections
import dataclasses
import io

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from resizer_jax.data import demo
from resizer_jax.data import demo_ava

NUM_SCORES = 10
NUM_COLUMNS = 15
# Formats tf.io.decode_image reads; a file in another format is re-encoded as JPEG.
TF_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP")
SKIP_REASONS = ("missing_image", "unreadable_image", "not_in_ava_txt", "no_votes")

_MANUAL = """\
Download AVA (e.g. from the authors' page or a mirror; the licence forbids redistribution) and put
into the manual dir (default <data_dir>/downloads/manual; set it with
tfds.download.DownloadConfig(manual_dir=...) or the config's data.manual_dir):

  AVA.txt                                   (15 columns: index, image id, 10 vote counts, 2 tags, challenge)
  aesthetics_image_lists/generic_ls_train.jpgl
  aesthetics_image_lists/generic_test.jpgl
  images/<image id>.jpg                     (about 255k JPEGs, 32 GB)
"""


@dataclasses.dataclass
class AvaConfig(tfds.core.BuilderConfig):
  """Which image lists make the splits; `demo` ("full" or "tiny") generates the stand-in release."""
  train_list: str = demo_ava.TRAIN_LIST
  test_list: str = demo_ava.TEST_LIST
  demo: str | None = None


@dataclasses.dataclass(frozen=True)
class Row:
  votes: tuple[int, ...]
  semantic_tags: tuple[int, int]
  challenge: int


def read_ava_txt(path) -> dict[int, Row]:
  """image id -> its row of AVA.txt."""
  rows = {}
  for n, line in enumerate(epath.Path(path).read_text().splitlines(), start=1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) != NUM_COLUMNS:
      raise ValueError(f"{path} line {n} has {len(fields)} columns, expected {NUM_COLUMNS}: index, "
                       "image id, 10 vote counts, 2 semantic tag ids, challenge id")
    try:
      values = [int(f) for f in fields]
    except ValueError:
      raise ValueError(f"{path} line {n} has a non-integer column: {line.strip()!r}") from None
    rows[values[1]] = Row(votes=tuple(values[2:12]), semantic_tags=(values[12], values[13]),
                          challenge=values[14])
  return rows


def read_list(root: epath.Path, name: str) -> list[int]:
  """The ids of `aesthetics_image_lists/<name>.jpgl`, in file order, without repeats."""
  path = root / "aesthetics_image_lists" / f"{name}.jpgl"
  if not path.exists():
    found = sorted(p.stem for p in path.parent.glob("*.jpgl")) if path.parent.exists() else []
    raise FileNotFoundError(f"no image list {path}; lists there: {', '.join(found) or 'none'}")
  tokens = path.read_text().split()
  bad = [t for t in tokens if not t.isdigit()]
  if bad:
    raise ValueError(f"{path} holds {bad[0]!r}, not an image id (one integer a line)")
  return list(dict.fromkeys(int(t) for t in tokens))


def load_image(path: epath.Path):
  """The bytes to store for an image file, or None if the file does not decode."""
  try:
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
      fmt = image.format
      # Decoding at 1/8 scale (JPEG's DCT scaling) still reads the whole file, so truncated or
      # corrupt files fail here and not in the middle of a training run, for a fraction of the cost.
      image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
      image.load()
      if fmt in TF_FORMATS:
        return data
      with Image.open(io.BytesIO(data)) as full:
        buf = io.BytesIO()
        full.convert("RGB").save(buf, format="JPEG", quality=95)
        return buf.getvalue()
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
    return None


DEMO_VERSION = "2.0.0"
DEMO_NOTES = {"1.0.0": "One degradation per image; 528 / 128 images.",
              "2.0.0": "Haze (kept by any downscale) plus one fine degradation, half the score each; "
                       "704 / 256 images."}


class Ava(tfds.core.GeneratorBasedBuilder):
  """AVA with NIMA's score histograms, from a manual download or as the offline stand-in."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
  BUILDER_CONFIGS = [
      AvaConfig(name="default", description="AVA from the manual dir: train = generic_ls_train, "
                "test = generic_test."),
      AvaConfig(name="demo", demo="full", version=DEMO_VERSION, release_notes=DEMO_NOTES,
                description="Offline stand-in (demo_ava.py): technical quality with simulated "
                "votes, NOT aesthetics; 704 train / 256 test."),
      AvaConfig(name="demo_tiny", demo="tiny", version=DEMO_VERSION, release_notes=DEMO_NOTES,
                description="The stand-in's tiny variant, for tests: 22 train / 8 test."),
  ]

  def planned_split_sizes(self, manual_dir: str) -> dict[str, int] | None:
    """The ids of each split's image list, before it is prepared (for a run plan): at most its
    examples, as ids without a usable image are skipped. None without the lists in `manual_dir`."""
    c = self.builder_config
    if c.demo:
      train, test = demo_ava.VARIANTS[c.demo]
      return {"train": len(demo.TRAIN_PHOTOS) * train, "test": len(demo.TEST_PHOTOS) * test}
    root = epath.Path(manual_dir)
    try:
      return {"train": len(read_list(root, c.train_list)), "test": len(read_list(root, c.test_list))}
    except FileNotFoundError:
      return None

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "votes": tfds.features.Tensor(shape=(NUM_SCORES,), dtype=np.int32),
            "distribution": tfds.features.Tensor(shape=(NUM_SCORES,), dtype=np.float32),
            "mean_score": tfds.features.Scalar(dtype=np.float32),
            "image_id": tfds.features.Scalar(dtype=np.int64),
            "semantic_tags": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "challenge": tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=("image", "distribution"),
        homepage="https://doi.org/10.1109/CVPR.2012.6247954",
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    if config.demo:
      root = epath.Path(dl_manager.download_dir) / "ava_demo" / config.name
      demo_ava.write_release(root, config.demo)
    else:
      root = epath.Path(dl_manager.manual_dir)
    if not (root / "AVA.txt").exists():
      raise FileNotFoundError(f"no AVA.txt in the manual dir {root}; see docs/iqa.md")
    rows = read_ava_txt(root / "AVA.txt")
    # Read the lists now, so that a wrong list name fails before any example is written.
    lists = {"train": read_list(root, config.train_list), "test": read_list(root, config.test_list)}
    return {split: self._generate_examples(root, rows, ids, split) for split, ids in lists.items()}

  def _generate_examples(self, root, rows, ids, split):
    skipped = collections.Counter()
    for image_id in ids:
      row = rows.get(image_id)
      if row is None:
        skipped["not_in_ava_txt"] += 1
        continue
      total = sum(row.votes)
      if total <= 0:
        skipped["no_votes"] += 1
        continue
      path = root / "images" / f"{image_id}.jpg"
      if not path.exists():
        skipped["missing_image"] += 1
        continue
      image = load_image(path)
      if image is None:
        skipped["unreadable_image"] += 1
        continue
      votes = np.asarray(row.votes, np.int32)
      distribution = (votes / total).astype(np.float32)
      yield str(image_id), {
          "image": image,
          "votes": votes,
          "distribution": distribution,
          "mean_score": np.float32(np.arange(1, NUM_SCORES + 1) @ (votes / total)),
          "image_id": image_id,
          "semantic_tags": np.asarray(row.semantic_tags, np.int32),
          "challenge": row.challenge,
      }
    counts = {reason: skipped[reason] for reason in SKIP_REASONS}
    self.info.metadata.setdefault("skipped", {})[split] = counts
    if skipped:
      logging.warning("ava %s: skipped %d of %d listed ids (%s)", split, sum(skipped.values()),
                      len(ids), ", ".join(f"{k}: {v}" for k, v in counts.items() if v))
    else:
      logging.info("ava %s: all %d listed ids have images", split, len(ids))
