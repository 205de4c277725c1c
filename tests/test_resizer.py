"""The learned resizer of Fig. 3 and the fixed baselines."""
import functools
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resizer_jax import models
from resizer_jax.models import conv as conv_lib
from resizer_jax.models import resize_ops
from resizer_jax.models import resizer as resizer_lib


def _count(tree, only_kernels=False):
  return sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(tree)
             if not only_kernels or path[-1].key == "kernel")


# Table 2 of the paper: conv weights only (biases and BN excluded).
TABLE_2 = {(16, 1): 11_872, (16, 2): 16_480, (16, 3): 21_088, (16, 4): 25_696,
           (32, 1): 38_080, (32, 2): 56_512, (32, 3): 74_944, (32, 4): 93_376}


@pytest.mark.parametrize("n,r", sorted(TABLE_2))
def test_conv_weights_match_table_2(n, r):
  module = models.LearnedResizer(output_size=(224, 224), num_filters=n, num_res_blocks=r)
  variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 448, 448, 3)))
  assert _count(variables["params"], only_kernels=True) == TABLE_2[(n, r)]


def test_trainable_parameters_with_biases_and_bn():
  module = models.LearnedResizer(output_size=(224, 224))
  variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 448, 448, 3)))
  assert _count(variables["params"]) == 12_035


@pytest.mark.parametrize("in_hw,kwargs,out_hw", [
    ((37, 53), dict(output_size=(16, 24)), (16, 24)),   # odd input, down, other aspect ratio
    ((17, 9), dict(output_size=(40, 31)), (40, 31)),    # up, odd output
    ((30, 30), dict(output_size=12), (12, 12)),         # int size = square
    ((64, 48), dict(scale=0.5), (32, 24)),              # scale factor keeps aspect ratio
    ((20, 30), dict(scale=1.7), (34, 51)),              # upscale factor
    ((40, 40), dict(scale=(0.5, 0.25)), (20, 10)),
])
def test_any_output_size_down_or_up(in_hw, kwargs, out_hw):
  x = jax.random.normal(jax.random.key(1), (2, *in_hw, 3))
  for module in (models.LearnedResizer(**kwargs, num_filters=4),
                 models.FixedResizer(**kwargs, method="bicubic")):
    # Jitted: one compile each, not one per op (shapes are all this test reads).
    variables = jax.jit(module.init)(jax.random.key(0), x)
    y, _ = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    assert y.shape == (2, *out_hw, 3)
    assert jax.jit(module.apply)(variables, x).shape == (2, *out_hw, 3)


@pytest.mark.parametrize("method", ["bilinear", "bicubic", "lanczos3", "nearest"])
@pytest.mark.parametrize("antialias", [False, True])
def test_zero_init_tail_starts_as_the_baseline_resize(method, antialias):
  x = jax.random.uniform(jax.random.key(2), (2, 45, 61, 3))
  module = models.LearnedResizer(output_size=(17, 23), interpolation=method, antialias=antialias,
                                 zero_init_tail=True)
  variables = module.init(jax.random.key(0), x)
  # Exactly the control run's fixed resizer...
  baseline = models.FixedResizer(output_size=(17, 23), method=method, antialias=antialias)
  expected = baseline.apply({}, x)
  np.testing.assert_array_equal(module.apply(variables, x), expected)
  out, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_array_equal(out, expected)
  # ...which is jax.image.resize up to float rounding (bilinear is computed as two-tap gathers).
  np.testing.assert_allclose(expected, jax.image.resize(x, (2, 17, 23, 3), method=method,
                                                        antialias=antialias), rtol=0, atol=1e-6)


@pytest.mark.parametrize("in_hw,out_hw,antialias", [
    ((448, 448), (224, 224), False), ((128, 96), (16, 12), False), ((45, 61), (17, 23), False),
    ((17, 9), (40, 31), False), ((20, 30), (34, 51), True), ((64, 64), (8, 8), True)])
def test_bilinear_matches_jax_image_resize_values_and_gradients(in_hw, out_hw, antialias):
  # Compiled as a user's program is, at XLA's default optimisation (the suite's is 0, conftest.py):
  # unoptimised, jax.image.resize's dot sums in another order (4e-6 off; ours is the same at both).
  user_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 3})
  x = jax.random.normal(jax.random.key(5), (2, *in_hw, 4))
  ours = lambda x: resizer_lib.resize(x, out_hw, "bilinear", antialias)
  theirs = lambda x: jax.image.resize(x, (2, *out_hw, 4), "bilinear", antialias=antialias)
  np.testing.assert_allclose(user_jit(ours)(x), user_jit(theirs)(x), rtol=0, atol=1e-6)
  probe = jax.random.normal(jax.random.key(6), (2, *out_hw, 4))
  grad = lambda f: user_jit(jax.grad(lambda x: jnp.sum(f(x) * probe)))(x)
  np.testing.assert_allclose(grad(ours), grad(theirs), rtol=0, atol=1e-5)


