"""The embedded default: a tiny random model that runs on 2 CPU cores in seconds."""

import pathlib
import runpy

# Loaded by path so that the config works from any working directory.
base = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))


def get_config():
  c = base["get_config"]()
  a = c.model.arch
  a.image_token_id = 500  # inside the tiny vocabulary
  a.vision.update(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96, image_size=56)
  a.text.update(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=16, intermediate_size=128, rope_theta=10000.0)
  c.smoke.update(batch=2, frames=3, image_size=56, text_tokens=16)
  return c
