"""GRPO update: packed log-probs equal unpacked ones (values and gradients), the loss equals
a numpy restatement of each `loss_type`, the jitted step's invariants, and the ViT's
drop-path through the rollout, the update and the whole step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tolerance
from hf_tiny import IMAGE_TOKEN, TINY, VOCAB, on_mesh, video_batch
from vqathinker_jax import model
from vqathinker_jax.model import llm, sharding
from vqathinker_jax.rl import grpo, rollout
from vqathinker_jax.rl.grpo import GRPOConfig
from vqathinker_jax.train import state as train_state, steps

G, C = 3, 5


def rollout_batch(seed=0, videos=2, frames=2):
  """Right-padded video prompts with random completions (one holds the <IMG_CONTEXT> id
  as an ordinary token), masks ending at random lengths."""
  ids, pix, mask = video_batch(seed=seed, videos=videos, frames=frames, size=56, motion=False)
  rng = np.random.default_rng(seed)
  comp = rng.integers(0, IMAGE_TOKEN, (videos, G, C))
  comp[0, 1, 2] = IMAGE_TOKEN
  lengths = rng.integers(1, C + 1, (videos, G))
  cmask = (np.arange(C)[None, None] < lengths[..., None]).astype(np.int32)
  adv = rng.standard_normal((videos, G)).astype(np.float32)
  return dict(prompt_ids=jnp.asarray(ids), prompt_mask=jnp.asarray(mask), pixel_values=jnp.asarray(pix),
              completions=jnp.asarray(comp), completion_mask=jnp.asarray(cmask),
              advantages=jnp.asarray(adv))


def unpacked_logprobs(m, batch):
  """[B, G, C]: each (video, completion) as its own causal sequence `prompt[:len] + c`,
  the B·G sequences right-padded into one batch (padding is never attended to)."""
  ids_BP, mask_BP, comp_BGC = (np.asarray(batch[k]) for k in
                               ("prompt_ids", "prompt_mask", "completions"))
  B, P = ids_BP.shape
  plens_N = np.repeat(mask_BP.sum(1), G)
  ids_NL = np.zeros((B * G, P + C), np.int32)
  for n, plen in enumerate(plens_N):
    ids_NL[n, :plen] = ids_BP[n // G, :plen]
    ids_NL[n, plen:plen + C] = comp_BGC[n // G, n % G]
  valid_NL = (np.arange(P + C)[None] < (plens_N + C)[:, None]).astype(np.int32)
  pix = jnp.repeat(batch["pixel_values"], G, axis=0)
  h = m.hidden_states(ids_NL, pix, llm.positions_from_mask(valid_NL), llm.causal_mask(valid_NL),
                      slots_BT=np.arange(P + C)[None] < plens_N[:, None])  # prompt slots only
  logp_NLV = jax.nn.log_softmax(m.llm.logits(h))
  before_NC = plens_N[:, None] - 1 + np.arange(C)[None]  # the positions predicting c
  logp_NCV = jnp.take_along_axis(logp_NLV, before_NC[..., None], axis=1)
  tokens_NC = comp_BGC.reshape(B * G, C)
  return jnp.take_along_axis(logp_NCV, tokens_NC[..., None], axis=2)[..., 0].reshape(B, G, C)


def fresh(m):
  """A copy with its own buffers: the jitted steps donate the state's."""
  graphdef, state = nnx.split(m)
  return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


@pytest.fixture(scope="module")
def tiny():
  return model.init(TINY, seed=0, mesh=sharding.single_device_mesh())


