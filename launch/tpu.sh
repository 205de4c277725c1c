#!/bin/sh
# A Cloud TPU VM slice: create it, set every worker up, run resizer_jax.main on all of them and
# follow it. Usage and flags: launch/tpu.sh --help (the text is USAGE in launch/tpu.py).
#
# The logic is in launch/tpu.py (Python 3.8 or later; macOS's /bin/bash 3.2 cannot run the bash it
# was); this file stays the entry point, in POSIX sh.
here=$(dirname "$0")
exec "${PYTHON:-python3}" "$here/tpu.py" "$@"
