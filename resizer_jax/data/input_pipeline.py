"""tf.data input: TFDS examples -> per-host batches of uint8 images at the resizer's input resolution.

The pipeline produces the *high-resolution* images; the (learned or fixed) resizer runs on device, so
both see exactly the same pixels. Shipping uint8 keeps host-to-device traffic 4x below float32.

Determinism: the train order is a function of (seed, epoch) only and every random augmentation is a
stateless op seeded by (seed, example counter), so a run restarted at step N reads exactly the
examples, in the same order and with the same crops and flips, that an uninterrupted run reads from
step N on. The restart skips the earlier examples of the current epoch (reading, not decoding, them).
"""
import math

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from resizer_jax.data import demo  # pylint: disable=unused-import  # Registers `resizer_demo`.

TRAIN_PREPROCESS = ("crop_flip", "inception_crop")


def get_builder(data_config, num_classes: int | None = None, *, prepare: bool = True):
  """The TFDS builder named by `data_config.name`; built on first use if `prepare`."""
  builder = tfds.builder(data_config.name, data_dir=data_config.get("data_dir"))
  if prepare:
    builder.download_and_prepare()
  label = builder.info.features["label"]
  if num_classes is not None and getattr(label, "num_classes", num_classes) != num_classes:
    raise ValueError(f"config.num_classes={num_classes} but {data_config.name} has "
                     f"{label.num_classes} classes")
  return builder


def _decode(example):
  image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _resize(image, size):
  return tf.cast(tf.clip_by_value(tf.round(
      tf.image.resize(image, size, method="bilinear", antialias=True)), 0, 255), tf.uint8)


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
  else:
    raise ValueError(f"unknown train_preprocess {name!r}; valid: {', '.join(TRAIN_PREPROCESS)}")
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def preprocess_eval(image, data_config):
  """Resize the shorter side to input_size / crop_fraction, then take the central square."""
  size = data_config.input_size
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / data_config.eval_crop_fraction / tf.reduce_min(shape)
  new_hw = tf.cast(tf.round(shape * scale), tf.int32)
  image = tf.cond(tf.reduce_all(new_hw == tf.shape(image)[:2]), lambda: image,
                  lambda: _resize(image, new_hw))
  return tf.image.resize_with_crop_or_pad(image, size, size)


def _read(builder, split):
  return builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(skip_prefetch=True))


def _num_examples(builder, split) -> int:
  return builder.info.splits[split].num_examples


def local_batch_size(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ValueError(f"batch_size {global_batch} is not divisible by the number of processes "
                     f"({jax.process_count()})")
  return global_batch // jax.process_count()


def train_dataset(builder, data_config, *, global_batch: int, seed: int, start_step: int = 0):
  """Endless, shuffled, augmented batches of this host's share, starting at `start_step`."""
  split = tfds.split_for_jax_process(data_config.train_split, drop_remainder=True)
  n = _num_examples(builder, split)
  batch = local_batch_size(global_batch)
  first_epoch, offset = divmod(start_step * batch, n)
  examples = _read(builder, split)
  buffer = min(n, data_config.shuffle_buffer)

  def epoch(e):
    return examples.shuffle(buffer, seed=seed + e)

  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
  ds = ds.enumerate(start=first_epoch * n).skip(offset)

  def prepare(i, example):
    counter = tf.stack([tf.constant(seed, tf.int64), i])
    return {"image": preprocess_train(_decode(example), counter, data_config),
            "label": tf.cast(example["label"], tf.int32)}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(builder, data_config, *, global_batch: int):
  """(dataset, num_steps): this host's share, padded with mask=0 examples so that every host runs
  num_steps batches and each example of the split is counted exactly once across hosts."""
  split = data_config.eval_split
  batch = local_batch_size(global_batch)
  # split_for_jax_process gives the first hosts one example more when the split does not divide.
  per_host = math.ceil(_num_examples(builder, split) / jax.process_count())
  num_steps = math.ceil(per_host / batch)
  size = data_config.input_size

  def prepare(example):
    return {"image": preprocess_eval(_decode(example), data_config),
            "label": tf.cast(example["label"], tf.int32), "mask": tf.constant(True)}

  ds = _read(builder, tfds.split_for_jax_process(split, drop_remainder=False))
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({"image": tf.zeros([size, size, 3], tf.uint8),
                                          "label": tf.constant(0, tf.int32),
                                          "mask": tf.constant(False)}).repeat()
  ds = ds.concatenate(padding).take(num_steps * batch).batch(batch)
  return ds.prefetch(tf.data.AUTOTUNE), num_steps
