r"""Image quality assessment on AVA with a learned (or fixed) resizer: the paper's IQA experiment.

NIMA's head (a 10-way softmax over the scores 1..10, dropout 0.75 before it) on a backbone, trained
with the EMD loss (r = 2); the paper's baseline resizer is bicubic. Reads TFDS `ava` (see
resizer_jax/data/ava.py and docs/iqa.md), prepared on first use from the AVA download in
`data.manual_dir`. Two stages, as in the paper (a fixed-resizer baseline, then the learned resizer
fine-tuned jointly with it):

  # 1. The baseline: bicubic 448 -> 224, backbone from an ImageNet run, a fresh 10-way head.
  python -m resizer_jax.main --config=configs/ava.py:backbone=inception_v2,resizer=bicubic \
      --config.data.manual_dir=/data/ava --config.init_from=gs://BUCKET/runs/imagenet_inception_v2 \
      --workdir=gs://BUCKET/runs/ava_inception_v2_bicubic
  # 2. The learned resizer, backbone and head from stage 1, the resizer fresh.
  python -m resizer_jax.main --config=configs/ava.py:backbone=inception_v2,resizer=learned,finetune \
      --config.data.manual_dir=/data/ava --config.init_from=gs://BUCKET/runs/ava_inception_v2_bicubic \
      --workdir=gs://BUCKET/runs/ava_inception_v2_learned

Arguments: backbone=inception_v2|densenet121|efficientnet_b0 (the paper's three; any name in
resizer_jax.models.BACKBONES works), resizer=learned|control|muller|bicubic|bilinear|lanczos3|
nearest|area, input=448 (the resizer's input), target=224 (the backbone's), antialias=false, seed=0,
finetune (stage 2: the head comes from init_from too, and a 10x smaller learning rate).

Where it comes from. The paper (docs/paper.md): NIMA head, EMD r = 2, bicubic baseline, the
backbone initialised from a fixed-resizer baseline and fine-tuned jointly with the resizer. NIMA, as
third parties quote it (not checked against its PDF here): ImageNet-initialised backbone, dropout
0.75 before the 10-way dense layer, SGD with momentum 0.9. Our choices, because neither source gives
them or the trainer cannot follow them: one learning rate for all layers (NIMA uses 3e-7 for the
backbone and 3e-6 for the head, which needs per-layer rates), 1e-3 for stage 1 and 1e-4 for stage 2;
the classification recipe's x0.94 every 2 epochs; 20 epochs; the per-device batch of
configs/imagenet.py with the learning rate at a global batch of 256 and one warm-up epoch; train
crops as NIMA's (rescale, then a random square crop of 224/256 of it)
but keeping the aspect ratio, so that train and eval images are rescaled alike. The metrics
(resizer_jax/metrics.py) are PLCC and SRCC of the mean score -- raw, no logistic fit -- binary
accuracy at 5, mean EMD, and the correlations of the score's standard deviation.

The IQA rows of Table 1 as one staged sweep (each backbone's bicubic baseline from its ImageNet run,
then per seed the learned resizer and the controls fine-tuned from that baseline; `sweep` below):

  python -m resizer_jax.sweep --config=configs/ava.py:imagenet=gs://BUCKET/table1 \
      --workdir=gs://BUCKET/ava_table1 --config.data.manual_dir=/data/ava --dry_run

Sweep arguments: imagenet=DIR (required: the workdir of configs/imagenet.py's Table 1 sweep, whose
bilinear baselines start these; or DIR/{backbone}, any run per backbone, converted published
weights too: TF-slim's for inception_v2, docs/weights.md), table1=all|<backbone>[+...],
seeds=3, baselines=1. EfficientNet-b0 is not an ImageNet row of Table 1: train its ImageNet
baseline into the same DIR first, with configs/imagenet.py:table1=efficientnet_b0 (its fine-tunes
there are optional).
"""
import os

from resizer_jax import config_args

common = config_args.load_module(os.path.join(os.path.dirname(__file__), "common.py"))


