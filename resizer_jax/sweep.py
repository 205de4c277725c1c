"""Sweeps: a config file's `sweep(add, arg)` run point by point, then aggregated with uncertainty.

  python -m resizer_jax.sweep --config=configs/demo.py --workdir=runs/demo_sweep
  python -m resizer_jax.sweep --config=configs/imagenet.py --workdir=gs://B/sweep --launch=tpu \
      --launch_args=--zone=us-central2-b,--accelerator=v4-32 [--dry_run]   # then again with --collect
  rows = resizer_jax.sweep.run("configs/demo.py:tiny", "runs/tiny_sweep")

A config file may define, next to `get_config(arg)`:

  def sweep(add, arg=None):
    for seed in (0, 1, 2):
      add(resizer="learned", target=16, seed=seed)   # one run: get_config("...,resizer=learned,...")

Each point's overrides are config *arguments* (the `:k=v,...` of --config), so a point is exactly
what `python -m resizer_jax.main --config=FILE:ARG` would train. `grid(add, **axes)` adds the
cartesian product in one line. Each point trains in `DIR/<name>`; a finished point (the trainer wrote
its `result.json`) is not retrained on a rerun and an unfinished one resumes from its checkpoint.
--workers=N trains N points at a time on this machine (each process takes the next point that no
process trains: a `sweep.lock` in the point's directory). With --launch=slurm|tpu every unfinished
point is handed to that launch/ script at once.
After the points: `DIR/results.csv` (one row per run), `DIR/results.md` (mean ± 95% CI over seeds per
cell, and the learned − baseline difference paired by seed) and `DIR/results.png`.
"""
import contextlib
import csv
import io
import itertools
import json
import math
import os
import shlex
import socket
import subprocess
import sys

from absl import app
from absl import flags
from absl import logging
from etils import epath
import numpy as np
from scipy import stats

from resizer_jax import config_args

# The paper's headline number per task: top-1 accuracy (classification) or PLCC (IQA).
METRICS = ("eval/plcc", "eval/accuracy")


def headline_metric(rows) -> str:
  for metric in METRICS:
    if all(metric in r for r in rows):
      return metric
  raise ValueError(f"the sweep's results have none of the metrics {', '.join(METRICS)} in every row")


def grid(add, **axes):
  """add() every combination of the given values: grid(add, target=[16, 32], seed=[0, 1])."""
  names = list(axes)
  for values in itertools.product(*(axes[n] for n in names)):
    add(**dict(zip(names, values)))


def points(config: str) -> list[dict]:
  """Each point of the sweep in `config` ("path[:arg]"): its name, overrides and full argument."""
  path, _, arg = config.partition(":")
  module = config_args.load_module(path)
  if not hasattr(module, "sweep"):
    raise ValueError(f"{path} defines no sweep(add, arg=None)")
  base = dict(kv.partition("=")[::2] for kv in filter(None, (arg or "").split(",")))
  found = []

  def add(**overrides):
    text = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in overrides.items()}
    full = ",".join(k if v == "" else f"{k}={v}" for k, v in {**base, **text}.items())
    found.append({"name": ",".join(f"{k}={v}" for k, v in text.items()), "overrides": overrides,
                  "arg": full})

  module.sweep(add, arg or None)
  names = [p["name"] for p in found]
  if len(set(names)) != len(names):
    raise ValueError(f"{path}: sweep adds a point twice: {sorted({n for n in names if names.count(n) > 1})}")
  return found


def _result(point, point_dir):
  """The finished point's row (overrides, step, final metrics), or None while it is unfinished."""
  path = epath.Path(point_dir) / "result.json"
  if not path.exists():
    return None
  return {**point["overrides"], **json.loads(path.read_text())}


COMPILE_CACHE = "compile_cache"  # In the sweep's directory: compiled steps that points share.
LOCK = "sweep.lock"  # In a point's directory while a process trains it: "<host> <pid>".


def _claim(point_dir: str) -> bool:
  """Whether this process may train the point: it takes the point's lock, or the lock's holder is a
  process of this host that is gone (killed), whose lock it takes over."""
  lock, me = os.path.join(point_dir, LOCK), f"{socket.gethostname()} {os.getpid()}"
  for _ in range(2):
    try:
      fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      host, _, pid = epath.Path(lock).read_text().partition(" ")
      if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
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


