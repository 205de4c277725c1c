"""Command line: python -m resizer_jax.main --config=configs/demo.py[:arg] --workdir=DIR [--config.k=v]."""
import json

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import tensorflow as tf

from resizer_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and config.json go; rerunning the "
                    "same command on it resumes from its latest checkpoint.", required=True)
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config"])


def _quiet_orbax(record) -> bool:
  # Orbax logs a dozen INFO lines per save; keep the console to progress and metrics.
  return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_quiet_orbax)
  # TensorFlow is only the input pipeline: keep it off the accelerators JAX uses.
  tf.config.set_visible_devices([], "GPU")
  logging.info("Config:\n%s", FLAGS.config)
  metrics = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(json.dumps({"workdir": FLAGS.workdir, **metrics}))


if __name__ == "__main__":
  app.run(main)
