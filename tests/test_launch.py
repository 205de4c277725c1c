"""The launchers, executed: launch/tpu.sh against a stand-in gcloud whose TPU VM workers are local
processes with their own home folders, launch/slurm.sbatch through stand-in sbatch and srun
(tests/standins/). Both really bootstrap a uv venv and train the demo to its last checkpoint with
2 processes (TPU workers of 4 CPU devices; SLURM tasks of one, as one task per GPU); then the
follow-up modes, the signal path, a chain of runs in a queued resource, SLURM job dependencies, the
dry runs and the refusals.

The venvs are installed from the indexes pip is configured with here (uv reads no pip config) into
one uv cache for the module: a fresh one, unless UV_CACHE_DIR is set, which is then used as it is.
"""
import calendar
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, saved_state

STANDINS = REPO / "tests" / "standins"
VM = ["--name=demo", "--zone=us-central2-b"]
TRAIN = ["--config=configs/demo.py:tiny"]


def _pip_indexes():
  """pip's configured indexes as uv's variables: the same packages for the venvs as for pip."""
  listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                          text=True, check=False).stdout
  values = {}
  for key, value in re.findall(r"^[^.\n]*\.([a-z-]+)='(.*)'$", listed, re.M):
    values.setdefault(key, [])
    values[key] += [v for v in value.split() if v not in values[key]]
  env = {"UV_INDEX_STRATEGY": "unsafe-best-match"}  # pip takes the best version of all indexes.
  if "index-url" in values:
    env["UV_DEFAULT_INDEX"] = values["index-url"][0]
  if "extra-index-url" in values:
    env["UV_EXTRA_INDEX_URL"] = " ".join(values["extra-index-url"])
  if "find-links" in values:
    env["UV_FIND_LINKS"] = ",".join(values["find-links"])
  return env


def _stock_python3():
  """A Python 3.10 with pip, python3 on a stock TPU VM image; this one where there is none."""
  pyenv = os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
  candidates = [shutil.which("python3.10"),
                *sorted(glob.glob(f"{pyenv}/versions/3.10*/bin/python3.10"))]
  for path in filter(None, candidates):
    if subprocess.run([path, "-m", "pip", "--version"], capture_output=True).returncode == 0:
      return path
  return sys.executable


@pytest.fixture(scope="module")
def base_env(tmp_path_factory):
  """PATH: the stand-ins, a python3 as on a stock image and the Python 3.11 uv is to find (uv must
  not download one here), the system tools; the uv settings; nothing of this process's JAX setup."""
  bin_dir = tmp_path_factory.mktemp("bin")
  os.symlink(_stock_python3(), bin_dir / "python3")
  os.symlink(sys.executable, bin_dir / "python3.11")
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("XLA_", "JAX_", "UV_", "PYTHONPATH", "PYTHONHOME"))}
  cache = os.environ.get("UV_CACHE_DIR") or str(tmp_path_factory.mktemp("uv_cache"))
  env.update(_pip_indexes(), PATH=f"{STANDINS}:{bin_dir}:/usr/bin:/bin",
             UV_PYTHON_DOWNLOADS="never", UV_CACHE_DIR=cache)
  return env


@pytest.fixture
def env(base_env, tmp_path):
  """Per test: the stand-ins' state (VMs, SLURM jobs), the user's home under tmp_path, and gcloud
  signed in to a project."""
  os.makedirs(tmp_path / "home")
  # The config check (resizer_jax.main --plan, seconds each) off: the tests of the cloud steps use
  # valid configs; test_tpu_launch_checks_each_runs_config_before_anything_is_created runs it.
  # Queued resources are described every 0.1 s at first, not 2 s: the stand-in's states change by
  # the clock (STANDIN_QUEUED_WAIT_S), not by the count of describes.
  return dict(base_env, STANDIN_ROOT=str(tmp_path / "cloud"), HOME=str(tmp_path / "home"),
              STANDIN_GCLOUD_ACCOUNT="someone@example.com", STANDIN_GCLOUD_PROJECT="a-project",
              RESIZER_JAX_TPU_CHECK_CONFIG="0", RESIZER_JAX_PYTHON=sys.executable,
              RESIZER_JAX_TPU_DESCRIBE_WAIT_S="0.1")


@pytest.fixture
def agent_env(env):
  """env, with gcloud's key (~/.ssh/google_compute_engine) in a running ssh-agent of its own, as
  gcloud's scp --worker=all to several workers requires."""
  key = os.path.join(env["HOME"], ".ssh", "google_compute_engine")
  os.makedirs(os.path.dirname(key))
  subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
  started = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
  agent = dict(re.findall(r"(SSH_AUTH_SOCK|SSH_AGENT_PID)=([^;]+);", started))
  env = dict(env, **agent)
  try:
    subprocess.run(["ssh-add", "-q", key], env=env, check=True, capture_output=True)
    yield env
  finally:
    os.kill(int(agent["SSH_AGENT_PID"]), signal.SIGTERM)


def run(cmd, env, cwd, timeout=600, check=True):
  start = time.time()
  out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  print(f"{time.time() - start:6.1f} s  {' '.join(cmd)[:150]}")
  if check:
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
  return out


def worker_lines(out, i):
  return [l[len(f"[worker {i}] "):] for l in out.splitlines() if l.startswith(f"[worker {i}] ")]


