"""resizer_jax: learned image resizers trained jointly with vision backbones, in JAX/Flax."""


def load(workdir: str, step: int | None = None):
  """A trained run from its workdir, for notebooks: see resizer_jax.restore.load."""
  # Imported on use: `python -m resizer_jax.main` must set up logging before TensorFlow loads.
  from resizer_jax import restore  # pylint: disable=g-import-not-at-top
  return restore.load(workdir, step)
