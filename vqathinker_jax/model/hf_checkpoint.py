"""Hugging Face InternVL checkpoints (safetensors only) <-> our parameters; Qwen2.5-VL's
names and config are `qwen_checkpoint`'s, read and written by the same `load` and `save`.

Two layouts exist in the wild:
  "hf"   transformers-native `InternVLForConditionalGeneration` (the `-hf` repos and what
         transformers' `save_pretrained` writes): `vision_tower.*`,
         `multi_modal_projector.*`, `language_model.model.*`, `language_model.lm_head.*`
         (transformers' in-memory names `model.vision_tower.*`, `lm_head.*`, ... too).
  "chat" the original remote-code `InternVLChatModel` (OpenGVLab/InternVL3-*, VQAThinker):
         `vision_model.*` with fused `attn.qkv`, `mlp1.{0,1,3}`, `language_model.*`.
Loading reads one tensor at a time and places it on the mesh, so host memory peaks at
about the largest tensor, not the model. Export always writes the "hf" layout.
Checkpoints hold `vocab_size` embedding and LM-head rows; we store
`TextConfig.padded_vocab_size` (`VOCAB_AXES`): loading pads with zeros, export cuts them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import tempfile
from typing import Callable, Iterator

from etils import epath
import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from vqathinker_jax.model import families, internvl, qwen_checkpoint, sharding, slowfast
from vqathinker_jax.model.config import (DTYPES, CheckpointError, ModelConfig, TextConfig,
                                         VisionConfig, dtype_name)
from vqathinker_jax.model.motion import MotionProjector

INDEX_FILE = "model.safetensors.index.json"
MOTION_PREFIX = "motion_mlp."  # VQAThinker's projector, nn.Sequential indices 0, 1, 3
SLOWFAST_PREFIX = "slowfast_model.feature_extraction."  # PyTorchVideo's `blocks.` 0..4
MOTION_CONFIG_KEY = "vqathinker_motion"  # our config.json entry for SlowFastConfig
DEFAULT_IMAGE_TOKEN_ID = 151667  # <IMG_CONTEXT> in the InternVL3 tokenizer

# Layout conversions, checkpoint tensor -> ours (PyTorch stores Linear as [out, in]).
TO_OURS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "vec": lambda t: t,
    "linear": lambda t: t.T,
    "conv": lambda t: t.transpose(2, 3, 1, 0),  # [o, i, kh, kw] -> [kh, kw, i, o]
    "token": lambda t: t.reshape(-1),            # [1, 1, C] -> [C]
    "pos": lambda t: t.reshape(t.shape[-2], t.shape[-1]),  # [1, 1+P, C] -> [1+P, C]
    "conv3d": lambda t: t.transpose(2, 3, 4, 1, 0),  # [o, i, kt, kh, kw] -> [kt, kh, kw, i, o]
}
FROM_OURS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "vec": lambda t: t,
    "linear": lambda t: t.T,
    "conv": lambda t: t.transpose(3, 2, 0, 1),
    "token": lambda t: t.reshape(1, 1, -1),
    "pos": lambda t: t[None],
    "conv3d": lambda t: t.transpose(4, 3, 0, 1, 2),
}
# Our vocabulary-indexed parameters -> their vocabulary axis, stored padded to
# `TextConfig.padded_vocab_size` (so it splits over `tensor`); checkpoints hold `vocab_size`.
VOCAB_AXES = {"llm.embed": 0, "llm.lm_head.kernel": 1}
# transformers' in-memory names -> the names its save_pretrained writes.
HF_ALIASES = (("model.vision_tower.", "vision_tower."),
              ("model.multi_modal_projector.", "multi_modal_projector."),
              ("model.language_model.", "language_model.model."),
              ("lm_head.", "language_model.lm_head."))


# ---------------------------------------------------------------- configuration ---

def _pair(v) -> int:
  if isinstance(v, (list, tuple)):
    if len(set(v)) != 1:
      raise CheckpointError(f"non-square size {v} is not supported")
    return int(v[0])
  return int(v)


def _text_config(d: dict, tied: bool) -> TextConfig:
  rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise CheckpointError(f"rope type {rope_type!r} is not supported (only 'default')")
  if d.get("use_sliding_window"):
    raise CheckpointError("use_sliding_window=true is not supported")
  if d.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"LLM hidden_act {d['hidden_act']!r} is not supported (only silu)")
  heads = d["num_attention_heads"]
  return TextConfig(
      vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
      num_layers=d["num_hidden_layers"], num_heads=heads,
      num_kv_heads=d.get("num_key_value_heads") or heads,
      head_dim=d.get("head_dim") or d["hidden_size"] // heads,
      intermediate_size=d["intermediate_size"], rms_norm_eps=d.get("rms_norm_eps", 1e-6),
      rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
      max_position_embeddings=d.get("max_position_embeddings", 32768),
      tie_word_embeddings=tied)


def _vision_config(v: dict, layout: str) -> VisionConfig:
  if v.get("hidden_act", "gelu") != "gelu":
    raise CheckpointError(f"vision hidden_act {v['hidden_act']!r} is not supported (only gelu)")
  common = dict(hidden_size=v["hidden_size"], num_layers=v["num_hidden_layers"],
                num_heads=v["num_attention_heads"], intermediate_size=v["intermediate_size"],
                patch_size=_pair(v.get("patch_size", 14)), image_size=_pair(v.get("image_size", 448)),
                norm_type=v.get("norm_type", "layer_norm"),
                layer_norm_eps=v.get("layer_norm_eps", 1e-6))
  if layout == "hf":
    return VisionConfig(**common, qkv_bias=v.get("attention_bias", False),
                        qk_norm=v.get("use_qk_norm", False),
                        layer_scale_init=v.get("layer_scale_init_value", 0.1),
                        final_norm=not v.get("use_mean_pooling", True))
  return VisionConfig(**common, qkv_bias=v.get("qkv_bias", True),
                      qk_norm=v.get("qk_normalization", False),
                      layer_scale_init=v.get("initializer_factor", 0.1))


def detect_layout(config: dict) -> str:
  if "llm_config" in config:
    return "chat"
  if "text_config" in config:
    return "hf"
  raise CheckpointError("config.json has neither 'text_config' (transformers InternVL) nor "
                        "'llm_config' (InternVLChatModel)")


def _image_token_from_tokenizer(path: pathlib.Path) -> int | None:
  added = path / "added_tokens.json"
  if added.exists():
    tok = json.loads(added.read_text()).get("<IMG_CONTEXT>")
    if tok is not None:
      return int(tok)
  tj = path / "tokenizer.json"
  if tj.exists():
    for t in json.loads(tj.read_text()).get("added_tokens", []):
      if t.get("content") == "<IMG_CONTEXT>":
        return int(t["id"])
  return None


def config_from_hf(config: dict, *, has_lm_head: bool,
                   motion: slowfast.SlowFastConfig | None = None,
                   path: pathlib.Path | None = None, dtype: str = "float32",
                   param_dtype: str = "float32", image_token_id: int | None = None,
                   attention: str = "auto", scan_layers: bool = False,
                   drop_path_rate: float = 0.0) -> ModelConfig:
  """ModelConfig from a config.json of either layout.

  Tying is decided by the tensors (an lm_head present means untied): transformers'
  InternVL config defaults `tie_word_embeddings=True`, which is wrong for InternVL3.
  So is the motion branch (see `motion_config`): the release's config.json does not
  announce it. ``drop_path_rate``: `VisionConfig.drop_path_rate`; negative takes
  `checkpoint_drop_path_rate` (the checkpoint's own).
  """
  layout = detect_layout(config)
  if layout == "hf":
    vision = _vision_config(config["vision_config"], "hf")
    text = _text_config(config["text_config"], tied=not has_lm_head)
    feature_layer = config.get("vision_feature_layer", -1)
    if config.get("vision_feature_select_strategy", "default") != "default":
      raise CheckpointError("only vision_feature_select_strategy='default' (drop CLS) is supported")
    token = image_token_id or config.get("image_token_id", DEFAULT_IMAGE_TOKEN_ID)
    act = config.get("projector_hidden_act", "gelu")
  else:
    if config.get("ps_version", "v2") != "v2":
      raise CheckpointError(f"ps_version {config['ps_version']!r}: only 'v2' pixel shuffle is supported")
    vision = _vision_config(config["vision_config"], "chat")
    text = _text_config(config["llm_config"], tied=not has_lm_head)
    feature_layer = config.get("select_layer", -1)
    token = image_token_id or (path and _image_token_from_tokenizer(path)) or DEFAULT_IMAGE_TOKEN_ID
    act = "gelu"
  if act != "gelu":
    raise CheckpointError(f"projector_hidden_act {act!r} is not supported (only gelu)")
  if isinstance(feature_layer, (list, tuple)):
    raise CheckpointError("a list of vision_feature_layer indices is not supported")
  if drop_path_rate < 0:
    drop_path_rate = checkpoint_drop_path_rate(config)
  vision = dataclasses.replace(vision, drop_path_rate=float(drop_path_rate))
  return ModelConfig(vision=vision, text=text, image_token_id=int(token), motion=motion,
                     downsample_ratio=config.get("downsample_ratio", 0.5),
                     vision_feature_layer=int(feature_layer), dtype=dtype, param_dtype=param_dtype,
                     attention=attention, scan_layers=scan_layers)


def checkpoint_drop_path_rate(config: dict) -> float:
  """The stochastic-depth rate a config.json's ViT trains with: `vision_config.drop_path_rate`
  (InternVisionConfig's, 0.0 when absent; transformers' own InternVL vision config has none,
  so the "hf" layout gives 0.0)."""
  return float(config.get("vision_config", {}).get("drop_path_rate", 0.0) or 0.0)


def config_to_hf(cfg: ModelConfig) -> dict:
  """config.json for transformers' `InternVLForConditionalGeneration`."""
  v, t = cfg.vision, cfg.text
  text = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=t.vocab_size,
              hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
              num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
              head_dim=t.head_dim, intermediate_size=t.intermediate_size, hidden_act="silu",
              rms_norm_eps=t.rms_norm_eps, max_position_embeddings=t.max_position_embeddings,
              rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
              rope_theta=t.rope_theta, use_sliding_window=False,
              tie_word_embeddings=t.tie_word_embeddings, dtype=cfg.param_dtype)
  vision = dict(model_type="internvl_vision", hidden_size=v.hidden_size,
                num_hidden_layers=_num_vit_blocks(cfg), num_attention_heads=v.num_heads,
                intermediate_size=v.intermediate_size, hidden_act="gelu",
                image_size=[v.image_size] * 2, patch_size=[v.patch_size] * 2,
                attention_bias=v.qkv_bias, use_qk_norm=v.qk_norm, norm_type=v.norm_type,
                layer_norm_eps=v.layer_norm_eps, layer_scale_init_value=v.layer_scale_init,
                use_mean_pooling=not _has_final_norm(cfg), use_absolute_position_embeddings=True)
  out = dict(architectures=["InternVLForConditionalGeneration"], model_type="internvl",
              vision_config=vision, text_config=text, image_token_id=cfg.image_token_id,
              image_seq_length=cfg.tokens_per_frame(), downsample_ratio=cfg.downsample_ratio,
              projector_hidden_act="gelu", vision_feature_layer=-1,
              vision_feature_select_strategy="default",
              tie_word_embeddings=t.tie_word_embeddings, dtype=cfg.param_dtype)
  if cfg.motion is not None:  # transformers ignores the motion tensors; we reload them
    out[MOTION_CONFIG_KEY] = dataclasses.asdict(cfg.motion)
  return out