@pytest.mark.slow  # Second tier (.ci/run): a real bootstrap or a long rehearsal.
def test_tpu_vm_launch_sets_up_every_worker_and_trains_detached(
    checkout, agent_env, data_dir, tmp_path):
  env = agent_env  # 2 workers: gcloud's scp --worker=all wants its key in ssh-agent.
  workdir = tmp_path / "run"
  tpu = ["bash", "launch/tpu.sh", *VM]
  try:
    out = run([*tpu, "--accelerator=v4-16", "--jax=cpu", f"--data_dir={data_dir}", "--detach",
               *TRAIN, f"--workdir={workdir}"], env, checkout, timeout=400).stdout
    print(out)
    homes = [tmp_path / "cloud" / "tpu" / "demo" / f"worker-{i}" for i in (0, 1)]
    for i, home in enumerate(homes):
      assert any(l.startswith("started: pid ") for l in worker_lines(out, i)), out
      # A Python 3.11 venv (python3 there may be older) with the project from the archive sent.
      probe = subprocess.run(
          [home / "resizer_jax_venv/bin/python", "-c",
           "import sys, resizer_jax; print(sys.version_info[:2], resizer_jax.__file__)"],
          cwd="/", capture_output=True, text=True, check=True).stdout
      assert probe == f"(3, 11) {home}/resizer_jax/resizer_jax/__init__.py\n"

    # The launch has returned, its SSH sessions have ended (the stand-in hangs their leftovers up),
    # and the run goes on.
    out = run([*tpu, "--status"], env, checkout).stdout
    assert "VM demo: READY\tv4-16" in out
    for i in (0, 1):
      assert worker_lines(out, i)[0].startswith("running (pid "), out
    # A second launch onto the running VM is refused on every worker, and leaves the run alone.
    again = run([*tpu, "--reuse", "--jax=cpu", *TRAIN, f"--workdir={workdir}"], env, checkout,
                check=False)
    assert again.returncode != 0
    for i in (0, 1):
      assert any(l.startswith("a run is going (pid ") for l in worker_lines(again.stdout, i))

    # Ctrl-C in --attach detaches, and the run goes on.
    attached = subprocess.Popen([*tpu, "--attach"], cwd=checkout, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    assert attached.stdout.readline().startswith("[worker ")
    os.killpg(attached.pid, signal.SIGINT)  # As a terminal sends it to its foreground processes.
    _, err = attached.communicate(timeout=30)
    assert attached.returncode == 130 and "detached; the run goes on" in err, err
    out = run([*tpu, "--status"], env, checkout).stdout
    for i in (0, 1):
      assert worker_lines(out, i)[0].startswith("running (pid "), out

    # --attach follows every worker's log until the run ends, and exits with its code.
    out = run([*tpu, "--attach"], env, checkout, timeout=500).stdout
    assert saved_state(str(workdir))[0] == 12
    logs = []
    for i in (0, 1):
      with open(workdir / "logs" / f"worker-{i}.log") as f:
        logs.append(f.read().splitlines())
      assert worker_lines(out, i) == logs[i] + ["exited with code 0"], out[-3000:]
    final = json.loads(next(l for l in logs[0] if l.startswith('{"workdir": ')))
    assert final["workdir"] == str(workdir) and "eval/accuracy" in final

    out = run([*tpu, "--status"], env, checkout).stdout
    for i in (0, 1):
      assert worker_lines(out, i) == [
          f"exited with code 0; log {workdir}/logs/worker-{i}.log: {logs[i][-1][:300]}"]
    # On a finished run, --attach prints the logs and returns.
    out = run([*tpu, "--attach"], env, checkout, timeout=60).stdout
    for i in (0, 1):
      assert worker_lines(out, i) == logs[i] + ["exited with code 0"]
  finally:  # Whatever happened, nothing of the VM keeps running.
    if os.path.exists(tmp_path / "cloud" / "tpu" / "demo"):
      run([*tpu, "--delete"], env, checkout)
  assert not os.path.exists(tmp_path / "cloud" / "tpu" / "demo")
  gone = run([*tpu, "--status"], env, checkout, check=False)
  assert gone.returncode != 0 and "NOT_FOUND" in gone.stderr


@pytest.mark.slow  # Second tier (.ci/run): a real bootstrap or a long rehearsal.
def test_tpu_chain_in_a_queued_resource_runs_its_steps_in_order_and_a_relaunch_skips_finished_ones(
    checkout, env, data_dir, tmp_path):
  """What a staged sweep launches per chain: a baseline, then a run warm-started from it, in one
  queued resource (granted after 3 s). One worker (v4-8): the first test runs two."""
  base, tuned, bad, never = (tmp_path / n for n in ("base", "tuned", "bad", "never"))
  step = lambda workdir, *more: " ".join(
      ["--step=--config=configs/demo.py:tiny,resizer=bilinear", f"--workdir={workdir}", *more])
  steps = [step(base), step(tuned, "--config.seed=1", f"--config.init_from={base}")]
  # The second step compiles what the first did: a compilation cache the workers share saves that.
  env = dict(env, STANDIN_QUEUED_WAIT_S="3", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  tpu = ["bash", "launch/tpu.sh", *VM, "--queued"]
  try:
    out = run([*tpu, "--accelerator=v4-8", "--jax=cpu", f"--data_dir={data_dir}", "--detach",
               *steps], env, checkout, timeout=400)
    assert "queued resource demo: WAITING_FOR_RESOURCES; waiting" in out.stderr
    assert re.fullmatch(r"started: pid \d+, a chain of 2 steps", worker_lines(out.stdout, 0)[-1])
    out = run([*tpu, "--status"], env, checkout).stdout
    assert out.startswith("queued resource demo: ACTIVE\nVM demo: READY\tv4-8\n"), out
    assert re.match(r"running \(pid \d+\), step 1/2; log ", worker_lines(out, 0)[0]), out

    # --attach follows each step's log in turn, then says how the chain ended.
    out = run([*tpu, "--attach"], env, checkout, timeout=500).stdout
    lines = worker_lines(out, 0)
    assert lines.index(f"--- step 1/2: log {base}/logs/worker-0.log") < lines.index(
        f"--- step 2/2: log {tuned}/logs/worker-0.log"), out[-3000:]
    assert lines[-1] == "exited with code 0: all 2 steps finished (2 run, 0 skipped)", out[-3000:]
    assert saved_state(str(base))[0] == saved_state(str(tuned))[0] == 12
    # The second step started once the first had finished, from its last checkpoint.
    with open(tuned / "logs" / "worker-0.log") as f:
      log = f.read()
    started = re.search(r"^=== (\S+) \S+: step 2/2 starts", log, re.M).group(1)
    assert calendar.timegm(time.strptime(started, "%Y-%m-%dT%H:%M:%SZ")) >= int(
        os.path.getmtime(base / "result.json")), (started, os.path.getmtime(base / "result.json"))
    assert f"  backbone from {base}; the resizer starts fresh" in log

    # Relaunched (as after a preemption), the finished steps are skipped.
    out = run([*tpu, "--reuse", "--jax=cpu", f"--data_dir={data_dir}", *steps], env, checkout,
              timeout=300).stdout
    assert worker_lines(out, 0)[-3:] == [
        f"--- step 1/2: skipped: {base}/result.json exists",
        f"--- step 2/2: skipped: {tuned}/result.json exists",
        "exited with code 0: all 2 steps finished (0 run, 2 skipped)"], out[-3000:]
    # A failing step ends the chain with its exit status (2: main refuses a bad config); the
    # step after it never starts.
    out = run([*tpu, "--reuse", "--jax=cpu", f"--data_dir={data_dir}", steps[0],
               step(bad, "--config.no_such_field=1"), step(never)], env, checkout, timeout=300,
              check=False)
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    assert worker_lines(out.stdout, 0)[-1] == f"exited with code 2: step 2/3 failed ({bad})"
    assert not glob.glob(str(never / "logs" / "*.log"))
    out = run([*tpu, "--status"], env, checkout).stdout
    assert worker_lines(out, 0)[0].startswith(
        f"exited with code 2: step 2/3 failed ({bad}); log {bad}/logs/worker-0.log: "), out
  finally:  # The queued resource and its node, and whatever still runs there.
    if os.path.exists(tmp_path / "cloud" / "queued" / "demo"):
      run([*tpu, "--delete"], env, checkout)
  assert not os.path.exists(tmp_path / "cloud" / "tpu" / "demo")


@pytest.mark.slow  # Second tier (.ci/run): a real bootstrap or a long rehearsal.
def test_slurm_job_makes_its_venv_and_trains_one_process_per_task(
    checkout, env, data_dir, tmp_path):
  """As on a GPU cluster, one task per device: each sees one CPU device."""
  workdir = tmp_path / "run"
  run(["sbatch", "--wait", "--nodes=2", "--ntasks-per-node=1", "launch/slurm.sbatch", "--jax=cpu",
       *TRAIN, f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"], env, checkout)
  [output] = glob.glob(str(checkout / "slurm-resizer_jax-*.out"))
  with open(output) as f:
    out = f.read()
  os.remove(output)
  assert saved_state(str(workdir))[0] == 12, out[-5000:]
  # jax found its 2 processes in srun's SLURM_* variables; only process 0 printed the result.
  assert re.search(r"\b2 processes\b", out), out[-5000:]
  assert json.loads(next(l for l in out.splitlines() if l.startswith('{"workdir": ')))[
      "workdir"] == str(workdir)
  python = checkout / ".venv" / "bin" / "python"
  probe = subprocess.run([python, "-c", "import sys, jax, resizer_jax; print(sys.version_info[:2], "
                          "jax.__version__, resizer_jax.__file__)"], capture_output=True, text=True,
                         cwd="/", check=True).stdout.split()
  assert probe[:2] == ["(3,", "11)"] and probe[3] == f"{checkout}/resizer_jax/__init__.py"
  assert f'"jax=={probe[2]}"' in (checkout / "pyproject.toml").read_text()
  # A finished run is not requeued.
  assert not os.path.exists(tmp_path / "cloud" / "slurm" / "requeued")


def test_slurm_job_passes_sigterm_to_its_tasks_and_requeues_only_an_unfinished_run(
    checkout, env, tmp_path):
  """The signal path with a trainer that does what resizer_jax.main does on SIGTERM (save, exit 0),
  from the python on PATH (--venv=none)."""
  fake = tmp_path / "trainer"
  os.makedirs(fake)
  (fake / "python").write_text(
      "#!/usr/bin/env bash\n"
      "trap 'echo \"task $SLURM_PROCID: SIGTERM, saved\"; exit 0' TERM\n"
      "echo \"task $SLURM_PROCID of $SLURM_NTASKS started\"\n"
      "while true; do sleep 0.1; done\n")
  os.chmod(fake / "python", 0o755)
  env = dict(env, PATH=f"{fake}:{env['PATH']}")
  requeued = tmp_path / "cloud" / "slurm" / "requeued"
  for finished in (False, True):
    workdir = tmp_path / f"run_{finished}"
    os.makedirs(workdir)
    if finished:
      (workdir / "result.json").write_text("{}")
    job = subprocess.Popen(["sbatch", "--wait", "--nodes=2", "--ntasks-per-node=1",
                            "launch/slurm.sbatch", "--venv=none", *TRAIN, f"--workdir={workdir}"],
                           cwd=checkout, env=env, stdout=subprocess.PIPE, text=True)
    try:
      output, deadline = None, time.time() + 60
      while not output and time.time() < deadline:
        time.sleep(0.2)
        for path in glob.glob(str(checkout / "slurm-resizer_jax-*.out")):
          with open(path) as f:
            output = path if f.read().count(" started\n") == 2 else None
      assert output, "the tasks did not start"
      job.send_signal(signal.SIGTERM)  # What SLURM's --signal=B:TERM does to the batch shell.
      assert job.wait(timeout=60) == 0
    finally:
      job.kill()
    with open(output) as f:
      out = f.read()
    os.remove(output)
    job_id = re.search(r"slurm-resizer_jax-(\d+)\.out", output).group(1)
    assert sorted(re.findall(r"task \d: SIGTERM, saved", out)) == [
        "task 0: SIGTERM, saved", "task 1: SIGTERM, saved"], out
    assert (requeued.read_text().split() if requeued.exists() else []).count(job_id) == (
        0 if finished else 1)


def _job(env, job_id):
  """A stand-in SLURM job's recorded state: {state, reason, exit_code, submitted, started, ended}."""
  spool = os.path.join(env["STANDIN_ROOT"], "slurm", f"job-{job_id}")
  values = {}
  for key in ("state", "reason", "exit_code", "submitted", "started", "ended"):
    path = os.path.join(spool, key)
    values[key] = open(path).read().strip() if os.path.exists(path) else None
  return values


def test_slurm_jobs_wait_for_their_dependencies_and_never_start_after_a_failed_one(
    checkout, env, tmp_path):
  """What a staged sweep submits: `sbatch --parsable [--dependency=afterok:ID] ... slurm.sbatch
  --config=... --workdir=... [--config.init_from=DIR]`, with a stand-in trainer (--venv=none) that
  records its arguments, takes a second, and exits with --config.exit_code (0: writes result.json)."""
  fake = tmp_path / "trainer"
  os.makedirs(fake)
  (fake / "python").write_text(
      "#!/usr/bin/env bash\n"
      "for a; do case $a in --workdir=*) wd=${a#*=} ;; --config.exit_code=*) rc=${a#*=} ;; esac; done\n"
      "mkdir -p \"$wd\" && echo \"$*\" > \"$wd/args\" && sleep 1\n"
      "[[ ${rc:-0} != 0 ]] || echo '{}' > \"$wd/result.json\"\n"
      "exit ${rc:-0}\n")
  os.chmod(fake / "python", 0o755)
  env = dict(env, PATH=f"{fake}:{env['PATH']}")

  def submit(name, *extra, after=None):
    cmd = ["sbatch", "--parsable", *([f"--dependency=afterok:{after}"] if after else []),
           "--nodes=1", "--ntasks-per-node=1", "launch/slurm.sbatch", "--venv=none", *TRAIN,
           f"--workdir={tmp_path / name}", *extra]
    out = run(cmd, env, checkout).stdout
    assert re.fullmatch(r"\d+\n", out), out  # --parsable: the id alone.
    return out.strip()

  a = submit("a")
  b = submit("b", f"--config.init_from={tmp_path / 'a'}", after=a)
  # The dependent waits, pending, while its dependency runs.
  assert _job(env, b)["state"] == "PENDING" and _job(env, b)["reason"] == "Dependency"
  assert _job(env, b)["started"] is None and _job(env, a)["ended"] is None
  failing = submit("f", "--config.exit_code=3")
  b2 = submit("b2", f"--config.init_from={tmp_path / 'f'}", after=failing)
  refused = run(["sbatch", "--dependency=afterok:999999999", "launch/slurm.sbatch", "--venv=none",
                 *TRAIN, "--workdir=/w"], env, checkout, check=False)
  assert refused.returncode == 1 and "Job dependency problem" in refused.stderr

  deadline = time.time() + 60
  while time.time() < deadline and not (_job(env, b)["state"] == "COMPLETED" and
                                        _job(env, b2)["reason"] == "DependencyNeverSatisfied"):
    time.sleep(0.2)
  jobs = {k: _job(env, v) for k, v in dict(a=a, b=b, f=failing, b2=b2).items()}
  assert jobs["a"]["state"] == "COMPLETED" and jobs["a"]["exit_code"] == "0", jobs
  assert jobs["b"]["state"] == "COMPLETED", jobs
  assert float(jobs["b"]["started"]) >= float(jobs["a"]["ended"]), jobs  # Only after A ended.
  assert jobs["f"]["state"] == "FAILED" and jobs["f"]["exit_code"] == "3", jobs
  # Never satisfiable: left pending, never started.
  assert jobs["b2"]["state"] == "PENDING" and jobs["b2"]["reason"] == "DependencyNeverSatisfied"
  assert jobs["b2"]["started"] is None and not (tmp_path / "b2").exists(), jobs
  # The extra --config.x=v arguments reached resizer_jax.main.
  assert (tmp_path / "b" / "args").read_text().split() == [
      "-m", "resizer_jax.main", "--distributed=on", *TRAIN, f"--workdir={tmp_path / 'b'}",
      f"--config.init_from={tmp_path / 'a'}"]
  for path in glob.glob(str(checkout / "slurm-resizer_jax-*.out")):
    os.remove(path)


MAIN_ARGS = "--config=configs/imagenet.py:input=448,resizer=bilinear --workdir=gs://b/runs/x " \
    "--config.per_device_batch_size=16"


def test_dry_runs_print_what_they_would_run_and_run_nothing(checkout, env, tmp_path):
  jax_pin = re.search(r'"jax==([0-9.]+)"', (checkout / "pyproject.toml").read_text()).group(1)
  dry = lambda *cmd: run([*cmd, *MAIN_ARGS.split(), "--dry-run"], env, checkout).stdout.splitlines()

  # The user's own XLA flags are kept; only the device count is the launcher's.
  own, count = "--xla_backend_optimization_level=0", "--xla_force_host_platform_device_count="
  out = run([sys.executable, "launch/local.py", "--num_processes=2", "--cpu_devices_per_process=4",
             "--port=1234", *MAIN_ARGS.split(), "--dry-run"],
            dict(env, XLA_FLAGS=f"{own} {count}8"), checkout).stdout.splitlines()
  for i in (0, 1):
    assert (f"XLA_FLAGS='{own} {count}4' "
            f"{sys.executable} -m "
            f"resizer_jax.main --coordinator_address=127.0.0.1:1234 --num_processes=2 "
            f"--process_id={i} {MAIN_ARGS}") in out

  out = dry("bash", "launch/slurm.sbatch")
  venv = checkout / ".venv"
  assert any(l.endswith(f"uv venv --quiet --python 3.11 {venv}") for l in out), out
  assert any(l.endswith(f"pip install --quiet --python {venv}/bin/python -e . "
                        f"'jax[cuda12]=={jax_pin}'") for l in out), out
  assert out[-1] == f"srun --kill-on-bad-exit=1 {venv}/bin/python -m resizer_jax.main " \
      f"--distributed=on {MAIN_ARGS}"
  assert not venv.exists()
  assert dry("bash", "launch/slurm.sbatch", "--venv=none") == [
      f"srun --kill-on-bad-exit=1 python -m resizer_jax.main --distributed=on {MAIN_ARGS}"]
  # Its dry run checks the config as each task would (resizer_jax/preflight.py).
  refused = run(["bash", "launch/slurm.sbatch", "--venv=none", *MAIN_ARGS.split(),
                 "--config.backbone.name=resnet5", "--dry-run"], env, checkout, check=False)
  assert refused.returncode == 2 and refused.stdout == "", refused.stdout + refused.stderr
  assert refused.stderr.startswith("error: unknown backbone 'resnet5'; valid: ") and len(
      refused.stderr.splitlines()) == 1, refused.stderr

  out = "\n".join(dry("bash", "launch/tpu.sh", *VM, "--accelerator=v4-32"))
  assert out.startswith("gcloud compute tpus tpu-vm create demo --zone=us-central2-b "
                        "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base\n")
  assert "gcloud compute tpus tpu-vm scp " in out
  # Set up, start, follow.
  ssh = "gcloud compute tpus tpu-vm ssh demo --zone=us-central2-b --worker=all '--command="
  assert out.count(ssh) == 3
  assert f"jax_req=\"jax[tpu]=={jax_pin}\"" in out
  assert f'step_1=("$py" -m resizer_jax.main --distributed=on {MAIN_ARGS})\n' in out
  for mode, command in (("--status", "ssh"), ("--attach", "ssh"), ("--delete", "delete")):
    out = run(["bash", "launch/tpu.sh", *VM, mode, "--dry-run"], env, checkout).stdout
    assert f"gcloud compute tpus tpu-vm {command} demo --zone=us-central2-b" in out
  # A chain in a queued resource: the request (the real command's flags), the wait for it, then
  # each step's command in order, the arguments outside --step in every one.
  steps = [f"--step={MAIN_ARGS.replace('/x', f'/p{i}')}" for i in (0, 1)]
  out = run(["bash", "launch/tpu.sh", *VM, "--accelerator=v4-32", "--queued", "--spot",
             "--valid-until-duration=6h", "--config.seed=3", *steps, "--dry-run"], env,
            checkout).stdout
  assert out.startswith(
      "gcloud compute tpus queued-resources create demo --node-id=demo --zone=us-central2-b "
      "--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base --spot "
      "--valid-until-duration=6h\ngcloud compute tpus queued-resources describe demo "
      "--zone=us-central2-b '--format=value(state.state)'\n"), out
  for i in (0, 1):
    assert (f'step_{i + 1}=("$py" -m resizer_jax.main --distributed=on --config.seed=3 '
            f'{MAIN_ARGS.replace("/x", f"/p{i}")})\nworkdir_{i + 1}=gs://b/runs/p{i}\n') in out
  out = run(["bash", "launch/tpu.sh", *VM, "--queued", "--status", "--dry-run"], env,
            checkout).stdout
  assert out.startswith("gcloud compute tpus queued-resources describe demo ")
  out = run(["bash", "launch/tpu.sh", *VM, "--queued", "--delete", "--dry-run"], env,
            checkout).stdout
  assert out == "gcloud compute tpus queued-resources delete demo --zone=us-central2-b --force " \
      "--quiet\n"
  assert not os.path.exists(tmp_path / "cloud")  # The stand-in gcloud was never called.


@pytest.mark.parametrize("cmd,message", [
    (["launch/tpu.sh", "--zone=z", "--accelerator=v4-8", *TRAIN, "--workdir=gs://b/r"],
     "missing --name=VM (e.g. launch/tpu.sh --name=r50 --zone=us-central2-b --accelerator=v4-32 "),
    (["launch/tpu.sh", "--name=vm", "--accelerator=v4-8", *TRAIN, "--workdir=gs://b/r"],
     "missing --zone=ZONE (e.g. "),
    (["launch/tpu.sh", *VM, *TRAIN, "--workdir=gs://b/r"],
     "missing --accelerator=TYPE to create the VM (e.g. --accelerator=v4-32), or give --reuse"),
    (["launch/tpu.sh", *VM, "--accelerator=v4-8", "--workdir=gs://b/r"],
     "missing --config=FILE[:ARG] (e.g. "),
    (["launch/tpu.sh", *VM, "--accelerator=v4-8", *TRAIN], "missing --workdir=DIR (e.g. "),
    (["launch/tpu.sh", *VM, "--accelerator=v4-8", *TRAIN, "--workdir=runs/x"],
     "--workdir=runs/x is relative: give gs://BUCKET/PATH or an absolute path"),
    (["launch/tpu.sh", *VM, "--jax=gpu", *TRAIN, "--workdir=gs://b/r"],
     "--jax=gpu: give --jax=tpu or --jax=cpu"),
    (["launch/tpu.sh", *VM, "--status", "--delete"], "give one of --attach, --status and --delete"),
    # What Cloud TPU refuses: a name with upper case or "_", over 63 characters, ending with "-".
    *[(["launch/tpu.sh", f"--name={name}", "--zone=z", "--accelerator=v4-8", *TRAIN,
        "--workdir=gs://b/r"], f"--name={name}: a TPU name is 1 to 63 lowercase letters, digits "
       "and hyphens, starting with a letter and not ending with a hyphen")
      for name in ("demo_sweep-0", "Demo-0", "0-demo", "demo-", "d" * 64)],
    (["launch/tpu.sh", *VM, "--accelerator=v4-8", "--valid-until-duration=6h", *TRAIN,
      "--workdir=gs://b/r"], "--valid-until-duration is for --queued"),
    (["launch/tpu.sh", *VM, "--accelerator=v4-8", *TRAIN, "--step=--config=c --workdir=/a"],
     "--config=configs/demo.py:tiny beside --step: give each run's --config and --workdir inside"),
    (["launch/tpu.sh", *VM, "--accelerator=v4-8", "--step=--config=c --workdir=/a",
      "--step=--config=c"], "--step #2: missing --workdir=DIR (e.g. "),
    (["launch/tpu.sh", *VM, "--accelerator=v4-8", "--step=--config=c --workdir=/a",
      "--step=--config=c --workdir=/a/"], "--step #2: --workdir=/a/ is step #1's too"),
    (["launch/tpu.sh", *VM, "--accelerator=v4-8", "--step=--config=c --workdir=/b "
      "--config.init_from=/a", "--step=--config=c --workdir=/a"],
     "--step #1 starts from /a (--config.init_from), which step #2 trains: put it after that step"),
    (["launch/tpu.sh", *VM, "--accelerator=v4-8", "--step=--config='c --workdir=/a"],
     "--step='--config='c --workdir=/a': unmatched quote"),
    # What the service refuses at creation: another generation's software version, a type it
    # does not have, Autocheckpoint where it does not exist.
    (["launch/tpu.sh", *VM, "--accelerator=v5litepod-16", "--version=tpu-ubuntu2204-base", *TRAIN,
      "--workdir=gs://b/r"], "--version=tpu-ubuntu2204-base does not fit "
     "--accelerator=v5litepod-16: v5e runs v2-alpha-tpuv5-lite (Cloud TPU's software versions: "),
    (["launch/tpu.sh", *VM, "--accelerator=v4-8", "--version=v2-alpha-tpuv6e", *TRAIN,
      "--workdir=gs://b/r"], "--version=v2-alpha-tpuv6e does not fit --accelerator=v4-8: v4 runs "
     "tpu-ubuntu2204-base"),
    (["launch/tpu.sh", *VM, "--accelerator=tpu-v4-8", *TRAIN, "--workdir=gs://b/r"],
     "--accelerator=tpu-v4-8: give one of v2-N, v3-N, v4-N, v5litepod-N (v5e), v5p-N, v6e-N"),
    (["launch/tpu.sh", *VM, "--accelerator=v5p-8", "--autocheckpoint", *TRAIN,
      "--workdir=gs://b/r"], "--autocheckpoint: Cloud TPU's Autocheckpoint is for v2, v3, v4 and "
     "v5e, not v5p-8"),
    (["launch/slurm.sbatch", "--workdir=/r"],
     "missing --config=FILE[:ARG] (e.g. sbatch --nodes=2 "),
    (["launch/slurm.sbatch", *TRAIN], "missing --workdir=DIR (e.g. "),
    (["launch/slurm.sbatch", "--jax=rocm", *TRAIN, "--workdir=/r"],
     "--jax=rocm: give --jax=cuda12, --jax=cuda13 or --jax=cpu"),
])
def test_launchers_refuse_bad_input_in_one_line_and_run_nothing(
    cmd, message, checkout, env, tmp_path):
  out = run(["bash", *cmd], env, checkout, check=False)
  assert out.returncode == 2 and out.stdout == ""
  assert len(out.stderr.splitlines()) == 1 and message in out.stderr, out.stderr
  assert out.stderr.startswith(cmd[0] + ": ")
  assert not os.path.exists(tmp_path / "cloud") and not (checkout / ".venv").exists()


@pytest.mark.parametrize("cmd", [["launch/tpu.sh", "--help"], ["launch/tpu.sh", *VM, "-h"],
                                 ["launch/slurm.sbatch", "--help"],
                                 ["launch/slurm.sbatch", "--jax=rocm", "-h"]])
def test_launcher_help_prints_the_usage_with_every_flag_and_runs_nothing(
    cmd, checkout, env, tmp_path):
  out = run(["bash", *cmd], env, checkout)
  assert out.stderr == ""
  if cmd[0] == "launch/tpu.sh":
    assert out.stdout.startswith("launch/tpu.sh: a Cloud TPU VM slice ")
    parser = (checkout / "launch" / "tpu.py").read_text().split("def parse(", 1)[1]
    flags = re.findall(r'"(--[a-z_-]+)"', re.split(r"\n(?=\S)", parser, 1)[0])
  else:  # The file's leading comment, without its #SBATCH lines.
    assert out.stdout.startswith("Multi-node GPUs under SLURM: ")
    assert not re.search(r"^#|--job-name", out.stdout, re.M), out.stdout
    loop = (checkout / cmd[0]).read_text().split("\nfor a in ", 1)[1].split("\ndone\n", 1)[0]
    flags = re.findall(r"^\s+(--[a-z-]+)[=*|)]", loop, re.M)
  assert len(flags) >= 4 and "--dry-run" in flags, flags
  for flag in flags + ["--help"]:
    assert re.search(rf"(^|[\s|,(]){flag}\b", out.stdout, re.M), flag
  assert not os.path.exists(tmp_path / "cloud") and not (checkout / ".venv").exists()


def _creates(env):
  """The create calls the stand-in gcloud received, one line of arguments each."""
  path = os.path.join(env["STANDIN_ROOT"], "creates")
  return open(path).read().splitlines() if os.path.exists(path) else []


def test_tpu_software_version_follows_the_accelerator(checkout, env, tmp_path):
  """Cloud TPU's software versions per generation, by default; --autocheckpoint through gcloud
  alpha. And the stand-in refuses what the service does: the version that used to be sent for
  every type, on a v5e."""
  for accelerator, version in (("v4-32", "tpu-ubuntu2204-base"), ("v2-8", "tpu-ubuntu2204-base"),
                               ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"),
                               ("v6e-8", "v2-alpha-tpuv6e")):
    out = run(["bash", "launch/tpu.sh", *VM, f"--accelerator={accelerator}", *MAIN_ARGS.split(),
               "--dry-run"], env, checkout).stdout
    assert out.startswith(f"gcloud compute tpus tpu-vm create demo --zone=us-central2-b "
                          f"--accelerator-type={accelerator} --version={version}\n"), out
  out = run(["bash", "launch/tpu.sh", *VM, "--accelerator=v5litepod-16", "--queued",
             "--autocheckpoint", *MAIN_ARGS.split(), "--dry-run"], env, checkout).stdout
  assert out.startswith(
      "gcloud alpha compute tpus queued-resources create demo --node-id=demo --zone=us-central2-b "
      "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite "
      "--autocheckpoint-enabled\n"), out
  out = run(["bash", "launch/tpu.sh", *VM, "--accelerator=v4-8", "--autocheckpoint",
             *MAIN_ARGS.split(), "--dry-run"], env, checkout).stdout
  assert out.startswith("gcloud alpha compute tpus tpu-vm create demo --zone=us-central2-b "
                        "--accelerator-type=v4-8 --version=tpu-ubuntu2204-base "
                        "--autocheckpoint-enabled\n"), out
  assert not os.path.exists(tmp_path / "cloud")
  gcloud = ["gcloud", "compute", "tpus", "tpu-vm", "create", "x", "--zone=z"]
  refused = run([*gcloud, "--accelerator-type=v5litepod-16", "--version=tpu-ubuntu2204-base"],
                env, checkout, check=False)
  assert refused.returncode == 1 and "INVALID_ARGUMENT: runtime version" in refused.stderr
  refused = run([*gcloud, "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base",
                 "--autocheckpoint-enabled"], env, checkout, check=False)
  assert "unrecognized arguments: --autocheckpoint-enabled" in refused.stderr  # Alpha only.
  assert _creates(env) == []


@pytest.mark.parametrize("change,message", [
    (dict(STANDIN_GCLOUD_ACCOUNT=""), "gcloud has no account: run gcloud auth login"),
    (dict(STANDIN_GCLOUD_PROJECT=""), "no project: give --project=P or run gcloud config set "
     "project P"),
    # 2 hosts, and no ssh-agent: gcloud's scp --worker=all would refuse once the slice bills.
    (dict(SSH_AUTH_SOCK=""), "--accelerator=v4-16 has 2 hosts and gcloud's --worker=all needs "),
])
def test_tpu_launch_checks_gcloud_before_creating_anything(change, message, checkout, env):
  env = dict(env, **change)
  out = run(["bash", "launch/tpu.sh", *VM, "--accelerator=v4-16", *TRAIN, "--workdir=/w"], env,
            checkout, check=False)
  assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr
  assert len(out.stderr.splitlines()) == 1 and message in out.stderr, out.stderr
  assert _creates(env) == []


def _append(path, text="# changed\n"):
  with open(path, "a") as f:
    f.write(text)


def _staged_new_config(checkout):
  _append(checkout / "configs/new.py")
  subprocess.run(["git", "add", "configs/new.py"], cwd=checkout, check=True)


# (what changes in the checkout, the launch's --config, what the refusal names). Workers get
# `git archive HEAD`: each would run something other than this tree, or miss a file.
TREE_CHANGES = {
    "untracked_config": (lambda c: shutil.copy(c / "configs/demo.py", c / "configs/my_sweep.py"),
                         "configs/my_sweep.py:tiny", "from configs/my_sweep.py (untracked): "),
    "staged_config": (_staged_new_config, "configs/new.py",
                      "from configs/new.py (added, not committed): "),
    "missing_config": (lambda c: None, "configs/nope.py",
                       "--config=configs/nope.py: there is no configs/nope.py in "),
    "modified_config": (lambda c: _append(c / "configs/demo.py"), "configs/demo.py:tiny",
                        "from configs/demo.py (modified): "),
    "modified_code": (lambda c: _append(c / "resizer_jax/train.py"), "configs/demo.py:tiny",
                      "from resizer_jax/train.py (modified): "),
    "deleted_file": (lambda c: os.remove(c / "resizer_jax/summary.py"), "configs/demo.py:tiny",
                     "from resizer_jax/summary.py (deleted): "),
    "untracked_module": (lambda c: _append(c / "resizer_jax/extra.py"), "configs/demo.py:tiny",
                         "from resizer_jax/extra.py (untracked): "),
    "many": (lambda c: [_append(c / f"configs/new_{i}.py") for i in range(7)],
             "configs/demo.py:tiny", "from configs/new_0.py (untracked), configs/new_1.py "
             "(untracked), configs/new_2.py (untracked), configs/new_3.py (untracked), "
             "configs/new_4.py (untracked) and 2 more: commit them"),
    "config_outside": (lambda c: _append(c.parent / "outside.py"), "../outside.py",
                       "--config=../outside.py: ../outside.py is outside "),
}


@pytest.mark.parametrize("dry", [False, True], ids=["launch", "dry_run"])
@pytest.mark.parametrize("change", TREE_CHANGES)
def test_tpu_launch_refuses_a_tree_the_workers_would_not_get(change, dry, checkout,
                                                             fake_worker_python):
  """Refused in one line naming the files, before anything is created, in a dry run too (one
  that passes means the workers get these files)."""
  env = fake_worker_python  # Were it not refused, the launch would take seconds, not minutes.
  make, config, says = TREE_CHANGES[change]
  make(checkout)
  out = run(["bash", "launch/tpu.sh", *VM, "--accelerator=v4-8", "--jax=cpu", f"--config={config}",
             "--workdir=/w", *(["--dry-run"] if dry else [])], env, checkout, check=False,
            timeout=120)
  assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr
  assert len(out.stderr.splitlines()) == 1 and says in out.stderr, out.stderr
  assert out.stderr.startswith("launch/tpu.sh: ")
  if change not in ("config_outside", "missing_config"):
    assert "the workers get only `git archive HEAD`, which lacks or differs " in out.stderr
  assert _creates(env) == []


@pytest.mark.parametrize("dry", [False, True], ids=["launch", "dry_run"])
def test_tpu_launch_checks_each_runs_config_before_anything_is_created(dry, checkout, env):
  """The issue's dry run that passed: a config argument typo, and an unknown backbone, in the
  second step of a chain; the check runs resizer_jax.main --plan on the slice's 16 devices and 4
  hosts (v4-32). A valid chain passes the same check."""
  env = dict(env, RESIZER_JAX_TPU_CHECK_CONFIG="1", RESIZER_JAX_PYTHON=sys.executable)
  launch = lambda second: run(
      ["bash", "launch/tpu.sh", *VM, "--accelerator=v4-32", *(["--dry-run"] if dry else []),
       "--step=--config=configs/imagenet.py:resizer=bilinear --workdir=/w/a",
       f"--step=--config=configs/imagenet.py:{second} --workdir=/w/b"], env, checkout,
      check=False, timeout=300)
  for second, says in [("inptu=448", "unknown config argument 'inptu' in 'inptu=448' (did you "
                                     "mean 'input'?)"),
                       ("backbone=resnet5", "unknown backbone 'resnet5'; valid: ")]:
    out = launch(second)
    assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr
    assert out.stderr.startswith("launch/tpu.sh: --step #2: error: --config=configs/imagenet.py"
                                 if second.startswith("inptu") else
                                 "launch/tpu.sh: --step #2: error: ") and says in out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr
  assert _creates(env) == []
  if dry:
    out = launch("input=320")
    assert out.returncode == 0, out.stderr


def test_tpu_launch_takes_untracked_files_elsewhere_and_sends_an_absolute_config_relative(
    checkout, env):
  """Notes and runs/ are no part of a run; a config given by its absolute path inside the
  repository reaches the workers as the path in their copy of it."""
  os.makedirs(checkout / "runs")
  for name in ("notes.txt", "runs/x.log"):
    _append(checkout / name)
  out = run(["bash", "launch/tpu.sh", *VM, "--accelerator=v4-8",
             f"--config={checkout}/configs/demo.py:tiny", "--workdir=/w", "--dry-run"], env,
            checkout).stdout
  assert 'step_1=("$py" -m resizer_jax.main --distributed=on --config=configs/demo.py:tiny ' \
      "--workdir=/w)\n" in out, out


@pytest.mark.parametrize("end,says", [
    ("FAILED", "not granted (refused, or --valid-until-duration ran out); left: the request, no "
     "node; delete it with launch/tpu.sh --name=demo --zone=us-central2-b --queued --delete, "
     "then launch again"),
    ("SUSPENDED", "its node was taken (preemption or maintenance); left: the request, no node; "),
    ("SUSPENDING", "its node is being taken (preemption or maintenance); left: the request; "),
    ("DELETING", "being deleted; nothing is left once it is gone"),
])
def test_tpu_queued_wait_ends_in_one_line_on_states_that_grant_nothing(end, says, checkout, env):
  """ACCEPTED, WAITING_FOR_RESOURCES, then an end other than ACTIVE; one failed describe on the way
  (a network blip) is tried again, not fatal."""
  # Blips: the describe that asks whether the request exists, and one in the wait.
  env = dict(env, STANDIN_QUEUED_END=end, STANDIN_DESCRIBE_FAIL="1,3")
  out = run(["bash", "launch/tpu.sh", *VM, "--queued", "--accelerator=v4-8", *TRAIN,
             "--workdir=/w"], env, checkout, check=False, timeout=60)
  lines = out.stderr.splitlines()
  assert out.returncode == 1, out.stderr
  assert "describe failed (ERROR: (gcloud stand-in) UNAVAILABLE" in lines[0], lines
  assert "launch/tpu.sh: queued resource demo: ACCEPTED; waiting" in lines
  assert sum("describe failed" in l for l in lines) == 2, lines
  assert lines[-1] == f"launch/tpu.sh: queued resource demo: {end}: " + lines[-1].split(
      f"{end}: ", 1)[1] and says in lines[-1], lines
  assert len(_creates(env)) == 1 and os.path.exists(os.path.join(env["STANDIN_ROOT"], "queued",
                                                                 "demo"))


def test_tpu_queued_request_that_exists_is_waited_on_not_created_again(checkout, env):
  env = dict(env, STANDIN_QUEUED_END="FAILED")
  run(["gcloud", "compute", "tpus", "queued-resources", "create", "demo", "--node-id=demo",
       "--zone=us-central2-b", "--accelerator-type=v4-8", "--runtime-version=tpu-ubuntu2204-base"],
      env, checkout)
  out = run(["bash", "launch/tpu.sh", *VM, "--queued", "--accelerator=v4-8", *TRAIN,
             "--workdir=/w"], env, checkout, check=False, timeout=60)
  assert "launch/tpu.sh: queued resource demo exists (ACCEPTED): waiting on it, not creating " \
      "another" in out.stderr, out.stderr
  assert out.stderr.splitlines()[-1].startswith("launch/tpu.sh: queued resource demo: FAILED: ")
  assert len(_creates(env)) == 1  # The one above.


def test_tpu_ctrl_c_in_the_queued_wait_deletes_the_request(checkout, env):
  env = dict(env, STANDIN_QUEUED_WAIT_S="1000")
  waiting = subprocess.Popen(["bash", "launch/tpu.sh", *VM, "--queued", "--accelerator=v4-8",
                              *TRAIN, "--workdir=/w"], cwd=checkout, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
  try:
    assert "waiting" in waiting.stderr.readline()
    os.killpg(waiting.pid, signal.SIGINT)  # As a terminal sends it to its foreground processes.
    _, err = waiting.communicate(timeout=60)
  finally:
    waiting.kill()
  assert waiting.returncode == 130, err
  assert "interrupted while waiting: deleting queued resource demo" in err, err
  assert not os.path.exists(os.path.join(env["STANDIN_ROOT"], "queued", "demo"))


def test_tpu_delete_takes_the_queued_resource_with_its_node(checkout, env):
  """--delete without --queued, on a node a queued resource holds: both go (deleting the node
  alone leaves the request SUSPENDED)."""
  gcloud = ["gcloud", "compute", "tpus", "queued-resources"]
  run([*gcloud, "create", "demo", "--node-id=demo", "--zone=us-central2-b",
       "--accelerator-type=v4-8", "--runtime-version=tpu-ubuntu2204-base"], env, checkout)
  for _ in range(3):  # ACCEPTED, WAITING_FOR_RESOURCES, then granted: ACTIVE with its node.
    state = run([*gcloud, "describe", "demo", "--zone=us-central2-b",
                 "--format=value(state.state)"], env, checkout).stdout
  assert state == "ACTIVE\n" and os.path.isdir(os.path.join(env["STANDIN_ROOT"], "tpu", "demo"))
  run(["bash", "launch/tpu.sh", *VM, "--delete"], env, checkout)
  for kind in ("queued", "tpu"):
    assert not os.path.exists(os.path.join(env["STANDIN_ROOT"], kind, "demo")), kind


def _fake_python(tmp_path, env, trainer):
  """env with python3 on the workers a stand-in for Python and uv: `-m uv venv DIR` makes
  DIR/bin/python the bash script trainer. Anything else goes to this Python."""
  fake = tmp_path / "fake_python"
  os.makedirs(fake)
  (fake / "python3").write_text(
      "#!/usr/bin/env bash\n"
      f"[[ \"$* \" == '-m uv '* ]] || exec {sys.executable} \"$@\"  # gcloud, the launcher.\n"
      "if [[ $3 == venv ]]; then d=${@: -1}; mkdir -p \"$d/bin\"\n"
      f"  cat > \"$d/bin/python\" <<'TRAINER'\n{trainer}TRAINER\n"
      "  chmod +x \"$d/bin/python\"; fi\n")
  os.chmod(fake / "python3", 0o755)
  return dict(env, PATH=f"{fake}:{env['PATH']}")


@pytest.fixture
def fake_worker_python(tmp_path, env):
  """python3 on the workers as a stand-in for Python, uv and the trainer, so that a launch runs in
  seconds: the venv's python is a trainer that writes <workdir>/result.json and exits 0, or exits
  with --config.exit_code."""
  trainer = ("#!/usr/bin/env bash\n"
             "for a; do case $a in --workdir=*) wd=${a#*=} ;; --config.exit_code=*) rc=${a#*=} ;;"
             " esac; done\n"
             "mkdir -p \"$wd\" && echo \"trained $wd\" && sleep 0.5\n"
             "[[ ${rc:-0} != 0 ]] || echo '{}' > \"$wd/result.json\"\nexit ${rc:-0}\n")
  return _fake_python(tmp_path, env, trainer)


def test_tpu_delete_when_done_deletes_a_finished_slice_and_every_other_exit_says_it_is_up(
    checkout, fake_worker_python, tmp_path):
  env = fake_worker_python
  tpu = ["bash", "launch/tpu.sh", *VM, "--accelerator=v4-8", "--jax=cpu", *TRAIN]
  vm = tmp_path / "cloud" / "tpu" / "demo"
  up = "launch/tpu.sh: the slice demo is still up and billed until deleted: launch/tpu.sh " \
      "--name=demo --zone=us-central2-b --delete"
  # The run fails: the slice stays, and the launcher says so and how to delete it.
  out = run([*tpu, f"--workdir={tmp_path / 'bad'}", "--config.exit_code=3", "--delete-when-done"],
            env, checkout, check=False, timeout=120)
  assert out.returncode == 3 and os.path.isdir(vm), out.stdout + out.stderr
  assert out.stderr.splitlines()[-1] == up, out.stderr
  out = run([*tpu, "--reuse", f"--workdir={tmp_path / 'detached'}", "--detach"], env, checkout,
            timeout=120)
  assert out.stderr.splitlines()[-1] == up, out.stderr
  run([*tpu, "--delete"], env, checkout)
  # Finished, with --delete-when-done (and --detach: it waits without printing the logs): deleted.
  out = run([*tpu, f"--workdir={tmp_path / 'good'}", "--delete-when-done", "--detach"], env,
            checkout, timeout=120)
  assert (tmp_path / "good" / "result.json").exists()
  assert "every worker's run finished: deleting demo (--delete-when-done)" in out.stderr, out.stderr
  assert not vm.exists() and up not in out.stderr


def _wait_for(what, condition, timeout_s=60):
  deadline = time.time() + timeout_s
  while not condition():
    assert time.time() < deadline, f"not within {timeout_s} s: {what}"
    time.sleep(0.1)


def test_tpu_worker_copies_its_log_to_a_gs_workdir_while_the_run_goes_on(checkout, env, tmp_path):
  """Logs that survive the VM: with a gs:// workdir each worker copies its log there every
  LOG_COPY_EVERY_S (here 1 s) while the run goes on, not only when it ends. The trainer stands in
  for one writing gs:// (a bucket is $STANDIN_ROOT/gs/BUCKET for it as for the stand-in gcloud)
  and logs a line, then waits for the test's go before each next one."""
  gs = tmp_path / "cloud" / "gs"
  trainer = ("#!/usr/bin/env bash\n"
             "at() { echo \"$STANDIN_ROOT/gs/${1#gs://}\"; }\n"
             "if [[ $1 == -c ]]; then [[ -e $(at \"$3\") ]]; exit; fi  # Is result.json there?\n"
             "for a; do case $a in --workdir=*) wd=$(at \"${a#*=}\") ;; esac; done\n"
             "go() { for _ in $(seq 600); do [[ -e $STANDIN_ROOT/go-$1 ]] && return; sleep 0.1; "
             "done; exit 1; }\n"
             "echo 'trainer: step 1'; go 1; echo 'trainer: step 2'; go 2\n"
             "mkdir -p \"$wd\" && echo '{}' > \"$wd/result.json\" && echo 'trainer: done'\n")
  env = dict(_fake_python(tmp_path, env, trainer), RESIZER_JAX_TPU_LOG_COPY_EVERY_S="1")
  tpu = ["bash", "launch/tpu.sh", *VM]
  copy = gs / "bucket" / "runs" / "r" / "logs" / "worker-0.log"
  job = tmp_path / "cloud" / "tpu" / "demo" / "worker-0" / "resizer_jax_run"
  logged = lambda line: copy.exists() and line in copy.read_text().splitlines()
  try:
    run([*tpu, "--accelerator=v4-8", "--jax=cpu", *TRAIN, "--workdir=gs://bucket/runs/r",
         "--detach"], env, checkout, timeout=120)
    # The trainer waits after each line: the copies that show them were made while it ran.
    _wait_for("step 1 in the copy", lambda: logged("trainer: step 1"))
    assert not (job / "exit_code").exists() and not logged("trainer: step 2")
    (tmp_path / "cloud" / "go-1").touch()
    _wait_for("step 2 in the copy", lambda: logged("trainer: step 2"))  # Again, not just once.
    assert not (job / "exit_code").exists() and not logged("trainer: done")
    (tmp_path / "cloud" / "go-2").touch()
    _wait_for("the job's end", lambda: (job / "exit_code").exists())
    assert (job / "exit_code").read_text() == "0\n" and (job / "finished").exists()
    assert logged("trainer: done")  # Copied at the end, the rest of the log with it.
    assert copy.read_text() == (job / "log").read_text()
  finally:
    for go in ("go-1", "go-2"):
      (tmp_path / "cloud" / go).touch()
    run([*tpu, "--delete"], env, checkout)


def test_tpu_launcher_runs_from_a_posix_sh_and_python_3_8(checkout, env):
  """The entry point is POSIX sh (dash has nothing of bash; macOS's bash 3.2 stopped the old one
  on empty arrays under set -u), and the control plane keeps to Python 3.8 (macOS: 3.9)."""
  pythons = [p for p in (shutil.which("python3.8"),
                         *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8"))))
             if p and subprocess.run([p, "-c", ""], capture_output=True).returncode == 0]
  cmd = [*VM, "--accelerator=v4-8", "--queued", "--step=--config=configs/demo.py --workdir=/a",
         "--dry-run"]
  dry = lambda shell, env: re.sub(r"resizer_jax-demo-\w+\.tar\.gz", "ARCHIVE", run(
      [shell, "launch/tpu.sh", *cmd], env, checkout).stdout)
  expected = dry("bash", env)
  assert expected.count("ARCHIVE") == 2
  for shell in ("dash", "sh"):
    if shutil.which(shell):
      assert dry(shell, env) == expected
  if not pythons:
    pytest.skip("no Python 3.8 here to run the control plane with")
  assert dry("dash" if shutil.which("dash") else "sh", dict(env, PYTHON=pythons[0])) == expected
