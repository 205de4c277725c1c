"""Formulations of the learned resizer's full-resolution convolutions (models/conv.py): each computes
the plain convolution, values and gradients, from the same parameters and checkpoints."""
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import REPO
from resizer_jax import models
from resizer_jax.config_args import load_config
from resizer_jax.models import conv
from resizer_jax.models import fused_stem
from resizer_jax.models.resizer import LearnedResizer

NHWC = ("NHWC", "HWIO", "NHWC")


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _conv_and_grads(fn, x, w, padding):
  """The convolution's output and its vjp for the input and the kernel, as nn.Conv calls `fn`."""
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
  y, vjp = jax.vjp(lambda x, w: fn(x, w, (1, 1), padding, dimension_numbers=dn), x, w)
  cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), jnp.float32)
  return (y, *vjp(cotangent))


@pytest.mark.parametrize("name", sorted(conv.FORMULATIONS))
@pytest.mark.parametrize("layer,hw,cin,cout,k,padding", [
    ("stem 7x7 3->16 at the input size", (24, 20), 3, 16, 7, "SAME"),
    ("tail 7x7 16->3 at the target size", (12, 16), 16, 3, 7, "SAME"),
    ("an even kernel", (12, 12), 3, 4, 4, "SAME"),
    ("unpadded", (14, 12), 5, 3, 5, "VALID"),
    ("odd output: space-to-depth falls back", (13, 15), 3, 16, 7, "SAME"),
    ("asymmetric padding", (12, 12), 3, 8, 3, ((1, 0), (2, 1))),
])
def test_formulation_is_the_plain_convolution_values_and_gradients(name, layer, hw, cin, cout, k,
                                                                   padding):
  del layer
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, *hw, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
  want = _conv_and_grads(jax.lax.conv_general_dilated, x, w, padding)
  got = _conv_and_grads(conv.FORMULATIONS[name], x, w, padding)
  for what, g, r in zip(("output", "input gradient", "kernel gradient"), got, want):
    assert g.shape == r.shape and g.dtype == r.dtype, what
    assert _rel(g, r) <= 1e-5, (what, _rel(g, r))


def test_space_to_depth_turns_the_7x7_into_a_4x4_on_12_channels():
  x, w = jnp.ones((1, 16, 16, 3)), jnp.ones((7, 7, 3, 16))
  f = lambda x, w: conv.space_to_depth_conv(x, w, (1, 1), "SAME",
                                            dimension_numbers=jax.lax.conv_dimension_numbers(
                                                x.shape, w.shape, NHWC))
  [eqn] = [e for e in jax.make_jaxpr(f)(x, w).jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
  assert eqn.invars[0].aval.shape == (1, 11, 11, 12)
  assert eqn.invars[1].aval.shape == (4, 4, 12, 64)
  assert eqn.outvars[0].aval.shape == (1, 8, 8, 64)


def _resizer(formulation):
  return LearnedResizer(output_size=16, formulation=formulation)


def test_the_resizer_has_one_parameter_tree_and_one_function_under_every_formulation(tmp_path):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  want = jax.jit(_resizer("plain").init)(jax.random.key(0), x)
  for name in conv.FORMULATIONS:
    tree = jax.eval_shape(_resizer(name).init, jax.random.key(0), x)
    assert tree == jax.eval_shape(lambda: want), name

  # A checkpoint written under one formulation gives the same function under every other.
  path = tmp_path / "params"
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, want)
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, want))

  def loss(params, formulation):
    out, _ = _resizer(formulation).apply({**restored, "params": params}, x, train=True,
                                         mutable=["batch_stats"])
    return jnp.mean(jnp.square(out)), out

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  evaluate = jax.jit(lambda variables, name: _resizer(name).apply(variables, x), static_argnums=1)
  (_, out), grads = grad(want["params"], "plain")
  for name in conv.FORMULATIONS:
    (_, got), got_grads = grad(restored["params"], name)
    assert _rel(got, out) <= 1e-5, name
    for g, r in zip(jax.tree.leaves(got_grads), jax.tree.leaves(grads)):
      assert _rel(g, r) <= 1e-5, name
    assert _rel(evaluate(restored, name), evaluate(want, "plain")) <= 1e-5, name


def test_config_chooses_the_formulation_auto_by_platform_and_refuses_unknown_names():
  config = load_config(f"{REPO}/configs/imagenet.py:input=64,target=32")
  assert models.from_config(config).resizer.formulation == "auto"
  config.resizer.formulation = "s2d"
  assert models.from_config(config).resizer.formulation == "s2d"
  # What was measured fastest (docs/performance.md): the plain convolution on the CPU, space-to-depth
  # on a GPU (an H200); on a TPU, not measured, the plain one.
  assert conv.resolve_formulation("auto", "cpu") == conv.AUTO_FORMULATION["cpu"] == "plain"
  assert conv.resolve_formulation("auto", "gpu") == "s2d"
  assert conv.resolve_formulation("auto", "tpu") == "plain"
  assert set(conv.AUTO_FORMULATION.values()) <= set(conv.FORMULATIONS)
  config.resizer.formulation = "im2col"
  model = models.from_config(config)
  with pytest.raises(ValueError) as error:
    model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert error.value.args == ("unknown resizer formulation 'im2col'; valid: auto, plain, s2d, pad4, "
                              "pad8, fused",)