def _num_vit_blocks(cfg: ModelConfig) -> int:
  """Blocks the model runs: all up to `vision_feature_layer`."""
  return cfg.vision_feature_layer % (cfg.vision.num_layers + 1)


def _has_final_norm(cfg: ModelConfig) -> bool:
  return cfg.vision.final_norm and _num_vit_blocks(cfg) == cfg.vision.num_layers


# ----------------------------------------------------------------- weight map ---

def weight_map(cfg: ModelConfig, layout: str) -> dict[str, tuple[str, str, tuple[int, int] | None]]:
  """Our parameter path -> (checkpoint key, conversion, (part, parts) of a fused tensor)."""
  m: dict[str, tuple[str, str, tuple[int, int] | None]] = {}

  def add(ours, key, kind="vec", part=None):
    m[ours] = (key, kind, part)

  def linear(ours, key, bias=True, part=None):
    add(f"{ours}.kernel", f"{key}.weight", "linear", part)
    if bias:
      add(f"{ours}.bias", f"{key}.bias", "vec", part)

  def norm(ours, key, kind):
    add(f"{ours}.scale", f"{key}.weight")
    if kind == "layer_norm":
      add(f"{ours}.bias", f"{key}.bias")

  v = cfg.vision
  vit = "vision.vit"
  if layout == "hf":
    e = "vision_tower.embeddings"
    add(f"{vit}.patch_kernel", f"{e}.patch_embeddings.projection.weight", "conv")
    add(f"{vit}.patch_bias", f"{e}.patch_embeddings.projection.bias")
    add(f"{vit}.cls", f"{e}.cls_token", "token")
    add(f"{vit}.pos", f"{e}.position_embeddings", "pos")
    for i in range(_num_vit_blocks(cfg)):
      o, k = f"{vit}.blocks.{i}", f"vision_tower.encoder.layer.{i}"
      norm(f"{o}.norm1", f"{k}.layernorm_before", v.norm_type)
      norm(f"{o}.norm2", f"{k}.layernorm_after", v.norm_type)
      for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
        linear(f"{o}.attn.{ours}", f"{k}.attention.{theirs}", bias=v.qkv_bias)
      linear(f"{o}.attn.proj", f"{k}.attention.projection_layer")
      if v.qk_norm:
        norm(f"{o}.attn.q_norm", f"{k}.attention.q_norm", "rms_norm")
        norm(f"{o}.attn.k_norm", f"{k}.attention.k_norm", "rms_norm")
      add(f"{o}.ls1", f"{k}.lambda_1")
      add(f"{o}.ls2", f"{k}.lambda_2")
      linear(f"{o}.fc1", f"{k}.mlp.fc1")
      linear(f"{o}.fc2", f"{k}.mlp.fc2")
    if _has_final_norm(cfg):
      norm(f"{vit}.final_norm", "vision_tower.layernorm", "layer_norm")
    norm("vision.mlp1.norm", "multi_modal_projector.layer_norm", "layer_norm")
    linear("vision.mlp1.fc1", "multi_modal_projector.linear_1")
    linear("vision.mlp1.fc2", "multi_modal_projector.linear_2")
  elif layout == "chat":
    e = "vision_model.embeddings"
    add(f"{vit}.patch_kernel", f"{e}.patch_embedding.weight", "conv")
    add(f"{vit}.patch_bias", f"{e}.patch_embedding.bias")
    add(f"{vit}.cls", f"{e}.class_embedding", "token")
    add(f"{vit}.pos", f"{e}.position_embedding", "pos")
    for i in range(_num_vit_blocks(cfg)):
      o, k = f"{vit}.blocks.{i}", f"vision_model.encoder.layers.{i}"
      norm(f"{o}.norm1", f"{k}.norm1", v.norm_type)
      norm(f"{o}.norm2", f"{k}.norm2", v.norm_type)
      for j, ours in enumerate("qkv"):
        linear(f"{o}.attn.{ours}", f"{k}.attn.qkv", bias=v.qkv_bias, part=(j, 3))
      linear(f"{o}.attn.proj", f"{k}.attn.proj")
      if v.qk_norm:
        norm(f"{o}.attn.q_norm", f"{k}.attn.q_norm", "rms_norm")
        norm(f"{o}.attn.k_norm", f"{k}.attn.k_norm", "rms_norm")
      add(f"{o}.ls1", f"{k}.ls1")
      add(f"{o}.ls2", f"{k}.ls2")
      linear(f"{o}.fc1", f"{k}.mlp.fc1")
      linear(f"{o}.fc2", f"{k}.mlp.fc2")
    norm("vision.mlp1.norm", "mlp1.0", "layer_norm")
    linear("vision.mlp1.fc1", "mlp1.1")
    linear("vision.mlp1.fc2", "mlp1.3")
  else:
    raise ValueError(f"unknown layout {layout!r}")

  lm = "language_model.model"
  add("llm.embed", f"{lm}.embed_tokens.weight")
  for i in range(cfg.text.num_layers):
    o, k = f"llm.layers.{i}", f"{lm}.layers.{i}"
    add(f"{o}.input_norm.scale", f"{k}.input_layernorm.weight")
    add(f"{o}.post_norm.scale", f"{k}.post_attention_layernorm.weight")
    for name in "qkv":
      linear(f"{o}.attn.{name}", f"{k}.self_attn.{name}_proj")
    linear(f"{o}.attn.o", f"{k}.self_attn.o_proj", bias=False)
    for name in ("gate", "up", "down"):
      linear(f"{o}.{name}", f"{k}.mlp.{name}_proj", bias=False)
  add("llm.norm.scale", f"{lm}.norm.weight")
  if not cfg.text.tie_word_embeddings:
    add("llm.lm_head.kernel", "language_model.lm_head.weight", "linear")

  if cfg.motion is not None:  # same names in both layouts; export keeps them
    norm("motion_mlp.norm", f"{MOTION_PREFIX}0", "layer_norm")
    linear("motion_mlp.fc1", f"{MOTION_PREFIX}1")
    linear("motion_mlp.fc2", f"{MOTION_PREFIX}3")
    for ours, (key, kind) in slowfast.torch_names(cfg.motion).items():
      add(f"slowfast.{ours}", SLOWFAST_PREFIX + key, kind)
  return m


