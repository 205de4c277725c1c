"""The embedded dataset through the real TFDS builder, and the tf.data pipeline the trainer reads."""
import json
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from helpers import REPO
from resizer_jax.config_args import load_config
from resizer_jax.data import demo
from resizer_jax.data import input_pipeline


def data_config(data_dir, **overrides):
  return ml_collections.ConfigDict({**dict(
      name="resizer_demo/tiny", data_dir=data_dir, train_split="train", eval_split="test",
      input_size=96, train_preprocess="crop_flip", eval_crop_fraction=1.0, shuffle_buffer=1000),
      **overrides})


def examples(data_dir, split):
  builder = tfds.builder("resizer_demo/tiny", data_dir=data_dir)
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def test_the_build_is_deterministic(data_dir, tmp_path):
  tfds.builder("resizer_demo/tiny", data_dir=str(tmp_path)).download_and_prepare()
  for split in ("train", "test"):
    a, b = examples(data_dir, split), examples(str(tmp_path), split)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
      assert x["photo"] == y["photo"] and x["label"] == y["label"]
      np.testing.assert_array_equal(x["image"], y["image"])


def test_labels_are_degradations_of_the_same_crops_on_disjoint_photos(data_dir):
  train, test = examples(data_dir, "train"), examples(data_dir, "test")
  assert len(train) == len(demo.TRAIN_PHOTOS) * len(demo.DEGRADATIONS)
  assert len(test) == len(demo.TEST_PHOTOS) * len(demo.DEGRADATIONS)
  assert {e["photo"].decode() for e in train}.isdisjoint({e["photo"].decode() for e in test})
  by_photo = {}
  for e in train + test:
    assert e["image"].shape == (demo.SIZE, demo.SIZE, 3)
    by_photo.setdefault(e["photo"], {})[int(e["label"])] = e["image"]
  for images in by_photo.values():
    assert sorted(images) == list(range(len(demo.DEGRADATIONS)))
    clean = images[demo.DEGRADATIONS.index("clean")]
    # The label is what was done to the crop: blur removes detail, noise adds it...
    assert demo.detail(images[demo.DEGRADATIONS.index("blur")]) < demo.detail(clean)
    assert demo.detail(images[demo.DEGRADATIONS.index("noise")]) > demo.detail(clean)
    # ...and all four are the same crop (their means agree).
    for image in images.values():
      assert abs(image.astype(float).mean() - clean.astype(float).mean()) < 3


def test_a_restarted_train_stream_continues_exactly_where_it_stopped(data_dir):
  config = data_config(data_dir)
  builder = input_pipeline.get_builder(config)
  n = builder.info.splits["train"].num_examples  # 44: batches of 16 straddle epoch boundaries.
  take = lambda start, k: list(input_pipeline.train_dataset(
      builder, config, global_batch=16, seed=3, start_step=start).take(k).as_numpy_iterator())
  full = take(0, 7)
  assert 7 * 16 > 2 * n
  for start in (2, 5):
    for a, b in zip(full[start:], take(start, 7 - start)):
      assert a.keys() == b.keys() == {"image", "label", "skipped"}
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
  # Each epoch is a new permutation of the whole split.
  labels = np.concatenate([b["label"] for b in full])
  assert sorted(labels[:n]) == sorted(labels[n:2 * n])
  assert full[0]["image"].shape == (16, 96, 96, 3) and full[0]["image"].dtype == np.uint8
  other_seed = list(input_pipeline.train_dataset(builder, config, global_batch=16, seed=4)
                    .take(1).as_numpy_iterator())[0]
  assert not np.array_equal(other_seed["image"], full[0]["image"])


@pytest.mark.parametrize("batch", [5, 16, 24])
def test_eval_counts_every_example_once_with_padding_masked(data_dir, batch):
  config = data_config(data_dir)
  builder = input_pipeline.get_builder(config)
  ds, num_steps = input_pipeline.eval_dataset(builder, config, global_batch=batch)
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == num_steps == -(-16 // batch)
  assert all(b["image"].shape == (batch, 96, 96, 3) for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])[mask]
  assert mask.sum() == 16
  assert sorted(labels) == sorted(int(e["label"]) for e in examples(data_dir, "test"))


