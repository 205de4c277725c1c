"""A diverged run stops loudly (or skips the step when asked) and never saves a non-finite state."""
import numpy as np
import pytest

from helpers import REPO, demo_config, metrics_lines, saved_state
from resizer_jax import checkpoint
from resizer_jax import nonfinite
from resizer_jax import train
from resizer_jax.config_args import load_config
from resizer_jax.data import input_pipeline

POISONED_STEP = 7  # After the checkpoint at step 6, before the log step 8.


def _all_finite(tree) -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def _saved_steps(workdir):
  with checkpoint.manager(workdir) as mngr:
    return list(mngr.all_steps())


@pytest.fixture
def poisoned(monkeypatch):
  """The train stream with NaN vote histograms in the batch of POISONED_STEP (a corrupt label file)."""
  real = input_pipeline.train_dataset

  def train_dataset(*args, start_step=0, **kwargs):
    ds = real(*args, start_step=start_step, **kwargs)

    class Poisoned:
      def as_numpy_iterator(self):
        for step, batch in enumerate(ds.as_numpy_iterator(), start=start_step + 1):
          if step == POISONED_STEP:
            batch = {**batch, "distribution": np.full_like(batch["distribution"], np.nan)}
          yield batch
    return Poisoned()
  monkeypatch.setattr(input_pipeline, "train_dataset", train_dataset)


@pytest.fixture(scope="module")
def iqa_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds_iqa"))


def iqa_config(data_dir, **overrides):
  config = load_config(f"{REPO}/configs/demo_iqa.py:tiny")
  config.data.data_dir = data_dir
  for key, value in overrides.items():
    config[key] = value
  return config


def test_a_poisoned_batch_stops_the_run_naming_the_step_and_the_last_good_checkpoint(
    poisoned, iqa_data_dir, tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(nonfinite.NonFiniteError) as e:
    train.train_and_evaluate(iqa_config(iqa_data_dir), workdir)
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"step {POISONED_STEP}: the loss or gradient norm is not finite")
  assert "last good checkpoint: step 6" in message and "--config.nonfinite=skip" in message
  assert _saved_steps(workdir) == [6]  # Nothing saved at or after the poisoned step.
  assert _all_finite(saved_state(workdir)[1])


def test_skip_drops_the_poisoned_update_counts_it_and_finishes(poisoned, iqa_data_dir, tmp_path):
  workdir = str(tmp_path)
  config = iqa_config(iqa_data_dir, nonfinite="skip")
  final = train.train_and_evaluate(config, workdir)
  assert np.isfinite(final["eval/emd"])
  lines = {l["step"]: l for l in metrics_lines(workdir)}
  assert lines[4]["train/nonfinite_skipped"] == 0
  assert lines[8]["train/nonfinite_skipped"] == 1 and lines[12]["train/nonfinite_skipped"] == 1
  assert np.isfinite(lines[8]["train/loss"])  # The dropped step weighs nothing in the average.
  step, state = saved_state(workdir)
  assert step == config.num_train_steps and _all_finite(state)
  assert int(state["nonfinite"]) == 1 and int(state["first_nonfinite"]) == POISONED_STEP


def test_skipping_stops_after_too_many_nonfinite_steps_in_a_row(data_dir, tmp_path):
  config = demo_config(data_dir, nonfinite="skip", max_nonfinite_in_row=2)
  config.optimizer.learning_rate = 1e30
  with pytest.raises(nonfinite.NonFiniteError, match=r"^\d+ steps in a row by step 4 had a "
                     r"non-finite loss .*max_nonfinite_in_row=2\); stopped \(no checkpoint was "
                     r"saved\)"):
    train.train_and_evaluate(config, str(tmp_path))
  assert _saved_steps(str(tmp_path)) == []


def test_an_unknown_nonfinite_policy_is_refused(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"unknown nonfinite='ignore'; valid: stop, skip"):
    train.train_and_evaluate(demo_config(data_dir, nonfinite="ignore"), str(tmp_path))
