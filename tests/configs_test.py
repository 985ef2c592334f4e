"""Every config in configs/ loads and validates; the reference run holds docs/method.md §4's values."""

import dataclasses
import math
import pathlib
import runpy

import pytest

from vqathinker_jax import config_check

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.py"))
# (file, get_config args); files taking a `:arg` are listed with each argument.
VARIANTS = [(name, ()) for name in CONFIGS if name != "eval_benchmarks.py"] + [
    ("eval_benchmarks.py", ()), ("eval_benchmarks.py", ("8b",)), ("eval_benchmarks.py", ("1b",))]


def _load(name, *args):
  return runpy.run_path(str(ROOT / "configs" / name))["get_config"](*args)


def _devices(c) -> list[int]:
  """Device counts the config's mesh is meant for: its product, or a few with a -1 axis."""
  dims = [c.mesh.data, c.mesh.fsdp, c.mesh.tensor]
  return [1, 2] if -1 in dims else [math.prod(dims)]


def test_every_config_is_covered():
  assert {"base.py", "demo.py", "internvl3_8b_lsvq.py", "internvl3_1b_lsvq.py",
          "eval_benchmarks.py"} <= set(CONFIGS)
  assert {name for name, _ in VARIANTS} == set(CONFIGS)


@pytest.mark.parametrize("name, args", VARIANTS, ids=[":".join((n, *a)) for n, a in VARIANTS])
def test_config_loads_and_validates(name, args):
  c = _load(name, *args)
  for n in _devices(c):
    config_check.validate(c, num_devices=n, check_paths=False)
  config_check.validate(c, check_paths=False)


def test_reference_run_holds_spec_values():
  c = _load("internvl3_8b_lsvq.py")
  assert c.mode == "train" and c.seed == 42
  assert c.model.checkpoint and c.model.slowfast_weights  # InternVL3-8B + SlowFast
  assert c.model.dtype == "bfloat16"
  assert (c.data.train, c.data.frames, c.data.size) == ("lsvq_train", 6, 448)
  assert not c.data.synthetic.enabled and c.sft.steps == 0
  g = c.grpo
  assert (g.num_generations, g.beta, g.kl_estimator, g.epsilon, g.epsilon_high) == \
      (4, 0.04, "k3", 0.2, 0.2)
  assert (g.loss_type, g.num_iterations, g.max_completion_length) == ("grpo", 1, 2048)
  assert (g.temperature, g.top_k, g.top_p, g.temporal) == (1.0, 50, 1.0, True)
  t = c.train
  assert (t.batch_size, t.num_epochs, t.num_steps) == (32, 3, 0)
  o = t.optimizer
  assert (o.lr, o.schedule, o.warmup_steps, o.weight_decay, o.max_grad_norm) == \
      (1e-6, "linear", 0, 0.0, 1.0)
  assert (o.b1, o.b2, o.eps) == (0.9, 0.999, 1e-8)
  e = c.eval
  assert e.sets.split(",") == ["lsvq_test", "lsvq_1080p", "konvid_1k", "live_vqc", "youtube_ugc"]
  assert (e.frames, e.size, e.max_new_tokens) == (12, 560, 1024)
  # v5p-64: 32 chips; the gradient micro-batch puts one video on each batch shard.
  assert math.prod([c.mesh.data, c.mesh.fsdp, c.mesh.tensor]) == 32
  assert g.micro_batch_size == c.mesh.data * c.mesh.fsdp
  assert t.batch_size % g.micro_batch_size == 0


def test_reference_preset_is_the_release_script():
  """internvl3_8b_lsvq_reference.py = the recipe with the release's choices (docs/method.md
  §7), nothing else."""
  c, recipe = _load("internvl3_8b_lsvq_reference.py"), _load("internvl3_8b_lsvq.py")
  assert c.model.drop_path_rate == -1.0  # train mode: the checkpoint's own rate
  assert c.grpo.temporal is False
  r = c.rewards
  assert (r.pairing, r.micro_videos, r.temporal_scope) == ("micro", 2, "micro")
  assert (r.invalid, r.decimals) == ("random", "float_str")
  # 2 videos per GPU micro-batch x 8 GPUs x 2 accumulation steps = the recipe's batch.
  assert c.train.batch_size == 2 * 8 * 2 == recipe.train.batch_size
  changed = {"model.drop_path_rate", "grpo.temporal", "rewards.pairing",
             "rewards.temporal_scope", "rewards.invalid", "rewards.decimals"}
  flat = lambda d, p="": ({k2: v2 for k, v in d.items() for k2, v2 in flat(v, p + k + ".").items()}
                          if isinstance(d, dict) else {p[:-1]: d})
  got, base = flat(c.to_dict()), flat(recipe.to_dict())
  assert {k for k in got if got[k] != base[k]} == changed


def test_eval_benchmarks_covers_spec_sets():
  from data_pipelines import labels
  for arg, run in (("8b", "internvl3_8b_lsvq.py"), ("1b", "internvl3_1b_lsvq.py")):
    c = _load("eval_benchmarks.py", arg)
    sets = c.eval.sets.split(",")
    assert len(sets) == 11 and set(sets) == set(labels.BENCHMARKS) - {"lsvq_train", "synthetic"}
    assert (c.mode, c.eval.frames, c.eval.size, c.eval.max_new_tokens) == ("eval", 12, 560, 1024)
    # The release's evaluation prompt and parse (docs/method.md §5, §7).
    assert (c.eval.prompt_layout, c.eval.parse) == ("reference_eval", "reference")
    assert c.model.checkpoint and not c.model.slowfast_weights
    assert c.mesh == _load(run).mesh
  with pytest.raises(ValueError, match="eval_benchmarks.py:2b"):
    _load("eval_benchmarks.py", "2b")


@pytest.mark.parametrize("name, params", [("internvl3_1b_lsvq.py", 938.19e6),
                                          ("base.py", 7944.37e6)])
def test_architectures_match_the_released_models(name, params):
  """The random-init architectures have the released parameter counts (InternVL3-1B: 938M
  with its untied LM head; InternVL3-8B: 7.94B)."""
  import jax
  from flax import nnx
  from vqathinker_jax import model
  from vqathinker_jax.model.config import ModelConfig, TextConfig, VisionConfig
  a = _load(name).model.arch
  # Unpadded: the stored vocabulary padding (`TextConfig.padded_vocab_size`) is not in the release.
  text = dataclasses.replace(TextConfig(**a.text.to_dict()), vocab_multiple=1)
  cfg = ModelConfig(vision=VisionConfig(**a.vision.to_dict()), text=text)
  abstract = nnx.eval_shape(lambda: model.InternVL(cfg, nnx.Rngs(0)))
  count = sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert count == pytest.approx(params, rel=1e-5)  # the figures above are rounded to 0.01 M
