"""Benchmarks printing one JSON line; speed claims come from here, never from timed tests.

  python -m resizer_jax.bench --workload=train --input=448 --output=224 --batch=8 --backbone=resnet50
  python -m resizer_jax.bench --workload=train --resizer=learned,bilinear --torch --rounds=3
  python -m resizer_jax.bench --workload=resizer --formulation=plain,s2d,pad4 --rounds=3

Workloads: `resizer` (the learned resizer alone, fwd+bwd+SGD on mean(out**2), as the PyTorch
reference does), `train` (the trainer's own jit train step on configs/imagenet.py with the given
resizer/backbone/sizes), `input` (the tf.data train pipeline of --config alone: decode + augment +
batch; e.g. --config=configs/imagenet.py:input=448 --data_dir=DIR, with DIR a fake ImageNet of
~500x375 JPEGs from `python -m resizer_jax.data.imagenet_fixture`, see docs/data.md).

Variants: every --resizer (e.g. learned,bilinear: the JSON's `overhead_ratio` is the first one's
images/s over bilinear's, same backbone, sizes, batch, dtype and devices) and, for the learned
resizer, every --formulation of its full-resolution convolutions (models/conv.py; the JSON's
`formulation_speedup` is each one's images/s over the first's; --check first holds each one's
output and gradients to the exact convolution, `check_vs_exact`). They compile in one process and are
timed in turn in each of --rounds rounds, so that all sample the same background load; the
top-level figures are the first variant's, the others are under `variants`.
With --torch the PyTorch reference (`python -m resizer_jax.bench_torch`, same arguments, on the CPU
or CUDA as JAX runs) runs once per round for each resizer, after ours, and the JSON carries its
images/s and our ratio to it — compare ratios, not absolute times: machines are noisy. The JSON
also carries the load average before and after, and $XLA_FLAGS (e.g. the CPU's opt-in
convolutions, docs/performance.md).

--out=FILE appends one JSON line per variant to FILE (JSON Lines: one file can hold several
backbones, sizes and machines): device kind, platform, device count, backbone, resizer,
formulation, sizes, dtype, global batch, the variant's images/s as printed, workload and date. The
`train` workload's records are what `python -m resizer_jax.sweep --plan --throughput=FILE` turns
into device-hours (resizer_jax/plan.py, which reads them); docs/throughput/ holds measured ones.
"""
import argparse
import datetime
import functools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
from jax.extend import core as jax_core
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax

from resizer_jax import models
from resizer_jax import plan
from resizer_jax.config_args import load_config
from resizer_jax import train
from resizer_jax.models import conv

# The resizers resizer_jax.bench_torch has (imported only in its own process, with torch).
TORCH_RESIZERS = ("learned", "bilinear")
# The resizers built as models.LearnedResizer, whose convolutions take a formulation.
FORMULATED = ("learned", "control")
# Dense peak FLOP/s by device kind (spec sheets), for MFU off the CPU.
PEAK_FLOPS = {"H100": {"bfloat16": 989e12, "float32": 494e12}, "H200": {"bfloat16": 989e12,
              "float32": 494e12}, "A100": {"bfloat16": 312e12, "float32": 156e12},
              "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
              "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
              "TPU v5p": {"bfloat16": 459e12, "float32": 459e12}}


def peak_flops(dtype: str) -> tuple[float, str]:
  """The peak of all devices together: spec sheets off the CPU, a measured large matmul on it.

  Simulated CPU devices share the host's cores, so the CPU's peak is one matmul's, at any count.
  """
  device, n_devices = jax.devices()[0], jax.device_count()
  for kind, peaks in PEAK_FLOPS.items():
    if kind in device.device_kind:
      return peaks[dtype] * n_devices, f"spec sheet ({device.device_kind}) x {n_devices}"
  n = 2048
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(5):  # The fastest run: a peak, and the least disturbed by other processes.
    t = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best, f"measured {n}x{n} matmul"


def time_steps(step, state, batch, warmup: int, steps: int):
  """(state, seconds of each of `steps` steps after `warmup` untimed ones)."""
  for _ in range(warmup):
    state, out = step(state, batch)
  jax.block_until_ready(out)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, out = step(state, batch)
    jax.block_until_ready((state, out))
    times.append(time.perf_counter() - t)
  return state, times


