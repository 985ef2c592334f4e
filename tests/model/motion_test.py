"""VQAThinker's motion branch end to end: the release layout loads, logits with the motion
token match a reference composed from transformers + PyTorchVideo, SlowFast stays frozen
under an optimiser step, and the batch of videos can be sharded."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file

import tolerance
from hf_tiny import IMAGE_TOKEN, TINY, make_hf_checkpoint, on_mesh, video_batch, write_chat_layout
from ptv_ref import torch_features, torch_slowfast
from vqathinker_jax import model
from vqathinker_jax.model import sharding, slowfast
from vqathinker_jax.model.slowfast import FrozenParam, SlowFastConfig

FRAMES = 6  # training frames; video_batch's 224 px default leaves SlowFast its 7x7 grid
SF = SlowFastConfig(width=8)                        # R50 topology, 1/8 of the channels


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """A tiny random VQAThinker checkpoint in the release's `InternVLChatModel` layout, and
  the torch modules it was written from."""
  root = tmp_path_factory.mktemp("release")
  hf = make_hf_checkpoint(root / "hf", seed=3)
  write_chat_layout(root / "hf", root / "release")
  _, pix, _ = video_batch(seed=99)
  idx = slowfast.slow_indices(FRAMES, True, SF)
  sf = torch_slowfast(SF, torch.from_numpy(pix).permute(0, 4, 1, 2, 3), idx, seed=3)
  torch.manual_seed(3)
  d = hf.config.text_config.hidden_size
  mlp = torch.nn.Sequential(torch.nn.LayerNorm(SF.feature_dim(), eps=1e-5),
                            torch.nn.Linear(SF.feature_dim(), d), torch.nn.GELU(),
                            torch.nn.Linear(d, d)).eval()
  with torch.no_grad():
    for p in mlp.parameters():
      p.normal_(0.0, 0.2)
  tensors = load_file(root / "release" / "model.safetensors")
  for key, value in sf.state_dict().items():  # head (blocks 5, 6) and counters included
    tensors["slowfast_model.feature_extraction." + key[len("blocks."):]] = value.numpy()
  for key, value in mlp.state_dict().items():
    tensors["motion_mlp." + key] = value.numpy()
  save_file(tensors, root / "release" / "model.safetensors", metadata={"format": "pt"})
  return root / "release", hf, sf, mlp


def reference_logits(hf, sf, mlp, ids, pix_BTHWC, mask, train=True):
  """transformers' ViT + projector per frame, PyTorchVideo's SlowFast + a torch
  motion_mlp per video, scattered into the slots in order, then transformers' LLM."""
  B, T = pix_BTHWC.shape[:2]
  with torch.no_grad():
    frames = torch.from_numpy(pix_BTHWC.reshape(B * T, *pix_BTHWC.shape[2:])).permute(0, 3, 1, 2)
    img = hf.model.get_image_features(pixel_values=frames).pooler_output
    img = img.reshape(B, -1, img.shape[-1])
    idx = slowfast.slow_indices(T, train, SF)
    motion = mlp(torch.from_numpy(torch_features(sf, pix_BTHWC, idx, SF.repeat_train if train
                                                 else SF.repeat_eval)))
    emb = hf.get_input_embeddings()(torch.tensor(ids))
    for b in range(B):
      slots = torch.nonzero(torch.tensor(ids[b]) == IMAGE_TOKEN)[:, 0]
      emb[b, slots] = torch.cat([img[b], motion[b:b + 1]])
    return hf(inputs_embeds=emb, attention_mask=torch.tensor(mask)).logits.numpy()


def test_release_layout_logits_match_composed_reference(release, tmp_path):
  path, hf, sf, mlp = release
  m, cfg = model.from_pretrained(path)
  assert cfg.motion == SF and isinstance(m.slowfast, slowfast.SlowFast)
  ids, pix, mask = video_batch(seed=1)
  ours = np.asarray(m(ids, pix, mask, train=True))
  ref = reference_logits(hf, sf, mlp, ids, pix, mask)
  valid = mask.astype(bool)
  assert np.abs(ref[valid]).max() > 0.1
  # Before the motion token the logits are model_test's; from it on they also carry
  # SlowFast's rounding (conv algorithms differ), amplified by motion_mlp's LayerNorm.
  motion_pos = np.array([np.nonzero(row == IMAGE_TOKEN)[0][-1] for row in ids])  # last slot
  before = valid & (np.arange(ids.shape[1])[None] < motion_pos[:, None])
  tolerance.assert_close(ours, ref, tolerance.LOGITS_VS_TORCH, where=before,
                         name="logits before the motion token")
  tolerance.assert_close(ours, ref, 1200, where=valid, name="logits")
  # The motion token matters: another video's SlowFast input changes the logits.
  pix2 = pix.copy()
  pix2[0, :, :, :, 0] += 1.0
  assert np.abs(np.asarray(m(ids, pix2, mask, train=True)) - ours)[0].max() > 1e-3

  # Export (transformers layout) keeps the motion branch and reloads to the same logits.
  model.save_pretrained(m, cfg, tmp_path / "export")
  exported = load_file(tmp_path / "export" / "model.safetensors")
  assert "motion_mlp.1.weight" in exported
  assert "slowfast_model.feature_extraction.4.multipathway_blocks.1.res_blocks.2.branch2.norm_c.running_var" in exported
  m2, cfg2 = model.from_pretrained(tmp_path / "export")
  assert cfg2 == cfg
  # The same float32 weights through the same program.
  np.testing.assert_array_equal(np.asarray(m2(ids, pix, mask, train=True)), ours)


