"""MULLER (Tu, Talebi & Milanfar, ICCV 2023) against an independent formulation of the official TF
layer (google-research muller/models/muller.py), on pixels in [0, 1] as there: the blur by scipy, the
bilinear resize as numpy matrices, in float64."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from helpers import demo_config
from resizer_jax import models
from resizer_jax import train
from resizer_jax.models import resizer as resizer_lib

PUBLISHED = (1.892, -0.014, -11.295, 0.003)  # muller_demo.ipynb, ResNet-50: w1, b1, w2, b2.
MEAN, STD = np.asarray(models.MEAN_RGB), np.asarray(models.STDDEV_RGB)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in): tf.image.resize bilinear without antialias, i.e. half-pixel centres and the
  source position clamped to the image."""
  src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  i0 = np.floor(src).astype(int)
  i1 = np.minimum(i0 + 1, n_in - 1)
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), i0), 1 - (src - i0))
  np.add.at(m, (np.arange(n_out), i1), src - i0)
  return m


def official_muller(p, params, out_hw):
  """The official layer in float64 on NHWC pixels `p` in [0, 1]: tf.nn.depthwise_conv2d 'SAME'
  pads with zeros, which is scipy's mode="constant"."""
  mh, mw = bilinear_matrix(p.shape[1], out_hw[0]), bilinear_matrix(p.shape[2], out_hw[1])
  size = lambda x: np.einsum("pw,nowc->nopc", mw, np.einsum("oh,nhwc->nowc", mh, x))
  taps = np.exp(-np.arange(-2.0, 3.0)**2 / 2)
  taps /= taps.sum()
  blur = lambda x: ndimage.convolve1d(ndimage.convolve1d(x, taps, axis=2, mode="constant"), taps,
                                      axis=1, mode="constant")
  net = size(p)
  for weight, bias in zip(params[::2], params[1::2]):
    blurred = blur(p)
    net = net + np.tanh(weight * size(blurred - p) + bias)
    p = blurred
  return net


