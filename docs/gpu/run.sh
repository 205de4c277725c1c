#!/bin/bash
# Issue #28's GPU figures on one lent H200, on the machine's own jax/torch image, in parts that each
# fit one call (at most 10 minutes); 2026-12-04 took about 3 minutes of setup and correctness, 5 of
# train steps and 3 of resizer steps (timeouts below leave room):
#   docs/gpu/run.sh check      every formulation of the resizer's full-resolution convolutions
#                              (models/conv.py; "fused" is the Pallas stem, models/fused_stem.py)
#                              against the exact convolution, values and gradients, float32 at
#                              400 -> 200 (columns padded to 256 in the fused kernel), beside the
#                              formulation tests on CUDA (exact precision: identities, not TF32);
#   docs/gpu/run.sh train      the train step, learned (plain, s2d) and bilinear, and the reference's
#                              (python -m resizer_jax.bench_torch --device=cuda) in interleaved
#                              rounds; then the fused stem's step on its own;
#   docs/gpu/run.sh resizer    the resizer alone under each formulation, checked in bfloat16 at
#                              448 -> 224 first, and the reference's.
# Offline: carry .whl (the ml-collections and clu wheels; docs/performance.md says how) as
# carry=[".whl"]; TensorFlow and TFDS, which the image lacks and these never use, are stood in for
# by docs/gpu/offline. JSON and logs go to $OUT (or docs/gpu/run_<date>/).
set -uo pipefail
cd "$(dirname "$0")/../.."
[[ ${1:-} =~ ^(check|train|resizer)$ ]] || { echo "usage: docs/gpu/run.sh check|train|resizer" >&2; exit 2; }
out="${OUT:-docs/gpu/run_$(date +%F)}"
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit
fi
export PYTHONPATH="$PWD:$PWD/docs/gpu/offline:/tmp/site:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
step() { echo "=== $(date -u +%T) $1"; }
bench() { timeout "$1" python3 -m resizer_jax.bench "${@:3}" > "$out/$2"; echo "rc=$? $2"; tail -c 3000 "$out/$2"; echo; }
b256="--dtype=bfloat16 --batch=256 --steps=10 --warmup=3"
step "setup: $*"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c 'import jax, jaxlib, flax, torch; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__, "torch", torch.__version__, jax.devices())'
case "$1" in
  check)
    # Both light on the GPU: they share it, neither taking its memory up front.
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    JAX_DEFAULT_MATMUL_PRECISION=highest timeout 200 python3 -m pytest -q -p no:cacheprovider \
      tests/test_formulations.py > "$out/pytest.txt" 2>&1 &
    bench 120 check_f32_400.json --workload=resizer --dtype=float32 --input=400 --output=200 \
      --batch=4 --formulation=plain,fused,s2d,pad8 --check --rounds=0
    wait $!; echo "pytest rc=$?"; tail -n 15 "$out/pytest.txt";;
  train)
    bench 330 train.json --workload=train $b256 --rounds=2 --torch --resizer=learned,bilinear \
      --formulation=plain,s2d
    # Apart: a slow kernel must not cost the figures above.
    bench 150 train_fused.json --workload=train $b256 --formulation=fused;;
  resizer)
    bench 240 resizer.json --workload=resizer $b256 --rounds=2 --torch \
      --formulation=plain,s2d,pad8,fused --check;;
esac
step done
