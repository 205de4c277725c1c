"""What the configs share: every field's default, and the blocks they all hold.

A config starts from `base()` and sets what it chooses. The trainer reads each field as `config.x`
with no default of its own, so that a locked config (`--config.x=...`) refuses a misspelt field
instead of silently training without it. The config files load this one by path, as they are
loaded themselves (configs/ is no package):

  common = config_args.load_module(os.path.join(os.path.dirname(__file__), "common.py"))
"""
from ml_collections import config_dict

from resizer_jax import config_args


def base() -> config_dict.ConfigDict:
  """The fields a config may leave as they are."""
  config = config_dict.ConfigDict()
  config.task = "classification"  # Or "iqa": what each trains and reports is resizer_jax/tasks.py.
  # The head's width; None: the dataset's classes (an image folder's class sub-folders).
  config.num_classes = config_dict.placeholder(int)
  # "auto": bfloat16 on GPU/TPU (params, optimiser state and loss stay float32), float32 on a CPU.
  config.dtype = "float32"
  # Warm start: a run's workdir whose backbone (and head) initialise this one; the resizer starts
  # fresh. The paper fine-tunes from a baseline trained with a fixed resizer.
  config.init_from = config_dict.placeholder(str)
  config.init_head = True  # False: the head starts fresh too (e.g. a 10-way IQA head).
  # How pixels are standardised before the resizer (resizer_jax.models.NORMALIZATIONS: imagenet,
  # or inception for TF-slim's [-1, 1]); what the weights were trained on. None: init_from's (a
  # converted TF-slim checkpoint's is inception), else imagenet (resizer_jax/preflight.py).
  config.normalization = config_dict.placeholder(str)
  # (axis, size) pairs over all devices, -1 = the rest; the batch is split over every axis. Add
  # ("fsdp", k) to split large parameters and optimiser state k ways instead of replicating them.
  config.mesh = (("data", -1),)
  # > 0: the batch per device, times the device count the global batch (then batch_size=0).
  config.per_device_batch_size = 0
  config.per_device_eval_batch_size = 0
  # > 0: the cadences in epochs, which then decide over the *_every_steps.
  config.log_every_epochs = 0.0
  config.eval_every_epochs = 0.0
  config.checkpoint_every_epochs = 0.0
  config.max_checkpoints_to_keep = 3
  config.num_pictures = 4  # Eval images shown as original | baseline | learned.
  # A step whose loss or gradients are not finite is dropped; then "stop" the run, or "skip" it
  # and go on, up to max_nonfinite_in_row such steps in a row (resizer_jax/nonfinite.py).
  config.nonfinite = "stop"
  config.max_nonfinite_in_row = 10
  return config


def data(**fields) -> dict:
  """config.data: `fields` (name, input_size, preprocessing, shuffle_buffer) over what every
  dataset has."""
  return {
      "data_dir": config_dict.placeholder(str),  # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
      # A manual download (e.g. ILSVRC2012_img_{train,val}.tar), read once to prepare the dataset;
      # None: <data_dir>/downloads/manual.
      "manual_dir": config_dict.placeholder(str),
      "train_split": "train",
      "eval_split": "test",
      # Independently shuffled streams that split every batch, divided among the processes. Fixed
      # (e.g. 64), the batches are the same on any number of processes that divides it. None: one
      # per process.
      "num_shards": config_dict.placeholder(int),
      **fields,
  }


def backbone(name: str, **fields) -> dict:
  """config.backbone: the backbone `name` (resizer_jax.models.BACKBONES) and its options, None for
  the backbone's default, so that each can be set from the command line (--config.backbone.x=v).
  A warm start carries the source run's bn_epsilon when it is left None (resizer_jax/preflight.py)."""
  options = {k: config_dict.placeholder(float) for k in ("bn_epsilon", "bn_momentum", "dropout_rate")}
  return dict(name=name, **{**options, **fields})


def resizer(name: str, target: int, antialias: bool) -> dict:
  """config.resizer: the resizer `name` to target x target px."""
  return dict(
      name=name,
      output_size=(target, target),
      antialias=antialias,
      # Used by resizer=learned|control only (interpolation by muller too).
      num_filters=16,
      num_res_blocks=1,
      interpolation="bilinear",
      zero_init_tail=False,
      # resizer=muller (the base resize is `interpolation`): its published weights by name
      # (resizer_jax.models.resizer.MULLER_PRETRAINED: resnet50); None: zeros, the base resize.
      muller_pretrained=config_dict.placeholder(str),
      # How the learned resizer's full-resolution convolutions are computed (models/conv.py);
      # "auto": the fastest measured on this platform. The same parameters and outputs under each.
      formulation="auto",
  )


def optimizer(**fields) -> dict:
  """config.optimizer: `fields` (name, learning_rate, weight_decay, label_smoothing,
  warmup_epochs) over the paper's staircase decay."""
  return {
      "momentum": 0.9,  # Used by sgd only.
      "decay_rate": 0.94,  # x0.94 every 2 epochs, as in the paper.
      "decay_epochs": 2.0,
      # > 0: learning_rate is the peak at this global batch, scaled linearly with the batch.
      "reference_batch": 0,
      **fields,
  }


# --- The CPU demos (configs/demo.py, configs/demo_iqa.py): 256 px images whose label is a degradation.
def demo_data(name: str, input_size: int) -> dict:
  """config.data of a demo: random `input_size` px crops of the stored 256 px images, not rescales,
  so that the degradations survive."""
  return data(
      name=name,
      input_size=input_size,
      train_preprocess="crop_flip",  # Flips only: rescaling would alter the degradations.
      # The stored images are 256 px: eval takes their central `input` px at native resolution, as
      # train takes random ones. (1.0 would first shrink the whole image to `input` px, weakening
      # the blur and noise the model is asked about.)
      eval_crop_fraction=input_size / 256,
      shuffle_buffer=2048,
  )


def demo_training(config, arg, *, label_smoothing: float):
  """A demo's optimiser, steps, cadences and eval options, from its arguments (epochs, eval_every,
  ema, recompute, variants, tiny: 12 steps)."""
  config.num_epochs = arg["epochs"]
  config.num_train_steps = 12 if arg["tiny"] else 0  # 0: num_epochs decides.
  # Not the paper's SGD: from scratch on ~1k images, SGD (lr 0.05 or 0.01) stays near chance for
  # the few hundred steps a CPU demo affords, where AdamW learns. configs/imagenet.py uses SGD.
  config.optimizer = optimizer(
      name="adamw",
      learning_rate=1e-3,
      weight_decay=1e-4,
      label_smoothing=label_smoothing,
      warmup_epochs=0.5,
  )
  config.log_every_steps = 4 if arg["tiny"] else 20
  config.eval_every_steps = 6 if arg["tiny"] else arg["eval_every"]  # 0: at the end only.
  config.checkpoint_every_steps = 6 if arg["tiny"] else 100
  config_args.evaluation(config, ema_decay=arg["ema"], bn_recompute_batches=arg["recompute"],
                         all_variants=arg["variants"])
  return config
