"""Command line: python -m resizer_jax.main --config=configs/demo.py[:arg] --workdir=DIR [--config.k=v].

Several processes (TPU pod workers, SLURM tasks, launch/local.py): each runs this same command with
--distributed=on (Cloud TPU and SLURM supply the rest) or with --coordinator_address,
--num_processes and --process_id.
"""
import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow as tf

from resizer_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and config.json go; rerunning the "
                    "same command on it resumes from its latest checkpoint.", required=True)
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config"])
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "Call jax.distributed.initialize() first. auto: when --coordinator_address is "
                  "given or SLURM started several tasks; on: always (Cloud TPU pods detect "
                  "their coordinator themselves).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (not needed on Cloud TPU "
                    "or SLURM).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


def _quiet_orbax(record) -> bool:
  # Orbax logs a dozen INFO lines per save; keep the console to progress and metrics.
  return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def _start_distributed():
  """jax.distributed.initialize() before any other JAX call, as it requires."""
  wanted = FLAGS.distributed == "on" or (FLAGS.distributed == "auto" and (
      FLAGS.coordinator_address or int(os.environ.get("SLURM_NTASKS", "1")) > 1))
  if wanted:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    logging.info("Process %d of %d; %d local of %d devices.", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _start_distributed()
  logging.get_absl_handler().addFilter(_quiet_orbax)
  # TensorFlow is only the input pipeline: keep it off the accelerators JAX uses.
  tf.config.set_visible_devices([], "GPU")
  logging.info("Config:\n%s", FLAGS.config)
  metrics = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(json.dumps({"workdir": FLAGS.workdir, **metrics}))


if __name__ == "__main__":
  app.run(main)
