r"""The embedded default: learned resizer + a small ResNet on `resizer_demo`, on a CPU in minutes.

`resizer_demo` is built offline on first use from photographs shipped in scikit-image/matplotlib;
the label is which of four degradations (clean, blur, noise, jpeg) a 256 px crop carries
(see resizer_jax/data/demo.py). Training takes random `input` px crops (128 by default) of the stored
256 px images -- crops, not rescales, so the degradations survive -- and the resizer takes them to
`target` px (16 by default: an 8x downscale).

  python -m resizer_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m resizer_jax.main --config=configs/demo.py:resizer=bilinear --workdir=runs/demo_bilinear

Arguments (comma-separated): resizer=learned|control|muller|bilinear|bicubic|lanczos3|nearest|area
(control: the same layers applied after a bilinear downscale, see LearnedResizer.features_at_target;
muller: MULLER's four parameters, see MullerResizer), input=128, target=16, antialias=false, seed=0,
epochs=12, eval_every=100 (steps; 0: at the end only), ema=0 (decay of the parameters' EMA that eval
uses; 0: none), recompute=0 (train batches to recompute BatchNorm statistics over before each eval;
0: the running ones), variants (the last eval also reports every eval variant; docs/evaluation.md),
tiny (12 steps on the 44-example `tiny` build, for tests).
"""
import ml_collections

from resizer_jax import config_args


def get_config(arg=None):
  arg = config_args.parse_arg(arg, resizer="learned", input=128, target=16, antialias=False, seed=0,
                              ema=0.0, recompute=0, variants=False, eval_every=100,
                              epochs=12.0, tiny=False)
  config = ml_collections.ConfigDict()
  config.seed = arg["seed"]
  config.dtype = "float32"

  config.data = dict(
      name="resizer_demo/tiny" if arg["tiny"] else "resizer_demo/full",
      data_dir=ml_collections.config_dict.placeholder(str),  # None: ~/tensorflow_datasets or $TFDS_DATA_DIR.
      train_split="train",
      eval_split="test",
      input_size=arg["input"],
      train_preprocess="crop_flip",  # Flips only: rescaling would alter the degradations.
      # The stored images are 256 px: eval takes their central `input` px at native resolution, as
      # train takes random ones. (1.0 would first shrink the whole image to `input` px, weakening
      # the blur and noise the model is asked about.)
      eval_crop_fraction=arg["input"] / 256,
      shuffle_buffer=2048,
      # Independently shuffled streams that split every batch, read by as many processes as divide
      # it: fixed, the batches are the same on any such number of processes (the tests train tiny on
      # 1 and on 2). None: one per process.
      num_shards=2 if arg["tiny"] else ml_collections.config_dict.placeholder(int),
  )
  config.num_classes = 4

  config.resizer = dict(
      name=arg["resizer"],
      output_size=(arg["target"], arg["target"]),
      antialias=arg["antialias"],
      # Used by resizer=learned|control only (interpolation by muller too).
      num_filters=16,
      num_res_blocks=1,
      interpolation="bilinear",
      zero_init_tail=False,
      # resizer=muller (the base resize is `interpolation`): its published weights by name
      # (resizer_jax.models.resizer.MULLER_PRETRAINED: resnet50); None: zeros, the base resize.
      muller_pretrained=ml_collections.config_dict.placeholder(str),
      # How the learned resizer's full-resolution convolutions are computed (models/conv.py);
      # "auto": the fastest measured on this platform. The same parameters and outputs under each.
      formulation="auto",
  )
  config.backbone = dict(name="resnet_tiny")
  # Warm start: a run's workdir whose backbone (and head) initialise this one; the resizer starts
  # fresh. The paper fine-tunes from a baseline trained with a fixed resizer.
  config.init_from = ml_collections.config_dict.placeholder(str)

  # (axis, size) pairs over all devices, -1 = the rest; the batch is split over every axis. Add
  # ("fsdp", k) to split large parameters and optimiser state k ways instead of replicating them.
  config.mesh = (("data", -1),)
  config.batch_size = 16 if arg["tiny"] else 32
  config.eval_batch_size = 16 if arg["tiny"] else 64
  config.num_epochs = arg["epochs"]
  config.num_train_steps = 12 if arg["tiny"] else 0  # 0: num_epochs decides.
  # Not the paper's SGD: from scratch on ~1k images, SGD (lr 0.05 or 0.01) stays near chance for
  # the few hundred steps a CPU demo affords, where AdamW learns. configs/imagenet.py uses SGD.
  config.optimizer = dict(
      name="adamw",
      learning_rate=1e-3,
      momentum=0.9,  # Used by sgd only.
      weight_decay=1e-4,
      label_smoothing=0.1,
      decay_rate=0.94,  # x0.94 every 2 epochs, as in the paper.
      decay_epochs=2.0,
      warmup_epochs=0.5,
  )

  config.log_every_steps = 4 if arg["tiny"] else 20
  config.eval_every_steps = 6 if arg["tiny"] else arg["eval_every"]  # 0: at the end only.
  config.checkpoint_every_steps = 6 if arg["tiny"] else 100
  config.max_checkpoints_to_keep = 3
  config.num_pictures = 4  # Eval images shown as original | baseline | learned.
  config_args.evaluation(config, ema_decay=arg["ema"], bn_recompute_batches=arg["recompute"],
                         all_variants=arg["variants"])
  return config


def sweep(add, arg=None):
  """Target sizes x {bilinear, learned, capacity control, muller} x 5 seeds, 40 runs.

    python -m resizer_jax.sweep --workers=2 --workdir=runs/demo_sweep \
        --config=configs/demo.py:input=96,epochs=8,eval_every=0

  The arguments after the colon apply to every point: shortened to fit a CPU (30 min on 2
  cores), one eval at the end. Its results are docs/demo_sweep/ (with `,ema=0.99,recompute=8,variants`
  also every eval variant of docs/evaluation.md, the same accuracies bit for bit under the default
  one, in 39 min). With `tiny` (configs/demo.py:tiny): 2 sizes x {bilinear, learned} x 2 seeds,
  for tests.
  """
  from resizer_jax.sweep import grid  # pylint: disable=g-import-not-at-top
  if "tiny" in (arg or "").split(","):
    grid(add, target=[8, 16], resizer=["bilinear", "learned"], seed=[0, 1])
  else:
    grid(add, target=[16, 32], resizer=["bilinear", "learned", "control", "muller"],
         seed=[0, 1, 2, 3, 4])