def get_config(arg=None):
  arg = config_args.parse_arg(arg, backbone="inception_v2", resizer="learned", input=448, target=224,
                              antialias=False, seed=0, finetune=False, **SWEEP_ARGS)
  config = common.base()
  config.seed = arg["seed"]
  config.task = "iqa"

  config.data = common.data(
      name="ava",  # The `default` config: train = generic_ls_train, test = generic_test.
      # data.manual_dir: the AVA download (AVA.txt, aesthetics_image_lists/, images/).
      input_size=arg["input"],
      # The shorter side to input / eval_crop_fraction (NIMA: 256 for 224), then a random square.
      train_preprocess="resize_crop_flip",
      eval_crop_fraction=0.875,
      shuffle_buffer=10_000,
  )
  config.num_classes = 10  # The scores 1..10.

  config.resizer = common.resizer(arg["resizer"], arg["target"], arg["antialias"])
  config.backbone = common.backbone(arg["backbone"], dropout_rate=0.75)  # NIMA's dropout before the head.
  # Stage 1: an ImageNet run's backbone, whose 1000-way head does not fit (init_head=False).
  # Stage 2 (finetune): the stage-1 IQA run's backbone and head; the resizer starts fresh.
  config.init_head = arg["finetune"]

  config.num_epochs = 20.0
  config.num_train_steps = 0
  config.optimizer = common.optimizer(
      name="sgd",
      learning_rate=1e-4 if arg["finetune"] else 1e-3,
      weight_decay=4e-5,
      label_smoothing=0.0,  # Classification only; IQA trains on the EMD.
      warmup_epochs=1.0,
  )
  # The batch per device follows the hardware; learning_rate is the peak at a global batch of 256.
  config_args.follow_the_hardware(config, arg["input"], eval_every_epochs=1.0)
  config_args.evaluation(config)  # Running BatchNorm statistics, no EMA (docs/evaluation.md).
  if arg["imagenet"] and not arg["finetune"]:  # Stage 1 from the backbone's ImageNet run.
    config.init_from = _imagenet_run(arg["imagenet"], arg["backbone"])
  return config


def _imagenet_run(where: str, backbone: str) -> str:
  """DIR/{backbone} with the name filled in, or else the workdir of configs/imagenet.py's Table 1
  sweep, whose baseline point for `backbone` this is."""
  if "{backbone}" in where:
    return where.format(backbone=backbone)
  return f"{where.rstrip('/')}/backbone={backbone},resizer=bilinear,input=224,target=224,seed=0"


# The paper's Table 1, AVA PLCC (docs/paper.md), beside the sweep's results.
PAPER = {"inception_v2": {"bicubic": 0.662, "learned": 0.686},
         "densenet121": {"bicubic": 0.662, "learned": 0.683},
         "efficientnet_b0": {"bicubic": 0.642, "learned": 0.671}}
# Arguments of sweep() (get_config accepts them: the sweep's argument is every point's).
SWEEP_ARGS = dict(table1="all", seeds=3, baselines=1, imagenet="")
# Fine-tuned from each baseline: the learned resizer, bicubic for the same epochs, the capacity
# control and MULLER (each on the bicubic resize, the paper's IQA baseline).
FINETUNES = ("learned", "bicubic", "control", "muller")


def sweep(add, arg=None):
  """Table 1's AVA rows: per backbone a bicubic 448 -> 224 baseline (the paper's IQA baseline
  resizer) whose backbone comes from `imagenet`, with a fresh 10-way head; then per seed, from it,
  the fine-tunes of FINETUNES (stage 2: backbone and head from the baseline)."""
  a = config_args.parse_arg(arg, **SWEEP_ARGS)
  if not a["imagenet"]:
    raise ValueError("configs/ava.py's sweep needs imagenet=DIR: the ImageNet Table 1 sweep's "
                     "workdir (or DIR/{backbone}), whose runs start the baselines' backbones")
  backbones = tuple(PAPER) if a["table1"] == "all" else tuple(a["table1"].split("+"))
  for backbone in backbones:
    bases = [add(backbone=backbone, resizer="bicubic", seed=s) for s in range(a["baselines"])]
    for resizer in FINETUNES:
      for seed in range(a["seeds"]):
        add(backbone=backbone, resizer=resizer, finetune=True, seed=seed,
            init_from=bases[seed % len(bases)])
