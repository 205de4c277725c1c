"""Sweeps: many runs of one config, staged (a fine-tune starts from its baseline), then aggregated.

  python -m resizer_jax.sweep --config=configs/demo.py --workdir=runs/demo_sweep   # sweep() of the file
  python -m resizer_jax.sweep --config=configs/demo.py --workdir=runs/g --grid=target=8,16,32 \
      --grid=resizer=bilinear,learned --grid=seed=0,1 [--config.num_epochs=2]      # no file edited
  python -m resizer_jax.sweep --config=configs/imagenet.py --workdir=gs://B/t1 --plan \
      --devices=16 --processes=4 --throughput=docs/throughput/h200.jsonl          # the cost first
  python -m resizer_jax.sweep --config=configs/imagenet.py --workdir=gs://B/t1 --launch=tpu \
      --launch_args=--zone=us-central2-b,--accelerator=v4-32 [--dry_run]          # then --collect
  rows = resizer_jax.sweep.run("configs/demo.py", "runs/g", grid={"target": [8, 16], "seed": [0, 1]})

A config file may define, next to `get_config(arg)`:

  def sweep(add, arg=None):
    base = add(backbone="resnet50", resizer="bilinear", input=224)       # one run: get_config(...)
    for seed in (0, 1, 2):
      add(backbone="resnet50", resizer="learned", finetune=True, seed=seed, init_from=base)

Each keyword of `add` is a config *argument* (the `:k=v,...` of --config) or, spelled
"config.a.b", a config field (as --config.a.b=v). `add` returns the point; `init_from=point` (or
its name) starts the new point from that point's final checkpoint (backbone and head; the resizer
starts fresh, as config.init_from does). A grid (`grid=` here, `--grid` on the command line) is the
cartesian product of its axes and replaces the file's sweep(). `--config.x=v` applies to every point.

Each point trains in `DIR/<name>`. Its state: finished (it wrote result.json), failed or nonfinite
(`failed.json` says why; a rerun tries it again), blocked (what it starts from failed), running or
unfinished. A rerun never retrains a finished point and resumes an unfinished one from its
checkpoint. Locally a point starts only after what it starts from has finished (--workers=N train N
at a time); --launch=slurm submits each point with `afterok` on its source's job; --launch=tpu runs
each chain (a point and all that start from it) in order on one slice (docs/launch.md).
The results (resizer_jax/results.py): DIR/results.csv (a row per point, with its state),
results.md and results.png.
"""
import contextlib
import dataclasses
import itertools
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags
from etils import epath
from ml_collections import config_flags

from resizer_jax import cli
from resizer_jax import config_args
from resizer_jax import results as results_lib