def _train_points(config: str, workdir: str) -> bool:
  """Trains each unfinished point that no other process is training; False once preempted."""
  from resizer_jax import train  # pylint: disable=g-import-not-at-top  # Heavy; not for --dry-run.
  path = config.partition(":")[0]
  local = "://" not in workdir  # Object stores have no exclusive create: one process only there.
  with _compile_cache(os.path.join(workdir, COMPILE_CACHE)):
    for point in points(config):
      point_dir = os.path.join(workdir, point["name"])
      if _result(point, point_dir) is not None:
        continue
      epath.Path(point_dir).mkdir(parents=True, exist_ok=True)
      if local and not _claim(point_dir):
        continue
      try:
        logging.info("Sweep point %s: %s:%s", point["name"], path, point["arg"])
        train.train_and_evaluate(config_args.load_config(f"{path}:{point['arg']}"), point_dir)
      finally:
        if local:
          os.remove(os.path.join(point_dir, LOCK))
      if _result(point, point_dir) is None:  # Preempted (SIGTERM): the rerun continues from here.
        logging.warning("Sweep stopped at point %s; rerun to continue.", point["name"])
        return False
  return True


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
  compilation_cache.reset_cache()  # JAX opens its cache once per process: this one from here on.
  try:
    yield
  finally:
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()


def run(config: str, workdir: str, workers: int = 1) -> list[dict]:
  """Trains every point of the sweep (skipping finished ones) in `workers` processes on this
  machine, each taking the next point nobody trains; returns the rows and writes the results once
  every point is finished. More sweep processes (on other hosts sharing `workdir`) may join."""
  if workers < 1:
    raise ValueError(f"workers={workers}: at least 1 process must train the points")
  others = [subprocess.Popen([sys.executable, "-m", "resizer_jax.sweep", f"--config={config}",
                              f"--workdir={workdir}", "--only_train"]) for _ in range(workers - 1)]
  finished = False
  try:
    finished = _train_points(config, workdir)
  finally:  # The other workers finish their points, also when this one failed.
    finished = all([p.wait() == 0 for p in others]) and finished
  found = [(p, _result(p, os.path.join(workdir, p["name"]))) for p in points(config)]
  rows = [row for _, row in found if row is not None]
  if len(rows) == len(found):
    write_results(rows, workdir)
  elif finished:
    logging.warning("%d points are trained by other processes; when they are done: --collect",
                    len(found) - len(rows))
  return rows


LAUNCHERS = ("local", "slurm", "tpu")


def launch_commands(config: str, workdir: str, launcher: str, launcher_args=()) -> list[list[str]]:
  """The command that trains each unfinished point: resizer_jax.main, or handed to a launch/ script
  (`launcher_args` go to that script, e.g. --zone=... for tpu, --nodes=... for sbatch)."""
  if launcher not in LAUNCHERS:
    raise ValueError(f"unknown launcher {launcher!r}; valid: {', '.join(LAUNCHERS)}")
  path = config.partition(":")[0]
  prefix = {"local": ["python", "-m", "resizer_jax.main"],
            "slurm": ["sbatch", *launcher_args, "launch/slurm.sbatch"],
            "tpu": ["launch/tpu.sh", *launcher_args]}[launcher]
  cmds = []
  for i, point in enumerate(points(config)):
    point_dir = os.path.join(workdir, point["name"])
    if _result(point, point_dir) is not None:
      continue
    vm = [f"--name={os.path.basename(os.path.normpath(workdir))}-{i}".replace("_", "-").lower()
          ] if launcher == "tpu" else []
    cmds.append([*prefix, *vm, f"--config={path}:{point['arg']}", f"--workdir={point_dir}"])
  return cmds


def collect(config: str, workdir: str, metric: str | None = None) -> list[dict]:
  """Writes the results of the finished points (e.g. of a launched sweep) for `metric` (default:
  the headline one); returns their rows."""
  found = [(p, _result(p, os.path.join(workdir, p["name"]))) for p in points(config)]
  missing = [p["name"] for p, row in found if row is None]
  if missing:
    logging.warning("%d of %d points unfinished: %s", len(missing), len(found), "; ".join(missing))
  rows = [row for _, row in found if row is not None]
  if rows:
    write_results(rows, workdir, metric)
  return rows


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
  """(mean, half-width of the t confidence interval); the half-width is nan for one value."""
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return float(values.mean()), math.nan
  half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
  return float(values.mean()), float(half)


