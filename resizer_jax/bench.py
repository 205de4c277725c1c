"""Benchmarks printing one JSON line; speed claims come from here, never from timed tests.

  python -m resizer_jax.bench --workload=train --input=448 --output=224 --batch=8 --backbone=resnet50
  python -m resizer_jax.bench --workload=resizer --torch   # also runs ../shared/bench/torch_reference.py

Workloads: `resizer` (the learned resizer alone, fwd+bwd+SGD on mean(out**2), as the PyTorch
reference does), `train` (the trainer's own jit train step on configs/imagenet.py with the given
backbone/sizes), `input` (the tf.data train pipeline of --config alone: decode + augment + batch;
e.g. --config=configs/imagenet.py:input=448 --data_dir=DIR, with DIR a fake ImageNet of ~500x375
JPEGs from `python -m resizer_jax.data.imagenet_fixture`, see docs/data.md).
With --torch the PyTorch reference runs in the same invocation, on the same machine, and the JSON
carries its images/s and our ratio to it — compare ratios, not absolute times: machines are noisy.
"""
import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax

from resizer_jax import models
from resizer_jax.config_args import load_config
from resizer_jax import train

TORCH_REFERENCE = os.path.join("..", "shared", "bench", "torch_reference.py")
# Dense peak FLOP/s by device kind (spec sheets), for MFU off the CPU.
PEAK_FLOPS = {"H100": {"bfloat16": 989e12, "float32": 494e12}, "H200": {"bfloat16": 989e12,
              "float32": 494e12}, "A100": {"bfloat16": 312e12, "float32": 156e12},
              "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
              "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
              "TPU v5p": {"bfloat16": 459e12, "float32": 459e12}}


def peak_flops(dtype: str) -> tuple[float, str]:
  """The device's peak: the spec sheet off the CPU, a measured large matmul on it."""
  device = jax.devices()[0]
  for kind, peaks in PEAK_FLOPS.items():
    if kind in device.device_kind:
      return peaks[dtype], f"spec sheet ({device.device_kind})"
  n = 2048
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(5):
    matmul(a).block_until_ready()
  return 2 * n**3 * 5 / (time.perf_counter() - t), f"measured {n}x{n} matmul"


def time_steps(step, state, batch, warmup: int, steps: int):
  for _ in range(warmup):
    state, out = step(state, batch)
  jax.block_until_ready(out)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, out = step(state, batch)
    jax.block_until_ready((state, out))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def compiled(step, *args):
  t = time.perf_counter()
  exe = step.lower(*args).compile()
  cost = exe.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return exe, time.perf_counter() - t, float((cost or {}).get("flops", 0.0))


