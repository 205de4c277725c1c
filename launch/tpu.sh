#!/usr/bin/env bash
# A Cloud TPU VM slice (one or many hosts): create it, install this checkout on every worker, run
# the same `python -m resizer_jax.main` on all of them (--worker=all) with its output streamed here,
# and delete it when asked.
#
#   launch/tpu.sh --name=r50 --zone=us-central2-b --accelerator=v4-32 \
#       --config=configs/imagenet.py:input=448 --workdir=gs://BUCKET/runs/r50_learned_448
#   launch/tpu.sh --name=r50 --zone=us-central2-b --delete
#
# Options: --name, --zone, --accelerator (v4-8), --version (tpu-ubuntu2204-base), --project,
#   --spot, --queued (a queued resource: waits for capacity), --reuse (the VM exists: skip create),
#   --data_dir=gs://... (TFDS_DATA_DIR on the workers), --delete, --dry-run (print, run nothing).
# Every other argument goes to resizer_jax.main unchanged; the workdir should be gs:// so that
# every worker writes to the same place. A preempted or maintained VM sends SIGTERM: the run saves
# and exits 0; running this command again (with --reuse if the VM survived) continues it.
set -euo pipefail

quote() { if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then echo -n "$1"; else echo -n "${1@Q}"; fi; }
show() {  # A command as one copy-pasteable line.
  local out=() a
  for a in "$@"; do out+=("$(quote "$a")"); done
  echo "${out[*]}"
}
run() { show "$@"; ((dry)) || "$@"; }

name="" zone="" accelerator=v4-8 version=tpu-ubuntu2204-base project="" data_dir=""
dry=0 spot=0 queued=0 reuse=0 delete=0 args=()
for a in "$@"; do
  case $a in
    --name=*) name=${a#*=} ;;
    --zone=*) zone=${a#*=} ;;
    --accelerator=*) accelerator=${a#*=} ;;
    --version=*) version=${a#*=} ;;
    --project=*) project=${a#*=} ;;
    --data_dir=*) data_dir=${a#*=} ;;
    --spot) spot=1 ;;
    --queued) queued=1 ;;
    --reuse) reuse=1 ;;
    --delete) delete=1 ;;
    --dry-run|--dry_run) dry=1 ;;
    *) args+=("$a") ;;
  esac
done
if [[ -z $name || -z $zone ]]; then
  echo "launch/tpu.sh: give --name=VM and --zone=ZONE (and --config=... --workdir=... to train)" >&2
  exit 2
fi
where=(--zone="$zone")
[[ -n $project ]] && where+=(--project="$project")

if ((delete)); then
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
  exit 0
fi
if [[ ! " ${args[*]} " =~ " --config=" || ! " ${args[*]} " =~ " --workdir=" ]]; then
  echo "launch/tpu.sh: give --config=FILE[:ARG] and --workdir=DIR (as for resizer_jax.main)" >&2
  exit 2
fi

if ((!reuse)); then
  extra=()
  ((spot)) && extra+=(--spot)
  if ((queued)); then
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${where[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$version" "${extra[@]}"
    until ((dry)) || [[ $(gcloud compute tpus queued-resources describe "$name" "${where[@]}" \
        --format='value(state.state)') == ACTIVE ]]; do sleep 30; done
  else
    run gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type="$accelerator" \
      --version="$version" "${extra[@]}"
  fi
fi

# The project as committed (git archive), the same bytes on every worker.
repo=$(cd "$(dirname "$0")/.." && pwd)
tarball=/tmp/resizer_jax-$name.tar.gz
run git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
run gcloud compute tpus tpu-vm scp "$tarball" "$name:resizer_jax.tar.gz" "${where[@]}" --worker=all
jax_version=$(sed -n 's/.*"jax==\([0-9.]*\)".*/\1/p' "$repo/pyproject.toml")
run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="rm -rf resizer_jax \
&& mkdir resizer_jax && tar -xzf resizer_jax.tar.gz -C resizer_jax \
&& pip install -q -e ./resizer_jax 'jax[tpu]==$jax_version'"

main_args=""
for a in "${args[@]}"; do main_args+=" $(quote "$a")"; done
env_prefix=""
[[ -n $data_dir ]] && env_prefix="TFDS_DATA_DIR=$(quote "$data_dir") "
run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all \
  --command="cd resizer_jax && ${env_prefix}python -m resizer_jax.main --distributed=on$main_args"