def test_packed_logprobs_and_gradients_equal_unpacked(tiny):
  batch = rollout_batch()
  logp, ent = nnx.jit(lambda m, b: grpo.token_logprobs(
      m, b["prompt_ids"], b["prompt_mask"], b["pixel_values"], b["completions"], chunk=4))(tiny, batch)
  want = np.asarray(unpacked_logprobs(tiny, batch))
  # Packed (block mask, chunked LM head) against padded sequences: the same sums in
  # another order, at the log-probs' scale.
  tolerance.assert_close(logp, want, 4, name="log-probs")
  assert np.all(np.asarray(ent) > 0)

  w = jnp.asarray(np.random.default_rng(1).standard_normal(batch["completions"].shape), jnp.float32)
  def packed(m):
    lp, _ = grpo.token_logprobs(m, batch["prompt_ids"], batch["prompt_mask"],
                                batch["pixel_values"], batch["completions"], chunk=4)
    return (lp * w).sum()
  unpacked = lambda m: (unpacked_logprobs(m, batch) * w).sum()
  g1 = nnx.state(nnx.jit(nnx.grad(packed))(tiny))
  g2 = nnx.state(nnx.jit(nnx.grad(unpacked))(tiny))
  # Each weight's gradient sums over every token: rounding at that weight's gradient scale.
  # InternViT has no RoPE, so attention is shift-invariant in the keys and the key bias's
  # gradient is 0: what is computed is rounding at the scale of the key kernel's gradient.
  want = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(g2)}
  for path, a in nnx.to_flat_state(g1):
    scale_path = path[:-1] + ("kernel",) if path[0] == "vision" and path[-2:] == ("k", "bias") \
        else path
    tolerance.assert_close(a[...], want[path], 34, scale=np.abs(want[scale_path]).max(),
                           name=".".join(map(str, path)))


def numpy_loss(logp, old, ref, adv, mask, cfg, num_micro=1, absolute=False):
  """docs/method.md §4 / TRL restated in numpy for one micro-batch. `absolute`: the same reduction
  of the terms' magnitudes, the scale that the loss's rounding follows."""
  ratio = np.exp(logp - old)
  a = adv[..., None]
  tok = -np.minimum(ratio * a, np.clip(ratio, 1 - cfg.epsilon, 1 + cfg.eps_high) * a)
  d = ref - logp
  kl = {"k1": -d, "k2": 0.5 * d ** 2, "k3": np.exp(d) - d - 1}[cfg.kl_estimator]
  tok = tok + cfg.beta * kl
  tok = np.abs(tok) if absolute else tok
  m = mask.astype(np.float64)
  if cfg.loss_type == "grpo":
    return np.mean((tok * m).sum(-1) / np.maximum(m.sum(-1), 1)) / num_micro
  if cfg.loss_type == "bnpo":
    return (tok * m).sum() / max(m.sum(), 1) / num_micro
  if cfg.loss_type == "dr_grpo":
    return (tok * m).sum() / (tok.shape[0] * tok.shape[1] * cfg.max_completion_length) / num_micro
  return (tok * m).sum() / max(m.sum(), 1)


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
@pytest.mark.parametrize("kl", grpo.KL_ESTIMATORS)
def test_loss_matches_numpy(loss_type, kl):
  cfg = GRPOConfig(loss_type=loss_type, kl_estimator=kl, beta=0.1, epsilon=0.2, epsilon_high=0.28,
                   max_completion_length=9)
  # A seed per case that does not change between processes (str hashes do).
  rng = np.random.default_rng([grpo.LOSS_TYPES.index(loss_type), grpo.KL_ESTIMATORS.index(kl)])
  shape = (3, 4, 9)
  logp = rng.normal(-2, 1, shape).astype(np.float32)
  old = (logp + rng.normal(0, 0.3, shape)).astype(np.float32)
  ref = (logp + rng.normal(0, 0.3, shape)).astype(np.float32)
  adv = rng.standard_normal(shape[:2]).astype(np.float32)
  mask = rng.random(shape) < 0.7
  tok, *_ = grpo.per_token_loss(logp, old, ref, adv, cfg)
  got = float(grpo.reduce_loss(tok, mask, cfg, num_items=mask.sum()))
  want = numpy_loss(logp.astype(np.float64), old, ref, adv, mask, cfg)
  # float32 against float64: the rounding of the float32 terms and of their sum.
  tolerance.assert_close(got, want, 4, name="loss",
                         scale=numpy_loss(logp, old, ref, adv, mask, cfg, absolute=True))

  # d loss / d logp against central finite differences.
  f = lambda lp: grpo.reduce_loss(grpo.per_token_loss(lp, old, ref, adv, cfg)[0], mask, cfg,
                                  num_items=mask.sum())
  grad = np.asarray(jax.grad(f)(jnp.asarray(logp, jnp.float32)))
  idxs = [(0, 0, 0), (1, 2, 3), (2, 3, 8), tuple(np.argwhere(mask)[5])]
  fd = []
  for idx in idxs:
    e = np.zeros(shape, np.float64)
    e[idx] = 1e-4
    fd.append((numpy_loss(logp + e, old, ref, adv, mask, cfg)
               - numpy_loss(logp - e, old, ref, adv, mask, cfg)) / 2e-4)
  # float64 central differences are exact to ~h^2 = 1e-8 (relative) away from the clip's
  # kinks: what is left is the float32 gradient's rounding, at the gradient's scale.
  tolerance.assert_close([grad[i] for i in idxs], fd, 4, scale=np.abs(grad).max(),
                         name="d loss / d logp")


