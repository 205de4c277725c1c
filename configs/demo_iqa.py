r"""The embedded IQA demo: learned resizer + a small ResNet + NIMA's head on `ava/demo`, on a CPU.

`ava/demo` is a stand-in for AVA, generated offline on first use by the real `ava` builder
(resizer_jax/data/demo_ava.py): 256 px crops of photographs shipped in scikit-image/matplotlib,
hazed (kept by any downscale) and given one fine degradation (blur, noise, JPEG, downscale; lost by
an 8x one), each at a random strength, with vote histograms SIMULATED around a hidden score that
both strengths lower by half each. **It measures technical quality, not aesthetics**, and no human
rated these images. Train and test crops come from different photographs (704 / 256 images).
Training reads random `input` px crops (128 by default) of the stored 256 px images -- crops, not
rescales, so the degradations survive -- and the resizer takes them to `target` px (16 by default).

  python -m resizer_jax.main --config=configs/demo_iqa.py --workdir=runs/demo_iqa
  python -m resizer_jax.main --config=configs/demo_iqa.py:resizer=bicubic --workdir=runs/demo_iqa_bicubic

Arguments (comma-separated): resizer=learned|control|muller|bicubic|bilinear|lanczos3|nearest|area
(bicubic is the paper's IQA baseline; muller: MULLER's four parameters, see MullerResizer),
input=128, target=16, antialias=false, seed=0, epochs=20, eval_every=100, ema=0, recompute=0,
variants (as in configs/demo.py), tiny (12 steps on the `ava/demo_tiny` build: 22 train / 8 test
images, for tests).
"""
import ml_collections

from resizer_jax import config_args


def get_config(arg=None):
  arg = config_args.parse_arg(arg, resizer="learned", input=128, target=16, antialias=False, seed=0,
                              ema=0.0, recompute=0, variants=False, eval_every=100,
                              epochs=20.0, tiny=False)
  config = ml_collections.ConfigDict()
  config.seed = arg["seed"]
  config.dtype = "float32"
  config.task = "iqa"

  config.data = dict(
      # The demo configs of `ava` write their own release; they read no manual dir.
      name="ava/demo_tiny" if arg["tiny"] else "ava/demo",
      data_dir=ml_collections.config_dict.placeholder(str),  # None: ~/tensorflow_datasets or $TFDS_DATA_DIR.
      manual_dir=ml_collections.config_dict.placeholder(str),  # Used by `ava` (real AVA) only.
      train_split="train",
      eval_split="test",
      input_size=arg["input"],
      train_preprocess="crop_flip",  # Flips only: rescaling would alter the degradations.
      # The stored images are 256 px: eval takes their central `input` px at native resolution, as
      # train takes random ones. (1.0 would first shrink the whole image to `input` px, weakening
      # the blur and noise the model is asked about.)
      eval_crop_fraction=arg["input"] / 256,
      shuffle_buffer=2048,
      num_shards=ml_collections.config_dict.placeholder(int),  # None: one per process (README).
  )
  config.num_classes = 10  # The scores 1..10.

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
  config.backbone = dict(name="resnet_tiny", dropout_rate=0.75)  # NIMA's dropout before the head.
  config.init_from = ml_collections.config_dict.placeholder(str)
  config.init_head = True  # A warm start here would come from another IQA run: same 10-way head.

  config.mesh = (("data", -1),)  # Add ("fsdp", k) to split the state k ways (README).
  config.batch_size = 8 if arg["tiny"] else 32
  config.eval_batch_size = 8 if arg["tiny"] else 64
  config.num_epochs = arg["epochs"]
  config.num_train_steps = 12 if arg["tiny"] else 0  # 0: num_epochs decides.
  # AdamW as in configs/demo.py: from scratch on a few hundred images, SGD barely moves in a CPU's
  # few hundred steps.
  config.optimizer = dict(
      name="adamw",
      learning_rate=1e-3,
      momentum=0.9,  # Used by sgd only.
      weight_decay=1e-4,
      label_smoothing=0.0,  # Classification only; IQA trains on the EMD.
      decay_rate=0.94,
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
  """{bicubic, learned, muller} x 5 seeds at 16 px, 15 runs.

    python -m resizer_jax.sweep --workdir=runs/demo_iqa_sweep \
        --config=configs/demo_iqa.py:input=96,epochs=12,eval_every=0,ema=0.99,recompute=8,variants

  The arguments after the colon apply to every point (see configs/demo.py's sweep); its results
  are docs/demo_iqa_sweep/. With `tiny`
  (configs/demo_iqa.py:tiny): 2 sizes x {bicubic, learned} x 2 seeds, for tests.
  """
  from resizer_jax.sweep import grid  # pylint: disable=g-import-not-at-top
  if "tiny" in (arg or "").split(","):
    grid(add, target=[8, 16], resizer=["bicubic", "learned"], seed=[0, 1])
  else:
    grid(add, target=[16], resizer=["bicubic", "learned", "muller"], seed=[0, 1, 2, 3, 4])
