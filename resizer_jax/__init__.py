"""resizer_jax: learned image resizers trained jointly with vision backbones, in JAX/Flax."""
from resizer_jax.restore import load
