"""`image_folder:PATH`: a folder of class sub-folders through the real builder, pipeline and CLI."""
import hashlib
import json
import pathlib
import re
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from helpers import REPO, one_device_env
import resizer_jax
from resizer_jax.data import demo
from resizer_jax.data import image_folder
from resizer_jax.data import input_pipeline

CLASSES = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}  # Class -> shipped photo.
DAMAGED = ("cat/truncated.jpg", "coffee/garbage.jpg", "rocket/empty.png")


def write_image(path, photo, i, mode):
  """A small crop of `photo`, the i-th of its split, as `mode` in the format `path` names."""
  h, w = photo.shape[:2]
  top, left = (37 * i) % (h - 150), (53 * i) % (w - 150)
  image = Image.fromarray(photo[top:top + 150, left:left + 150]).resize((48 + 4 * i, 56))
  path.parent.mkdir(parents=True, exist_ok=True)
  image.convert(mode).save(path)


def write_folder(root, splits=("train", "test"), classes=CLASSES):
  """Per class: train 4 images (JPEG, grey PNG, JPEG, RGBA PNG), test 2; rocket's train also has
  a TIFF one folder down. Plus files that are no images, hidden files, and the damaged files."""
  for split in splits:
    for name, photo_name in classes.items():
      photo = demo.load_photo(photo_name)
      for i, (ext, mode) in enumerate((("jpg", "RGB"), ("png", "L"), ("jpg", "RGB"),
                                       ("png", "RGBA"))[:4 if split == "train" else 2]):
        write_image(root / split / name / f"{i}.{ext}", photo, i + 10 * (split != "train"), mode)
      (root / split / name / "notes.txt").write_text("not an image")
      (root / split / name / ".hidden.jpg").write_bytes(b"")
  if "rocket" in classes and "train" in splits:
    write_image(root / "train/rocket/nested/4.tif", demo.load_photo("rocket"), 4, "RGB")
  if "train" in splits:
    photo = (root / "train/cat/0.jpg").read_bytes()
    (root / "train" / DAMAGED[0]).write_bytes(photo[:len(photo) // 2])
    (root / "train" / DAMAGED[1]).write_bytes(np.random.default_rng(0).bytes(500))
    (root / "train" / DAMAGED[2]).write_bytes(b"")
  return root


def data_config(root, data_dir, **overrides):
  return ml_collections.ConfigDict({**dict(
      name=f"image_folder:{root}", data_dir=str(data_dir), train_split="train", eval_split="test",
      input_size=32, train_preprocess="crop_flip", eval_crop_fraction=1.0, shuffle_buffer=100),
      **overrides})


def everything_under(path):
  return sorted(str(p) for p in pathlib.Path(path).rglob("*"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(folder, data_dir, builder): the folder above, prepared once through get_builder."""
  root = write_folder(tmp_path_factory.mktemp("photos") / "my photos")
  data_dir = tmp_path_factory.mktemp("tfds")
  return root, data_dir, input_pipeline.get_builder(data_config(root, data_dir), len(CLASSES))


def test_the_folder_is_prepared_once_with_its_labels_and_damaged_files_counted(prepared):
  root, data_dir, builder = prepared
  assert input_pipeline.class_names(builder) == tuple(CLASSES)
  digest = hashlib.sha256(str(root).encode()).hexdigest()[:10]
  assert builder.data_dir == str(data_dir / f"image_folder/my_photos_{digest}/1.0.0")
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
      "train": 3 * 4 + 1, "test": 3 * 2}
  assert builder.info.metadata["skipped"] == {"train": {"unreadable_image": len(DAMAGED)},
                                              "test": {"unreadable_image": 0}}
  for split in ("train", "test"):
    for e in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
      file = e["file"].decode()
      assert file.split("/")[:2] == [split, tuple(CLASSES)[e["label"]]]
      assert e["image"].ndim == 3 and e["image"].shape[-1] == 3  # Grey and RGBA become RGB.
      with Image.open(root / file) as original:
        assert e["image"].shape[:2] == (original.height, original.width)
        if original.format == "PNG":  # Stored as given: the pixels survive exactly.
          np.testing.assert_array_equal(e["image"], np.asarray(original.convert("RGB")))
  # Prepared once: the next get_builder reads the same copy.
  before = everything_under(data_dir)
  assert input_pipeline.get_builder(data_config(root, data_dir), 3).data_dir == builder.data_dir
  assert everything_under(data_dir) == before


def test_the_train_and_eval_pipelines_read_it(prepared):
  root, data_dir, builder = prepared
  config = data_config(root, data_dir)
  batch = next(input_pipeline.train_dataset(builder, config, global_batch=8,
                                            seed=0).as_numpy_iterator())
  assert batch["image"].shape == (8, 32, 32, 3) and set(batch["label"]) <= {0, 1, 2}
  assert batch["skipped"].sum() == 0  # The damaged files never reached the records.
  ds, steps = input_pipeline.eval_dataset(builder, config, global_batch=4)
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == steps == 2
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  assert sorted(labels) == [0, 0, 1, 1, 2, 2]
  identity = input_pipeline.stream_identity(builder, config, global_batch=8, seed=0, num_shards=1)
  assert identity["dataset"] == f"image_folder/{builder.builder_config.name}"
  assert identity["fingerprint"] == builder.info.metadata["fingerprint"]


def test_a_changed_folder_is_refused_until_its_copy_is_deleted(prepared, tmp_path):
  root = shutil.copytree(prepared[0], tmp_path / "photos")
  config = data_config(root, tmp_path / "tfds")
  old = input_pipeline.get_builder(config, 3)
  shutil.copy(root / "train/cat/0.jpg", root / "train/cat/5.jpg")
  before = everything_under(tmp_path)
  with pytest.raises(ValueError) as error:
    input_pipeline.get_builder(config, 3)
  message = str(error.value)
  assert message.startswith(f"{root} changed since it was prepared into {old.data_dir} (")
  assert "23 image files now, 22 then" in message and f"delete {old.data_dir}" in message
  assert "\n" not in message and everything_under(tmp_path) == before
  shutil.rmtree(old.data_dir)
  new = input_pipeline.get_builder(config, 3)
  assert new.info.splits["train"].num_examples == old.info.splits["train"].num_examples + 1
  assert new.info.metadata["fingerprint"] != old.info.metadata["fingerprint"]


def test_a_short_cli_run_trains_and_load_gives_the_class_names(prepared, tmp_path):
  root, data_dir, _ = prepared
  env = one_device_env()
  out = subprocess.run(
      [sys.executable, "-m", "resizer_jax.main", "--config=configs/demo.py:tiny,input=32,target=8",
       f"--config.data.name=image_folder:{root}", f"--config.data.data_dir={data_dir}",
       "--config.num_train_steps=2", "--config.batch_size=8",
       "--config.eval_batch_size=8", "--config.num_pictures=0",
       "--config.data.eval_crop_fraction=1.0", f"--workdir={tmp_path}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  final = json.loads(out.stdout.strip().splitlines()[-1])
  assert final["eval/examples"] == 6 and final["eval/skipped"] == 0
  run = resizer_jax.load(str(tmp_path))
  assert run.step == 2 and run.class_names == tuple(CLASSES)
  assert run.config.num_classes == 3  # Left unset by configs/demo.py: the folder's.


def test_class_names_of_the_embedded_datasets(tmp_path):
  demo_builder = tfds.builder("resizer_demo/tiny", data_dir=str(tmp_path))
  assert input_pipeline.class_names(demo_builder) == demo.DEGRADATIONS
  assert input_pipeline.class_names(tfds.builder("ava/demo_tiny", data_dir=str(tmp_path))) is None


def bad_folder(tmp, case):
  """(folder, config overrides, num_classes) with one thing wrong."""
  root = tmp / "photos"
  if case == "missing":
    return root, {}, 3
  if case == "no train":
    write_folder(root, splits=("test",))
  elif case == "no eval split":
    write_folder(root, splits=("train",))
    (root / "val").mkdir()
  elif case == "no classes":
    write_folder(root)
    shutil.rmtree(root / "test")
    (root / "test").mkdir()
    (root / "test/readme.txt").write_text("")
  elif case == "empty class":
    write_folder(root)
    shutil.rmtree(root / "test/coffee")
    (root / "test/coffee").mkdir()
  elif case == "other classes":
    write_folder(root)
    shutil.move(root / "test/coffee", root / "test/tea")
  elif case in ("validation only", "num_classes"):
    write_folder(root)
    if case == "validation only":
      shutil.move(root / "test", root / "validation")
  return root, {}, 4 if case == "num_classes" else 3


@pytest.mark.parametrize("case, message", [
    ("missing", r"data.name=image_folder:{root}: no directory {root}; expected a folder holding "
                r"train/ and test/ or validation/"),
    ("no train", r"{root} has no train/ \(found test/\); expected train/ and test/ or validation/"),
    ("no eval split", r"{root} has no test/ or validation/ \(found train/, val/\)"),
    ("no classes", r"{root}/test has no class sub-folders \(found readme.txt\); expected "
                   r"{root}/test/<class>/<image>"),
    ("empty class", r"{root}/test/coffee holds no images \(found nothing\); expected image files"),
    ("other classes", r"the class sub-folders of {root}/test differ from those of {root}/train: "
                      r"only in train: coffee; only in test: tea;"),
    ("validation only", r"{root} has the splits train, validation, not 'test' \(config.data."
                        r"eval_split='test'\): set --config.data.eval_split=validation, or add "),
    ("num_classes", r"config.num_classes=4 but image_folder:{root} has 3 classes \(cat, coffee, "
                    r"rocket\): set --config.num_classes=3, or leave it unset \(None\) and the "
                    r"dataset decides$"),
])
def test_bad_input_is_one_line_naming_what_was_found(tmp_path, case, message):
  root, overrides, num_classes = bad_folder(tmp_path, case)
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  with pytest.raises((ValueError, FileNotFoundError)) as error:
    input_pipeline.get_builder(data_config(root, data_dir, **overrides), num_classes)
  assert "\n" not in str(error.value)
  assert error.match("^" + message.format(root=re.escape(str(root))))
  assert everything_under(data_dir) == []


def test_a_misspelt_prefix_is_an_unknown_dataset_naming_image_folder(tmp_path):
  with pytest.raises(ValueError, match=r"^unknown dataset data.name='imagefolder:/x'; close "
                                       r"matches: image_folder"):
    input_pipeline.get_builder(data_config("/x", tmp_path, name="imagefolder:/x"))


def test_a_validation_folder_is_the_validation_split(tmp_path):
  root = write_folder(tmp_path / "photos", splits=("train", "validation"))
  config = image_folder.scan(str(root), {"train_split": "train[:90%]",
                                         "eval_split": "validation"})
  assert config.classes == tuple(CLASSES) and sorted(config.files) == ["train", "validation"]
  assert len(config.files["validation"]) == 6


def test_a_split_of_which_nothing_decodes_is_refused_and_leaves_nothing(tmp_path):
  root = tmp_path / "photos"
  for split in ("train", "test"):
    for name in CLASSES:
      (root / split / name).mkdir(parents=True)
      (root / split / name / "0.jpg").write_bytes(b"not a jpeg")
  data_dir = tmp_path / "tfds"
  with pytest.raises(ValueError, match=r"none of the 3 images of .*/photos/train decodes"):
    input_pipeline.get_builder(data_config(root, data_dir), 3)
  assert not list((data_dir / "image_folder").rglob("*.tfrecord*"))
