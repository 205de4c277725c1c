"""Command line: python -m resizer_jax.main --config=configs/demo.py[:arg] --workdir=DIR [--config.k=v].

  --plan --devices=N [--processes=P]   print what the config does on that hardware, run nothing
  --verbosity=1                        library logs (Orbax, TFDS, absl) and tracebacks come back

Several processes (TPU pod workers, SLURM tasks, launch/local.py): each runs this same command with
--distributed=on (Cloud TPU and SLURM supply the rest), or with --coordinator_address,
--num_processes and --process_id (or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID environment variables, for clusters jax cannot detect by itself).
"""
import json
import os

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from resizer_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and config.json go; rerunning the "
                    "same command on it resumes from its latest checkpoint.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config"])
flags.DEFINE_bool("plan", False, "Print the run plan for --devices/--processes and exit.")
flags.DEFINE_integer("devices", None, "With --plan: the number of devices (default: this machine's).")
flags.DEFINE_integer("processes", 1, "With --plan: the number of processes (hosts).")
flags.DEFINE_string("platform", "tpu", "With --plan: cpu, gpu or tpu (decides dtype=auto).")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "Call jax.distributed.initialize() first. auto: when a coordinator address is "
                  "given or SLURM started several tasks; on: always (Cloud TPU pods detect "
                  "their coordinator themselves).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (not needed on Cloud TPU "
                    "or SLURM).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


def _start_distributed():
  """jax.distributed.initialize() before any other JAX call, as it requires."""
  env = os.environ.get
  address = FLAGS.coordinator_address or env("JAX_COORDINATOR_ADDRESS")
  wanted = FLAGS.distributed == "on" or (FLAGS.distributed == "auto" and (
      address or int(env("SLURM_NTASKS", "1")) > 1))
  if not wanted:
    return
  num_processes, process_id = FLAGS.num_processes, FLAGS.process_id
  if address and num_processes is None and env("JAX_NUM_PROCESSES"):
    num_processes, process_id = int(env("JAX_NUM_PROCESSES")), int(env("JAX_PROCESS_ID", "0"))
  jax.distributed.initialize(address, num_processes, process_id)
  logging.info("Process %d of %d; %d local of %d devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def print_plan(config):
  from resizer_jax import preflight  # pylint: disable=g-import-not-at-top
  devices = FLAGS.devices or jax.device_count()
  checked = preflight.check(config, num_devices=devices, num_processes=FLAGS.processes,
                            platform=FLAGS.platform)
  print(preflight.describe(checked.config))
  print(f"plan for {devices} {FLAGS.platform} devices, {FLAGS.processes} processes:")
  for line in [f"split sizes: {checked.data}", *checked.plan.lines()]:
    print("  " + line)


def main(argv):
  with cli.command(argv, tensorflow=not FLAGS.plan) as verbose:
    if FLAGS.plan:
      print_plan(FLAGS.config)
      return
    if not FLAGS.workdir:
      raise app.UsageError("give --workdir=DIR (or --plan to print the run plan)")
    _start_distributed()
    from resizer_jax import preflight  # pylint: disable=g-import-not-at-top
    from resizer_jax import train  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    # TensorFlow is only the input pipeline: keep it off the accelerators JAX uses.
    tf.config.set_visible_devices([], "GPU")
    if not verbose:
      tfds.disable_progress_bar()
    logging.info("Config:\n%s", FLAGS.config)
    preflight.check(FLAGS.config, num_devices=jax.device_count(),
                    num_processes=jax.process_count(), platform=jax.default_backend(),
                    workdir=FLAGS.workdir)
    metrics = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(json.dumps({"workdir": FLAGS.workdir, **metrics}))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