# --------------------------------------------------------------------- reading ---

class TensorFiles:
  """Index of the safetensors files of a directory: key -> file, opened lazily."""

  def __init__(self, path: pathlib.Path):
    if path.is_file():  # a single .safetensors file
      path, only = path.parent, [path.name]
    elif not path.is_dir():
      raise FileNotFoundError(f"no checkpoint at {path}")
    else:
      only = None
    index = path / INDEX_FILE
    if only:
      files = only
    elif index.exists():
      weight_map_ = json.loads(index.read_text())["weight_map"]
      files = sorted(set(weight_map_.values()))
    else:
      files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
      bins = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt*")]
      hint = f" (found {bins}: convert them to safetensors; pickle files are never read)" if bins else ""
      raise FileNotFoundError(f"no *.safetensors in {path}{hint}")
    self.key_file: dict[str, pathlib.Path] = {}
    for name in files:
      f = path / name
      if not f.exists():
        raise FileNotFoundError(f"{INDEX_FILE} lists {name}, which is missing from {path}")
      with safe_open(f, "numpy") as h:
        for key in h.keys():
          self.key_file[key] = f
    self._open: dict[pathlib.Path, object] = {}

  def keys(self) -> set[str]:
    return set(self.key_file)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._handle(key).get_slice(key).get_shape())

  def get(self, key: str) -> np.ndarray:
    return self._handle(key).get_tensor(key)

  def _handle(self, key):
    f = self.key_file[key]
    if f not in self._open:
      self._open[f] = safe_open(f, "numpy")
    return self._open[f]


