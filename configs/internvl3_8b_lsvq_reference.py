"""The release script, exactly: internvl3_8b_lsvq.py with the authors' run_grpo_vqa_internvl.sh
choices where this project's defaults differ (docs/method.md §7).

8 GPUs x 8 completions (2 videos x G=4) x 2 accumulation steps = 32 videos per step, as the
base recipe; what changes is what the release script and its reward code do per GPU: no
temporal reward, ranking and means within each GPU's 2 videos, a random score for an
unparsable answer, decimals counted on str(float(x)), and the policy in train mode (the
ViT's drop-path at the checkpoint's own rate, in the rollouts and the update).

  python -m vqathinker_jax.main --config configs/internvl3_8b_lsvq_reference.py \
      --workdir gs://bucket/run --config.model.checkpoint=/ckpt/InternVL3-8B ...
"""

import pathlib
import runpy

# Loaded by path so that the config works from any working directory.
recipe = runpy.run_path(str(pathlib.Path(__file__).with_name("internvl3_8b_lsvq.py")))


def get_config():
  c = recipe["get_config"]()
  # Train mode: InternViT's stochastic depth, linspace(0, rate) over the blocks, at the
  # checkpoint's own vision_config.drop_path_rate (-1), in the rollouts and the update.
  c.model.drop_path_rate = -1.0

  c.grpo.temporal = False  # `--temporal false`: no perturbed rollouts, no temporal bonus

  r = c.rewards
  r.pairing = "micro"  # ranking comparators: the other video of the same GPU micro-batch
  r.micro_videos = 2  # per_device_train_batch_size 8 / num_generations 4 = 2 videos per GPU
  r.temporal_scope = "micro"  # temporal-bonus means per GPU micro-batch (unused: temporal off)
  r.invalid = "random"  # no number parsed: random.randint(1, 5), drawn apart per reward
  r.decimals = "float_str"  # penalty decimals of str(float(x)): "3.50" -> 1 is penalised
  return c
