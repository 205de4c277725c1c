"""Backbones: exact parameter counts, any input size, and one jitted step through the resizer."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resizer_jax.models import BACKBONES, ResizedModel, get_backbone, get_resizer

# Trainable parameters with 1000 classes: torchvision's counts, and TF-slim's inception_v2 layout
# (its 1001-class checkpoint has 1,025 more).
PARAM_COUNTS = {
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "densenet121": 7_978_856,
    "efficientnet_b0": 5_288_548,
    "inception_v2": 11_178_336,
}
# Those with dropout (or stochastic depth) in training, which must draw from the "dropout" rng.
STOCHASTIC = {"mobilenet_v2", "efficientnet_b0", "inception_v2"}
NAMES = sorted(PARAM_COUNTS)
NUM_CLASSES = 10

# Compiling five full backbones and their gradients is nearly all of this file's run time. These
# tests check shapes and values, not speed: XLA:CPU's older fusion emitters without LLVM
# optimisation compile DenseNet-121's gradient ~4x faster (45 s -> 10 s on 2 cores), same values.
jit = functools.partial(jax.jit, compiler_options={"xla_cpu_use_fusion_emitters": False,
                                                   "xla_backend_optimization_level": 0})


def _num_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _random_variables(model, input_shape, seed=0):
  """Variables of `model`'s exact structure: He-scaled kernels, unit BN scales, zero offsets.

  Drawn with numpy rather than by `model.init`: compiling flax's initialisers costs 2-10 s per
  backbone, and none of the checks here depend on them.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(leaf.dtype)
    return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, leaf.dtype)

  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(input_shape))
  return jax.tree.map_with_path(draw, shapes)


@functools.cache
def _backbone_variables(name):
  # No parameter depends on the input size, so both resolutions share one set.
  return _random_variables(get_backbone(name, num_classes=NUM_CLASSES), (2, 32, 32, 3))


@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
  model = get_backbone(name, num_classes=1000)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  assert _num_params(variables["params"]) == PARAM_COUNTS[name]


def test_inception_v2s_slim_stem_keeps_the_parameter_count():
  """TF-slim's stem (a bias for the BatchNorm's offsets, no running statistics), which its
  converted checkpoints use: the same trainable parameters, 128 fewer statistics."""
  counts = {}
  for stem_batch_norm in (True, False):
    model = get_backbone("inception_v2", num_classes=1000, stem_batch_norm=stem_batch_norm)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    counts[stem_batch_norm] = (_num_params(variables["params"]),
                               _num_params(variables["batch_stats"]))
  assert counts[False] == (PARAM_COUNTS["inception_v2"], counts[True][1] - 128)
  assert set(variables["params"]["stem_pointwise"]) == {"kernel", "bias"}
  assert "stem_bn" not in variables["params"]


@pytest.mark.parametrize("hw", [(32, 32), (40, 56)])
@pytest.mark.parametrize("name", NAMES)
def test_forward_any_size(name, hw):
  model = get_backbone(name, num_classes=NUM_CLASSES)
  variables = _backbone_variables(name)
  x = np.random.default_rng(1).normal(size=(2, *hw, 3)).astype(np.float32)

  logits = jit(model.apply)(variables, x)
  assert logits.shape == (2, NUM_CLASSES)
  assert np.all(np.isfinite(logits))

  @jit
  def train_apply(variables, x, rng):
    return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng})

  train_logits, updates = jax.device_get(train_apply(variables, x, jax.random.key(2)))
  assert train_logits.shape == (2, NUM_CLASSES)
  assert np.all(np.isfinite(train_logits))
  # Training normalises with the batch's statistics and moves the running ones.
  assert not np.allclose(train_logits, logits)
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
  assert not all(jax.tree.leaves(jax.tree.map(np.allclose, updates["batch_stats"],
                                              variables["batch_stats"])))
  other_logits, _ = train_apply(variables, x, jax.random.key(3))
  assert np.allclose(other_logits, train_logits) == (name not in STOCHASTIC)


@pytest.mark.parametrize("name", NAMES)
def test_jitted_grad_step_through_resizer(name):
  model = ResizedModel(
      resizer=get_resizer("learned", output_size=(32, 32), antialias=False),
      backbone=get_backbone(name, num_classes=NUM_CLASSES))
  images = np.random.default_rng(4).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
  labels = np.array([3, 7])
  # The composed model's variables are its parts' variables under "resizer" and "backbone".
  resizer_vars = _random_variables(model.resizer, images.shape)
  backbone_vars = _backbone_variables(name)
  variables = {k: {"resizer": resizer_vars[k], "backbone": backbone_vars[k]} for k in resizer_vars}

  @jit
  @functools.partial(jax.value_and_grad, has_aux=True)
  def loss_and_grad(params, batch_stats, rng):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                  train=True, mutable=["batch_stats"], rngs={"dropout": rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

  (loss, _), grads = jax.device_get(
      loss_and_grad(variables["params"], variables["batch_stats"], jax.random.key(5)))
  assert np.isfinite(loss)
  for part in ("resizer", "backbone"):
    leaves = jax.tree.leaves(grads[part])
    assert all(np.all(np.isfinite(g)) for g in leaves), part
    assert any(np.any(g != 0) for g in leaves), part


def test_unknown_backbone_lists_valid_names():
  with pytest.raises(ValueError, match="nope") as info:
    get_backbone("nope")
  for name in BACKBONES:
    assert name in str(info.value)