LAYOUT_ALIASES = {"hf": HF_ALIASES, "chat": (), qwen_checkpoint.FAMILY: qwen_checkpoint.ALIASES}


def _canonical(keys, layout: str) -> dict[str, str]:
  """Map canonical key -> key as stored (`LAYOUT_ALIASES`: transformers' in-memory names
  renamed to the on-disk ones). A tensor stored under both names is an error."""
  out = {}
  for key in keys:
    canon = key
    for src, dst in LAYOUT_ALIASES[layout]:
      if key.startswith(src):
        canon = dst + key[len(src):]
        break
    if canon in out:
      raise CheckpointError(f"tensor {canon} is stored under both prefixes: {out[canon]!r} "
                            f"and {key!r}")
    out[canon] = key
  return out


def _ignorable(key: str, cfg: ModelConfig, layout: str) -> bool:
  """Tensors we knowingly leave out: ViT blocks past `vision_feature_layer`, batch-norm
  step counters and SlowFast's classification head (blocks 5, 6)."""
  if key.startswith(SLOWFAST_PREFIX):
    return key.endswith("num_batches_tracked") or int(key[len(SLOWFAST_PREFIX):].split(".")[0]) > 4
  prefix = "vision_tower.encoder.layer." if layout == "hf" else "vision_model.encoder.layers."
  if key.startswith(prefix):
    return int(key[len(prefix):].split(".")[0]) >= _num_vit_blocks(cfg)
  return key in ("vision_tower.layernorm.weight", "vision_tower.layernorm.bias")


