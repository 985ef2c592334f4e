"""The decoder's KV-cache path reproduces the plain causal pass; the padded vocabulary
is invisible to every consumer of the logits."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tolerance
from hf_tiny import TINY
from vqathinker_jax import model
from vqathinker_jax.model import families, llm, sharding
from vqathinker_jax.model.config import TextConfig

CFG = TINY


def test_prefill_then_decode_equals_full_pass():
  m = model.init(CFG, seed=0, mesh=sharding.single_device_mesh())
  rng = np.random.default_rng(0)
  B, P, steps, S = 2, 7, 5, 16
  ids = jnp.asarray(rng.integers(0, 500, (B, P + steps)))
  lengths = np.array([P, P - 2])  # row 1's prompt is right-padded by 2

  @nnx.jit  # one program per shape instead of op-by-op dispatch
  def run(m, ids_BT, positions_BT, mask_BTS, cache=None, slot=None):
    h, cache = m.llm(m.llm.embed_tokens(ids_BT), positions_BT, mask_BTS, cache, slot)
    return m.llm.logits(h), cache

  # Reference: each row's real tokens (prompt, then the continuation) in one causal pass.
  def reference(b):
    seq = np.concatenate([ids[b, :lengths[b]], ids[b, P:]])[None]
    logits, _ = run(m, seq, jnp.arange(seq.shape[1])[None],
                    llm.causal_mask(jnp.ones(seq.shape, jnp.int32)))
    return np.asarray(logits)[0, lengths[b] - 1:]

  prompt_mask = (np.arange(P)[None] < lengths[:, None]).astype(np.int32)
  cache = llm.init_cache(CFG.text, B, S)
  kv_valid = np.zeros((B, S), bool)
  kv_valid[:, :P] = prompt_mask
  mask = jnp.asarray(np.tril(np.ones((P, S), bool))[None] & kv_valid[:, None])
  out, cache = run(m, ids[:, :P], llm.positions_from_mask(prompt_mask), mask, cache, jnp.int32(0))
  logits = [np.asarray(out)[np.arange(B), lengths - 1]]
  for t in range(steps):
    slot = P + t
    kv_valid[:, slot] = True
    step_mask = jnp.asarray(kv_valid[:, None, :] & (np.arange(S) <= slot)[None, None])
    out, cache = run(m, ids[:, slot:slot + 1], jnp.asarray(lengths[:, None] + t), step_mask,
                     cache, jnp.int32(slot))
    logits.append(np.asarray(out)[:, 0])
  got = np.stack(logits, 1)
  # One token at a time against the whole sequence: attention sums in another order.
  for b in range(B):
    tolerance.assert_close(got[b], reference(b)[:steps + 1], 10, name=f"logits row {b}")


def test_positions_ignore_padding():
  mask = jnp.array([[1, 1, 1, 0], [0, 1, 1, 1]])
  np.testing.assert_array_equal(llm.positions_from_mask(mask), [[0, 1, 2, 2], [0, 0, 1, 2]])
  assert llm.causal_mask(mask)[0, 3].tolist() == [True, True, True, False]


def test_rope_is_a_rotation_and_relative():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
  rot = lambda x, p: llm.apply_rope(x, jnp.array([[p]]), 10000.0)
  # A rotation by float32 cos/sin: a few roundings of |q| (sin^2 + cos^2 is 1 to ~1 ulp).
  tolerance.assert_close(jnp.linalg.norm(rot(q, 9)), jnp.linalg.norm(q), 4, name="norm")
  # q.k after rotating both depends only on the offset; 16 products of |q||k|-sized terms.
  dot = lambda a, b: float(jnp.sum(rot(q, a) * rot(k, b)))
  tolerance.assert_close(dot(5, 2), dot(13, 10), 4, name="q.k",
                         scale=float(jnp.linalg.norm(q) * jnp.linalg.norm(k)))


@pytest.mark.parametrize("scan, remat", [(False, "full"), (False, "save_dots"), (True, "off"),
                                         (True, "full")])
def test_remat_and_scan_keep_values_and_gradients(scan, remat):
  """Rematerialised layers (recomputed in the backward pass) and `scan_layers` (one
  `lax.scan` over the stacked layers) give the plain loop's loss and the same gradient for
  each stored layer; only the memory/compute/compile trade changes."""
  import jax
  m = model.init(CFG, seed=1, mesh=sharding.single_device_mesh())
  graphdef, params, rest = nnx.split(m, nnx.Param, ...)
  variant = model.init(dataclasses.replace(CFG, scan_layers=scan), seed=1,
                       mesh=sharding.single_device_mesh())
  variant_graphdef, variant_params, _ = nnx.split(variant, nnx.Param, ...)
  assert jax.tree.structure(variant_params) == jax.tree.structure(params)  # per-layer storage
  ids = jnp.asarray(np.random.default_rng(1).integers(0, 500, (2, 9)))
  mask = llm.causal_mask(jnp.ones(ids.shape, jnp.int32))
  positions = jnp.broadcast_to(jnp.arange(9), ids.shape)

  def loss(params, graphdef, remat):
    lm = nnx.merge(graphdef, params, rest).llm
    h, _ = lm(lm.embed_tokens(ids), positions, mask, remat=remat)
    return jnp.sum(jax.nn.log_softmax(lm.logits(h))[..., 7])

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2))
  want = grad(params, graphdef, "off")
  got = grad(params, variant_graphdef, remat)
  # The same operations, recomputed or compiled once as a loop body: equal, up to XLA
  # fusing them differently (a few rounding units of each gradient's scale).
  name = f"scan={scan}, remat={remat}"
  tolerance.assert_close(got[0], want[0], 4, name=f"loss, {name}")
  for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    tolerance.assert_close(np.asarray(g), np.asarray(w), 16, name=f"grad, {name}")
  hlo = jax.jit(loss, static_argnums=(1, 2)).lower(params, variant_graphdef, remat).as_text()
  assert ("while" in hlo) == scan  # a real loop, not an unrolled copy
  with np.testing.assert_raises(ValueError):
    loss(params, variant_graphdef, "some")


# ------------------------------------------------------------- padded vocabulary ---
# The stored vocabulary is rounded up to `TextConfig.vocab_multiple` (128) so that it splits
# over `tensor`; nothing downstream may tell: pad logits are -inf, public logits are cut.

PADDED = dataclasses.replace(TINY, text=dataclasses.replace(TINY.text, vocab_size=509))  # -> 512


def _unpadded_twin(m):
  """``m``'s weights in a model whose vocabulary is not padded (``vocab_multiple=1``)."""
  cfg = m.cfg
  flat = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_multiple=1))
  twin = nnx.eval_shape(lambda: model.InternVL(flat, nnx.Rngs(0)))
  V = cfg.text.vocab_size
  cut = {("llm", "embed"): lambda x: x[:V], ("llm", "lm_head", "kernel"): lambda x: x[:, :V]}
  leaves = {p: v.replace(cut.get(p, lambda x: x)(v[...]))
            for p, v in nnx.to_flat_state(nnx.state(m))}
  nnx.update(twin, nnx.from_flat_state(leaves))
  return twin


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def padded(request):
  cfg = dataclasses.replace(PADDED, text=dataclasses.replace(
      PADDED.text, tie_word_embeddings=request.param))
  m = model.init(cfg, seed=4, mesh=sharding.single_device_mesh())
  return m, _unpadded_twin(m)


