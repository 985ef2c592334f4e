"""The reference run (docs/method.md §4): VQAThinker-8B trained with GRPO on LSVQ-train, on a TPU v5p-64.

InternVL3-8B + the Kinetics-400 SlowFast (motion_mlp starts fresh), 3 epochs of 32 videos x
G=4 completions per step, evaluated on the five in-domain sets at 12x560. The paths are
placeholders: override them (`--config.model.checkpoint=...`); validation names any missing.

  python -m vqathinker_jax.main --config configs/internvl3_8b_lsvq.py --workdir gs://bucket/run \
      --config.model.checkpoint=/ckpt/InternVL3-8B --config.data.data_dir=/data/tfds
"""

import pathlib
import runpy

# Loaded by path so that the config works from any working directory.
base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config():
  c = base["get_config"]()
  c.mode = "train"  # SFT is off: GRPO straight from InternVL3-8B, as the reference
  c.seed = 42  # docs/method.md §4

  m = c.model
  m.checkpoint = "/data/ckpt/InternVL3-8B"  # placeholder: local OpenGVLab/InternVL3-8B
  m.slowfast_weights = "/data/ckpt/slowfast_r50.safetensors"  # placeholder: convert_slowfast output
  m.tokenizer = ""  # the checkpoint's tokenizer files
  m.dtype = "bfloat16"  # compute in bf16 (docs/method.md §4)
  # A 1e-6 step is ~1e-4 of a typical weight (~0.01), far below bf16's 2^-8 relative
  # resolution: bf16 storage would round most updates away.
  m.param_dtype = "float32"  # f32 master weights

  # v5p-64 = 32 chips (95 GB HBM each). tensor=4 splits the 28 query / 4 KV heads, the MLP
  # and the ViT 4 ways (4 = the KV head count, the most that divides evenly); fsdp=8 (with
  # tensor, 32 ways) shards the ~20 B/parameter of state (f32 weights, gradients, Adam
  # moments, the reference copy: 160 GB) to 5 GB a chip and carries the batch: 8 batch
  # shards, so the batch sizes below are multiples of 8. On v5p-128 set fsdp=16 (or -1).
  c.mesh.update(data=1, fsdp=8, tensor=4)

  d = c.data
  d.data_dir = "/data/tfds"  # placeholder: TFDS data_dir written by data_pipelines.prepare
  d.train = "lsvq_train"  # LSVQ-train, ~28k videos
  d.train_split = "train"  # the whole set is its train split
  d.frames = 6  # docs/method.md §2: 6 frames per training video
  d.size = 448  # at 448x448 (256 tokens per frame)
  d.synthetic.enabled = False  # real data only

  c.sft.steps = 0  # no warm-start: the reference starts GRPO from the instruct model

  g = c.grpo
  g.update(num_generations=4, beta=0.04, kl_estimator="k3", epsilon=0.2, epsilon_high=0.2,
           loss_type="grpo", num_iterations=1, max_completion_length=2048, temperature=1.0,
           top_k=50, top_p=1.0, temporal=True)  # docs/method.md §4 (temporal: the paper's full method)
  # Memory per chip: one video per batch shard per gradient micro-batch (8 videos, 4
  # micro-batches per step); the no-grad log-prob passes keep nothing across layers and take
  # two videos per shard. `python -m vqathinker_jax.tools.aot --config` this file
  # `--topology v5p-64` (XLA:TPU on a 2-core CPU, libtpu 0.0.52, 2026-12-06, commit 3be9f98;
  # padded vocabulary, splash attention, the rollout's decode copy): the whole step peaks at
  # 33.4 GiB per chip (65 % of a v5p chip's 95.7 GiB free; 1195 s to compile); with
  # `--config.grpo.num_generations=8` 54.5 GiB (43 % free; 904 s); on v5p-32
  # (`--config.mesh.fsdp=4`) 24.2 GiB (75 % free; 853 s). Before (commit 59bcbbc): 39.5 GiB; without remat (the 2026-12-05
  # audit) 69.2 GiB.
  g.remat = "full"  # recompute each decoder layer in the update's backward pass
  g.micro_batch_size = 8  # videos per gradient micro-batch (one per batch shard)
  g.logprob_micro_batch_size = 16  # videos per no-grad log-prob micro-batch (two per shard)

  t = c.train
  t.batch_size = 32  # docs/method.md §4: 32 videos (128 completions) per optimiser step
  t.num_epochs = 3  # 3 passes over LSVQ-train (~2.6k steps)
  t.num_steps = 0  # from num_epochs
  t.checkpoint_every = 100  # steps between checkpoints
  t.eval_every = 500  # steps between in-domain evaluations
  t.optimizer.update(lr=1e-6, schedule="linear", warmup_steps=0, weight_decay=0.0,
                     max_grad_norm=1.0, b1=0.9, b2=0.999, eps=1e-8)  # docs/method.md §4 AdamW

  e = c.eval
  e.sets = "lsvq_test,lsvq_1080p,konvid_1k,live_vqc,youtube_ugc"  # docs/method.md §5 in-domain sets
  e.frames = 12  # docs/method.md §5: 12 frames
  e.size = 560  # at 560x560 (400 tokens per frame)
  e.batch_size = 8  # one video per batch shard
  e.max_new_tokens = 1024  # greedy, docs/method.md §5
  c.predict.batch_size = 8  # one video per batch shard
  return c
