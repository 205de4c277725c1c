#!/bin/bash
# The GPU rows of docs/performance.md: our bench and the reference's CUDA port, same machine, in turn.
# On a CUDA host with the project installed (pip install -e . plus the jax CUDA plugin) and torch.
set -e
cd "$(dirname "$0")/../.."
j() { python -m resizer_jax.bench "$@" --steps=20 --warmup=3; }
t() { python docs/gpu/torch_cuda.py "$@"; }
j --workload=train --dtype=bfloat16 --batch=256;   t --workload=train --dtype=bfloat16 --batch=256
j --workload=resizer --dtype=bfloat16 --batch=256; t --workload=resizer --dtype=bfloat16 --batch=256
j --workload=train --dtype=bfloat16 --batch=8;     t --workload=train --dtype=bfloat16 --batch=8
j --workload=train --dtype=float32 --batch=256;    t --workload=train --dtype=float32 --batch=256
