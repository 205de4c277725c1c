"""`python -m resizer_jax.bench`: the figures it prints are the ones it claims to measure."""
import jax
import jax.numpy as jnp
import pytest

from helpers import REPO
from resizer_jax import bench
from resizer_jax import train


def _conv(x, w, stride):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("stride", [1, 2])
def test_model_flops_count_convolutions_matmuls_and_their_gradients(stride):
  x, w, m = jnp.ones((2, 32, 32, 3)), jnp.ones((7, 7, 3, 16)), jnp.ones((16, 10))
  # A dense head inside a nested jit, as flax and the trainer produce.
  f = lambda x, w: jnp.sum(jax.jit(lambda h: h @ m)(_conv(x, w, stride).mean((1, 2))))
  conv_flops = 2 * 2 * (32 // stride)**2 * 7 * 7 * 3 * 16
  dense_flops = 2 * 2 * 16 * 10
  assert bench.matmul_flops(jax.make_jaxpr(f)(x, w).jaxpr) == conv_flops + dense_flops
  # Gradients for the input and the kernel: three convolutions of the forward's cost, strided or
  # not, and two of the head's matmul (no gradient for `m`).
  grad = jax.make_jaxpr(jax.grad(f, (0, 1)))(x, w).jaxpr
  assert bench.matmul_flops(grad) == 3 * conv_flops + 2 * dense_flops


@pytest.mark.parametrize("workload,backbone", [("resizer", "resnet50"), ("train", "resnet_tiny")])
def test_bench_times_the_trainers_step_and_reports_consistent_figures(workload, backbone,
                                                                     monkeypatch):
  steps = []
  real_jit_train_step = train.jit_train_step
  monkeypatch.setattr(train, "jit_train_step",
                      lambda *a, **k: steps.append(1) or real_jit_train_step(*a, **k))
  r = bench.main([f"--workload={workload}", f"--backbone={backbone}", "--input=64", "--output=32",
                  "--batch=8", "--steps=2", "--warmup=1",
                  f"--imagenet_config={REPO}/configs/imagenet.py"])
  assert len(steps) == (workload == "train")
  assert r["devices"] == 8 and r["timed_steps"] == 2
  assert r["images_per_s"] == pytest.approx(8 / r["step_s"], rel=1e-2)
  # On the CPU, XLA's cost analysis sees every convolution: the model FLOPs (convolutions and
  # matmuls only) are that count less the elementwise work, not a different program.
  assert 0.8 * r["xla_flops_per_image"] < r["flops_per_image"] < 1.1 * r["xla_flops_per_image"]
  assert r["mfu"] == pytest.approx(r["achieved_flops_per_s"] / r["peak_flops_per_s"], abs=1e-4)
  assert 0 < r["mfu"] < 1 and r["compile_s"] > 0 and r["peak_memory_bytes"] > 0
