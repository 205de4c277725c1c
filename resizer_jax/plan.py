"""The run plan: what a config does on N devices and P processes, computed before anything runs.

The trainer takes its batch, learning rate and step counts from `make`, so the plan printed by

  python -m resizer_jax.main --config=configs/imagenet.py:input=448 --plan --devices=64 --processes=16

is the plan a run on that hardware follows. Nothing here touches an accelerator: a laptop can check a
pod's config.

Batch: `config.per_device_batch_size` (paper-scale configs: it follows the hardware) or else the
global `config.batch_size` (the demos), which must then divide over the devices.
Learning rate: `optimizer.learning_rate` is the peak at `optimizer.reference_batch` examples and
scales linearly with the global batch (Goyal et al.'s rule, with warm-up); without a
reference_batch it is used as it is.
"""
import dataclasses
import json
import math
import os

# Published split sizes and mean encoded bytes per example, for plans made where the data is not
# prepared. ImageNet: the ILSVRC2012 tars hold 138 GB / 1,281,167 train and 6.3 GB / 50,000 val JPEGs.
LARGE_BATCH = 8192
SMALL_BUFFER = 1000

KNOWN_SPLITS = {
    "imagenet2012": {"train": (1_281_167, 108_000), "validation": (50_000, 127_000)},
}


@dataclasses.dataclass(frozen=True)
class Plan:
  devices: int
  processes: int
  mesh: dict
  global_batch: int
  per_device_batch: int
  eval_global_batch: int
  peak_learning_rate: float
  warmup_steps: int
  decay_steps: int
  steps_per_epoch: int
  total_steps: int
  num_train: int
  num_eval: int
  eval_steps: int
  dtype: str
  num_shards: int
  shuffle_buffer_per_shard: int
  bytes_per_example: float | None
  log_every_steps: int
  eval_every_steps: int
  checkpoint_every_steps: int

  @property
  def shards_per_process(self) -> int:
    return self.num_shards // self.processes

  @property
  def images_per_epoch_per_process(self) -> int:
    return self.steps_per_epoch * self.global_batch // self.processes

  @property
  def shuffle_bytes_per_process(self) -> float | None:
    """Encoded examples held by this process's shuffle buffers (they shuffle undecoded bytes)."""
    if self.bytes_per_example is None:
      return None
    return self.shards_per_process * self.shuffle_buffer_per_shard * self.bytes_per_example

  def warnings(self) -> list[str]:
    out = []
    if self.global_batch > LARGE_BATCH:
      out.append(f"global batch {self.global_batch} is above {LARGE_BATCH}, where the linear "
                 "learning-rate rule is known to break down for SGD (Goyal et al., 2017); "
                 "consider a smaller per_device_batch_size")
    if self.shuffle_buffer_per_shard < SMALL_BUFFER < self.num_train // self.num_shards:
      out.append(f"each of the {self.num_shards} streams shuffles through only "
                 f"{self.shuffle_buffer_per_shard} examples (data.shuffle_buffer is split among "
                 "the streams, so that every process count reads the same batches); raise "
                 "data.shuffle_buffer, at the host memory shown above per process")
    return out

  def lines(self) -> list[str]:
    epochs = lambda steps: f"{steps / self.steps_per_epoch:.3g} epochs"
    memory = self.shuffle_bytes_per_process
    memory = ("unknown (dataset not prepared)" if memory is None else
              f"{memory / 2**30:.2f} GiB" if memory >= 2**30 else f"{memory / 2**20:.1f} MiB")
    mesh = " x ".join(f"{k}={v}" for k, v in self.mesh.items())
    return [
        f"devices {self.devices} in {self.processes} processes; mesh {mesh}; compute {self.dtype}",
        f"batch {self.global_batch} global = {self.per_device_batch} per device "
        f"({self.global_batch // self.processes} per process); eval batch {self.eval_global_batch}",
        f"learning rate peak {self.peak_learning_rate:.4g} after {self.warmup_steps} warm-up steps, "
        f"decayed every {self.decay_steps} steps",
        f"{self.num_train} train examples: {self.steps_per_epoch} steps per epoch, "
        f"{self.total_steps} steps in all ({epochs(self.total_steps)})",
        f"log every {self.log_every_steps} steps; eval every {self.eval_every_steps} "
        f"({epochs(self.eval_every_steps)}, {self.eval_steps} batches over {self.num_eval} "
        f"examples); checkpoint every {self.checkpoint_every_steps} ({epochs(self.checkpoint_every_steps)})",
        f"data: {self.num_shards} shuffled streams, {self.shards_per_process} per process; "
        f"{self.images_per_epoch_per_process} images per epoch per process; shuffle buffers "
        f"{self.shards_per_process} x {self.shuffle_buffer_per_shard} examples = {memory} per process",
    ] + [f"warning: {w}" for w in self.warnings()]


