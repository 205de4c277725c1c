"""tf.data input: TFDS examples -> per-host batches of uint8 images at the resizer's input resolution.

The pipeline produces the *high-resolution* images; the (learned or fixed) resizer runs on device, so
both see exactly the same pixels. Shipping uint8 keeps host-to-device traffic 4x below float32.
docs/data.md gives the exact preprocessing ops and how to prepare ImageNet.

Batches are dicts of this host's share of a global batch (b = global batch / process count):

  image         uint8 [b, input_size, input_size, 3]
  label         int32 [b]        classification datasets
  distribution  float32 [b, 10]  IQA datasets (`ava`), instead of label: the vote histogram
  skipped       int32 [b]        1 where the example in that position could not be decoded (see
                                 below); the sum over a global batch is the number skipped in that
                                 step, over all hosts
  mask          bool [b]         eval only: False on padding and on skipped examples

Undecodable input never stops a run. Grayscale, CMYK, PNG, GIF, BMP and WebP bytes decode to 3
channels, whatever the file is called. An example whose preprocessing fails (empty, truncated or
garbage bytes) is skipped: in eval it becomes a mask=0, skipped=1 entry; in training its position
takes a copy of the next decodable example, flagged skipped=1. Every position of the stream stays
the position of one example of the split, which is what makes a restart exact (below). A train
shard in which every example fails is an error, not an endless loop.

Determinism: the train order is a function of (seed, epoch, shard) only -- each epoch reads the
shard's files in its own order, then through the shuffle buffer -- and every random
augmentation is a stateless op seeded by (seed, example counter), so a run restarted at step N reads
exactly the examples, in the same order, with the same crops, flips and skipped flags, that an
uninterrupted run reads from step N on, knowing only N. The restart skips the earlier records of the
current epoch (reading, not parsing or decoding, them). The same stream needs what
`stream_identity` names: the TFDS build, global batch, data.num_shards (by default the process
count), seed, shuffle_buffer and ORDER_SCHEME; the pixels are bitwise the same on the same
TensorFlow build.
"""
import difflib
import math
import os

from etils import epath
from etils import epy
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow_datasets as tfds

# TensorFlow loads (seconds) when the pipeline first uses it: a plan or a refusal never does.
with epy.lazy_imports():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

from resizer_jax import plan
from resizer_jax import tasks
from resizer_jax.data import ava  # pylint: disable=unused-import  # Registers `ava`.
from resizer_jax.data import demo  # pylint: disable=unused-import  # Registers `resizer_demo`.
from resizer_jax.data import image_folder

TRAIN_PREPROCESS = ("crop_flip", "inception_crop", "resize_crop_flip")
# How a train epoch orders its examples; recorded by stream_identity, so that a resume refuses a
# checkpoint of another scheme. 1: the stored order through the shuffle buffer. 2: the shard's
# file instructions (parts of files) in an order drawn per (seed, epoch, shard), then the buffer.
ORDER_SCHEME = 2
READ_FILES = 16  # Files each train shard stream reads at once.
# Registered by this package (imported above); tfds.list_builders() may not know them yet.
OUR_DATASETS = ("resizer_demo", "ava", "image_folder")
# What a manual download must put in the manual dir before TFDS can prepare the dataset:
# (required, optional) names, a trailing "/" for a directory.
MANUAL_FILES = {
    "imagenet2012": (("ILSVRC2012_img_val.tar",), ("ILSVRC2012_img_train.tar",)),
    "ava": (("AVA.txt", "aesthetics_image_lists/", "images/"), ()),
}
DOCS = {"imagenet2012": "docs/data.md", "ava": "docs/iqa.md"}


