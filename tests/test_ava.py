"""The `ava` builder on a made-up AVA release (made-up ids and votes, real shipped photos), its offline
IQA demo stand-in, and the IQA configs."""
import functools
import io
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
import skimage.data
from PIL import Image
import tensorflow_datasets as tfds

from resizer_jax import config_args
from resizer_jax import models
from resizer_jax.data import ava
from resizer_jax.data import demo_ava

# Values, not speed, are under test: XLA:CPU's older emitters without optimisation compile much faster.
jit = functools.partial(jax.jit, compiler_options={"xla_cpu_use_fusion_emitters": False,
                                                   "xla_backend_optimization_level": 0})

# Made-up rows: id -> (votes for scores 1..10, semantic tags, challenge).
ROWS = {
    101: ([0, 1, 2, 5, 10, 8, 3, 1, 0, 0], (15, 21), 1396),
    202: ([3, 0, 0, 0, 0, 0, 0, 0, 0, 1], (0, 0), 7),
    303: ([0, 0, 0, 0, 0, 0, 0, 0, 0, 4], (2, 0), 12),
    404: ([1] * 10, (0, 0), 1),             # Listed; no image file.
    505: ([0, 0, 1, 2, 3, 2, 1, 0, 0, 0], (0, 0), 1),  # Listed; the image is truncated.
    606: ([0, 0, 0, 2, 2, 0, 0, 0, 0, 0], (1, 1), 3),
    808: ([5] * 10, (0, 0), 1),             # Has an image, in no list.
    909: ([0] * 10, (0, 0), 1),             # Listed; no votes.
}
TRAIN_LIST = [101, 202, 303, 404, 505, 101]  # 101 twice: lists are deduplicated.
TEST_LIST = [606, 707, 909]  # 707 is not in AVA.txt.


def _jpeg(array, **kwargs):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="JPEG", **kwargs)
  return buf.getvalue()