def mesh_shape(axes, num_devices: int) -> dict:
  """`config.mesh` ((name, size) pairs, one size may be -1 for the rest) resolved for num_devices."""
  names, sizes = [a[0] for a in axes], [int(a[1]) for a in axes]
  known = math.prod(s for s in sizes if s != -1)
  if sizes.count(-1) > 1 or known <= 0 or num_devices % known:
    raise ValueError(f"config.mesh={tuple(map(tuple, axes))} does not fit {num_devices} devices; "
                     "give (name, size) pairs whose sizes multiply to the device count, one of "
                     "them may be -1")
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh={tuple(map(tuple, axes))} has {math.prod(sizes)} devices but "
                     f"there are {num_devices}")
  return dict(zip(names, sizes))


def check_num_shards(num_shards: int, num_processes: int, global_batch: int):
  """Each process reads whole streams, and each stream fills whole rows of every batch."""
  if num_shards % num_processes or global_batch % num_shards:
    raise ValueError(f"data.num_shards={num_shards} must be a multiple of the number of processes "
                     f"({num_processes}) and divide the global batch ({global_batch}); set "
                     f"--config.data.num_shards to such a number")


def schedule_steps(optimizer_config, steps_per_epoch: int) -> tuple[int, int]:
  """(warm-up steps, steps between decays) of the learning-rate schedule."""
  o = optimizer_config
  return round(o.warmup_epochs * steps_per_epoch), max(1, round(o.decay_epochs * steps_per_epoch))


def compute_dtype(config, platform: str) -> str:
  """config.dtype; "auto" is bfloat16 on accelerators and float32 on the CPU (where bf16 is slow)."""
  dtype = config.dtype
  if dtype == "auto":
    return "float32" if platform == "cpu" else "bfloat16"
  return dtype


def _batch(config, key: str, num_devices: int, num_processes: int) -> tuple[int, int]:
  """(global, per device) for "batch_size" or "eval_batch_size"."""
  per_device = config[f"per_device_{key}"]
  if per_device and config[key]:
    raise ValueError(f"{key}={config[key]} and per_device_{key}={per_device} are both set; set "
                     f"one (--config.{key}=0 to use per_device_{key})")
  if per_device:
    return per_device * num_devices, per_device
  batch = config[key]
  if batch % num_devices:
    raise ValueError(f"{key}={batch} is not divisible by the number of devices ({num_devices}); "
                     f"use a multiple of {num_devices}, or set per_device_{key}")
  return batch, batch // num_devices


