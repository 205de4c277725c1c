r"""ImageNet-1k classification with a learned (or fixed) resizer in front of a backbone: the paper's recipe.

Reads TFDS `imagenet2012` from $TFDS_DATA_DIR (a local path or gs://...); see docs/data.md
(preparing it, the exact preprocessing, corrupt files). On a pod: launch/tpu.sh.

  python -m resizer_jax.main --config=configs/imagenet.py:backbone=resnet50,input=448,target=224 \
      --workdir=gs://BUCKET/runs/r50_learned_448
  python -m resizer_jax.main --config=configs/imagenet.py:resizer=bilinear,input=448 --workdir=...

Arguments: backbone=resnet50 (see resizer_jax.models.BACKBONES), resizer=learned|control|muller|
bilinear|bicubic|lanczos3|nearest|area (muller: MULLER, Tu et al. 2023, four parameters; its
published ResNet-50 values with --config.resizer.muller_pretrained=resnet50),
input=224|256|320|368|448 (the resizer's input, i.e. the crop resolution), target=224 (the
backbone's input), antialias=false, seed=0, finetune (the paper's 0.005 learning rate for a backbone
initialised from a trained baseline).

The batch follows the hardware: `per_device_batch_size` (by input size, resizer_jax/config_args.py)
times the device count, and the learning rate scales with it (0.05 at a global batch of 256).
`--plan --devices=N [--processes=P]` prints what a run on N devices does. bfloat16 on accelerators.
Where the paper is silent we say so: the per-device batches, the reference batch of 256, the
warm-up and the epoch counts are our choices (the batch shrinks as the input grows, as the paper
says it does); the rest follows docs/paper.md.

Table 1 (ImageNet rows) as one staged sweep (`sweep` below; docs/launch.md for the launchers):

  python -m resizer_jax.sweep --config=configs/imagenet.py --workdir=gs://BUCKET/table1 \
      --plan --devices=16 --processes=4 --throughput=docs/throughput/h200.jsonl   # v4-32: the cost
  python -m resizer_jax.sweep --config=configs/imagenet.py --workdir=gs://BUCKET/table1 \
      --launch=tpu --launch_args=--zone=us-central2-b,--accelerator=v4-32   # then --collect
  # One row: --grid is not for staged sweeps; give the row's backbone instead:
  python -m resizer_jax.sweep --config=configs/imagenet.py:table1=resnet50 --workdir=... --dry_run
  # The rehearsal of one row on a CPU (fake ILSVRC, tests/test_table1.py):
  python -m resizer_jax.sweep --config=configs/imagenet.py:tiny,table1=mobilenet_v2 \
      --workdir=runs/table1_tiny \
      --config.data.data_dir=DIR --config.data.manual_dir=MANUAL

Sweep arguments: table1=all|<backbone>[+<backbone>...], seeds=3 (fine-tune seeds), baselines=1
(baseline seeds; fine-tune seed s starts from baseline s mod baselines), inputs=448 (the fine-tunes'
resizer inputs, e.g. 224+320+448), pretrained=DIR/{backbone} (baselines start from converted
published weights, `python -m resizer_jax.convert`, instead of from scratch: torchvision's, or
TF-slim's for inception_v2, whose stem and [-1, 1] inputs the runs take from it; docs/weights.md).
"""
import os

from resizer_jax import config_args

common = config_args.load_module(os.path.join(os.path.dirname(__file__), "common.py"))


