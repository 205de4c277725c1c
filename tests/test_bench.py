"""`python -m resizer_jax.bench`: the figures it prints are the ones it claims to measure, against a
PyTorch reference (`resizer_jax.bench_torch`) of the same work."""
import datetime
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from helpers import REPO
from resizer_jax import bench
from resizer_jax import models
from resizer_jax import train
from resizer_jax.models import conv

TINY = ["--input=64", "--output=32", "--batch=8", "--steps=2", "--warmup=1",
        f"--imagenet_config={REPO}/configs/imagenet.py"]


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


def _conv_flops(pixels, k, c_in, c_out):
  """2 x the multiply-adds of a k x k convolution with `pixels` output pixels."""
  return 2 * pixels * k * k * c_in * c_out


# TINY's models, counted by hand from their layers, per image and forward. The learned resizer of
# configs/imagenet.py (16 filters, one residual block), 64 px to 32 px: its bilinear resizes are
# gathers, no multiply-adds; its 7x7 stem's input gradient is never taken (the images depend on no
# parameter).
RESIZER_STEM = _conv_flops(64 * 64, 7, 3, 16)
RESIZER_REST = (_conv_flops(64 * 64, 1, 16, 16) +      # stem 1x1
                2 * _conv_flops(32 * 32, 3, 16, 16) +  # residual block
                _conv_flops(32 * 32, 3, 16, 16) +      # mid 3x3
                _conv_flops(32 * 32, 7, 16, 3))        # tail 7x7