def test_preprocessing_reaches_the_input_size_from_any_shape():
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (120, 200, 3), np.uint8))
  for name in input_pipeline.TRAIN_PREPROCESS:
    config = data_config(None, train_preprocess=name)
    out = input_pipeline.preprocess_train(image, tf.constant([1, 2], tf.int64), config)
    assert out.shape == (96, 96, 3) and out.dtype == tf.uint8
  out = input_pipeline.preprocess_eval(image, data_config(None, eval_crop_fraction=0.875))
  assert out.shape == (96, 96, 3)
  with pytest.raises(ValueError, match=r"unknown train_preprocess 'mixup'; valid: crop_flip"):
    input_pipeline.preprocess_train(image, tf.constant([1, 2], tf.int64),
                                    data_config(None, train_preprocess="mixup"))


def test_a_config_whose_classes_disagree_with_the_dataset_is_refused(data_dir):
  with pytest.raises(ValueError, match=r"config.num_classes=1000 but resizer_demo/tiny has 4"):
    input_pipeline.get_builder(data_config(data_dir), 1000)


def canonical(image):
  """The same key for an image and its mirror: at input 256, crop_flip only flips a demo image."""
  return min(image.tobytes(), image[:, ::-1].tobytes())


def as_host(monkeypatch, index, count=2):
  monkeypatch.setattr(jax, "process_count", lambda: count)
  monkeypatch.setattr(jax, "process_index", lambda: index)


def test_two_hosts_train_on_disjoint_shares_whose_union_is_the_split(data_dir, monkeypatch):
  config = data_config(data_dir, input_size=demo.SIZE)
  builder = input_pipeline.get_builder(config)
  everything = [canonical(e["image"]) for e in examples(data_dir, "train")]
  shares = []
  for index in (0, 1):
    as_host(monkeypatch, index)
    # Global batch 4 is 2 per host; 11 steps are one epoch of a host's 22 examples.
    batches = list(input_pipeline.train_dataset(builder, config, global_batch=4, seed=0)
                   .take(11).as_numpy_iterator())
    assert all(b["image"].shape == (2, demo.SIZE, demo.SIZE, 3) for b in batches)
    assert sum(b["skipped"].sum() for b in batches) == 0
    shares.append([canonical(image) for b in batches for image in b["image"]])
  assert len(set(shares[0])) == len(set(shares[1])) == 22  # Each example once per epoch.
  assert set(shares[0]).isdisjoint(shares[1])
  assert sorted(shares[0] + shares[1]) == sorted(everything)


def test_two_hosts_eval_an_odd_split_once_in_the_same_number_of_steps(data_dir, monkeypatch):
  config = data_config(data_dir, input_size=demo.SIZE, eval_split="test[:15]")
  builder = input_pipeline.get_builder(config)
  everything = [e["image"].tobytes() for e in examples(data_dir, "test")[:15]]
  seen, steps = [], []
  for index in (0, 1):
    as_host(monkeypatch, index)
    ds, num_steps = input_pipeline.eval_dataset(builder, config, global_batch=4)
    batches = list(ds.as_numpy_iterator())
    steps.append((num_steps, len(batches)))
    seen += [b["image"][i].tobytes() for b in batches for i in np.flatnonzero(b["mask"])]
    assert all(b["skipped"].sum() == 0 for b in batches)
  assert steps == [(4, 4), (4, 4)]  # 8 and 7 examples, 2 per host and step.
  assert sorted(seen) == sorted(everything)


@pytest.mark.parametrize("config_file", ["demo.py", "demo_iqa.py"])
def test_demo_eval_is_the_central_crop_at_native_resolution_like_train_crops(config_file):
  """The demos' labels live in pixel statistics: eval must not rescale what train does not."""
  config = load_config(f"{REPO}/configs/{config_file}")
  size = config.data.input_size
  image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8)
  out = input_pipeline.preprocess_eval(tf.constant(image), config.data).numpy()
  start = (256 - size) // 2
  np.testing.assert_array_equal(out, image[start:start + size, start:start + size])


@pytest.fixture(scope="module")
def sixteen_files(tmp_path_factory):
  """The tiny build in 16 files per split (the session's has one): shard 0 of 2 reads 8 of them."""
  path = str(tmp_path_factory.mktemp("tfds_16_files"))
  tfds.builder("resizer_demo/tiny", data_dir=path).download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=16))
  return path