@pytest.mark.parametrize("vocab, multiple, padded_size", [
    (151674, 128, 151680), (509, 128, 512), (512, 128, 512), (1, 128, 128), (509, 1, 509)])
def test_padded_vocab_size_rounds_up(vocab, multiple, padded_size):
  text = TextConfig(vocab_size=vocab, vocab_multiple=multiple)
  assert text.padded_vocab_size == padded_size
  with pytest.raises(ValueError, match="vocab_multiple must be >= 1"):
    TextConfig(vocab_multiple=0)


def test_full_vocabulary_splits_over_tensor():
  """InternVL3's 151,674 ids divide by neither 4 nor 8: padded to 151,680 the embedding
  and LM head split over `tensor` instead of being whole on every chip (shapes only,
  nothing allocated; the other dimensions tiny)."""
  import jax
  from jax.sharding import PartitionSpec as P
  cfg = dataclasses.replace(TINY, text=dataclasses.replace(TINY.text, vocab_size=151674),
                            image_token_id=151667)
  flat = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_multiple=1))
  for shape in ((1, 1, 8), (1, 2, 4)):
    mesh = sharding.make_mesh(shape, jax.devices()[:8])
    _, abstract, shardings = families.abstract_state(cfg, mesh)
    assert abstract["llm"]["embed"].shape == (151680, 64)
    assert abstract["llm"]["lm_head"]["kernel"].shape == (64, 151680)
    assert shardings["llm"]["embed"].get_value().spec == P("tensor", "fsdp"), shape
    assert shardings["llm"]["lm_head"]["kernel"].get_value().spec == P("fsdp", "tensor"), shape
    # Unpadded, the vocabulary stays whole over `tensor` (what the padding fixes).
    _, _, flat_shardings = families.abstract_state(flat, mesh)
    assert flat_shardings["llm"]["embed"].get_value().spec[0] is None, shape


