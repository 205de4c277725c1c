#!/bin/bash
# Issue #15's GPU rows of docs/performance.md in one call, under 10 minutes on one H200: ours and the
# PyTorch reference (python -m resizer_jax.bench_torch) on the same GPU, in interleaved rounds.
#   1. train step, learned vs bilinear resizer: images/s, overhead ratio, the reference's, MFU;
#   2. the resizer alone under each formulation of its full-resolution convolutions (models/conv.py),
#      "fused" being the Pallas stem (models/fused_stem.py), in both.
# Needs a CUDA host with the project installed (pip install -e ".[torch]" plus the jax CUDA plugin).
# JSON lines go to $OUT (or docs/gpu/) as gpu_<date>.jsonl; a markdown table is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-docs/gpu}/gpu_$(date +%F_%H%M).jsonl"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out.gpu"
b() { timeout "$1" python -m resizer_jax.bench --dtype=bfloat16 --batch=256 --steps=20 --warmup=3 \
        --rounds=2 --torch "${@:2}" | tail -n 1 | tee -a "$out"; }
# About 5 minutes: three compiles (about 50, 50 and 30 s; the fused one not timed yet) and four
# reference runs.
b 330 --workload=train --resizer=learned,bilinear --formulation=plain,fused
# About 3.5 minutes: four compiles of the resizer step (about 30 s each) and two reference runs.
b 240 --workload=resizer --formulation=plain,s2d,pad8,fused
python - "$out" << 'PY'
import json, sys
print("| workload | device | dtype | batch | formulation | ours (img/s) | bilinear step (img/s) | "
      "overhead ratio (ours; PyTorch) | PyTorch (img/s) | ratio | MFU |")
print("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
for line in open(sys.argv[1]):
  r = json.loads(line)
  for v in r.get("variants", [r]):
    if v["resizer"] == "bilinear":
      continue
    first = v["formulation"] == r["formulation"]
    bilinear = r.get("images_per_s_by_resizer", {}).get("bilinear")
    # Each formulation's own overhead; the reference's is quoted once.
    overhead = (f"{v['images_per_s'] / bilinear:.3f}" + (f"; {r['torch_overhead_ratio']}" if first
                                                         else "")) if bilinear else ""
    torch = r["torch_images_per_s"]
    print(f"| {r['workload']} | {r['device_kind']} | {r['dtype']} | {r['batch']} | "
          f"{v['formulation']} | {v['images_per_s']} | "
          f"{bilinear if bilinear and first else ''} | {overhead} | {torch} | {v['images_per_s'] / torch:.2f} | {v['mfu']} |")
PY