COMPILE_CACHE = "compile_cache"  # In the sweep's directory: compiled steps that points share.
# A size limit is what turns on JAX's file lock around its cache entries: without it, a --workers
# process can read an entry another is still writing, and abort on the half executable.
COMPILE_CACHE_MAX_BYTES = 1 << 40
LOCK = "sweep.lock"  # In a point's directory while a process trains it: "<host> <pid>".
FAILED = "failed.json"  # In a point's directory when its training raised: {"kind", "error"}.
RESULT = "result.json"  # Written by the trainer last: the point is finished.
STATES = ("finished", "failed", "nonfinite", "blocked", "running", "unfinished")


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of the sweep; `add` returns it, so that later points can start from it."""
  name: str  # Its directory under the sweep's workdir.
  overrides: dict  # As given to add (config arguments and "config.x" fields), for the tables.
  arg: str  # The config file's argument: the sweep's base argument and this point's.
  fields: tuple  # ((dotted config field, value), ...): the sweep's --config.x=v, then the point's.
  init_from: str | None  # The name of the point it starts from.
  stage: int  # 0: starts from nothing in the sweep; n: from a point of stage n - 1.
  sweep_id: int = dataclasses.field(default=0, repr=False, compare=False)


@dataclasses.dataclass
class Sweep:
  path: str  # The config file.
  arg: str  # Its base argument (what follows the colon).
  points: list  # In an order where a point comes after the one it starts from.
  paper: dict  # The config's PAPER (reported numbers for results.py), or {}.
  grid: dict | None
  fields: dict  # --config.x=v for every point.

  @property
  def config(self) -> str:
    return f"{self.path}:{self.arg}" if self.arg else self.path


def _text(value) -> str:
  return str(value).lower() if isinstance(value, bool) else str(value)


def parse_grid(items) -> dict:
  """--grid=KEY=V1,V2,... items as {KEY: [V1, V2, ...]}."""
  grid = {}
  for item in items:
    key, eq, values = item.partition("=")
    if not eq or not key or not values:
      raise ValueError(f"--grid={item!r}: give KEY=V1,V2,... (e.g. --grid=seed=0,1,2)")
    if key in grid:
      raise ValueError(f"--grid names {key!r} twice; give its values once: --grid={key}=V1,V2")
    grid[key] = [config_args.parse_value(v) for v in values.split(",")]
  return grid


def grid(add, **axes):
  """add() every combination of the given values: grid(add, target=[16, 32], seed=[0, 1])."""
  names = list(axes)
  for values in itertools.product(*(axes[n] for n in names)):
    add(**dict(zip(names, values)))


_next_sweep_id = itertools.count(1)


def load(config: str, grid_axes: dict | None = None, fields: dict | None = None) -> Sweep:
  """The sweep of `config` ("path[:arg]"): its file's sweep(add, arg), or the cartesian product
  `grid_axes` of config arguments and "config.x" fields; `fields` ({"a.b": v}) on every point.
  Every point's config is built and checked here: a bad key, value or dependency is one ValueError
  naming the valid choices, before anything runs."""
  path, _, arg = config.partition(":")
  module = config_args.load_module(path)
  base = dict(kv.partition("=")[::2] for kv in filter(None, arg.split(",")))
  sweep_id, found = next(_next_sweep_id), []

  def add(init_from=None, **overrides):
    if isinstance(init_from, Point):
      if init_from.sweep_id != sweep_id:
        raise ValueError(f"init_from={init_from.name!r} is a point of another sweep; pass a point "
                         "that this sweep's add() returned")
      init_from = init_from.name
    args = {k: _text(v) for k, v in overrides.items() if not k.startswith("config.")}
    point_fields = tuple((k[len("config."):], v) for k, v in overrides.items()
                         if k.startswith("config."))
    full = ",".join(k if v == "" else f"{k}={v}" for k, v in {**base, **args}.items())
    if not overrides:
      raise ValueError("add() needs a config argument or field: its values name the point's directory")
    # A directory name: a path among the values must not nest it ("/" becomes "_").
    name = ",".join(f"{k}={_text(v)}" for k, v in overrides.items()).replace("/", "_")
    point = Point(name=name,
                  overrides=dict(overrides), arg=full,
                  fields=tuple((fields or {}).items()) + point_fields, init_from=init_from,
                  stage=0, sweep_id=sweep_id)
    found.append(point)
    return point

  if grid_axes:
    for key, values in grid_axes.items():
      if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"grid {key!r}: give a non-empty list of values, e.g. {key}=[0, 1]")
      if any("," in _text(v) for v in values):
        raise ValueError(f"grid {key!r}: a value may not hold a comma (commas separate them)")
    # As the command line reads them, so that every worker process names the points alike.
    grid_axes = {k: [config_args.parse_value(_text(v)) for v in values]
                 for k, values in grid_axes.items()}
    grid(add, **grid_axes)
  elif hasattr(module, "sweep"):
    module.sweep(add, arg or None)
  else:
    raise ValueError(f"{path} defines no sweep(add, arg=None); give the points with --grid=KEY=V1,"
                     "V2 (e.g. --grid=seed=0,1,2), or grid={...} from Python")
  if not found:
    raise ValueError(f"{config}: the sweep has no point")
  sweep = Sweep(path=path, arg=arg, points=_staged(found, config), paper=getattr(module, "PAPER", {}),
                grid=grid_axes, fields=dict(fields or {}))
  for point in sweep.points:
    _check(sweep, point, module)
  return sweep


def _staged(found: list, config: str) -> list:
  """The points in add order, each moved after the point it starts from, with its stage."""
  by_name = {}
  for p in found:
    if p.name in by_name:
      raise ValueError(f"{config}: the sweep adds the point {p.name!r} twice")
    by_name[p.name] = p
  for p in found:
    if p.init_from is not None and p.init_from not in by_name:
      raise ValueError(f"point {p.name!r} starts from {p.init_from!r}, which the sweep does not "
                       f"add; valid: {', '.join(by_name)}")
  stages, ordered = {}, []

  def stage(p, path=()):
    if p.name in path:
      raise ValueError(f"{config}: the points start from each other in a cycle: "
                       f"{' -> '.join([*path[path.index(p.name):], p.name])}")
    if p.name not in stages:
      stages[p.name] = 0 if p.init_from is None else 1 + stage(by_name[p.init_from], (*path, p.name))
    return stages[p.name]

  for p in found:
    stage(p)
  for s in range(max(stages.values()) + 1):  # Stage by stage, in add order within each.
    ordered += [dataclasses.replace(p, stage=s) for p in found if stages[p.name] == s]
  return ordered


def point_config(sweep: Sweep, point: Point, workdir: str | None = None, module=None):
  """The config `python -m resizer_jax.main` trains for `point` (init_from inside `workdir`)."""
  module = module or config_args.load_module(sweep.path)
  config = module.get_config(point.arg or None)
  for key, value in point.fields:
    config_args.override(config, key, value)
  if point.init_from is not None and workdir is not None:
    config.init_from = os.path.join(workdir, point.init_from)
  return config


def _check(sweep: Sweep, point: Point, module, **hardware):
  """resizer_jax/preflight.py's check of the point's config (on `hardware`, if given)."""
  from resizer_jax import preflight  # pylint: disable=g-import-not-at-top
  try:
    return preflight.check(point_config(sweep, point, module=module), **hardware)
  except (ValueError, FileNotFoundError) as e:
    raise type(e)(f"point {point.name!r}: {e.args[0] if e.args else e}") from None


# ----------------------------------------------------------------------------------------------
# A point's state, and training the points on this machine.
# ----------------------------------------------------------------------------------------------
def _read_json(path: epath.Path):
  return json.loads(path.read_text()) if path.exists() else None


def state(workdir: str, point: Point, states: dict | None = None) -> str:
  """One of STATES for `point` of a sweep in `workdir` (`states`: those of earlier points)."""
  point_dir = epath.Path(workdir) / point.name
  if (point_dir / RESULT).exists():
    return "finished"
  failed = _read_json(point_dir / FAILED)
  if failed:
    return "nonfinite" if failed.get("kind") == "NonFiniteError" else "failed"
  source = point.init_from and (states or {}).get(point.init_from)
  if source in ("failed", "nonfinite", "blocked"):
    return "blocked"
  if "://" not in workdir and _holder(point_dir / LOCK) is not None:
    return "running"
  return "unfinished"


def _holder(lock: epath.Path) -> str | None:
  """"<host> <pid>" of the live process whose lock this is (one of another host counts as live)."""
  try:
    text = lock.read_text()
  except FileNotFoundError:  # Released meanwhile.
    return None
  host, _, pid = text.partition(" ")
  if host != socket.gethostname() or (pid.isdigit() and _alive(int(pid))):
    return text
  return None


def states(sweep: Sweep, workdir: str) -> dict:
  found = {}
  for point in sweep.points:  # Sources come first.
    found[point.name] = state(workdir, point, found)
  return found


def rows(sweep: Sweep, workdir: str) -> list[dict]:
  """A row per point: its overrides, stage, source, state, and the final metrics once finished."""
  out = []
  for point, point_state in zip(sweep.points, states(sweep, workdir).values()):
    row = {"point": point.name, **point.overrides, "stage": point.stage,
           "from": point.init_from or "", "state": point_state}
    if point_state == "finished":
      row.update(_read_json(epath.Path(workdir) / point.name / RESULT))
    elif point_state in ("failed", "nonfinite"):
      row["error"] = _read_json(epath.Path(workdir) / point.name / FAILED)["error"]
    out.append(row)
  return out


def _claim(point_dir: str) -> bool:
  """Whether this process may train the point: it takes the point's lock, or the lock's holder is a
  process of this host that is gone (killed), whose lock it takes over."""
  lock, me = os.path.join(point_dir, LOCK), f"{socket.gethostname()} {os.getpid()}"
  for _ in range(2):
    try:
      fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      if _holder(epath.Path(lock)) is None:  # Its process of this host is gone (or it was released).
        with contextlib.suppress(FileNotFoundError):
          os.remove(lock)
        continue
      return False
    with os.fdopen(fd, "w") as f:
      f.write(me)
    return True
  return False


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return True


def _train_point(sweep: Sweep, point: Point, workdir: str, module):
  """Trains one point; an exception is recorded in its failed.json (the points after it are
  blocked) and does not stop the sweep. Returns whether it finished."""
  from resizer_jax import train  # pylint: disable=g-import-not-at-top  # Heavy; not for --dry-run.
  point_dir = os.path.join(workdir, point.name)
  print(f"sweep: point {point.name} (stage {point.stage}"
        + (f", from {point.init_from}" if point.init_from else "") + ")", flush=True)
  try:
    train.train_and_evaluate(point_config(sweep, point, workdir, module), point_dir)
  except Exception as e:  # pylint: disable=broad-except  # Recorded; the sweep goes on.
    error = " ".join(str(e).split()) or type(e).__name__
    (epath.Path(point_dir) / FAILED).write_text(json.dumps({"kind": type(e).__name__, "error": error}))
    print(f"sweep: point {point.name} failed: {error}", flush=True)
  return (epath.Path(point_dir) / RESULT).exists()


def _train_points(sweep: Sweep, workdir: str) -> bool:
  """Trains each point that is neither finished, failed nor trained by another process, each once
  what it starts from has finished; False once preempted."""
  local = "://" not in workdir  # Object stores have no exclusive create: one process only there.
  module = config_args.load_module(sweep.path)
  said_waiting = False
  with _compile_cache(os.path.join(workdir, COMPILE_CACHE)):
    while True:
      now, trained, waiting = {}, False, False
      for point in sweep.points:
        now[point.name] = point_state = state(workdir, point, now)
        if point_state in ("finished", "failed", "nonfinite", "blocked"):
          continue
        if point.init_from and now[point.init_from] != "finished":
          waiting = True  # Its source is trained by another process (or was just preempted).
          continue
        if point_state == "running":
          continue
        point_dir = os.path.join(workdir, point.name)
        epath.Path(point_dir).mkdir(parents=True, exist_ok=True)
        if local and not _claim(point_dir):
          continue
        try:
          done = _train_point(sweep, point, workdir, module)
        finally:
          if local:
            os.remove(os.path.join(point_dir, LOCK))
        now[point.name] = state(workdir, point, now)
        trained = True
        if not done and now[point.name] == "unfinished":  # Preempted (SIGTERM): rerun continues.
          print(f"sweep: stopped at point {point.name}; rerun to continue", flush=True)
          return False
      if not waiting:
        return True
      if not trained:
        if not said_waiting:
          print("sweep: waiting for points that other processes train: " + "; ".join(
              f"{p.name} ({_holder(epath.Path(workdir) / p.name / LOCK)})" for p in sweep.points
              if now[p.name] == "running"), flush=True)
          said_waiting = True
        time.sleep(2)


@contextlib.contextmanager
def _compile_cache(path):
  """JAX's persistent compilation cache in `path` meanwhile, unless the user set one
  ($JAX_COMPILATION_CACHE_DIR). Points that differ in seed only compile the same programs: later
  ones load them (~13 s of a demo point on a CPU) and run the same executables."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  if jax.config.jax_compilation_cache_dir:
    yield
    return
  compilation_cache.set_cache_dir(path)
  size = jax.config.jax_compilation_cache_max_size
  jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)
  compilation_cache.reset_cache()  # JAX opens its cache once per process: this one from here on.
  try:
    yield
  finally:
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_compilation_cache_max_size", size)
    compilation_cache.reset_cache()


