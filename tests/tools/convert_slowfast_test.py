"""`python -m vqathinker_jax.tools.convert_slowfast`: a PyTorchVideo checkpoint becomes
safetensors that add the motion branch to a plain InternVL3 checkpoint."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

import ptv_ref
from hf_tiny import video_batch
from vqathinker_jax import model
from vqathinker_jax.model.hf_checkpoint import CheckpointError
from vqathinker_jax.model.slowfast import FrozenParam, SlowFastConfig
from vqathinker_jax.tools import convert_slowfast


@pytest.fixture(scope="module")
def pyth(tmp_path_factory):
  """A PyTorchVideo hub-style checkpoint (`{"model_state": ...}`), width 8, with the head."""
  torch.manual_seed(0)
  m = ptv_ref.create_slowfast(stem_dim_outs=(8, 1))
  path = tmp_path_factory.mktemp("ptv") / "SLOWFAST_8x8_R50.pyth"
  torch.save({"model_state": m.state_dict(), "epoch": 196}, path)
  return path, m


def test_cli_converts_and_from_pretrained_adds_the_motion_branch(pyth, hf_checkpoint, tmp_path):
  src, m_torch = pyth
  out = tmp_path / "slowfast.safetensors"
  run = subprocess.run([sys.executable, "-m", "vqathinker_jax.tools.convert_slowfast", str(src),
                        str(out)], capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  assert "SlowFast-R50, width 8, 288-d features" in run.stdout
  with safe_open(out, "numpy") as f:
    keys = set(f.keys())
  assert all(k.startswith("slowfast_model.feature_extraction.") for k in keys)
  blocks = {k.split(".")[2] for k in keys}
  assert blocks == set("01234") and not any(k.endswith("num_batches_tracked") for k in keys)

  m, cfg = model.from_pretrained(hf_checkpoint[0], slowfast_weights=out, seed=3)
  assert cfg.motion == SlowFastConfig(width=8)
  want = m_torch.state_dict()["blocks.2.multipathway_blocks.0.res_blocks.1.branch2.conv_b.weight"]
  got = m.slowfast.blocks[2].multipathway_blocks[0].res_blocks[1].branch2.conv_b.weight[...]
  np.testing.assert_array_equal(np.asarray(got), want.numpy().transpose(2, 3, 4, 1, 0))
  k = np.asarray(m.motion_mlp.fc1.kernel[...])  # fresh: U(0, 0.01), bias 0
  assert 0 <= k.min() and k.max() <= 0.01 and k.std() > 1e-3
  assert not np.asarray(m.motion_mlp.fc1.bias[...]).any()
  assert isinstance(m.slowfast.blocks[0].multipathway_blocks[0].conv.weight, FrozenParam)
  ids, pix, mask = video_batch(seed=0, size=224)
  assert np.isfinite(np.asarray(m(ids, pix, mask, train=True))).all()


class Pickled:
  """An arbitrary object: loading it would run pickle code."""


def test_bad_inputs_are_named(tmp_path, hf_checkpoint):
  torch.save({"model_state": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "bad.pyth")
  with pytest.raises(ValueError, match="no PyTorchVideo SlowFast tensors"):
    convert_slowfast.convert(tmp_path / "bad.pyth", tmp_path / "out.safetensors")
  with pytest.raises(FileNotFoundError, match="missing.pyth"):
    convert_slowfast.convert(tmp_path / "missing.pyth", tmp_path / "out.safetensors")
  torch.save({"model_state": {"x": torch.zeros(1)}, "obj": Pickled()}, tmp_path / "pickled.pyth")
  with pytest.raises(Exception, match="[Ww]eights only"):  # code in the pickle never runs
    convert_slowfast.convert(tmp_path / "pickled.pyth", tmp_path / "out.safetensors")
  # An InternVL checkpoint passed as SlowFast weights is refused by name.
  with pytest.raises(CheckpointError, match="not a converted SlowFast file"):
    model.from_pretrained(hf_checkpoint[0], slowfast_weights=hf_checkpoint[0] / "model.safetensors")