def _builder(data_config):
  """tfds.builder(data.name), with an unknown dataset or config refused in one line; for
  `image_folder:PATH`, that folder's builder (resizer_jax/data/image_folder.py)."""
  name, data_dir = data_config.name, data_config.data_dir
  if name.startswith(image_folder.PREFIX) or name == image_folder.PREFIX[:-1]:
    return image_folder.builder(name[len(image_folder.PREFIX):], data_dir, {
        key: data_config[key] for key in ("train_split", "eval_split") if data_config[key]})

  def unknown():
    known = sorted(set(tfds.list_builders(with_community_datasets=False)) | set(OUR_DATASETS))
    close = difflib.get_close_matches(name.partition(":")[0].partition("/")[0], known, n=5)
    return ValueError(f"unknown dataset data.name={name!r}; close matches: "
                      f"{', '.join(close) or 'none'} (tfds.list_builders() lists all "
                      f"{len(known)})")

  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:  # Its message lists all ~450 datasets, a line each.
    raise unknown() from None
  except ValueError:
    dataset, _, config = name.partition(":")[0].partition("/")
    registered = dataset in tfds.list_builders(with_community_datasets=False)
    if not registered:  # A name TFDS cannot parse, e.g. a typo before ":PATH": 20 lines of syntax.
      raise unknown() from None
    configs = [c.name for c in tfds.builder_cls(dataset).BUILDER_CONFIGS]
    if config and config not in configs:
      raise ValueError(f"unknown config {config!r} of {dataset} in data.name={name!r}; valid: "
                       f"{', '.join(configs) or 'none (give the dataset name alone)'}") from None
    raise


def _missing_manual_download(builder, data_config, manual_dir) -> str | None:
  """Why TFDS could not prepare `builder` from its manual dir, in one line; None if it could try."""
  if builder.is_prepared() or not getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    return None
  if getattr(builder.builder_config, "demo", None):  # `ava`'s offline stand-ins write their own.
    return None
  data_dir = str(builder.data_dir_root)
  manual_dir = manual_dir or os.path.join(data_dir, "downloads", "manual")

  def exists(name):
    path = epath.Path(manual_dir, name)
    return path.is_dir() if name.endswith("/") else path.exists()

  if builder.name in MANUAL_FILES:
    required, optional = MANUAL_FILES[builder.name]
    if all(exists(f) for f in required):
      return None
    missing = [f for f in required + optional if not exists(f)]
    expected = ", ".join(required) + (f" and, for the train split, {', '.join(optional)}"
                                      if optional else "")
  else:  # A dataset we do not know the files of: TFDS needs at least something there.
    if epath.Path(manual_dir).is_dir() and any(epath.Path(manual_dir).iterdir()):
      return None
    missing = ["all of it (the directory is absent or empty)"]
    expected = " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())[:300]
  name = data_config.name
  prepare = prepare_command(name, builder, manual_dir)
  docs = DOCS.get(builder.name, "the dataset's TFDS catalog page")
  return (f"{name} is not prepared in data_dir={data_dir} and its manual download is not in "
          f"manual_dir={manual_dir}: expected {expected} there, missing: {', '.join(missing)}; put "
          "the files there (or set --config.data.manual_dir to where they are) and rerun, or "
          f"prepare once with: {prepare} ({docs})")


def prepare_command(name: str, builder, manual_dir: str | None = None) -> str:
  """The shell command that prepares dataset `name` where `builder` looks for it."""
  register = "import resizer_jax.data.input_pipeline; " if builder.name in OUR_DATASETS else ""
  manual = (f"download_config=tfds.download.DownloadConfig(manual_dir='{manual_dir}')"
            if manual_dir else "")
  return (f"python -c \"{register}import tensorflow_datasets as tfds; tfds.builder('{name}', "
          f"data_dir='{builder.data_dir_root}').download_and_prepare({manual})\"")


def get_builder(data_config, num_classes: int | None = None, task: str | None = None, *,
                prepare: bool = True):
  """The TFDS builder named by `data_config.name`; built on first use if `prepare`.

  `data_config.manual_dir` is where manually downloaded archives are (ImageNet's
  ILSVRC2012_img_{train,val}.tar); None means TFDS's default, <data_dir>/downloads/manual.
  With several processes, process 0 builds first and the others then find it built (a shared
  data_dir) or build their own copy (a local one): never two writers on one directory.

  An unknown dataset or config is a ValueError; an unprepared dataset whose manual download is
  missing a FileNotFoundError naming the directories and files, before anything is written; so is
  an `image_folder:PATH` that cannot be used, or changed since it was prepared (image_folder.py).
  """
  # The configs always set it (configs/common.py); a data config built by hand may leave it out.
  manual_dir = data_config.get("manual_dir")
  # All raise or none: process 0 must not wait for the others (a folder or manual download may be
  # missing, or differ, on one host only).
  try:
    builder, error = _builder(data_config), None
    _check_task(builder, data_config, num_classes, task)  # Its features say, prepared or not.
    missing = _missing_manual_download(builder, data_config, manual_dir) if prepare else None
    if missing:
      error = FileNotFoundError(missing)
  except (ValueError, FileNotFoundError) as e:
    if not prepare or jax.process_count() == 1:
      raise
    error = e
  if prepare and jax.process_count() > 1:
    elsewhere = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
    if error is None and elsewhere.any():
      error = FileNotFoundError(f"{data_config.name} cannot be prepared on process "
                                f"{', '.join(map(str, np.flatnonzero(elsewhere)))} (see its error)")
  if error:
    raise error

  def prepared():
    builder = _builder(data_config)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir))
    return builder

  if prepare:
    if jax.process_count() == 1:
      builder = prepared()
    else:
      if jax.process_index() == 0:
        prepared()
      multihost_utils.sync_global_devices(f"prepared {data_config.name}")
      builder = prepared()
  return builder


