"""Checkpoints: loading whatever mesh wrote them, the paper's warm start, and unreadable ones."""
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import assert_same_training, demo_config, one_device_env, saved_state
from resizer_jax import checkpoint
from resizer_jax import models
from resizer_jax import train


# Under pytest-xdist, this module's tests run on one worker, which trains bilinear_run once.
pytestmark = pytest.mark.xdist_group("bilinear_run")


@pytest.fixture(scope="module")
def bilinear_run(data_dir, tmp_path_factory):
  """A baseline trained with a fixed resizer on 8 devices: what the paper warm-starts from."""
  workdir = str(tmp_path_factory.mktemp("bilinear"))
  train.train_and_evaluate(demo_config(data_dir, "tiny,resizer=bilinear"), workdir)
  return workdir


def fresh_state(config):
  model = models.from_config(config)
  tx = train.make_optimizer(config, train.make_schedule(config, steps_per_epoch=10))
  return jax.jit(train.make_init(model, tx, config.data.input_size))(jax.random.key(config.seed))


def test_a_checkpoint_written_on_8_devices_loads_in_a_1_device_process(bilinear_run):
  step, state, meta = checkpoint.load(bilinear_run)
  assert step == demo_config(None).num_train_steps
  assert meta["model"]["resizer"]["name"] == "bilinear"
  assert meta["config"]["data"]["name"] == "resizer_demo/tiny"
  code = ("import json, sys, numpy as np, jax; from resizer_jax import checkpoint; "
          "step, state, _ = checkpoint.load(sys.argv[1]); "
          "print(json.dumps([jax.device_count(), step, "
          "float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(state['params'])))]))")
  env = one_device_env()
  out = subprocess.run([sys.executable, "-c", code, bilinear_run], env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  devices, step_1, total = json.loads(out.stdout.strip().splitlines()[-1])
  assert (devices, step_1) == (1, step)
  expected = sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(state["params"]))
  assert total == pytest.approx(float(expected), rel=1e-6)


def test_a_save_on_cpu_compiles_nothing_and_restores_the_same_values(data_dir, tmp_path):
  """Orbax's replica-parallel saves would slice each replicated array per device, an eager compile
  per shape (about 150 for the demo's state): on a CPU, where they split no real I/O, they are off."""
  mesh = train.make_mesh()
  rng = np.random.default_rng(0)
  state = {f"w{i}": jax.device_put(rng.standard_normal(shape).astype(np.float32),
                                   jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
           for i, shape in enumerate([(3, 3, 8, 16), (16,), (64, 4), (4, 4, 4)])}
  compiles = []
  listener = lambda event, secs, **_: compiles.append(event) if event.endswith("backend_compile_duration") else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    with checkpoint.manager(str(tmp_path), create=True) as mngr:
      checkpoint.save(mngr, 1, state, demo_config(data_dir))
      mngr.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == []
  step, restored, _ = checkpoint.load(str(tmp_path))
  assert step == 1 and jax.tree.map(np.asarray, restored).keys() == state.keys()
  for key, value in state.items():
    np.testing.assert_array_equal(np.asarray(restored[key]), np.asarray(value))


def test_warm_start_loads_exactly_the_backbone_and_leaves_the_resizer_fresh(bilinear_run, data_dir):
  config = demo_config(data_dir)
  fresh = fresh_state(config)
  warm = checkpoint.warm_start(fresh, bilinear_run)
  _, saved, _ = checkpoint.load(bilinear_run)
  for collection in ("params", "batch_stats"):
    for got, want in zip(jax.tree.leaves(getattr(warm, collection)["backbone"]),
                         jax.tree.leaves(saved[collection]["backbone"]), strict=True):
      np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(warm.params["resizer"]),
                       jax.tree.leaves(fresh.params["resizer"]), strict=True):
    np.testing.assert_array_equal(got, want)
  # The trained backbone really differs from a fresh one, so the comparison above means something.
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fresh.params["backbone"]),
                                                      jax.tree.leaves(warm.params["backbone"])))


