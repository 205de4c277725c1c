"""resizer_jax.convert --source=tfslim: a TF-slim inception_v2 graph's eval logits, from ours.

The reference is a TF-slim graph written here from the public layout of tensorflow/models'
`research/slim/nets/inception_v2.py` (defaults: separable stem, depth_multiplier 1, 1001 classes)
under the BatchNorm of `inception_utils.inception_arg_scope()`, with its own tables, not ours: a
width or scope we got wrong is a test failure, not a shared mistake. Its weights are slim's random
initialisation, with random BatchNorm statistics and offsets and random biases (none is left at its
zero or one), so that a mix-up of BatchNorm's tensors, of a kernel's layout, of the background class
or of the normalization shows in the logits.
"""
import functools
import os
import re
import subprocess
import sys

from helpers import REPO
import jax
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops
import tf_slim as slim

import resizer_jax
from resizer_jax import checkpoint
from resizer_jax import config_args
from resizer_jax import convert
from resizer_jax import export
from resizer_jax import models
from resizer_jax import preflight

TOLERANCE = 1e-4  # Max |logit difference| / max |logit|, float32 on both sides.
# The public file's inception modules: (scope, 1x1, (reduce, 3x3), (reduce, 3x3 twice), pool,
# pool 1x1); the grid reductions: (scope, (reduce, 3x3 stride 2), (reduce, 3x3, 3x3 stride 2)).
SLIM_MODULES = (
    ("Mixed_3b", 64, (64, 64), (64, 96), "Avg", 32),
    ("Mixed_3c", 64, (64, 96), (64, 96), "Avg", 64),
    ("Mixed_4a", (128, 160), (64, 96)),
    ("Mixed_4b", 224, (64, 96), (96, 128), "Avg", 128),
    ("Mixed_4c", 192, (96, 128), (96, 128), "Avg", 128),
    ("Mixed_4d", 160, (128, 160), (128, 160), "Avg", 96),
    ("Mixed_4e", 96, (128, 192), (160, 192), "Avg", 96),
    ("Mixed_5a", (128, 192), (192, 256)),
    ("Mixed_5b", 352, (192, 320), (160, 224), "Avg", 128),
    ("Mixed_5c", 352, (192, 320), (192, 224), "Max", 128),
)


