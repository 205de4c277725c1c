#!/usr/bin/env python3
r"""Several JAX processes on this machine, as a pod or cluster would run them (and as the tests do).

  python launch/local.py --num_processes=2 --cpu_devices_per_process=4 \
      --config=configs/demo.py:tiny --workdir=runs/demo_2proc [--config.k=v ...] [--dry-run]

Every argument it does not know goes to `python -m resizer_jax.main` unchanged. Process i gets
--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i; their output is interleaved
here with a [i] prefix; --dry-run runs the checks every process would run first (`--plan`) and
prints the commands. SIGTERM or SIGINT here is passed on to every process (they save and stop,
like a preempted pod); if one process fails the others are stopped, and the exit status is the
first failure's.
"""
import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commands(args, main_args):
  port = args.port or _free_port()
  env = {}
  if args.cpu_devices_per_process:  # The user's other XLA flags (a dump, an option) kept.
    count = "--xla_force_host_platform_device_count="
    env["XLA_FLAGS"] = " ".join([f for f in os.environ.get("XLA_FLAGS", "").split()
                                 if not f.startswith(count)] +
                                [f"{count}{args.cpu_devices_per_process}"])
  return [(env, [sys.executable, "-m", "resizer_jax.main", f"--coordinator_address=127.0.0.1:{port}",
                 f"--num_processes={args.num_processes}", f"--process_id={i}", *main_args])
          for i in range(args.num_processes)]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _stream(i, proc):
  for line in proc.stdout:
    sys.stdout.write(f"[{i}] {line}")
    sys.stdout.flush()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--cpu_devices_per_process", type=int, default=0,
                      help="Simulated CPU devices per process (0: the real devices).")
  parser.add_argument("--port", type=int, default=0, help="Coordinator port (0: a free one).")
  parser.add_argument("--dry-run", "--dry_run", action="store_true", dest="dry_run",
                      help="Print the commands instead of running them.")
  args, main_args = parser.parse_known_args()
  if args.num_processes < 1:
    parser.error(f"--num_processes={args.num_processes}; give 1 or more")
  cmds = commands(args, main_args)
  if args.dry_run:  # The checks each process runs first (resizer_jax/preflight.py), here once.
    devices = [f"--devices={args.num_processes * args.cpu_devices_per_process}",
               "--platform=cpu"] if args.cpu_devices_per_process else []
    check = subprocess.run([sys.executable, "-m", "resizer_jax.main", *main_args, "--plan",
                            f"--processes={args.num_processes}", *devices], cwd=REPO,
                           stdout=subprocess.DEVNULL)
    if check.returncode:
      return check.returncode
    for env, cmd in cmds:
      print(" ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, cmd)]))
    return 0

  # Own sessions: a Ctrl-C in this terminal reaches only the launcher, which turns it into the
  # SIGTERM that makes every process save, instead of killing them mid-step.
  procs = [subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
           for env, cmd in cmds]
  forward = lambda signum, _: [p.send_signal(signal.SIGTERM) for p in procs if p.poll() is None]
  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  streams = [threading.Thread(target=_stream, args=(i, p), daemon=True) for i, p in enumerate(procs)]
  for t in streams:
    t.start()
  status = 0
  pending = set(range(len(procs)))
  while pending:
    for i in list(pending):
      try:
        rc = procs[i].wait(timeout=0.5)
      except subprocess.TimeoutExpired:
        continue
      pending.discard(i)
      if rc and not status:
        status = rc
        print(f"[launch] process {i} exited with {rc}; stopping the others", flush=True)
        for j in pending:
          procs[j].kill()
  for t in streams:
    t.join()
  return status if status >= 0 else 128 - status


if __name__ == "__main__":
  sys.exit(main())
