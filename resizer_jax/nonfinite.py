"""Steps whose loss, gradients or updated state are not finite: their update is always dropped (so
no non-finite value is ever in the state, nor saved), and `config.nonfinite` says what then:

  stop  NonFiniteError, naming the first such step, at the next step that logs, evaluates or
        saves, before it saves
  skip  the run goes on; it stops so only after `config.max_nonfinite_in_row` such steps in a row
"""
import dataclasses

from clu import metrics as clu_metrics
import jax
import jax.numpy as jnp
import optax

POLICIES = ("stop", "skip")


class NonFiniteError(FloatingPointError):
  """The run stopped on a non-finite loss or gradient (nothing non-finite was saved)."""


def check_policy(config):
  """A ValueError for an unknown config.nonfinite, before anything is written."""
  if config.nonfinite not in POLICIES:
    raise ValueError(f"unknown nonfinite={config.nonfinite!r}; valid: {', '.join(POLICIES)}")


def keep_finite(state, new, metrics, *, loss, grad_norm):
  """(new state, metrics) of a train step, or where the step was not finite: the old state's
  parameters, optimiser state, statistics and EMA, the step counted in the state's `nonfinite*`
  fields, and metrics that weigh nothing in the logged averages."""
  # A finite loss can still take the state to inf (a huge update): check what would be kept too.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(
      optax.global_norm((new.params, new.batch_stats)))
  # The step still counts, so that the data stream and the schedule stay where they were.
  kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o),
                      (new.params, new.opt_state, new.batch_stats, new.ema_params),
                      (state.params, state.opt_state, state.batch_stats, state.ema_params))
  new = new.replace(
      params=kept[0], opt_state=kept[1], batch_stats=kept[2], ema_params=kept[3],
      nonfinite=state.nonfinite + (~finite),
      nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1),
      longest_nonfinite_run=jnp.maximum(state.longest_nonfinite_run,
                                        jnp.where(finite, 0, state.nonfinite_run + 1)),
      first_nonfinite=jnp.where((state.first_nonfinite < 0) & ~finite, state.step + 1,
                                state.first_nonfinite))
  drop = lambda m: jax.tree.map(lambda x: jnp.where(finite, x, jnp.zeros_like(x)), m)
  return new, metrics.replace(**{f.name: drop(getattr(metrics, f.name))
                                 for f in dataclasses.fields(metrics)
                                 if isinstance(getattr(metrics, f.name), clu_metrics.Average)})


def check(state, config, mngr):
  """Raises NonFiniteError when the non-finite steps so far call for a stop (config.nonfinite)."""
  count, run = int(state.nonfinite), int(state.longest_nonfinite_run)
  first = int(state.first_nonfinite)
  limit = config.max_nonfinite_in_row
  if count == 0 or (config.nonfinite == "skip" and run < limit):
    return
  last_good = mngr.latest_step()
  good = (f"last good checkpoint: step {last_good} in {mngr.directory}" if last_good is not None
          else "no checkpoint was saved")
  if config.nonfinite == "stop":
    raise NonFiniteError(
        f"step {first}: the loss or gradient norm is not finite; stopped without saving it ({good}). "
        "Lower optimizer.learning_rate, or set --config.nonfinite=skip to drop such steps")
  raise NonFiniteError(
      f"{run} steps in a row by step {int(state.step)} had a non-finite loss or gradient norm "
      f"(max_nonfinite_in_row={limit}); stopped ({good}). Lower optimizer.learning_rate")
