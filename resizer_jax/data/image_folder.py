"""`image_folder:PATH`: your own images, one sub-folder per class, as a TFDS dataset.

  python -m resizer_jax.main --config=configs/demo.py --config.data.name=image_folder:/data/pets \
      --config.num_classes=3 --workdir=runs/pets

Layout (TFDS's `ImageFolder` convention): PATH/train/<class>/<image> and PATH/test/<class>/... or
PATH/validation/<class>/... (both may exist; each is a split of that name). A class is a
sub-folder name, the same in every split; labels are the indices of the sorted names. Images are
the files, at any depth under a class folder, whose extension PIL knows (.jpg, .png, .webp, .tif,
...); hidden files and folders (".name") and other folders of PATH are ignored.

On first use `input_pipeline.get_builder` prepares the folder into TFRecords, once, like any TFDS
dataset: under <data_dir>/image_folder/<name>_<10 hex digits of sha256(absolute PATH)>/1.0.0/, so
every path reads its own copy and every existing part of the pipeline (file order per epoch,
sharding, skipping, stream identity) works unchanged. Each example is the file's bytes (re-encoded
as JPEG only for formats TensorFlow cannot decode, e.g. TIFF), `label` and `file` (its path under
PATH); decoding, to RGB whatever the mode, happens in the pipeline.

Files PIL cannot decode (empty, truncated, garbage) are skipped at build time and counted, as
`ava` does, in `builder.info.metadata["skipped"][split]["unreadable_image"]` and logged by name.

The prepared copy records a fingerprint of the folder (relative path, size and mtime in seconds of
every image). If the folder changes afterwards, the builder refuses to read the stale copy, naming
the directory to delete: a silent rebuild would change the data under a run that resumes, or
under another job reading the same copy.
"""
import dataclasses
import hashlib
import os
import re

from absl import logging
from etils import epath
from PIL import Image
import tensorflow_datasets as tfds

from resizer_jax.data import ava

PREFIX = "image_folder:"
TRAIN = "train"
EVAL_SPLITS = ("test", "validation")
# Of the formats PIL can open, not those it only writes (.pdf).
EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items()
                       if fmt in Image.OPEN)


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  """One folder: what its scan found (`files`: split -> ((path under root, label), ...))."""
  root: str = ""
  classes: tuple[str, ...] = ()
  files: dict = dataclasses.field(default_factory=dict, repr=False)  # TFDS logs the config.
  fingerprint: str = ""


def _hidden(relative: str) -> bool:
  return any(part.startswith(".") for part in relative.split("/"))


def _entries(path: str) -> list[str]:
  return sorted(e.name + ("/" if e.is_dir() else "")
                for e in epath.Path(path).iterdir() if not e.name.startswith("."))


def _found(path: str) -> str:
  entries = _entries(path)
  more = f", ... ({len(entries)} in all)" if len(entries) > 8 else ""
  return f"found {', '.join(entries[:8])}{more}" if entries else "found nothing"


def _images(class_dir: str) -> list[str]:
  """The image files under `class_dir`, as sorted paths relative to it."""
  found = []
  for top, _, names in epath.Path(class_dir).walk():
    for name in names:
      relative = os.path.relpath(os.path.join(top, name), class_dir).replace(os.sep, "/")
      if not _hidden(relative) and os.path.splitext(name)[1].lower() in EXTENSIONS:
        found.append(relative)
  return sorted(found)


def _classes(split_dir: str) -> list[str]:
  classes = [e[:-1] for e in _entries(split_dir) if e.endswith("/")]
  if not classes:
    raise ValueError(f"{split_dir} has no class sub-folders ({_found(split_dir)}); expected "
                     f"{split_dir}/<class>/<image>, one sub-folder per class")
  return classes


def _split_names(spec: str) -> list[str]:
  """The split names in a TFDS split spec: "train[:90%]+test" -> ["train", "test"]."""
  return [part.partition("[")[0].strip() for part in spec.split("+")]