def _sweep_flags(sweep: Sweep) -> list[str]:
  """The command-line flags that give `sweep` to another sweep process."""
  out = [f"--config={sweep.config}"]
  out += [f"--grid={k}={','.join(map(_text, v))}" for k, v in (sweep.grid or {}).items()]
  out += [f"--config.{k}={_text(v)}" for k, v in sweep.fields.items()]
  return out


def run(config: str, workdir: str, workers: int = 1, grid: dict | None = None,
        fields: dict | None = None) -> list[dict]:
  """Trains every point (see `load` for `grid` and `fields`) that is not finished, in `workers`
  processes on this machine, each point after the one it starts from; returns a row per point
  (results.rows) and writes the results. More sweep processes (on other hosts sharing `workdir`)
  may join."""
  if workers < 1:
    raise ValueError(f"workers={workers}: at least 1 process must train the points")
  sweep = load(config, grid, fields)
  if workers > 1 and "://" in workdir:
    raise ValueError(f"workers={workers} on {workdir}: object stores have no exclusive create to "
                     "share points by; use workers=1 there, or several hosts with a local workdir")
  for point in sweep.points:  # A rerun tries the failed points again (each process once).
    (epath.Path(workdir) / point.name / FAILED).unlink(missing_ok=True)
  others = [subprocess.Popen([sys.executable, "-m", "resizer_jax.sweep", *_sweep_flags(sweep),
                              f"--workdir={workdir}", "--only_train"]) for _ in range(workers - 1)]
  try:
    _train_points(sweep, workdir)
  finally:  # The other workers finish their points, also when this one failed.
    for p in others:
      p.wait()
  return collect(sweep, workdir)