def test_zero_advantages_without_kl_leave_params_unchanged(tiny):
  cfg = GRPOConfig(num_generations=G, beta=0.0, max_completion_length=C, logprob_chunk=4)
  tx = train_state.make_optimizer(1e-2)
  graphdef, state = train_state.init_state(fresh(tiny), tx, reference=bool(cfg.beta))
  before = jax.tree.map(np.asarray, state.params)
  batch = dict(rollout_batch(), advantages=jnp.zeros((2, G)))
  state, metrics = steps.make_update_step(graphdef, state, tx, cfg)(state, batch)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)
  assert float(metrics["loss"]) == 0.0 and int(state.step) == 1


def test_step_updates_skips_non_finite_and_compiles_once(tiny):
  cfg = GRPOConfig(num_generations=G, beta=0.04, max_completion_length=C, logprob_chunk=4,
                   micro_batch_size=1, num_iterations=2)
  tx = train_state.make_optimizer(1e-3)
  graphdef, state = train_state.init_state(fresh(tiny), tx, reference=bool(cfg.beta))
  step = steps.make_update_step(graphdef, state, tx, cfg)
  batch = jax.device_put(rollout_batch(seed=2))
  before = jax.tree.map(np.asarray, state.params)
  state, metrics = step(state, batch)
  changed = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), b), state.params, before)
  assert all(jax.tree.leaves(changed))
  assert int(metrics["skipped"]) == 0 and float(metrics["kl"]) > 0  # 2nd iteration moved away
  # A NaN advantage: the state is kept, the skip counted; same shapes -> no recompilation.
  kept = jax.tree.map(np.asarray, state.params)
  bad = dict(batch, advantages=batch["advantages"].at[0, 0].set(jnp.nan))
  with jax.transfer_guard("disallow"):
    state, metrics = step(state, bad)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), kept)
  assert int(state.skipped) == cfg.num_iterations and step._cache_size() == 1


# ------------------------------------------------------------- the whole GRPO step ---

from vqathinker_jax.rl import rewards  # noqa: E402

STOP = 3  # tiny vocabulary: a made-up end-of-turn id


def step_batch(seed=0, videos=2, frames=2, copies=G):
  b = rollout_batch(seed, videos, frames)
  rng = np.random.default_rng(seed)
  idx = np.stack([np.stack([rng.permutation(frames) for _ in range(copies)]) for _ in range(videos)])
  return dict(prompt_ids=b["prompt_ids"], prompt_mask=b["prompt_mask"],
              pixel_values=b["pixel_values"], labels=jnp.asarray(rng.uniform(1, 5, videos), jnp.float32),
              perturb_idx=jnp.asarray(idx, jnp.int32), blank=jnp.zeros(idx.shape, bool))