def _check_task(builder, data_config, num_classes, task):
  served = tasks.of_dataset(builder)
  if task is not None and task != served.name:
    raise ValueError(f"config.task={task!r} does not fit {data_config.name}, a {served.name} "
                     "dataset")
  width = served.dataset_classes(builder.info.features)
  if num_classes is not None and width not in (None, num_classes):
    names = class_names(builder) or ()
    listed = f" ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})" if names else ""
    raise ValueError(f"config.num_classes={num_classes} but {data_config.name} has {width} classes"
                     f"{listed}: set --config.num_classes={width}, or leave it unset (None) and "
                     "the dataset decides")


def check_splits(builder, data_config):
  """A ValueError unless `builder` has the train and eval splits `data_config` names."""
  splits = builder.info.splits
  for split in (data_config.train_split, data_config.eval_split):
    if split not in splits:
      raise ValueError(f"{data_config.name} in {builder.data_dir} has no {split!r} split (it has "
                       f"{', '.join(splits) or 'none'}): it was prepared without that split's "
                       "files; delete that directory and prepare it again with them (docs/data.md)")


def class_names(builder) -> tuple[str, ...] | None:
  """The names of the label's classes (index order); None for a dataset without a ClassLabel."""
  label = builder.info.features["label"] if "label" in builder.info.features else None
  return tuple(label.names) if isinstance(label, tfds.features.ClassLabel) else None


def _decode(example):
  image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _resize(image, size):
  return tf.cast(tf.clip_by_value(tf.round(
      tf.image.resize(image, size, method="bilinear", antialias=True)), 0, 255), tf.uint8)


def _resize_shorter_side(image, side):
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  new_hw = tf.cast(tf.round(shape * (side / tf.reduce_min(shape))), tf.int32)
  return tf.cond(tf.reduce_all(new_hw == tf.shape(image)[:2]), lambda: image,
                 lambda: _resize(image, new_hw))


def _targets(example, task):
  """What the loss reads: the task's target (the class label, or for IQA the vote histogram)."""
  return {task.target: tf.cast(example[task.target], task.target_dtype)}


def preprocess_train(image, seed, data_config):
  """Augmentation at the resizer's input resolution, seeded per example."""
  size = data_config.input_size
  name = data_config.train_preprocess
  flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if name == "crop_flip":
    # No rescaling: pixel-level statistics (the demo's labels) must survive augmentation.
    shape = tf.shape(image)
    image = tf.image.resize_with_crop_or_pad(image, tf.maximum(shape[0], size),
                                             tf.maximum(shape[1], size))
    image = tf.image.stateless_random_crop(image, [size, size, 3], seed=crop_seed)
  elif name == "inception_crop":
    # Random-resized crop as in Inception/ResNet training: 8%-100% of the area, aspect 3/4..4/3.
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=crop_seed,
        min_object_covered=0.0, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = _resize(tf.slice(image, begin, crop_size), (size, size))
  elif name == "resize_crop_flip":
    # NIMA's crops (rescale, then a random square of 224/256 of it), keeping the aspect ratio so that
    # train and eval images are rescaled alike: the shorter side to input_size / eval_crop_fraction.
    image = _resize_shorter_side(image, size / data_config.eval_crop_fraction)
    image = tf.image.stateless_random_crop(image, [size, size, 3], seed=crop_seed)
  else:
    raise ValueError(f"unknown train_preprocess {name!r}; valid: {', '.join(TRAIN_PREPROCESS)}")
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def preprocess_eval(image, data_config):
  """Resize the shorter side to input_size / crop_fraction, then take the central square."""
  size = data_config.input_size
  image = _resize_shorter_side(image, size / data_config.eval_crop_fraction)
  return tf.image.resize_with_crop_or_pad(image, size, size)