# resnet_tiny on 32 px with 1000 classes: a 3x3 stem, a basic block at 16 filters, then at 32, 64
# and 128, each strided by 2 with a 1x1 projection; the dense head.
RESNET_TINY = (_conv_flops(32 * 32, 3, 3, 16) + 2 * _conv_flops(32 * 32, 3, 16, 16) +
               sum(_conv_flops(side**2, 3, c // 2, c) + _conv_flops(side**2, 3, c, c) +
                   _conv_flops(side**2, 1, c // 2, c) for side, c in ((16, 32), (8, 64), (4, 128))) +
               2 * 128 * 1000)
# A step: each layer's forward, its kernel gradient and its input gradient (3x), bar that one.
STEP_FLOPS_PER_IMAGE = {"resizer": 3 * (RESIZER_STEM + RESIZER_REST) - RESIZER_STEM,
                        "train": 3 * (RESIZER_STEM + RESIZER_REST + RESNET_TINY) - RESIZER_STEM}


@pytest.mark.parametrize("workload,backbone", [("resizer", "resnet50"), ("train", "resnet_tiny")])
def test_bench_times_the_trainers_step_and_reports_consistent_figures(workload, backbone,
                                                                     monkeypatch):
  steps = []
  real_jit_train_step = train.jit_train_step
  monkeypatch.setattr(train, "jit_train_step",
                      lambda *a, **k: steps.append(1) or real_jit_train_step(*a, **k))
  # Each step's duration as measured here, around the executable the bench times.
  measured = []
  real_time_steps = bench.time_steps

  def time_steps(step, state, batch, warmup, n):
    durations = []

    def timed(state, batch):
      t = time.perf_counter()
      out = jax.block_until_ready(step(state, batch))
      durations.append(time.perf_counter() - t)
      return out
    result = real_time_steps(timed, state, batch, warmup, n)
    measured.append(durations[warmup:])
    return result
  monkeypatch.setattr(bench, "time_steps", time_steps)
  r = bench.main([f"--workload={workload}", f"--backbone={backbone}", *TINY])
  # A formulation other than the plain one traces the plain step too, for the model FLOPs.
  assert len(steps) == (workload == "train") * (1 + (conv.AUTO_FORMULATION["cpu"] != "plain"))
  assert r["resizer"] == "learned" and r["formulation"] == conv.AUTO_FORMULATION["cpu"]
  assert r["devices"] == 8 and r["timed_steps"] == 2 and len(measured) == 1
  # The median of the 2 timed steps (not the warm-up's), for the whole global batch of 8.
  step_s = statistics.median(measured[0])
  assert len(measured[0]) == 2 and r["step_s"] == pytest.approx(step_s, rel=0.05, abs=2e-4)
  assert r["images_per_s"] == pytest.approx(8 / step_s, rel=0.05)
  # The model FLOPs are the hand count; XLA's cost analysis of the CPU executable sees the same
  # convolutions and matmuls (less some of its own accounting), not a different program.
  assert r["flops_per_image"] == STEP_FLOPS_PER_IMAGE[workload]
  assert 0.8 * r["xla_flops_per_image"] < r["flops_per_image"] < 1.1 * r["xla_flops_per_image"]
  assert r["mfu"] == pytest.approx(STEP_FLOPS_PER_IMAGE[workload] * 8 / step_s /
                                   r["peak_flops_per_s"], rel=0.05, abs=1e-4)
  assert 0 < r["mfu"] < 1 and r["compile_s"] > 0 and r["peak_memory_bytes"] > 0


def test_bench_times_resizers_and_formulations_in_turn_each_round_with_the_reference(monkeypatch):
  calls = []
  real_time_steps = bench.time_steps
  monkeypatch.setattr(bench, "time_steps",
                      lambda exe, *a: calls.append(exe) or real_time_steps(exe, *a))
  torch_ips = {"learned": 2.0, "bilinear": 8.0}
  monkeypatch.setattr(bench, "run_torch_reference", lambda a, resizer: calls.append(resizer) or {
      "images_per_s": torch_ips[resizer], "threads": 2, "device": "cpu"})
  r = bench.main(["--workload=train", "--backbone=resnet_tiny", "--resizer=learned,bilinear",
                  "--formulation=plain,s2d", "--rounds=2", "--torch", *TINY])

  variants = [(v["resizer"], v["formulation"]) for v in r["variants"]]
  assert variants == [("learned", "plain"), ("learned", "s2d"), ("bilinear", None)]
  # Each round: our three steps, then the reference's two.
  assert [c for c in calls if isinstance(c, str)] == ["learned", "bilinear"] * 2
  assert [isinstance(c, str) for c in calls] == [False] * 3 + [True] * 2 + [False] * 3 + [True] * 2
  assert len(set(c for c in calls if not isinstance(c, str))) == 3

  learned, s2d, bilinear = r["variants"]
  assert (r["resizer"], r["formulation"], r["images_per_s"]) == ("learned", "plain",
                                                                 learned["images_per_s"])
  assert r["images_per_s_by_resizer"] == {"learned": learned["images_per_s"],
                                          "bilinear": bilinear["images_per_s"]}
  assert r["overhead_pair"] == ["learned", "bilinear"]
  assert r["overhead_ratio"] == pytest.approx(learned["images_per_s"] / bilinear["images_per_s"],
                                              abs=2e-3)
  assert len(r["overhead_ratio_by_round"]) == 2
  assert r["formulation_speedup"]["s2d"] == pytest.approx(
      s2d["images_per_s"] / learned["images_per_s"], abs=2e-3)
  # Both formulations do the model's work; space-to-depth also computes zero taps.
  assert s2d["flops_per_image"] == learned["flops_per_image"] > bilinear["flops_per_image"]
  assert s2d["xla_flops_per_image"] > learned["xla_flops_per_image"]
  assert r["torch_images_per_s_by_resizer"] == torch_ips and r["torch_overhead_ratio"] == 0.25
  assert r["ratio_vs_torch"] == pytest.approx(learned["images_per_s"] / 2.0, abs=2e-3)
  assert r["ratio_vs_torch_by_resizer"]["bilinear"] == pytest.approx(
      bilinear["images_per_s"] / 8.0, abs=2e-3)


def test_bench_check_holds_each_formulation_to_the_exact_convolution_and_catches_a_wrong_one(
    monkeypatch):
  """`--check --rounds=0`: the check alone, as docs/gpu/run.sh runs it on a GPU first."""
  args = ["--workload=resizer", "--input=40", "--output=20", "--batch=2", "--check",
          "--rounds=0", f"--imagenet_config={REPO}/configs/imagenet.py"]
  r = bench.main([*args, "--formulation=plain,s2d,pad8"])
  assert list(r["check_vs_exact"]) == ["plain", "s2d", "pad8"]
  for formulation, errors in r["check_vs_exact"].items():
    assert set(errors) == {"output", "params_grad", "image_grad"}
    assert max(errors.values()) < 1e-4, (formulation, errors)
  # A formulation that flips the kernel (a plausible rearrangement bug) is far off, in the output
  # and in the gradients.
  flipped = lambda lhs, rhs, *a, **k: jax.lax.conv_general_dilated(lhs, rhs[::-1, ::-1], *a, **k)
  monkeypatch.setitem(conv.FORMULATIONS, "pad4", flipped)
  r = bench.main([*args, "--formulation=pad4"])
  assert min(r["check_vs_exact"]["pad4"].values()) > 0.1, r["check_vs_exact"]


@pytest.mark.parametrize("args,error", [
    (["--resizer=learned,bicubc"], "unknown resizer 'bicubc'"),
    (["--workload=resizer", "--resizer=bilinear"], "bilinear has no parameters"),
    (["--resizer=muller", "--torch"], "the PyTorch reference has no muller resizer"),
    (["--formulation=plain,fast"], "unknown resizer formulation 'fast'; valid: auto, plain"),
    (["--formulation=plain,fused"], "formulation 'fused' runs in Pallas' interpret mode on the "
     "CPU (for tests), far slower than any other; time it on a GPU, or pick from: plain, s2d"),
    (["--rounds=0"], "--rounds=0: at least 1 (0 only with --check: the check alone)"),
    (["--resizer=bilinear", "--check"], "--check compares the learned resizer's formulations; "
     "--resizer has none of learned, control"),
])
def test_bench_refuses_what_it_cannot_time_in_one_line(args, error, capsys):
  with pytest.raises(SystemExit):
    bench.main(args)
  assert error in capsys.readouterr().err


def test_the_pytorch_reference_has_our_parameter_counts():
  """The reference's resizer and ResNet-50 hold the same parameters as ours: they time the same work
  (and stand for no smaller model)."""
  from resizer_jax import bench_torch  # pylint: disable=g-import-not-at-top

  def count(module, size):
    variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    return sum(x.size for x in jax.tree.leaves(variables["params"]))

  torch_count = lambda m: sum(p.numel() for p in m.parameters())
  resizer = models.get_resizer("learned", output_size=16, antialias=False)
  assert count(resizer, 32) == torch_count(bench_torch.LearnedResizer((16, 16))) == 12_035
  assert (count(models.get_backbone("resnet50"), 32) == torch_count(bench_torch.ResNet50()) ==
          25_557_032)
  assert torch_count(bench_torch.make_model("train", "bilinear", (16, 16))) == 25_557_032


def test_bench_runs_the_reference_cli_and_only_it_imports_torch():
  r = bench.main(["--workload=resizer", "--input=32", "--output=16", "--batch=8", "--steps=1",
                  "--warmup=1", "--torch", f"--imagenet_config={REPO}/configs/imagenet.py"])
  assert r["torch_device"] == "cpu" and r["torch_images_per_s"] > 0
  assert r["ratio_vs_torch"] == pytest.approx(r["images_per_s"] / r["torch_images_per_s"], rel=1e-2)
  # The bench's process never imports torch: the package needs it only for the reference.
  out = subprocess.run(
      [sys.executable, "-c", "import sys, resizer_jax.bench; print('torch' in sys.modules)"],
      capture_output=True, text=True, check=True, cwd=REPO)
  assert out.stdout.split()[-1] == "False"


def test_bench_out_appends_one_throughput_record_per_variant(tmp_path, capsys):
  from resizer_jax import plan  # pylint: disable=g-import-not-at-top
  out = tmp_path / "throughput.jsonl"
  out.write_text('{"an earlier": "line"}\n')
  r = bench.main(["--workload=train", "--backbone=resnet_tiny", "--resizer=learned,bilinear",
                  "--input=32", "--output=16", "--batch=8", "--steps=1", "--warmup=1",
                  f"--imagenet_config={REPO}/configs/imagenet.py", f"--out={out}"])
  assert "appended 2 throughput records to" in capsys.readouterr().err
  lines = out.read_text().splitlines()
  assert lines[0] == '{"an earlier": "line"}' and len(lines) == 3
  out.write_text("\n".join(lines[1:]) + "\n")  # The new lines alone, as plan reads them.
  learned, bilinear = plan.read_throughputs(out)
  assert learned.keys() >= set(plan.THROUGHPUT_FIELDS) | {"platform", "formulation"}
  assert [(x["resizer"], x["formulation"], x["images_per_s"]) for x in (learned, bilinear)] == [
      (v["resizer"], v["formulation"], v["images_per_s"]) for v in r["variants"]]
  assert learned["images_per_s"] == r["images_per_s"]
  assert {k: learned[k] for k in ("workload", "device_kind", "platform", "num_devices", "backbone",
                                  "input", "output", "dtype", "global_batch")} == dict(
      workload="train", device_kind=jax.devices()[0].device_kind, platform="cpu", num_devices=8,
      backbone="resnet_tiny", input=32, output=16, dtype="float32", global_batch=8)
  assert learned["date"] == datetime.datetime.now(datetime.timezone.utc).date().isoformat()
  assert plan.find_throughput([learned, bilinear], backbone="resnet_tiny", resizer="bilinear",
                              input_size=32, output_size=16, dtype="float32") == bilinear


def test_bench_out_refuses_the_input_workload_and_an_unwritable_file(tmp_path, capsys):
  with pytest.raises(SystemExit):
    bench.main(["--workload=input", f"--out={tmp_path}/t.jsonl"])
  assert "the input pipeline's is a host figure" in capsys.readouterr().err
  (tmp_path / "dir.jsonl").mkdir()
  with pytest.raises(SystemExit):
    bench.main(["--workload=resizer", f"--out={tmp_path}/dir.jsonl"])
  assert f"--out={tmp_path}/dir.jsonl cannot be written: Is a directory" in capsys.readouterr().err
