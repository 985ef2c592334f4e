"""Model smoke check: build or load the model on the mesh, run one forward, report.

The prompt mimics the InternVL layout (`<img>` + `<IMG_CONTEXT>`xN + `</img>` per frame
amid text) with random token ids and random normalised frames; on Qwen2.5-VL each frame is
an image item of `<|image_pad|>` slots.
"""

from __future__ import annotations

import json
import logging
import math
import time

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqathinker_jax import factory
from vqathinker_jax.model import families
from vqathinker_jax.model.config import ModelConfig


def synthetic_batch(cfg: ModelConfig, s, seed: int):
  """Token ids [B, T] with s.frames image slots per row, frames [B*frames, H, W, 3]."""
  rng = np.random.default_rng(seed)
  if s.image_size % 28:
    raise ValueError(f"smoke.image_size={s.image_size} must be a multiple of 28")
  per_frame = cfg.tokens_per_frame(s.image_size)
  text = rng.integers(0, min(cfg.text.vocab_size, cfg.image_token_id), (s.batch, s.text_tokens))
  visual = np.full((s.batch, s.frames * per_frame), cfg.image_token_id)
  half = s.text_tokens // 2
  ids = np.concatenate([text[:, :half], visual, text[:, half:]], axis=1)
  frames = rng.standard_normal((s.batch * s.frames, s.image_size, s.image_size, 3))
  return ids, frames.astype(jnp.dtype(cfg.dtype))


def run(config, workdir) -> dict:
  mesh = factory.make_mesh(config)
  t0 = time.perf_counter()
  m, cfg = factory.build_model(config, mesh)
  build_s = time.perf_counter() - t0
  ids, frames = synthetic_batch(cfg, config.smoke, config.seed)
  mask = np.ones_like(ids)
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    logits = families.forward(m, ids, frames, mask).block_until_ready()
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    families.forward(m, ids, frames, mask).block_until_ready()
    second_s = time.perf_counter() - t0
  finite = bool(jnp.isfinite(logits).all())
  params = nnx.state(m, nnx.Param)
  report = {
      "status": "ok" if finite else "non-finite logits",
      "devices": jax.device_count(), "mesh": dict(mesh.shape),
      "params": int(sum(math.prod(v.shape) for v in jax.tree.leaves(params))),
      "dtype": cfg.dtype, "input_ids": list(ids.shape), "frames": list(frames.shape),
      "logits": list(logits.shape), "logits_std": float(jnp.std(logits)),
      "build_s": round(build_s, 3), "first_forward_s": round(first_s, 3),
      "second_forward_s": round(second_s, 3),
  }
  workdir = epath.Path(workdir)  # gs:// keeps its scheme
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "smoke.json").write_text(json.dumps(report, indent=2))
  logging.info("smoke report written to %s", workdir / "smoke.json")
  if not finite:
    raise FloatingPointError(f"smoke forward produced non-finite logits: {report}")
  return report
