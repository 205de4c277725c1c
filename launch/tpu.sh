#!/usr/bin/env bash
# A Cloud TPU VM slice (one host or many): create it, set every worker up, start the same
# `python -m resizer_jax.main --distributed=on` on all of them detached from SSH, and follow it.
#
#   launch/tpu.sh --name=r50 --zone=us-central2-b --accelerator=v4-32 --data_dir=gs://BUCKET/tfds \
#       --config=configs/imagenet.py:input=448 --workdir=gs://BUCKET/runs/r50_448
#   launch/tpu.sh --name=r50 --zone=us-central2-b --attach    # every worker's log; Ctrl-C detaches
#   launch/tpu.sh --name=r50 --zone=us-central2-b --status    # running / exited with code N
#   launch/tpu.sh --name=r50 --zone=us-central2-b --delete
#
# Training (the default mode) needs --config=... and --workdir=... (gs://, or an absolute path every
# worker sees); every argument this script does not know goes to resizer_jax.main unchanged.
#   --name=VM --zone=ZONE   always.
#   --accelerator=TYPE      e.g. v4-32, v5litepod-16: required unless --reuse.
#   --version=IMAGE         TPU software version (tpu-ubuntu2204-base). --project=P.
#   --spot | --queued       a spot VM; a queued resource (waits for capacity).
#   --reuse                 the VM exists: skip creating it (a rerun after preemption or a change).
#   --data_dir=DIR          TFDS_DATA_DIR on the workers (gs://BUCKET/tfds).
#   --jax=tpu|cpu           the jax extra installed on the workers (tpu; cpu runs on the host CPUs,
#                           which is what the tests use: libtpu on a machine without TPUs only logs
#                           errors and fights over /tmp/libtpu_lockfile between processes).
#   --detach                start the run and return, instead of following its logs.
#   --dry-run               print every command, run nothing.
#
# On each worker (docs/launch.md has the details): the archive of HEAD (`git archive`; uncommitted
# changes are not sent) unpacked into ~/resizer_jax; uv (`python3 -m pip install --user`) makes a
# Python 3.11 venv in ~/resizer_jax_venv (kept across launches; stock images have Python 3.10) and
# installs the project with its pinned dependencies plus jax[tpu] at the pyproject.toml pin; then the
# run starts under setsid/nohup, so an SSH disconnect does not stop it. ~/resizer_jax_run holds its
# pid, exit_code and a link to its log: <workdir>/logs/worker-<i>.log for a path workdir; for a gs://
# one the log stays on the worker (~/resizer_jax_run/worker-<i>.log) and is copied to
# <workdir>/logs/ when the run ends and on every --attach and --status. The worker index is the TPU
# metadata server's agent-worker-number, the process index jax itself reads there.
#
# Preemption or maintenance sends SIGTERM: the run saves and exits 0. Rerunning the same command
# (with --reuse if the VM survived) continues from the checkpoint; a launch onto a worker whose run
# is still going is refused.
set -euo pipefail

me=launch/tpu.sh
example="$me --name=r50 --zone=us-central2-b --accelerator=v4-32 --config=configs/imagenet.py:input=448 --workdir=gs://BUCKET/runs/r50"
die() { echo "$me: $1" >&2; exit 2; }
quote() {  # Single quotes, so that a multi-line --command prints as it reads.
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf %s "$1"; else
    local q="'\\''"; printf %s "'${1//\'/$q}'"; fi
}
show() {  # A command as copy-pasteable shell.
  local out=() a
  for a in "$@"; do out+=("$(quote "$a")"); done
  echo "${out[*]}"
}
run() { show "$@"; ((dry)) || "$@"; }

# The uv that sets the workers up, pinned like the project's own dependencies.
uv_req=uv==0.13.9
name="" zone="" accelerator="" version=tpu-ubuntu2204-base project="" data_dir="" jax=tpu
dry=0 spot=0 queued=0 reuse=0 detach=0 mode=train args=()
for a in "$@"; do
  case $a in
    --name=*) name=${a#*=} ;;
    --zone=*) zone=${a#*=} ;;
    --accelerator=*) accelerator=${a#*=} ;;
    --version=*) version=${a#*=} ;;
    --project=*) project=${a#*=} ;;
    --data_dir=*) data_dir=${a#*=} ;;
    --jax=*) jax=${a#*=} ;;
    --spot) spot=1 ;;
    --queued) queued=1 ;;
    --reuse) reuse=1 ;;
    --detach) detach=1 ;;
    --attach|--status|--delete)
      [[ $mode == train ]] || die "give one of --attach, --status and --delete, not $a and --$mode"
      mode=${a#--} ;;
    --dry-run|--dry_run) dry=1 ;;
    *) args+=("$a") ;;
  esac
