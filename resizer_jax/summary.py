"""Parameters and FLOPs per image of the resizer and the backbone, separately.

  python -m resizer_jax.summary --config=configs/imagenet.py:backbone=resnet50,input=448,target=224
  python -m resizer_jax.summary --config=configs/imagenet.py --backbones=resnet50,densenet121

FLOPs are XLA's cost analysis of the compiled forward pass (eval mode), divided by the batch: the
resizer at the config's input size, the backbone at the resizer's output size.
"""
from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from resizer_jax import models
from resizer_jax import preflight
from resizer_jax.models import resizer as resizer_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.")
flags.DEFINE_list("backbones", [], "Summarise these backbones instead of config.backbone.name.")
flags.mark_flags_as_required(["config"])


def forward_flops(module, input_shape, batch: int = 2) -> tuple[int, float]:
  """(parameters, FLOPs per image) of `module`'s forward pass in eval mode."""
  x = jnp.zeros((batch, *input_shape), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  params = sum(v.size for v in jax.tree.leaves(variables.get("params", {})))
  compiled = jax.jit(lambda v, x: module.apply(v, x, train=False)).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return params, float(cost.get("flops", 0.0)) / batch


def summarize(config) -> list[dict]:
  config = preflight.resolve(config)  # num_classes, when the config leaves it to the dataset.
  model = models.from_config(config)
  size = config.data.input_size
  out_hw = resizer_lib.target_size((size, size), config.resizer.output_size)
  rows = [dict(part=f"resizer ({config.resizer.name})", input=f"{size}x{size}",
               output=f"{out_hw[0]}x{out_hw[1]}")]
  rows[0]["params"], rows[0]["flops"] = forward_flops(model.resizer, (size, size, 3))
  rows.append(dict(part=f"backbone ({config.backbone.name})", input=f"{out_hw[0]}x{out_hw[1]}",
                   output=str(config.num_classes)))
  rows[1]["params"], rows[1]["flops"] = forward_flops(model.backbone, (*out_hw, 3))
  return rows


def main(argv):
  del argv
  config = FLAGS.config
  print("| part | input | output | parameters | GFLOPs / image |")
  print("|---|---|---|---:|---:|")
  for i, name in enumerate(FLAGS.backbones or [config.backbone.name]):
    config.backbone.name = name
    for row in summarize(config)[(1 if i else 0):]:  # The resizer once: it is the same for all.
      print(f"| {row['part']} | {row['input']} | {row['output']} | {row['params']:,} | "
            f"{row['flops'] / 1e9:.3f} |")


if __name__ == "__main__":
  app.run(main)