def _read(builder, split):
  # try_autocache=False: TFDS would cache a small split in memory, for nothing (each eval builds its
  # pipeline afresh) and, read in part (the pictures' first batch), with TensorFlow's warning "The
  # calling iterator did not fully read the dataset being cached" on the console. The examples and
  # their order are the same either way.
  return builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(skip_prefetch=True, try_autocache=False))


def _num_examples(builder, split) -> int:
  return builder.info.splits[split].num_examples


def _options():
  options = tf.data.Options()
  options.deterministic = True  # The order guarantees above, whatever a global default says.
  # Each image op on one thread, many images at once: cheaper than splitting one image's resize
  # over threads, and it leaves the cores the parallel elements do not use to the train step.
  options.threading.max_intra_op_parallelism = 1
  return options


def _prepare_or_flag(ds, prepare, placeholder):
  """(True, prepare(element)) for each element, or (False, placeholder) where prepare fails.

  One output per input, in order: the failed example keeps its position. `ignore_errors` on the
  whole stream would drop it, shifting every later example by one and losing the count.
  """
  def one(*element):
    kept = tf.data.Dataset.from_tensors(element).map(lambda *e: (True, prepare(*e)))
    failed = tf.data.Dataset.from_tensors((False, placeholder))
    return kept.ignore_errors().concatenate(failed).take(1)
  return ds.interleave(one, block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _placeholder(data_config, task):
  return {"image": tf.zeros([data_config.input_size, data_config.input_size, 3], tf.uint8),
          task.target: tf.zeros(task.target_shape, task.target_dtype)}


def local_batch_size(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ValueError(f"batch_size {global_batch} is not divisible by the number of processes "
                     f"({jax.process_count()})")
  return global_batch // jax.process_count()


def _file_instructions(builder, split):
  """(files, skips, takes): the parts of TFRecord files that hold `split`, in stored order.

  The unit whose order each epoch draws afresh. Not cut finer: a TFRecord file has no index, so
  a part that starts inside a file is reached by reading the records before it.
  """
  if builder.info.file_format.value != "tfrecord":
    raise ValueError(f"{builder.info.full_name} is stored as {builder.info.file_format.value}; the "
                     "train pipeline reads tfrecord builds (rebuild with file_format='tfrecord')")
  parts = [(f.filename, f.skip, f.take) for f in builder.info.splits[split].file_instructions]
  files, skips, takes = zip(*parts)
  return tf.constant(files), tf.constant(skips, tf.int64), tf.constant(takes, tf.int64)


def _shard_stream(builder, data_config, split, shard: int, num_shards: int, *, rows: int, seed: int,
                  start_step: int):
  """Endless batches of `rows` examples from one shard, shuffled per epoch, from `start_step` on."""
  n = _num_examples(builder, split)
  first_epoch, offset = divmod(start_step * rows, n)
  # The buffer is split among the shards: all processes together hold one shuffle_buffer of
  # records, each one shuffle_buffer / process_count.
  buffer = max(1, min(n, data_config.shuffle_buffer // num_shards))
  files, skips, takes = _file_instructions(builder, split)
  task = tasks.of_dataset(builder)

  def epoch(e):
    # A hash of (seed, epoch, shard): seed s must not replay seed s-1's orders one epoch later.
    key = tf.stack([tf.constant(seed, tf.int64), e * 2**20 + shard])
    file_key, buffer_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    order = tf.random.experimental.stateless_shuffle(tf.range(tf.size(files)), seed=file_key)
    records = tf.data.Dataset.from_tensor_slices(
        tuple(tf.gather(column, order) for column in (files, skips, takes))).interleave(
            lambda f, skip, take: tf.data.TFRecordDataset(f).skip(skip).take(take),
            # Several files side by side, as TFDS reads them: parallel reads, mixed records.
            cycle_length=READ_FILES, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)
    buffer_seed = tf.random.stateless_uniform([], seed=buffer_key, minval=None, maxval=None,
                                              dtype=tf.int64)
    return records.shuffle(buffer, seed=buffer_seed)

  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
  # Skipped records are read, never parsed or decoded.
  ds = ds.enumerate(start=first_epoch * n).skip(offset)
  ds = ds.map(lambda i, record: (i, builder.info.features.deserialize_example(
      record, decoders={"image": tfds.decode.SkipDecoding()})),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def prepare(i, example):
    counter = tf.stack([tf.constant(seed, tf.int64), i * num_shards + shard])
    return {"image": preprocess_train(_decode(example), counter, data_config),
            **_targets(example, task)}

  def count_failures(run, slot):
    # 2n failures in a row cover a whole epoch: nothing in this shard decodes, and skipping would
    # loop for ever.
    ok, out = slot
    zero = tf.zeros_like(run)
    copies, run = tf.where(ok, run + 1, zero), tf.where(ok, zero, run + 1)
    check = tf.debugging.assert_less(run, tf.constant(2 * n, tf.int64), message=(
        f"{2 * n} examples in a row failed to decode: none of the {n} examples of "
        f"{data_config.name} {split!r} is a readable image"))
    with tf.control_dependencies([check]):
      return tf.identity(run), (ok, copies, out)

  def fill(ok, copies, out):
    del ok
    # The failed examples just before this one take copies of it, flagged as skipped.
    return {**{k: tf.repeat(v[None], copies, axis=0) for k, v in out.items()},
            "skipped": tf.cast(tf.range(copies) < copies - 1, tf.int32)}

  ds = _prepare_or_flag(ds, prepare, _placeholder(data_config, task))
  ds = ds.scan(tf.constant(0, tf.int64), count_failures).filter(lambda ok, *_: ok)
  ds = ds.map(fill, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
  return ds.batch(rows, drop_remainder=True)


def train_dataset(builder, data_config, *, global_batch: int, seed: int, start_step: int = 0):
  """Endless, shuffled, augmented batches of this host's share, starting at `start_step`.

  The split is cut into `data_config.num_shards` equal shards (None: one per process), each an
  independently shuffled stream that fills its own fixed rows of every global batch; each process
  reads its consecutive run of shards. So with num_shards fixed, the global batches are the same on
  any number of processes that divides it.
  """
  processes = jax.process_count()
  # The configs always set it (configs/common.py); a data config built by hand may leave it out.
  num_shards = data_config.get("num_shards") or processes
  plan.check_num_shards(num_shards, processes, global_batch)
  local_batch_size(global_batch)
  splits = tfds.even_splits(data_config.train_split, num_shards, drop_remainder=True)
  if not _num_examples(builder, splits[0]):
    raise ValueError(f"train split {data_config.train_split!r} of {data_config.name} has fewer "
                     f"examples than data.num_shards={num_shards}")
  mine = range(jax.process_index() * num_shards // processes,
               (jax.process_index() + 1) * num_shards // processes)
  streams = [_shard_stream(builder, data_config, splits[k], k, num_shards,
                           rows=global_batch // num_shards, seed=seed, start_step=start_step)
             for k in mine]
  ds = tf.data.Dataset.zip(tuple(streams)).map(
      lambda *parts: tf.nest.map_structure(lambda *x: tf.concat(x, axis=0), *parts))
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def stream_identity(builder, data_config, *, global_batch: int, seed: int, num_shards: int) -> dict:
  """What decides the train batches (the examples, order and augmentation of every step), as JSON:
  a run resumed with another identity would silently train on other batches than it began with."""
  split = data_config.train_split
  config = builder.builder_config
  identity = {"dataset": builder.name + (f"/{config.name}" if config else ""),
              "version": str(builder.version), "split": split,
              "num_examples": int(_num_examples(builder, split)), "global_batch": int(global_batch),
              "num_shards": int(num_shards), "seed": int(seed),
              "shuffle_buffer": int(data_config.shuffle_buffer), "order_scheme": ORDER_SCHEME,
              "train_preprocess": data_config.train_preprocess,
              "input_size": int(data_config.input_size)}
  # An image folder prepared again after a change keeps its name and version: its contents differ.
  if "fingerprint" in (builder.info.metadata or {}):
    identity["fingerprint"] = builder.info.metadata["fingerprint"]
  return identity


def eval_dataset(builder, data_config, *, global_batch: int):
  """(dataset, num_steps): this host's share, padded with mask=0 examples so that every host runs
  num_steps batches and each example of the split is counted exactly once across hosts."""
  split = data_config.eval_split
  batch = local_batch_size(global_batch)
  # split_for_jax_process gives the first hosts one example more when the split does not divide.
  per_host = math.ceil(_num_examples(builder, split) / jax.process_count())
  num_steps = math.ceil(per_host / batch)
  task = tasks.of_dataset(builder)

  def prepare(example):
    return {"image": preprocess_eval(_decode(example), data_config), **_targets(example, task)}

  def flag(ok, out):
    return {**out, "mask": ok, "skipped": tf.cast(tf.logical_not(ok), tf.int32)}

  ds = _read(builder, tfds.split_for_jax_process(split, drop_remainder=False))
  ds = _prepare_or_flag(ds, prepare, _placeholder(data_config, task)).map(flag)
  padding = tf.data.Dataset.from_tensors({**_placeholder(data_config, task),
                                          "mask": tf.constant(False),
                                          "skipped": tf.constant(0, tf.int32)}).repeat()
  ds = ds.concatenate(padding).take(num_steps * batch).batch(batch)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options()), num_steps


def _looked_in(builder, data_config) -> str:
  """Where the run looks for prepared data, and why there."""
  why = ("data.data_dir" if data_config.data_dir else "$TFDS_DATA_DIR"
         if os.environ.get("TFDS_DATA_DIR") else "TFDS's default; set $TFDS_DATA_DIR or data.data_dir")
  return f"{builder.data_dir_root} ({why})"


def _examples(sizes: dict[str, int], spec: str) -> int:
  """The examples a split spec ("train", "train[95%:]", ...) reads of splits of these sizes."""
  infos = {k: tfds.core.SplitInfo(name=k, shard_lengths=[n], num_bytes=0) for k, n in sizes.items()}
  return sum((sizes[a.splitname] if a.to is None else a.to) - (a.from_ or 0)
             for a in tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos))


def split_sizes(data_config) -> tuple[int, int, float | None, str]:
  """(train examples, eval examples, mean encoded bytes per train example or None, source).

  From the prepared TFDS dataset where the run will look for it; else from what the run will
  prepare (the demo, an image folder), or from plan.KNOWN_SPLITS (a plan for data prepared
  elsewhere, e.g. a pod's). Otherwise a FileNotFoundError with the command that prepares it.
  """
  builder = get_builder(data_config, prepare=False)
  name = data_config.name.split("/")[0]
  train_split, eval_split = data_config.train_split, data_config.eval_split
  if builder.is_prepared():
    splits = builder.info.splits
    train = splits[train_split]
    return (train.num_examples, splits[eval_split].num_examples,
            train.num_bytes / max(1, train.num_examples),
            f"from the dataset prepared in {_looked_in(builder, data_config)}")
  where = _looked_in(builder, data_config)
  manual_dir = data_config.get("manual_dir") or os.path.join(
      str(builder.data_dir_root), "downloads", "manual")
  # From files at hand (the demo, an image folder, AVA's image lists): the run prepares it.
  planned = getattr(builder, "planned_split_sizes", lambda _: None)(manual_dir)
  if planned:
    return (_examples(planned, train_split), _examples(planned, eval_split), None,
            f"{data_config.name} is not prepared yet in {where}; the run prepares it at start")
  missing = _missing_manual_download(builder, data_config, manual_dir)
  if name in plan.KNOWN_SPLITS:
    (train, size), (num_eval, _) = (plan.KNOWN_SPLITS[name][train_split],
                                    plan.KNOWN_SPLITS[name][eval_split])
    return train, num_eval, size, (f"published; not prepared in {where}" + (
        f". {missing}" if missing else "; the run prepares it from the manual download"))
  prepare = missing or ("prepare it with: " + prepare_command(data_config.name, builder))
  raise FileNotFoundError(f"{data_config.name} is not prepared in {where} and its split sizes "
                          f"are not known before it is; {prepare}")
