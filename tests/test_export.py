"""`python -m resizer_jax.export`: the trained demo served from its artifacts, without resizer_jax."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, one_device_env
import resizer_jax
from resizer_jax import export

BATCHES = (3, 2)  # Two sizes: one artifact answers both only if its batch dimension is symbolic.
ONE_DEVICE = one_device_env()

# Reads both artifacts of each export directory as a server would: nothing of this repository.
SERVE = r"""
import json, sys, time
import numpy as np
import jax
import tensorflow as tf

images, result, report = np.load(sys.argv[1]), {}, {}
for out in sys.argv[3:]:
  info = json.load(open(f"{out}/export.json"))
  with open(f"{out}/jax_export.bin", "rb") as f:
    blob = bytearray(f.read())
  start = time.perf_counter()
  exported = jax.export.deserialize(blob)
  deserialize_s = time.perf_counter() - start
  start = time.perf_counter()
  serve = tf.saved_model.load(f"{out}/saved_model").signatures["serving_default"]
  load_s = time.perf_counter() - start
  for n in BATCHES:
    result[f"{info['what']}/jax/{n}"] = np.asarray(exported.call(images[:n]))
    result[f"{info['what']}/tf/{n}"] = serve(images=tf.constant(images[:n]))[
        info["output"]["name"]].numpy()
  report[info["what"]] = {"platforms": list(exported.platforms), "deserialize_s": deserialize_s,
                          "saved_model_load_s": load_s}
np.savez(sys.argv[2], **result)
assert "resizer_jax" not in sys.modules
print(json.dumps(report))
""".replace("BATCHES", repr(BATCHES))


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
  """(workdir, {what: export directory}) of the tiny demo run, exported through the CLI."""
  workdir, root = tiny_run[0], tmp_path_factory.mktemp("exports")
  outs = {what: root / what for what in export.WHAT}
  outs["resizer"].mkdir()  # An empty directory is taken, as an absent one.
  # Both at once: most of each is importing TensorFlow and JAX.
  procs = [subprocess.Popen(
      [sys.executable, "-m", "resizer_jax.export", f"--workdir={workdir}", f"--what={what}",
       f"--out={out}"], cwd=REPO, env=ONE_DEVICE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for what, out in outs.items()]
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert stderr == "", stderr[-3000:]  # The quiet console of resizer_jax.main.
    print(stdout.strip())  # {"bytes": ...}: the sizes docs/export.md quotes.
  return workdir, outs


def test_artifacts_serve_two_batch_sizes_in_a_process_without_resizer_jax(exported, tmp_path):
  workdir, outs = exported
  run = resizer_jax.load(workdir)
  size = run.config.data.input_size
  images = np.random.default_rng(0).integers(0, 256, (max(BATCHES), size, size, 3), np.uint8)
  np.save(tmp_path / "images.npy", images)
  out = subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "images.npy"),
                        str(tmp_path / "served.npz"), *map(str, outs.values())],
                       env=ONE_DEVICE, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  print(report)  # The load times docs/export.md quotes.
  assert all(r["platforms"] == list(export.PLATFORMS) for r in report.values())

  served = np.load(tmp_path / "served.npz")
  for n in BATCHES:
    # The artifacts take input_size images as they are: so does preprocess=None.
    logits, resized = run.predict(images[:n], None), run.resize(images[:n], None)
    assert logits.shape == (n, run.config.num_classes) and resized.shape == (n, 16, 16, 3)
    for artifact in ("jax", "tf"):
      # Logits: absolute. The resizer's output is in 0..255 units: relative to that scale.
      np.testing.assert_allclose(served[f"model/{artifact}/{n}"], logits, rtol=0, atol=1e-5)
      np.testing.assert_allclose(served[f"resizer/{artifact}/{n}"] / 255, resized / 255, rtol=0,
                                 atol=1e-5)


def test_export_json_says_what_a_server_needs(exported):
  workdir, outs = exported
  run = resizer_jax.load(workdir)
  size = run.config.data.input_size
  for what, out in outs.items():
    info = json.loads((out / "export.json").read_text())
    assert sorted(os.listdir(out)) == ["export.json", "jax_export.bin", "saved_model"]
    assert info["what"] == what and info["step"] == run.step
    assert info["input"] == {"name": "images", "shape": [None, size, size, 3], "dtype": "uint8",
                             "meaning": info["input"]["meaning"]}
    assert info["output"]["shape"] == ([None, 4] if what == "model" else [None, 16, 16, 3])
    assert info["output"]["name"] == {"model": "logits", "resizer": "resized"}[what]
    assert info["output"]["dtype"] == "float32"
    assert (info["resizer"]["name"], info["backbone"]["name"], info["num_classes"]) == (
        "learned", "resnet_tiny", 4)
    names = getattr(run, "class_names", None)
    assert info["class_names"] == (None if names is None else list(names))
  # The resizer's artifacts carry the resizer's variables only.
  assert os.path.getsize(outs["resizer"] / "jax_export.bin") < os.path.getsize(
      outs["model"] / "jax_export.bin") / 5


@pytest.mark.parametrize("case", ["not a run", "unknown what", "non-empty out", "missing step",
                                  "failure while writing"])
def test_bad_input_is_refused_and_nothing_is_written(case, tiny_run, tmp_path, monkeypatch):
  workdir, out = tiny_run[0], tmp_path / "exports" / "out"
  kwargs = dict(workdir=workdir, what="model", out=str(out))
  error, message = ValueError, None
  if case == "not a run":
    kwargs["workdir"] = str(tmp_path)
    error, message = FileNotFoundError, f"no checkpoint under {tmp_path}/checkpoints: give the workdir"
  elif case == "unknown what":
    kwargs["what"], message = "logits", "unknown --what='logits'; valid: model, resizer"
  elif case == "non-empty out":
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    message = f"{out} exists and is not an empty directory; give a new --out"
  elif case == "missing step":
    error, kwargs["step"] = FileNotFoundError, 7
    message = f"no checkpoint of step 7 in {workdir}/checkpoints; saved steps: 6, 12"
  else:
    def fail(*args):
      raise RuntimeError("disk full")
    monkeypatch.setattr(export, "_write_saved_model", fail)
    error, message = RuntimeError, "disk full"
  with pytest.raises(error) as raised:
    export.export(**kwargs)
  assert message in str(raised.value)
  if case == "non-empty out":
    assert os.listdir(out) == ["keep.txt"]
  else:
    assert not out.exists()
    assert not (out.parent.exists() and os.listdir(out.parent))  # No half-written sibling either.


def test_the_cli_shows_a_user_error_in_one_line(tiny_run, tmp_path):
  out = subprocess.run([sys.executable, "-m", "resizer_jax.export", f"--workdir={tiny_run[0]}",
                        "--what=logits", f"--out={tmp_path / 'out'}"], cwd=REPO, env=ONE_DEVICE,
                       capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 2
  assert out.stderr.splitlines() == ["error: unknown --what='logits'; valid: model, resizer  "
                                     "(--verbosity=1 shows the traceback)"]
  assert not (tmp_path / "out").exists()