def slim_inception_v2(images):
  """TF-slim's inception_v2 logits (1001 classes) of `images` in [-1, 1], eval mode, in the graph
  being built."""
  trunc_normal = lambda stddev: tf.compat.v1.truncated_normal_initializer(0.0, stddev)
  uniform = tf.compat.v1.random_uniform_initializer
  batch_norm = dict(
      decay=0.9997, epsilon=0.001, scale=False,  # inception_arg_scope()'s.
      # The arg scope's updates_collections=UPDATE_OPS takes slim's other BatchNorm, a Keras layer
      # from tf-keras, whose package requires the `tensorflow` distribution: installed beside the
      # pinned tensorflow-cpu, its CUDA build overwrites binaries of ours. The fused one computes
      # the same eval graph (the same logits to the bit, checked with tf-keras 2.21.0) from the
      # same variables; the two differ only in how training updates the running statistics.
      fused=True, updates_collections=None,
      # Random, where a trained checkpoint's are: slim initialises them to 0 and 1.
      param_initializers={"beta": uniform(-0.5, 0.5), "moving_mean": uniform(-0.5, 0.5),
                          "moving_variance": uniform(0.5, 2.0)})
  conv = slim.conv2d
  with slim.arg_scope([slim.conv2d], weights_initializer=slim.variance_scaling_initializer(),
                      activation_fn=tf.nn.relu, normalizer_fn=slim.batch_norm,
                      normalizer_params=batch_norm), \
       slim.arg_scope([slim.batch_norm, slim.dropout], is_training=False), \
       slim.arg_scope([slim.separable_conv2d, slim.conv2d],
                      biases_initializer=uniform(-0.5, 0.5)), \
       tf.compat.v1.variable_scope("InceptionV2"):
    with slim.arg_scope([slim.conv2d, slim.max_pool2d, slim.avg_pool2d], stride=1, padding="SAME"):
      # Outside the arg scope of slim.conv2d: a bias, no BatchNorm.
      net = slim.separable_conv2d(images, 64, [7, 7], depth_multiplier=8, stride=2,
                                  weights_initializer=trunc_normal(1.0), scope="Conv2d_1a_7x7")
      net = slim.max_pool2d(net, [3, 3], stride=2, scope="MaxPool_2a_3x3")
      net = conv(net, 64, [1, 1], weights_initializer=trunc_normal(0.1), scope="Conv2d_2b_1x1")
      net = conv(net, 192, [3, 3], scope="Conv2d_2c_3x3")
      net = slim.max_pool2d(net, [3, 3], stride=2, scope="MaxPool_3a_3x3")
      for scope, *depths in SLIM_MODULES:
        with tf.compat.v1.variable_scope(scope):
          if len(depths) == 2:
            (r0, d0), (r1, d1) = depths
            with tf.compat.v1.variable_scope("Branch_0"):
              b0 = conv(conv(net, r0, [1, 1], scope="Conv2d_0a_1x1"), d0, [3, 3], stride=2,
                        scope="Conv2d_1a_3x3")
            with tf.compat.v1.variable_scope("Branch_1"):
              b1 = conv(conv(net, r1, [1, 1], scope="Conv2d_0a_1x1"), d1, [3, 3],
                        scope="Conv2d_0b_3x3")
              b1 = conv(b1, d1, [3, 3], stride=2, scope="Conv2d_1a_3x3")
            with tf.compat.v1.variable_scope("Branch_2"):
              b2 = slim.max_pool2d(net, [3, 3], stride=2, scope="MaxPool_1a_3x3")
            net = tf.concat([b0, b1, b2], 3)
            continue
          d0, (r1, d1), (r2, d2), pool, d3 = depths
          with tf.compat.v1.variable_scope("Branch_0"):
            b0 = conv(net, d0, [1, 1], scope="Conv2d_0a_1x1")
          with tf.compat.v1.variable_scope("Branch_1"):
            b1 = conv(conv(net, r1, [1, 1], scope="Conv2d_0a_1x1"), d1, [3, 3],
                      scope="Conv2d_0b_3x3")
          with tf.compat.v1.variable_scope("Branch_2"):
            b2 = conv(conv(net, r2, [1, 1], scope="Conv2d_0a_1x1"), d2, [3, 3],
                      scope="Conv2d_0b_3x3")
            b2 = conv(b2, d2, [3, 3], scope="Conv2d_0c_3x3")
          with tf.compat.v1.variable_scope("Branch_3"):
            b3 = {"Avg": slim.avg_pool2d, "Max": slim.max_pool2d}[pool](
                net, [3, 3], scope=f"{pool}Pool_0a_3x3")
            b3 = conv(b3, d3, [1, 1], scope="Conv2d_0b_1x1")
          net = tf.concat([b0, b1, b2, b3], 3)
    with tf.compat.v1.variable_scope("Logits"):
      net = slim.avg_pool2d(net, [7, 7], padding="VALID", scope="AvgPool_1a_7x7")
      net = slim.dropout(net, keep_prob=0.8, scope="Dropout_1b")
      logits = conv(net, 1001, [1, 1], activation_fn=None, normalizer_fn=None,
                    scope="Conv2d_1c_1x1")
      return tf.squeeze(logits, [1, 2], name="SpatialSqueeze")


@pytest.fixture(scope="module")
def images():
  """Pixel noise, and 32 px blocks: two inputs different enough for a random network to tell."""
  rng = np.random.default_rng(0)
  blocks = np.kron(rng.integers(0, 256, (7, 7, 3)), np.ones((32, 32, 1), np.int64))
  return np.stack([rng.integers(0, 256, (224, 224, 3)), blocks]).astype(np.uint8)