def test_padding_starts_zero_and_its_logits_are_masked(padded):
  import jax
  m, twin = padded
  V = PADDED.text.vocab_size
  assert m.llm.embed[...].shape == (512, 64)
  np.testing.assert_array_equal(np.asarray(m.llm.embed[...])[V:], 0)
  if m.llm.lm_head is not None:
    assert m.llm.lm_head.kernel[...].shape == (64, 512)
    np.testing.assert_array_equal(np.asarray(m.llm.lm_head.kernel[...])[:, V:], 0)
  ids = jnp.asarray(np.random.default_rng(2).integers(0, V, (2, 9)))
  mask = llm.causal_mask(jnp.ones(ids.shape, jnp.int32))
  positions = jnp.broadcast_to(jnp.arange(9), ids.shape)

  @nnx.jit
  def head(m):
    h, _ = m.llm(m.llm.embed_tokens(ids), positions, mask)
    return m.llm.logits(h * 30.0)  # large logits: pads would not hide behind rounding

  logits = np.asarray(head(m))
  assert logits.shape == (2, 9, 512)
  assert np.isneginf(logits[..., V:]).all() and np.isfinite(logits[..., :V]).all()
  probs = np.asarray(jax.nn.softmax(logits))
  assert (probs[..., V:] == 0).all()
  want = np.asarray(head(twin))
  assert want.shape == (2, 9, V)
  # The same matmul with 3 more output columns: the real logits are bitwise the same or
  # one rounding apart; log-softmax sums 3 more zeros.
  tolerance.assert_close(logits[..., :V], want, 2, name="real logits")
  tolerance.assert_close(jax.nn.log_softmax(logits)[..., :V], jax.nn.log_softmax(want), 4,
                         name="log-softmax")
  # The public forward returns the checkpoint's vocabulary.
  out = m(input_ids=ids)
  assert out.shape == (2, 9, V)
  tolerance.assert_close(out, twin(input_ids=ids), 2, name="forward logits")