def collect(sweep: Sweep | str, workdir: str, metric: str | None = None) -> list[dict]:
  """Writes the results of the points in `workdir` (e.g. of a launched sweep) for `metric`
  (default: the headline one); returns a row per point."""
  sweep = load(sweep) if isinstance(sweep, str) else sweep
  found = rows(sweep, workdir)
  if any(r["state"] == "finished" for r in found):
    results_lib.write(found, workdir, metric, paper=sweep.paper)
  return found


# ----------------------------------------------------------------------------------------------
# Launchers: the points handed to launch/slurm.sbatch or launch/tpu.sh.
# ----------------------------------------------------------------------------------------------
LAUNCHERS = ("local", "slurm", "tpu")


def main_args(sweep: Sweep, point: Point, workdir: str) -> list[str]:
  """resizer_jax.main's arguments that train `point` in `workdir`/<name>."""
  args = [f"--config={sweep.path}:{point.arg}" if point.arg else f"--config={sweep.path}"]
  args += [f"--config.{k}={_text(v)}" for k, v in point.fields]
  if point.init_from:
    args.append(f"--config.init_from={os.path.join(workdir, point.init_from)}")
  return args + [f"--workdir={os.path.join(workdir, point.name)}"]


def chains(sweep: Sweep) -> list[list[Point]]:
  """The points grouped by the stage-0 point they descend from, each group in stage order."""
  root = {}
  for p in sweep.points:
    root[p.name] = root[p.init_from] if p.init_from else p.name
  groups = {}
  for p in sweep.points:
    groups.setdefault(root[p.name], []).append(p)
  return list(groups.values())


