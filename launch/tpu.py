#!/usr/bin/env python3
"""The control plane of launch/tpu.sh (its entry point and documentation; docs/launch.md has the
details): checks the arguments, creates the slice or queues a request for it, waits for it, sends
the code and runs on every worker the bash scripts below, which are all that runs there.

In Python, not bash, so that it runs from a stock laptop: macOS's /bin/bash is 3.2, which stops on
an empty "${array[@]}" under `set -u` and has no mapfile. It keeps to what Python 3.8 has (macOS's
/usr/bin/python3 is 3.9) and to the standard library. USAGE below is what `launch/tpu.sh --help`
prints.
"""
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

ME = "launch/tpu.sh"
EXAMPLE = (f"{ME} --name=r50 --zone=us-central2-b --accelerator=v4-32 "
           "--config=configs/imagenet.py:input=448 --workdir=gs://BUCKET/runs/r50")
USAGE = r"""launch/tpu.sh: a Cloud TPU VM slice (one host or many): create it (or queue a request
for it), set every worker up, start `python -m resizer_jax.main --distributed=on` on all of them
detached from SSH -- one run, or a chain of runs one after the other -- and follow it.

  launch/tpu.sh --name=r50 --zone=us-central2-b --accelerator=v4-32 --data_dir=gs://BUCKET/tfds \
      --config=configs/imagenet.py:input=448 --workdir=gs://BUCKET/runs/r50_448
  launch/tpu.sh --name=s-0 --zone=us-central2-b --accelerator=v4-32 --queued --detach \
      --step='--config=configs/imagenet.py:resizer=bilinear --workdir=gs://BUCKET/s/base' \
      --step='--config=configs/imagenet.py --workdir=gs://BUCKET/s/ft --config.init_from=gs://BUCKET/s/base'
  launch/tpu.sh --name=r50 --zone=us-central2-b --attach    # every worker's log; Ctrl-C detaches
  launch/tpu.sh --name=r50 --zone=us-central2-b --status    # running / exited with code N
  launch/tpu.sh --name=r50 --zone=us-central2-b --delete    # the VM, or its queued resource
  launch/tpu.sh --help                                      # this text

Training (the default mode) needs --config=... and --workdir=... (gs://, or an absolute path every
worker sees); every argument this script does not know goes to resizer_jax.main unchanged.
  --name=VM --zone=ZONE   always. VM: 1-63 lowercase letters, digits and hyphens, starting with a
                          letter, not ending with a hyphen (the names Cloud TPU accepts).
  --accelerator=TYPE      v2-N, v3-N, v4-N, v5litepod-N (v5e), v5p-N, v6e-N: required unless
                          --reuse.
  --version=IMAGE         TPU software version; default: the one for the accelerator
                          (tpu-ubuntu2204-base for v2-v4, v2-alpha-tpuv5-lite for v5e,
                          v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e); another generation's
                          is refused. --project=P.
  --spot | --queued       a spot VM; a queued resource named VM (its node is VM too): the request
                          waits in Cloud TPU's queue until there is capacity, and so does this
                          script (polling its state), before it sets the workers up. A request of
                          that name that exists already is waited on, not created again.
  --valid-until-duration=D   with --queued: give up the request if not granted within D (6h, 2d).
  --autocheckpoint        create it with --autocheckpoint-enabled (gcloud alpha; v2-v4 and v5e):
                          maintenance then sends the run SIGTERM and waits up to 5 minutes for
                          its save. Without it, maintenance starts at once, without a save.
  --delete-when-done      stay until the job ends, then delete the slice (and its queued
                          resource) if every worker's run exited 0 with its result.json written.
  --reuse                 the VM exists (or the queued resource, granted or still waiting): skip
                          creating it (a rerun after maintenance or a change).
  --data_dir=DIR          TFDS_DATA_DIR on the workers (gs://BUCKET/tfds).
  --jax=tpu|cpu           the jax extra installed on the workers (tpu; cpu runs on the host CPUs,
                          which is what the tests use: libtpu on a machine without TPUs only logs
                          errors and fights over /tmp/libtpu_lockfile between processes).
  --step='ARGS'           repeated: a chain. Each ARGS is one run's resizer_jax.main arguments
                          (--config=... --workdir=... [--config.x=v ...]), split into words as a
                          shell would (quotes group, nothing is expanded). The runs go in order in
                          one detached job: each starts once the one before exited 0 with its
                          workdir finished (result.json); a step whose workdir already holds
                          result.json is skipped; a failing step ends the chain. Arguments outside
                          the --step options go to every step. Without --step, --config/--workdir
                          make a chain of one that always runs (a finished run re-evaluates, or
                          trains on if asked for more steps).
  --detach                start the run and return, instead of following its logs (with
                          --delete-when-done: wait for it without printing them).
  --dry-run               print every command, run nothing (after the same checks); or --dry_run.
  -h, --help              print this text.

The workers get the archive of HEAD (`git archive`), not the working tree. So a launch (a dry run
too) is refused while they would not get what is here: a --config file outside the repository
(FILE in --config=FILE[:ARG] is relative to its root, or absolute inside it), or not committed, or
changed since HEAD; any tracked file changed, staged or deleted; an untracked file under
resizer_jax/, configs/ or launch/. Commit them first (untracked files elsewhere, runs/ say, are
left alone).

Before anything is created: the arguments, the accelerator and its version, this tree against
HEAD, each run's config as the workers would check it (`resizer_jax.main --plan` on the slice's
devices; needs the project here or in $RESIZER_JAX_PYTHON; RESIZER_JAX_TPU_CHECK_CONFIG=0 skips
it), gcloud's account and project, and for a slice of several hosts gcloud's key in ssh-agent
(--worker=all needs it). Bad input: one line on stderr, exit 2. After the slice exists, every way
out says it is still up and how to delete it.

On the workers: the archive unpacked into ~/resizer_jax; uv makes a Python 3.11 venv in
~/resizer_jax_venv and installs the project with jax[tpu] at the pyproject.toml pin; the job starts
under setsid/nohup. Logs: <workdir>/logs/worker-<i>.log (for a gs:// workdir copied there every 5
minutes, at the end of each run, and on --attach/--status). docs/launch.md has the details."""
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UV_REQ = "uv==0.13.9"  # The uv that sets the workers up, pinned like the project's dependencies.
# What the workers run beside the tracked files: an untracked file here is refused (check_tree).
SHIPPED_DIRS = ("resizer_jax", "configs", "launch")
LOG_COPY_EVERY_S = 300  # How often a worker copies its log to a gs:// workdir while a run goes on.
LOG_COPY_ENV = "RESIZER_JAX_TPU_LOG_COPY_EVERY_S"  # For tests only: another period, in seconds.
# "0": no config check here (`check_config`), e.g. where this machine cannot read a gs:// data_dir.
CHECK_ENV = "RESIZER_JAX_TPU_CHECK_CONFIG"
PYTHON_ENV = "RESIZER_JAX_PYTHON"  # The Python with this project that checks (default: this one).