def test_grpo_logprobs_and_gradients_ignore_padding(padded):
  """GRPO's packed log-probs and entropies (temperature < 1 too) equal the unpadded
  model's, and the gradient is finite and leaves the padding rows zero."""
  import jax
  from vqathinker_jax.rl import grpo
  m, twin = padded
  V = PADDED.text.vocab_size
  rng = np.random.default_rng(5)
  prompt = jnp.asarray(rng.integers(0, V, (2, 6)))
  prompt_mask = jnp.asarray([[1] * 6, [1] * 4 + [0] * 2])
  completions = jnp.asarray(rng.integers(0, V, (2, 2, 4)))

  def loss(params, graphdef, rest):
    mm = nnx.merge(graphdef, params, rest)
    logp, ent = grpo.token_logprobs(mm, prompt, prompt_mask, None, completions,
                                    temperature=0.7, chunk=3)
    return logp.sum() + ent.sum(), (logp, ent)

  def run(mm):
    graphdef, params, rest = nnx.split(mm, nnx.Param, ...)
    return jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(
        params, graphdef, rest)

  (_, (logp, ent)), grads = run(m)
  (_, (want_logp, want_ent)), _ = run(twin)
  assert np.isfinite(logp).all() and np.isfinite(ent).all()
  tolerance.assert_close(logp, want_logp, 8, name="log-probs")
  tolerance.assert_close(ent, want_ent, 8, name="entropies")
  for path, g in nnx.to_flat_state(grads):
    assert np.isfinite(np.asarray(g[...])).all(), path
  np.testing.assert_array_equal(np.asarray(grads["llm"]["embed"][...])[V:], 0)
  if m.llm.lm_head is not None:
    np.testing.assert_array_equal(np.asarray(grads["llm"]["lm_head"]["kernel"][...])[:, V:], 0)


@pytest.mark.parametrize("settings", [
    dict(temperature=1.0), dict(temperature=1e-6), dict(temperature=50.0),
    dict(temperature=50.0, top_k=509), dict(temperature=50.0, top_k=511),
    dict(temperature=2.0, top_k=7, top_p=0.9), dict(greedy=True)],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_sampling_never_draws_padding(settings):
  """`rollout.sample` on masked padded logits draws what it draws without the padding,
  even where the real logits are all far below 0 (nearly uniform at high temperature)."""
  import jax
  from vqathinker_jax.rl import rollout
  V, N = PADDED.text.vocab_size, 256
  real = jax.random.normal(jax.random.key(0), (N, V)) * 3.0 - 1e4
  logits = jnp.concatenate([real, jnp.full((N, 3), -jnp.inf)], -1)
  u = rollout.uniforms(jax.random.key(1), N)
  run = jax.jit(lambda x: rollout.sample(x, None, uniform_N1=u, **settings))
  tokens, logp = run(logits)
  want_tokens, want_logp = run(real)
  assert int(tokens.max()) < V
  np.testing.assert_array_equal(tokens, want_tokens)
  # Rounding at the scale of the temperature-scaled logits (the programs may divide by the
  # temperature differently: a reciprocal multiply in one fusion, a division in another).
  scale = float(jnp.abs(real).max()) / (1.0 if settings.get("greedy") else settings["temperature"])
  tolerance.assert_close(logp, want_logp, 4, scale=scale, name="log-probs")


def test_rollout_of_padded_model_equals_unpadded(padded):
  """End to end: prefill and decode read the padded logits, and the completions and their
  log-probs are those of the unpadded model."""
  import jax
  from vqathinker_jax.rl import rollout
  m, twin = padded
  V = PADDED.text.vocab_size
  rng = np.random.default_rng(6)
  ids = np.asarray(rng.integers(0, V, (2, 5)), np.int32)
  mask = np.array([[1] * 5, [1] * 3 + [0] * 2], np.int32)
  kw = dict(rng=jax.random.key(2), num_generations=2, max_new_tokens=6, temperature=3.0,
            stop_ids=())
  out = rollout.generate_jit(m, ids, mask, **kw)
  want = rollout.generate_jit(twin, ids, mask, **kw)
  assert int(out["tokens_NC"].max()) < V
  np.testing.assert_array_equal(out["tokens_NC"], want["tokens_NC"])
  tolerance.assert_close(out["logprobs_NC"], want["logprobs_NC"], 16, name="log-probs")
