"""Base configuration: every field, with InternVL3-8B (the VQAThinker backbone) defaults.

Run configs import this and override a few fields; command-line overrides use
`--config.a.b=value`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "train"  # what main runs: 'train' (SFT warm-start, then GRPO) | 'eval' | 'predict' | 'smoke'
  c.seed = 42  # PRNG seed for initialisation and synthetic inputs
  # XLA's persistent compilation cache: a rerun (a resume, an eval) skips the compiles.
  # 'auto' = <workdir>/xla_cache unless JAX_COMPILATION_CACHE_DIR is set; '' = off; or a path.
  c.compile_cache_dir = "auto"

  c.model = m = ml_collections.ConfigDict()
  # The backbone: internvl (InternVL3 + VQAThinker's motion token) | qwen2_5_vl (Qwen2.5-VL,
  # no motion token: docs/method.md §8). A checkpoint must be of this family.
  m.family = "internvl"
  m.checkpoint = ""  # local Hugging Face InternVL or Qwen2.5-VL directory; "" = random init from `arch`
  m.slowfast_weights = ""  # converted SlowFast safetensors (tools/convert_slowfast) to add the motion branch
  m.tokenizer = ""  # tokenizer directory ("" = the checkpoint's; "demo" = build the tiny demo tokenizer)
  m.dtype = "float32"  # compute dtype: float32 | bfloat16
  m.param_dtype = "float32"  # parameter storage dtype: float32 | bfloat16
  m.attention = "auto"  # attention kernel: auto (splash on TPU, cuDNN on GPU) | xla | splash | cudnn
  m.scan_layers = False  # decoder layers + ViT blocks as one lax.scan each (faster compiles; remat holds on CPU)
  # InternViT stochastic depth in the GRPO rollouts and update (the release trains in train
  # mode; evaluation never drops): the last block's rate, linspace(0, rate) over the blocks.
  # 0 = off; -1 = the checkpoint's own vision_config.drop_path_rate (docs/method.md §4, §7)
  m.drop_path_rate = 0.0
  # Qwen2.5-VL only: seconds of video per frame pair of the clips it sees, which sets the
  # temporal RoPE positions (floor(i · s · 2)); 1.0 = frames sampled at 2 fps (its default).
  m.second_per_grid_t = 1.0
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
  a.qwen = q = ml_collections.ConfigDict()  # Qwen2.5-VL's own (family qwen2_5_vl, random init)
  q.image_token_id = 151655  # <|image_pad|>
  q.video_token_id = 151656  # <|video_pad|>
  q.vision_start_token_id = 151652  # <|vision_start|>
  q.vision_end_token_id = 151653  # <|vision_end|>
  q.tokens_per_second = 2  # temporal RoPE positions per second of video
  q.mrope_section = (16, 24, 24)  # M-RoPE frequencies per (t, h, w) row (sums to head_dim / 2)
  q.vision = qv = ml_collections.ConfigDict()  # the vision tower (Qwen2.5-VL-7B's)
  qv.depth = 32  # blocks
  qv.hidden_size = 1280  # width
  qv.intermediate_size = 3420  # SwiGLU width
  qv.num_heads = 16  # attention heads
  qv.window_size = 112  # window-attention side in pixels (8x8 patches)
  qv.fullatt_block_indexes = (7, 15, 23, 31)  # blocks with full (per frame pair) attention
  a.motion = mo = ml_collections.ConfigDict()  # VQAThinker's SlowFast motion branch (random init)
  mo.enabled = False  # add SlowFast + motion_mlp to a random-init model
  mo.width = 64  # slow stem channels (64 = SlowFast-R50)
  mo.depth = 50  # ResNet depth: 50 | 101 | 152
  mo.pool_t_slow = 8  # head AvgPool3d temporal kernel, slow pathway
  mo.pool_t_fast = 32  # head AvgPool3d temporal kernel, fast pathway
  mo.pool_hw = 7  # head AvgPool3d spatial kernel

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1  # pure data-parallel replicas
  c.mesh.fsdp = -1  # parameter-sharded data parallel (-1: all remaining devices)
  c.mesh.tensor = 1  # tensor (model) parallel

  c.data = d = ml_collections.ConfigDict()
  d.data_dir = ""  # TFDS data_dir with the data sets built by `python -m data_pipelines.prepare`
  d.train = "lsvq_train"  # training data set name (built at frames x size)
  d.train_split = "train"  # split of `train` to train on
  d.frames = 6  # frames per training video (docs/method.md §2)
  d.size = 448  # training frame side in pixels (multiple of 28)
  d.perturb_modes = ""  # temporal perturbations to draw, comma-separated ("" = all of perturb.MODES)
  d.read_threads = 4  # records read at once per process
  d.prefetch = 4  # batches held ahead per process
  d.worker_count = 0  # Grain worker processes (0: read in the trainer's process)
  # Turn frames by the clips' rotation metadata (phone clips), as a player shows them. False:
  # the stored orientation, as the reference's reader does (its rotated clips reach the
  # model sideways); such sets are built and read as `{name}_{T}x{S}_norot`
  # (prepare --nohonour_rotation). Also used by predict.
  d.honour_rotation = True
  d.synthetic = sy = ml_collections.ConfigDict()  # generate + build the synthetic data set if missing
  sy.enabled = False  # on: `train` and the eval sets are the synthetic set, made under data_dir
  sy.num_videos = 48  # clips to render
  sy.num_frames = 24  # frames per rendered clip
  sy.height = 64  # rendered clip height (even)
  sy.width = 96  # rendered clip width (even)
  sy.seed = 0  # rendering seed
  sy.scenes = 0  # distinct scenes (clip i shows scene i % scenes; 0 = one per clip)
  sy.distortions = ""  # kinds a clip may get, comma-separated (synthetic.WEIGHTS; "" = all eight)
  sy.strengths = "1,2,3"  # levels an active distortion may take (a subset holds some out)
  sy.exposure = "both"  # exposure's direction: both (drawn per clip) | under | over
  sy.test_fraction = 0.25  # held-out share (by id hash) for evaluation

  c.sft = f = ml_collections.ConfigDict()  # supervised warm-start on templated answers
  f.steps = 0  # SFT optimiser steps before GRPO (0: none, e.g. from a trained checkpoint)
  f.batch_size = 8  # videos per SFT step
  f.lr = 1e-4  # peak learning rate, cosine decay to 0 over sft.steps (AdamW, grad clip as GRPO)
  f.think = "The video looks {quality}."  # target reasoning; {quality} = a word for the MOS band
  # label: teach the MOS (supervised warm-start) | random: the format only, with a random
  # score per video (and {quality} from it), so whatever ranking the model shows after GRPO
  # the rewards taught it | random_scene: random per synthetic scene and video (sft.answers)
  f.answer = "label"

  c.grpo = g = ml_collections.ConfigDict()  # the GRPO update (TRL GRPOConfig names)
  g.num_generations = 4  # G completions per video (>= 2)
  g.beta = 0.04  # KL weight against the frozen initial policy (0: no reference model)
  g.kl_estimator = "k3"  # k1 | k2 | k3
  g.epsilon = 0.2  # ratio clip, lower side
  g.epsilon_high = 0.2  # ratio clip, upper side
  g.loss_type = "grpo"  # grpo | bnpo | dapo | dr_grpo
  g.num_iterations = 1  # policy updates per rollout batch
  g.max_completion_length = 2048  # new tokens per rollout (docs/method.md §4)
  g.temperature = 1.0  # sampling temperature
  g.top_k = 50  # keep the k likeliest tokens (0: all)
  g.top_p = 1.0  # nucleus mass (1: all)
  g.temporal = True  # temporal-consistency reward from perturbed rollouts (docs/method.md §3)
  g.remat = "off"  # ViT blocks and decoder layers in the update's backward pass: off | full (recompute) | save_dots
  g.decode_layout = "gathered"  # rollout decode weights: gathered (per-step copy, whole over fsdp) | train
  g.logprob_chunk = 256  # completion tokens per LM-head chunk
  g.micro_batch_size = 0  # videos per gradient micro-batch (0: the whole batch)
  g.logprob_micro_batch_size = 0  # videos per no-grad log-prob micro-batch (0: the whole batch)

  c.rewards = r = ml_collections.ConfigDict()  # docs/method.md §3 constants (rewards.RewardConfig)
  r.sigma = 0.5  # bell-shaped regression width
  r.coarse_penalty = 0.8  # regression factor below min_decimals decimals
  r.min_decimals = 2  # decimals an answer needs for the full regression reward
  r.pairing = "batch"  # fidelity comparators: batch | micro
  r.micro_videos = 2  # videos per micro-batch for 'micro' pairing / scope
  r.temporal_scope = "group"  # temporal-bonus means: group | micro
  r.temporal_bonus = 0.3  # bonus added when the original beats the perturbed rollouts
  r.temporal_rank_threshold = 0.5  # ranking-reward threshold for the bonus
  r.temporal_reg_threshold = 0.9  # regression-reward threshold for the bonus
  r.ranking_weight = 1.0  # weight of the ranking (fidelity) reward
  r.regression_weight = 1.0  # weight of the regression reward
  r.format_weight = 1.0  # weight of the format reward
  # no number parsed: zero (invalid: rewards 0, out of the statistics) | random (the release:
  # a randint(1, 5) score, drawn apart for regression and ranking, then valid)
  r.invalid = "zero"
  # decimals for the coarse penalty: written ("3.50" -> 2) | float_str (the release: of
  # str(float(x)), trailing zeros dropped: "3.50" -> 1)
  r.decimals = "written"

  c.train = tr = ml_collections.ConfigDict()
  tr.batch_size = 32  # videos per GRPO step, global (docs/method.md §4: 32 videos, 128 completions)
  tr.num_epochs = 3  # passes over the training set (sets the step count when num_steps is 0; 0: SFT only)
  tr.num_steps = 0  # GRPO steps (0: from num_epochs)
  tr.log_every = 1  # steps between metric lines (JSONL, TensorBoard, progress bar)
  tr.eval_every = 0  # steps between evaluations on eval.sets (0: only after training)
  tr.checkpoint_every = 100  # steps between checkpoints (and one at the end)
  tr.keep_checkpoints = 3  # checkpoints kept
  tr.profile_start = -1  # first step of an XLA trace into workdir/profile (-1: no trace)
  tr.profile_end = -1  # the trace stops before this step
  tr.optimizer = o = ml_collections.ConfigDict()  # AdamW (docs/method.md §4)
  o.lr = 1e-6  # peak learning rate
  o.schedule = "linear"  # linear (decay to 0) | constant | cosine
  o.warmup_steps = 0  # linear warm-up steps
  o.weight_decay = 0.0  # decoupled weight decay
  o.max_grad_norm = 1.0  # global-norm clip (0: none)
  o.b1 = 0.9  # Adam beta1
  o.b2 = 0.999  # Adam beta2
  o.eps = 1e-8  # Adam epsilon

  c.eval = e = ml_collections.ConfigDict()
  e.sets = "lsvq_test,lsvq_1080p,konvid_1k,live_vqc,youtube_ugc"  # data set names, comma-separated
  e.split = "test"  # split of each eval set
  e.frames = 12  # frames per video (docs/method.md §5)
  e.size = 560  # frame side in pixels (docs/method.md §5)
  e.batch_size = 4  # videos per greedy rollout batch
  e.max_new_tokens = 1024  # greedy generation limit (docs/method.md §5)
  e.prompt_layout = "train"  # train (docs/method.md §2) | reference_eval (the release's batch_infer.py)
  e.train_selection = False  # SlowFast training frame selection instead of evaluation's
  # first <answer>: lenient (its first number) | reference (float() of it all, as the release)
  e.parse = "lenient"
  e.max_videos = 0  # per set, for quick looks (0: all)
  # Built multiple-choice quality QA sets (python -m data_pipelines.qa), comma-separated;
  # accuracy into {name}_qa.json. "synthetic_qa" (with data.synthetic on) is generated from
  # the synthetic clips of eval.split and built. "" = none.
  e.qa_sets = ""
  e.qa_num_options = 4  # options per generated synthetic_qa question (2-9, "none" included)
  # How often the <think> of a scored clip names its distortion, for sets with distortion
  # labels (the synthetic set): {name}_attribution.json
  e.attribution = True

  c.predict = p = ml_collections.ConfigDict()
  p.videos = ""  # comma-separated video paths, or a folder of videos
  p.frames = 12  # frames per video (docs/method.md §5: 12 at evaluation)
  p.size = 560  # frame side in pixels (multiple of 28)
  p.max_new_tokens = 1024  # greedy generation limit (docs/method.md §5)
  p.batch_size = 4  # videos per rollout batch
  p.prompt_layout = "train"  # 'train' (docs/method.md §2) | 'reference_eval' (the release's batch_infer.py)
  p.train_selection = False  # SlowFast training frame selection (T//3, x6) instead of eval (T//4, x4)
  p.parse = "lenient"  # first <answer>: lenient (its first number) | reference (float() of it all)

  c.smoke = s = ml_collections.ConfigDict()
  s.batch = 2  # videos in the smoke batch
  s.frames = 2  # frames per video
  s.image_size = 448  # frame side in pixels (multiple of 28)
  s.text_tokens = 32  # text tokens around the visual ones
  return c
