"""What the command lines share: a quiet console, and user errors as one line with exit status 2.

  def main(argv):
    with cli.command(argv) as verbose:
      ...

Its own module, free of flags, so that every command line (each defining its own --workdir) can
import it.
"""
import contextlib
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging

# What a user can fix from the message alone: shown as one line, no traceback (unless --verbosity>=1).
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def _quiet_libraries(record) -> bool:
  # Their warnings are about their own internals (e.g. TFDS on an empty dataset folder); errors stay.
  return record.levelno >= std_logging.ERROR or not any(
      f"/{lib}/" in record.pathname for lib in ("orbax", "tensorflow_datasets", "tensorflow"))


def _import_tensorflow_quietly():
  """TensorFlow's C++ start-up lines (oneDNN, CPU features) go straight to fd 2 at import, before
  any logging setting can apply; TF_CPP_MIN_LOG_LEVEL no longer silences them."""
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  finally:
    os.dup2(saved, 2)
    os.close(devnull)
    os.close(saved)


def quiet_console(tensorflow: bool = True):
  """Orbax, TFDS, TensorFlow and absl INFO chatter off: the commands print their own lines.

  `tensorflow=False` for a command that never loads TensorFlow: importing it only to silence it
  takes seconds."""
  # TensorFlow's C++ INFO lines (e.g. tf.data's buffer sizes) read it when TensorFlow loads.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(_quiet_libraries)
  if tensorflow:
    _import_tensorflow_quietly()


def _config_error(argv) -> str | None:
  """Why --config=PATH[:ARG] and the --config.x=v of `argv` do not make a config, in one line
  (config_args' words, with the valid choices); None if they do."""
  from resizer_jax import config_args  # pylint: disable=g-import-not-at-top
  given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  if not given:
    return None
  try:
    config = config_args.load_config(given[-1])
    for a in argv:
      if a.startswith("--config."):
        dotted, eq, value = a[len("--config."):].partition("=")
        config_args.override(config, dotted, value if eq else "true")
  except (ValueError, FileNotFoundError) as e:
    return f"--config={given[-1]}: {e}"
  return None


def parse_flags(argv):
  """absl's flag parsing (app.run's flags_parser), with a mistake in the flags or in the config they
  give as one line on stderr and exit status 2, instead of a traceback or absl's usage page."""
  try:
    rest, error = flags.FLAGS(argv), None
  except Exception as e:  # pylint: disable=broad-except  # ml_collections raises what it meets.
    rest, error = None, e
  # Also after a parse that passed: ml_collections defers a config file's load error to first use.
  why = _config_error(argv) or error
  if why is None:
    return rest
  if not isinstance(why, (str, flags.Error)):
    raise why
  print(f"error: {why}  (--help lists the flags)", file=sys.stderr, flush=True)
  sys.exit(2)


@contextlib.contextmanager
def user_errors(verbose: bool):
  """A USER_ERRORS exception leaves as `error: ...` on stderr and exit status 2; with `verbose`, as
  the traceback."""
  try:
    yield
  except USER_ERRORS as e:
    if verbose:
      raise
    print(f"error: {e}  (--verbosity=1 shows the traceback)", file=sys.stderr, flush=True)
    sys.exit(2)


@contextlib.contextmanager
def command(argv, tensorflow: bool = True):
  """A command line's main: no stray arguments, a quiet console unless --verbosity>=1, and
  user_errors; yields whether --verbosity>=1."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  verbose = flags.FLAGS.verbosity >= 1
  if not verbose:
    quiet_console(tensorflow)
  with user_errors(verbose):
    yield verbose