@pytest.fixture(scope="module")
def slim_checkpoint(images, tmp_path_factory):
  """{prefix (V2), v1 (the one file of the same checkpoint in the V1 format of slim's published
  ones), logits (1001 per image, slim's eval graph on `images` / 127.5 - 1)}."""
  root = tmp_path_factory.mktemp("tfslim")
  (root / "v1").mkdir()
  with pytest.MonkeyPatch.context() as patch, tf.Graph().as_default():
    # tf-slim 1.1.0's fused BatchNorm checks `ops.Tensor`, which TensorFlow 2.21 no longer has.
    patch.setattr(ops, "Tensor", tf.Tensor, raising=False)
    tf.compat.v1.set_random_seed(0)
    logits = slim_inception_v2(tf.constant(images / np.float32(127.5) - 1, tf.float32))
    tf.compat.v1.train.get_or_create_global_step()  # As in a checkpoint that slim trained.
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      out = {"logits": session.run(logits),
             "prefix": tf.compat.v1.train.Saver().save(session, str(root / "model.ckpt")),
             "v1": tf.compat.v1.train.Saver(write_version=tf.compat.v1.train.SaverDef.V1).save(
                 session, str(root / "v1" / "inception_v2.ckpt"), write_meta_graph=False)}
  return out


@pytest.fixture(scope="module")
def converted(slim_checkpoint, tmp_path_factory):
  """The run directory converted from the checkpoint (the command line's success is
  test_convert.py's; its failure in one line is below), and its Run."""
  workdir = str(tmp_path_factory.mktemp("converted") / "inception_v2")
  convert.convert("tfslim", "inception_v2", slim_checkpoint["prefix"], workdir)
  return workdir, resizer_jax.load(workdir)


def relative_difference(got, want):
  return float(np.abs(got - want).max() / np.abs(want).max())


def test_logits_equal_the_slim_graphs_without_the_background_class(
    converted, slim_checkpoint, images, record_property):
  _, run = converted
  assert (run.config.backbone.name, run.config.resizer.name, run.config.num_classes,
          run.config.normalization, run.config.backbone.stem_batch_norm) == (
              "inception_v2", "bilinear", 1000, "inception", False)
  want = slim_checkpoint["logits"][:, 1:]
  assert np.abs(want).max() > 1 and np.abs(want[0] - want[1]).max() > 1  # Not washed out.
  got = run.predict(images, preprocess=None)  # Already the 224 px slim takes.
  diff = relative_difference(got, want)
  print(f"inception_v2: max abs logit difference / max abs logit {diff:.2e} "
        f"(logits up to {np.abs(want).max():.1f})")
  record_property("max_relative_logit_difference", diff)
  assert diff <= TOLERANCE


def test_a_v1_checkpoint_reads_as_the_same_tensors(slim_checkpoint):
  v1, v2 = (convert.read_checkpoint(slim_checkpoint[k]) for k in ("v1", "prefix"))
  assert sorted(v1) == sorted(v2) and "global_step" in v1
  for name, value in v2.items():
    np.testing.assert_array_equal(v1[name], value, err_msg=name)


def test_the_export_serves_the_same_logits(converted, slim_checkpoint, images):
  _, run = converted
  serve, variables = export.serving_function(run, "model")
  got = np.asarray(serve(variables, images))
  assert relative_difference(got, slim_checkpoint["logits"][:, 1:]) <= TOLERANCE