def with_params(values):
  """MULLER's variables holding (w1, b1, w2, b2, ...)."""
  names = [f"{kind}_{l}" for l in range(1, len(values) // 2 + 1) for kind in ("weight", "bias")]
  return {"params": {name: jnp.float32(v) for name, v in zip(names, values)}}


def standardised_muller(out_hw, **kwargs):
  return models.MullerResizer(output_size=out_hw, pixel_mean=models.MEAN_RGB,
                              pixel_std=models.STDDEV_RGB, **kwargs)


def pixels(shape, seed=0):
  """uint8-range pixels: what the model sees before models.normalize."""
  return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float64)


def test_a_fresh_muller_is_exactly_the_bilinear_resize():
  x = models.normalize(pixels((2, 45, 61, 3)))
  module = standardised_muller((17, 23))
  variables = jax.jit(module.init)(jax.random.key(0), x)
  assert all(float(v) == 0 for v in jax.tree.leaves(variables))
  baseline = models.FixedResizer(output_size=(17, 23), method="bilinear", antialias=False)
  np.testing.assert_array_equal(jax.jit(module.apply)(variables, x), jax.jit(baseline.apply)({}, x))


# Weights of either sign around the published magnitudes; small biases, as published.
RANDOM = tuple(np.random.default_rng(1).normal(0, (5, 0.1, 5, 0.1)).round(3))


@pytest.mark.parametrize("values", [PUBLISHED, RANDOM], ids=["published", "random"])
@pytest.mark.parametrize("in_hw,out_hw", [((45, 61), (17, 23)), ((64, 48), (16, 12)),
                                          ((17, 9), (40, 31))])
def test_on_standardised_pixels_it_is_the_official_muller_on_0_1_pixels(values, in_hw, out_hw):
  p = pixels((2, *in_hw, 3), seed=2)
  x = models.normalize(p)
  ours = np.asarray(jax.jit(standardised_muller(out_hw).apply)(with_params(values), x), np.float64)
  theirs = official_muller(p / 255, values, out_hw)
  # In the official layer's units, [0, 1] pixels.
  diff = np.abs((ours * STD + MEAN) / 255 - theirs).max()
  # In the model's, standardised. jax.image.resize computes its bilinear weights in float32 (off by
  # up to 3e-6 at 45 -> 17), so the plain bilinear baseline is itself that far from the exact one.
  diff_std = np.abs(ours - (theirs * 255 - MEAN) / STD).max()
  base = np.asarray(jax.jit(models.FixedResizer(output_size=out_hw).apply)({}, x), np.float64)
  base_std = np.abs(base - (official_muller(p / 255, (), out_hw) * 255 - MEAN) / STD).max()
  print(f"max abs diff: {diff:.2e} in [0, 1] units, {diff_std:.2e} standardised "
        f"(the bilinear baseline's own: {base_std:.2e})")
  assert diff <= 1e-5 and diff_std <= base_std + 1e-5
  # The bands matter: the output is far from the base resize.
  assert np.abs(ours - base).max() > 0.1


def test_by_default_it_takes_0_1_pixels_as_the_official_layer():
  p = pixels((1, 64, 48, 3), seed=3) / 255
  ours = jax.jit(models.MullerResizer(output_size=(16, 12)).apply)(with_params(PUBLISHED), p)
  np.testing.assert_allclose(ours, official_muller(p, PUBLISHED, (16, 12)), rtol=0, atol=1e-5)


def test_four_scalar_float32_parameters_and_num_layers():
  x = jnp.zeros((1, 64, 48, 3))
  variables = jax.eval_shape(models.MullerResizer(output_size=(16, 12)).init, jax.random.key(0), x)
  assert {k: (v.shape, v.dtype) for k, v in variables["params"].items()} == {
      f"{kind}_{l}": ((), jnp.float32) for kind in ("weight", "bias") for l in (1, 2)}
  by_scale = jax.eval_shape(models.MullerResizer(scale=0.25).init_with_output, jax.random.key(0), x)
  assert by_scale[0].shape == (1, 16, 12, 3)
  three = jax.eval_shape(models.MullerResizer(output_size=(16, 12), num_layers=3).init,
                         jax.random.key(0), x)
  assert sum(v.size for v in jax.tree.leaves(three)) == 6
  with pytest.raises(ValueError, match="'resnet50' have 2 layers, not num_layers=3"):
    models.MullerResizer(output_size=16, num_layers=3, pretrained="resnet50")


def test_a_bfloat16_model_gets_bfloat16_from_float32_parameters_and_computation():
  x = models.normalize(pixels((2, 45, 61, 3), seed=4), jnp.bfloat16)
  module = standardised_muller((17, 23), pretrained="resnet50", dtype=jnp.bfloat16)
  variables = jax.jit(module.init)(jax.random.key(0), x)
  assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = jax.jit(module.apply)(variables, x)
  assert out.dtype == jnp.bfloat16
  # The float32 result on the same (bfloat16) input, rounded once.
  reference = jax.jit(standardised_muller((17, 23)).apply)(variables, x.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(out, np.float32), reference, rtol=2**-8, atol=0)


@pytest.mark.parametrize("values", [None, PUBLISHED], ids=["fresh", "published"])
def test_gradients_reach_all_four_parameters(values):
  x = models.normalize(pixels((2, 45, 61, 3), seed=5))
  module = standardised_muller((17, 23))
  variables = with_params(values) if values else jax.jit(module.init)(jax.random.key(0), x)
  probe = jax.random.normal(jax.random.key(6), (2, 17, 23, 3))
  grads = jax.jit(jax.grad(lambda v: jnp.sum(module.apply(v, x) * probe)))(variables)["params"]
  assert sorted(grads) == ["bias_1", "bias_2", "weight_1", "weight_2"]
  assert all(np.isfinite(g) and abs(float(g)) > 1e-6 for g in grads.values()), grads


def test_resizer_muller_builds_from_the_demo_config_and_its_train_step_traces():
  config = demo_config(None, "tiny,resizer=muller,input=64,target=16")
  model = models.from_config(config)
  assert isinstance(model.resizer, models.MullerResizer)
  assert tuple(model.resizer.pixel_std) == models.STDDEV_RGB
  schedule = train.make_schedule(config, steps_per_epoch=10)
  init = train.make_init(model, train.make_optimizer(config, schedule), 64)
  state = jax.eval_shape(init, jax.random.key(0))
  assert jax.tree.map(lambda v: (v.shape, v.dtype), state.params["resizer"]) == {
      f"{kind}_{l}": ((), jnp.float32) for kind in ("weight", "bias") for l in (1, 2)}
  # Traced, not compiled: a compiled step of the backbone costs ~25 s of CPU; the gradients that
  # reach MULLER are test_gradients_reach_all_four_parameters'.
  batch = {"image": jax.ShapeDtypeStruct((8, 64, 64, 3), jnp.uint8),
           "label": jax.ShapeDtypeStruct((8,), jnp.int32),
           "skipped": jax.ShapeDtypeStruct((8,), jnp.int32)}
  new, _ = jax.eval_shape(functools.partial(train.train_step, model=model, schedule=schedule,
                                            label_smoothing=0.1, seed=0), state, batch)
  assert jax.tree.map(lambda v: v.shape, new.params) == jax.tree.map(lambda v: v.shape, state.params)


def test_published_values_load_by_name_and_a_bad_name_is_refused():
  config = demo_config(None, "resizer=muller,input=64,target=16")
  config.resizer.muller_pretrained = "resnet50"
  resizer = models.from_config(config).resizer
  params = jax.jit(resizer.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  assert [float(params[k]) for k in ("weight_1", "bias_1", "weight_2", "bias_2")] == list(
      np.float32(PUBLISHED))
  assert resizer_lib.MULLER_PRETRAINED["resnet50"] == PUBLISHED
  config.resizer.muller_pretrained = "resnet5"
  with pytest.raises(ValueError, match=r"^unknown MULLER weights 'resnet5'; valid: resnet50$"):
    models.from_config(config)


@pytest.mark.parametrize("kernel_size", [4, 2, 0])
def test_an_even_blur_size_is_refused(kernel_size):
  """An even Gaussian is centred between pixels (every band half a pixel off): the official layer
  refuses it, and so does this one, where the model is built."""
  with pytest.raises(ValueError, match=rf"^MULLER kernel_size={kernel_size}; valid: odd sizes "):
    models.MullerResizer(output_size=8, kernel_size=kernel_size)
  assert models.MullerResizer(output_size=8, kernel_size=kernel_size + 1).kernel_size % 2
