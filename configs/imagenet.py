r"""ImageNet-1k classification with a learned (or fixed) resizer in front of a backbone: the paper's recipe.

Reads TFDS `imagenet2012` from $TFDS_DATA_DIR (a local path or gs://...); see README "ImageNet" and
docs/data.md (preparing it, the exact preprocessing, corrupt files). On a pod: launch/tpu.sh.

  python -m resizer_jax.main --config=configs/imagenet.py:backbone=resnet50,input=448,target=224 \
      --workdir=gs://BUCKET/runs/r50_learned_448
  python -m resizer_jax.main --config=configs/imagenet.py:resizer=bilinear,input=448 --workdir=...

Arguments: backbone=resnet50 (see resizer_jax.models.BACKBONES), resizer=learned|control|bilinear|bicubic|
lanczos3|nearest|area, input=224|256|320|368|448 (the resizer's input, i.e. the crop resolution),
target=224 (the backbone's input), antialias=false, seed=0, finetune (the paper's 0.005 learning rate
for a backbone initialised from a trained baseline).

Where the paper is silent we say so: the batch per input size and the epoch counts are our choices
(the batch shrinks as the input grows, as the paper says it does); the rest follows REFERENCE.md.
"""
import ml_collections

from resizer_jax import config_args


def get_config(arg=None):
  arg = config_args.parse_arg(arg, backbone="resnet50", resizer="learned", input=448, target=224,
                              antialias=False, seed=0, finetune=False)
  config = ml_collections.ConfigDict()
  config.seed = arg["seed"]
  config.dtype = "float32"

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
  )
  config.backbone = dict(name=arg["backbone"])
  # Warm start: a run's workdir whose backbone (and head) initialise this one; the resizer starts
  # fresh. The paper fine-tunes from a baseline trained with a fixed resizer.
  config.init_from = ml_collections.config_dict.placeholder(str)

  # (axis, size) pairs, -1 = the rest; add ("fsdp", k) to split the state k ways (README).
  config.mesh = (("data", -1),)
  config.batch_size = config_args.batch_for_input(arg["input"])
  config.eval_batch_size = config.batch_size
  config.num_epochs = 10.0 if arg["finetune"] else 90.0
  config.num_train_steps = 0
  config.optimizer = dict(
      name="sgd",
      learning_rate=0.005 if arg["finetune"] else 0.05,
      momentum=0.9,
      weight_decay=4e-5,
      label_smoothing=0.1,
      decay_rate=0.94,
      decay_epochs=2.0,
      warmup_epochs=0.0 if arg["finetune"] else 1.0,
  )

  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 2000
  config.max_checkpoints_to_keep = 3
  config.num_pictures = 4  # Eval images shown as original | baseline | learned.
  return config