def tpu_name(workdir: str, i: int) -> str:
  """A Cloud TPU name for chain `i`: lowercase letters, digits and hyphens, starting with a letter,
  at most 63 characters (the names gcloud accepts)."""
  base = re.sub(r"[^a-z0-9-]+", "-", os.path.basename(os.path.normpath(workdir)).lower()).strip("-")
  base = base if base[:1].isalpha() else f"sweep-{base}".strip("-")
  suffix = f"-{i}"
  return base[:63 - len(suffix)].rstrip("-") + suffix


def launch_commands(sweep: Sweep, workdir: str, launcher: str, launcher_args=()) -> list[list[str]]:
  """The commands that train the unfinished points. local: resizer_jax.main per point, in stage
  order; slurm: sbatch per point, `afterok` on its source's job (shown as `<job of NAME>`; the
  launch fills in the id); tpu: launch/tpu.sh per chain, its points as --step=... in order."""
  if launcher not in LAUNCHERS:
    raise ValueError(f"unknown launcher {launcher!r}; valid: {', '.join(LAUNCHERS)}")
  now = states(sweep, workdir)
  todo = lambda p: now[p.name] in ("unfinished", "failed", "nonfinite", "blocked")
  if launcher == "tpu":
    cmds = []
    for i, chain in enumerate(chains(sweep)):
      steps = [shlex.join(main_args(sweep, p, workdir)) for p in chain if todo(p)]
      if steps:  # A queued resource per chain (docs/launch.md, "Chains and queued resources").
        cmds.append(["launch/tpu.sh", f"--name={tpu_name(workdir, i)}", *launcher_args, "--queued",
                     "--detach", *[f"--step={s}" for s in steps]])
    return cmds
  cmds = []
  for p in sweep.points:
    if not todo(p):
      continue
    if launcher == "local":
      cmds.append(["python", "-m", "resizer_jax.main", *main_args(sweep, p, workdir)])
      continue
    # A job whose source fails is cancelled, not left pending for ever.
    after = ([f"--dependency=afterok:<job of {p.init_from}>", "--kill-on-invalid-dep=yes"]
             if p.init_from and now[p.init_from] != "finished" else [])
    cmds.append(["sbatch", "--parsable", *after, *launcher_args, "launch/slurm.sbatch",
                 *main_args(sweep, p, workdir)])
  return cmds