def _to_ours(kind: str) -> Callable[[np.ndarray], np.ndarray]:
  """``TO_OURS[kind]``; "flat:a,b,..." is a [D, a, b, ...] tensor flattened to our
  [a·b·..., D] (Qwen2.5-VL's Conv3d patch embedding as a matmul)."""
  if kind.startswith("flat:"):
    return lambda t: t.reshape(t.shape[0], -1).T
  return TO_OURS[kind]


def _from_ours(kind: str) -> Callable[[np.ndarray], np.ndarray]:
  if kind.startswith("flat:"):
    inner = tuple(int(n) for n in kind[len("flat:"):].split(","))
    return lambda t: t.T.reshape(t.shape[1], *inner)
  return FROM_OURS[kind]


def _convert(raw: np.ndarray, kind: str, part) -> np.ndarray:
  if part is not None:
    j, n = part
    rows = raw.shape[0] // n
    raw = raw[j * rows:(j + 1) * rows]
  return _to_ours(kind)(raw)


def _converted_shape(shape: tuple[int, ...], kind: str, part) -> tuple[int, ...]:
  return _convert(np.empty(shape, np.bool_), kind, part).shape


def _checkpoint_shape(ours: str, shape, cfg: ModelConfig) -> tuple[int, ...]:
  """Our parameter's ``shape`` as a checkpoint holds it: the vocabulary padding cut."""
  shape = list(shape)
  if ours in VOCAB_AXES:
    shape[VOCAB_AXES[ours]] = cfg.text.vocab_size
  return tuple(shape)


def _zero_padded(arr: np.ndarray, shape) -> Callable:
  """A `jax.make_array_from_callback` reader of ``arr`` zero-padded at the end of each
  axis to ``shape``, shard by shard (no padded copy of the whole on the host)."""
  def read(idx):
    box = [range(*s.indices(n)) for s, n in zip(idx, shape)]
    out = np.zeros([len(r) for r in box], arr.dtype)
    have = [max(0, min(r.stop, n) - r.start) for r, n in zip(box, arr.shape)]
    out[tuple(slice(0, h) for h in have)] = arr[tuple(slice(r.start, r.start + h)
                                                      for r, h in zip(box, have))]
    return out
  return read


def motion_config(config: dict, stored_shapes: dict[str, tuple]) -> slowfast.SlowFastConfig | None:
  """The motion branch's config when the checkpoint has one (`motion_mlp.*` or SlowFast
  tensors): our `vqathinker_motion` entry if config.json has it, else the reference's (docs/method.md §1), with the
  SlowFast width and depth read off the tensors."""
  sf = {k[len(SLOWFAST_PREFIX):]: v for k, v in stored_shapes.items() if k.startswith(SLOWFAST_PREFIX)}
  if not sf and not any(k.startswith(MOTION_PREFIX) for k in stored_shapes):
    return None
  return slowfast.infer_config(sf, **config.get(MOTION_CONFIG_KEY, {}))


