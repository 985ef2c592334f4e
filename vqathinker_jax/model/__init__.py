"""The model layer: InternVL3 (+ VQAThinker's motion token) and Qwen2.5-VL, their layers,
sharding rules and Hugging Face checkpoints. Imports nothing from the rest of the package.

    from vqathinker_jax import model
    m, cfg = model.from_pretrained(path, dtype=jnp.bfloat16, mesh=mesh)  # either family
    m = model.init(cfg, seed=0, mesh=mesh)                               # random weights
    model.save_pretrained(m, cfg, out_path)                              # transformers layout
"""

from vqathinker_jax.model.config import ModelConfig, TextConfig, VisionConfig  # noqa: F401
from vqathinker_jax.model.hf_checkpoint import (CheckpointError, from_pretrained,  # noqa: F401
                                                save_pretrained)
from vqathinker_jax.model.families import check_inputs, init  # noqa: F401
from vqathinker_jax.model.internvl import InternVL  # noqa: F401
from vqathinker_jax.model.qwen_vl import Qwen25VL, QwenVLConfig  # noqa: F401