done
[[ -n $name ]] || die "missing --name=VM (e.g. $example)"
[[ -n $zone ]] || die "missing --zone=ZONE (e.g. $example)"
[[ $jax == tpu || $jax == cpu ]] || die "--jax=$jax: give --jax=tpu or --jax=cpu"
where=(--zone="$zone")
[[ -n $project ]] && where+=(--project="$project")
# The same script on every worker; said in one line (the script in full with --dry-run).
ssh_all() {
  local cmd=(gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$2")
  if ((dry)); then show "${cmd[@]}"; return; fi
  [[ -z $1 ]] || echo "$me: $1: $(show "${cmd[@]:0:$((${#cmd[@]} - 1))}") --command=..." >&2
  "${cmd[@]}"
}

# The start of every command run on the workers: the worker index as the TPU runtime reads it (from
# the metadata server; GCE_METADATA_IP overrides its address, as for jax and google-auth), every
# output line prefixed with it, and whether a run holds the lock its job script takes.
read -r -d '' worker_prelude <<'EOF' || true
set -uo pipefail
meta=http://${GCE_METADATA_IP:-metadata.google.internal}/computeMetadata/v1/instance/attributes
w=$(curl -sf -H Metadata-Flavor:Google "$meta/agent-worker-number") || {
  echo "[worker ?] $(hostname): no agent-worker-number from the metadata server"; exit 1; }
exec > >(sed -u "s/^/[worker $w] /") 2>&1
r=~/resizer_jax_run
running() { [[ -e $r/lock ]] && ! flock -n "$r/lock" true; }
state() {
  if running; then echo "running (pid $(cat "$r/pid"))"
  elif [[ -e $r/exit_code ]]; then echo "exited with code $(cat "$r/exit_code")"
  elif [[ -e $r/pid ]]; then echo "stopped without an exit code (killed, or the VM restarted)"
  else echo "not started"; fi
}
copy_log() { [[ ! -s $r/copy_to ]] || gcloud storage cp --quiet "$r/log" "$(cat "$r/copy_to")"; }
EOF

if [[ $mode == delete ]]; then
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
  exit 0
fi

if [[ $mode == status ]]; then
  describe=(gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format='value(state,acceleratorType)')
  if ((dry)); then show "${describe[@]}"; else vm=$("${describe[@]}"); echo "VM $name: $vm"; fi
  ssh_all "" "$worker_prelude"'
if [[ ! -e $r/log ]]; then echo "$(state)"; exit 0; fi
echo "$(state); log $(readlink "$r/log"): $(tail -n 1 "$r/log" | cut -c1-300)"
copy_log >/dev/null'
  exit 0
fi

# Follows each worker's log until its run ends (or prints it, when it has), then its state. Exits
# with the run's code, so that a launch that follows its run fails when the run does.
attach_script="$worker_prelude"'
[[ -e $r/log ]] || { echo "not started"; exit 0; }
if running; then tail -n +1 -F --pid="$(cat "$r/pid")" "$r/log" 2>/dev/null; else cat "$r/log"; fi
copy_log >/dev/null
echo "$(state)"
[[ -e $r/exit_code ]] && exit "$(cat "$r/exit_code")"
running || exit 1'
attach() {
  trap 'echo "$me: detached; the run goes on (--attach follows it again, --status)" >&2; exit 130' INT
  ssh_all "" "$attach_script"
}
if [[ $mode == attach ]]; then attach; exit; fi

# Training.
has_arg() { local a; for a in "${args[@]}"; do [[ $a == "$1"=* ]] && return 0; done; return 1; }
has_arg --config || die "missing --config=FILE[:ARG] (e.g. $example)"
has_arg --workdir || die "missing --workdir=DIR (e.g. $example)"
for a in "${args[@]}"; do [[ $a == --workdir=* ]] && workdir=${a#*=}; done
[[ $workdir == gs://* || $workdir == /* ]] || die "--workdir=$workdir is relative: give \
gs://BUCKET/PATH or an absolute path that every worker sees"
[[ -z $data_dir || $data_dir == gs://* || $data_dir == /* ]] || die "--data_dir=$data_dir is \
relative: give gs://BUCKET/PATH or an absolute path that every worker sees"
((reuse)) || [[ -n $accelerator ]] || die "missing --accelerator=TYPE to create the VM (e.g. \
--accelerator=v4-32), or give --reuse for an existing one"
repo=$(cd "$(dirname "$0")/.." && pwd)
jax_version=$(sed -n 's/.*"jax==\([0-9.]*\)".*/\1/p' "$repo/pyproject.toml")
[[ -n $jax_version ]] || die "no \"jax==X\" pin in $repo/pyproject.toml"
if [[ -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
  echo "$me: warning: uncommitted changes are not sent; the workers get HEAD" \
    "($(git -C "$repo" rev-parse --short HEAD))" >&2
fi

if ((!reuse)); then
  extra=()
  ((spot)) && extra+=(--spot)
  if ((queued)); then
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${where[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$version" "${extra[@]}"
    while ((!dry)); do  # Until capacity is granted, or refused.
      state=$(gcloud compute tpus queued-resources describe "$name" "${where[@]}" \
        --format='value(state.state)')
      [[ $state == ACTIVE ]] && break
      if [[ $state == FAILED || $state == SUSPENDED ]]; then
        echo "$me: queued resource $name: $state" >&2; exit 1
      fi
      sleep 30
    done
  else
    run gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type="$accelerator" \
      --version="$version" "${extra[@]}"
  fi
fi

# The project as committed, the same bytes on every worker.
tarball=$(mktemp -u "${TMPDIR:-/tmp}/resizer_jax-$name-XXXXXX").tar.gz
((dry)) || trap 'rm -f "$tarball"' EXIT
run git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD
run gcloud compute tpus tpu-vm scp "$tarball" "$name:resizer_jax.tar.gz" "${where[@]}" --worker=all

# Set-up, on every worker before any starts: a worker that fails here leaves the others unstarted,
# instead of waiting for it in jax.distributed.initialize().
ssh_all "setting the workers up" "$worker_prelude
jax_req=\"jax[$jax]==$jax_version\" uv_req=$uv_req"'
if running; then echo "a run is going (pid $(cat "$r/pid")): --attach follows it"; exit 1; fi
set -e
if ! python3 -m uv --version >/dev/null 2>&1; then
  echo "installing uv: python3 -m pip install --user $uv_req"
  python3 -m pip install --user --quiet "$uv_req"
fi
rm -rf ~/resizer_jax && mkdir ~/resizer_jax && tar -xzf ~/resizer_jax.tar.gz -C ~/resizer_jax
if [[ ! -x ~/resizer_jax_venv/bin/python ]]; then
  echo "creating ~/resizer_jax_venv: uv venv --python 3.11"
  python3 -m uv venv --quiet --python 3.11 ~/resizer_jax_venv
fi
echo "installing ~/resizer_jax and $jax_req into ~/resizer_jax_venv"
python3 -m uv pip install --quiet --python ~/resizer_jax_venv/bin/python -e ~/resizer_jax "$jax_req"'

# The run, detached: its own session (setsid) and HUP ignored (nohup), its output in the log, not
# in the SSH channel, whose end would otherwise wait for it or kill it. The job script keeps the
# lock (inherited by python) for as long as the run lives, and writes the exit code at the end.
main_line="~/resizer_jax_venv/bin/$(show python -m resizer_jax.main --distributed=on "${args[@]}")"
[[ -n $data_dir ]] && main_line="TFDS_DATA_DIR=$(quote "$data_dir") $main_line"
ssh_all "starting the run" "$worker_prelude
workdir=$(quote "$workdir")"'
if running; then echo "a run is going (pid $(cat "$r/pid")): --attach follows it"; exit 1; fi
mkdir -p "$r" && rm -f "$r/pid" "$r/exit_code" "$r/copy_to" || exit 1
if [[ $workdir == gs://* ]]; then
  log=$r/worker-$w.log; echo "$workdir/logs/worker-$w.log" > "$r/copy_to"
else
  log=$workdir/logs/worker-$w.log; mkdir -p "$workdir/logs" || exit 1
fi
ln -sfn "$log" "$r/log"
cat > "$r/job.sh" <<"JOB"
r=~/resizer_jax_run log=$1
exec 9>"$r/lock"; flock -n 9 || exit 1
echo $$ > "$r/pid"
cd ~/resizer_jax
echo "=== $(date -u +%FT%TZ) $(hostname): the run starts (its command: $r/job.sh)" >> "$log"
'"$main_line"' >> "$log" 2>&1 < /dev/null &
child=$!
trap "kill -TERM $child 2>/dev/null" TERM INT
wait $child; rc=$?
while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done
echo $rc > "$r/exit_code"
[[ ! -s $r/copy_to ]] || gcloud storage cp --quiet "$log" "$(cat "$r/copy_to")" >> "$log" 2>&1
JOB
setsid nohup bash "$r/job.sh" "$log" > /dev/null 2>&1 < /dev/null &
for _ in $(seq 100); do [[ -s $r/pid ]] && break; sleep 0.1; done
[[ -s $r/pid ]] || { echo "the run did not start: $log"; exit 1; }
echo "started: pid $(cat "$r/pid"), log $log"'
if ((detach)); then
  echo "$me: the run goes on without this terminal; follow it with: $me --name=$name --zone=$zone --attach"
  exit 0
fi
attach
