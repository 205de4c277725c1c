"""The PyTorch reference: the learned resizer + ResNet-50 train step, and the resizer's alone.

  python -m resizer_jax.bench_torch --workload=train --input=448 --output=224 --batch=8
  python -m resizer_jax.bench_torch --workload=train --resizer=bilinear --device=cuda --dtype=bfloat16

prints one JSON line ({"images_per_s", "step_s", ...}). `python -m resizer_jax.bench --torch` runs it
with its own arguments, in turn with its rounds, for same-machine ratios. The models are written from
the paper's description (Talebi & Milanfar 2021, Fig. 3) and the ResNet-50 v1.5 layout (stride on
the 3x3 conv), with the parameter counts of ours (tests/test_bench.py), so both time the same work;
the step is SGD with momentum on label-smoothed cross-entropy (`train`) or on the resizer output's
mean square (`resizer`). `--resizer=bilinear` puts a fixed bilinear resize in front of ResNet-50
instead, for the learned resizer's overhead ratio. Eager PyTorch, channels-last, `cudnn.benchmark`
and bfloat16 autocast (--dtype=bfloat16) on CUDA; the median of the timed steps.

Needs torch (`pip install -e ".[torch]"`); nothing else in the package imports it.
"""
import argparse
import json
import statistics
import time

import torch
from torch import nn
import torch.nn.functional as F


def conv_bn(cin, cout, k, stride=1):
  return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class ResBlock(nn.Module):

  def __init__(self, n):
    super().__init__()
    self.c1, self.c2 = conv_bn(n, n, 3), conv_bn(n, n, 3)

  def forward(self, x):
    return x + self.c2(F.leaky_relu(self.c1(x), 0.2))


class LearnedResizer(nn.Module):
  """Fig. 3: bilinear skip + conv features resized bilinearly + r residual blocks."""

  def __init__(self, out_hw, n=16, r=1):
    super().__init__()
    self.out_hw = out_hw
    self.head = nn.Sequential(nn.Conv2d(3, n, 7, padding=3), nn.LeakyReLU(0.2),
                              nn.Conv2d(n, n, 1), nn.LeakyReLU(0.2), nn.BatchNorm2d(n))
    self.blocks = nn.Sequential(*[ResBlock(n) for _ in range(r)])
    self.mid = conv_bn(n, n, 3)
    self.tail = nn.Conv2d(n, 3, 7, padding=3)

  def forward(self, x):
    skip = bilinear(x, self.out_hw)
    feats = bilinear(self.head(x), self.out_hw)
    return self.tail(self.mid(self.blocks(feats)) + feats) + skip


def bilinear(x, out_hw):
  return F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False, antialias=False)


class Bilinear(nn.Module):
  """The fixed baseline resizer: no parameters."""

  def __init__(self, out_hw):
    super().__init__()
    self.out_hw = out_hw

  def forward(self, x):
    return bilinear(x, self.out_hw)


class Bottleneck(nn.Module):

  def __init__(self, cin, width, stride):
    super().__init__()
    cout = width * 4
    self.body = nn.Sequential(conv_bn(cin, width, 1), nn.ReLU(inplace=True),
                              conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
                              conv_bn(width, cout, 1))
    self.proj = conv_bn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()

  def forward(self, x):
    return F.relu(self.body(x) + self.proj(x))


class ResNet50(nn.Module):

  def __init__(self, num_classes=1000):
    super().__init__()
    layers = [conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
      for i in range(blocks):
        layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
        cin = width * 4
    self.features = nn.Sequential(*layers)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.fc(self.features(x).mean((2, 3)))


RESIZERS = {"learned": LearnedResizer, "bilinear": Bilinear}


def make_model(workload: str, resizer: str, out_hw) -> nn.Module:
  front = RESIZERS[resizer](out_hw)
  return nn.Sequential(front, ResNet50()) if workload == "train" else front


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workload", choices=["resizer", "train"], default="train")
  p.add_argument("--resizer", choices=sorted(RESIZERS), default="learned")
  p.add_argument("--input", type=int, default=448)
  p.add_argument("--output", type=int, default=224)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                 help="bfloat16: autocast around the forward pass (the parameters stay float32)")
  p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                 help="auto: CUDA where torch sees a GPU, else the CPU")
  a = p.parse_args(argv)
  if a.workload == "resizer" and a.resizer == "bilinear":
    p.error("--workload=resizer trains the resizer alone, and bilinear has no parameters; "
            "compare resizers with --workload=train")
  return a


def main(argv=None):
  a = parse(argv)
  device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto"
                        else a.device)
  torch.manual_seed(0)
  torch.backends.cudnn.benchmark = True
  model = make_model(a.workload, a.resizer, (a.output, a.output))
  model = model.to(device, memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  x = torch.randn(a.batch, 3, a.input, a.input, device=device)
  x = x.to(memory_format=torch.channels_last)
  y = torch.randint(0, 1000, (a.batch,), device=device)
  amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.dtype == "bfloat16")
  sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

  def step():
    opt.zero_grad(set_to_none=True)
    with amp:
      out = model(x).float()
      loss = (F.cross_entropy(out, y, label_smoothing=0.1) if a.workload == "train"
              else out.square().mean())
    loss.backward()
    opt.step()

  for _ in range(a.warmup):
    step()
  sync()
  times = []
  for _ in range(a.steps):
    t = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t)
  dt = statistics.median(times)
  result = dict(impl="torch", torch_version=torch.__version__, workload=a.workload,
                resizer=a.resizer, input=a.input, output=a.output, batch=a.batch, dtype=a.dtype,
                device=str(device), threads=torch.get_num_threads(),
                params=sum(p.numel() for p in model.parameters()), step_s=round(dt, 5),
                images_per_s=round(a.batch / dt, 3), timed_steps=len(times))
  if device.type == "cuda":
    result.update(device_name=torch.cuda.get_device_name(device),
                  peak_memory_bytes=torch.cuda.max_memory_allocated(device))
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