BYTE_PIECES = ["<think>", "</think>", "<answer>", "</answer>", "3.25", "4", " ", "\n"]


def byte_rewards():
  # Token i reads as 4 ASCII bytes: random ids become random text, some digits and tags.
  pieces = BYTE_PIECES
  table = rewards.table_from_bytes(
      [pieces[i].encode() if i < len(pieces) else bytes([32 + i % 95] * 4) for i in range(VOCAB)])
  return grpo.vqathinker_rewards(table, rewards.RewardConfig())


LR_SHARDED = 1e-4  # see test_sharded_step_equals_single_device


@pytest.fixture(scope="module")
def whole_step(tiny):
  """(cfg, tx, jitted GRPO step, batch, key): one program for the single-device tests and
  the reference of the sharded ones."""
  cfg = GRPOConfig(num_generations=G, max_completion_length=C, logprob_chunk=8, stop_ids=(STOP,))
  tx = train_state.make_optimizer(LR_SHARDED)
  graphdef, state = train_state.init_state(fresh(tiny), tx, reference=bool(cfg.beta))
  step = steps.make_grpo_step(graphdef, state, tx, cfg, byte_rewards())
  return cfg, tx, step, step_batch(seed=4, videos=4), jax.random.key(1)


def test_whole_step_is_one_program_without_host_transfers(tiny, whole_step):
  cfg, tx, step, batch, _ = whole_step
  _, state = train_state.init_state(fresh(tiny), tx, reference=bool(cfg.beta))
  batch = jax.device_put(batch)
  k0, k1 = jax.random.split(jax.random.key(0))
  state, metrics = step(state, batch, k0)
  with jax.transfer_guard("disallow"):
    state, metrics = step(state, batch, k1)
  assert step._cache_size() == 1 and int(state.step) == 2
  for k in ("loss", "reward/total", "reward/format", "parse_fail_rate", "kl", "entropy",
            "clipped_ratio", "frac_reward_zero_std", "grad_norm", "completion_length"):
    assert np.isfinite(float(metrics[k])), k


@pytest.fixture(scope="module")
def single_device_step(tiny, whole_step):
  cfg, tx, step, batch, key = whole_step
  _, s1 = train_state.init_state(fresh(tiny), tx, reference=bool(cfg.beta))
  return jax.tree.map(np.asarray, step(s1, batch, key))


@pytest.mark.parametrize("shape, devices", [((2, 2, 2), 8), ({"data": 2}, 2)],
                         ids=["data-fsdp-tensor", "data-only"])
def test_sharded_step_equals_single_device(tiny, whole_step, single_device_step, shape, devices):
  """Rollout, rewards, reference and update on a mesh against one device (so the update's
  own sharding too); on a data-only mesh each device runs its own rollout loop."""
  cfg, tx, _, batch, key = whole_step
  s1, m1 = single_device_step
  mesh = sharding.make_mesh(shape, jax.devices()[:devices])
  graphdef, s8 = train_state.init_state(on_mesh(tiny, mesh), tx, reference=bool(cfg.beta))
  with jax.set_mesh(mesh):
    s8, m8 = steps.make_grpo_step(graphdef, s8, tx, cfg, byte_rewards())(s8, batch, key)
  # The loss's terms are ratio x advantage, advantages standardised per group: scale 1.
  tolerance.assert_close(m8["loss"], m1["loss"], 4, scale=1.0, name="loss")
  tolerance.assert_close(m8["reward/total"], m1["reward/total"], 4, name="reward")
  # Each side rounds p - lr * u once (1 ulp of |p| each), where Adam's first step is
  # u = g / (|g| + 1e-8): where g lies within its rounding dg (~1e-9: a few ulps of this
  # model's ~3e-3 gradients, clipped to norm 1) of 0, u moves by up to dg / 1e-8 = 0.1.
  # Seen: <= 0.007 lr beyond the 2 ulps.
  for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(s8.params)[0],
                               jax.tree_util.tree_flatten_with_path(s1.params)[0]):
    tolerance.assert_close(a, b, 4, scale=np.abs(b), plus=0.1 * LR_SHARDED,
                           name=jax.tree_util.keystr(path))