def test_default_init_is_not_the_baseline():
  x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
  module = models.LearnedResizer(output_size=(8, 8))
  variables = module.init(jax.random.key(0), x)
  assert np.abs(module.apply(variables, x) - jax.image.resize(x, (2, 8, 8, 3), "bilinear",
                                                              antialias=False)).max() > 1e-3


def test_antialias_changes_a_downscale_and_is_passed_through():
  x = jax.random.uniform(jax.random.key(3), (1, 64, 64, 3))
  plain = models.FixedResizer(output_size=8, method="bilinear", antialias=False).apply({}, x)
  smooth = models.FixedResizer(output_size=8, method="bilinear", antialias=True).apply({}, x)
  np.testing.assert_array_equal(plain, jax.image.resize(x, (1, 8, 8, 3), "bilinear", antialias=False))
  np.testing.assert_array_equal(smooth, jax.image.resize(x, (1, 8, 8, 3), "bilinear", antialias=True))
  # Averaging many pixels shrinks the spread of uniform noise; point sampling does not.
  assert smooth.std() < 0.5 * plain.std()


def test_area_is_the_mean_over_each_footprint():
  x = jax.random.uniform(jax.random.key(4), (2, 12, 18, 3))
  y = resizer_lib.resize(x, (4, 6), "area", antialias=False)
  expected = x.reshape(2, 4, 3, 6, 3, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
  # A non-integer factor still preserves the mean of a constant image.
  ones = jnp.ones((1, 10, 7, 3))
  np.testing.assert_allclose(resizer_lib.resize(ones, (3, 4), "area", False), 1.0, rtol=1e-6)


def test_get_resizer_by_name():
  assert isinstance(models.get_resizer("learned", output_size=8, antialias=False),
                    models.LearnedResizer)
  muller = models.get_resizer("muller", output_size=8, antialias=False, pretrained="resnet50")
  assert isinstance(muller, models.MullerResizer) and muller.pretrained == "resnet50"
  baseline = models.get_resizer("lanczos3", output_size=8, antialias=True)
  assert (baseline.method, baseline.antialias) == ("lanczos3", True)
  with pytest.raises(ValueError, match=r"unknown resizer 'bilenear'; valid: learned, control, bilinear"):
    models.get_resizer("bilenear", output_size=8, antialias=False)


def test_bad_sizes_and_interpolations_are_named():
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match="exactly one of output_size or scale"):
    models.FixedResizer(output_size=4, scale=0.5).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="exactly one of output_size or scale"):
    models.LearnedResizer().init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"unknown interpolation 'cubic'; valid: bilinear, bicubic"):
    models.LearnedResizer(output_size=4, interpolation="cubic").init(jax.random.key(0), x)


def test_capacity_control_has_the_same_layers_applied_at_the_target():
  x = jax.random.uniform(jax.random.key(7), (2, 48, 40, 3))
  learned = models.get_resizer("learned", output_size=(12, 10), antialias=False)
  control = models.get_resizer("control", output_size=(12, 10), antialias=False)
  v_learned, v_control = (jax.jit(m.init)(jax.random.key(0), x) for m in (learned, control))
  assert jax.tree.map(jnp.shape, v_learned) == jax.tree.map(jnp.shape, v_control)
  assert _count(v_control["params"]) == 12_035
  # Same weights, but the control's first conv never sees the full-resolution pixels: it equals
  # the learned resizer run on the already-downscaled image.
  small = models.FixedResizer(output_size=(12, 10)).apply({}, x)
  control_apply, learned_apply = jax.jit(control.apply), jax.jit(learned.apply)
  np.testing.assert_allclose(control_apply(v_learned, x), learned_apply(v_learned, small),
                             rtol=1e-5, atol=1e-5)
  assert np.abs(control_apply(v_learned, x) - learned_apply(v_learned, x)).max() > 1e-3


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("method,antialias", [("bilinear", False), ("bicubic", True)])
def test_stem_bn_applied_after_the_resize_is_batchnorm_then_resize(train, method, antialias):
  """The stem's BatchNorm affine runs at the target size: same outputs, statistics and gradients."""
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(8), (2, 48, 40, 16))
  size = lambda h: resizer_lib.resize(h, (12, 10), method, antialias)
  kwargs = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5)
  ours = resizer_lib.ResizedBatchNorm(**kwargs)
  theirs = flax.linen.BatchNorm(**kwargs)
  variables = theirs.init(jax.random.key(0), x)
  x_moments = lambda: resizer_lib.moments(x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), lambda: size(x), x_moments)) == jax.tree.map(
      jnp.shape, variables)
  variables = {"params": {"scale": jnp.linspace(0.5, 2.0, 16), "bias": jnp.linspace(-1, 1, 16)},
               "batch_stats": {"mean": jnp.full(16, 2.5), "var": jnp.full(16, 3.0)}}
  probe = jax.random.normal(jax.random.key(9), (2, 12, 10, 16))

  def loss(params, x, f):
    out, updates = f({**variables, "params": params}, x)
    return jnp.sum(out * probe), (out, updates)

  run_ours = lambda v, x: ours.apply(v, lambda: size(x), lambda: resizer_lib.moments(x),
                                    mutable=["batch_stats"])
  run_theirs = lambda v, x: (lambda y, u: (size(y), u))(*theirs.apply(v, x, mutable=["batch_stats"]))
  (_, (out_a, upd_a)), g_a = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      variables["params"], x, run_ours)
  (_, (out_b, upd_b)), g_b = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      variables["params"], x, run_theirs)
  np.testing.assert_allclose(out_a, out_b, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), upd_a, upd_b)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_a, g_b)
  assert (not train) == bool(np.allclose(upd_a["batch_stats"]["mean"], 2.5))


