"""Position-embedding resize against PyTorch's bicubic; pixel shuffle against docs/method.md §6;
drop-path (stochastic depth) against InternVL's schedule and timm's `DropPath`."""

import dataclasses
import json
import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tolerance
from vqathinker_jax import factory
from vqathinker_jax.model import hf_checkpoint, vision
from vqathinker_jax.model.config import VisionConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("in_size, out_size", [(32, 40), (32, 32), (4, 6), (6, 4), (32, 16)])
def test_bicubic_matrix_matches_torch_interpolate(in_size, out_size):
  import torch
  grid = np.random.default_rng(0).standard_normal((1, 5, in_size, in_size)).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.tensor(grid), size=(out_size, out_size),
                                        mode="bicubic", align_corners=False).numpy()
  ours = np.asarray(vision.resize_pos_embed(grid[0].transpose(1, 2, 0), out_size, out_size))
  # A 4x4-tap weighted sum per output, in our order and in torch's.
  tolerance.assert_close(ours.transpose(2, 0, 1), ref[0], 92, name="resized")


def test_bicubic_rows_sum_to_one_and_identity_at_same_size():
  m = vision.bicubic_matrix(32, 40)
  tolerance.assert_close(m.sum(1), np.ones(40), 4, name="row sums")
  np.testing.assert_array_equal(vision.bicubic_matrix(7, 7), np.eye(7, dtype=np.float32))