def test_mean_reward_rises_on_a_toy_task(tiny):
  """Reward = share of completion tokens below 64 (1/8 for the random start); ~1 after 30
  steps (keys 2 to 6 checked by hand: the first 10 average <= 0.16, the last 10 >= 0.99)."""
  G4 = 4
  def toy_reward(tokens_NC, mask_NC, labels_B, perturbed):
    m = mask_NC.astype(jnp.float32)
    total = ((tokens_NC < 64) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    return dict(total=total, advantage=rewards.group_advantages(total, G4, 1e-4))
  cfg = GRPOConfig(num_generations=G4, beta=0.0, max_completion_length=6, logprob_chunk=32,
                   stop_ids=(STOP,), temporal=False, top_k=0)
  tx = train_state.make_optimizer(1e-2)
  graphdef, state = train_state.init_state(fresh(tiny), tx, reference=bool(cfg.beta))
  step = steps.make_grpo_step(graphdef, state, tx, cfg, toy_reward)
  batch = jax.device_put(step_batch(seed=5, videos=4, frames=1))
  curve, timed = [], train_state.Step(step)
  for key in jax.random.split(jax.random.key(2), 40):
    state, metrics = timed.timed(state, batch, key)
    curve.append(float(metrics["reward/total"]))
  assert metrics["compilations"] == 1 and metrics["tokens_per_s"] > 0
  start, end = np.mean(curve[:10]), np.mean(curve[-10:])
  assert start < 0.25 and end > start + 0.3, (start, end)


# ------------------------------------------------------------------- ViT drop-path ---
# Keyed from the step's key through the rollout and the update (docs/method.md §4); off
# (rate 0, or no key) it is the deterministic program bit for bit.

RATE = 0.5


def with_rate(m, rate: float):
  """``m``'s parameters (copied) under a config with ViT drop-path ``rate``: the rate is
  static structure, not a parameter, so both share every value."""
  cfg = dataclasses.replace(m.cfg, vision=dataclasses.replace(m.cfg.vision, drop_path_rate=rate))
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: model.InternVL(cfg, nnx.Rngs(0))))
  return nnx.merge(graphdef, jax.tree.map(jnp.copy, nnx.state(m)))


def test_rollout_drop_path_is_keyed_and_off_without_a_key(tiny):
  b = rollout_batch(seed=3)
  on = with_rate(tiny, RATE)
  gen = nnx.jit(lambda m, key, drop: rollout.generate(
      m, b["prompt_ids"], b["prompt_mask"], b["pixel_values"], rng=key, num_generations=2,
      max_new_tokens=4, greedy=True, drop_key=drop))
  key = jax.random.key(0)
  plain = jax.tree.map(np.asarray, gen(tiny, key, None))
  same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, jax.tree.map(np.asarray, b))
  same(plain, gen(tiny, key, jax.random.key(7)))  # rate 0: the key is not used
  same(plain, gen(on, key, None))                  # a rate, no key: evaluation
  dropped = jax.tree.map(np.asarray, gen(on, key, jax.random.key(7)))
  same(dropped, gen(on, key, jax.random.key(7)))
  assert not np.array_equal(dropped["logprobs_NC"], plain["logprobs_NC"])
  assert not np.array_equal(np.asarray(gen(on, key, jax.random.key(8))["logprobs_NC"]),
                            dropped["logprobs_NC"])