@pytest.mark.parametrize("hw,out_hw", [
    ((24, 36), (12, 6)),  # Factors 2 and 6 (one and two tap phases), columns padded to 8.
    ((12, 12), (12, 12)),  # 1x, as the capacity control's stem runs.
    ((18, 15), (6, 5)),  # Factor 3 (one tap phase, as 672 -> 224), columns padded to 8.
])
def test_the_fused_stem_is_the_plain_layers_values_and_gradients(hw, out_hw):
  """The Pallas kernel (interpret mode here) against XLA's layers: its three outputs, and the
  gradients of all four parameters and of the image."""
  rng = np.random.default_rng(0)
  normal = lambda *shape, s=1.0: jnp.asarray(s * rng.standard_normal(shape), jnp.float32)
  args = (normal(2, *hw, 3), normal(7, 7, 3, 16, s=0.1), normal(16, s=0.1), normal(16, 16, s=0.3),
          normal(16, s=0.1))
  assert fused_stem.applies(hw, out_hw, "bilinear", False)
  cotangents = (normal(2, *out_hw, 16), normal(16), normal(16))
  want, want_vjp = jax.vjp(lambda *a: fused_stem.reference(*a, out_hw), *args)
  got, got_vjp = jax.vjp(lambda *a: fused_stem.stem(*a, out_hw), *args)
  for what, g, r in zip(("resized", "mean", "mean of squares"), got, want):
    assert g.shape == r.shape and _rel(g, r) <= 1e-5, what
  for what, g, r in zip(("image", "w1", "b1", "w2", "b2"), got_vjp(cotangents),
                        want_vjp(cotangents)):
    assert g.shape == r.shape and _rel(g, r) <= 1e-5, what


def test_the_fused_stem_takes_integer_bilinear_downscales_only():
  assert fused_stem.applies((448, 448), (224, 224), "bilinear", False)
  assert fused_stem.applies((96, 96), (16, 16), "bilinear", False)
  assert fused_stem.applies((48, 48), (16, 16), "bilinear", False)  # Odd factors: one tap phase.
  assert fused_stem.applies((672, 672), (224, 224), "bilinear", False)
  assert not fused_stem.applies((448, 448), (224, 224), "bilinear", True)  # Antialiased: wider taps.
  assert not fused_stem.applies((448, 448), (224, 224), "bicubic", False)
  assert not fused_stem.applies((448, 448), (300, 300), "bilinear", False)  # Not an integer factor.
  assert not fused_stem.applies((112, 112), (224, 224), "bilinear", False)  # An upscale.
  # Where it does not apply, "fused" is the plain resizer: same function, no Pallas call.
  x = jnp.zeros((1, 30, 30, 3))
  jaxpr = str(jax.make_jaxpr(lambda x: LearnedResizer(output_size=16, formulation="fused").init(
      jax.random.key(0), x))(x))
  assert "pallas_call" not in jaxpr
  fused = lambda x: LearnedResizer(output_size=15, formulation="fused").init(jax.random.key(0), x)
  assert "pallas_call" in str(jax.make_jaxpr(fused)(x))
  # nn.Conv's initial values too, not only its tree: a fused run starts where a plain one does.
  plain = LearnedResizer(output_size=15, formulation="plain").init(jax.random.key(0), x)
  assert jax.tree.all(jax.tree.map(np.array_equal, jax.jit(fused)(x), plain))


@pytest.mark.parametrize("size", [448, 672])
def test_the_fused_stem_lowers_for_a_gpu_without_one(monkeypatch, size):
  """Pallas' Triton lowering (which needs no GPU) accepts both kernels at the paper's 448 -> 224
  (and 672 -> 224, stride 3): shapes that are powers of two, no captured constants. Whether Triton
  then compiles them, and how fast they run, only a GPU can say."""
  monkeypatch.setattr(fused_stem, "_interpret", lambda: False)
  x, w1, b, w2 = jnp.zeros((2, size, size, 3)), jnp.zeros((7, 7, 3, 16)), jnp.zeros(16), jnp.zeros((16, 16))
  loss = lambda *a: sum(jnp.sum(t) for t in fused_stem.stem(*a, (224, 224)))
  lowered = jax.jit(jax.grad(loss, argnums=(1, 2, 3, 4))).trace(x, w1, b, w2, b).lower(
      lowering_platforms=("cuda",)).as_text()
  assert lowered.count("fused_stem_forward") >= 1 and lowered.count("fused_stem_backward") >= 1
  assert "__gpu$xla.gpu.triton" in lowered