@pytest.mark.parametrize("strides,padding", [((1, 1), "SAME"), ((2, 2), "SAME"), ((2, 1), "VALID"),
                                             ((1, 1), ((1, 1), (0, 0)))])
def test_pointwise_conv_is_lax_conv_with_its_gradients(strides, padding):
  x = jax.random.normal(jax.random.key(10), (2, 9, 8, 6))
  w = jax.random.normal(jax.random.key(11), (1, 1, 6, 5))
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  f = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding, dimension_numbers=dn)))
  ours, theirs = f(conv_lib.pointwise_conv), f(jax.lax.conv_general_dilated)
  np.testing.assert_allclose(ours(x, w), theirs(x, w), rtol=1e-5)
  for a, b in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(theirs, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_hw,out_hw", [
    ((1, 40), (1, 20)), ((1, 40), (3, 40)), ((1, 1), (4, 5)), ((1, 40), (1, 1)),  # From a side of 1.
    ((5, 1), (1, 1)), ((40, 40), (1, 1)), ((41, 7), (1, 14)), ((2, 9), (1, 3))])  # To a side of 1.
def test_a_side_of_one_resizes_as_tf_image_resize(in_hw, out_hw):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(12).standard_normal((2, *in_hw, 3)), jnp.float32)
  ours = jax.jit(lambda x: resizer_lib.resize(x, out_hw, "bilinear", False))
  theirs = jax.jit(lambda x: jax.image.resize(x, (2, *out_hw, 3), "bilinear", antialias=False))
  np.testing.assert_allclose(ours(x), tf.image.resize(np.asarray(x), out_hw, "bilinear",
                                                      antialias=False), rtol=0, atol=1e-6)
  np.testing.assert_allclose(ours(x), theirs(x), rtol=0, atol=1e-6)
  probe = jnp.asarray(np.random.default_rng(13).standard_normal((2, *out_hw, 3)), jnp.float32)
  grad = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(f(x) * probe)))(x)
  np.testing.assert_allclose(grad(ours), grad(theirs), rtol=0, atol=1e-5)


def test_the_resizers_take_a_1_pixel_high_image():
  x = jnp.asarray(np.random.default_rng(14).uniform(size=(2, 1, 40, 3)), jnp.float32)
  for module in (models.LearnedResizer(output_size=(1, 20), num_filters=4),
                 models.MullerResizer(output_size=(1, 20)), models.FixedResizer(output_size=(1, 20))):
    variables = jax.jit(module.init)(jax.random.key(0), x)
    assert jax.jit(module.apply)(variables, x).shape == (2, 1, 20, 3)


@pytest.mark.parametrize("in_hw,out_hw,k", [
    ((48, 48), (16, 16), 3), ((672, 96), (224, 32), 3), ((35, 45), (7, 9), 5), ((30, 31), (30, 31), 1)])
def test_odd_integer_downscales_take_the_fast_path(in_hw, out_hw, k):
  """Each output pixel is the middle pixel of its block of k (one tap of weight 1): read off a
  reshape, the integer-phase path, as even factors are, not gathered or strided."""
  for n_in, n_out in zip(in_hw, out_hw):
    taps = resize_ops.two_taps(n_in, n_out, "bilinear", False)
    assert resize_ops.block_phases(taps, n_in) == (k, ((k // 2, 1.0),))
  x = jnp.asarray(np.random.default_rng(15).standard_normal((2, *in_hw, 3)), jnp.float32)
  ours = jax.jit(lambda x: resizer_lib.resize(x, out_hw, "bilinear", False))
  jaxpr = str(jax.make_jaxpr(ours)(x))
  strides = {int(s) for found in re.findall(r"strides=\(([\d, ]+)\)", jaxpr) for s in found.split(",")}
  assert "gather" not in jaxpr and strides <= {1} and jaxpr.count("reshape") == 2
  np.testing.assert_array_equal(ours(x), x[:, k // 2::k, k // 2::k])
  theirs = jax.jit(lambda x: jax.image.resize(x, (2, *out_hw, 3), "bilinear", antialias=False))
  np.testing.assert_allclose(ours(x), theirs(x), rtol=0, atol=1e-6)
  probe = jnp.asarray(np.random.default_rng(16).standard_normal((2, *out_hw, 3)), jnp.float32)
  grad = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(f(x) * probe)))(x)
  np.testing.assert_allclose(grad(ours), grad(theirs), rtol=0, atol=1e-6)