# 56 px frames leave SlowFast a 2x2 grid: the head pools 2x2 instead of 7x7.
TINY_MOTION = dataclasses.replace(TINY, motion=SlowFastConfig(width=8, pool_hw=2))


@pytest.fixture(scope="module")
def tiny():
  """A random tiny model with the motion branch on one device (tests must not mutate it)."""
  return model.init(TINY_MOTION, seed=1, mesh=sharding.single_device_mesh())


def test_optimiser_step_leaves_slowfast_untouched(tiny):
  m = nnx.clone(tiny)
  ids, pix, mask = video_batch(seed=2, size=56)
  opt = nnx.Optimizer(m, optax.adamw(1e-2, weight_decay=0.1), wrt=nnx.Param)

  def loss_fn(m):
    logits = m.forward(ids, pix, mask, train=True)
    labels = jnp.roll(jnp.asarray(ids), -1, axis=1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @nnx.jit
  def step(m, opt):
    opt.update(m, nnx.grad(loss_fn)(m))

  before = jax.tree.map(np.array, nnx.state(m))
  step(m, opt)
  after = nnx.state(m)

  frozen = dict(nnx.to_flat_state(nnx.state(m, FrozenParam)))
  assert frozen and all(p[0] == "slowfast" for p in frozen)
  flat_before = dict(nnx.to_flat_state(before))
  for path, var in nnx.to_flat_state(after):
    changed = not np.array_equal(np.asarray(var[...]), flat_before[path][...])
    if path[0] == "slowfast":
      assert not changed, path
    elif path[0] == "motion_mlp" and path[-1] == "kernel":
      assert changed, path
  # Adam holds two moments per trainable weight and nothing for SlowFast.
  n_param = sum(v.size for v in jax.tree.leaves(nnx.state(m, nnx.Param)))
  n_frozen = sum(v.size for v in jax.tree.leaves(nnx.state(m, FrozenParam)))
  n_opt = sum(np.size(v) for v in jax.tree.leaves(nnx.state(opt, nnx.OptState)))
  assert n_frozen > 0 and 2 * n_param <= n_opt <= 2 * n_param + 8


def test_video_batch_sharded_on_data_and_fsdp(tiny):
  ids, pix, mask = video_batch(seed=3, videos=4, size=56)
  want = np.asarray(tiny(ids, pix, mask, train=True))
  mesh = sharding.make_mesh((2, 2, 2), jax.devices()[:8])
  sharded = on_mesh(tiny, mesh)
  with jax.set_mesh(mesh):
    got = np.asarray(sharded(ids, pix, mask, train=True))
  tolerance.assert_close(got, want, tolerance.SHARDED, name="logits")


@pytest.mark.parametrize("shape,dtype,match", [
    ((2, 2, 56, 56, 3), np.float32, "too few"),                  # 2 frames: no slow pathway
    ((2, 6, 56, 56, 4), np.float32, "channels last|height, width, 3"),
    ((2, 6, 56, 56, 3), np.uint8, "floats"),
])
def test_bad_frames_fail_before_compiling(tiny, shape, dtype, match):
  ids, _, mask = video_batch(seed=4, frames=shape[1], size=56)
  with pytest.raises(ValueError, match=match):
    tiny(ids, np.zeros(shape, dtype), mask, train=True)


def test_missing_motion_slot_is_named(tiny):
  ids, pix, mask = video_batch(seed=5, size=56)
  ids[0, ids[0] == IMAGE_TOKEN] = np.r_[np.full(24, IMAGE_TOKEN), 7]  # drop row 0's motion slot
  with pytest.raises(ValueError, match="sequence 0 holds 24 .* motion token"):
    tiny(ids, pix, mask, train=True)
