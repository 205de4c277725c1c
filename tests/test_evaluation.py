"""BatchNorm-stable evaluation: the EMA of the parameters and BatchNorm statistics recomputed for
the evaluated parameters, on the demo's tiny build with real checkpoints."""
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from helpers import assert_trees_close, demo_config, saved_state
import resizer_jax
from resizer_jax import evaluator
from resizer_jax import models
from resizer_jax import train
from resizer_jax.data import input_pipeline


SIZE = 48  # Pixels of the unit test's images: any size works, a small one compiles faster.
BN_MOMENTUM = 0.9  # configs/demo.py's resizer and resnet_tiny: the running statistics' decay.


def _model_and_variables(data_dir):
  config = demo_config(data_dir)
  model = models.from_config(config)
  variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3), jnp.uint8))
  return model, variables


def _recompute(model, variables):
  mesh = train.make_mesh()
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), train.TrainState(
      step=0, apply_fn=None, params=variables["params"], tx=None, opt_state=None,
      batch_stats=variables["batch_stats"], skipped=0, nonfinite=0, nonfinite_run=0,
      longest_nonfinite_run=0, first_nonfinite=0))
  return evaluator.make_recompute(model, shardings, NamedSharding(mesh, P(mesh.axis_names)))


def test_recomputed_statistics_are_those_of_the_batches_taken_as_one(data_dir):
  model, variables = _model_and_variables(data_dir)
  recompute = _recompute(model, variables)
  rng = np.random.default_rng(0)
  a, b = (rng.integers(0, 256, (8, SIZE, SIZE, 3)).astype(np.uint8) for _ in range(2))
  # Garbage running statistics: the recomputed ones must not depend on them.
  garbage = jax.tree.map(lambda x: x + 7.0, variables["batch_stats"])
  together = recompute(variables["params"], garbage, [{"image": a}, {"image": b}])

  # The reference, without the code under test: the model as it trains, from zero running
  # statistics, whose update m * 0 + (1 - m) * the batch's gives the batch's divided by 1 - m.
  assert model.resizer.bn_momentum == model.backbone.bn_momentum == BN_MOMENTUM

  def one_batch(images):
    zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
    _, updates = model.apply({"params": variables["params"], "batch_stats": zeros}, images,
                             train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
    return jax.tree.map(lambda x: x / (1 - BN_MOMENTUM), updates["batch_stats"])

  # The resizer's first BatchNorm sees no other: its statistics over a and b are those of one
  # batch holding both (the later ones see inputs normalised per batch in train mode).
  assert_trees_close(together["resizer"]["stem_bn"],
                     one_batch(np.concatenate([a, b]))["resizer"]["stem_bn"], rtol=1e-4, atol=1e-5)
  # Every BatchNorm, a twice: exactly a's statistics.
  assert_trees_close(recompute(variables["params"], garbage, [{"image": a}, {"image": a}]),
                     one_batch(a), rtol=1e-4, atol=1e-6)
  # And they are not what the running averages held.
  assert not np.allclose(together["backbone"]["stem_bn"]["var"],
                         variables["batch_stats"]["backbone"]["stem_bn"]["var"])


def _config(data_dir):
  # A checkpoint at every step, kept, so that the EMA can be followed step by step.
  return demo_config(data_dir, ema_decay=0.9, bn_recompute_batches=2, eval_all_variants=True,
                     checkpoint_every_steps=1, max_checkpoints_to_keep=None)


# Under pytest-xdist, this module's tests run on one worker, which trains stable_run once.
pytestmark = pytest.mark.xdist_group("stable_run")


@pytest.fixture(scope="module")
def stable_run(data_dir, tmp_path_factory):
  """(workdir, final metrics) of the tiny demo with the EMA and recomputed statistics."""
  workdir = str(tmp_path_factory.mktemp("stable_run"))
  return workdir, train.train_and_evaluate(_config(data_dir), workdir)


def test_ema_follows_the_ramped_average_of_the_parameters(stable_run, data_dir):
  workdir, _ = stable_run
  for step in range(2, _config(data_dir).num_train_steps + 1):
    (_, before), (_, after) = saved_state(workdir, step - 1), saved_state(workdir, step)
    decay = min(0.9, (1 + step) / (10 + step))
    assert_trees_close(after["ema_params"], jax.tree.map(
        lambda e, p: decay * e + (1 - decay) * p, before["ema_params"], after["params"]),
                       rtol=1e-5, atol=1e-7)
  assert not np.allclose(after["ema_params"]["backbone"]["head"]["kernel"],
                         after["params"]["backbone"]["head"]["kernel"])


def _accuracy_of_loaded_run(workdir, config):
  """Top-1 accuracy over the eval split of resizer_jax.load(workdir).predict."""
  run = resizer_jax.load(workdir)
  builder = input_pipeline.get_builder(config.data, config.num_classes)
  ds, _ = input_pipeline.eval_dataset(builder, config.data, global_batch=config.eval_batch_size)
  right = total = 0
  for batch in ds.as_numpy_iterator():
    keep = batch["mask"] > 0
    predicted = run.predict(batch["image"], preprocess=None).argmax(-1)  # Eval's own.
    right += int(np.sum((predicted == batch["label"])[keep]))
    total += int(keep.sum())
  return right / total


def test_eval_reports_every_variant_and_load_predicts_what_it_measured(stable_run, data_dir):
  workdir, final = stable_run
  variants = {k.split("/")[1] for k in final if k.count("/") == 2}
  assert variants == {"ema_recomputed", "ema_running", "live_recomputed", "live_running"}
  assert final["eval/accuracy"] == final["eval/ema_recomputed/accuracy"]
  assert final["eval/loss"] == final["eval/ema_recomputed/loss"]
  # Other parameters or other statistics give another loss.
  assert len({round(final[f"eval/{v}/loss"], 6) for v in variants}) == 4
  # The checkpoint holds what eval used: the EMA, and statistics recomputed for it.
  _, state = saved_state(workdir)
  run = resizer_jax.load(workdir)
  assert_trees_close(run.variables["params"], state["ema_params"], rtol=0, atol=0)
  assert_trees_close(run.variables["batch_stats"], state["batch_stats"], rtol=0, atol=0)
  assert _accuracy_of_loaded_run(workdir, _config(data_dir)) == pytest.approx(final["eval/accuracy"])


def test_a_resumed_ema_run_ends_where_an_uninterrupted_one_ends(stable_run, data_dir, tmp_path):
  whole, halves = stable_run[0], str(tmp_path)
  config = _config(data_dir)
  half = config.copy_and_resolve_references()
  half.num_train_steps = config.eval_every_steps
  train.train_and_evaluate(half, halves)
  train.train_and_evaluate(config, halves)
  (_, a), (_, b) = saved_state(whole), saved_state(halves)
  for part in ("params", "ema_params", "batch_stats", "opt_state"):
    assert_trees_close(a[part], b[part], rtol=1e-6, atol=1e-7)
  # Without the EMA the run's state has another layout: refused, nothing changed.
  off = config.copy_and_resolve_references()
  off.ema_decay = 0.0
  with pytest.raises(ValueError, match="another layout.*ema_params"):
    train.train_and_evaluate(off, halves)
  assert saved_state(halves)[0] == config.num_train_steps


@pytest.mark.parametrize("field,value,message", [
    ("ema_decay", 1.0, r"ema_decay=1.0 is not in \[0, 1\)"),
    ("bn_recompute_batches", -1, "bn_recompute_batches=-1 is not a count"),
])
def test_bad_eval_options_are_clear_errors(data_dir, tmp_path, field, value, message):
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(demo_config(data_dir, **{field: value}), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()
