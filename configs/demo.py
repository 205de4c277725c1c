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
import os

from resizer_jax import config_args

common = config_args.load_module(os.path.join(os.path.dirname(__file__), "common.py"))


def get_config(arg=None):
  arg = config_args.parse_arg(arg, resizer="learned", input=128, target=16, antialias=False, seed=0,
                              ema=0.0, recompute=0, variants=False, eval_every=100,
                              epochs=12.0, tiny=False)
  config = common.base()
  config.seed = arg["seed"]

  config.data = common.demo_data("resizer_demo/tiny" if arg["tiny"] else "resizer_demo/full",
                                 arg["input"])
  if arg["tiny"]:  # The tests train tiny on 1 and on 2 processes: the same batches on both.
    config.data.num_shards = 2
  # num_classes stays None: the dataset's (its 4 degradations, or an image folder's classes).

  config.resizer = common.resizer(arg["resizer"], arg["target"], arg["antialias"])
  config.backbone = common.backbone("resnet_tiny")

  config.batch_size = 16 if arg["tiny"] else 32
  config.eval_batch_size = 16 if arg["tiny"] else 64
  return common.demo_training(config, arg, label_smoothing=0.1)


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
