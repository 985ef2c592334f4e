"""Hugging Face Qwen2.5-VL checkpoints (`model_type: qwen2_5_vl`) <-> our parameters: the
config and the weight names; `hf_checkpoint.load`/`save` do the reading and writing for
both families.

Key layouts: on disk (the hub's, and what we write) `visual.*`, `model.*`, `lm_head.weight`;
transformers >= 4.52 in memory `model.visual.*`, `model.language_model.*`. 3B ties the head
to the embedding and stores no `lm_head.weight`.
"""

from __future__ import annotations

from vqathinker_jax.model.config import CheckpointError, TextConfig
from vqathinker_jax.model.qwen_vision import QwenVisionConfig
from vqathinker_jax.model.qwen_vl import FAMILY, QwenVLConfig

# transformers' in-memory names -> the on-disk names (the canonical ones here).
ALIASES = (("model.visual.", "visual."), ("model.language_model.", "model."))
VISION_PREFIX = "visual."
LM_HEAD = "lm_head.weight"


def is_qwen(config: dict) -> bool:
  return config.get("model_type") == FAMILY


def _text(config: dict) -> dict:
  """The text fields: flat at the top (the hub's config.json) or under `text_config`
  (transformers 5.x's `to_dict`), the latter winning."""
  return {**{k: v for k, v in config.items() if k != "vision_config"},
          **(config.get("text_config") or {})}


def config_from_hf(config: dict, *, has_lm_head: bool, dtype: str = "float32",
                   param_dtype: str = "float32", attention: str = "auto",
                   scan_layers: bool = False, second_per_grid_t: float = 1.0) -> QwenVLConfig:
  """QwenVLConfig from a Qwen2.5-VL config.json. Tying follows `tie_word_embeddings`
  (true for 3B), but a checkpoint without `lm_head.weight` is tied whatever it says."""
  t = _text(config)
  rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
  section = rope.get("mrope_section")
  if section is None:
    raise CheckpointError("config.json has no rope_scaling.mrope_section (M-RoPE)")
  if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope"):
    raise CheckpointError(f"rope type {rope.get('rope_type', rope.get('type'))!r} is not "
                              "supported (only M-RoPE)")
  if t.get("use_sliding_window"):
    raise CheckpointError("use_sliding_window=true is not supported")
  if t.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"LLM hidden_act {t['hidden_act']!r} is not supported (only silu)")
  heads = t["num_attention_heads"]
  tied = bool(t.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
  text = TextConfig(
      vocab_size=t["vocab_size"], hidden_size=t["hidden_size"],
      num_layers=t["num_hidden_layers"], num_heads=heads,
      num_kv_heads=t.get("num_key_value_heads") or heads,
      head_dim=t.get("head_dim") or t["hidden_size"] // heads,
      intermediate_size=t["intermediate_size"],
      rms_norm_eps=t.get("rms_norm_eps", 1e-6),  # the checkpoints' (the class default is 1e-5)
      rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 1_000_000.0))),
      max_position_embeddings=t.get("max_position_embeddings", 128000),
      tie_word_embeddings=tied or not has_lm_head, mrope_section=tuple(int(s) for s in section))
  v = config.get("vision_config") or {}
  ids = {k: config[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                "vision_end_token_id") if k in config}
  return QwenVLConfig(vision=QwenVisionConfig.from_hf(v), text=text,
                      # transformers' default when absent is 4 (the checkpoints say 2)
                      tokens_per_second=int(v.get("tokens_per_second", 4)),
                      second_per_grid_t=second_per_grid_t, dtype=dtype,
                      param_dtype=param_dtype, attention=attention, scan_layers=scan_layers,
                      **ids)


def config_to_hf(cfg: QwenVLConfig) -> dict:
  """A config.json in the hub's flat layout, which transformers reads."""
  v, t = cfg.vision, cfg.text
  return dict(
      architectures=["Qwen2_5_VLForConditionalGeneration"], model_type=FAMILY,
      vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
      num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
      num_key_value_heads=t.num_kv_heads, hidden_act="silu", rms_norm_eps=t.rms_norm_eps,
      rope_theta=t.rope_theta, max_position_embeddings=t.max_position_embeddings,
      rope_scaling={"type": "mrope", "mrope_section": list(t.mrope_section)},
      tie_word_embeddings=t.tie_word_embeddings, use_sliding_window=False,
      attention_dropout=0.0, bos_token_id=151643, eos_token_id=151645,
      image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
      vision_start_token_id=cfg.vision_start_token_id,
      vision_end_token_id=cfg.vision_end_token_id,
      vision_config=dict(
          depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
          num_heads=v.num_heads, out_hidden_size=v.out_hidden_size, hidden_act="silu",
          patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
          spatial_merge_size=v.spatial_merge_size, window_size=v.window_size,
          fullatt_block_indexes=list(v.fullatt_block_indexes), in_chans=v.in_chans,
          tokens_per_second=cfg.tokens_per_second))