def _cells(rows, metric):
  """{(other overrides..., resizer): {seed: metric}}, the factors being every non-seed override."""
  cells = {}
  for r in rows:
    key = tuple(sorted((k, str(v)) for k, v in r.items()
                       if k not in ("seed", "step") and not k.startswith("eval/")))
    cells.setdefault(key, {})[r.get("seed", 0)] = r[metric]
  return cells


# Besides learned/control/muller − the fixed baseline: what the learned resizer is compared with.
BASELINES = ("bilinear", "bicubic")
ALSO_AGAINST = {"learned": ("control", "muller")}


def write_results(rows, workdir, metric: str | None = None):
  """results.csv, results.md and results.png in `workdir`, for `metric` (default: the headline
  one; e.g. "eval/live_running/accuracy" for one eval variant)."""
  columns = sorted({k for r in rows for k in r if not k.startswith("eval/")}) + sorted(
      {k for r in rows for k in r if k.startswith("eval/")})
  table = io.StringIO()
  writer = csv.DictWriter(table, fieldnames=columns)
  writer.writeheader()
  writer.writerows(rows)
  (epath.Path(workdir) / "results.csv").write_text(table.getvalue())

  metric = metric or headline_metric(rows)
  if not all(metric in r for r in rows):
    raise ValueError(f"not every run reports {metric!r}; they have: "
                     f"{', '.join(sorted(set.intersection(*(set(r) for r in rows))))}")
  cells = _cells(rows, metric)
  lines = [f"{metric}: mean ± 95% CI (t) over seeds", "", "| cell | seeds | mean | ± 95% CI |",
           "|---|---:|---:|---:|"]
  for key, by_seed in sorted(cells.items()):
    mean, half = mean_ci(list(by_seed.values()))
    lines.append(f"| {', '.join(f'{k}={v}' for k, v in key)} | {len(by_seed)} | {mean:.4f} | {half:.4f} |")
  diffs = []
  for key, by_seed in sorted(cells.items()):
    props = dict(key)
    if props.get("resizer") in (None, *BASELINES):
      continue
    for base in BASELINES + ALSO_AGAINST.get(props["resizer"], ()):
      base_key = tuple(sorted({**props, "resizer": base}.items()))
      if base_key in cells:
        seeds = sorted(set(by_seed) & set(cells[base_key]))
        if seeds:
          mean, half = mean_ci([by_seed[s] - cells[base_key][s] for s in seeds])
          rest = ", ".join(f"{k}={v}" for k, v in key if k != "resizer")
          diffs.append(f"| {rest} | {props['resizer']} − {base} | {len(seeds)} | {mean:+.4f} | {half:.4f} |")
  if diffs:
    lines += ["", "Differences, paired by seed:", "",
              "| cell | difference | seeds | mean | ± 95% CI |", "|---|---|---:|---:|---:|"] + diffs
  lines += _variant_lines(rows, metric)
  (epath.Path(workdir) / "results.md").write_text("\n".join(lines) + "\n")
  _plot(cells, metric, epath.Path(workdir) / "results.png")


def eval_variants(rows, metric) -> list[str]:
  """The eval variants every row reports `metric` under (eval/<variant>/<name>; see
  config_args.evaluation), e.g. ["ema_recomputed", "ema_running", ...]."""
  name = metric.split("/")[-1]  # eval/accuracy or eval/<variant>/accuracy
  found = [set(k.split("/")[1] for k in r if k.count("/") == 2 and k.endswith("/" + name))
           for r in rows]
  return sorted(set.intersection(*found)) if found else []


def _variant_lines(rows, metric) -> list[str]:
  """The spread over seeds under each eval variant, per cell and pooled over cells."""
  variants = eval_variants(rows, metric)
  if not variants:
    return []
  name = metric.split("/")[-1]  # eval/accuracy or eval/<variant>/accuracy
  lines = ["", f"{name} under each eval variant (parameters_statistics): mean ± 95% CI and the "
           "standard deviation over seeds", "",
           "| cell | variant | seeds | mean | ± 95% CI | std |", "|---|---|---:|---:|---:|---:|"]
  pooled = {}
  for variant in variants:
    for key, by_seed in sorted(_cells(rows, f"eval/{variant}/{name}").items()):
      values = list(by_seed.values())
      mean, half = mean_ci(values)
      std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
      pooled.setdefault(variant, []).append(std)
      lines.append(f"| {', '.join(f'{k}={v}' for k, v in key)} | {variant} | {len(values)} | "
                   f"{mean:.4f} | {half:.4f} | {std:.4f} |")
  lines += ["", "Standard deviation over seeds, pooled over the cells (root mean square):", "",
            "| variant | cells | pooled std |", "|---|---:|---:|"]
  for variant, stds in pooled.items():
    lines.append(f"| {variant} | {len(stds)} | {math.sqrt(np.nanmean(np.square(stds))):.4f} |")
  return lines


