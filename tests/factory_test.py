"""Config -> objects: frame normalisation on host and on device, the model a config
describes (its motion branch included), and errors that name the field."""

import pathlib
import runpy

import jax.numpy as jnp
import numpy as np
import pytest

import tolerance
from vqathinker_jax import factory

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _demo():
  return runpy.run_path(str(ROOT / "configs/demo.py"))["get_config"]()


def test_normalize_frames_host_and_device_agree_with_imagenet_statistics():
  frames = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8)
  host = factory.normalize_frames(frames)
  device = np.asarray(factory.normalize_frames(jnp.asarray(frames)))
  assert host.dtype == device.dtype == np.float32
  want = (frames / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  # XLA may divide as a multiply by the reciprocal: one more rounding than numpy.
  tolerance.assert_close(host, want, 2, name="normalised frames, host")
  tolerance.assert_close(device, want, 4, name="normalised frames, device")


def test_model_config_follows_the_arch_and_its_motion_switch():
  c = _demo()
  cfg = factory.model_config(c)
  assert cfg.motion is None and cfg.text.hidden_size == c.model.arch.text.hidden_size
  c.model.arch.motion.enabled = True
  assert factory.model_config(c).motion is not None


def test_build_model_random_init_and_slowfast_without_checkpoint():
  c = _demo()
  mesh = factory.make_mesh(c)
  m, cfg = factory.build_model(c, mesh)
  assert cfg == factory.model_config(c) and m.cfg == cfg
  c.model.slowfast_weights = "/tmp/slowfast.safetensors"
  with pytest.raises(ValueError, match="config.model.slowfast_weights.*needs config.model.checkpoint"):
    factory.build_model(c, mesh)


def test_tokenizer_demo_is_built_once_under_the_workdir(tmp_path):
  c = _demo()
  tok = factory.tokenizer(c, tmp_path)
  files = tmp_path / "tokenizer" / "tokenizer.json"
  stamp = files.stat().st_mtime_ns
  again = factory.tokenizer(c, tmp_path)
  assert files.stat().st_mtime_ns == stamp
  np.testing.assert_array_equal(again.encode("<answer>3.25</answer>"),
                                tok.encode("<answer>3.25</answer>"))
