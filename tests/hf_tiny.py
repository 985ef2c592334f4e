"""Tiny random transformers InternVL checkpoints (both layouts) and batches for tests."""

import json
import pathlib

import numpy as np

from vqathinker_jax.model.config import ModelConfig, TextConfig, VisionConfig

IMAGE_TOKEN = 500
VOCAB = 512

# The same architecture as `tiny_hf_config()`, for tests that need no transformers.
TINY = ModelConfig(
    vision=VisionConfig(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96,
                        image_size=56),
    text=TextConfig(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=16, intermediate_size=128, rope_theta=10000.0,
                    max_position_embeddings=1024),
    image_token_id=IMAGE_TOKEN)


def on_mesh(m, mesh):
  """A copy of model ``m`` placed on ``mesh`` as `model.init` would create it there (the
  same values; no random-init program to compile: sharding_test checks the init itself).
  The copy owns its buffers, so a step that donates them leaves ``m`` intact."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from vqathinker_jax.model import sharding
  graphdef, state = nnx.split(m)
  # Copied first: device_put keeps the source buffer as the shard of its own device.
  return nnx.merge(graphdef, jax.device_put(jax.tree.map(jnp.copy, state),
                                            sharding.param_shardings(state, mesh)))


def tiny_hf_config(*, tied=False, qk_norm=False, norm_type="layer_norm", final_norm=False,
                   image_size=56):
  from transformers import InternVLConfig
  return InternVLConfig(
      vision_config=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=96, image_size=image_size, patch_size=14,
                         attention_bias=True, use_qk_norm=qk_norm, norm_type=norm_type,
                         use_mean_pooling=not final_norm),
      text_config=dict(model_type="qwen2", hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                       vocab_size=VOCAB, max_position_embeddings=1024, rope_theta=10000.0,
                       tie_word_embeddings=tied),
      image_token_id=IMAGE_TOKEN, image_seq_length=(image_size // 28) ** 2,
      tie_word_embeddings=tied)


def randomize_(hf_model, seed=0):
  """transformers inits position/CLS embeddings to zero and layer-scale to a constant;
  random values everywhere make the parity tests see every parameter."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in hf_model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * noise)
      else:
        p.copy_(0.2 * noise)
  return hf_model