def scan(path: str, wanted: dict | None = None) -> FolderConfig:
  """The folder's classes, images and fingerprint; a one-line error for a layout we cannot use.

  `wanted`: the config's split specs by key ({"eval_split": "test"}); one naming a split the folder
  lacks is refused here, with the splits it has.
  """
  if not path:
    raise ValueError(f"data.name={PREFIX!r} names no folder; expected {PREFIX}PATH")
  root = path if "://" in path else os.path.abspath(os.path.expanduser(path))
  if not epath.Path(root).is_dir():
    raise FileNotFoundError(f"data.name={PREFIX}{path}: no directory {root}; expected a folder "
                            f"holding {TRAIN}/ and {' or '.join(f'{s}/' for s in EVAL_SPLITS)}, "
                            "with one sub-folder per class in each")
  splits = [s for s in (TRAIN, *EVAL_SPLITS) if epath.Path(root, s).is_dir()]
  if TRAIN not in splits or len(splits) < 2:
    missing = f"{TRAIN}/" if TRAIN not in splits else " or ".join(f"{s}/" for s in EVAL_SPLITS)
    raise ValueError(f"{root} has no {missing} ({_found(root)}); expected {TRAIN}/ and "
                     f"{' or '.join(f'{s}/' for s in EVAL_SPLITS)}, with one sub-folder per class")
  for key, spec in (wanted or {}).items():
    for name in _split_names(spec):
      if name not in splits:
        fix = splits[1] if key == "eval_split" else TRAIN
        raise ValueError(f"{root} has the splits {', '.join(splits)}, not {name!r} (config.data."
                         f"{key}={spec!r}): set --config.data.{key}={fix}, or add {root}/{name}/")
  classes = {split: _classes(os.path.join(root, split)) for split in splits}
  for split in splits[1:]:
    if classes[split] != classes[TRAIN]:
      only = lambda a, b: ", ".join(sorted(set(classes[a]) - set(classes[b]))) or "none"
      raise ValueError(f"the class sub-folders of {root}/{split} differ from those of "
                       f"{root}/{TRAIN}: only in {TRAIN}: {only(TRAIN, split)}; only in {split}: "
                       f"{only(split, TRAIN)}; expected the same classes in every split")
  files, lines = {}, []
  for split in splits:
    files[split] = []
    for label, name in enumerate(classes[TRAIN]):
      class_dir = os.path.join(root, split, name)
      images = _images(class_dir)
      if not images:
        raise ValueError(f"{class_dir} holds no images ({_found(class_dir)}); expected image files "
                         "(.jpg, .png or another extension PIL reads) in every class folder")
      for image in images:
        relative = f"{split}/{name}/{image}"
        stat = epath.Path(root, relative).stat()
        files[split].append((relative, label))
        lines.append(f"{relative}\t{stat.length}\t{stat.mtime}\n")
  digest = hashlib.sha256(root.encode()).hexdigest()[:10]
  slug = re.sub(r"[^A-Za-z0-9]+", "_", os.path.basename(root.rstrip("/"))).strip("_") or "folder"
  return FolderConfig(
      name=f"{slug}_{digest}", description=f"The image folder {root}.", root=root,
      classes=tuple(classes[TRAIN]), files=files,
      fingerprint=hashlib.sha256("".join(sorted(lines)).encode()).hexdigest())


def builder(path: str, data_dir=None, wanted: dict | None = None):
  """The TFDS builder of the folder at `path` (prepared or not); refuses a stale prepared copy."""
  config = scan(path, wanted)
  folder = ImageFolder(config=config, data_dir=data_dir)
  if folder.is_prepared():
    prepared = folder.info.metadata.get("fingerprint")
    if prepared != config.fingerprint:
      raise ValueError(
          f"{config.root} changed since it was prepared into {folder.data_dir} (its images' "
          f"relative paths, sizes or mtimes differ: {sum(map(len, config.files.values()))} image files "
          f"now, {folder.info.metadata.get('num_images', '?')} then); delete {folder.data_dir} to "
          "prepare it again (runs trained on the old copy will not resume on the new one), or "
          "restore the folder")
  return folder


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A folder of class sub-folders (see module docstring); built from a `scan`, never by name."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def planned_split_sizes(self, manual_dir: str | None = None) -> dict[str, int]:
    """The images of each split before it is prepared (for a run plan)."""
    del manual_dir  # Made from files at hand, not from a download.
    return {split: len(files) for split, files in self.builder_config.files.items()}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=self.builder_config.classes),
            "file": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    self.info.metadata.update(root=config.root, fingerprint=config.fingerprint,
                              num_images=sum(map(len, config.files.values())))
    return {split: self._generate_examples(split, files) for split, files in config.files.items()}

  def _generate_examples(self, split, files):
    root = epath.Path(self.builder_config.root)
    unreadable = []
    for relative, label in files:
      image = ava.load_image(root / relative)
      if image is None:
        unreadable.append(relative)
        continue
      yield relative, {"image": image, "label": label, "file": relative}
    if len(unreadable) == len(files):
      raise ValueError(f"none of the {len(files)} images of {root / split} decodes")
    self.info.metadata.setdefault("skipped", {})[split] = {"unreadable_image": len(unreadable)}
    if unreadable:
      more = f", ... ({len(unreadable)} in all)" if len(unreadable) > 5 else ""
      logging.warning("image_folder %s: skipped %d of %d files that do not decode: %s%s",
                      root / split, len(unreadable), len(files), ", ".join(unreadable[:5]), more)