def test_warm_start_through_the_trainer(bilinear_run, data_dir, tmp_path, monkeypatch):
  """The state the trainer starts from holds the source run's backbone and a fresh resizer.

  The train step is run for its metrics on a copy of the state and the state is kept as it was
  (only its step counts), so the run's one checkpoint is exactly the state the trainer built.
  """
  real_jit_train_step = train.jit_train_step

  def frozen_train_step(*args, **kwargs):
    step = real_jit_train_step(*args, **kwargs)

    def run(state, batch):
      new, metrics = step(jax.tree.map(jnp.copy, state), batch)  # The copy is donated.
      return state.replace(step=new.step), metrics
    return run
  monkeypatch.setattr(train, "jit_train_step", frozen_train_step)
  config = demo_config(data_dir, num_train_steps=1, num_pictures=0)
  config.init_from = bilinear_run
  final = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(final["eval/loss"])
  step, started, meta = checkpoint.load(str(tmp_path))
  assert step == 1 and meta["config"]["init_from"] == bilinear_run
  _, source, _ = checkpoint.load(bilinear_run)
  fresh = fresh_state(config)  # The run's seed: the resizer's initial values.
  for collection in ("params", "batch_stats"):
    backbone = jax.tree_util.tree_leaves_with_path(started[collection]["backbone"])
    source_backbone = jax.tree.leaves(source[collection]["backbone"])
    fresh_backbone = jax.tree.leaves(getattr(fresh, collection)["backbone"])
    assert len(backbone) == len(source_backbone) == len(fresh_backbone) > 0
    for (path, got), want, unloaded in zip(backbone, source_backbone, fresh_backbone):
      np.testing.assert_array_equal(got, want, err_msg=f"{collection}: backbone"
                                    f"{jax.tree_util.keystr(path)} is not the source run's")
      # Training moved every leaf from its initial value: equal to the source is loaded from it.
      assert not np.array_equal(want, unloaded), jax.tree_util.keystr(path)
    resizer = jax.tree.leaves(started[collection]["resizer"])
    fresh_resizer = jax.tree.leaves(getattr(fresh, collection)["resizer"])
    assert len(resizer) == len(fresh_resizer) > 0
    for got, want in zip(resizer, fresh_resizer):
      np.testing.assert_array_equal(got, want)
  assert "resizer" not in source["params"]  # bilinear: nothing of the source could fill it.


def test_warm_start_into_another_backbone_names_the_paths_and_loads_nothing(bilinear_run, data_dir):
  config = demo_config(data_dir)
  config.backbone.name = "resnet18"
  fresh = fresh_state(config)
  with pytest.raises(ValueError, match=r"init_from=.* does not fit this model: params\.backbone\."
                     r"head\.kernel: \(128, 4\) in checkpoint vs \(512, 4\) in model"):
    checkpoint.warm_start(fresh, bilinear_run)
  with pytest.raises(FileNotFoundError, match="no checkpoint under"):
    checkpoint.warm_start(fresh, os.path.join(bilinear_run, "nowhere"))


# --- Unreadable checkpoints: moved aside, and the run resumes from the newest readable one.
def copy_of(run, tmp_path):
  """A copy of a finished run's workdir, and its checkpoint steps, oldest first."""
  workdir = str(tmp_path / "run")
  shutil.copytree(run, workdir)
  return workdir, sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))


def files_of(directory):
  """{relative path: bytes} under `directory`: what moving it must keep."""
  root = pathlib.Path(directory)
  return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def truncate_every_file(step_dir):
  for p in pathlib.Path(step_dir).rglob("*"):
    if p.is_file():
      p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])


def garbage_meta_json(step_dir):
  (pathlib.Path(step_dir) / "meta" / "metadata").write_text('{"model": {"resizer": ')


def garbage_orbax_metadata(step_dir):
  (pathlib.Path(step_dir) / "state" / "_METADATA").write_text("not json at all")


def truncated_array_data(step_dir):  # Orbax's metadata intact: only reading the arrays fails.
  for p in (pathlib.Path(step_dir) / "state").glob("ocdbt.process_*/d/*"):
    p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])


def no_state(step_dir):
  shutil.rmtree(pathlib.Path(step_dir) / "state")


def unreadable_warnings(caplog):
  return [r.getMessage() for r in caplog.records
          if r.levelno == logging.WARNING and "is unreadable" in r.getMessage()]


