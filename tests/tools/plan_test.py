"""tools/plan: formulas against the real model (parameter count) and against XLA's compiled
update on the 8 fake CPU devices (FLOPs). Memory is tools/aot's (tests/tools/aot_test.py)."""

import dataclasses
import json
import math
import pathlib
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqathinker_jax import model
from vqathinker_jax.model import sharding
from vqathinker_jax.rl import grpo
from vqathinker_jax.model.config import ModelConfig, TextConfig, VisionConfig
from vqathinker_jax.tools import plan as plan_lib
from vqathinker_jax.train import state as train_state, steps

ROOT = pathlib.Path(__file__).resolve().parents[2]
P_TEXT = 40  # text tokens of the test prompts (the demo tokenizer's template differs from Qwen's)


def demo_config(**overrides):
  c = runpy.run_path(str(ROOT / "configs/demo.py"))["get_config"]()
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return c


def setup(c):
  s = plan_lib.setup_from_config(c, 8, prompt_len=1)
  return dataclasses.replace(s, prompt=P_TEXT + s.frames * s.model.tokens_per_frame(s.size))


def zeros_model(mc, mesh):
  """A model of zeros, placed as `model.init` places it: XLA's buffers do not depend on the
  values, and the random init would compile a program of its own (~8 s a mesh)."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: model.InternVL(mc, nnx.Rngs(0))))
  shardings = sharding.param_shardings(abstract, mesh)
  zeros = lambda v, sh: v.replace(jax.device_put(np.zeros(v.shape, v.dtype), sh.get_value()))
  is_var = lambda x: isinstance(x, nnx.Variable)
  return nnx.merge(graphdef, jax.tree.map(zeros, abstract, shardings, is_leaf=is_var))


def compiled_update(**overrides):
  """(setting, XLA's compiled update step) for the demo config with ``overrides``."""
  c = demo_config(**overrides)
  s = setup(c)
  mc, B, G, C, T, S, P = (s.model, s.batch, s.num_generations, s.completion, s.frames, s.size,
                          s.prompt)
  mesh = sharding.make_mesh(dict(c.mesh))
  cfg = grpo.GRPOConfig(num_generations=G, max_completion_length=C, logprob_chunk=s.chunk,
                        beta=s.beta, stop_ids=(3,), temporal=s.temporal,
                        micro_batch_size=s.micro_batch, num_iterations=s.num_iterations,
                        logprob_micro_batch_size=s.logprob_micro_batch)
  tx = train_state.make_optimizer(1e-3)
  graphdef, state = train_state.init_state(zeros_model(mc, mesh), tx, reference=bool(cfg.beta))
  ids = np.random.default_rng(0).integers(6, 500, (B, P)).astype(np.int32)
  ids[:, 10:10 + T * mc.tokens_per_frame(S)] = mc.image_token_id
  batch = dict(prompt_ids=jnp.asarray(ids), prompt_mask=jnp.ones((B, P), jnp.int32),
               pixel_values=jnp.zeros((B, T, S, S, 3), jnp.float32),
               completions=jnp.zeros((B, G, C), jnp.int32),
               completion_mask=jnp.ones((B, G, C), jnp.int32), advantages=jnp.zeros((B, G)))
  # The program never runs: LLVM's optimisations would only cost time; XLA's cost analysis,
  # all this file reads, does not depend on them.
  fast = dict(compiler_options={"xla_backend_optimization_level": 0})
  with jax.set_mesh(mesh):
    step = steps.make_update_step(graphdef, state, tx, cfg)
    return s, step.lower(state, batch).compile(**fast)


def test_prompt_tokens_formula():
  # Measured with Qwen2.5's BPE on the docs/method.md §2 template (see PROMPT_TEXT_TOKENS).
  assert plan_lib.prompt_tokens(6, 256, True) == 1718
  assert plan_lib.prompt_tokens(12, 400, True) == 5021
  assert plan_lib.prompt_tokens(16, 256, False) == 4338
  assert plan_lib.prompt_tokens(1, 1, True) == 153


@pytest.mark.parametrize("cfg", [
    ModelConfig(),  # InternVL3-8B
    ModelConfig(vision=VisionConfig(hidden_size=48, num_layers=3, num_heads=4, intermediate_size=96,
                                    image_size=56, qk_norm=True, norm_type="rms_norm",
                                    final_norm=True),
                text=TextConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4,
                                num_kv_heads=2, head_dim=8, intermediate_size=64,
                                tie_word_embeddings=True),
                vision_feature_layer=-2),
])
def test_param_count_equals_the_model(cfg):
  abstract = nnx.eval_shape(lambda: model.InternVL(cfg, nnx.Rngs(0)))
  real = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert plan_lib.param_count(cfg)["trainable"] == real


def test_param_count_with_motion_branch():
  c = demo_config(**{"model.arch.motion.enabled": True})
  mc = plan_lib.model_config_from(c)
  abstract = nnx.eval_shape(lambda: model.InternVL(mc, nnx.Rngs(0)))
  real = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  counts = plan_lib.param_count(mc)
  assert counts["trainable"] == real and counts["frozen"] > 30_000_000  # SlowFast-R50


def test_update_flops_within_10_percent_of_xla():
  """The update alone: FLOPs (old-policy, reference and update passes) against XLA's cost
  analysis. One LM-head chunk and one micro-batch, so that every loop of the update runs
  once (XLA's cost analysis counts a loop body once, whatever its trip count)."""
  s, exe = compiled_update(**{"grpo.logprob_chunk": 96})
  cost = exe.cost_analysis()
  cost = cost if isinstance(cost, dict) else cost[0]
  f = plan_lib.step_flops(s)
  per_device = (f["old_logprobs"] + f["reference"] + f["update"]) / s.devices
  assert per_device == pytest.approx(cost["flops"], rel=0.10)


def test_cli_prints_text_and_json():
  cmd = [sys.executable, "-m", "vqathinker_jax.tools.plan", "--config", str(ROOT / "configs/base.py"),
         "--config.model.dtype=bfloat16", "--config.model.param_dtype=bfloat16", "--devices", "16"]
  out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert out.returncode == 0, out.stderr
  p = json.loads(out.stdout)
  assert p["devices"] == 16 and p["mesh"] == {"data": 1, "fsdp": 16, "tensor": 1}
  assert p["prompt_tokens"] == 1711 and p["packed_tokens"] == 1711 + 4 * 2048  # no motion
  assert p["params"]["trainable"] == pytest.approx(7.94e9, rel=0.01)  # the released 7.94B
  text = plan_lib.format_plan(p)  # what the command prints without --json
  assert "FLOPs per step" in text and "tools.aot" in text  # memory: tools/aot
  assert set(p) == {"devices", "mesh", "prompt_tokens", "packed_tokens", "params", "flops",
                    "flops_per_device"}
