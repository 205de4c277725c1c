"""The rehearsal of a Table 1 row on this machine: configs/imagenet.py:tiny,table1=mobilenet_v2 (a
bilinear baseline, learned and bilinear fine-tunes from it over 2 seeds) on the fake ILSVRC2012
through the real builder, killed mid-way and rerun: nothing finished is retrained, and the results
come in Table 1's shape. One row, not tiny's two: the second backbone's five points (a minute of the
second tier) proved nothing the first does not; that each fine-tune starts from its own backbone's
baseline is test_sweep.py's test_the_imagenet_table1_sweep_is_staged_for_every_launcher."""
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from helpers import one_device_env
from resizer_jax import sweep

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # Second tier (.ci/run): a real bootstrap or a long rehearsal.
def test_the_tiny_table1_sweep_killed_and_rerun_trains_each_point_once(fake_imagenet, tmp_path):
  config = f"{REPO}/configs/imagenet.py:tiny,table1=mobilenet_v2"
  workdir = tmp_path / "table1"
  cmd = [sys.executable, "-m", "resizer_jax.sweep", f"--config={config}", f"--workdir={workdir}",
         f"--config.data.data_dir={fake_imagenet['data_dir']}",
         f"--config.data.manual_dir={fake_imagenet['manual_dir']}"]
  # One CPU device (the suite's 8 simulated ones are not the point here): the programs compile faster.
  env = one_device_env()
  points = sweep.load(config).points
  assert [p.stage for p in points] == [0] + [1] * 4

  # Killed (SIGKILL, no chance to save) once the first fine-tune has started: the baseline is
  # finished by then, since every fine-tune starts from it.
  first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
  seen = []
  for line in first.stdout:
    seen.append(line)
    if line.startswith("sweep: point") and "(stage 1" in line:
      os.killpg(first.pid, signal.SIGKILL)
      break
  first.wait()
  assert first.returncode == -signal.SIGKILL, "".join(seen[-30:])
  assert (workdir / points[0].name / "result.json").exists()
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")
            if p.name == "result.json" or "checkpoints" in p.parts}

  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  trained = [l.split()[2] for l in out.stdout.splitlines() if l.startswith("sweep: point")]
  assert set(trained) == {p.name for p in points[1:]}  # Each fine-tune once; no baseline again.
  assert {p: p.stat().st_mtime_ns for p in before} == before
  assert "sweep: 5 finished" in out.stdout
  # As quiet as resizer_jax.main: the sweep's lines and each run's own, no library logging.
  assert not [l for l in (out.stdout + out.stderr).splitlines()
              if l.startswith(("I0000", "W0000", "INFO", "WARNING"))]

  md = (workdir / "results.md").read_text()
  base = "backbone=mobilenet_v2, input=32, resizer=bilinear, target=32"
  assert f"| {base} | baseline (bilinear) | 1 | " in md
  assert md.count("| | resizer=learned | 2 | ") == 1 and md.count("| | resizer=bilinear | 2 | ") == 1
  assert "| learned − bilinear | 2 | " in md  # Paired by seed.
  assert "28.4 |" in md  # The paper's MobileNet-v2 learned error, beside ours.
  assert (workdir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