# Cloud TPU's software versions ("TPU software versions"): each generation has its own, and a slice
# created with another generation's fails at creation. family: (accelerator type's prefix, what
# users call it, its version, Autocheckpoint available).
FAMILIES = {
    "v2": ("v2", "v2", "tpu-ubuntu2204-base", True),
    "v3": ("v3", "v3", "tpu-ubuntu2204-base", True),
    "v4": ("v4", "v4", "tpu-ubuntu2204-base", True),
    "v5litepod": ("v5litepod", "v5e", "v2-alpha-tpuv5-lite", True),
    "v5p": ("v5p", "v5p", "v2-alpha-tpuv5", False),
    "v6e": ("v6e", "v6e", "v2-alpha-tpuv6e", False),
}
# Versions made for some generations only (a prefix, longest first): any other is let through and
# left to the service (TensorFlow's tpu-vm-tf-*, say).
VERSION_FAMILIES = [
    ("v2-alpha-tpuv5-lite", ("v5litepod",)),
    ("v2-alpha-tpuv5", ("v5p",)),
    ("v2-alpha-tpuv6e", ("v6e",)),
    ("v2-alpha-tpuv4", ("v4",)),
    ("tpu-ubuntu2204-base", ("v2", "v3", "v4")),
    ("tpu-vm-v4-base", ("v4",)),
    ("tpu-vm-base", ("v2", "v3")),
]
VERSIONS_DOC = ("Cloud TPU's software versions: tpu-ubuntu2204-base for v2-v4, v2-alpha-tpuv5-lite "
                "for v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e")
# Queued-resource states (QueuedResourceState.State) in which a request may still be granted.
QUEUED_PENDING = ("CREATING", "ACCEPTED", "PROVISIONING", "WAITING_FOR_RESOURCES")
DESCRIBE_TRIES = 5  # Consecutive failed describes before the wait gives up (a network blip).
DESCRIBE_WAIT_S = 2  # The first wait between describes of a queued resource, doubled up to 30.
DESCRIBE_WAIT_ENV = "RESIZER_JAX_TPU_DESCRIBE_WAIT_S"  # For tests only: another first wait.


def first_describe_wait() -> float:
  return float(os.environ.get(DESCRIBE_WAIT_ENV, DESCRIBE_WAIT_S))


class Exit(Exception):
  def __init__(self, code):
    super().__init__(code)
    self.code = code


def die(message):
  """Bad input: one line, exit 2, nothing run."""
  print(f"{ME}: {message}", file=sys.stderr)
  raise Exit(2)


def say(message):
  print(f"{ME}: {message}", file=sys.stderr, flush=True)


def quote(word):
  """As a shell reads it back; single quotes, so that a multi-line --command prints as it reads."""
  if re.fullmatch(r"[A-Za-z0-9_./:=,@%+-]+", word):
    return word
  return "'" + word.replace("'", "'\\''") + "'"


