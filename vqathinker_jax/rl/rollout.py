"""Rollout: prefill each prompt once, decode G samples per prompt in one compiled loop.

    out = rollout.generate_jit(m, ids_BT, mask_BT, pix, rng=key, num_generations=4,
                               max_new_tokens=64, temperature=1.0, top_k=50)
    out["tokens_NC"], out["mask_NC"], out["logprobs_NC"], out["lengths_N"]

`generate` is the pure, traceable function (call it inside another jit, e.g. the GRPO
step); `generate_jit` checks the inputs and runs it as one compiled program;
`cached_generate` binds a model for repeated calls.

The prompt KV cache is computed once per video and shared by its G rows: decode attends
each row to its video's prompt block [B, K, P, E] and to its own completion block
[N, K, C, E], so prompt KV is stored and read once per video, not G times. Prompts are
right-padded; padding keys stay masked, and RoPE positions continue from each row's own
prompt length, so the result is what an unpadded prompt would give.
Legend: B prompts (videos), G samples per prompt, N = B*G rows (video-major: row b*G+g),
P prompt tokens (padded), C new tokens, V vocabulary, D width, H query / K KV heads,
h = H/K query heads per KV head, E head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from vqathinker_jax import model as model_lib
from vqathinker_jax.model import layers, llm, sharding
from vqathinker_jax.model.config import DTYPES

IM_END_ID = 151645       # <|im_end|>: the chat template's end of turn (docs/method.md §2)
ENDOFTEXT_ID = 151643    # <|endoftext|>: Qwen2's EOS
DEFAULT_STOP_IDS = (IM_END_ID, ENDOFTEXT_ID)
_MIN_TEMPERATURE = 1e-6  # temperature 0 degrades to greedy instead of dividing by zero


def _first_argmax(x_NV: jax.Array) -> jax.Array:
  """argmax (first index on ties) as two plain reductions: XLA's CPU backend runs the
  variadic (value, index) reduce that `jnp.argmax` lowers to several times slower."""
  V = x_NV.shape[-1]
  is_max = x_NV == jnp.max(x_NV, axis=-1, keepdims=True)
  return jnp.min(jnp.where(is_max, jnp.arange(V, dtype=jnp.int32), V), axis=-1)


def _key(x):
  """float32 -> int32 with the same order (-0.0 just below +0.0)."""
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _unkey(k):
  return jax.lax.bitcast_convert_type(k ^ ((k >> 31) & 0x7FFFFFFF), jnp.float32)


_FLOAT_STEPS = 24  # value midpoints before falling back to halving the int32 key range


def _threshold(x_NV: jax.Array, enough, exact=None) -> jax.Array:
  """The largest ``t`` [N, 1] with ``enough(x_NV >= t)``, for a predicate monotone in
  ``t`` that holds at the row minimum (where ``x_NV >= t`` keeps everything).

  Bisects [lo, hi), ``enough(x >= lo)`` and not ``enough(x >= hi)``, until lo and hi
  are adjacent floats (then lo is a value of the row, the answer) or ``exact(x >= mid)``
  says the mask cannot change any more (e.g. exactly k kept). Midpoints are taken on
  values, which isolate the k-th logit in ~15 compare-and-reduce passes where
  bit-by-bit needs ~20 (the exponent bits too); after `_FLOAT_STEPS` and at
  infinities, the order-preserving int32 key range is halved instead, so it always ends
  (<= 32 passes from there). No sort: XLA's CPU TopK on [32, 512] is ~20x
  slower than the whole search. Rows are searched together and stop when all are done:
  `sample` runs it per batch shard (`shard_map`), so no device waits on another's rows.
  """
  lo_N1 = jnp.min(x_NV, axis=-1, keepdims=True)
  hi_N1 = jnp.max(x_NV, axis=-1, keepdims=True)
  top_N1 = enough(x_NV >= hi_N1)  # the maxima alone are enough (top-k 1, top-p -> 0)
  lo_N1 = jnp.where(top_N1, hi_N1, lo_N1)

  def halves(lo_N1, hi_N1):
    """The int32-key midpoint and whether lo and hi are adjacent (nothing between)."""
    lo_k, hi_k = _key(lo_N1), _key(hi_N1)
    half_k = (jax.lax.bitcast_convert_type(hi_k - lo_k, jnp.uint32) >> 1).astype(jnp.int32)
    return _unkey(lo_k + half_k), half_k == 0

  def cond(carry):
    return ~jnp.all(carry[-1])

  def body(carry):
    step, lo_N1, hi_N1, done_N1 = carry
    mid_N1 = lo_N1 * 0.5 + hi_N1 * 0.5  # no overflow; nan or inf at infinities
    int_mid_N1, _ = halves(lo_N1, hi_N1)
    by_value = (step < _FLOAT_STEPS) & (mid_N1 > lo_N1) & (mid_N1 < hi_N1)
    mid_N1 = jnp.where(by_value, mid_N1, int_mid_N1)
    keep_NV = x_NV >= mid_N1
    up_N1 = enough(keep_NV)
    lo_N1 = jnp.where(done_N1 | ~up_N1, lo_N1, mid_N1)
    hi_N1 = jnp.where(done_N1 | up_N1, hi_N1, mid_N1)
    hit_N1 = False if exact is None else up_N1 & exact(keep_NV)
    return step + 1, lo_N1, hi_N1, done_N1 | hit_N1 | halves(lo_N1, hi_N1)[1]

  done_N1 = top_N1 | halves(lo_N1, hi_N1)[1]
  _, lo_N1, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), lo_N1, hi_N1, done_N1))
  return lo_N1


def _top_k_mask(x_NV: jax.Array, k: int) -> jax.Array:
  """x >= the k-th largest value of its row (ties kept, as transformers' top-k)."""
  x_NV = x_NV.astype(jnp.float32)
  # Counted in float32 (exact below 2^24 entries): XLA's CPU backend runs a float sum as
  # one library reduction, an int sum as three ops, ~1.5x slower over the search.
  count_N1 = lambda keep_NV: jnp.sum(keep_NV.astype(jnp.float32), -1, keepdims=True)
  # Once exactly k pass, no other threshold can keep a different set: stop.
  return x_NV >= _threshold(x_NV, lambda keep: count_N1(keep) >= k,
                            lambda keep: count_N1(keep) == k)


def _top_p_mask(probs_NV: jax.Array, top_p: float) -> jax.Array:
  """The most probable tokens whose mass reaches ``top_p``: p >= the largest t with
  mass(p >= t) >= top_p (transformers' nucleus, ties kept)."""
  mass = lambda keep_NV: jnp.sum(jnp.where(keep_NV, probs_NV, 0.0), -1, keepdims=True) >= top_p
  return probs_NV >= _threshold(probs_NV, mass)


def _cumsum(x_NL: jax.Array) -> jax.Array:
  # A triangular matmul: XLA's CPU cumsum (reduce-window) was 3/4 of a decode step at V = 512.
  L = x_NL.shape[-1]
  upper_LL = jnp.triu(jnp.ones((L, L), x_NL.dtype))
  return jnp.matmul(x_NL, upper_LL, precision=jax.lax.Precision.HIGHEST)


def _inverse_cdf(probs_NV: jax.Array, uniform_N1: jax.Array) -> jax.Array:
  """Draw index ~ probs (unnormalised, >= 0) from one uniform in [0, 1) per row, where
  Gumbel-max would need V (at V = 151k, 151k threefry calls per row per step). Two levels
  of ~sqrt(V): pick the block whose cumulative mass passes u * total, then the token."""
  N, V = probs_NV.shape
  b = 1 << max(0, (int(V ** 0.5) - 1).bit_length())  # block: a power of two >= sqrt(V)
  nb = -(-V // b)
  probs_NBb = jnp.pad(probs_NV, ((0, 0), (0, nb * b - V))).reshape(N, nb, b)
  iota = lambda n: jnp.arange(n, dtype=jnp.int32)

  def pick(probs_NL, target_N1):
    # First index whose cumulative mass exceeds target, kept within the entries with
    # mass > 0 against rounding (u * total can round up to total).
    L = probs_NL.shape[-1]
    index_N = jnp.sum((_cumsum(probs_NL) <= target_N1).astype(jnp.int32), axis=-1)
    first_N = jnp.min(jnp.where(probs_NL > 0, iota(L), L - 1), axis=-1)
    last_N = jnp.max(jnp.where(probs_NL > 0, iota(L), 0), axis=-1)
    return jnp.clip(index_N, first_N, last_N)

  mass_NB = jnp.sum(probs_NBb, axis=-1)
  total_N1 = jnp.sum(mass_NB, axis=-1, keepdims=True)
  target_N1 = uniform_N1 * total_N1
  block_N = pick(mass_NB, target_N1)
  before_N1 = jnp.sum(jnp.where(iota(nb) < block_N[:, None], mass_NB, 0.0), -1, keepdims=True)
  in_block_Nb = jnp.take_along_axis(probs_NBb, block_N[:, None, None], axis=1)[:, 0]
  return block_N * b + pick(in_block_Nb, target_N1 - before_N1)


def uniforms(key: jax.Array, N: int) -> jax.Array:
  """The uniform [N, 1] that `sample` draws its tokens from with ``key``."""
  return jax.random.uniform(key, (N, 1), jnp.float32)


def sample(logits_NV: jax.Array, key: jax.Array, *, temperature=1.0, top_k: int = 0,
           top_p: float = 1.0, greedy: bool = False, uniform_N1: jax.Array | None = None):
  """Next tokens [N] and their log-probs [N].

  Order as transformers: temperature, top-k, then top-p over the renormalised top-k
  (the most probable tokens whose mass reaches ``top_p``); ties at either threshold are
  kept. ``top_k`` 0 and ``top_p`` 1 disable them (both static). The log-probs are those
  of the temperature-scaled, unfiltered distribution, i.e. what the training pass
  recomputes (TRL divides logits by the temperature too); ``greedy`` takes the argmax
  and reports log-probs at temperature 1. ``uniform_N1``, if given, is `uniforms(key, N)`
  drawn beforehand (``key`` is then unused): the decode loop draws every step's at once,
  since threefry is a loop of its own on CPU. On a mesh whose batch axes split the rows,
  each shard samples its own rows (`shard_map`): every step is row-wise, and the top-k /
  top-p searches then stop when the shard's rows are done, with no cross-device vote.
  """
  N = logits_NV.shape[0]
  if greedy:
    uniform_N1 = None  # the argmax draws nothing
  elif uniform_N1 is None:
    uniform_N1 = uniforms(key, N)
  rows = functools.partial(_sample_rows, top_k=top_k, top_p=top_p, greedy=greedy)
  temperature = jnp.asarray(temperature, jnp.float32)
  axes = sharding.batch_axes()
  if axes and N % sharding.batch_shards() == 0:
    spec = jax.sharding.PartitionSpec(axes)
    rows = jax.shard_map(rows, in_specs=(spec, spec, jax.sharding.PartitionSpec()),
                         out_specs=(spec, spec))
  return rows(logits_NV, uniform_N1, temperature)


def _sample_rows(logits_NV, uniform_N1, temperature, *, top_k, top_p, greedy):
  """`sample` on the rows at hand (one batch shard, or all)."""
  logits_NV = logits_NV.astype(jnp.float32)
  if greedy:
    scaled_NV = logits_NV
  else:
    scaled_NV = logits_NV / jnp.maximum(temperature, _MIN_TEMPERATURE)
  # One exp over [N, V] serves both the log-probs and the sampling weights (exp is the
  # costliest elementwise op of the step on CPU).
  max_N1 = jnp.max(scaled_NV, axis=-1, keepdims=True)
  exp_NV = jnp.exp(scaled_NV - max_N1)
  log_z_N = jnp.log(jnp.sum(exp_NV, axis=-1))
  if greedy:
    tokens_N = _first_argmax(logits_NV)
  else:
    V = scaled_NV.shape[-1]
    # Unnormalised softmax of the kept logits (the max is always kept, so the shift by
    # the full row's max is the one softmax would take).
    probs_NV = exp_NV
    if 0 < top_k < V:
      probs_NV = jnp.where(_top_k_mask(scaled_NV, top_k), probs_NV, 0.0)
    if top_p < 1.0:
      probs_NV = probs_NV / jnp.sum(probs_NV, axis=-1, keepdims=True)
      probs_NV = jnp.where(_top_p_mask(probs_NV, top_p), probs_NV, 0.0)
    tokens_N = _inverse_cdf(probs_NV, uniform_N1)
  chosen_N = jnp.take_along_axis(scaled_NV - max_N1, tokens_N[:, None], axis=-1)[:, 0]
  return tokens_N, chosen_N - log_z_N


def prefill(model: model_lib.InternVL, input_ids_BP, attention_mask_BP, pixel_values=None, *,
            num_generations: int = 1, train: bool = False, drop_key: jax.Array | None = None,
            positions=None):
  """Each prompt's KV cache, computed once, and its next-token logits for its G rows.

  Returns ``(prompt_cache, logits_NV)``: per layer ``{"k", "v"}: [B, K, P, E]``. The
  cache is not repeated: `llm.Qwen2.decode` attends the G rows of a video to the same prompt
  keys, so prompt KV is stored and read once per video rather than G times.
  ``drop_key``: the ViT's drop-path masks (`InternVL.visual_tokens`), so the G rows of a
  video share them; None (evaluation) for none. ``positions``: the prompts' RoPE
  positions (default: the model's `prompt_positions`, [B, P], or [3, B, P] for Qwen2.5-VL).
  """
  ids_BP = sharding.constrain_batch(jnp.asarray(input_ids_BP))
  mask_BP = sharding.constrain_batch(jnp.asarray(attention_mask_BP).astype(jnp.int32))
  B, P = ids_BP.shape
  x_BPD = model.embed(ids_BP, pixel_values, train, drop_key=drop_key)
  cache = llm.init_cache(model.cfg.text, B, P, DTYPES[model.cfg.dtype])
  if positions is None:
    positions = model.prompt_positions(ids_BP, mask_BP, pixel_values)[0]
  h_BPD, cache = model.llm(x_BPD, positions, layers.CausalMask(mask_BP), cache, 0)
  last_B = jnp.sum(mask_BP, axis=1) - 1
  h_B1D = jnp.take_along_axis(h_BPD, last_B[:, None, None], axis=1)
  logits_BV = model.llm.logits(h_B1D)[:, 0]
  # [B, K, P, E]: with llm's [B, P, K, E] the decode dots would transpose the whole
  # cache of every layer at every step.
  prompt_cache = [{name: sharding.constrain_batch(buf.transpose(0, 2, 1, 3))
                   for name, buf in layer.items()} for layer in cache]
  logits_NV = sharding.constrain_batch(jnp.repeat(logits_BV, num_generations, axis=0))
  return prompt_cache, logits_NV


LAYOUTS = ("gathered", "train")


def decoder(model: model_lib.InternVL, layout: str = "gathered") -> llm.Qwen2:
  """The decoder the decode loop reads. ``gathered``: a copy made once (per step, when
  traced inside one) in the compute dtype, whole over ``fsdp`` and split over ``tensor``
  (`sharding.decode_layout`), so no step of the loop gathers weights; it costs one
  compute-dtype decoder per ``tensor`` shard. ``train``: the parameters as stored, which
  on an fsdp-split mesh XLA re-gathers at every generated token."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r} not in {LAYOUTS}")
  if layout == "train":
    return model.llm
  return sharding.decode_layout(model.llm, DTYPES[model.cfg.dtype])


def decode(model: model_lib.InternVL, prompt_cache, logits_NV, attention_mask_BP, rng, *,
           max_new_tokens: int, temperature=1.0, top_k: int = 0, top_p: float = 1.0,
           greedy: bool = False, stop_ids=DEFAULT_STOP_IDS, pad_id: int = 0,
           lm: llm.Qwen2 | None = None, next_position_B=None, max_position: int | None = None):
  """Sample up to ``max_new_tokens`` after `prefill` (see `generate`); the loop reads
  ``lm`` (default: `decoder` of ``model``). The first new token of video b sits at position
  ``next_position_B[b]`` (default: its prompt length; Qwen2.5-VL's is its max 3-D position
  + 1), at most ``max_position`` (static; default: the prompt block's length).

  On a purely data-parallel mesh (only ``data`` splits, so every device holds the whole
  decoder), each device runs the loop over its own videos (`shard_map`): no device waits
  at each step for the others' "all rows stopped", and each stops when its rows have.
  Otherwise (fsdp or tensor split the weights) the loop is one SPMD program.
  """
  N, B = logits_NV.shape[0], attention_mask_BP.shape[0]
  C = max_new_tokens
  # Every step's uniforms in one batched draw, the same numbers as drawing them one step
  # at a time with fold_in(rng, t); drawn for all rows, so they do not depend on the mesh.
  uniform_NC1 = None if greedy else sharding.constrain_batch(
      jax.vmap(lambda t: uniforms(jax.random.fold_in(rng, t), N), out_axes=1)(jnp.arange(C)))
  loop = functools.partial(_decode_loop, max_new_tokens=C, temperature=temperature,
                           top_k=top_k, top_p=top_p, greedy=greedy, stop_ids=stop_ids,
                           pad_id=pad_id,
                           rope_length=(max_position or attention_mask_BP.shape[1]) + C)
  if next_position_B is None:
    next_position_B = jnp.sum(jnp.asarray(attention_mask_BP).astype(jnp.int32), axis=1)
  args = (prompt_cache, logits_NV, attention_mask_BP, uniform_NC1,
          sharding.constrain_batch(jnp.asarray(next_position_B, jnp.int32)))
  lm = decoder(model) if lm is None else lm
  mesh = jax.sharding.get_abstract_mesh()
  per_shard = (sharding.batch_axes() == ("data",) and mesh.shape.get("tensor", 1) == 1
               and B % mesh.shape["data"] == 0)
  if not per_shard:
    return loop(lm, *args)
  graphdef, state = nnx.split(lm)
  spec, whole = jax.sharding.PartitionSpec("data"), jax.sharding.PartitionSpec()
  local = lambda state, *args: loop(nnx.merge(graphdef, state), *args)
  # No collective inside, so no varying-axes bookkeeping (the loop's zero-initialised
  # carries would otherwise need marking as per-device).
  return jax.shard_map(local, in_specs=(whole, spec, spec, spec, spec, spec), out_specs=spec,
                       axis_names={"data"}, check_vma=False)(state, *args)


def _decode_loop(lm: llm.Qwen2, prompt_cache, logits_NV, attention_mask_BP, uniform_NC1,
                 next_position_B, *, max_new_tokens, temperature, top_k, top_p, greedy,
                 stop_ids, pad_id, rope_length):
  """`decode` on the rows at hand (one data shard, or all)."""
  N, B = logits_NV.shape[0], attention_mask_BP.shape[0]
  C = max_new_tokens
  prompt_valid_BP = attention_mask_BP.astype(bool)
  next_N = sharding.constrain_batch(jnp.repeat(next_position_B, N // B))
  stop_ids = jnp.asarray(tuple(stop_ids) or (-1,), jnp.int32)
  text = lm.cfg
  # Generated tokens are text: t = h = w, so Qwen2.5-VL's M-RoPE is this 1-D table too.
  rope_table = llm.rope_cos_sin(jnp.arange(rope_length), text.head_dim, text.rope_theta)
  cache = [{name: sharding.constrain_batch(
      jnp.zeros((N, text.num_kv_heads, C, text.head_dim), prompt_cache[0]["k"].dtype))
      for name in ("k", "v")} for _ in range(text.num_layers)]

  def draw_t(logits_NV, t):
    return sample(logits_NV, None, temperature=temperature, top_k=top_k, top_p=top_p,
                  greedy=greedy, uniform_N1=None if greedy else uniform_NC1[:, t])

  token_N, logprob_N = draw_t(logits_NV, 0)
  tokens_NC = jnp.full((N, C), pad_id, jnp.int32).at[:, 0].set(token_N)
  logprobs_NC = jnp.zeros((N, C), jnp.float32).at[:, 0].set(logprob_N)
  done_N = jnp.isin(token_N, stop_ids)
  init = (jnp.int32(1), cache, token_N, tokens_NC, logprobs_NC, done_N, jnp.ones((N,), jnp.int32))

  def cond(carry):
    t, *_, done_N, _ = carry
    return (t < C) & ~jnp.all(done_N)  # stop early once every row has stopped

  def body(carry):
    t, cache, token_N, tokens_NC, logprobs_NC, done_N, lengths_N = carry
    # Feed token t-1 (completion slot t-1, position next+t-1); read the logits of t.
    logits_NV, cache = lm.decode(token_N, next_N + t - 1, prompt_cache,
                                 prompt_valid_BP, cache, t - 1, rope_table)
    cache = jax.tree.map(sharding.constrain_batch, cache)
    token_N, logprob_N = draw_t(sharding.constrain_batch(logits_NV), t)
    token_N = jnp.where(done_N, pad_id, token_N)
    logprob_N = jnp.where(done_N, 0.0, logprob_N)
    tokens_NC = jax.lax.dynamic_update_slice_in_dim(tokens_NC, token_N[:, None], t, axis=1)
    logprobs_NC = jax.lax.dynamic_update_slice_in_dim(logprobs_NC, logprob_N[:, None], t, axis=1)
    lengths_N = lengths_N + (~done_N).astype(jnp.int32)  # counts the stop token itself
    done_N = done_N | jnp.isin(token_N, stop_ids)
    return t + 1, cache, token_N, tokens_NC, logprobs_NC, done_N, lengths_N

  _, _, _, tokens_NC, logprobs_NC, done_N, lengths_N = jax.lax.while_loop(cond, body, init)
  mask_NC = (jnp.arange(C)[None] < lengths_N[:, None]).astype(jnp.int32)
  return {"tokens_NC": tokens_NC, "mask_NC": mask_NC, "logprobs_NC": logprobs_NC,
          "lengths_N": lengths_N, "stopped_N": done_N}


def generate(model: model_lib.InternVL, input_ids_BT, attention_mask_BT, pixel_values=None, *,
             rng: jax.Array, num_generations: int = 1, max_new_tokens: int,
             temperature=1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             stop_ids=DEFAULT_STOP_IDS, pad_id: int = 0, train: bool = False,
             layout: str = "gathered", lm: llm.Qwen2 | None = None,
             drop_key: jax.Array | None = None) -> dict:
  """Sample G completions per right-padded prompt; pure and traceable (no host transfer).

  ``pixel_values`` as `InternVL.embed`: [frames, H, W, 3] or [B, T, H, W, 3]. Static:
  everything but the arrays, ``rng`` and ``temperature``. Returns, over N = B*G rows
  (video-major) and C = ``max_new_tokens`` columns:
    tokens_NC    int32, sampled ids; ``pad_id`` after the first stop id
    mask_NC      int32, 1 up to and including the first stop id
    logprobs_NC  float32, log-prob of each sampled token (see `sample`); 0 where masked
    lengths_N    int32, completion lengths (= mask_NC.sum(1))
    stopped_N    bool, whether the row ended with a stop id (else truncated at C)
  Sampling noise depends on ``rng``, the step and the row index only, so it is the same
  whatever the mesh. The prefill reads the parameters as stored; the decode loop reads
  ``lm``, or `decoder` (``layout``) made here (pass one to share it between calls).
  ``drop_key``: the ViT's drop-path in the prefill (the GRPO rollout, whose policy the
  reference samples in train mode); None, as every evaluation call, for none.
  """
  mask_BT = sharding.constrain_batch(jnp.asarray(attention_mask_BT))
  positions, next_B, max_position = model.prompt_positions(
      sharding.constrain_batch(jnp.asarray(input_ids_BT)), mask_BT, pixel_values)
  prompt_cache, logits_NV = prefill(model, input_ids_BT, attention_mask_BT, pixel_values,
                                    num_generations=num_generations, train=train,
                                    drop_key=drop_key, positions=positions)
  return decode(model, prompt_cache, logits_NV, mask_BT, rng, max_new_tokens=max_new_tokens,
                temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                stop_ids=stop_ids, pad_id=pad_id,
                lm=decoder(model, layout) if lm is None else lm, next_position_B=next_B,
                max_position=max_position)


def _static(num_generations: int = 1, *, max_new_tokens: int, top_k: int = 0,
            top_p: float = 1.0, greedy: bool = False, stop_ids=DEFAULT_STOP_IDS,
            pad_id: int = 0, train: bool = False, layout: str = "gathered") -> dict:
  """The compile-time settings of `generate`, normalised so equal settings hash equal."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r} not in {LAYOUTS}")
  return dict(num_generations=int(num_generations), max_new_tokens=int(max_new_tokens),
              top_k=int(top_k), top_p=float(top_p), greedy=bool(greedy),
              stop_ids=tuple(int(s) for s in stop_ids), pad_id=int(pad_id), train=bool(train),
              layout=str(layout))


_STATIC = ("num_generations", "max_new_tokens", "top_k", "top_p", "greedy", "stop_ids",
           "pad_id", "train", "layout")


@functools.partial(nnx.jit, static_argnames=_STATIC)
def _generate_jit(model, input_ids_BT, attention_mask_BT, pixel_values, rng, temperature,
                  **static):
  return generate(model, input_ids_BT, attention_mask_BT, pixel_values, rng=rng,
                  temperature=temperature, **static)


def generate_jit(model: model_lib.InternVL, input_ids_BT, attention_mask_BT, pixel_values=None,
                 *, rng: jax.Array, temperature=1.0, **settings) -> dict:
  """`generate` as one compiled program, after `model.check_inputs`. ``settings``: the
  keyword arguments of `generate`. A new temperature does not recompile; other settings
  and new shapes do."""
  static = _static(**settings)
  model_lib.check_inputs(model.cfg, input_ids_BT, pixel_values, static["train"])
  return _generate_jit(model, input_ids_BT, attention_mask_BT, pixel_values, rng,
                       jnp.asarray(temperature, jnp.float32), **static)


def cached_generate(model: model_lib.InternVL):
  """`generate_jit` bound to ``model`` for repeated calls (evaluation loops, benchmarks):
  NNX's graph traversal, which costs as much as a tiny model's whole prefill, is done
  once (`nnx.split`); each call reads the current values of the model's own Variables
  (so parameter updates are seen; structural changes to the model after this call are
  not) into a plain `jax.jit` program.

      run = cached_generate(m)
      out = run(ids_BT, mask_BT, pix, rng=key, num_generations=4, max_new_tokens=64)
  """
  graphdef, state = nnx.split(model)
  variables = [v for _, v in nnx.to_flat_state(state)]  # the model's own, not copies
  treedef = jax.tree.structure(state)

  @functools.partial(jax.jit, static_argnames=_STATIC)
  def pure(values, input_ids_BT, attention_mask_BT, pixel_values, rng, temperature, **static):
    bound = nnx.merge(graphdef, jax.tree.unflatten(treedef, values))
    return generate(bound, input_ids_BT, attention_mask_BT, pixel_values, rng=rng,
                    temperature=temperature, **static)

  def run(input_ids_BT, attention_mask_BT, pixel_values=None, *, rng: jax.Array,
          temperature=1.0, **settings) -> dict:
    static = _static(**settings)
    model_lib.check_inputs(model.cfg, input_ids_BT, pixel_values, static["train"])
    return pure([v.get_raw_value() for v in variables], input_ids_BT, attention_mask_BT,
                pixel_values, rng, jnp.asarray(temperature, jnp.float32), **static)

  return run