def compiled(step, *args):
  """(executable, compile seconds, FLOPs per step by XLA's cost analysis of the executable).

  The executable is one device's share of the step: its count is scaled by the device count.
  """
  t = time.perf_counter()
  exe = step.lower(*args).compile()
  compile_s = time.perf_counter() - t
  cost = exe.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return exe, compile_s, float((cost or {}).get("flops", 0.0)) * jax.device_count()


def matmul_flops(jaxpr) -> float:
  """2 x the multiply-adds of every convolution and matmul in `jaxpr` and its sub-jaxprs.

  The model FLOPs that MFU is quoted against: the program as written, so the same on every backend
  (XLA's cost analysis of a GPU executable leaves out the convolutions it hands to cuDNN).
  """
  total = 0
  for eqn in jaxpr.eqns:
    out = eqn.outvars[0].aval
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      total += 2 * out.size * math.prod(eqn.invars[0].aval.shape[d] for d in contracting)
    elif eqn.primitive.name == "conv_general_dilated":
      kernel, spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec
      # A dilated input (the input gradient of a strided convolution) is mostly holes: a window
      # meets 1/prod(dilation) of its taps, so that gradient costs what its forward did.
      taps = math.prod(kernel[d] for d in spec[2:]) / math.prod(eqn.params["lhs_dilation"])
      total += 2 * out.size * kernel[spec[1]] * taps
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, (jax_core.Jaxpr, jax_core.ClosedJaxpr)):
          total += matmul_flops(getattr(sub, "jaxpr", sub))
  return total


def _config(a, resizer: str, formulation: str | None):
  config = load_config(f"{a.imagenet_config}:backbone={a.backbone},resizer={resizer},"
                       f"input={a.input},target={a.output}")
  config.batch_size = a.batch
  config.dtype = a.dtype
  if formulation is not None:
    config.resizer.formulation = formulation
  return config


def _resizer_step(resizer, tx):
  """The resizer alone, as the PyTorch reference's "resizer" workload: SGD on mean(out**2)."""
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
  return step


def setup_model(a, resizer: str, formulation: str | None):
  """(compiled step, state, batch, compile s, model and XLA FLOPs per step) of resizer or train.

  `formulation`: the learned resizer's (models.conv.FORMULATIONS), None for a fixed resizer.
  """
  config = _config(a, resizer, formulation)
  mesh = train.make_mesh()
  sharded = NamedSharding(mesh, P("data"))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (a.batch, a.input, a.input, 3), dtype=np.uint8)

  model = models.from_config(config)
  if a.workload == "train":  # The trainer's own state, shardings and jit step.
    schedule = train.make_schedule(config, steps_per_epoch=1000)
    tx = train.make_optimizer(config, schedule)
    init = train.make_init(model, tx, a.input)
    state_sharding = train.state_sharding(jax.eval_shape(init, jax.random.key(0)), mesh)
    state = jax.jit(init, out_shardings=state_sharding)(jax.random.key(0))
    make_step = lambda config: train.jit_train_step(config, models.from_config(config), schedule,
                                                    state_sharding, sharded)
    batch = jax.device_put({"image": images, "label": rng.integers(0, 1000, a.batch),
                            "skipped": np.zeros(a.batch, np.int32)}, sharded)
  else:
    x = jax.device_put(rng.standard_normal((a.batch, a.input, a.input, 3), np.float32), sharded)
    variables = model.resizer.init(jax.random.key(0), x[:1])
    tx = optax.sgd(0.01, momentum=0.9)
    state = (variables, tx.init(variables["params"]))
    make_step = lambda config: _resizer_step(models.from_config(config).resizer, tx)
    batch = x
  step = make_step(config)
  exe, compile_s, xla_flops = compiled(step, state, batch)
  # Model FLOPs are the plain convolutions': the zero taps space-to-depth computes are no work of
  # the model's. Every formulation has the same parameters, so it traces on the same state.
  plain = step if formulation in (None, "plain") else make_step(_config(a, resizer, "plain"))
  flops = matmul_flops(jax.make_jaxpr(plain)(state, batch).jaxpr)
  return exe, state, batch, compile_s, flops, xla_flops