def shard_orders(builder, config, epochs, seed=0, start_step=0):
  """The examples (as canonical() keys) shard 0 of 2 feeds, in order: a list per epoch."""
  n = builder.info.splits["train"].num_examples // 2
  batches = input_pipeline.train_dataset(builder, config, global_batch=2, seed=seed,
                                         start_step=start_step).take(epochs * n - start_step)
  keys = [canonical(b["image"][0]) for b in batches.as_numpy_iterator()]  # Row 0: shard 0.
  keys = [None] * start_step + keys
  return [keys[e * n:(e + 1) * n] for e in range(epochs)]


def test_each_epoch_reads_the_shard_files_in_a_new_order_not_only_through_the_buffer(sixteen_files):
  # A one-example buffer shuffles nothing: what changes between epochs is the order of the files.
  config = data_config(sixteen_files, input_size=demo.SIZE, shuffle_buffer=2, num_shards=2)
  builder = input_pipeline.get_builder(config)
  shard = tfds.even_splits("train", 2, drop_remainder=True)[0]
  assert len(builder.info.splits[shard].file_instructions) == 8
  stored = [canonical(e["image"]) for e in tfds.as_numpy(builder.as_dataset(split=shard))]
  first, second = shard_orders(builder, config, epochs=2)
  assert sorted(first) == sorted(second) == sorted(stored)  # Each epoch: each example once.
  assert first[:4] != second[:4]
  # A function of (seed, epoch) only: a new pipeline, or one restarted at epoch 1, reads the same.
  assert shard_orders(builder, config, epochs=2) == [first, second]
  assert shard_orders(builder, config, epochs=2, start_step=22)[1] == second
  assert shard_orders(builder, config, epochs=1, seed=1)[0][:4] != first[:4]


def test_stream_identity_names_what_fixes_the_train_stream_as_json(data_dir):
  config = data_config(data_dir)
  builder = input_pipeline.get_builder(config)
  identity = input_pipeline.stream_identity(builder, config, global_batch=16, seed=3, num_shards=2)
  assert json.loads(json.dumps(identity)) == identity == {
      "dataset": "resizer_demo/tiny", "version": str(builder.version), "split": "train",
      "num_examples": 44, "global_batch": 16, "num_shards": 2, "seed": 3, "shuffle_buffer": 1000,
      "order_scheme": input_pipeline.ORDER_SCHEME, "train_preprocess": "crop_flip",
      "input_size": 96}


def everything_under(path):
  return sorted(str(p) for p in pathlib.Path(path).rglob("*"))


def test_an_unknown_dataset_or_config_is_one_line_naming_the_close_ones(tmp_path):
  for name, message in (
      ("imagenet2013", r"unknown dataset data.name='imagenet2013'; close matches: imagenet2012, "),
      ("resizer_dmeo/tiny", r"unknown dataset data.name='resizer_dmeo/tiny'; close matches: "
                            r"resizer_demo"),
      ("resizer_demo/huge", r"unknown config 'huge' of resizer_demo in data.name="
                            r"'resizer_demo/huge'; valid: full, tiny$")):
    with pytest.raises(ValueError, match=f"^{message}") as error:
      input_pipeline.get_builder(data_config(str(tmp_path), name=name))
    assert "\n" not in str(error.value)
  assert everything_under(tmp_path) == []


@pytest.mark.parametrize("present", [(), ("AVA.txt",)])
def test_ava_without_its_download_names_the_directories_and_the_missing_files(tmp_path, present):
  data, manual = tmp_path / "tfds", tmp_path / "ava"
  data.mkdir()
  manual.mkdir()
  for name in present:
    (manual / name).write_text("")
  before = everything_under(tmp_path)
  with pytest.raises(FileNotFoundError) as error:
    input_pipeline.get_builder(data_config(str(data), name="ava", manual_dir=str(manual)), 10,
                               "iqa")
  message = str(error.value)
  missing = [f for f in ("AVA.txt", "aesthetics_image_lists/", "images/") if f not in present]
  assert message.startswith(
      f"ava is not prepared in data_dir={data} and its manual download is not in manual_dir="
      f"{manual}: expected AVA.txt, aesthetics_image_lists/, images/ there, missing: "
      f"{', '.join(missing)};")
  assert (f"tfds.builder('ava', data_dir='{data}').download_and_prepare(download_config="
          f"tfds.download.DownloadConfig(manual_dir='{manual}'))" in message)
  assert "docs/iqa.md" in message and "\n" not in message
  assert everything_under(tmp_path) == before