SLURM_JOB = "slurm_job"  # In a point's directory: the id of the job that trains it.


def launch(sweep: Sweep, workdir: str, launcher: str, launcher_args=(), repo: str = ".") -> str:
  """Hands the unfinished points to `launcher`; returns where the launch logs are. Points whose
  source failed are not launched (they are blocked)."""
  logs = workdir if "://" not in workdir else os.path.abspath(
      os.path.basename(workdir.rstrip("/")) + "-launch-logs")
  if launcher not in ("slurm", "tpu"):
    raise ValueError(f"launch {launcher!r}: launch() hands points to slurm or tpu; run() trains "
                     "them here")
  jobs = {}
  for cmd in launch_commands(sweep, workdir, launcher, launcher_args):
    # A point's directory (slurm), or the chain's slice name (tpu).
    name = (os.path.basename(cmd[-1].partition("=")[2]) if launcher == "slurm" else
            cmd[1].partition("=")[2])
    log_dir = os.path.join(logs, name)
    os.makedirs(log_dir, exist_ok=True)
    if launcher == "slurm":
      cmd = [_job_of(a, jobs, workdir) for a in cmd]
      out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
      if out.returncode:
        raise ValueError(f"sbatch refused point {name}: {' '.join(out.stderr.split())}")
      jobs[name] = out.stdout.strip().split(";")[0]
      (epath.Path(workdir) / name).mkdir(parents=True, exist_ok=True)
      (epath.Path(workdir) / name / SLURM_JOB).write_text(jobs[name])
      print(f"sweep: {name}: job {jobs[name]}", flush=True)
    else:
      with open(os.path.join(log_dir, f"launch-{launcher}.log"), "a") as log:
        subprocess.Popen(cmd, cwd=repo, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  return logs


def _job_of(arg: str, jobs: dict, workdir: str) -> str:
  """`--dependency=afterok:<job of NAME>` with NAME's job id: submitted now, or by a past launch."""
  found = re.fullmatch(r"--dependency=afterok:<job of (.*)>", arg)
  if not found:
    return arg
  name = found.group(1)
  job = jobs.get(name) or (_read_text(epath.Path(workdir) / name / SLURM_JOB))
  if not job:
    raise ValueError(f"point {name} is unfinished and no job of this sweep trains it; launch it "
                     "first (or run the sweep locally)")
  return f"--dependency=afterok:{job}"


def _read_text(path: epath.Path) -> str | None:
  return path.read_text().strip() if path.exists() else None


# ----------------------------------------------------------------------------------------------
# The cost before launch.
# ----------------------------------------------------------------------------------------------
def plan_lines(sweep: Sweep, devices: int | None, processes: int = 1, platform: str = "tpu",
               throughput: str | None = None) -> list[str]:
  """Each point's steps and, where `throughput` (a bench --out file) has its exact measurement, its
  wall and device hours on `devices`; per stage and in all. Hours it cannot know it says so."""
  from resizer_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  if not devices:
    raise ValueError("--plan needs --devices=N, the devices each run gets (e.g. 32 for a v4-32)")
  records = plan_lib.read_throughputs(throughput) if throughput else []
  module, costs = config_args.load_module(sweep.path), {}
  lines = [f"plan: {sweep.config}, {len(sweep.points)} points, each on {devices} {platform} devices "
           f"in {processes} process{'es' * (processes > 1)}; throughputs: {throughput or 'none given'}",
           "", "| point | stage | steps | train images | eval steps | wall h | device-h |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for p in sweep.points:
    checked = _check(sweep, p, module, num_devices=devices, num_processes=processes,
                     platform=platform)
    config, run_plan = checked.config, checked.plan
    out = tuple(config.resizer.output_size)
    formulation = config.resizer.formulation
    record = plan_lib.find_throughput(
        records, backbone=config.backbone.name, resizer=config.resizer.name,
        input_size=config.data.input_size, output_size=out[0], dtype=run_plan.dtype,
        formulation=None if formulation == "auto" else formulation) if out[0] == out[-1] else None
    costs[p.name] = c = plan_lib.cost(run_plan, record)
    hours = ("unknown", "unknown") if c.wall_hours is None else (f"{c.wall_hours:.3g}",
                                                                 f"{c.device_hours:.4g}")
    lines.append(f"| {p.name} | {p.stage} | {c.steps:,} | {c.images:,} | {c.eval_steps:,} | "
                 f"{hours[0]} | {hours[1]} |")

  def total(points, what, digits=".4g"):
    known = [getattr(costs[p.name], what) for p in points]
    measured = [k for k in known if k is not None]
    if len(measured) == len(known):
      return f"{sum(known):{digits}}"
    return (f"unknown: {sum(measured):{digits}} for the {len(measured)} of {len(known)} points "
            "measured, the rest not measured" if measured else "unknown (not measured)")

  lines.append("")
  for stage in sorted({p.stage for p in sweep.points}):
    points = [p for p in sweep.points if p.stage == stage]
    lines.append(f"stage {stage}: {len(points)} points, {sum(costs[p.name].steps for p in points):,} "
                 f"steps; device-hours {total(points, 'device_hours')}")
  longest = [[costs[p.name].wall_hours for p in chain] for chain in chains(sweep)]
  longest = "unknown" if None in sum(longest, []) else f"{max(map(sum, longest)):.3g}"
  lines += [
      f"all: {sum(c.steps for c in costs.values()):,} steps; device-hours "
      f"{total(sweep.points, 'device_hours')}",
      f"wall hours one point at a time on {devices} devices: "
      f"{total(sweep.points, 'wall_hours', '.3g')}; with each of the {len(chains(sweep))} chains on "
      f"{devices} devices of its own (--launch=tpu): {longest}",
      "Hours exclude evaluation (not timed by the bench) and assume throughput per device scales "
      "linearly with the device count; a point without an exact measurement has no hours."]
  for source in sorted({c.source for c in costs.values() if c.source}):
    lines.append(f"measured: {source}")
  return lines


# ----------------------------------------------------------------------------------------------
# The command line.
# ----------------------------------------------------------------------------------------------
FLAGS = flags.FLAGS


def _define_flags():
  # Only when run as a program: config files import this module (for grid) a second time.
  config_flags.DEFINE_config_file("config", None, "Config file: path[:arg]; --config.x=v sets a "
                                  "field of every point.")
  flags.DEFINE_string("workdir", None, "Each point trains in WORKDIR/<point name>.")
  flags.DEFINE_multi_string("grid", [], "KEY=V1,V2,...: an axis of the grid that replaces the "
                            "file's sweep(); KEY is a config argument or config.a.b.")
  flags.DEFINE_enum("launch", "local", LAUNCHERS, "local: train the points here; slurm: sbatch "
                    "each point (afterok on its source); tpu: launch/tpu.sh each chain on a slice "
                    "(--collect writes the results when they are done).")
  flags.DEFINE_list("launch_args", [], "Arguments for the launcher, e.g. --zone=us-central2-b,"
                    "--accelerator=v4-8 (tpu) or --nodes=1 (sbatch).")
  flags.DEFINE_bool("dry_run", False, "Print the stages and each unfinished point's command.")
  flags.DEFINE_bool("plan", False, "Print each point's steps and, with --throughput, its "
                    "device-hours on --devices; run nothing.")
  flags.DEFINE_integer("devices", None, "With --plan: the device count of each run.")
  flags.DEFINE_integer("processes", 1, "With --plan: the process (host) count of each run.")
  flags.DEFINE_string("platform", "tpu", "With --plan: cpu, gpu or tpu (decides dtype=auto).")
  flags.DEFINE_string("throughput", None, "With --plan: a file of `python -m resizer_jax.bench "
                      "--out=FILE` records measured on the target hardware.")
  flags.DEFINE_bool("collect", False, "Only write the results of the finished points.")
  flags.DEFINE_string("metric", None, "With --collect: the metric of the tables (default "
                      "eval/plcc or eval/accuracy), e.g. eval/live_running/accuracy.")
  flags.DEFINE_integer("workers", 1, "--launch=local: processes training points at once on this "
                       "machine (each takes the next point nobody trains).")
  flags.DEFINE_bool("only_train", False, "Train points only, without writing the results (what "
                    "each extra worker does).")
  flags.mark_flags_as_required(["config", "workdir"])


def _print_dry_run(sweep: Sweep, workdir: str):
  cmds = launch_commands(sweep, workdir, FLAGS.launch, FLAGS.launch_args)
  if FLAGS.launch == "tpu":
    for cmd in cmds:
      steps = sum(a.startswith("--step=") for a in cmd)
      print(f"# {cmd[1][len('--name='):]}: {steps} unfinished points in stage order, one slice")
      print(" ".join(map(shlex.quote, cmd)))
    return
  stage = None
  for cmd in cmds:
    point = next(p for p in sweep.points if f"--workdir={os.path.join(workdir, p.name)}" in cmd)
    if point.stage != stage:
      stage = point.stage
      count = sum(p.stage == stage and f"--workdir={os.path.join(workdir, p.name)}" in c
                  for p in sweep.points for c in cmds)
      print(f"# stage {stage}: {count} points" + (", each after the point it starts from"
                                                   if stage else ""))
    print(" ".join(map(shlex.quote, cmd)))


def main(argv):
  trains = not (FLAGS.plan or FLAGS.dry_run or FLAGS.collect or FLAGS.launch != "local")
  with cli.command(argv, tensorflow=trains):
    workdir = FLAGS.workdir if "://" in FLAGS.workdir else os.path.abspath(FLAGS.workdir)
    config = config_flags.get_config_filename(FLAGS["config"])
    fields = config_flags.get_override_values(FLAGS["config"])
    sweep = load(config, parse_grid(FLAGS.grid) or None, fields)
    if FLAGS.plan:
      print("\n".join(plan_lines(sweep, FLAGS.devices, FLAGS.processes, FLAGS.platform,
                                  FLAGS.throughput)))
      return
    if FLAGS.dry_run:
      _print_dry_run(sweep, workdir)
      return
    if FLAGS.launch != "local" and not FLAGS.collect:
      # Launchers run from the repository root, which config paths are relative to.
      repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
      logs = launch(sweep, workdir, FLAGS.launch, FLAGS.launch_args, repo)
      print(f"sweep: launched the unfinished points with {FLAGS.launch} (logs in {logs}); when "
            "they are done: " + shlex.join(["python", "-m", "resizer_jax.sweep", *_sweep_flags(sweep),
                                            f"--workdir={FLAGS.workdir}", "--collect"]))
      return
    if FLAGS.collect:
      found = collect(sweep, workdir, FLAGS.metric)
    else:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.config.set_visible_devices([], "GPU")
      if FLAGS.only_train:
        sys.exit(0 if _train_points(sweep, workdir) else 3)
      found = run(config, workdir, FLAGS.workers, sweep.grid, fields)
    if any(r["state"] == "finished" for r in found):
      print((epath.Path(workdir) / "results.md").read_text())
    counts = {s: sum(r["state"] == s for r in found) for s in STATES}
    print("sweep: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"; in {workdir}")
    bad = [r for r in found if r["state"] in ("failed", "nonfinite", "blocked")]
    for r in bad:
      why = r.get("error") or f"it starts from {r['from']}, which did not finish"
      print(f"error: point {r['point']} {r['state']}: {why}", file=sys.stderr)
    if bad:
      sys.exit(2)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