def test_pixel_shuffle_token_order():
  """Token (i, j) = patches (2i,2j), (2i,2j+1), (2i+1,2j), (2i+1,2j+1), row-major."""
  N, h, w, C = 2, 4, 6, 3
  x = np.random.default_rng(1).standard_normal((N, h, w, C)).astype(np.float32)
  out = np.asarray(vision.pixel_shuffle(x))
  assert out.shape == (N, (h // 2) * (w // 2), 4 * C)
  for i in range(h // 2):
    for j in range(w // 2):
      expect = np.concatenate([x[:, 2 * i, 2 * j], x[:, 2 * i, 2 * j + 1],
                               x[:, 2 * i + 1, 2 * j], x[:, 2 * i + 1, 2 * j + 1]], -1)
      np.testing.assert_array_equal(out[:, i * (w // 2) + j], expect)


def test_pixel_shuffle_rejects_odd_grid():
  with pytest.raises(ValueError, match="even patch grid"):
    vision.pixel_shuffle(np.zeros((1, 3, 4, 2), np.float32))


# ------------------------------------------------------------------------ drop-path ---

# A narrow 6-block ViT at 28 px (4 patches + CLS): cheap enough for thousands of frames.
SMALL = VisionConfig(hidden_size=16, num_layers=6, num_heads=2, intermediate_size=32,
                     image_size=28, layer_scale_init=1.0)


def small_vit(rate: float, seed: int = 0) -> vision.InternViT:
  """The same parameters at every rate (the rate creates none)."""
  cfg = dataclasses.replace(SMALL, drop_path_rate=rate)
  return vision.InternViT(cfg, -1, dtype=jnp.float32, param_dtype=jnp.float32,
                          rngs=nnx.Rngs(seed))


def frames(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((n, 28, 28, 3)).astype(np.float32)


def test_schedule_is_internvl_linspace():
  cfg = VisionConfig(drop_path_rate=0.1)
  want = [float(x) for x in np.linspace(0.0, 0.1, 24)]  # torch.linspace(0, 0.1, 24)
  assert cfg.drop_path_rates() == pytest.approx(want, abs=1e-12)
  assert [b.drop_rate for b in small_vit(0.3).blocks] == pytest.approx(
      list(np.linspace(0.0, 0.3, 6)), abs=1e-12)
  with pytest.raises(ValueError, match="drop_path_rate"):
    VisionConfig(drop_path_rate=1.0)


def test_drop_path_off_is_bit_identical():
  """Rate 0 with a key, or a rate with no key, is the deterministic forward exactly."""
  pix = frames(8)
  plain = np.asarray(small_vit(0.0)(pix))
  np.testing.assert_array_equal(np.asarray(small_vit(0.0)(pix, jax.random.key(3))), plain)
  np.testing.assert_array_equal(np.asarray(small_vit(0.4)(pix)), plain)
  np.testing.assert_array_equal(np.asarray(small_vit(0.4)(pix, None)), plain)


def test_drop_path_is_reproducible_from_the_key():
  vit, pix = small_vit(0.5), frames(16)
  a = np.asarray(vit(pix, jax.random.key(1)))
  np.testing.assert_array_equal(np.asarray(vit(pix, jax.random.key(1))), a)
  assert not np.array_equal(np.asarray(vit(pix, jax.random.key(2))), a)
  assert not np.array_equal(np.asarray(vit(pix)), a)


def test_skip_rate_per_block_matches_the_schedule(monkeypatch):
  """Every branch of block l drops a frame with probability linspace(0, rate)[l] (binomial
  test over 4000 frames per branch), the two branches of a block independently, and a
  kept frame is the branch times exactly float32(1 / (1 - p))."""
  from scipy import stats
  calls = []
  real = vision.drop_path

  def spy(branch, key, rate):
    out = real(branch, key, rate)
    b, o = np.asarray(branch), np.asarray(out)
    dropped = np.all(o == 0, axis=(1, 2))
    assert np.all(np.abs(b).max(axis=(1, 2)) > 0)  # a zero means "dropped", never "was 0"
    np.testing.assert_array_equal(o[~dropped], b[~dropped] * np.float32(1.0 / (1.0 - rate)))
    calls.append((rate, dropped))
    return out

  monkeypatch.setattr(vision, "drop_path", spy)
  rate, n = 0.5, 4000
  small_vit(rate)(frames(n), jax.random.key(0))
  schedule = np.linspace(0.0, rate, SMALL.num_layers)
  # Block 0 has rate 0 (InternVL's nn.Identity): no draw. Then attention, MLP per block.
  assert [c[0] for c in calls] == pytest.approx(np.repeat(schedule[1:], 2), abs=1e-12)
  for p, dropped in calls:
    assert stats.binomtest(int(dropped.sum()), n, p).pvalue > 1e-4, (p, dropped.mean())
  for (_, attn), (_, mlp) in zip(calls[::2], calls[1::2]):
    assert not np.array_equal(attn, mlp)
  masks = np.stack([d for _, d in calls])
  assert len({m.tobytes() for m in masks}) == len(masks)  # every branch its own mask


def test_expected_output_is_the_no_drop_output():
  """E[drop_path(branch)] = branch, and a block whose only branch drops (ls2 = 0) has the
  deterministic block's output as its mean over keys."""
  p, K = 0.4, 20000
  branch = jnp.asarray(np.random.default_rng(0).standard_normal((3, 2, 4)), jnp.float32)
  keys = jax.random.split(jax.random.key(0), K)
  mean = jax.vmap(lambda k: vision.drop_path(branch, k, p))(keys).mean(0)
  sd = np.sqrt(p / (1 - p) / K) * np.abs(np.asarray(branch))  # of the mean, per entry
  assert np.all(np.abs(np.asarray(mean - branch)) <= 5 * sd + 1e-6)

  block = small_vit(0.9).blocks[-1]
  block.ls2[...] = jnp.zeros_like(block.ls2[...])
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 16)), jnp.float32)
  want = np.asarray(block(x))
  outs = jax.vmap(lambda k: block(x, k))(keys)
  delta = np.asarray(want - x)  # the attention branch
  q = block.drop_rate
  sd = np.sqrt(q / (1 - q) / K) * np.abs(delta)
  assert np.all(np.abs(np.asarray(outs.mean(0)) - want) <= 5 * sd + 1e-5)


def _chat_config(**vision):
  return {"llm_config": dict(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128),
          "vision_config": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=96, image_size=56, patch_size=14, **vision)}


def test_rate_from_the_run_config_or_the_checkpoint(tmp_path):
  read = lambda cfg, rate: hf_checkpoint.config_from_hf(
      cfg, has_lm_head=True, drop_path_rate=rate).vision.drop_path_rate
  with_rate_json = _chat_config(drop_path_rate=0.2)
  assert read(with_rate_json, 0.0) == 0.0    # off by default, whatever the checkpoint says
  assert read(with_rate_json, -1.0) == 0.2   # the checkpoint's own
  assert read(with_rate_json, 0.05) == 0.05  # or the run's
  assert read(_chat_config(), -1.0) == 0.0   # InternVisionConfig's default

  c = runpy.run_path(str(ROOT / "configs" / "base.py"))["get_config"]()
  (tmp_path / "config.json").write_text(json.dumps(with_rate_json))
  c.model.checkpoint = str(tmp_path)
  c.model.drop_path_rate = -1.0
  assert factory.model_config(c).vision.drop_path_rate == 0.2
  c.model.drop_path_rate = 0.0
  assert factory.model_config(c).vision.drop_path_rate == 0.0
  c.model.checkpoint, c.model.drop_path_rate = "", 0.3  # random init: the run's rate
  assert factory.model_config(c).vision.drop_path_rate == 0.3


@pytest.mark.parametrize("scan, remat", [(False, "full"), (True, "off"), (True, "full")])
def test_vit_remat_and_scan_keep_values_and_gradients(scan, remat):
  """`scan_layers` (one `lax.scan` over the stacked blocks, which keeps remat effective on
  XLA:CPU) and remat give the plain loop's output and each block's gradient."""
  def vit(scan_layers):
    return vision.InternViT(SMALL, -1, dtype=jnp.float32, param_dtype=jnp.float32,
                            rngs=nnx.Rngs(0), scan_layers=scan_layers)
  pix = frames(3)
  graphdef, params = nnx.split(vit(False))
  variant_graphdef, variant_params = nnx.split(vit(scan))
  assert jax.tree.structure(variant_params) == jax.tree.structure(params)  # per-block storage

  def loss(params, graphdef, remat):
    out = nnx.merge(graphdef, params)(pix, None, remat)
    return jnp.sum(jnp.sin(out))

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2))
  want, got = grad(params, graphdef, "off"), grad(params, variant_graphdef, remat)
  name = f"scan={scan}, remat={remat}"
  tolerance.assert_close(got[0], want[0], 4, name=f"loss, {name}")
  for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    tolerance.assert_close(np.asarray(g), np.asarray(w), 16, name=f"grad, {name}")
  hlo = jax.jit(loss, static_argnums=(1, 2)).lower(params, variant_graphdef, remat).as_text()
  assert ("while" in hlo) == scan  # a real loop, not an unrolled copy


def test_vit_scan_with_drop_path_keys_falls_back_to_the_loop():
  """Blocks with different drop-path rates under a key cannot share one scanned body: the
  scanned ViT then runs the loop, with the same masks."""
  cfg = dataclasses.replace(SMALL, drop_path_rate=0.4)
  loop, scanned = (vision.InternViT(cfg, -1, dtype=jnp.float32, param_dtype=jnp.float32,
                                    rngs=nnx.Rngs(0), scan_layers=s) for s in (False, True))
  pix, key = frames(8), jax.random.key(5)
  np.testing.assert_array_equal(np.asarray(scanned(pix, key)), np.asarray(loop(pix, key)))
  tolerance.assert_close(np.asarray(scanned(pix)), np.asarray(loop(pix)), 8, name="no key")


def test_patch_conv_gradients_are_the_convolutions():
  """`patch_conv`'s own backward (matmuls over the patches) gives the cotangents XLA's
  convolution transpose gives, for the kernel and the pixels alike."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  pix = jax.random.normal(k1, (3, 56, 42, 3))
  kernel = jax.random.normal(k2, (14, 14, 3, 8))
  g = jax.random.normal(k3, (3, 4, 3, 8))
  np.testing.assert_array_equal(vision.patch_conv(pix, kernel), vision._conv(pix, kernel))
  loss = lambda conv: lambda x, k: jnp.sum(conv(x, k) * g)
  want = jax.grad(loss(vision._conv), (0, 1))(pix, kernel)
  got = jax.grad(loss(vision.patch_conv), (0, 1))(pix, kernel)
  for name, a, b in zip(("pixels", "kernel"), got, want):
    # each a sum of 8 (pixels) or 36 (kernel) products, in another order
    tolerance.assert_close(a, b, 16, name=name)
