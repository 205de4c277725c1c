"""ImageNet through the real TFDS `imagenet2012` builder, on a fake ILSVRC2012 manual dir of real
photographs with damaged files in both tars, then through our train and eval pipelines."""
import io
import pathlib
import re
import shutil

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from resizer_jax import bench
from resizer_jax.config_args import load_config
from resizer_jax.data import imagenet_fixture
from resizer_jax.data import input_pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 48  # The resizer's input resolution in these tests.

UNDECODABLE = ("truncated", "no_end_marker", "empty", "random")
# Where the damaged files sit among the 14 validation files (None: an intact photo).
VAL_LAYOUT = (None, "truncated", "cmyk", None, "empty", None, "png", "random", None, None, "gray",
              None, None, "no_end_marker")


def encode(array, fmt, mode=None):
  buf = io.BytesIO()
  image = Image.fromarray(array)
  (image.convert(mode) if mode else image).save(buf, format=fmt)
  return buf.getvalue()


def damaged(photo: np.ndarray, jpeg: bytes, seed: int) -> dict[str, bytes]:
  """File bytes by kind of damage: UNDECODABLE ones (every truncation of a JPEG fails
  tf.io.decode_image, which never sets try_recover_truncated, down to a missing end marker), then
  ones that decode to RGB whatever the .JPEG name says."""
  return {"truncated": jpeg[:len(jpeg) // 2], "no_end_marker": jpeg[:-2], "empty": b"",
          "random": np.random.default_rng(seed).bytes(2000),
          "cmyk": encode(photo, "JPEG", "CMYK"), "png": encode(photo, "PNG"),
          "gray": encode(photo, "JPEG", "L")}


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
  """12 intact + 7 damaged train files in 3 classes, 7 + 7 validation files, built by
  input_pipeline.get_builder: the real builder, with manual_dir from the config."""
  root = tmp_path_factory.mktemp("imagenet")
  manual = root / "manual"
  manual.mkdir()
  wnids = imagenet_fixture.wnids()[:3]
  jpegs = imagenet_fixture.photo_jpegs(12 + 7 + 1, min_side=64, max_side=160, seed=0)
  photo = np.asarray(Image.open(io.BytesIO(jpegs[-1])).convert("RGB"))
  train, kinds = {w: {} for w in wnids}, {}  # kinds: file name -> kind of damage.
  for i, data in enumerate(jpegs[:12]):
    train[wnids[i % 3]][f"{wnids[i % 3]}_{i + 1}.JPEG"] = data
  # Names outside the builder's own CMYK/PNG lists, so the builder stores their bytes as given.
  for k, (kind, data) in enumerate(damaged(photo, jpegs[-1], seed=1).items()):
    name = f"{wnids[k % 3]}_{900 + k}.JPEG"
    train[wnids[k % 3]][name], kinds[name] = data, kind
  val, intact, damaged_val = {}, iter(jpegs[12:19]), damaged(photo, jpegs[-1], seed=2)
  for k, kind in enumerate(VAL_LAYOUT):
    name = imagenet_fixture.val_name(k + 1)
    val[name] = next(intact) if kind is None else damaged_val[kind]
    if kind:
      kinds[name] = kind
  imagenet_fixture.write_train_tar(str(manual / imagenet_fixture.TRAIN_TAR), train)
  imagenet_fixture.write_val_tar(str(manual / imagenet_fixture.VAL_TAR), val)
  config = data_config(str(root / "tfds"), manual_dir=str(manual))
  return dict(builder=input_pipeline.get_builder(config, 1000), config=config, train=train,
              val=val, kinds=kinds, manual=manual,
              undecodable={name for name, kind in kinds.items() if kind in UNDECODABLE})


def data_config(data_dir, **overrides):
  config = load_config(f"{REPO}/configs/imagenet.py:input={SIZE}").data
  config.data_dir = data_dir
  config.update(overrides)
  return config


def stored(builder, split):
  """The examples in the order the pipeline reads them (no shuffling, no decoding)."""
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False, decoders={
      "image": tfds.decode.SkipDecoding()})))


def test_the_real_builder_reads_the_ilsvrc_layout_damaged_files_included(imagenet):
  builder = imagenet["builder"]
  assert builder.info.splits["train"].num_examples == 12 + 7
  assert builder.info.splits["validation"].num_examples == 14
  label = builder.info.features["label"]
  for e in stored(builder, "train"):
    name = e["file_name"].decode()
    assert label.int2str(e["label"]) == name.split("_")[0]
    assert e["image"] == imagenet["train"][name.split("_")[0]][name]  # Bytes as given.
  # Validation labels come from the builder's bundled list, in sorted file-name order.
  expected = dict(zip(sorted(imagenet["val"]), imagenet_fixture.validation_wnids(14)))
  for e in stored(builder, "validation"):
    name = e["file_name"].decode()
    assert label.int2str(e["label"]) == expected[name]
    assert e["image"] == imagenet["val"][name]


