"""The reference run on the other backbone: Qwen2.5-VL-7B-Instruct trained with VQAThinker's
GRPO and rewards on LSVQ-train, on a TPU v5p-32 (docs/method.md §8).

The 8B config (configs/internvl3_8b_lsvq.py) with the backbone swapped: no motion token
(it is InternVL's), the frames as one video item of Qwen's chat template, CLIP
normalisation, M-RoPE. The paths are placeholders: override them.

  python -m vqathinker_jax.main --config configs/qwen25vl_7b_lsvq.py --workdir gs://bucket/run \
      --config.model.checkpoint=/ckpt/Qwen2.5-VL-7B-Instruct --config.data.data_dir=/data/tfds
"""

import pathlib
import runpy

# Loaded by path so that the config works from any working directory.
reference = runpy.run_path(str(pathlib.Path(__file__).with_name("internvl3_8b_lsvq.py")))


def get_config():
  c = reference["get_config"]()

  m = c.model
  m.family = "qwen2_5_vl"  # Qwen2.5-VL (model_type qwen2_5_vl)
  m.checkpoint = "/data/ckpt/Qwen2.5-VL-7B-Instruct"  # placeholder: local Qwen/Qwen2.5-VL-7B-Instruct
  m.slowfast_weights = ""  # no motion branch on this backbone (docs/method.md §8)
  m.tokenizer = ""  # the checkpoint's tokenizer files
  # 6 frames of a clip: a frame pair spans 2 x duration / 6 seconds (8 s clips: 2.67), which
  # places the temporal RoPE positions as Qwen's processor would at that sampling rate.
  m.second_per_grid_t = 2.67
  # Qwen2.5-VL-7B's text decoder, for `tools/aot` on the placeholder path (a real
  # checkpoint's config.json overrides all of it): Qwen2.5-7B with a 152,064-id vocabulary.
  m.arch.text.update(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
                     num_kv_heads=4, head_dim=128, intermediate_size=18944,
                     rope_theta=1_000_000.0, tie_word_embeddings=False)

  # v5p-32 = 16 chips: tensor=4 splits the 28 query / 4 KV heads, the MLP and the vision
  # tower's 16 heads; fsdp=4 shards the state and carries the batch (4 batch shards).
  c.mesh.update(data=1, fsdp=4, tensor=4)

  # `python -m vqathinker_jax.tools.aot --config` this file `--topology v5p-32` (XLA:TPU on a
  # 2-core CPU, 2026-12-06, commit db0ccbf; the 8B recipe's remat and micro-batches, padded
  # vocabulary, splash attention, the rollout's decode copy): the whole step peaks at
  # 25.9 GiB per chip (73 % of a v5p chip's 95.7 GiB free; 728 s to compile).
  g = c.grpo
  g.micro_batch_size = 4  # videos per gradient micro-batch (one per batch shard)
  g.logprob_micro_batch_size = 8  # videos per no-grad log-prob micro-batch (two per shard)
  c.eval.batch_size = 4  # one video per batch shard
  c.predict.batch_size = 4  # one video per batch shard
  return c