def redraw_(torch_module, seed=0):
  """Every parameter of ``torch_module`` re-drawn at scales a trained model has: matrices
  N(0, 1/fan_in), norm weights 1 + 0.1 N (they initialise to 1), biases 0.1 N, so a
  misplaced weight or a skipped norm shows in a parity test."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in torch_module.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim >= 2:
        p.copy_(noise / p[0].numel() ** 0.5)
      elif "norm" in name or "ln_q" in name:
        p.copy_(1.0 + 0.1 * noise)
      else:
        p.copy_(0.1 * noise)
  return torch_module


def make_hf_checkpoint(path: pathlib.Path, seed=0, **kwargs):
  import torch
  from transformers import InternVLForConditionalGeneration
  torch.manual_seed(seed)
  hf = randomize_(InternVLForConditionalGeneration(tiny_hf_config(**kwargs)).eval(), seed)
  hf.save_pretrained(path)
  return hf


def write_chat_layout(hf_dir: pathlib.Path, out_dir: pathlib.Path) -> None:
  """Rewrite a transformers checkpoint in the original `InternVLChatModel` layout.

  The renames invert transformers' public InternVL conversion mapping; q/k/v are fused
  into `attn.qkv` as the remote code stores them.
  """
  from safetensors.numpy import load_file, save_file
  src = load_file(hf_dir / "model.safetensors")
  cfg = json.loads((hf_dir / "config.json").read_text())
  out = {}
  renames = [("vision_tower.embeddings.cls_token", "vision_model.embeddings.class_embedding"),
             ("vision_tower.embeddings.patch_embeddings.projection", "vision_model.embeddings.patch_embedding"),
             ("vision_tower.embeddings.position_embeddings", "vision_model.embeddings.position_embedding"),
             ("vision_tower.encoder.layer.", "vision_model.encoder.layers."),
             (".attention.projection_layer.", ".attn.proj."), (".attention.q_norm.", ".attn.q_norm."),
             (".attention.k_norm.", ".attn.k_norm."), (".lambda_1", ".ls1"), (".lambda_2", ".ls2"),
             (".layernorm_before.", ".norm1."), (".layernorm_after.", ".norm2."),
             ("multi_modal_projector.layer_norm.", "mlp1.0."),
             ("multi_modal_projector.linear_1.", "mlp1.1."),
             ("multi_modal_projector.linear_2.", "mlp1.3.")]
  for key, value in src.items():
    if ".attention.q_proj." in key or ".attention.k_proj." in key or ".attention.v_proj." in key:
      if ".attention.q_proj." not in key:
        continue
      parts = [src[key.replace("q_proj", n)] for n in ("q_proj", "k_proj", "v_proj")]
      key, value = key.replace(".attention.q_proj.", ".attn.qkv."), np.concatenate(parts, 0)
    for a, b in renames:
      key = key.replace(a, b)
    out[key] = value
  out_dir.mkdir(parents=True, exist_ok=True)
  save_file(out, out_dir / "model.safetensors", metadata={"format": "pt"})
  v, t = cfg["vision_config"], cfg["text_config"]
  chat = {
      "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
      "downsample_ratio": 0.5, "ps_version": "v2", "select_layer": -1, "template": "internvl2_5",
      "force_image_size": v["image_size"][0],
      "vision_config": {"architectures": ["InternVisionModel"], "hidden_size": v["hidden_size"],
                        "num_hidden_layers": v["num_hidden_layers"],
                        "num_attention_heads": v["num_attention_heads"],
                        "intermediate_size": v["intermediate_size"], "qkv_bias": True,
                        "qk_normalization": v["use_qk_norm"], "norm_type": v["norm_type"],
                        "layer_norm_eps": v["layer_norm_eps"], "image_size": v["image_size"][0],
                        "patch_size": v["patch_size"][0], "hidden_act": "gelu"},
      "llm_config": {"architectures": ["Qwen2ForCausalLM"], "vocab_size": t["vocab_size"],
                     "hidden_size": t["hidden_size"], "num_hidden_layers": t["num_hidden_layers"],
                     "num_attention_heads": t["num_attention_heads"],
                     "num_key_value_heads": t["num_key_value_heads"],
                     "intermediate_size": t["intermediate_size"], "rms_norm_eps": t["rms_norm_eps"],
                     "rope_theta": t["rope_parameters"]["rope_theta"], "hidden_act": "silu",
                     "max_position_embeddings": t["max_position_embeddings"],
                     "tie_word_embeddings": t["tie_word_embeddings"]},
  }
  (out_dir / "config.json").write_text(json.dumps(chat, indent=2))
  (out_dir / "added_tokens.json").write_text(json.dumps({"<IMG_CONTEXT>": IMAGE_TOKEN}))


def hf_logits(hf_model, ids, pix_NHWC, mask):
  import torch
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   pixel_values=torch.tensor(np.ascontiguousarray(pix_NHWC.transpose(0, 3, 1, 2))))
  return out.logits.float().numpy()


def padded_batch(seed=0, size=56, frames=(2, 1), length=16):
  """Two right-padded sequences with different frame counts, and their frames."""
  rng = np.random.default_rng(seed)
  per_frame = (size // 28) ** 2
  ids = rng.integers(0, IMAGE_TOKEN, (len(frames), length))
  mask = np.zeros_like(ids)
  for b, n in enumerate(frames):
    valid = length - 3 * (b % 2)  # odd rows end in 3 padding tokens
    mask[b, :valid] = 1
    ids[b, 2:2 + n * per_frame] = IMAGE_TOKEN
    ids[b, valid:] = 0
  pix = rng.standard_normal((sum(frames), size, size, 3)).astype(np.float32)
  return ids, pix, mask


def video_batch(seed=0, videos=2, frames=6, size=224, text=6, motion=True):
  """Right-padded prompts of B videos: text, T x P frame slots, (one motion slot,) text;
  odd rows end in 3 padding tokens. Frames [B, T, size, size, 3]."""
  rng = np.random.default_rng(seed)
  slots = frames * (size // 28) ** 2 + motion
  length = 2 * text + slots
  ids = rng.integers(0, IMAGE_TOKEN, (videos, length))
  ids[:, text:text + slots] = IMAGE_TOKEN
  mask = np.ones_like(ids)
  mask[1::2, -3:] = 0
  ids[mask == 0] = 0
  pix = rng.standard_normal((videos, frames, size, size, 3)).astype(np.float32)
  return ids, pix, mask