def load_qwen_vision(module, tensors: dict):
  """Copy transformers' Qwen2.5-VL vision tensors (numpy arrays named `visual.*` or
  `model.visual.*`; other keys, e.g. the LLM's, are ignored) into the standalone tower
  ``module`` (`qwen_vision.QwenVisionTower`) in place, by the names and conversions
  `load` uses (`qwen_checkpoint.vision_weight_map`), checking that every parameter is
  present exactly once with the right shape."""
  stored = {k: v for k, v in _canonical(tensors, qwen_checkpoint.FAMILY).items()
            if k.startswith(qwen_checkpoint.VISION_PREFIX)}
  wmap = qwen_checkpoint.vision_weight_map(module.cfg)
  needed = {key for key, _, _ in wmap.values()}
  missing = sorted(needed - set(stored))
  unexpected = sorted(k for k in set(stored) - needed if not k.endswith("inv_freq"))
  if missing or unexpected:
    raise CheckpointError(f"vision tensors do not match the config: missing {missing[:8]}, "
                          f"unexpected {unexpected[:8]}")
  for path_t, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    ours = ".".join(map(str, path_t))
    key, kind, part = wmap[ours]
    arr = _convert(np.asarray(tensors[stored[key]]), kind, part)
    if arr.shape != var.shape:
      raise CheckpointError(f"{key} gives shape {arr.shape} for {ours}, expected {var.shape}")
    var.set_value(jax.numpy.asarray(arr, var.dtype))
  return module


def _fresh_motion_mlp(cfg: ModelConfig, seed: int) -> dict[str, np.ndarray]:
  """A newly initialised `motion_mlp` (the reference's U(0, 0.01) init, docs/method.md §1), flat path -> array."""
  dt = DTYPES[cfg.param_dtype]
  mlp = MotionProjector(cfg.motion.feature_dim(), cfg.text.hidden_size, dtype=dt,
                        param_dtype=dt, rngs=nnx.Rngs(seed))
  return {"motion_mlp." + ".".join(map(str, p)): np.asarray(v[...])
          for p, v in nnx.to_flat_state(nnx.state(mlp))}


