"""The reference recipe (docs/method.md §4) on InternVL3-1B, on a TPU v5p-16: a cheaper sibling of
internvl3_8b_lsvq.py with the same data, rewards and hyper-parameters.

InternVL3-1B = InternViT-300M (as 8B) + Qwen2.5-0.5B (width 896, 24 layers, 14 query / 2 KV
heads of 64, MLP 4864) with its own, untied LM head (938M parameters as released).
"""

import pathlib
import runpy

# Loaded by path so that the config works from any working directory.
reference = runpy.run_path(str(pathlib.Path(__file__).with_name("internvl3_8b_lsvq.py")))


def get_config():
  c = reference["get_config"]()
  c.model.checkpoint = "/data/ckpt/InternVL3-1B"  # placeholder: local OpenGVLab/InternVL3-1B
  # The architecture, used only for a random init (checkpoint ""), e.g. throughput tests.
  c.model.arch.text.update(vocab_size=151674, hidden_size=896, num_layers=24, num_heads=14,
                           num_kv_heads=2, head_dim=64, intermediate_size=4864,
                           rope_theta=1_000_000.0, tie_word_embeddings=False)

  # v5p-16 = 8 chips. tensor=2 splits the 14 query / 2 KV heads (2: the KV head count);
  # fsdp=4 (with tensor, 8 ways) shards the state (20 B x 0.94B parameters = 19 GB, 2.4 GB
  # a chip) and carries the batch: 4 batch shards.
  c.mesh.update(data=1, fsdp=4, tensor=2)
  # One video per shard. Check the memory with `python -m vqathinker_jax.tools.aot --config`
  # this file `--topology v5p-16` (XLA:TPU's own figure; the retired formula planner said
  # ~72 GiB, and its activation terms ran ~50 % high at the 8B config's width).
  c.grpo.micro_batch_size = 4  # videos per gradient micro-batch (one per batch shard)
  c.grpo.remat = "full"  # recompute each decoder layer in the update's backward pass
  c.grpo.logprob_micro_batch_size = 8  # videos per no-grad log-prob micro-batch (two per shard)
  c.eval.batch_size = 8  # two videos per batch shard (no backward pass)
  c.predict.batch_size = 8  # two videos per batch shard
  return c