@pytest.mark.parametrize("normalization", ["imagenet", "inception"])
def test_resize_pixels_standardises_as_the_model_does(normalization):
  """run.resize (and the exported resizer) answer in pixels what the backbone is given: the learned
  resizer (not linear, unlike a fixed one) applied to the run's standardised pixels."""
  model = models.ResizedModel(
      resizer=models.get_resizer("learned", output_size=(8, 8), antialias=False),
      backbone=models.get_backbone("resnet_tiny", 4), normalization=normalization)
  pixels = np.random.default_rng(1).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
  mean, std = (np.asarray(s, np.float32) for s in models.NORMALIZATIONS[normalization])
  # Jitted: eagerly, every op compiles by itself (twice as long here).
  resizer_vars = jax.jit(model.resizer.init)(jax.random.key(0), pixels)
  want = jax.jit(model.resizer.apply)(resizer_vars, (pixels - mean) / std) * std + mean
  got = jax.jit(functools.partial(models.resize_pixels, model))(
      {k: {"resizer": v} for k, v in resizer_vars.items()}, pixels)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_muller_works_in_the_runs_normalization():
  config = config_args.load_config(f"{REPO}/configs/imagenet.py:resizer=muller")
  config.normalization = "inception"
  resizer = models.from_config(config).resizer
  assert tuple(resizer.pixel_mean) == tuple(resizer.pixel_std) == (127.5,) * 3


@pytest.mark.parametrize("arg", [
    # The Table 1 baseline from published weights (configs/imagenet.py's pretrained argument), and
    # the paper's recipe fine-tuned from it.
    "configs/imagenet.py:backbone=inception_v2,resizer=bilinear,input=224,target=224,"
    "pretrained={root}/{{backbone}}",
    "configs/imagenet.py:backbone=inception_v2,resizer=bilinear,input=224,target=224,finetune",
])
def test_a_warm_start_from_it_computes_the_checkpoints_logits(arg, converted, slim_checkpoint,
                                                              images):
  """The converted run recorded slim's stem and normalization: a run warm-started from it that
  leaves them unset takes them (resizer_jax/preflight.py), so its weights compute slim's logits."""
  workdir, run = converted
  config = config_args.load_config(f"{REPO}/{arg.format(root=os.path.dirname(workdir))}")
  if "finetune" in arg:
    config.init_from = workdir
  assert config.init_from == workdir
  resolved = preflight.resolve(config)
  assert (resolved.normalization, resolved.backbone.stem_batch_norm) == ("inception", False)
  assert config.normalization is None and "stem_batch_norm" not in config.backbone
  got = np.asarray(models.from_config(resolved).apply(run.variables, images, train=False))
  assert relative_difference(got, slim_checkpoint["logits"][:, 1:]) <= TOLERANCE


def test_the_ava_baseline_takes_it_by_argument(converted):
  workdir, _ = converted
  config = config_args.load_config(f"{REPO}/configs/ava.py:backbone=inception_v2,resizer=bicubic,"
                                   f"imagenet={os.path.dirname(workdir)}/{{backbone}}")
  assert config.init_from == workdir
  resolved = preflight.resolve(config)
  assert (resolved.normalization, resolved.backbone.stem_batch_norm) == ("inception", False)
  preflight.check_model(resolved)  # A 10-way IQA head on it builds.


def test_a_conflicting_normalization_is_refused_in_one_line(converted):
  workdir, _ = converted
  config = config_args.load_config(f"{REPO}/configs/imagenet.py:backbone=inception_v2,finetune")
  config.init_from, config.normalization = workdir, "imagenet"
  with pytest.raises(ValueError, match=re.escape(
      f"config.normalization='imagenet' but the weights of {workdir} were trained on "
      "normalization='inception' inputs, and compute other outputs on others; drop "
      "--config.normalization (it is carried) or give 'inception'")):
    preflight.resolve(config)
  config.normalization = "slim"
  with pytest.raises(ValueError, match=r"^unknown config.normalization 'slim'; valid: imagenet, "
                                       r"inception$"):
    models.from_config(config)


