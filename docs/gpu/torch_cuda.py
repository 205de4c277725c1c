"""The PyTorch reference's models and step on a CUDA GPU, for same-machine ratios there.

../shared/bench/torch_reference.py runs on the CPU only; this imports its modules and times the same
step (SGD with momentum; label-smoothed cross-entropy, or the resizer's mean square) on the GPU:
eager, channels_last, cudnn.benchmark, bf16 autocast for --dtype=bfloat16; median of timed steps.

  python docs/gpu/torch_cuda.py --workload=train --dtype=bfloat16 --batch=256
"""
import argparse
import importlib.util
import json
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--workload", choices=["resizer", "train"], default="train")
p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
p.add_argument("--batch", type=int, default=256)
p.add_argument("--input", type=int, default=448)
p.add_argument("--output", type=int, default=224)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--torch_reference", default=os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared", "bench", "torch_reference.py"))
a = p.parse_args()
spec = importlib.util.spec_from_file_location("torch_reference", a.torch_reference)
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

torch.manual_seed(0)
torch.backends.cudnn.benchmark = True
resizer = ref.LearnedResizer((a.output, a.output))
model = nn.Sequential(resizer, ref.ResNet50()) if a.workload == "train" else resizer
model = model.cuda().to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(a.batch, 3, a.input, a.input, device="cuda").to(memory_format=torch.channels_last)
y = torch.randint(0, 1000, (a.batch,), device="cuda")
amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.dtype == "bfloat16")


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
torch.cuda.synchronize()
times = []
for _ in range(a.steps):
  t = time.perf_counter()
  step()
  torch.cuda.synchronize()
  times.append(time.perf_counter() - t)
dt = statistics.median(times)
print(json.dumps(dict(impl="torch-cuda-eager", workload=a.workload, batch=a.batch, dtype=a.dtype,
                      step_s=round(dt, 5), images_per_s=round(a.batch / dt, 1),
                      peak_memory_bytes=torch.cuda.max_memory_allocated())))