def test_update_drop_path_is_keyed_and_off_without_a_key(tiny):
  """Micro-batches, two iterations (old log-probs under drop-path too) and a reference
  model (never dropped)."""
  cfg = GRPOConfig(num_generations=G, beta=0.04, max_completion_length=C,
                   logprob_chunk=4, micro_batch_size=1, num_iterations=2)
  tx = train_state.make_optimizer(1e-3)
  batch = rollout_batch(seed=2)

  def run(m, drop_key):
    graphdef, state = train_state.init_state(fresh(m), tx, reference=True)
    step = jax.jit(lambda st, b, k: grpo.update(graphdef, st, b, tx, cfg, k))
    state, metrics = step(state, batch, drop_key)
    return jax.tree.map(np.asarray, (state.params, metrics))

  def same(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)

  plain = run(tiny, None)
  same(run(tiny, jax.random.key(1)), plain)  # rate 0: the key is not used
  on = with_rate(tiny, RATE)
  same(run(on, None), plain)                 # a rate, no key
  dropped = run(on, jax.random.key(1))
  same(run(on, jax.random.key(1)), dropped)
  assert dropped[1]["loss"] != plain[1]["loss"]
  assert run(on, jax.random.key(2))[1]["loss"] != dropped[1]["loss"]


def test_train_step_with_drop_path_and_random_scores_is_reproducible(tiny):
  """The whole step (rollouts, perturbed rollouts, rewards with the release's random
  scores, update) with drop-path on: the same key gives the same step bit for bit, the
  rewards get `fold_in(rng, KEY_REWARDS)`, and the drop-path changes the step."""
  # grpo_test's byte table (token i reads as 4 ASCII bytes, a few as tags and numbers).
  table = rewards.table_from_bytes(
      [p.encode() for p in BYTE_PIECES] + [bytes([32 + i % 95] * 4)
                                           for i in range(len(BYTE_PIECES), VOCAB)])
  inner = grpo.vqathinker_rewards(table, rewards.RewardConfig(
      invalid="random", decimals="float_str", pairing="micro", temporal_scope="micro"))
  assert inner.needs_key

  def reward_fn(tokens_NC, mask_NC, labels_B, perturbed, key=None):
    out = inner(tokens_NC, mask_NC, labels_B, perturbed, key=key)
    out["draw"] = jax.random.uniform(key, (tokens_NC.shape[0],))
    return out
  reward_fn.needs_key = True

  cfg = GRPOConfig(num_generations=G, max_completion_length=C, logprob_chunk=8,
                   stop_ids=(STOP,))
  tx = train_state.make_optimizer(1e-3)
  batch = jax.device_put(step_batch(seed=4, videos=2))

  def run(m, key):
    graphdef, state = train_state.init_state(fresh(m), tx, reference=True)
    step = steps.make_grpo_step(graphdef, state, tx, cfg, reward_fn)
    state, metrics = step(state, batch, key)
    return jax.tree.map(np.asarray, (state.params, metrics))

  on = with_rate(tiny, RATE)
  key = jax.random.key(11)
  first = run(on, key)
  jax.tree.map(np.testing.assert_array_equal, run(on, key), first)
  params, metrics = first
  assert all(np.isfinite(v).all() for v in metrics.values())
  N = 2 * G
  want = jax.random.uniform(jax.random.fold_in(key, grpo.KEY_REWARDS), (N,)).mean()
  np.testing.assert_array_equal(metrics["reward/draw"], np.asarray(want))
  differs = lambda other: not all(np.array_equal(a, b) for a, b in
                                  zip(jax.tree.leaves(params), jax.tree.leaves(other)))
  assert differs(run(on, jax.random.key(12))[0])
  # The same key without drop-path: the same sampling noise, other ViT features (the tiny
  # ViT's layer-scale 0.1 keeps the change small: it shows in the updated parameters).
  assert differs(run(tiny, key)[0])
