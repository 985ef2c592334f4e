"""Base configuration: every field, with InternVL3-8B (the VQAThinker backbone) defaults.

Run configs import this and override a few fields; command-line overrides use
`--config.a.b=value`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "smoke"  # what main runs: 'smoke' (build/load the model, one checked forward) | 'predict'
  c.seed = 42  # PRNG seed for initialisation and synthetic inputs

  c.model = m = ml_collections.ConfigDict()
  m.checkpoint = ""  # local Hugging Face InternVL directory (either layout); "" = random init from `arch`
  m.slowfast_weights = ""  # converted SlowFast safetensors (tools/convert_slowfast) to add the motion branch
  m.tokenizer = ""  # tokenizer directory ("" = the checkpoint's)
  m.dtype = "float32"  # compute dtype: float32 | bfloat16
  m.param_dtype = "float32"  # parameter storage dtype: float32 | bfloat16
  m.arch = a = ml_collections.ConfigDict()  # architecture, used only when `checkpoint` is ""
  a.image_token_id = 151667  # <IMG_CONTEXT>
  a.vision_feature_layer = -1  # ViT hidden state fed to the projector (-1: last block)
  a.vision = v = ml_collections.ConfigDict()
  v.hidden_size = 1024  # ViT width
  v.num_layers = 24  # ViT blocks
  v.num_heads = 16  # ViT attention heads
  v.intermediate_size = 4096  # ViT MLP width
  v.patch_size = 14  # pixels per patch side
  v.image_size = 448  # frame size the position embeddings are trained at
  v.qkv_bias = True  # bias on q/k/v projections
  v.qk_norm = False  # RMSNorm on q and k (InternViT-6B)
  v.norm_type = "layer_norm"  # layer_norm | rms_norm
  a.text = t = ml_collections.ConfigDict()
  t.vocab_size = 151674  # LLM vocabulary
  t.hidden_size = 3584  # LLM width
  t.num_layers = 28  # decoder layers
  t.num_heads = 28  # query heads
  t.num_kv_heads = 4  # key/value heads (GQA)
  t.head_dim = 128  # per-head width
  t.intermediate_size = 18944  # SwiGLU width
  t.rope_theta = 1_000_000.0  # rotary base
  t.tie_word_embeddings = False  # LM head shares the embedding matrix

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1  # pure data-parallel replicas
  c.mesh.fsdp = -1  # parameter-sharded data parallel (-1: all remaining devices)
  c.mesh.tensor = 1  # tensor (model) parallel

  c.predict = p = ml_collections.ConfigDict()
  p.videos = ""  # comma-separated video paths, or a folder of videos
  p.frames = 12  # frames per video (SPEC §5: 12 at evaluation)
  p.size = 560  # frame side in pixels (multiple of 28)
  p.max_new_tokens = 1024  # greedy generation limit (SPEC §5)
  p.batch_size = 4  # videos per rollout batch
  p.prompt_layout = "train"  # 'train' (SPEC §2) | 'reference_eval' (the release's batch_infer.py)
  p.train_selection = False  # SlowFast training frame selection (T//3, x6) instead of eval (T//4, x4)

  c.smoke = s = ml_collections.ConfigDict()
  s.batch = 2  # videos in the smoke batch
  s.frames = 2  # frames per video
  s.image_size = 448  # frame side in pixels (multiple of 28)
  s.text_tokens = 32  # text tokens around the visual ones
  return c