def show(cmd):
  return " ".join(quote(w) for w in cmd)


def family_of(accelerator):
  m = re.fullmatch(r"(v2|v3|v4|v5litepod|v5p|v6e)-(\d+)", accelerator)
  return (m.group(1), int(m.group(2))) if m else (None, 0)


def hosts(accelerator):
  """TPU VMs in a slice of that type: v2-v4 and v5p count TensorCores, 8 a host; v5e and v6e count
  chips, up to 8 on one host, 4 a host beyond."""
  family, size = family_of(accelerator)
  if family in ("v5litepod", "v6e"):
    return 1 if size <= 8 else size // 4
  return max(1, size // 8)


# The start of every command run on the workers: the worker index as the TPU runtime reads it (from
# the metadata server; GCE_METADATA_IP overrides its address, as for jax and google-auth), every
# output line prefixed with it, whether a job holds the lock its script takes, and what it is at.
# ~/resizer_jax_run: pid, lock, exit_code and outcome (written when the job ends), finished (when
# every step's workdir holds result.json and the job exited 0); nsteps (a chain: --step), step (the
# step it is at, 1-based), step-<k> (running / exited with code N / skipped: ...), step-<k>.pid,
# step-<k>.log (a link to that run's log); log and copy_to: the current run's.
WORKER_PRELUDE = r'''set -uo pipefail
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
copy_log() { [[ ! -s $r/copy_to ]] || gcloud storage cp --quiet "$r/log" "$(cat "$r/copy_to")"; }'''

STATUS_TAIL = r'''
if [[ ! -e $r/log ]]; then echo "$(state)"; exit 0; fi
echo "$(state); log $(readlink "$r/log"): $(tail -n 1 "$r/log" | cut -c1-300)"
copy_log >/dev/null'''

# Follows each worker's logs, run after run, until the job ends (or prints them, when it has), then
# its state. Exits with the job's code, so that a launch that follows its job fails when it does.
ATTACH_TAIL = r'''
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
exit 1'''

# --delete-when-done asks every worker this; the slice goes only when all say yes.
FINISHED_TAIL = r'''
if running; then echo "not finished: $(state)"; exit 1; fi
[[ -e $r/finished ]] || { echo "not finished: $(state)"; exit 1; }
echo "finished: $(state)"'''

SETUP_TAIL = r'''
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
python3 -m uv pip install --quiet --python ~/resizer_jax_venv/bin/python -e ~/resizer_jax "$jax_req"'''

# Where a run logs: its workdir's logs/ when that is a path every worker mounts; for gs:// a file on
# the worker (one per workdir), copied there every LOG_COPY_EVERY_S while it runs and when it ends.
LOG_OF = r'''log_of() {
  if [[ $1 == gs://* ]]; then echo "$r/logs/${1//[^A-Za-z0-9._=,-]/_}/worker-$w.log"
  else echo "$1/logs/worker-$w.log"; fi
}'''

# The job, detached: its own session (setsid) and HUP ignored (nohup), its output in the logs, not
# in the SSH channel, whose end would otherwise wait for it or kill it. The job script keeps the
# lock (inherited by each run) for as long as it lives, runs the steps in order and writes the exit
# code at the end. {head} becomes the job's settings and steps.
START_TAIL = r'''
if running; then echo "a run is going (pid $(cat "$r/pid")): --attach follows it"; exit 1; fi
mkdir -p "$r" && rm -f "$r"/{pid,exit_code,outcome,finished,copy_to,log,nsteps,step} "$r"/step-* || exit 1
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
{head}
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
  copier=""
  if [[ -n $copy_to ]]; then  # What the run logged survives the VM. fd 9 closed: not the lock.
    (exec 9>&-; while sleep "$copy_every"; do
       gcloud storage cp --quiet "$log" "$copy_to" > /dev/null 2>&1; done) &
    copier=$!
  fi
  wait $child; rc=$?
  while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done
  [[ -z $copier ]] || kill $copier 2>/dev/null
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
done_all=$((rc == 0))
for ((k = 1; k <= n && done_all; k++)); do
  wd_var=workdir_$k; finished "${!wd_var}/result.json" || done_all=0
done
((!done_all)) || : > "$r/finished"
echo $rc > "$r/exit_code"
JOB
setsid nohup bash "$r/job.sh" "$w" > /dev/null 2>&1 < /dev/null &
for _ in $(seq 100); do [[ -s $r/pid ]] && break; sleep 0.1; done
[[ -s $r/pid ]] || { echo "the job did not start: $r/job.sh"; exit 1; }
if ((chain)); then echo "started: pid $(cat "$r/pid"), a chain of ${#workdirs[@]} steps"
else echo "started: pid $(cat "$r/pid"), log $(log_of "${workdirs[0]}")"; fi'''


def parse(argv):
  o = dict(name="", zone="", accelerator="", version="", project="", data_dir="", jax="tpu",
           valid_until="", dry=False, spot=False, queued=False, reuse=False, detach=False,
           autocheckpoint=False, delete_when_done=False, mode="train", args=[], steps=[])
  values = {"--name": "name", "--zone": "zone", "--accelerator": "accelerator",
            "--version": "version", "--project": "project", "--data_dir": "data_dir",
            "--jax": "jax", "--valid-until-duration": "valid_until"}
  switches = {"--spot": "spot", "--queued": "queued", "--reuse": "reuse", "--detach": "detach",
              "--dry-run": "dry", "--dry_run": "dry", "--autocheckpoint": "autocheckpoint",
              "--delete-when-done": "delete_when_done"}
  for a in argv:
    key, eq, value = a.partition("=")
    if eq and key in values:
      o[values[key]] = value
    elif eq and key == "--step":
      o["steps"].append(value)
    elif a in switches:
      o[switches[a]] = True
    elif a in ("--attach", "--status", "--delete"):
      if o["mode"] != "train":
        die(f"give one of --attach, --status and --delete, not {a} and --{o['mode']}")
      o["mode"] = a[2:]
    else:
      o["args"].append(a)
  return o


class Launcher:

  def __init__(self, o):
    self.o = o
    self.name, self.dry = o["name"], o["dry"]
    self.runs = []  # Each run's resizer_jax.main arguments (check_steps).
    self.where = [f"--zone={o['zone']}"] + ([f"--project={o['project']}"] if o["project"] else [])
    self.describe_queued = ["gcloud", "compute", "tpus", "queued-resources", "describe", self.name,
                            *self.where, "--format=value(state.state)"]
    flags = [f"--name={self.name}", f"--zone={o['zone']}"]
    flags += [f"--project={o['project']}"] if o["project"] else []
    self.follow = f"{ME} {' '.join(flags)}"

  # -- running things --------------------------------------------------------------------------

  def call(self, cmd, capture=False):
    """Runs cmd (its output passed through, or captured: (rc, out, err)). Ctrl-C reaches it too
    (the terminal signals the whole foreground group): give it time to end, as ssh does."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.PIPE if capture else None, text=True)
    try:
      out, err = proc.communicate()
    except KeyboardInterrupt:
      try:
        proc.wait(timeout=15)
      except subprocess.TimeoutExpired:
        proc.kill()
      raise
    return (proc.returncode, out or "", err or "") if capture else proc.returncode

  def run(self, cmd):
    print(show(cmd), flush=True)
    if not self.dry:
      rc = self.call(cmd)
      if rc:
        raise Exit(rc)

  def ssh_all(self, what, command, quiet=False):
    """The same script on every worker; said in one line (in full with --dry-run)."""
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.name, *self.where, "--worker=all",
           f"--command={command}"]
    if self.dry:
      print(show(cmd), flush=True)
      return 0
    if what:
      say(f"{what}: {show(cmd[:-1])} --command=...")
    if quiet:
      return self.call(cmd, capture=True)[0]
    return self.call(cmd)

  def queued_state(self):
    """(state, error): the request's state, "" when there is none, or error when describe failed."""
    rc, out, err = self.call(self.describe_queued, capture=True)
    if rc == 0:
      return out.strip(), ""
    if "NOT_FOUND" in err or "not found" in err:
      return "", ""
    return None, (err.strip().splitlines() or [f"exit code {rc}"])[-1]

  def delete_command(self, queued=None):
    queued = self.o["queued"] if queued is None else queued
    return f"{self.follow}{' --queued' if queued else ''} --delete"

  def still_up(self):
    say(f"the slice {self.name} is still up and billed until deleted: "
        f"{self.delete_command()}")

  # -- modes -----------------------------------------------------------------------------------

  def delete(self):
    qdelete = ["gcloud", "compute", "tpus", "queued-resources", "delete", self.name, *self.where,
               "--force", "--quiet"]  # --force: its node too.
    vdelete = ["gcloud", "compute", "tpus", "tpu-vm", "delete", self.name, *self.where, "--quiet"]
    if self.o["queued"]:
      self.run(qdelete)
      return 0
    # A node that a queued resource holds goes with it: deleting the node alone would leave the
    # request behind, SUSPENDED.
    if self.dry:
      print(show(self.describe_queued))
      print(f"{show(qdelete)}   # if it exists, else:")
      print(show(vdelete))
      return 0
    state, error = self.queued_state()
    if state is None:
      say(f"could not ask for queued resource {self.name} ({error}); nothing deleted: try again")
      return 1
    self.run(qdelete if state else vdelete)
    return 0

  def status(self):
    if self.o["queued"]:
      if self.dry:
        print(show(self.describe_queued))
      else:
        state, error = self.queued_state()
        if state is None:
          say(f"queued resource {self.name}: describe failed: {error}")
          return 1
        print(f"queued resource {self.name}: {state or 'none'}", flush=True)
        if state != "ACTIVE":
          return 0  # No node to look at yet (or any more).
    describe = ["gcloud", "compute", "tpus", "tpu-vm", "describe", self.name, *self.where,
                "--format=value(state,acceleratorType)"]
    if self.dry:
      print(show(describe))
    else:
      rc, out, err = self.call(describe, capture=True)
      if rc:
        sys.stderr.write(err)
        return rc
      print(f"VM {self.name}: {out.strip()}", flush=True)
    rc = self.ssh_all("", WORKER_PRELUDE + STATUS_TAIL)
    if not self.dry:
      self.still_up()
    return rc

  def attach(self, quiet=False):
    try:
      return self.ssh_all("", WORKER_PRELUDE + ATTACH_TAIL, quiet=quiet)
    except KeyboardInterrupt:
      say("detached; the run goes on (--attach follows it again, --status)")
      raise Exit(130)

  # -- training --------------------------------------------------------------------------------

  def check_steps(self):
    """Each step's words (a chain of one without --step), checked; the job's step lines."""
    o = self.o
    chain = bool(o["steps"])
    if chain:
      for a in o["args"]:
        if a.startswith(("--config=", "--workdir=")):
          die(f"{a} beside --step: give each run's --config and --workdir inside its --step='...'")
    steps = o["steps"] or [""]
    workdirs, inits, lines, configs = [], [], "", {}
    for k, step in enumerate(steps):
      words = list(o["args"])
      try:  # As a shell splits words: quotes group, nothing is expanded.
        words += shlex.split(step)
        self.runs.append(words)
      except ValueError:
        die(f"--step='{step}': unmatched quote")
      at = f"--step #{k + 1}: " if chain else ""
      has = lambda flag: any(w.startswith(flag + "=") for w in words)
      if not has("--config"):
        die(f"{at}missing --config=FILE[:ARG] (e.g. {EXAMPLE})")
      if not has("--workdir"):
        die(f"{at}missing --workdir=DIR (e.g. {EXAMPLE})")
      workdir = init_from = ""
      for i, w in enumerate(words):
        if w.startswith("--config="):
          words[i], path = self.config_in_repo(w, at)
          configs.setdefault(path, f"{at}{w}")
        if w.startswith("--workdir="):
          workdir = w.split("=", 1)[1]
        if w.startswith("--config.init_from="):
          init_from = w.split("=", 1)[1]
      if not workdir.startswith(("gs://", "/")):
        die(f"{at}--workdir={workdir} is relative: give gs://BUCKET/PATH or an absolute path that "
            "every worker sees")
      for j, other in enumerate(workdirs):
        if other.rstrip("/") == workdir.rstrip("/"):
          die(f"{at}--workdir={workdir} is step #{j + 1}'s too: give each step its own")
      workdirs.append(workdir)
      inits.append(init_from)
      lines += (f'step_{k + 1}=("$py" '
                f"{show(['-m', 'resizer_jax.main', '--distributed=on', *words])})\n"
                f"workdir_{k + 1}={quote(workdir)}\n")
    # A step that starts from another's workdir must come after it: the chain runs in order.
    for k, init in enumerate(inits):
      for j in range(k, len(workdirs)):
        if init and init.rstrip("/") == workdirs[j].rstrip("/"):
          die(f"--step #{k + 1} starts from {init} (--config.init_from), which step #{j + 1} "
              "trains: put it after that step")
    return chain, workdirs, lines, configs

  def config_in_repo(self, word, at):
    """--config=FILE[:ARG] as the workers read it, from their copy of the repository: FILE relative
    to its root (an absolute FILE inside it is made so), and that path. Outside it: refused."""
    file, colon, arg = word[len("--config="):].partition(":")
    # join keeps an absolute file as it is; realpath: a link out of the repository is outside.
    path = os.path.relpath(os.path.realpath(os.path.join(REPO, file)), os.path.realpath(REPO))
    if path == os.pardir or path.startswith(os.pardir + os.sep):
      die(f"{at}{word}: {file} is outside {REPO}, and the workers get only the repository "
          "(git archive HEAD): move it under configs/ and commit it")
    return (f"--config={path}{colon}{arg}" if os.path.isabs(file) else word), path

  def check_tree(self, configs):
    """The workers get `git archive HEAD`, not this working tree: refuses a launch whose configs
    ({repository path: its --config word}) or code they would not get as they are here."""
    def git(*args):
      out = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True)
      if out.returncode:
        why = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        die(f"git {args[0]} failed in {REPO} ({why}): the workers get `git archive HEAD`, which "
            "needs a git checkout with a commit")
      return [p for p in out.stdout.split("\0") if p]
    differ = {}  # Path: how HEAD lacks it or differs.
    for entry in git("status", "--porcelain", "-z", "--no-renames", "--untracked-files=no", "--",
                     *SHIPPED_DIRS, "pyproject.toml"):
      differ[entry[3:]] = ("deleted" if "D" in entry[:2] else
                           "added, not committed" if "A" in entry[:2] else "modified")
    # Code or a config the run may load that the workers would lack; untracked files elsewhere
    # (runs/, notes) are no part of a run.
    for path in git("ls-files", "-z", "--others", "--exclude-standard", "--", *SHIPPED_DIRS):
      differ.setdefault(path, "untracked")
    committed = set(git("ls-tree", "-z", "--name-only", "HEAD", "--", *configs))
    missing = {}
    for path, word in configs.items():
      if path in differ or path not in committed:
        if not os.path.isfile(os.path.join(REPO, path)):
          die(f"{word}: there is no {path} in {REPO}")
        missing[path] = differ.get(path, "not committed")
    missing.update(differ)  # The configs first: they are what the launch names.
    if missing:
      listed = [f"{p} ({how})" for p, how in missing.items()]
      more = f" and {len(listed) - 5} more" if len(listed) > 5 else ""
      die(f"the workers get only `git archive HEAD`, which lacks or differs from "
          f"{', '.join(listed[:5])}{more}: commit them (or stash what the run must not use), "
          "then launch again")

  def check_slice(self):
    """The accelerator, its software version and Autocheckpoint: what the service would refuse."""
    o = self.o
    if not o["accelerator"]:
      if not o["reuse"]:
        die("missing --accelerator=TYPE to create the VM (e.g. --accelerator=v4-32), or give "
            "--reuse for an existing one")
      return
    family, _ = family_of(o["accelerator"])
    if family is None:
      die(f"--accelerator={o['accelerator']}: give one of v2-N, v3-N, v4-N, v5litepod-N (v5e), "
          "v5p-N, v6e-N (Cloud TPU's accelerator types)")
    _, called, version, autocheckpoint = FAMILIES[family]
    if not o["version"]:
      o["version"] = version
    else:
      for prefix, fits in VERSION_FAMILIES:
        if o["version"].startswith(prefix):
          if family not in fits:
            die(f"--version={o['version']} does not fit --accelerator={o['accelerator']}: {called} "
                f"runs {version} ({VERSIONS_DOC})")
          break
    if o["autocheckpoint"] and not autocheckpoint:
      die(f"--autocheckpoint: Cloud TPU's Autocheckpoint is for v2, v3, v4 and v5e, not "
          f"{o['accelerator']}; drop it (maintenance then stops the run without a save)")

  def preflight(self):
    """What would make a created slice useless, checked before it is created and billed."""
    o = self.o
    rc, account, _ = self.call(["gcloud", "config", "get-value", "account"], capture=True)
    if rc or not account.strip():
      die("gcloud has no account: run gcloud auth login, then launch again")
    if not o["project"]:
      rc, project, _ = self.call(["gcloud", "config", "get-value", "project"], capture=True)
      if rc or not project.strip():
        die("no project: give --project=P or run gcloud config set project P")
    if hosts(o["accelerator"]) > 1:
      self.check_key_in_agent()

  def check_key_in_agent(self):
    """gcloud's scp --worker=all to several hosts wants its key in a running ssh-agent (it raises
    SSHKeyNotInAgent otherwise), which it first checks once the slice exists."""
    key = os.path.join(os.path.expanduser("~"), ".ssh", "google_compute_engine")
    how = (f"ssh-add {key} (with ssh-agent running: eval \"$(ssh-agent)\"; make the key first with "
           f"ssh-keygen -t rsa -f {key} if it is missing)")
    if not os.path.exists(key):
      die(f"--accelerator={self.o['accelerator']} has {hosts(self.o['accelerator'])} hosts and "
          f"gcloud's --worker=all needs its key in ssh-agent, but there is no {key}: {how}")
    try:
      fingerprint = subprocess.run(["ssh-keygen", "-lf", key], capture_output=True, text=True)
      listed = subprocess.run(["ssh-add", "-l"], capture_output=True, text=True)
    except OSError as e:
      die(f"cannot check gcloud's key in ssh-agent ({e}): {how}")
    words = fingerprint.stdout.split()
    if fingerprint.returncode or len(words) < 2 or words[1] not in listed.stdout:
      die(f"--accelerator={self.o['accelerator']} has {hosts(self.o['accelerator'])} hosts and "
          f"gcloud's --worker=all needs {key} in a running ssh-agent: {how}")

  def check_config(self):
    """Each run's `resizer_jax.main --plan` on the slice's devices and hosts, with this checkout's
    code (resizer_jax/preflight.py): what would stop the workers at start-up stops the launch here,
    before the slice exists. Needs the project installed here; $RESIZER_JAX_TPU_CHECK_CONFIG=0
    skips it."""
    o = self.o
    family, size = family_of(o["accelerator"])
    if os.environ.get(CHECK_ENV) == "0" or family is None:  # --reuse alone: the size is unknown.
      return
    devices = size // 2 if family in ("v4", "v5p") else size  # Those count 2 TensorCores a chip.
    python = os.environ.get(PYTHON_ENV) or sys.executable
    env = dict(os.environ, **({"TFDS_DATA_DIR": o["data_dir"]} if o["data_dir"] else {}))
    for k, words in enumerate(self.runs):
      cmd = [python, "-m", "resizer_jax.main", "--plan", f"--devices={devices}",
             f"--processes={hosts(o['accelerator'])}", "--platform=tpu",
             *[w for w in words if not w.startswith("--workdir=")]]
      try:
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
      except OSError as e:
        die(f"cannot check the config with {python} ({e}): set {PYTHON_ENV} to a Python with "
            f"this project, or {CHECK_ENV}=0 to launch unchecked")
      at = f"--step #{k + 1}: " if len(self.runs) > 1 else ""
      last = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
      last = last.split("  (--")[0]  # Its hint about its own flags, not this launcher's.
      if out.returncode == 2:
        die(f"{at}{last}")
      if out.returncode:
        die(f"{at}cannot check the config with {python} ({last}): pip install -e . in {REPO} "
            f"there, or set {PYTHON_ENV} to a Python with this project, or {CHECK_ENV}=0 to "
            "launch unchecked")

  def create(self):
    """The slice, or a queued request for it, then the wait until it is granted."""
    o = self.o
    alpha = ["alpha"] if o["autocheckpoint"] else []  # --autocheckpoint-enabled is alpha only.
    extra = (["--spot"] if o["spot"] else []) + (
        ["--autocheckpoint-enabled"] if o["autocheckpoint"] else [])
    if not o["queued"]:
      if not o["reuse"]:
        self.run(["gcloud", *alpha, "compute", "tpus", "tpu-vm", "create", self.name, *self.where,
                  f"--accelerator-type={o['accelerator']}", f"--version={o['version']}", *extra])
      return
    if not o["reuse"]:
      existing = "" if self.dry else self.existing_request()
      if existing:  # Its place in the queue is kept: wait on it.
        say(f"queued resource {self.name} exists ({existing}): waiting on it, not creating "
            "another")
      else:
        if o["valid_until"]:
          extra.append(f"--valid-until-duration={o['valid_until']}")
        self.run(["gcloud", *alpha, "compute", "tpus", "queued-resources", "create", self.name,
                  f"--node-id={self.name}", *self.where, f"--accelerator-type={o['accelerator']}",
                  f"--runtime-version={o['version']}", *extra])
    if self.dry:
      print(show(self.describe_queued))
      return
    try:
      self.wait_queued()
    except KeyboardInterrupt:
      # A request granted with nobody to use it bills: take it back.
      signal.signal(signal.SIGINT, signal.SIG_IGN)
      say(f"interrupted while waiting: deleting queued resource {self.name}")
      rc = self.call(["gcloud", "compute", "tpus", "queued-resources", "delete", self.name,
                      *self.where, "--force", "--quiet"], capture=True)[0]
      if rc:
        say(f"queued resource {self.name} COULD NOT BE DELETED and bills once granted: "
            f"{self.delete_command(True)}")
      raise Exit(130)

  def existing_request(self):
    """The state of the request of this name ("" when there is none), asked again on a blip."""
    for attempt in range(1, DESCRIBE_TRIES + 1):
      state, error = self.queued_state()
      if state is not None:
        return state
      say(f"queued resource {self.name}: describe failed ({error}); trying again")
      time.sleep(first_describe_wait())
    say(f"queued resource {self.name}: {DESCRIBE_TRIES} describes failed, the last: {error}; "
        "nothing created: launch again")
    raise Exit(1)

  def wait_queued(self):
    wait_s, failures = first_describe_wait(), 0
    gone = (f"delete it with {self.delete_command(True)}, then launch again (finished steps "
            "are skipped)")
    ends = {
        "FAILED": f"not granted (refused, or --valid-until-duration ran out); left: the request, "
                  f"no node; {gone}",
        "SUSPENDING": f"its node is being taken (preemption or maintenance); left: the request; "
                      f"{gone}",
        "SUSPENDED": f"its node was taken (preemption or maintenance); left: the request, no node; "
                     f"the workdirs keep the checkpoints; {gone}",
        "DELETING": "being deleted; nothing is left once it is gone: launch again then",
    }
    while True:
      state, error = self.queued_state()
      if state == "ACTIVE":
        return
      if state is None:
        failures += 1
        if failures >= DESCRIBE_TRIES:
          say(f"queued resource {self.name}: {failures} describes failed, the last: {error}; "
              f"the request is LEFT QUEUED and bills once granted: launch again to wait on it, or "
              f"{self.delete_command(True)}")
          raise Exit(1)
        say(f"queued resource {self.name}: describe failed ({error}); trying again")
      elif not state:
        say(f"queued resource {self.name} is gone (deleted elsewhere); launch again to queue it")
        raise Exit(1)
      elif state in ends:
        say(f"queued resource {self.name}: {state}: {ends[state]}")
        raise Exit(1)
      else:
        failures = 0
        say(f"queued resource {self.name}: {state}; waiting")
      time.sleep(wait_s)
      wait_s = min(30, wait_s * 2)

  def train(self):
    o = self.o
    chain, workdirs, step_lines, configs = self.check_steps()
    if o["data_dir"] and not o["data_dir"].startswith(("gs://", "/")):
      die(f"--data_dir={o['data_dir']} is relative: give gs://BUCKET/PATH or an absolute path "
          "that every worker sees")
    self.check_slice()
    o["copy_every"] = os.environ.get(LOG_COPY_ENV, str(LOG_COPY_EVERY_S))
    if not re.fullmatch(r"\d*\.?\d+", o["copy_every"]) or not float(o["copy_every"]):
      die(f"{LOG_COPY_ENV}={o['copy_every']}: give a positive number of seconds")
    with open(os.path.join(REPO, "pyproject.toml")) as f:
      pin = re.search(r'"jax==([0-9.]+)"', f.read())
    if not pin:
      die(f'no "jax==X" pin in {REPO}/pyproject.toml')
    self.check_tree(configs)
    self.check_config()
    if not self.dry:
      self.preflight()
    self.create()
    try:
      rc = self.start(chain, workdirs, step_lines, pin.group(1))
      if rc == 0 and o["delete_when_done"]:
        return self.delete_if_finished()
    except KeyboardInterrupt:  # Outside --attach (which detaches): the launch is cut short.
      say("interrupted")
      rc = 130
    except Exit as e:
      rc = e.code
    if not self.dry:
      self.still_up()
    return rc

  def start(self, chain, workdirs, step_lines, jax_version):
    o = self.o
    # The project as committed, the same bytes on every worker.
    fd, tarball = tempfile.mkstemp(prefix=f"resizer_jax-{self.name}-", suffix=".tar.gz")
    os.close(fd)
    try:
      self.run(["git", "-C", REPO, "archive", "--format=tar.gz", "-o", tarball, "HEAD"])
      self.run(["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                f"{self.name}:resizer_jax.tar.gz", *self.where, "--worker=all"])
    finally:
      os.remove(tarball)
    # Set-up, on every worker before any starts: a worker that fails here leaves the others
    # unstarted, instead of waiting for it in jax.distributed.initialize().
    rc = self.ssh_all("setting the workers up", WORKER_PRELUDE + (
        f'\njax_req="jax[{o["jax"]}]=={jax_version}" uv_req={UV_REQ}') + SETUP_TAIL)
    if rc:
      raise Exit(rc)
    n = len(workdirs)
    head = f"n={n} chain={int(chain)} copy_every={o['copy_every']}"
    if o["data_dir"]:
      head += f"\nexport TFDS_DATA_DIR={quote(o['data_dir'])}"
    head += "\n" + step_lines + LOG_OF
    script = (f"{WORKER_PRELUDE}\n{LOG_OF}\nworkdirs=({show(workdirs)}) chain={int(chain)}"
              + START_TAIL.replace("{head}", head))
    rc = self.ssh_all("starting the run", script)
    if rc:
      raise Exit(rc)
    if o["detach"] and not o["delete_when_done"]:
      say(f"the run goes on without this terminal; follow it with: {self.follow} --attach")
      return 0
    if o["detach"]:
      say("waiting for the run to end, to delete the slice then (--delete-when-done); its logs: "
          f"{self.follow} --attach")
    rc = self.attach(quiet=o["detach"])
    if o["detach"] and not self.dry:
      say(f"the job ended with code {rc}")
    return rc

  def delete_if_finished(self):
    """Deletes the slice once every worker's job exited 0 with every step's result.json there."""
    rc = self.ssh_all("asking every worker whether its run finished",
                      WORKER_PRELUDE + FINISHED_TAIL)
    if rc:
      say(f"not deleting {self.name}: not every worker's run finished")
      self.still_up()
      return rc
    say(f"every worker's run finished: deleting {self.name} (--delete-when-done)")
    return self.delete()


def main(argv):
  if "--help" in argv or "-h" in argv:
    print(USAGE)
    return 0
  o = parse(argv)
  if not o["name"]:
    die(f"missing --name=VM (e.g. {EXAMPLE})")
  if not o["zone"]:
    die(f"missing --zone=ZONE (e.g. {EXAMPLE})")
  # Cloud TPU's rule for node names (also the queued resource's here): refused by the service.
  if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", o["name"]):
    die(f"--name={o['name']}: a TPU name is 1 to 63 lowercase letters, digits and hyphens, starting "
        "with a letter and not ending with a hyphen")
  if o["valid_until"] and not o["queued"]:
    die("--valid-until-duration is for --queued: a queued resource's request expires, a VM "
        "created at once has nothing to expire")
  if o["jax"] not in ("tpu", "cpu"):
    die(f"--jax={o['jax']}: give --jax=tpu or --jax=cpu")
  launcher = Launcher(o)
  if o["mode"] == "delete":
    return launcher.delete()
  if o["mode"] == "status":
    return launcher.status()
  if o["mode"] == "attach":
    return launcher.attach()
  return launcher.train()


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except Exit as e:
    sys.exit(e.code)
  except KeyboardInterrupt:
    sys.exit(130)
