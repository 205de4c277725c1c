"""Where the trainer's metrics go: TensorBoard through clu, workdir/metrics.jsonl (one JSON object per
logged step) and one console line per logged step. Only process 0 writes."""
import json
import os

from clu import metric_writers
from etils import epath


def create(workdir: str, *, start_step: int, total_steps: int, is_chief: bool):
  """The trainer's writer: TensorBoard, metrics.jsonl and the console on the chief, logging
  elsewhere."""
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if not is_chief:
    return writer
  return metric_writers.MultiWriter(
      [writer, JsonlWriter(os.path.join(workdir, "metrics.jsonl"), start_step),
       ConsoleWriter(total_steps)])


def write_atomically(path: epath.Path, text: str):
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


class _ScalarsOnly(metric_writers.interface.MetricWriter):
  """A writer of scalars only: the other summaries go to TensorBoard."""
  def write_summaries(self, step, values, metadata=None): pass
  def write_images(self, step, images): pass
  def write_videos(self, step, videos): pass
  def write_audios(self, step, audios, *, sample_rate): pass
  def write_texts(self, step, texts): pass
  def write_histograms(self, step, arrays, num_buckets=None): pass
  def write_hparams(self, hparams): pass
  def flush(self): pass
  def close(self): pass


class JsonlWriter(_ScalarsOnly):
  """`{"step": ..., name: value, ...}` lines.

  Appended to at every log step locally. Object stores such as gs:// cannot append, and rewriting
  the whole file at every log step costs a synchronous upload of all of it: there the lines are
  kept and the file is rewritten at `flush`, which the trainer calls with every checkpoint save
  (including the preemption save) and at the end. What a crash loses is what the resume drops anyway.
  """

  def __init__(self, path: str, resume_step: int, append: bool | None = None):
    self._path = epath.Path(path)
    self._lines = []
    self._append = "://" not in str(path) if append is None else append
    if self._path.exists():  # Drop what a crashed run logged after its last checkpoint.
      self._lines = [line for line in self._path.read_text().splitlines()
                     if line.strip() and json.loads(line)["step"] <= resume_step]
      write_atomically(self._path, "".join(l + "\n" for l in self._lines))
    self._unwritten = False

  def write_scalars(self, step, scalars):
    line = json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}})
    self._lines.append(line)
    if self._append:
      with self._path.open("a") as f:
        f.write(line + "\n")
    else:
      self._unwritten = True

  def flush(self):
    if self._unwritten:
      write_atomically(self._path, "".join(l + "\n" for l in self._lines))
      self._unwritten = False

  def close(self):
    self.flush()


def _duration(seconds: float) -> str:
  seconds = round(seconds)
  if seconds < 120:
    return f"{seconds} s"
  if seconds < 7200:
    return f"{seconds // 60} min {seconds % 60:02d} s"
  return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ConsoleWriter(_ScalarsOnly):
  """One line per logged step (loss, accuracy, speed, ETA) and one per eval, on stdout."""

  TRAIN_KEYS = ("loss", "accuracy", "grad_norm")

  def __init__(self, total_steps: int):
    self._total = total_steps

  def write_scalars(self, step, scalars):
    parts = [f"step {step:>{len(str(self._total))}}/{self._total}"]
    parts += [f"{k} {float(scalars['train/' + k]):.4g}" for k in self.TRAIN_KEYS
              if "train/" + k in scalars]
    if scalars.get("train/nonfinite_skipped"):
      parts.append(f"skipped-nonfinite {int(scalars['train/nonfinite_skipped'])}")
    rate = scalars.get("train/steps_per_s")
    if rate:
      parts.append(f"{rate:.3g} steps/s")
      if step < self._total:
        parts.append(f"ETA {_duration((self._total - step) / rate)}")
    print("  ".join(parts), flush=True)
    evals = {k[len("eval/"):]: v for k, v in scalars.items() if k.startswith("eval/")}
    if evals:
      print(f"eval at step {step}: " + "  ".join(f"{k} {float(v):.4g}" for k, v in evals.items()),
            flush=True)
