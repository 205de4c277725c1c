"""The summary tool: parameters and forward FLOPs of the resizer and the backbone, separately."""
import pathlib

from resizer_jax import summary
from resizer_jax.config_args import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_summary_separates_resizer_and_backbone_costs():
  learned = summary.summarize(load_config(f"{REPO}/configs/demo.py:input=64,target=16"))
  fixed = summary.summarize(load_config(f"{REPO}/configs/demo.py:input=64,target=16,"
                                        "resizer=bilinear"))
  assert [r["part"] for r in learned] == ["resizer (learned)", "backbone (resnet_tiny)"]
  assert (learned[0]["input"], learned[0]["output"]) == ("64x64", "16x16")
  assert learned[1]["output"] == "4"  # The demo's degradations: the dataset's classes.
  assert learned[0]["params"] == 12_035 and fixed[0]["params"] == 0
  # Its first 7x7 conv alone costs 2 * 64*64 * 7*7*3 * 16 FLOPs per image.
  assert learned[0]["flops"] > 2 * 64 * 64 * 147 * 16 > fixed[0]["flops"] > 0
  assert learned[1] == fixed[1]  # The same backbone at the same 16 px costs the same.


def test_summary_of_muller_four_parameters_and_full_resolution_blurs():
  muller = summary.summarize(load_config(f"{REPO}/configs/demo.py:input=64,target=16,"
                                         "resizer=muller"))[0]
  assert (muller["part"], muller["params"]) == ("resizer (muller)", 4)
  # Two 5-tap passes per blur, two blurs, on every input pixel: 2 * 2 * 2 * 5 FLOPs each at least;
  # far below the learned resizer's 7x7 convolution.
  assert 2 * 64 * 64 * 147 * 16 > muller["flops"] > 40 * 64 * 64 * 3
