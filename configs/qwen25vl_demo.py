"""The demo (configs/demo.py) on the Qwen2.5-VL backbone: a tiny random Qwen2.5-VL learns
to score the synthetic videos on 2 CPU cores, with the same SFT warm-start, rollout, GRPO
and rewards.

  python -m vqathinker_jax.main --config configs/qwen25vl_demo.py --workdir DIR
"""

import pathlib
import runpy

demo = runpy.run_path(str(pathlib.Path(__file__).with_name("demo.py")))


def get_config():
  c = demo["get_config"]()
  m = c.model
  m.family = "qwen2_5_vl"  # the demo tokenizer then has Qwen's vision tokens at ids 6-8
  m.second_per_grid_t = 1.0  # a frame pair per second: temporal positions 0, 2, 4 (Qwen's 2 fps)
  q = m.arch.qwen
  q.update(vision_start_token_id=6, vision_end_token_id=7, video_token_id=8,
           image_token_id=8,  # the demo has no images: <|video_pad|> stands in
           mrope_section=(2, 3, 3))  # head_dim 16: 8 frequencies over (t, h, w)
  # Two blocks, the second with full attention; windows of 2x2 merged tokens (56 px).
  q.vision.update(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, window_size=56,
                  fullatt_block_indexes=(1,))
  return c