def load(path, *, dtype: str = "float32", param_dtype: str = "float32", mesh=None,
         rules=sharding.DEFAULT_RULES, image_token_id: int | None = None,
         slowfast_weights=None, seed: int = 0, attention: str = "auto",
         scan_layers: bool = False, drop_path_rate: float = 0.0,
         second_per_grid_t: float = 1.0):
  """(model, cfg) from a local checkpoint directory; see `model.from_pretrained`."""

  path = pathlib.Path(path)
  if not (path / "config.json").exists():
    raise FileNotFoundError(f"no config.json in {path}")
  config = json.loads((path / "config.json").read_text())
  layout = qwen_checkpoint.FAMILY if qwen_checkpoint.is_qwen(config) else detect_layout(config)
  files = TensorFiles(path)
  if layout == qwen_checkpoint.FAMILY:
    if slowfast_weights is not None:
      raise CheckpointError("slowfast_weights: the motion branch is InternVL's; Qwen2.5-VL "
                            "runs without it (docs/method.md)")
    stored = _canonical(files.keys(), layout)
    cfg = qwen_checkpoint.config_from_hf(
        config, has_lm_head=qwen_checkpoint.LM_HEAD in stored, dtype=dtype,
        param_dtype=param_dtype, attention=attention, scan_layers=scan_layers,
        second_per_grid_t=second_per_grid_t)
    wmap, fresh = qwen_checkpoint.weight_map(cfg), {}
    ignorable = lambda key: qwen_checkpoint.ignorable(key, cfg)
  else:
    if slowfast_weights is not None:  # converted SlowFast tensors replace any in the checkpoint
      sf_files = TensorFiles(pathlib.Path(slowfast_weights))
      foreign = sorted(k for k in sf_files.keys() if not k.startswith(SLOWFAST_PREFIX))
      if foreign or not sf_files.keys():
        raise CheckpointError(f"{slowfast_weights} is not a converted SlowFast file (keys "
                              f"{foreign[:3]}); write one with `python -m "
                              "vqathinker_jax.tools.convert_slowfast IN OUT`")
      files.key_file.update(sf_files.key_file)
    stored = _canonical(files.keys(), layout)
    cfg = config_from_hf(config, has_lm_head="language_model.lm_head.weight" in stored,
                         motion=motion_config(config, {k: files.shape(v) for k, v in stored.items()}),
                         path=path, dtype=dtype, param_dtype=param_dtype,
                         image_token_id=image_token_id, attention=attention,
                         scan_layers=scan_layers, drop_path_rate=drop_path_rate)
    wmap = weight_map(cfg, layout)
    fresh = {}
    if cfg.motion is not None and not any(k.startswith(MOTION_PREFIX) for k in stored):
      # InternVL3 + SlowFast, before VQAThinker training: motion_mlp starts from scratch.
      fresh = _fresh_motion_mlp(cfg, seed)
      wmap = {k: v for k, v in wmap.items() if k not in fresh}
    ignorable = lambda key: _ignorable(key, cfg, layout)

  needed = {key for key, _, _ in wmap.values()}
  missing = sorted(needed - set(stored))
  unexpected = sorted(k for k in set(stored) - needed if not ignorable(k))
  if missing or unexpected:
    msg = [f"checkpoint {path} ({layout} layout) does not match its config.json:"]
    if missing:
      msg.append(f"missing tensors ({len(missing)}): {', '.join(missing[:10])}")
    if unexpected:
      msg.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:10])}")
    raise CheckpointError("\n  ".join(msg))

  mesh = mesh or sharding.single_device_mesh()
  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: families.module_class(cfg)(cfg, nnx.Rngs(0))))
  shardings = sharding.param_shardings(abstract, mesh, rules)
  flat_shardings = dict(nnx.to_flat_state(shardings))

  # Validate every shape before reading any data.
  for path_t, var in nnx.to_flat_state(abstract):
    ours = ".".join(map(str, path_t))
    if ours in fresh:
      continue
    if ours not in wmap:
      raise CheckpointError(f"no checkpoint tensor maps to parameter {ours}")
    key, kind, part = wmap[ours]
    got = _converted_shape(files.shape(stored[key]), kind, part)
    want = _checkpoint_shape(ours, var.shape, cfg)
    if got != want:
      raise CheckpointError(f"tensor {stored[key]} has shape {files.shape(stored[key])}, which "
                            f"gives {got} for {ours}; the config implies {want}")

  last: tuple[str, np.ndarray] | None = None  # fused qkv is read once for q, k and v
  def read(key):
    nonlocal last
    if last is None or last[0] != key:
      last = (key, files.get(stored[key]))
    return last[1]

  leaves = {}
  for path_t, var in nnx.to_flat_state(abstract):
    ours = ".".join(map(str, path_t))
    if ours in fresh:
      arr = fresh[ours]
    else:
      key, kind, part = wmap[ours]
      arr = np.ascontiguousarray(_convert(read(key), kind, part)).astype(var.dtype, copy=False)
      if not np.isfinite(arr).all():
        raise CheckpointError(f"tensor {stored[key]} holds NaN or Inf values")
    sh = flat_shardings[path_t].get_value()
    reader = ((lambda idx, a=arr: a[idx]) if arr.shape == var.shape else
              _zero_padded(arr, var.shape))  # the vocabulary padding (`VOCAB_AXES`)
    leaves[path_t] = var.replace(jax.make_array_from_callback(var.shape, sh, reader))
  state = nnx.from_flat_state(leaves)
  return nnx.merge(graphdef, state), cfg


# --------------------------------------------------------------------- writing ---