def _photo(name, size):
  return np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize(size, Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """A made-up AVA release in the real layout: AVA.txt, aesthetics_image_lists/, images/."""
  root = tmp_path_factory.mktemp("ava_manual")
  (root / "images").mkdir()
  (root / "aesthetics_image_lists").mkdir()
  lines = [f"{i} {image_id} {' '.join(map(str, v))} {t[0]} {t[1]} {c}"
           for i, (image_id, (v, t, c)) in enumerate(ROWS.items(), start=1)]
  (root / "AVA.txt").write_text("\n".join(lines) + "\n\n")
  (root / "aesthetics_image_lists" / "generic_ls_train.jpgl").write_text(
      "\n".join(map(str, TRAIN_LIST)) + "\n")
  (root / "aesthetics_image_lists" / "generic_test.jpgl").write_text(
      "\n".join(map(str, TEST_LIST)) + "\n")
  files = {
      101: _jpeg(_photo("astronaut", (96, 64)), quality=90),  # Landscape RGB.
      202: _jpeg(_photo("camera", (48, 80))),  # Portrait greyscale: one channel in the file.
      505: _jpeg(_photo("coffee", (64, 64)))[:300],  # Cut short.
      606: _jpeg(_photo("chelsea", (72, 56))),
      808: _jpeg(_photo("rocket", (64, 48))),
  }
  buf = io.BytesIO()  # 303: a TIFF under a .jpg name, which TF cannot decode: re-encoded.
  Image.fromarray(_photo("coins", (40, 40))).save(buf, format="TIFF")
  files[303] = buf.getvalue()
  for image_id, data in files.items():
    (root / "images" / f"{image_id}.jpg").write_bytes(data)
  return root, files


@pytest.fixture(scope="module")
def built(release, tmp_path_factory):
  root, files = release
  data_dir = str(tmp_path_factory.mktemp("tfds_ava"))
  builder = tfds.builder("ava", data_dir=data_dir)
  handler = _Records()
  logging.getLogger().addHandler(handler)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  finally:
    logging.getLogger().removeHandler(handler)
  return builder, files, data_dir, handler.messages


class _Records(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def _by_id(builder, split, **kwargs):
  return {int(e["image_id"]): e for e in tfds.as_numpy(builder.as_dataset(split=split, **kwargs))}


def test_examples_carry_votes_distribution_mean_and_id(built):
  builder, files, _, _ = built
  assert builder.info.full_name == "ava/default/1.0.0"
  train, test = _by_id(builder, "train"), _by_id(builder, "test")
  assert sorted(train) == [101, 202, 303] and sorted(test) == [606]
  for image_id, e in {**train, **test}.items():
    votes, tags, challenge = ROWS[image_id]
    np.testing.assert_array_equal(e["votes"], votes)
    np.testing.assert_allclose(e["distribution"], np.array(votes) / sum(votes), rtol=1e-6)
    assert e["distribution"].sum() == pytest.approx(1.0, abs=1e-6)
    mean = sum((i + 1) * v for i, v in enumerate(votes)) / sum(votes)
    assert e["mean_score"] == pytest.approx(mean, rel=1e-6)
    np.testing.assert_array_equal(e["semantic_tags"], tags)
    assert e["challenge"] == challenge
  assert train[202]["mean_score"] == pytest.approx(3.25)  # (3 * 1 + 1 * 10) / 4, worked by hand.
  # Images keep their size and come out RGB, the greyscale one too.
  assert train[101]["image"].shape == (64, 96, 3)
  assert train[202]["image"].shape == (80, 48, 3)
  assert test[606]["image"].shape == (56, 72, 3)
  grey = train[202]["image"]
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  # The TIFF was re-encoded as JPEG; the coins are still there.
  coins = _photo("coins", (40, 40)).astype(float)
  assert train[303]["image"].shape == (40, 40, 3)
  assert np.abs(train[303]["image"][..., 0] - coins).mean() < 3
  # A JPEG is stored as the release's bytes, not re-encoded.
  raw = _by_id(builder, "train", decoders={"image": tfds.decode.SkipDecoding()})
  assert raw[101]["image"] == files[101]


def test_unusable_listed_ids_are_skipped_and_counted(built):
  builder, _, data_dir, messages = built
  want = {"train": {"missing_image": 1, "unreadable_image": 1, "not_in_ava_txt": 0, "no_votes": 0},
          "test": {"missing_image": 0, "unreadable_image": 0, "not_in_ava_txt": 1, "no_votes": 1}}
  assert builder.info.metadata["skipped"] == want
  # Kept with the prepared dataset, so a later reader sees it too.
  assert tfds.builder("ava", data_dir=data_dir).info.metadata["skipped"] == want
  assert "ava train: skipped 2 of 5 listed ids (missing_image: 1, unreadable_image: 1)" in messages
  assert "ava test: skipped 2 of 3 listed ids (not_in_ava_txt: 1, no_votes: 1)" in messages
  assert builder.info.splits["train"].num_examples == 3
  assert builder.info.splits["test"].num_examples == 1


def test_other_lists_by_config_and_errors_name_the_problem(release, tmp_path):
  root, _ = release
  manual = tfds.download.DownloadConfig(manual_dir=str(root))
  # The lists are config-able: here train and test swap.
  swapped = ava.AvaConfig(name="swapped", train_list="generic_test", test_list="generic_ls_train")
  builder = tfds.builder("ava", config=swapped, data_dir=str(tmp_path / "a"))
  builder.download_and_prepare(download_config=manual)
  assert builder.info.splits["train"].num_examples == 1
  missing = ava.AvaConfig(name="missing_list", train_list="generic_ss_train")
  with pytest.raises(FileNotFoundError, match="generic_ss_train.jpgl; lists there: "
                     "generic_ls_train, generic_test"):
    tfds.builder("ava", config=missing, data_dir=str(tmp_path / "b")).download_and_prepare(
        download_config=manual)
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "AVA.txt").write_text("1 101 0 1 2 3\n")
  with pytest.raises(ValueError, match="line 1 has 6 columns, expected 15"):
    ava.read_ava_txt(tmp_path / "bad" / "AVA.txt")
  with pytest.raises(FileNotFoundError, match="no AVA.txt"):
    tfds.builder("ava", data_dir=str(tmp_path / "c")).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))


