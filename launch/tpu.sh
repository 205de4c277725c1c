#!/usr/bin/env bash
# A Cloud TPU VM slice (one host or many): create it (or queue a request for it), set every worker
# up, start `python -m resizer_jax.main --distributed=on` on all of them detached from SSH -- one
# run, or a chain of runs one after the other -- and follow it.
#
#   launch/tpu.sh --name=r50 --zone=us-central2-b --accelerator=v4-32 --data_dir=gs://BUCKET/tfds \
#       --config=configs/imagenet.py:input=448 --workdir=gs://BUCKET/runs/r50_448
#   launch/tpu.sh --name=s-0 --zone=us-central2-b --accelerator=v4-32 --queued --detach \
#       --step='--config=configs/imagenet.py:resizer=bilinear --workdir=gs://BUCKET/s/base' \
#       --step='--config=configs/imagenet.py --workdir=gs://BUCKET/s/ft --config.init_from=gs://BUCKET/s/base'
#   launch/tpu.sh --name=r50 --zone=us-central2-b --attach    # every worker's log; Ctrl-C detaches
#   launch/tpu.sh --name=r50 --zone=us-central2-b --status    # running / exited with code N
#   launch/tpu.sh --name=r50 --zone=us-central2-b --delete    # (with --queued: the queued resource)
#
# Training (the default mode) needs --config=... and --workdir=... (gs://, or an absolute path every
# worker sees); every argument this script does not know goes to resizer_jax.main unchanged.
#   --name=VM --zone=ZONE   always. VM: 1-63 lowercase letters, digits and hyphens, starting with a
#                           letter, not ending with a hyphen (the names Cloud TPU accepts).
#   --accelerator=TYPE      e.g. v4-32, v5litepod-16: required unless --reuse.
#   --version=IMAGE         TPU software version (tpu-ubuntu2204-base). --project=P.
#   --spot | --queued       a spot VM; a queued resource named VM (its node is VM too): the request
#                           waits in Cloud TPU's queue until there is capacity, and so does this
#                           script (polling its state), before it sets the workers up.
#   --valid-until-duration=D   with --queued: give up the request if not granted within D (6h, 2d).
#   --reuse                 the VM exists (or the queued resource, granted or still waiting): skip
#                           creating it (a rerun after preemption or a change).
#   --data_dir=DIR          TFDS_DATA_DIR on the workers (gs://BUCKET/tfds).
#   --jax=tpu|cpu           the jax extra installed on the workers (tpu; cpu runs on the host CPUs,
#                           which is what the tests use: libtpu on a machine without TPUs only logs
#                           errors and fights over /tmp/libtpu_lockfile between processes).
#   --step='ARGS'           repeated: a chain. Each ARGS is one run's resizer_jax.main arguments
#                           (--config=... --workdir=... [--config.x=v ...]), split into words as a
#                           shell would (quotes group, nothing is expanded). The runs go in order in
#                           one detached job: each starts once the one before exited 0 with its
#                           workdir finished (result.json); a step whose workdir already holds
#                           result.json is skipped; a failing step ends the chain. Arguments outside
#                           the --step options go to every step. Without --step, --config/--workdir
#                           make a chain of one that always runs (a finished run re-evaluates, or
#                           trains on if asked for more steps).
#   --detach                start the run and return, instead of following its logs.
#   --dry-run               print every command, run nothing.
#
# On each worker (docs/launch.md has the details): the archive of HEAD (`git archive`; uncommitted
# changes are not sent) unpacked into ~/resizer_jax; uv (`python3 -m pip install --user`) makes a
# Python 3.11 venv in ~/resizer_jax_venv (kept across launches; stock images have Python 3.10) and
# installs the project with its pinned dependencies plus jax[tpu] at the pyproject.toml pin; then the
# job starts under setsid/nohup, so an SSH disconnect does not stop it. ~/resizer_jax_run holds its
# pid, exit_code, the step it is at and a link to the current run's log: <workdir>/logs/worker-<i>.log
# for a path workdir; for a gs:// one the log stays on the worker (~/resizer_jax_run/logs/...) and is
# copied to <workdir>/logs/ when the run ends and on every --attach and --status. The worker index
# is the TPU metadata server's agent-worker-number, the process index jax itself reads there.
#
# Preemption or maintenance sends SIGTERM: the run saves and exits 0, unfinished, which ends a
# chain there. Rerunning the same command (with --reuse if the VM survived; a spot or queued one
# that was preempted must be deleted first) continues from the checkpoint, skipping finished steps;
# a launch onto a worker whose job is still going is refused.
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
valid_until="" dry=0 spot=0 queued=0 reuse=0 detach=0 mode=train args=() steps=()
for a in "$@"; do
  case $a in
    --name=*) name=${a#*=} ;;
    --zone=*) zone=${a#*=} ;;
    --accelerator=*) accelerator=${a#*=} ;;
    --version=*) version=${a#*=} ;;
    --project=*) project=${a#*=} ;;
    --data_dir=*) data_dir=${a#*=} ;;
    --jax=*) jax=${a#*=} ;;
    --step=*) steps+=("${a#*=}") ;;
    --valid-until-duration=*) valid_until=${a#*=} ;;
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
# Cloud TPU's rule for node names (also the queued resource's here): refused by the service.
[[ $name =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "--name=$name: a TPU name is 1 to 63 \
lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen"
[[ -z $valid_until ]] || ((queued)) || die "--valid-until-duration is for --queued: a queued \
resource's request expires, a VM created at once has nothing to expire"
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
# output line prefixed with it, whether a job holds the lock its script takes, and what it is at.
# ~/resizer_jax_run: pid, lock, exit_code and outcome (written when the job ends); nsteps (a chain:
# --step), step (the step it is at, 1-based), step-<k> (running / exited with code N / skipped: ...),
# step-<k>.pid, step-<k>.log (a link to that run's log); log and copy_to: the current run's.
read -r -d '' worker_prelude <<'EOF' || true
set -uo pipefail
meta=http://${GCE_METADATA_IP:-metadata.google.internal}/computeMetadata/v1/instance/attributes
w=$(curl -sf -H Metadata-Flavor:Google "$meta/agent-worker-number") || {
  echo "[worker ?] $(hostname): no agent-worker-number from the metadata server"; exit 1; }
exec > >(sed -u "s/^/[worker $w] /") 2>&1
r=~/resizer_jax_run
running() { [[ -e $r/lock ]] && ! flock -n "$r/lock" true; }
state() {
  local at=""
  [[ -e $r/nsteps ]] && at=", step $(cat "$r/step" 2>/dev/null || echo 1)/$(cat "$r/nsteps")"
  if running; then echo "running (pid $(cat "$r/pid"))$at"
  elif [[ -e $r/exit_code ]]; then echo "exited with code $(cat "$r/exit_code")$(cat "$r/outcome" 2>/dev/null)"
  elif [[ -e $r/pid ]]; then echo "stopped without an exit code (killed, or the VM restarted)$at"
  else echo "not started"; fi
}
copy_log() { [[ ! -s $r/copy_to ]] || gcloud storage cp --quiet "$r/log" "$(cat "$r/copy_to")"; }
EOF

if [[ $mode == delete ]]; then
  if ((queued)); then  # --force: its node too.
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
  exit 0
fi

describe_queued=(gcloud compute tpus queued-resources describe "$name" "${where[@]}"
                 --format='value(state.state)')
if [[ $mode == status ]]; then
  if ((queued)); then
    if ((dry)); then show "${describe_queued[@]}"; else
      queued_state=$("${describe_queued[@]}")
      echo "queued resource $name: $queued_state"
      [[ $queued_state == ACTIVE ]] || exit 0  # No node to look at yet (or any more).
    fi
  fi
  describe=(gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format='value(state,acceleratorType)')
  if ((dry)); then show "${describe[@]}"; else vm=$("${describe[@]}"); echo "VM $name: $vm"; fi
  ssh_all "" "$worker_prelude"'
if [[ ! -e $r/log ]]; then echo "$(state)"; exit 0; fi
echo "$(state); log $(readlink "$r/log"): $(tail -n 1 "$r/log" | cut -c1-300)"
copy_log >/dev/null'
  exit 0
fi

# Follows each worker's logs, run after run, until the job ends (or prints them, when it has), then
# its state. Exits with the job's code, so that a launch that follows its job fails when it does.
attach_script="$worker_prelude"'
# Ctrl-C detaches at once: no waiting here for the steps or the run to end.
trap "exit 130" INT
[[ -e $r/pid ]] || { echo "not started"; exit 0; }
n=$(cat "$r/nsteps" 2>/dev/null || echo 1)
for ((k = 1; k <= n; k++)); do
  while [[ ! -e $r/step-$k ]] && running; do sleep 0.2; done
  [[ -e $r/step-$k ]] || break  # The job ended before this step.
  s=$(cat "$r/step-$k")
  if [[ $s == skipped* ]]; then echo "--- step $k/$n: $s"; continue; fi
  [[ ! -e $r/nsteps ]] || echo "--- step $k/$n: log $(readlink "$r/step-$k.log")"
  if [[ $s == running ]] && running; then
    tail -n +1 -F --pid="$(cat "$r/step-$k.pid")" "$r/step-$k.log" 2>/dev/null
    rc=$?; ((rc <= 128)) || exit "$rc"  # Interrupted (Ctrl-C), not ended with its run.
  else cat "$r/step-$k.log"; fi
done
while running; do sleep 0.2; done  # Its last words: the exit code, the log copied.
copy_log >/dev/null
echo "$(state)"
[[ -e $r/exit_code ]] && exit "$(cat "$r/exit_code")"
exit 1'
attach() {
  trap 'echo "$me: detached; the run goes on (--attach follows it again, --status)" >&2; exit 130' INT
  ssh_all "" "$attach_script"
}
if [[ $mode == attach ]]; then attach; exit; fi

# Training: the steps, each checked here (a chain of one without --step).
chain=$((${#steps[@]} > 0))
if ((chain)); then
  for a in "${args[@]}"; do
    [[ $a == --config=* || $a == --workdir=* ]] && die "$a beside --step: give each run's --config \
and --workdir inside its --step='...'"
  done
else
  steps=("")
fi
n=${#steps[@]}
# One run's words: the arguments outside --step, then its own, split as a shell splits words
# (quotes group, nothing is expanded; an unmatched quote is refused).
step_words() {
  words=("${args[@]}")
  [[ -n ${steps[$1]//[[:space:]]/} ]] || return 0
  local split more=()
  split=$(printf '%s' "${steps[$1]}" | xargs printf '%s\n' 2>/dev/null) ||
    die "--step='${steps[$1]}': unmatched quote"
  mapfile -t more <<< "$split"
  words+=("${more[@]}")
}
has() { local a; for a in "${words[@]}"; do [[ $a == "$1"=* ]] && return 0; done; return 1; }
workdirs=() inits=() step_lines=""
for ((k = 0; k < n; k++)); do
  step_words "$k"
  at=""; ((chain)) && at="--step #$((k + 1)): "
  has --config || die "${at}missing --config=FILE[:ARG] (e.g. $example)"
  has --workdir || die "${at}missing --workdir=DIR (e.g. $example)"
  init_from=""
  for a in "${words[@]}"; do
    [[ $a == --workdir=* ]] && workdir=${a#*=}
    [[ $a == --config.init_from=* ]] && init_from=${a#*=}
  done
  [[ $workdir == gs://* || $workdir == /* ]] || die "${at}--workdir=$workdir is relative: give \
gs://BUCKET/PATH or an absolute path that every worker sees"
  for ((j = 0; j < k; j++)); do
    [[ ${workdirs[j]%/} != "${workdir%/}" ]] || die "${at}--workdir=$workdir is step \
#$((j + 1))'s too: give each step its own"
  done
  workdirs+=("$workdir") inits+=("$init_from")
  step_lines+="step_$((k + 1))=(\"\$py\" $(show -m resizer_jax.main --distributed=on "${words[@]}"))
workdir_$((k + 1))=$(quote "$workdir")
"
done
# A step that starts from another's workdir must come after it: the chain runs in order.
for ((k = 0; k < n; k++)); do
  for ((j = k; j < n; j++)); do
    [[ -z ${inits[k]} || ${inits[k]%/} != "${workdirs[j]%/}" ]] || die "--step #$((k + 1)) starts \
from ${inits[k]} (--config.init_from), which step #$((j + 1)) trains: put it after that step"
  done
done
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

extra=()
((spot)) && extra+=(--spot)
if ((queued)); then
  if ((!reuse)); then
    [[ -z $valid_until ]] || extra+=(--valid-until-duration="$valid_until")
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${where[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$version" "${extra[@]}"
  fi
  # Until capacity is granted (ACTIVE: the node exists), or refused.
  ((dry)) && show "${describe_queued[@]}"
  wait_s=2
  while ((!dry)); do
    state=$("${describe_queued[@]}")
    [[ $state == ACTIVE ]] && break
    if [[ $state == FAILED || $state == SUSPENDING || $state == SUSPENDED ]]; then
      echo "$me: queued resource $name: $state (delete it with --queued --delete, then launch" \
        "again; finished steps are skipped)" >&2
      exit 1
    fi
    echo "$me: queued resource $name: $state; waiting" >&2
    sleep $wait_s
    wait_s=$((wait_s * 2 > 30 ? 30 : wait_s * 2))
  done
elif ((!reuse)); then
  run gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type="$accelerator" \
    --version="$version" "${extra[@]}"
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

# The job, detached: its own session (setsid) and HUP ignored (nohup), its output in the logs, not
# in the SSH channel, whose end would otherwise wait for it or kill it. The job script keeps the
# lock (inherited by each run) for as long as it lives, runs the steps in order and writes the exit
# code at the end. Where a run logs: its workdir's logs/ when that is a path every worker mounts;
# for gs:// a file on the worker (one per workdir), copied there when the run ends.
read -r -d '' log_of <<'EOF' || true
log_of() {
  if [[ $1 == gs://* ]]; then echo "$r/logs/${1//[^A-Za-z0-9._=,-]/_}/worker-$w.log"
  else echo "$1/logs/worker-$w.log"; fi
}
EOF
job_head="n=$n chain=$chain"
[[ -n $data_dir ]] && job_head+="
export TFDS_DATA_DIR=$(quote "$data_dir")"
ssh_all "starting the run" "$worker_prelude
$log_of
workdirs=($(show "${workdirs[@]}")) chain=$chain"'
if running; then echo "a run is going (pid $(cat "$r/pid")): --attach follows it"; exit 1; fi
mkdir -p "$r" && rm -f "$r"/{pid,exit_code,outcome,copy_to,log,nsteps,step} "$r"/step-* || exit 1
for wd in "${workdirs[@]}"; do
  log=$(log_of "$wd"); mkdir -p "${log%/*}" || exit 1
done
((!chain)) || echo "${#workdirs[@]}" > "$r/nsteps"
cat > "$r/job.sh" <<"JOB"
r=~/resizer_jax_run w=$1
exec 9>"$r/lock"; flock -n 9 || exit 1
echo $$ > "$r/pid"
cd ~/resizer_jax
py=~/resizer_jax_venv/bin/python
'"$job_head
$step_lines$log_of"'
finished() {  # result.json is written last: its presence says a run is finished.
  if [[ $1 == *://* ]]; then  # gs://: through etils, as the run wrote it.
    "$py" -c "import sys; from etils import epath; sys.exit(not epath.Path(sys.argv[1]).exists())" "$1"
  else [[ -e $1 ]]; fi
}
stop=0 child="" rc=0 outcome="" ran=0 skipped=0
trap "stop=1; [[ -z \$child ]] || kill -TERM \$child 2>/dev/null" TERM INT
for ((k = 1; k <= n; k++)); do
  echo $k > "$r/step"
  wd_var=workdir_$k; wd=${!wd_var}
  if ((chain)) && finished "$wd/result.json"; then
    echo "skipped: $wd/result.json exists" > "$r/step-$k"; skipped=$((skipped + 1)); continue
  fi
  if ((stop)); then outcome=": stopped (SIGTERM) before step $k/$n; launch again to go on"; break; fi
  log=$(log_of "$wd")
  copy_to=""; [[ $wd != gs://* ]] || copy_to=$wd/logs/worker-$w.log
  printf %s "$copy_to" > "$r/copy_to"; ln -sfn "$log" "$r/log"; ln -sfn "$log" "$r/step-$k.log"
  what="the run"; ((!chain)) || what="step $k/$n"
  echo "=== $(date -u +%FT%TZ) $(hostname): $what starts (its command: $r/job.sh)" >> "$log"
  cmd="step_$k[@]"
  "${!cmd}" >> "$log" 2>&1 < /dev/null &
  child=$!
  echo $child > "$r/step-$k.pid"; echo running > "$r/step-$k"
  wait $child; rc=$?
  while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done
  child=""; ran=$((ran + 1))
  echo "exited with code $rc" > "$r/step-$k"
  [[ -z $copy_to ]] || gcloud storage cp --quiet "$log" "$copy_to" >> "$log" 2>&1
  ((chain)) || break
  if ((rc != 0)); then outcome=": step $k/$n failed ($wd)"; break; fi
  # Exit 0 without result.json: stopped (preempted) after saving; the next step must not start
  # from it. (The run writes result.json before its processes part, so the workers agree.)
  if ! finished "$wd/result.json"; then
    outcome=": step $k/$n stopped unfinished ($wd); launch again to go on"; break
  fi
done
((!chain)) || [[ -n $outcome ]] || outcome=": all $n steps finished ($ran run, $skipped skipped)"
echo "$outcome" > "$r/outcome"
echo $rc > "$r/exit_code"
JOB
setsid nohup bash "$r/job.sh" "$w" > /dev/null 2>&1 < /dev/null &
for _ in $(seq 100); do [[ -s $r/pid ]] && break; sleep 0.1; done
[[ -s $r/pid ]] || { echo "the job did not start: $r/job.sh"; exit 1; }
if ((chain)); then echo "started: pid $(cat "$r/pid"), a chain of ${#workdirs[@]} steps"
else echo "started: pid $(cat "$r/pid"), log $(log_of "${workdirs[0]}")"; fi'
if ((detach)); then
  echo "$me: the run goes on without this terminal; follow it with: $me --name=$name --zone=$zone --attach"
  exit 0
fi
attach