@pytest.mark.parametrize("damage", [truncate_every_file, garbage_meta_json])
def test_an_unreadable_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(
    tiny_run, data_dir, tmp_path, caplog, damage):
  workdir, (older, newest) = copy_of(tiny_run[0], tmp_path)
  newest_dir = os.path.join(workdir, "checkpoints", str(newest))
  damage(newest_dir)
  damaged = files_of(newest_dir)
  caplog.set_level(logging.INFO)
  final = train.train_and_evaluate(demo_config(data_dir), workdir)

  moved = os.path.join(workdir, checkpoint.UNREADABLE, str(newest))
  assert files_of(moved) == damaged  # Moved as it was, not deleted or repaired.
  [warning] = unreadable_warnings(caplog)
  assert f"step {newest} " in warning and f"moved it to {moved}" in warning
  assert "JSONDecodeError" in warning  # The reason: both damages leave a JSON file unparsable.
  assert any(f"at step {older}." in r.getMessage() for r in caplog.records
             if r.getMessage().startswith("Resuming from"))
  assert saved_state(workdir)[0] == newest  # Trained and saved again.
  assert final == pytest.approx(tiny_run[1], rel=1e-4)
  assert_same_training(workdir, tiny_run[0], older)


def test_no_readable_checkpoint_is_one_clear_error_and_nothing_is_deleted(tiny_run, data_dir,
                                                                          tmp_path):
  workdir, steps = copy_of(tiny_run[0], tmp_path)
  damaged = {}
  for step in steps:
    truncate_every_file(os.path.join(workdir, "checkpoints", str(step)))
    damaged[step] = files_of(os.path.join(workdir, "checkpoints", str(step)))
  aside = os.path.join(workdir, checkpoint.UNREADABLE)
  moves = "; ".join(f"step {s} \\(meta: JSONDecodeError: [^;]*\\) to {aside}/{s}"
                    for s in steps[::-1])
  with pytest.raises(checkpoint.NoReadableCheckpointError,
                     match=f"^no readable checkpoint in {workdir}/checkpoints: moved {moves}; "
                     "nothing was deleted. Rerun to start from step 0"):
    train.train_and_evaluate(demo_config(data_dir), workdir)
  for step in steps:
    assert files_of(os.path.join(aside, str(step))) == damaged[step]
  assert os.listdir(os.path.join(workdir, "checkpoints")) == []


def abstract_state_of(workdir, step):
  """The checkpoint's own tree on one device: a target for restore_latest without a trainer."""
  with checkpoint.manager(workdir) as mngr:
    tree = mngr.item_metadata(step)["state"]
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)


@pytest.mark.parametrize("damage", [garbage_orbax_metadata, truncated_array_data, no_state])
def test_restore_latest_skips_each_kind_of_damage_and_forgets_the_step(
    tiny_run, data_dir, tmp_path, caplog, damage):
  workdir, (older, newest) = copy_of(tiny_run[0], tmp_path)
  abstract = abstract_state_of(workdir, older)
  damage(os.path.join(workdir, "checkpoints", str(newest)))
  # A step moved aside by an earlier run stays; this one gets a suffix.
  earlier = pathlib.Path(workdir, checkpoint.UNREADABLE, str(newest))
  earlier.mkdir(parents=True)
  (earlier / "note").write_text("from before")
  with checkpoint.manager(workdir) as mngr:
    state = checkpoint.restore_latest(mngr, abstract, demo_config(data_dir))
    assert int(state["step"]) == older
    assert mngr.all_steps() == [older]  # Forgotten: the run saves that step afresh.
  [warning] = unreadable_warnings(caplog)
  assert f"step {newest} " in warning and f"moved it to {earlier}.1" in warning
  assert (earlier / "note").read_text() == "from before"
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(older)]
  _, reference = saved_state(tiny_run[0], older)
  for got, want in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(reference["params"]),
                       strict=True):
    np.testing.assert_array_equal(got, want)


def snapshot(workdir):
  return {str(p): p.stat().st_mtime_ns for p in pathlib.Path(workdir).rglob("*")}