# ------------------------------------------------------------------------------------------------
# The offline stand-in: generated by the `ava` builder itself, read by the same code.
# ------------------------------------------------------------------------------------------------
def test_demo_tiny_builds_offline_through_the_real_builder(tmp_path):
  builder = tfds.builder("ava/demo_tiny", data_dir=str(tmp_path))
  builder.download_and_prepare()
  splits = {s: _by_id(builder, s) for s in ("train", "test")}
  assert len(splits["train"]) == 22 and len(splits["test"]) == 8
  assert builder.info.metadata["skipped"]["train"] == dict.fromkeys(ava.SKIP_REASONS, 0)
  truth = demo_ava.read_truth(tmp_path / "downloads" / "ava_demo" / "demo_tiny")
  photos = {s: {truth[i][0] for i in splits[s]} for s in splits}
  assert photos["train"].isdisjoint(photos["test"])  # Test scores unseen scenes.
  examples = {**splits["train"], **splits["test"]}
  assert set(examples) == set(truth)
  for e in examples.values():
    assert e["image"].shape == (256, 256, 3)
    assert e["votes"].sum() >= demo_ava.VOTERS[0]
  # The vote histograms follow the hidden score (set by the two strengths), as documented.
  ids = sorted(examples)
  means = [examples[i]["mean_score"] for i in ids]
  hidden = [truth[i][4] for i in ids]
  # The documented score, written out here: q = 7.5 - 2.5 h - 2.5 s, so 7.5 clean, 2.5 at full
  # strength of both, 5 where h + s = 1 (demo_truth.tsv keeps 6 decimals).
  assert hidden == pytest.approx([7.5 - 2.5 * (truth[i][2] + truth[i][3]) for i in ids], abs=5e-6)
  assert [demo_ava.hidden_score(s, h) for s, h in ((0, 0), (1, 1), (0.3, 0.7), (0.2, 0.4))] == (
      pytest.approx([7.5, 2.5, 5.0, 6.0]))
  assert all(0 <= truth[i][2] <= 1 and 0 <= truth[i][3] <= 1 for i in ids)
  assert {truth[i][1] for i in ids} <= {"blur", "noise", "jpeg", "downscale"}
  assert builder.version == ava.DEMO_VERSION
  assert stats.spearmanr(means, hidden)[0] > 0.9
  assert np.abs(np.array(means) - hidden).mean() < 0.5


def test_demo_release_is_deterministic_and_honestly_labelled(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  demo_ava.write_release(a, "tiny", seed=0)
  demo_ava.write_release(b, "tiny", seed=0)
  files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
  assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
  for f in files:
    assert (a / f).read_bytes() == (b / f).read_bytes(), f
  assert "not aesthetics" in (a / "README.txt").read_text()
  assert "SIMULATED" in (a / "README.txt").read_text()
  with pytest.raises(ValueError, match="huge.*full, tiny"):
    demo_ava.write_release(tmp_path / "c", "huge")


# ------------------------------------------------------------------------------------------------
# The configs: task=iqa, a 10-way head with NIMA's dropout, on the backbones the paper used.
# ------------------------------------------------------------------------------------------------
def test_demo_iqa_config_builds_a_10_way_model_with_dropout():
  config = config_args.load_config("configs/demo_iqa.py:tiny")
  assert config.task == "iqa" and config.num_classes == 10
  assert config.data.name == "ava/demo_tiny" and config.backbone.dropout_rate == 0.75
  assert config_args.load_config("configs/demo_iqa.py").data.name == "ava/demo"
  config.resizer.name = "bilinear"  # The head is under test, and a fixed resizer compiles faster.
  model = models.from_config(config)
  images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  variables = jit(model.init)(jax.random.key(0), images)

  @jit
  def train_logits(rng):
    return model.apply(variables, images, train=True, mutable=["batch_stats"],
                       rngs={"dropout": rng})[0]

  assert train_logits(jax.random.key(1)).shape == (2, 10)
  # Dropout is on in training (two rngs, two answers) and off in eval.
  assert not np.allclose(train_logits(jax.random.key(1)), train_logits(jax.random.key(2)))
  eval_logits = jit(model.apply)
  np.testing.assert_array_equal(eval_logits(variables, images), eval_logits(variables, images))


@pytest.mark.parametrize("backbone", ["inception_v2", "densenet121", "efficientnet_b0"])
def test_ava_config_has_the_nima_head_on_the_papers_backbones(backbone):
  config = config_args.load_config(f"configs/ava.py:backbone={backbone},resizer=bicubic")
  assert config.task == "iqa" and config.data.name == "ava" and config.resizer.name == "bicubic"
  model = models.from_config(config)
  assert model.backbone.dropout_rate == 0.75
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert shapes["params"]["backbone"]["head"]["kernel"].shape[-1] == 10
  finetune = config_args.load_config(f"configs/ava.py:backbone={backbone},finetune")
  assert finetune.init_head and not config.init_head
  assert finetune.optimizer.learning_rate < config.optimizer.learning_rate


def test_iqa_config_mistakes_are_named():
  config = config_args.load_config("configs/demo_iqa.py:tiny")
  config.num_classes = 1000
  with pytest.raises(ValueError, match="task=iqa needs num_classes=10"):
    models.from_config(config)
  config = config_args.load_config("configs/demo_iqa.py:tiny")
  config.task = "aesthetics"
  with pytest.raises(ValueError, match="unknown task 'aesthetics'; valid: classification, iqa"):
    models.from_config(config)
  config = config_args.load_config("configs/demo_iqa.py:tiny")
  config.backbone.drop_path_rate = 0.1  # An EfficientNet option; resnet_tiny has none.
  with pytest.raises(ValueError, match="drop_path_rate is not an option of resnet_tiny; valid: "):
    models.from_config(config)
