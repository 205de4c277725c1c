r"""ImageNet-1k classification with a learned (or fixed) resizer in front of a backbone: the paper's recipe.

Reads TFDS `imagenet2012` from $TFDS_DATA_DIR (a local path or gs://...); see README "ImageNet" and
docs/data.md (preparing it, the exact preprocessing, corrupt files). On a pod: launch/tpu.sh.

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
"""
import ml_collections

from resizer_jax import config_args


def get_config(arg=None):
  arg = config_args.parse_arg(arg, backbone="resnet50", resizer="learned", input=448, target=224,
                              antialias=False, seed=0, finetune=False)
  config = ml_collections.ConfigDict()
  config.seed = arg["seed"]

  config.data = dict(
      name="imagenet2012",
      data_dir=ml_collections.config_dict.placeholder(str),  # None: $TFDS_DATA_DIR.
      # ILSVRC2012_img_{train,val}.tar, read once to prepare; None: <data_dir>/downloads/manual.
      manual_dir=ml_collections.config_dict.placeholder(str),
      train_split="train",
      eval_split="validation",
      input_size=arg["input"],
      train_preprocess="inception_crop",
      eval_crop_fraction=0.875,
      shuffle_buffer=10_000,
      # Shuffled streams that split each batch, divided among the processes (None: one per
      # process). Fix it, e.g. 64, to read the same batches on any process count that divides it.
      num_shards=ml_collections.config_dict.placeholder(int),
  )
  config.num_classes = 1000

  config.resizer = dict(
      name=arg["resizer"],
      output_size=(arg["target"], arg["target"]),
      antialias=arg["antialias"],
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
  config.backbone = dict(name=arg["backbone"])
  # Warm start: a run's workdir whose backbone (and head) initialise this one; the resizer starts
  # fresh. The paper fine-tunes from a baseline trained with a fixed resizer.
  config.init_from = ml_collections.config_dict.placeholder(str)

  config.num_epochs = 10.0 if arg["finetune"] else 90.0
  config.num_train_steps = 0
  config.optimizer = dict(
      name="sgd",
      # The peak at a global batch of 256 (reference_batch), scaled linearly with the batch.
      learning_rate=0.005 if arg["finetune"] else 0.05,
      momentum=0.9,
      weight_decay=4e-5,
      label_smoothing=0.1,
      decay_rate=0.94,
      decay_epochs=2.0,
      # Large batches need the linear warm-up (Goyal et al., 2017: 5 epochs).
      warmup_epochs=1.0 if arg["finetune"] else 5.0,
  )
  config_args.follow_the_hardware(config, arg["input"], eval_every_epochs=5.0)
  config.max_checkpoints_to_keep = 3
  config.num_pictures = 4  # Eval images shown as original | baseline | learned.
  config_args.evaluation(config)  # Running BatchNorm statistics, no EMA (docs/evaluation.md).
  return config
