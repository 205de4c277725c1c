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
import os

from resizer_jax import config_args

common = config_args.load_module(os.path.join(os.path.dirname(__file__), "common.py"))


def get_config(arg=None):
  arg = config_args.parse_arg(arg, resizer="learned", input=128, target=16, antialias=False, seed=0,
                              ema=0.0, recompute=0, variants=False, eval_every=100,
                              epochs=20.0, tiny=False)
  config = common.base()
  config.seed = arg["seed"]
  config.task = "iqa"

  # The demo configs of `ava` write their own release; they read no manual dir.
  config.data = common.demo_data("ava/demo_tiny" if arg["tiny"] else "ava/demo", arg["input"])
  config.num_classes = 10  # The scores 1..10.

  config.resizer = common.resizer(arg["resizer"], arg["target"], arg["antialias"])
  config.backbone = common.backbone("resnet_tiny", dropout_rate=0.75)  # NIMA's dropout before the head.

  config.batch_size = 8 if arg["tiny"] else 32
  config.eval_batch_size = 8 if arg["tiny"] else 64
  # label_smoothing is classification's; IQA trains on the EMD.
  return common.demo_training(config, arg, label_smoothing=0.0)


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