def test_without_manual_dir_the_archives_come_from_data_dir_downloads_manual(imagenet, tmp_path):
  default = tmp_path / "downloads" / "manual"
  default.mkdir(parents=True)
  shutil.copy(imagenet["manual"] / imagenet_fixture.VAL_TAR, default)
  builder = input_pipeline.get_builder(data_config(str(tmp_path)))
  assert builder.info.splits["validation"].num_examples == 14
  assert "train" not in builder.info.splits


def test_eval_skips_undecodable_files_and_keeps_converted_ones_as_rgb(imagenet):
  builder, config = imagenet["builder"], imagenet["config"]
  ds, num_steps = input_pipeline.eval_dataset(builder, config, global_batch=4)
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == num_steps == 4
  flat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  files = [e["file_name"].decode() for e in stored(builder, "validation")]
  kinds = [imagenet["kinds"].get(f) for f in files]
  bad = np.array([k in UNDECODABLE for k in kinds])
  np.testing.assert_array_equal(flat["mask"][:14], ~bad)
  np.testing.assert_array_equal(flat["skipped"][:14], bad.astype(np.int32))
  assert flat["skipped"].sum() == 4
  assert not flat["mask"][14:].any() and not flat["skipped"][14:].any()  # Padding.
  assert flat["image"].shape == (16, SIZE, SIZE, 3) and flat["image"].dtype == np.uint8
  photo = np.asarray(Image.open(io.BytesIO(imagenet["val"][files[kinds.index("png")]])))
  expected = input_pipeline.preprocess_eval(tf.constant(photo), config).numpy()
  np.testing.assert_array_equal(flat["image"][kinds.index("png")], expected)
  cmyk = flat["image"][kinds.index("cmyk")].astype(float)
  assert np.abs(cmyk - expected).mean() < 4  # JPEG re-encoding error only: no colour inversion.
  gray = flat["image"][kinds.index("gray")]
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  assert gray.std() > 10  # A real picture, not a blank.


def train_batches(builder, config, start, count, batch=3, seed=0):
  return list(input_pipeline.train_dataset(builder, config, global_batch=batch, seed=seed,
                                           start_step=start).take(count).as_numpy_iterator())


def test_train_counts_each_skip_and_restarts_exactly_at_any_step(imagenet):
  builder, config = imagenet["builder"], imagenet["config"]
  n = builder.info.splits["train"].num_examples  # 19: batches of 3 straddle epoch boundaries.
  full = train_batches(builder, config, 0, 13)
  skipped = np.concatenate([b["skipped"] for b in full])
  images = np.concatenate([b["image"] for b in full])
  # Each epoch has exactly the 4 undecodable files at 4 positions; each such position holds a copy
  # of the next decodable example.
  assert [skipped[e * n:(e + 1) * n].sum() for e in range(2)] == [4, 4]
  for i in np.flatnonzero(skipped[:-1]):
    np.testing.assert_array_equal(images[i], images[i + 1])
  labels = np.concatenate([b["label"] for b in full])[:n][skipped[:n] == 0]
  train_labels = [int(e["label"]) for e in stored(builder, "train")
                  if e["file_name"].decode() not in imagenet["undecodable"]]
  assert sorted(labels) == sorted(train_labels)
  # Restarts at every step, including ones whose first example is undecodable.
  starts = range(1, 13)
  assert any(skipped[s * 3] for s in starts) and any(skipped[s * 3 - 1] for s in starts)
  for start in starts:
    for a, b in zip(full[start:], train_batches(builder, config, start, 13 - start)):
      for key in ("image", "label", "skipped"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"start_step={start} {key}")


def test_a_host_share_that_never_decodes_is_an_error_not_a_hang(imagenet):
  builder = imagenet["builder"]
  files = [e["file_name"].decode() for e in stored(builder, "train")]
  bad = [k for k, f in enumerate(files) if f in imagenet["undecodable"]]
  config = data_config(None, train_split="+".join(f"train[{k}:{k + 1}]" for k in bad))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"8 examples in a row failed to decode"):
    train_batches(builder, config, 0, 1)


def test_two_hosts_count_every_eval_example_once_skips_included(imagenet, monkeypatch):
  builder, config = imagenet["builder"], imagenet["config"]
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  hosts = []
  for index in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    ds, num_steps = input_pipeline.eval_dataset(builder, config, global_batch=4)
    hosts.append((num_steps, list(ds.as_numpy_iterator())))
  assert hosts[0][0] == hosts[1][0] == len(hosts[0][1]) == len(hosts[1][1]) == 4  # 7 each.
  labels = [int(b["label"][i]) for _, bs in hosts for b in bs for i in np.flatnonzero(b["mask"])]
  good = [int(e["label"]) for e in stored(builder, "validation")
          if e["file_name"].decode() not in imagenet["undecodable"]]
  assert sorted(labels) == sorted(good)
  assert sum(b["skipped"].sum() for _, bs in hosts for b in bs) == 4


def line(values):
  """Intercept and slope of a least-squares line through values[8:-8] (away from the edges,
  where the resize kernel is cut off)."""
  j = np.arange(8, len(values) - 8)
  slope, intercept = np.polyfit(j, values[8:-8].astype(float), 1)
  return intercept, slope