def old_run(tmp_path):
  """A workdir whose checkpoint was saved before config.normalization existed (its config lacks the
  field), of a small model: a real Orbax save of its exact structure."""
  config = config_args.load_config(f"{REPO}/configs/imagenet.py:backbone=resnet_tiny,"
                                   "resizer=bilinear,input=32,target=32")
  variables = jax.eval_shape(models.from_config(config).init, jax.random.key(0),
                             np.zeros((1, 32, 32, 3), np.uint8))
  del config.normalization
  workdir = str(tmp_path / "old")
  with checkpoint.manager(workdir, create=True) as mngr:
    checkpoint.save(mngr, 1, {"step": np.int32(1), **jax.tree.map(
        lambda s: np.zeros(s.shape, s.dtype), variables)}, config)
    mngr.wait_until_finished()
  assert "normalization" not in checkpoint.saved_config(workdir)
  return workdir


def test_a_run_saved_before_the_field_was_standardised_as_imagenet(tmp_path):
  workdir = old_run(tmp_path)
  run = resizer_jax.load(workdir)
  assert run.config.normalization == run.model.normalization == "imagenet"
  config = config_args.load_config(f"{REPO}/configs/imagenet.py:backbone=resnet_tiny,finetune")
  assert config.normalization is None
  # Resumed (its own checkpoint) or warm-started from: the same model, the default statistics.
  assert preflight.resolve(config, workdir=workdir).normalization == "imagenet"
  config.init_from = workdir
  assert preflight.resolve(config).normalization == "imagenet"
  config.normalization = "inception"
  with pytest.raises(ValueError, match=r"trained on normalization='imagenet' inputs"):
    preflight.resolve(config)
  config.init_from = None  # A resume that changes it, too.
  with pytest.raises(ValueError, match=rf"the weights of {re.escape(workdir)} were trained on "):
    preflight.resolve(config, workdir=workdir)
  # Without weights to start from: the default, or what the config sets.
  assert preflight.resolve(config).normalization == "inception"
  config.normalization = None
  assert preflight.resolve(config).normalization == "imagenet"


def save_tensors(prefix, tensors):
  """A V2 checkpoint holding exactly `tensors` (name -> numpy array), as TF's saver writes one."""
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  return prefix


@pytest.fixture(scope="module")
def bad_checkpoints(slim_checkpoint, tmp_path_factory):
  root = tmp_path_factory.mktemp("bad")
  tensors = convert.read_checkpoint(slim_checkpoint["prefix"])
  variance = "InceptionV2/Mixed_4c/Branch_2/Conv2d_0b_3x3/BatchNorm/moving_variance"
  head = "InceptionV2/Logits/Conv2d_1c_1x1"
  inception_v3 = {f"InceptionV3/Conv2d_1a_3x3/{k}": np.zeros(s, np.float32) for k, s in (
      ("weights", (3, 3, 3, 32)), ("BatchNorm/beta", (32,)), ("BatchNorm/moving_mean", (32,)),
      ("BatchNorm/moving_variance", (32,)))}
  (root / "notes.txt").write_text("not a checkpoint\n")
  return {
      "inception_v3": save_tensors(str(root / "v3" / "model.ckpt"), inception_v3),
      "missing": save_tensors(str(root / "missing" / "model.ckpt"),
                              {k: v for k, v in tensors.items() if k != variance}),
      # Trained without the background class.
      "1000 classes": save_tensors(str(root / "1000" / "model.ckpt"), {
          **tensors, f"{head}/weights": tensors[f"{head}/weights"][..., 1:],
          f"{head}/biases": tensors[f"{head}/biases"][1:]}),
      # batch_norm_scale=True in the arg scope.
      "scales": save_tensors(str(root / "scales" / "model.ckpt"), {
          **tensors, "InceptionV2/Conv2d_2b_1x1/BatchNorm/gamma": np.ones(64, np.float32)}),
      "directory": os.path.dirname(slim_checkpoint["prefix"]),
      "index": slim_checkpoint["prefix"] + ".index",
      "text": str(root / "notes.txt"),
  }