def bench_model(a) -> dict:
  config = load_config(f"{a.imagenet_config}:backbone={a.backbone},input={a.input},"
                       f"target={a.output}")
  config.batch_size = a.batch
  config.dtype = a.dtype
  mesh = train.make_mesh()
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (a.batch, a.input, a.input, 3), dtype=np.uint8)

  model = models.from_config(config)
  if a.workload == "train":
    schedule = train.make_schedule(config, steps_per_epoch=1000)
    tx = train.make_optimizer(config, schedule)
    init = train.make_init(model, tx, a.input)
    state_sharding = jax.tree.map(lambda _: replicated, jax.eval_shape(init, jax.random.key(0)))
    state = jax.jit(init, out_shardings=state_sharding)(jax.random.key(0))
    step = train.jit_train_step(config, model, schedule, state_sharding, sharded)
    batch = jax.device_put({"image": images, "label": rng.integers(0, 1000, a.batch),
                            "skipped": np.zeros(a.batch, np.int32)}, sharded)
  else:  # The resizer alone, as the PyTorch reference's "resizer" workload.
    resizer = model.resizer
    x = jax.device_put(rng.standard_normal((a.batch, a.input, a.input, 3), np.float32), sharded)
    variables = resizer.init(jax.random.key(0), x[:1])
    tx = optax.sgd(0.01, momentum=0.9)
    state = (variables, tx.init(variables["params"]))

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, x):
      variables, opt_state = state
      def loss_fn(params):
        out, updates = resizer.apply({**variables, "params": params}, x, train=True,
                                     mutable=["batch_stats"])
        return jnp.mean(jnp.square(out.astype(jnp.float32))), updates
      (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
      param_updates, opt_state = tx.update(grads, opt_state)
      params = optax.apply_updates(variables["params"], param_updates)
      return ({**variables, **updates, "params": params}, opt_state), loss
    batch = x

  exe, compile_s, flops = compiled(step, state, batch)
  step_s = time_steps(exe, state, batch, a.warmup, a.steps)
  peak, peak_source = peak_flops(a.dtype)
  achieved = flops / step_s
  result = dict(impl="jax", workload=a.workload, input=a.input, output=a.output, batch=a.batch,
                backbone=a.backbone if a.workload == "train" else None, dtype=a.dtype,
                devices=jax.device_count(), device_kind=jax.devices()[0].device_kind,
                step_s=round(step_s, 4), images_per_s=round(a.batch / step_s, 3),
                compile_s=round(compile_s, 2), flops_per_image=flops / a.batch,
                achieved_flops_per_s=achieved, peak_flops_per_s=peak, peak_source=peak_source,
                mfu=round(achieved / peak, 4))
  stats = jax.devices()[0].memory_stats() or {}
  result["peak_memory_bytes"] = stats.get("peak_bytes_in_use",
                                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
  return result


def bench_input(a) -> dict:
  """Images/s of the train input pipeline alone, after `--warmup` batches fill its buffers."""
  from resizer_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # As in training: TF is only the input pipeline.
  config = load_config(a.config)
  for key in ("data_dir", "manual_dir"):
    if getattr(a, key) is not None:
      config.data[key] = getattr(a, key)
  builder = input_pipeline.get_builder(config.data)
  ds = input_pipeline.train_dataset(builder, config.data, global_batch=a.batch, seed=0)
  it = ds.as_numpy_iterator()
  for _ in range(a.warmup):
    next(it)
  t = time.perf_counter()
  for _ in range(a.steps):
    next(it)
  dt = time.perf_counter() - t
  return dict(impl="jax", workload="input", config=a.config, dataset=config.data.name,
              train_preprocess=config.data.train_preprocess, input=config.data.input_size,
              batch=a.batch, steps=a.steps, cpus=os.cpu_count(),
              images_per_s=round(a.batch * a.steps / dt, 3))


def run_torch_reference(a) -> dict:
  if not os.path.exists(a.torch_reference):
    raise FileNotFoundError(f"--torch: no PyTorch reference at {a.torch_reference}")
  cmd = [sys.executable, a.torch_reference, "--workload", a.workload, "--input", str(a.input),
         "--output", str(a.output), "--batch", str(a.batch), "--steps", str(a.steps),
         "--warmup", str(a.warmup)]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workload", choices=["resizer", "train", "input"], default="train")
  p.add_argument("--input", type=int, default=448)
  p.add_argument("--output", type=int, default=224)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--backbone", default="resnet50")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--config", default="configs/demo.py", help="for --workload=input")
  p.add_argument("--data_dir", help="for --workload=input: overrides the config's data.data_dir")
  p.add_argument("--manual_dir", help="for --workload=input: overrides data.manual_dir")
  p.add_argument("--imagenet_config", default="configs/imagenet.py", help="for resizer/train")
  p.add_argument("--torch", action="store_true", help="also run the PyTorch reference, same args")
  p.add_argument("--torch_reference", default=TORCH_REFERENCE)
  a = p.parse_args(argv)
  result = bench_input(a) if a.workload == "input" else bench_model(a)
  if a.torch and a.workload != "input":
    ref = run_torch_reference(a)
    result.update(torch_images_per_s=ref["images_per_s"], torch_threads=ref.get("threads"),
                  ratio_vs_torch=round(result["images_per_s"] / ref["images_per_s"], 3))
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