def _host_array(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _shards(items: list[tuple[str, int]], max_bytes: int) -> Iterator[list[str]]:
  group, size = [], 0
  for key, nbytes in items:
    if group and size + nbytes > max_bytes:
      yield group
      group, size = [], 0
    group.append(key)
    size += nbytes
  if group:
    yield group


def _write_safetensors(tensors: dict, dest) -> None:
  """A crash never leaves a half-written file under the real name: locally a temporary file
  renamed; for gs:// a local file (safetensors writes only local files) uploaded whole."""
  dest = epath.Path(dest)
  if "://" not in os.fspath(dest):
    tmp = dest.parent / (dest.name + ".tmp")
    save_file(tensors, os.fspath(tmp), metadata={"format": "pt"})
    os.replace(tmp, dest)
    return
  with tempfile.TemporaryDirectory(prefix="vqathinker-export-") as d:
    local = os.path.join(d, dest.name)
    save_file(tensors, local, metadata={"format": "pt"})
    epath.Path(local).copy(dest, overwrite=True)


def save(m, cfg: ModelConfig, path, *, max_shard_bytes: int = 4 << 30,
         dtype: str | None = None, tokenizer_from=None) -> None:
  """Write ``m`` in the transformers layout (config.json + safetensors, sharded past
  ``max_shard_bytes``). Parameters are gathered one shard file at a time.

  ``dtype`` converts on the way out (default: the parameter dtype); ``tokenizer_from``
  copies tokenizer files from a source checkpoint directory.
  """
  path = epath.Path(path)  # a local directory or gs://...
  out_dtype = np.dtype(DTYPES[dtype or cfg.param_dtype])
  wmap = qwen_checkpoint.weight_map(cfg) if cfg.family != "internvl" else weight_map(cfg, "hf")
  flat = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(m))}
  extra = sorted(set(flat) - set(wmap))
  if extra:
    raise CheckpointError(f"parameters with no transformers name: {', '.join(extra[:10])}")
  # Checkpoint key -> our parameters in part order (a fused tensor, e.g. Qwen's vision
  # qkv, is several of ours stacked on its first axis).
  by_key: dict[str, list[str]] = {}
  for ours in sorted(wmap, key=lambda o: (wmap[o][0], (wmap[o][2] or (0, 1))[0])):
    by_key.setdefault(wmap[ours][0], []).append(ours)
  shapes = {o: _checkpoint_shape(o, flat[o].shape, cfg) for o in wmap}  # padding cut
  sizes = [(key, sum(math.prod(shapes[o]) for o in ours) * out_dtype.itemsize)
           for key, ours in by_key.items()]
  groups = list(_shards(sizes, max_shard_bytes))
  writer = jax.process_index() == 0
  if writer:
    path.mkdir(parents=True, exist_ok=True)
  names = (["model.safetensors"] if len(groups) == 1 else
           [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])
  index = {}
  for name, group in zip(names, groups):
    tensors = {}
    for key in group:
      parts = []
      for ours in by_key[key]:
        host = _host_array(flat[ours][...])[tuple(slice(0, n) for n in shapes[ours])]
        parts.append(_from_ours(wmap[ours][1])(host))
      tensors[key] = np.ascontiguousarray(np.concatenate(parts, axis=0) if len(parts) > 1
                                          else parts[0]).astype(out_dtype)
      index[key] = name
    if writer:
      _write_safetensors(tensors, path / name)
  if not writer:
    return
  if len(groups) > 1:
    total = sum(n for _, n in sizes)
    (path / INDEX_FILE).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(index.items()))}, indent=2))
  hf = qwen_checkpoint.config_to_hf(cfg) if cfg.family != "internvl" else config_to_hf(cfg)
  hf["dtype"] = out_dtype.name
  if "text_config" in hf:
    hf["text_config"]["dtype"] = out_dtype.name
  (path / "config.json").write_text(json.dumps(hf, indent=2))
  if tokenizer_from is not None:
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                 "added_tokens.json", "special_tokens_map.json", "chat_template.jinja"):
      src = epath.Path(tokenizer_from) / name
      if src.exists():
        src.copy(path / name, overwrite=True)


def from_pretrained(path, dtype="float32", *, param_dtype=None, mesh=None,
                    rules=sharding.DEFAULT_RULES, image_token_id: int | None = None,
                    slowfast_weights=None, seed: int = 0, attention: str = "auto",
                    scan_layers: bool = False, drop_path_rate: float = 0.0,
                    second_per_grid_t: float = 1.0):
  """Load a local Hugging Face InternVL directory (either layout) or Qwen2.5-VL directory
  (`model_type: qwen2_5_vl`; `qwen_vl.Qwen25VL`, `qwen_checkpoint`) onto ``mesh``.

  Returns ``(model, cfg)``. ``dtype`` is the compute dtype; parameters are stored in
  ``param_dtype`` (default: the same). A checkpoint holding `motion_mlp.*` and
  `slowfast_model.*` tensors (the VQAThinker release, or our export) loads with its
  motion branch. ``slowfast_weights``: a safetensors file from
  `tools/convert_slowfast.py` that adds (or replaces) SlowFast; a checkpoint without
  `motion_mlp` then gets a fresh one, initialised from ``seed``. ``attention``:
  `ModelConfig.attention`, the attention kernel. ``drop_path_rate``: the ViT's
  stochastic depth in training (`VisionConfig.drop_path_rate`; 0 = off, the default;
  negative = the checkpoint's own `vision_config.drop_path_rate`). ``second_per_grid_t``:
  Qwen2.5-VL only, `qwen_vl.QwenVLConfig.second_per_grid_t` (not in its config.json).
  """
  return load(path, dtype=dtype_name(dtype), param_dtype=dtype_name(param_dtype or dtype),
              mesh=mesh, rules=rules, image_token_id=image_token_id,
              slowfast_weights=slowfast_weights, seed=seed, attention=attention,
              scan_layers=scan_layers, drop_path_rate=drop_path_rate,
              second_per_grid_t=second_per_grid_t)


def save_pretrained(m: internvl.InternVL, cfg: ModelConfig, path, **kwargs) -> None:
  """Write ``m`` as a transformers `InternVLForConditionalGeneration` (or, for Qwen2.5-VL,
  `Qwen2_5_VLForConditionalGeneration`) directory."""
  save(m, cfg, path, **kwargs)
