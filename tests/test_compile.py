"""The trainer's jit steps compile once, at their first call: counted by jax.monitoring."""
import jax

from helpers import demo_config
from resizer_jax import train

TRACE = "/jax/core/compile/jaxpr_trace_duration"  # Every jit cache miss, persistent cache or not.
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def test_train_step_compiles_at_the_first_step_and_never_again(data_dir, tmp_path, monkeypatch):
  events, calls = [], []  # calls[i]: how many events had been recorded when step i+1 began.

  def listener(event, duration_secs, **kwargs):
    del duration_secs
    events.append((event, kwargs.get("fun_name")))

  real_jit_train_step = train.jit_train_step

  def counted_jit_train_step(*args, **kwargs):
    step = real_jit_train_step(*args, **kwargs)

    def counted(state, batch):
      calls.append(len(events))
      return step(state, batch)
    return counted

  monkeypatch.setattr(train, "jit_train_step", counted_jit_train_step)
  # 7 steps: evals (and checkpoints) at steps 6 and 7, so steps run after a checkpoint and an eval.
  config = demo_config(data_dir, num_train_steps=7)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    train.train_and_evaluate(config, str(tmp_path))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)

  assert len(calls) == config.num_train_steps
  traces = [i for i, e in enumerate(events) if e == (TRACE, "train_step")]
  compiles = [i for i, e in enumerate(events) if e == (BACKEND_COMPILE, "jit(train_step)")]
  assert len(traces) == 1 and calls[0] <= traces[0] < calls[1], (traces, calls)
  assert len(compiles) <= 1 and all(calls[0] <= i < calls[1] for i in compiles), (compiles, calls)
  # The eval step too: two evaluations (padded last batches included), one trace.
  assert events.count((TRACE, "eval_step")) == 1