def coordinate_image(h, w):
  """Red = column, green = row: each output pixel says where in the input it came from."""
  y, x = np.mgrid[:h, :w]
  return tf.constant(np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8))


def test_train_crop_is_8_to_100_percent_of_the_area_aspect_3_4_to_4_3_flipped_half_the_time():
  h, w = 180, 240
  image = coordinate_image(h, w)
  config = data_config(None)
  flips, boxes = 0, set()
  for seed in range(40):
    out = input_pipeline.preprocess_train(image, tf.constant([7, seed], tf.int64), config).numpy()
    assert out.shape == (SIZE, SIZE, 3)
    x = out[SIZE // 2, :, 0]
    flipped = line(x)[1] < 0
    flips += flipped
    a, b = line(x[::-1] if flipped else x)
    # A crop [x0, x0 + cw) resized to SIZE: output column j samples x0 + (j + .5) * cw / SIZE - .5.
    cw, x0 = b * SIZE, a + 0.5 - 0.5 * b
    a, b = line(out[:, SIZE // 2, 1])
    ch, y0 = b * SIZE, a + 0.5 - 0.5 * b
    assert -0.3 < x0 and x0 + cw < w + 0.3 and -0.3 < y0 and y0 + ch < h + 0.3
    assert 0.08 * h * w * 0.98 < cw * ch < h * w * 1.02
    assert 3 / 4 * 0.97 < cw / ch < 4 / 3 * 1.03
    boxes.add((round(x0), round(y0), round(cw), round(ch)))
  assert 10 <= flips <= 30 and len(boxes) == 40


def test_eval_resizes_the_shorter_side_to_input_over_0_875_then_crops_the_centre():
  h, w = 180, 240
  config = data_config(None)
  assert config.eval_crop_fraction == 0.875
  out = input_pipeline.preprocess_eval(coordinate_image(h, w), config).numpy()
  new_h, new_w = round(SIZE / 0.875), round(w * SIZE / 0.875 / h)  # 55 x 73
  top, left = (new_h - SIZE) // 2, (new_w - SIZE) // 2
  for values, old, new, offset in ((out[SIZE // 2, :, 0], w, new_w, left),
                                   (out[:, SIZE // 2, 1], h, new_h, top)):
    a, b = line(values)
    np.testing.assert_allclose(b, old / new, rtol=0.01)
    np.testing.assert_allclose(a, (offset + 0.5) * old / new - 0.5, atol=0.3)


def test_input_benchmark_runs_on_the_imagenet_config(imagenet):
  result = bench.main(["--workload=input", f"--config={REPO}/configs/imagenet.py:input={SIZE}",
                       f"--data_dir={imagenet['config'].data_dir}", "--batch=4", "--steps=2",
                       "--warmup=1"])
  assert result["input"] == SIZE and result["images_per_s"] > 0


def everything_under(path):
  return sorted(str(p) for p in pathlib.Path(path).rglob("*"))


@pytest.mark.parametrize("manual", ["default", "given", "only the train tar"])
def test_imagenet_without_its_archives_is_one_error_naming_the_directories_and_files(
    imagenet, tmp_path, manual):
  data = tmp_path / "tfds"
  data.mkdir()
  manual_dir = data / "downloads" / "manual" if manual == "default" else tmp_path / "ilsvrc"
  if manual == "only the train tar":  # TFDS's own error: a NotFoundError from deep inside.
    manual_dir.mkdir()
    (manual_dir / imagenet_fixture.TRAIN_TAR).write_bytes(b"")
  config = data_config(str(data), manual_dir=None if manual == "default" else str(manual_dir))
  before = everything_under(tmp_path)
  with pytest.raises(FileNotFoundError) as error:
    input_pipeline.get_builder(config, 1000)
  message = str(error.value)
  missing = "ILSVRC2012_img_val.tar" + ("" if manual == "only the train tar" else
                                        ", ILSVRC2012_img_train.tar")
  assert message.startswith(
      f"imagenet2012 is not prepared in data_dir={data} and its manual download is not in "
      f"manual_dir={manual_dir}: expected ILSVRC2012_img_val.tar and, for the train split, "
      f"ILSVRC2012_img_train.tar there, missing: {missing};")
  assert "docs/data.md" in message and "\n" not in message
  assert everything_under(tmp_path) == before  # Nothing written: no TFDS folders either.
  # Without preparing (the trainer's --plan), an unprepared dataset is no error.
  assert not input_pipeline.get_builder(config, prepare=False).is_prepared()
  if manual == "given":  # The command the message gives prepares it once the archive is there.
    manual_dir.mkdir()
    shutil.copy(imagenet["manual"] / imagenet_fixture.VAL_TAR, manual_dir)
    exec(re.search(r'python -c "([^"]+)"', message).group(1))  # pylint: disable=exec-used
    builder = input_pipeline.get_builder(config, prepare=False)
    assert builder.is_prepared() and builder.info.splits["validation"].num_examples == 14