def check_formulations(a, formulations) -> dict:
  """Each formulation's resizer output and gradients (image and every parameter, train mode) against
  the plain convolution in float32 at 'highest' precision, at the bench's sizes and dtype, on a
  batch of at most 4: {formulation: {what: max |diff| / max |truth|}}. "plain" is checked too: its
  own error (TF32 or bfloat16 rounding on a GPU) is what the others are to be read against.
  """
  rng = np.random.default_rng(1)
  n = min(a.batch, 4)
  x = jnp.asarray(rng.standard_normal((n, a.input, a.input, 3)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((n, a.output, a.output, 3)), jnp.float32)

  def run(formulation, dtype):
    config = _config(a, "learned", formulation)
    config.dtype = dtype
    resizer = models.from_config(config).resizer
    variables = resizer.init(jax.random.key(0), x[:1])

    def forward(params, x):
      out, _ = resizer.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
      return out.astype(jnp.float32)

    @jax.jit
    def outputs(params, x):
      out, vjp = jax.vjp(forward, params, x)
      return {"output": out, **dict(zip(("params_grad", "image_grad"), vjp(cotangent)))}
    return outputs(variables["params"], x)

  with jax.default_matmul_precision("highest"):
    truth = run("plain", "float32")

  def error(got, want):
    # Each array's error relative to its own size, or to a thousandth of the largest where its true
    # value is (near) zero, as the gradient of a bias that BatchNorm follows is.
    floor = 1e-3 * max(float(jnp.max(jnp.abs(t))) for t in jax.tree.leaves(want))
    return max(float(jnp.max(jnp.abs(g - t))) / max(float(jnp.max(jnp.abs(t))), floor)
               for g, t in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  return {f: {what: round(error(got[what], truth[what]), 7) for what in truth}
          for f, got in ((f, run(f, a.dtype)) for f in formulations)}


def model_result(a, resizer, formulation, step_times, compile_s, flops, xla_flops, peak) -> dict:
  step_s = statistics.median(step_times)
  peak, peak_source = peak
  achieved = flops / step_s
  result = dict(impl="jax", workload=a.workload, resizer=resizer, formulation=formulation,
                input=a.input, output=a.output, batch=a.batch,
                backbone=a.backbone if a.workload == "train" else None, dtype=a.dtype,
                devices=jax.device_count(), device_kind=jax.devices()[0].device_kind,
                step_s=round(step_s, 4), images_per_s=round(a.batch / step_s, 3),
                timed_steps=len(step_times), compile_s=round(compile_s, 2),
                flops_per_image=flops / a.batch, xla_flops_per_image=xla_flops / a.batch,
                achieved_flops_per_s=achieved,
                peak_flops_per_s=peak, peak_source=peak_source, mfu=round(achieved / peak, 4),
                xla_flags=os.environ.get("XLA_FLAGS", ""))
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    result.update(peak_memory_bytes=stats["peak_bytes_in_use"], peak_memory_source="device")
  else:  # The CPU client keeps no allocator statistics.
    result.update(peak_memory_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  peak_memory_source="process max RSS")
  return result


def throughput_record(result: dict, a, argv) -> dict:
  """One variant's line of a --out file (plan.THROUGHPUT_FIELDS and how it was measured)."""
  return dict(
      workload=a.workload, device_kind=result["device_kind"], platform=jax.default_backend(),
      num_devices=result["devices"], backbone=result["backbone"], resizer=result["resizer"],
      formulation=result["formulation"], input=a.input, output=a.output, dtype=a.dtype,
      global_batch=a.batch, images_per_s=result["images_per_s"],
      date=datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
      source="python -m resizer_jax.bench " + " ".join(argv), step_s=result["step_s"],
      timed_steps=result["timed_steps"], rounds=a.rounds, jax_version=jax.__version__,
      xla_flags=result["xla_flags"])


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


def run_torch_reference(a, resizer: str) -> dict:
  device = {"cpu": "cpu", "gpu": "cuda"}[jax.default_backend()]
  cmd = [sys.executable, "-m", "resizer_jax.bench_torch", f"--workload={a.workload}",
         f"--resizer={resizer}", f"--input={a.input}", f"--output={a.output}",
         f"--batch={a.batch}", f"--steps={a.steps}", f"--warmup={a.warmup}",
         f"--dtype={a.dtype}", f"--device={device}"]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def variants(a) -> list[tuple[str, str | None]]:
  """(resizer, formulation) to time: every formulation for a learned resizer, none for the rest."""
  formulations = list(dict.fromkeys(conv.resolve_formulation(f, jax.default_backend())
                                    for f in a.formulation))
  if "fused" in formulations and jax.default_backend() == "cpu":
    raise ValueError("formulation 'fused' runs in Pallas' interpret mode on the CPU (for tests), "
                     "far slower than any other; time it on a GPU, or pick from: "
                     f"{', '.join(f for f in conv.FORMULATIONS if f != 'fused')}")
  return [(r, f) for r in dict.fromkeys(a.resizer)
          for f in (formulations if r in FORMULATED else (None,))]


def _ratio(x, y):
  return round(x / y, 3)


def comparisons(todo, results, by_round, torch_runs) -> dict:
  """The JSON's ratios between the variants, and to the reference's runs (resizer -> its JSONs)."""
  out = {}
  first = {}  # resizer -> its first variant, the one its ratios are quoted for
  for i, (resizer, _) in enumerate(todo):
    first.setdefault(resizer, i)
  ours = {r: results[i]["images_per_s"] for r, i in first.items()}
  lead = todo[0][0]
  if len(ours) > 1:
    out["images_per_s_by_resizer"] = ours
  if "bilinear" in ours and lead != "bilinear":
    # What the learned resizer costs: its step's speed over the bilinear baseline's.
    out.update(overhead_pair=[lead, "bilinear"], overhead_ratio=_ratio(ours[lead], ours["bilinear"]),
               overhead_ratio_by_round=[_ratio(x, y) for x, y in zip(by_round[first[lead]],
                                                                     by_round[first["bilinear"]])])
  # Each formulation's speed over the first's, for the first resizer that takes them.
  formulated = [i for i, (_, f) in enumerate(todo) if f is not None]
  same = [i for i in formulated if todo[i][0] == todo[formulated[0]][0]]
  if len(same) > 1:
    base = results[same[0]]["images_per_s"]
    out.update(formulation_baseline=todo[same[0]][1],
               images_per_s_by_formulation={todo[i][1]: results[i]["images_per_s"] for i in same},
               formulation_speedup={todo[i][1]: _ratio(results[i]["images_per_s"], base)
                                    for i in same})
  if torch_runs:
    theirs = {r: [run["images_per_s"] for run in runs] for r, runs in torch_runs.items()}
    torch_ips = {r: statistics.median(x) for r, x in theirs.items()}
    out.update(torch_images_per_s=round(torch_ips[lead], 3),
               torch_threads=torch_runs[lead][0].get("threads"),
               torch_device=torch_runs[lead][0].get("device"),
               ratio_vs_torch=_ratio(ours[lead], torch_ips[lead]),
               torch_images_per_s_by_round=theirs[lead],
               ratio_by_round=[_ratio(x, y) for x, y in zip(by_round[0], theirs[lead])])
    if len(torch_ips) > 1:
      out.update(torch_images_per_s_by_resizer={r: round(x, 3) for r, x in torch_ips.items()},
                 ratio_vs_torch_by_resizer={r: _ratio(ours[r], torch_ips[r]) for r in torch_ips})
    if "overhead_pair" in out:
      out["torch_overhead_ratio"] = _ratio(torch_ips[lead], torch_ips["bilinear"])
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workload", choices=["resizer", "train", "input"], default="train")
  p.add_argument("--resizer", type=lambda s: s.split(","), default=["learned"],
                 help="comma-separated resizers (models.RESIZERS) timed in turn in each round; "
                 "e.g. learned,bilinear for the learned resizer's overhead ratio")
  p.add_argument("--formulation", type=lambda s: s.split(","), default=["auto"],
                 help="comma-separated formulations of the learned resizer's full-resolution "
                 f"convolutions: auto, {', '.join(conv.FORMULATIONS)}")
  p.add_argument("--input", type=int, default=448)
  p.add_argument("--output", type=int, default=224)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--backbone", default="resnet50")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--steps", type=int, default=5, help="timed steps per round")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--rounds", type=int, default=1,
                 help="alternate this many timings of each variant (and runs of the reference); "
                 "0 with --check: the check alone")
  p.add_argument("--config", default="configs/demo.py", help="for --workload=input")
  p.add_argument("--data_dir", help="for --workload=input: overrides the config's data.data_dir")
  p.add_argument("--manual_dir", help="for --workload=input: overrides data.manual_dir")
  p.add_argument("--imagenet_config", default="configs/imagenet.py", help="for resizer/train")
  p.add_argument("--torch", action="store_true",
                 help="also run the PyTorch reference (python -m resizer_jax.bench_torch), same args")
  p.add_argument("--check", action="store_true",
                 help="first check each formulation's resizer output and gradients against the "
                 "plain convolution at float32 'highest' precision (the JSON's check_vs_exact)")
  p.add_argument("--out", help="append one JSON line per variant to this file (JSON Lines), the "
                 "throughput records of `python -m resizer_jax.sweep --plan --throughput=FILE`")
  argv = sys.argv[1:] if argv is None else list(argv)
  a = p.parse_args(argv)
  if a.out:
    if a.workload == "input":
      p.error("--out records the model workloads' throughput (train, resizer); the input "
              "pipeline's is a host figure, printed only")
    try:  # Before minutes of timing, not after.
      plan.append_throughputs(a.out, [])
    except OSError as e:
      p.error(f"--out={a.out} cannot be written: {e.strerror}")
  if a.workload == "input":
    result = bench_input(a)
    print(json.dumps(result))
    return result
  for name in a.resizer:
    if name not in models.RESIZERS:
      p.error(f"unknown resizer {name!r}; valid: {', '.join(models.RESIZERS)}")
    if a.workload == "resizer" and name in models.METHODS:
      p.error(f"--workload=resizer trains the resizer alone, and {name} has no parameters; "
              "compare resizers with --workload=train")
    if a.torch and name not in TORCH_RESIZERS:
      p.error(f"--torch: the PyTorch reference has no {name} resizer; it has "
              f"{', '.join(TORCH_RESIZERS)}")
  if a.torch and jax.default_backend() not in ("cpu", "gpu"):
    p.error(f"--torch: the PyTorch reference runs on the CPU or CUDA, not {jax.default_backend()}")
  try:
    todo = variants(a)
  except ValueError as e:
    p.error(str(e))

  if a.rounds < (0 if a.check else 1):
    p.error(f"--rounds={a.rounds}: at least 1 (0 only with --check: the check alone)")
  load_before = os.getloadavg()
  checked = {}
  if a.check:
    formulated = [f for r, f in todo if f is not None]
    if not formulated:
      p.error("--check compares the learned resizer's formulations; --resizer has none of "
              f"{', '.join(FORMULATED)}")
    checked = {"check_vs_exact": check_formulations(a, list(dict.fromkeys(formulated)))}
    if a.rounds == 0:  # The check alone.
      result = dict(workload=a.workload, input=a.input, output=a.output, dtype=a.dtype,
                    device_kind=jax.devices()[0].device_kind, **checked)
      print(json.dumps(result))
      return result
    print(json.dumps(checked), file=sys.stderr, flush=True)  # Before minutes of timing.
  runs = [setup_model(a, resizer, formulation) for resizer, formulation in todo]
  states = [state for _, state, *_ in runs]
  rounds = [[] for _ in runs]
  torch_runs = {r: [] for r in dict.fromkeys(a.resizer)} if a.torch else {}
  for _ in range(a.rounds):
    for i, (exe, _, batch, *_) in enumerate(runs):
      states[i], times = time_steps(exe, states[i], batch, a.warmup, a.steps)
      rounds[i].append(times)
    for r, out in torch_runs.items():
      out.append(run_torch_reference(a, r))
  peak = peak_flops(a.dtype)
  results = [model_result(a, resizer, formulation, sum(times, []), compile_s, flops, xla_flops,
                          peak)
             for (resizer, formulation), times, (_, _, _, compile_s, flops, xla_flops)
             in zip(todo, rounds, runs)]
  by_round = [[a.batch / statistics.median(t) for t in times] for times in rounds]
  # The first variant's figures, under the keys a single one prints; the others beside them.
  result = dict(results[0], rounds=a.rounds,
                images_per_s_by_round=[round(x, 3) for x in by_round[0]])
  if len(results) > 1:
    result["peak_memory_source"] += " (all variants)"
    result["variants"] = [
        {k: r[k] for k in ("resizer", "formulation", "images_per_s", "step_s", "compile_s",
                           "flops_per_image", "xla_flops_per_image", "mfu")} |
        {"images_per_s_by_round": [round(x, 3) for x in ips]}
        for r, ips in zip(results, by_round)]
  result.update(comparisons(todo, results, by_round, torch_runs), **checked)
  result.update(loadavg_before=round(load_before[0], 2), loadavg_after=round(os.getloadavg()[0], 2),
                cpus=os.cpu_count())
  print(json.dumps(result))
  if a.out:
    plan.append_throughputs(a.out, [throughput_record(r, a, argv) for r in results])
    print(f"appended {len(results)} throughput record{'s' * (len(results) > 1)} to {a.out}",
          file=sys.stderr)
  return result


if __name__ == "__main__":
  main()
