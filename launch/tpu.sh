#!/bin/sh
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
#   launch/tpu.sh --name=r50 --zone=us-central2-b --delete    # the VM, or its queued resource
#
# Training (the default mode) needs --config=... and --workdir=... (gs://, or an absolute path every
# worker sees); every argument this script does not know goes to resizer_jax.main unchanged.
#   --name=VM --zone=ZONE   always. VM: 1-63 lowercase letters, digits and hyphens, starting with a
#                           letter, not ending with a hyphen (the names Cloud TPU accepts).
#   --accelerator=TYPE      v2-N, v3-N, v4-N, v5litepod-N (v5e), v5p-N, v6e-N: required unless --reuse.
#   --version=IMAGE         TPU software version; default: the one for the accelerator
#                           (tpu-ubuntu2204-base for v2-v4, v2-alpha-tpuv5-lite for v5e,
#                           v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e); another generation's
#                           is refused. --project=P.
#   --spot | --queued       a spot VM; a queued resource named VM (its node is VM too): the request
#                           waits in Cloud TPU's queue until there is capacity, and so does this
#                           script (polling its state), before it sets the workers up. A request of
#                           that name that exists already is waited on, not created again.
#   --valid-until-duration=D   with --queued: give up the request if not granted within D (6h, 2d).
#   --autocheckpoint        create it with --autocheckpoint-enabled (gcloud alpha; v2-v4 and v5e):
#                           maintenance then sends the run SIGTERM and waits up to 5 minutes for
#                           its save. Without it, maintenance starts at once, without a save.
#   --delete-when-done      stay until the job ends, then delete the slice (and its queued
#                           resource) if every worker's run exited 0 with its result.json written.
#   --reuse                 the VM exists (or the queued resource, granted or still waiting): skip
#                           creating it (a rerun after maintenance or a change).
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
#   --detach                start the run and return, instead of following its logs (with
#                           --delete-when-done: wait for it without printing them).
#   --dry-run               print every command, run nothing.
#
# Before anything is created: the arguments, the accelerator and its version, gcloud's account and
# project, and for a slice of several hosts gcloud's key in ssh-agent (--worker=all needs it). Bad
# input: one line on stderr, exit 2. After the slice exists, every way out says it is still up and
# how to delete it.
#
# The logic is in launch/tpu.py (Python 3.8 or later; macOS's /bin/bash 3.2 cannot run the bash it
# was); this file stays the entry point, in POSIX sh. On the workers it runs bash scripts: the
# archive of HEAD (`git archive`; uncommitted changes are not sent) unpacked into ~/resizer_jax; uv
# makes a Python 3.11 venv in ~/resizer_jax_venv and installs the project with jax[tpu] at the
# pyproject.toml pin; the job starts under setsid/nohup. Logs: <workdir>/logs/worker-<i>.log (for
# a gs:// workdir copied there every 5 minutes, at the end of each run, and on --attach/--status).
here=$(dirname "$0")
exec "${PYTHON:-python3}" "$here/tpu.py" "$@"