def patch_kind(cfg: QwenVisionConfig) -> str:
  """The conversion of the Conv3d patch weight [D, C, t, p, p] <-> our [C·t·p·p, D]
  (`hf_checkpoint`'s conversion names carry the shape back)."""
  return f"flat:{cfg.in_chans},{cfg.temporal_patch_size},{cfg.patch_size},{cfg.patch_size}"


# Our parameter path -> (checkpoint key, conversion, (part, parts) of a fused tensor).
WeightMap = dict[str, tuple[str, str, tuple[int, int] | None]]


def _linear(m: WeightMap, ours: str, key: str, bias: bool = True, part=None) -> None:
  m[f"{ours}.kernel"] = (f"{key}.weight", "linear", part)
  if bias:
    m[f"{ours}.bias"] = (f"{key}.bias", "vec", part)


def vision_weight_map(cfg: QwenVisionConfig) -> WeightMap:
  """The vision tower's parameter path (within `qwen_vision.QwenVisionTower`) -> (on-disk
  key, conversion, (part, parts) of the fused qkv)."""
  m: WeightMap = {"patch_embed": ("visual.patch_embed.proj.weight", patch_kind(cfg), None)}
  for i in range(cfg.depth):
    o, k = f"blocks.{i}", f"visual.blocks.{i}"
    m[f"{o}.norm1.scale"] = (f"{k}.norm1.weight", "vec", None)
    m[f"{o}.norm2.scale"] = (f"{k}.norm2.weight", "vec", None)
    for j, name in enumerate("qkv"):  # rows of the fused qkv: [q | k | v]
      _linear(m, f"{o}.attn.{name}", f"{k}.attn.qkv", part=(j, 3))
    _linear(m, f"{o}.attn.proj", f"{k}.attn.proj")
    for name in ("gate", "up", "down"):
      _linear(m, f"{o}.mlp.{name}", f"{k}.mlp.{name}_proj")
  m["merger.ln_q.scale"] = ("visual.merger.ln_q.weight", "vec", None)
  _linear(m, "merger.fc1", "visual.merger.mlp.0")
  _linear(m, "merger.fc2", "visual.merger.mlp.2")
  return m


def weight_map(cfg: QwenVLConfig) -> WeightMap:
  """Our parameter path -> (on-disk key, conversion, (part, parts) of the fused qkv)."""
  m: WeightMap = {f"vision.{k}": v for k, v in vision_weight_map(cfg.vision).items()}
  m["llm.embed"] = ("model.embed_tokens.weight", "vec", None)
  for i in range(cfg.text.num_layers):
    o, k = f"llm.layers.{i}", f"model.layers.{i}"
    m[f"{o}.input_norm.scale"] = (f"{k}.input_layernorm.weight", "vec", None)
    m[f"{o}.post_norm.scale"] = (f"{k}.post_attention_layernorm.weight", "vec", None)
    for name in "qkv":
      _linear(m, f"{o}.attn.{name}", f"{k}.self_attn.{name}_proj")
    _linear(m, f"{o}.attn.o", f"{k}.self_attn.o_proj", bias=False)
    for name in ("gate", "up", "down"):
      _linear(m, f"{o}.{name}", f"{k}.mlp.{name}_proj", bias=False)
  m["llm.norm.scale"] = ("model.norm.weight", "vec", None)
  if not cfg.text.tie_word_embeddings:
    m["llm.lm_head.kernel"] = (LM_HEAD, "linear", None)
  return m


def ignorable(key: str, cfg: QwenVLConfig) -> bool:
  """Rotary buffers some exports carry, and a tied checkpoint's redundant head."""
  return key.endswith("inv_freq") or (key == LM_HEAD and cfg.text.tie_word_embeddings)