def _plot(cells, metric, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  lines = {}
  for key, by_seed in cells.items():
    props = dict(key)
    x = float(props.get("target", 0))
    label = ", ".join(f"{k}={v}" for k, v in key if k != "target")
    lines.setdefault(label, []).append((x, *mean_ci(list(by_seed.values()))))
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (label, pts) in enumerate(sorted(lines.items())):
    x, mean, half = map(np.asarray, zip(*sorted(pts)))
    # Side by side at each target, so that the intervals do not hide each other.
    ax.errorbar(x + 0.25 * (i - (len(lines) - 1) / 2), mean, yerr=np.nan_to_num(half), marker="o",
                capsize=3, label=label)
  ax.set_xlabel("target resolution (px)")
  ax.set_ylabel(f"{metric}\n(mean ± 95% CI over seeds)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100)
  path.write_bytes(png.getvalue())
  plt.close(fig)


FLAGS = flags.FLAGS


def _define_flags():
  # Only when run as a program: config files import this module (for grid) a second time.
  flags.DEFINE_string("config", None, "Config file with a sweep(add, arg): path[:arg].")
  flags.DEFINE_string("workdir", None, "Each point trains in WORKDIR/<point name>.")
  flags.DEFINE_enum("launch", "local", LAUNCHERS, "local: train the points here one after another; "
                    "slurm|tpu: hand each unfinished point to launch/slurm.sbatch or launch/tpu.sh "
                    "(they run in parallel; --collect writes the results when they are done).")
  flags.DEFINE_list("launch_args", [], "Arguments for the launcher, e.g. --zone=us-central2-b,"
                    "--accelerator=v4-8 (tpu) or --nodes=1 (sbatch).")
  flags.DEFINE_bool("dry_run", False, "Print each unfinished point's command instead of running it.")
  flags.DEFINE_bool("collect", False, "Only write the results of the finished points.")
  flags.DEFINE_string("metric", None, "With --collect: the metric of the tables (default "
                      "eval/plcc or eval/accuracy), e.g. eval/live_running/accuracy.")
  flags.DEFINE_integer("workers", 1, "--launch=local: processes training points at once on this "
                       "machine (each takes the next point nobody trains).")
  flags.DEFINE_bool("only_train", False, "Train points only, without writing the results (what "
                    "each extra worker does).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  workdir = FLAGS.workdir if "://" in FLAGS.workdir else os.path.abspath(FLAGS.workdir)
  if FLAGS.dry_run:
    for cmd in launch_commands(FLAGS.config, workdir, FLAGS.launch, FLAGS.launch_args):
      print(" ".join(map(shlex.quote, cmd)))
    return
  if FLAGS.collect:
    rows = collect(FLAGS.config, workdir, FLAGS.metric)
  elif FLAGS.launch == "local":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
    if FLAGS.only_train:
      sys.exit(0 if _train_points(FLAGS.config, workdir) else 3)
    rows = run(FLAGS.config, workdir, FLAGS.workers)
  else:
    # Launchers run from the repository root, which config paths are relative to; their logs stay
    # on this machine (next to the runs, or in ./NAME-launch-logs for a gs:// sweep).
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    logs = workdir if "://" not in workdir else os.path.abspath(
        os.path.basename(workdir.rstrip("/")) + "-launch-logs")
    for cmd in launch_commands(FLAGS.config, workdir, FLAGS.launch, FLAGS.launch_args):
      name = os.path.basename(cmd[-1].partition("=")[2])
      os.makedirs(os.path.join(logs, name), exist_ok=True)
      with open(os.path.join(logs, name, f"launch-{FLAGS.launch}.log"), "a") as log:
        subprocess.Popen(cmd, cwd=repo, stdout=log, stderr=subprocess.STDOUT)
    logging.info("Launched the unfinished points with %s (logs in %s); when they are done: "
                 "python -m resizer_jax.sweep --config=%s --workdir=%s --collect", FLAGS.launch,
                 logs, FLAGS.config, FLAGS.workdir)
    return
  if rows:
    print((epath.Path(workdir) / "results.md").read_text())
  logging.info("%d finished runs; results in %s", len(rows), workdir)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