# (backbone, weights (a key of `bad_checkpoints`, or a path), what the message must say).
BAD_INPUTS = {
    "another network": (
        "inception_v2", "inception_v3",
        r"^the checkpoint is not TF-slim's inception_v2 with 1001 classes \(another network or "
        r"size\?\): 277 missing \(InceptionV2/Conv2d_1a_7x7/\{biases, depthwise_weights, "
        r"pointwise_weights\}, .*; 4 unused \(InceptionV3/Conv2d_1a_3x3/BatchNorm/\{beta, "
        r"moving_mean, moving_variance\}, InceptionV3/Conv2d_1a_3x3/weights\)$"),
    "a missing tensor": (
        "inception_v2", "missing",
        r"\): 1 missing \(InceptionV2/Mixed_4c/Branch_2/Conv2d_0b_3x3/BatchNorm/"
        r"moving_variance\)$"),
    "a head of another width": (
        "inception_v2", "1000 classes",
        r"\): 2 of another shape \(file vs ours\) \(InceptionV2/Logits/Conv2d_1c_1x1/\{biases "
        r"\(1000,\) vs \(1001,\), weights \(1, 1, 1024, 1000\) vs \(1, 1, 1024, 1001\)\}\)$"),
    "BatchNorm scales": (
        "inception_v2", "scales",
        r"\): 1 unused \(InceptionV2/Conv2d_2b_1x1/BatchNorm/gamma\)$"),
    "a directory": (
        "inception_v2", "directory",
        r"^--weights=.* is a directory; give the checkpoint's prefix in it \(DIR/model\.ckpt for "
        r"model\.ckpt\.index and model\.ckpt\.data-\*\)$"),
    "a missing prefix": (
        "inception_v2", "/nowhere/model.ckpt",
        r"^--weights=/nowhere/model\.ckpt: no TensorFlow checkpoint there \(no "
        r"/nowhere/model\.ckpt\.index, no such file\); give a checkpoint's prefix, e\.g\. "
        r"DIR/model\.ckpt$"),
    "a checkpoint's own file": (
        "inception_v2", "index",
        r"^--weights=.*model\.ckpt\.index is one of a checkpoint's files; give its prefix "
        r".*model\.ckpt$"),
    "not a checkpoint": (
        "inception_v2", "text",
        r"^--weights=.*notes\.txt is not a TensorFlow checkpoint \(no .*notes\.txt\.index, and not "
        r"a V1 checkpoint file\); give a checkpoint's prefix"),
    "a backbone slim has not": (
        "resnet50", "/nowhere/model.ckpt",
        r"^unknown backbone 'resnet50' for --source=tfslim; valid: inception_v2 \(resnet50's "
        r"weights are --source=torchvision's\)$"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_in_one_line_and_writes_nothing(case, bad_checkpoints, tmp_path):
  backbone, weights, message = BAD_INPUTS[case]
  with pytest.raises((ValueError, FileNotFoundError)) as e:
    convert.convert("tfslim", backbone, bad_checkpoints.get(weights, weights),
                    str(tmp_path / "run"))
  assert re.search(message, str(e.value)), str(e.value)
  assert "\n" not in str(e.value)
  assert not os.listdir(tmp_path)


def test_the_command_line_says_what_is_wrong_in_one_line(bad_checkpoints, tmp_path):
  out = subprocess.run([sys.executable, "-m", "resizer_jax.convert", "--source=tfslim",
                        "--backbone=inception_v2", f"--weights={bad_checkpoints['inception_v3']}",
                        f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
                       check=False)
  assert out.returncode == 2, out.stderr
  assert re.fullmatch(r"error: the checkpoint is not TF-slim's inception_v2 .*  \(--verbosity=1 "
                      r"shows the traceback\)\n", out.stderr), out.stderr
  assert not os.listdir(tmp_path)