def test_another_model_behind_an_unreadable_checkpoint_is_refused_and_nothing_moves(
    tiny_run, data_dir, tmp_path):
  workdir, (older, newest) = copy_of(tiny_run[0], tmp_path)
  abstract = abstract_state_of(workdir, older)
  truncate_every_file(os.path.join(workdir, "checkpoints", str(newest)))
  before = snapshot(workdir)
  with checkpoint.manager(workdir) as mngr, pytest.raises(
      ValueError, match=r"holds a checkpoint of a different model \(resizer.name: 'learned' in "
      r"checkpoint vs 'bilinear' in config\)"):
    checkpoint.restore_latest(mngr, abstract, demo_config(data_dir, "tiny,resizer=bilinear"))
  assert snapshot(workdir) == before


def test_a_state_of_another_layout_is_refused_not_moved_aside(tiny_run, data_dir, tmp_path):
  workdir, (older, newest) = copy_of(tiny_run[0], tmp_path)
  # E.g. a field added to the TrainState since the checkpoint was written.
  abstract = {**abstract_state_of(workdir, newest),
              "extra_counter": jax.ShapeDtypeStruct((), np.int32)}
  before = snapshot(workdir)
  with checkpoint.manager(workdir) as mngr, pytest.raises(
      ValueError, match=rf"checkpoints/{newest} holds a train state of another layout "
      r"\(extra_counter: missing in checkpoint vs \(\) in this run\); use a new --workdir"):
    checkpoint.restore_latest(mngr, abstract, demo_config(data_dir))
  assert snapshot(workdir) == before


def test_all_processes_skip_a_checkpoint_only_one_could_not_read(tiny_run, data_dir, tmp_path,
                                                                caplog, monkeypatch):
  """Process 1 of 2 reads the newest checkpoint fine, but process 0 could not: process 1 skips it
  too, leaves the moving to process 0, and forgets the step once process 0 has moved it."""
  workdir, (older, newest) = copy_of(tiny_run[0], tmp_path)
  abstract = abstract_state_of(workdir, older)
  newest_dir = os.path.join(workdir, "checkpoints", str(newest))
  gathers, barriers = [], []

  def process_allgather(failed):
    gathers.append(int(failed))
    return np.array([len(gathers) == 1, failed])  # Process 0's first read (the newest) failed.

  def sync_global_devices(name):
    barriers.append(name)
    assert os.path.isdir(newest_dir)  # Process 1 moved nothing.
    if name.endswith("moved"):  # What process 0 did meanwhile.
      os.rename(newest_dir, os.path.join(workdir, checkpoint.UNREADABLE, f"{newest}"))

  os.mkdir(os.path.join(workdir, checkpoint.UNREADABLE))
  monkeypatch.setattr(checkpoint.multihost_utils, "process_allgather", process_allgather)
  monkeypatch.setattr(checkpoint.multihost_utils, "sync_global_devices", sync_global_devices)
  with checkpoint.manager(workdir) as mngr:
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    state = checkpoint.restore_latest(mngr, abstract, demo_config(data_dir))
    monkeypatch.undo()
    assert int(state["step"]) == older and mngr.all_steps() == [older]
  # Newest: meta read here, failed on 0. Older: meta, state layout, state, all read everywhere.
  assert gathers == [0, 0, 0, 0] and len(barriers) == 2
  [warning] = unreadable_warnings(caplog)
  assert f"step {newest} " in warning and "(meta: unreadable on process 0)" in warning


def test_a_storage_outage_is_not_taken_for_damage_and_moves_nothing(
    tiny_run, data_dir, tmp_path, monkeypatch):
  workdir, (older, newest) = copy_of(tiny_run[0], tmp_path)
  abstract = abstract_state_of(workdir, older)
  before = snapshot(workdir)

  def unavailable(*args, **kwargs):
    raise ValueError("UNAVAILABLE: the storage service did not answer")  # As TensorStore says it.
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "restore", unavailable)
  with checkpoint.manager(workdir) as mngr, pytest.raises(ValueError, match="UNAVAILABLE"):
    checkpoint.restore_latest(mngr, abstract, demo_config(data_dir))
  assert snapshot(workdir) == before and not os.path.exists(
      os.path.join(workdir, checkpoint.UNREADABLE))