def get_config(arg=None):
  arg = config_args.parse_arg(arg, backbone="resnet50", resizer="learned", input=448, target=224,
                              antialias=False, seed=0, finetune=False, tiny=False, **SWEEP_ARGS)
  config = common.base()
  config.seed = arg["seed"]

  config.data = common.data(
      name="imagenet2012",
      eval_split="validation",
      input_size=arg["input"],
      train_preprocess="inception_crop",
      eval_crop_fraction=0.875,
      shuffle_buffer=10_000,
  )
  config.num_classes = 1000

  config.resizer = common.resizer(arg["resizer"], arg["target"], arg["antialias"])
  config.backbone = common.backbone(arg["backbone"])

  config.num_epochs = 10.0 if arg["finetune"] else 90.0
  config.num_train_steps = 0
  config.optimizer = common.optimizer(
      name="sgd",
      # The peak at a global batch of 256 (reference_batch), scaled linearly with the batch.
      learning_rate=0.005 if arg["finetune"] else 0.05,
      weight_decay=4e-5,
      label_smoothing=0.1,
      # Large batches need the linear warm-up (Goyal et al., 2017: 5 epochs).
      warmup_epochs=1.0 if arg["finetune"] else 5.0,
  )
  config_args.follow_the_hardware(config, arg["input"], eval_every_epochs=5.0)
  config_args.evaluation(config)  # Running BatchNorm statistics, no EMA (docs/evaluation.md).
  if arg["pretrained"] and not arg["finetune"]:  # A baseline from published weights.
    config.init_from = arg["pretrained"].format(backbone=arg["backbone"])
  if arg["tiny"]:
    _tiny(config, arg["finetune"])
  return config


def _tiny(config, finetune: bool):
  """CI-sized: a few steps on the fake ILSVRC2012 (resizer_jax/data/imagenet_fixture.py), float32,
  a global batch of 8 on any device count that divides it."""
  config.dtype = "float32"
  config.per_device_batch_size = config.per_device_eval_batch_size = 0
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = 4 if finetune else 8
  config.eval_every_epochs = config.checkpoint_every_epochs = 0.0
  config.log_every_steps = 4
  config.data.shuffle_buffer = 64
  config.num_pictures = 0


# The paper's Table 1, ImageNet top-1 error in percent (docs/paper.md), beside the sweep's results.
PAPER = {"inception_v2": {"bilinear": 26.7, "learned": 24.0},
         "densenet121": {"bilinear": 33.1, "learned": 29.8},
         "resnet50": {"bilinear": 24.7, "learned": 23.0},
         "mobilenet_v2": {"bilinear": 29.5, "learned": 28.4}}
# Arguments of sweep() (get_config accepts and ignores them, so that the sweep's argument is every
# point's): see the module docstring.
SWEEP_ARGS = dict(table1="all", seeds=3, baselines=1, inputs="448", pretrained="")
# Fine-tuned from each baseline: the learned resizer and the controls an honest reader needs.
FINETUNES = ("learned", "bilinear", "control", "muller")


def sweep(add, arg=None):
  """Table 1's ImageNet rows. Per backbone a baseline with the fixed bilinear resizer at input 224,
  224 -> 224: the resolution these backbones are conventionally trained and reported at, which is
  what the paper's baseline rows are (it trains its baselines with bilinear resizing and fine-tunes
  the resizer from them). Then, per seed and from that baseline, a fine-tune at each of `inputs`
  -> 224 of: the learned resizer; bilinear, fine-tuned for the same epochs (extra training is not
  credited to the resizer); the capacity control (the same layers after the bilinear downscale);
  MULLER. `tiny`: resnet_tiny and mobilenet_v2 (or table1's backbones), learned and bilinear
  fine-tunes, 2 seeds, 64 -> 32 px (baselines at 32 -> 32).
  """
  a = config_args.parse_arg(arg, tiny=False, **SWEEP_ARGS)
  if a["table1"] != "all":
    backbones = tuple(a["table1"].split("+"))
  else:
    backbones = ("resnet_tiny", "mobilenet_v2") if a["tiny"] else tuple(PAPER)
  seeds = 2 if a["tiny"] and a["seeds"] == SWEEP_ARGS["seeds"] else a["seeds"]
  target = 32 if a["tiny"] else 224
  inputs = (64,) if a["tiny"] else tuple(int(i) for i in a["inputs"].split("+"))
  for backbone in backbones:
    bases = [add(backbone=backbone, resizer="bilinear", input=target, target=target, seed=s)
             for s in range(a["baselines"])]
    for size in inputs:
      for resizer in FINETUNES[:2] if a["tiny"] else FINETUNES:
        for seed in range(seeds):
          add(backbone=backbone, resizer=resizer, input=size, target=target, finetune=True,
              seed=seed, init_from=bases[seed % len(bases)])