def make(config, *, num_devices: int, num_processes: int, num_train: int, num_eval: int,
         platform: str = "cpu", num_shards: int | None = None,
         bytes_per_example: float | None = None) -> Plan:
  """The plan of `config` on this hardware; a ValueError naming the fix where it cannot run.

  num_shards: the data streams (default config.data.num_shards, else one per process).
  """
  if num_devices % num_processes:
    raise ValueError(f"{num_devices} devices do not split evenly over {num_processes} processes")
  mesh = mesh_shape(config.mesh, num_devices)
  global_batch, per_device = _batch(config, "batch_size", num_devices, num_processes)
  eval_batch, _ = _batch(config, "eval_batch_size", num_devices, num_processes)
  num_shards = num_shards or config.data.num_shards or num_processes
  check_num_shards(num_shards, num_processes, global_batch)
  if num_train < global_batch:
    raise ValueError(f"the train split has {num_train} examples, fewer than one global batch "
                     f"({global_batch}); lower per_device_batch_size or batch_size")
  o = config.optimizer
  reference = o.reference_batch
  peak = o.learning_rate * global_batch / reference if reference else o.learning_rate
  steps_per_epoch = max(1, num_train // global_batch)
  warmup, decay_steps = schedule_steps(o, steps_per_epoch)
  total = config.num_train_steps or round(config.num_epochs * steps_per_epoch)
  per_process_eval = math.ceil(num_eval / num_processes)
  def every(name):  # name_every_epochs if set, else name_every_steps; 0: only at the end.
    epochs = config[f"{name}_every_epochs"]
    return (max(1, round(epochs * steps_per_epoch)) if epochs else
            config[f"{name}_every_steps"] or total)
  return Plan(
      devices=num_devices, processes=num_processes, mesh=mesh, global_batch=global_batch,
      per_device_batch=per_device, eval_global_batch=eval_batch, peak_learning_rate=peak,
      warmup_steps=warmup, decay_steps=decay_steps,
      steps_per_epoch=steps_per_epoch, total_steps=total, num_train=num_train, num_eval=num_eval,
      eval_steps=math.ceil(per_process_eval / (eval_batch // num_processes)),
      dtype=compute_dtype(config, platform), num_shards=num_shards,
      shuffle_buffer_per_shard=max(1, min(num_train // num_shards,
                                          config.data.shuffle_buffer // num_shards)),
      bytes_per_example=bytes_per_example, log_every_steps=every("log"),
      eval_every_steps=every("eval"), checkpoint_every_steps=every("checkpoint"))


# --- Costs: a plan's steps times a throughput measured by `python -m resizer_jax.bench --out=FILE`.
#
# A throughput file holds JSON lines, one per measured variant. The fields every record needs (the
# bench also writes platform, formulation, source and its timing details):
THROUGHPUT_FIELDS = ("workload", "device_kind", "num_devices", "backbone", "resizer", "input",
                     "output", "dtype", "global_batch", "images_per_s", "date")


def append_throughputs(path, records) -> None:
  """Appends `records` to the JSON Lines file `path` (made if missing) in one write of whole lines.

  One O_APPEND write: a reader, or another writer, never sees half a line of ours; a file whose
  last line lacks its newline gets one first, so that no record is glued to another.
  """
  data = "".join(json.dumps(r) + "\n" for r in records).encode()
  if os.path.dirname(os.fspath(path)):
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(fd).st_size
    if not data:  # Only the check that the file can be written (the bench's, before timing).
      return
    if size:
      with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) != b"\n":
          data = b"\n" + data
    os.write(fd, data)
  finally:
    os.close(fd)


def read_throughputs(path) -> list[dict]:
  """The records of a throughput file; a one-line FileNotFoundError or ValueError naming the file,
  the line and what is wrong with it."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"throughput file {path} does not exist; write one with python -m "
                            f"resizer_jax.bench --workload=train ... --out={path}")
  records = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"throughput file {path}, line {n}"
      try:
        r = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg}); the file must hold one JSON object a "
                         "line, as python -m resizer_jax.bench --out writes") from None
      if not isinstance(r, dict):
        raise ValueError(f"{where}: a JSON {type(r).__name__}, not an object")
      missing = [k for k in THROUGHPUT_FIELDS if k not in r]
      if missing:
        raise ValueError(f"{where}: missing field{'s' * (len(missing) > 1)} {', '.join(missing)}")
      for key, kind in (("images_per_s", (int, float)), ("num_devices", int),
                        ("global_batch", int)):
        if isinstance(r[key], bool) or not isinstance(r[key], kind) or not r[key] > 0:
          raise ValueError(f"{where}: {key} is {r[key]!r}, not a positive number")
      records.append(r)
  return records


def _per_device_batch(record) -> float:
  return record["global_batch"] / record["num_devices"]


def find_throughput(records, *, backbone: str, resizer: str, input_size: int, output_size: int,
                    dtype: str, device_kind: str | None = None, formulation: str | None = None,
                    per_device_batch: int | None = None) -> dict | None:
  """The `train` record measured for exactly this point, or None: no interpolation, no nearest match.

  Matches backbone, resizer, input and output size and dtype (the plan's compute dtype) exactly;
  device_kind (e.g. "NVIDIA H200"; case aside), formulation (of a learned resizer's convolutions;
  records of resizers without one match any) and per_device_batch too, when given. Records of
  other workloads (the resizer alone, the input pipeline) time no train step and never match.

  Several matches on different device kinds or formulations are different hardware or programs: a
  ValueError asks for the one meant. Of the rest, the largest per-device batch (a training run's,
  rather than a latency probe's), then the latest date, then the last in the file. The record's own
  batch is not adjusted to the plan's: the cost names it (pass per_device_batch to demand the plan's).
  """
  def same(r):
    return (r["workload"] == "train" and r["backbone"] == backbone and r["resizer"] == resizer
            and r["input"] == input_size and r["output"] == output_size and r["dtype"] == dtype
            and (device_kind is None or
                 str(r["device_kind"]).casefold() == device_kind.strip().casefold())
            and (formulation is None or r.get("formulation") in (None, formulation))
            and (per_device_batch is None or _per_device_batch(r) == per_device_batch))
  found = [r for r in records if same(r)]
  point = f"{backbone} with the {resizer} resizer, {input_size} -> {output_size}, {dtype}"
  for key, arg, named in (("device_kind", "device kind", device_kind),
                          ("formulation", "formulation", formulation)):
    values = sorted({str(r.get(key)) for r in found})
    if named is None and len(values) > 1:
      raise ValueError(f"throughputs for {point} were measured on several {arg}s "
                       f"({', '.join(values)}); name the one meant")
  if not found:
    return None
  return max(enumerate(found), key=lambda ir: (_per_device_batch(ir[1]), str(ir[1]["date"]),
                                               ir[0]))[1]


def num_evals(plan: Plan) -> int:
  """Evaluations in a run: every eval_every_steps, and one at the end if that is not one of them."""
  return plan.total_steps // plan.eval_every_steps + bool(plan.total_steps % plan.eval_every_steps)


@dataclasses.dataclass(frozen=True)
class Cost:
  """What a plan's training costs. Hours exclude evaluation, which the bench does not time:
  eval_steps counts its batches (of plan.eval_global_batch) instead. None: no measurement."""
  steps: int
  images: int
  eval_steps: int
  images_per_s: float | None  # On the plan's devices.
  wall_hours: float | None
  device_hours: float | None
  source: str | None  # The measurement the hours rest on.

  def line(self) -> str:
    head = f"{self.steps} steps, {self.images} train images, {self.eval_steps} eval steps"
    if self.wall_hours is None:
      return f"{head}; hours unknown (no throughput measured for this point)"
    return (f"{head}; {self.wall_hours:.3g} h wall, {self.device_hours:.4g} device-hours "
            f"(excluding eval) at {self.images_per_s:.4g} images/s: {self.source}")


def cost(plan: Plan, record: dict | None) -> Cost:
  """The plan's train cost at the throughput of `record` (find_throughput's), or steps alone.

  Throughput per device is the record's images/s over its device count, times the plan's devices.
  This assumes throughput scales linearly with data parallelism, and it is the one assumption:
  interconnect, input pipeline and host overheads at the plan's scale are not in it, so the hours
  are a lower bound where those bind. Then train images = total_steps x global_batch, wall seconds =
  images / (per-device images/s x devices), device-hours = wall hours x devices (so they do not
  depend on the device count). Evaluation is not timed: eval_steps counts its batches.
  """
  images = plan.total_steps * plan.global_batch
  eval_steps = num_evals(plan) * plan.eval_steps
  if record is None:
    return Cost(plan.total_steps, images, eval_steps, None, None, None, None)
  per_device = record["images_per_s"] / record["num_devices"]
  images_per_s = per_device * plan.devices
  wall_hours = images / images_per_s / 3600
  batch = record["global_batch"]
  source = (f"{record['images_per_s']:g} images/s on {record['num_devices']} x "
            f"{record['device_kind']} at batch {batch}"
            f" ({_per_device_batch(record):g} per device; the plan's {plan.per_device_batch})"
            f", measured {record['date']}" +
            (f" ({record['source']})" if record.get("source") else ""))
  return Cost(plan.total_steps, images, eval_steps, images_per_s, wall_hours,
              wall_hours * plan.devices, source)
