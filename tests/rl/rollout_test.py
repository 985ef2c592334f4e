"""Rollout engine: greedy parity with transformers' `generate`, sampling filters, fan-out
of the prefilled cache, sharded == single device, one compiled program.

Legend: B prompts, G samples per prompt, N = B*G rows, C new tokens, V vocabulary.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tolerance
from hf_tiny import padded_batch, video_batch
from vqathinker_jax import model
from vqathinker_jax.model import sharding
from vqathinker_jax.rl import rollout

FRAMES = (2, 1, 1, 2)
C = 10


@pytest.fixture(scope="module")
def tiny(hf_checkpoint):
  m, _ = model.from_pretrained(hf_checkpoint[0], mesh=sharding.single_device_mesh())
  return m, hf_checkpoint[1]


@pytest.fixture(scope="module")
def batch():
  return padded_batch(seed=3, frames=FRAMES)  # B = 4, rows 1 and 3 right-padded


@pytest.fixture(scope="module")
def greedy(tiny, batch):
  ids, pix, mask = batch
  out = rollout.generate_jit(tiny[0], ids, mask, pix, rng=jax.random.key(0), max_new_tokens=C,
                             greedy=True, stop_ids=())
  return jax.tree.map(np.asarray, out)


def _split(batch):
  ids, pix, mask = batch
  return ids, mask, pix


def _hf_greedy(hf, ids, pix, mask, stop_ids):
  """transformers' greedy `generate`, one unpadded row at a time: tokens [B, C] (0 after
  EOS) and the log-probs of the chosen tokens."""
  import torch
  tokens, logprobs, first = np.zeros((len(ids), C), int), np.zeros((len(ids), C)), 0
  for b, n in enumerate(FRAMES):
    L = int(mask[b].sum())
    out = hf.generate(input_ids=torch.tensor(ids[b:b + 1, :L]),
                      attention_mask=torch.ones(1, L, dtype=torch.long),
                      pixel_values=torch.tensor(pix[first:first + n].transpose(0, 3, 1, 2).copy()),
                      do_sample=False, max_new_tokens=C, pad_token_id=0,
                      eos_token_id=list(stop_ids) or None, output_logits=True,
                      return_dict_in_generate=True)
    first += n
    new = out.sequences[0, L:].numpy()
    tokens[b, :len(new)] = new
    for t, logits in enumerate(out.logits):
      logprobs[b, t] = torch.log_softmax(logits[0].float(), -1)[new[t]].item()
  return tokens, logprobs


def test_greedy_matches_transformers_generate(tiny, batch, greedy):
  ids, pix, mask = batch
  hf_tokens, hf_logprobs = _hf_greedy(tiny[1], ids, pix, mask, ())
  np.testing.assert_array_equal(greedy["tokens_NC"], hf_tokens)
  # Cached decoding on both sides, each summing in its own order (model_test's parity).
  tolerance.assert_close(greedy["logprobs_NC"], hf_logprobs, tolerance.LOGITS_VS_TORCH,
                         name="log-probs")
  assert greedy["mask_NC"].all() and (greedy["lengths_N"] == C).all()
  assert not greedy["stopped_N"].any()


def test_greedy_stops_like_transformers(tiny, batch, greedy):
  """Stop ids taken from the free-running output: row 1 stops at step 2, row 3 at 5 (or
  earlier, where the id occurs before); the mask includes the stop token."""
  ids, pix, mask = batch
  stop = (int(greedy["tokens_NC"][1, 2]), int(greedy["tokens_NC"][3, 5]))
  out = jax.tree.map(np.asarray, rollout.generate_jit(
      tiny[0], ids, mask, pix, rng=jax.random.key(0), max_new_tokens=C, greedy=True,
      stop_ids=stop))
  hf_tokens, _ = _hf_greedy(tiny[1], ids, pix, mask, stop)
  np.testing.assert_array_equal(out["tokens_NC"], hf_tokens)
  is_stop = np.isin(greedy["tokens_NC"], stop)
  want_len = np.where(is_stop.any(1), is_stop.argmax(1) + 1, C)
  assert want_len[1] <= 3 and want_len[3] <= 6
  np.testing.assert_array_equal(out["lengths_N"], want_len)
  np.testing.assert_array_equal(out["stopped_N"], is_stop.any(1))
  keep = np.arange(C)[None] < want_len[:, None]
  np.testing.assert_array_equal(out["mask_NC"], keep.astype(int))
  np.testing.assert_array_equal(out["tokens_NC"], np.where(keep, greedy["tokens_NC"], 0))
  np.testing.assert_array_equal(out["logprobs_NC"], np.where(keep, greedy["logprobs_NC"], 0))


def _sample(tiny, batch, key, **kw):
  ids, pix, mask = batch
  kw = dict(dict(num_generations=2, max_new_tokens=C, stop_ids=()), **kw)
  return jax.tree.map(np.asarray, rollout.generate_jit(tiny[0], ids, mask, pix, rng=key, **kw))


def test_sampling_is_reproducible(tiny, batch):
  a = _sample(tiny, batch, jax.random.key(1))
  ids, pix, mask = batch  # the same program through the cached entry point
  run = rollout.cached_generate(tiny[0])
  b = jax.tree.map(np.asarray, run(ids, mask, pix, rng=jax.random.key(1), num_generations=2,
                                   max_new_tokens=C, stop_ids=()))
  c = _sample(tiny, batch, jax.random.key(2))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert (a["tokens_NC"] != c["tokens_NC"]).mean() > 0.5
  # The G samples of one prompt share its prefill but draw independent noise.
  assert (a["tokens_NC"][0::2] != a["tokens_NC"][1::2]).mean() > 0.5


def test_cached_generate_sees_parameter_updates(tiny, batch):
  """The bound entry point reads the model's Variables at each call: after an in-place
  update it gives what `generate_jit` gives on the updated model."""
  m = nnx.clone(tiny[0])
  ids, pix, mask = batch
  kw = dict(rng=jax.random.key(1), max_new_tokens=C, greedy=True, stop_ids=())
  run = rollout.cached_generate(m)
  before = np.asarray(run(ids, mask, pix, **kw)["tokens_NC"])
  head = m.llm.lm_head.kernel
  head.set_value(head.get_value()[:, ::-1])  # permute the vocabulary: other argmaxes
  after = np.asarray(run(ids, mask, pix, **kw)["tokens_NC"])
  assert (after != before).mean() > 0.5
  np.testing.assert_array_equal(after, rollout.generate_jit(m, ids, mask, pix, **kw)["tokens_NC"])


@pytest.mark.parametrize("settings", [dict(temperature=1e-5), dict(top_k=1),
                                      dict(top_p=1e-6)],
                         ids=["temperature_to_0", "top_k_1", "top_p_to_0"])
def test_limits_equal_greedy(tiny, batch, greedy, settings):
  out = _sample(tiny, batch, jax.random.key(3), **settings)
  np.testing.assert_array_equal(out["tokens_NC"], np.repeat(greedy["tokens_NC"], 2, 0))
  if "temperature" not in settings:  # log-probs are those of the temperature-1 distribution
    # Another program (G = 2 rows per prompt) computing the same log-softmax.
    tolerance.assert_close(out["logprobs_NC"], np.repeat(greedy["logprobs_NC"], 2, 0),
                           tolerance.SHARDED, name="log-probs")


def _repeat_rows(batch, G):
  """The batch with every prompt (and its frames) repeated G times, video-major."""
  ids, pix, mask = batch
  starts = np.cumsum((0,) + FRAMES)
  pix_rep = np.concatenate([pix[starts[b]:starts[b + 1]] for b in range(len(ids))
                            for _ in range(G)])
  return np.repeat(ids, G, 0), pix_rep, np.repeat(mask, G, 0)


def test_fan_out_equals_independent_prefills(tiny, batch):
  """One prefill per prompt, shared by its G rows, against G prefills of each prompt:
  the same prompt KV and next-token logits, then the same samples and log-probs."""
  m, G = tiny[0], 3
  prefill = nnx.jit(rollout.prefill, static_argnames="num_generations")
  cache, logits = prefill(m, *_split(batch), num_generations=G)
  cache_ref, logits_ref = prefill(m, *_split(_repeat_rows(batch, G)), num_generations=1)
  # B prompts against B·G rows: the same sums, blocked differently.
  tolerance.assert_close(logits, logits_ref, tolerance.SHARDED, name="logits")
  for i, (layer, ref) in enumerate(zip(cache, cache_ref)):
    for name in ("k", "v"):
      tolerance.assert_close(np.repeat(layer[name], G, 0), ref[name], tolerance.SHARDED,
                             name=f"layer {i} {name}")

  kw = dict(max_new_tokens=C, top_k=50, top_p=0.9, stop_ids=(7,), rng=jax.random.key(4))
  ids, pix, mask = batch
  fanned = rollout.generate_jit(m, ids, mask, pix, num_generations=G, **kw)
  ids, pix, mask = _repeat_rows(batch, G)
  separate = rollout.generate_jit(m, ids, mask, pix, num_generations=1, **kw)
  for k in ("tokens_NC", "mask_NC", "lengths_N"):
    np.testing.assert_array_equal(fanned[k], separate[k])
  tolerance.assert_close(fanned["logprobs_NC"], separate["logprobs_NC"], tolerance.SHARDED,
                         name="log-probs")


@pytest.mark.parametrize("videos, G", [(4, 2), (2, 4)])
def test_sharded_equals_single_device(hf_checkpoint, videos, G):
  """Videos [B, T, H, W, 3] on a (2, 2, 2) mesh: rows over fsdp x data, weights split;
  with B = 2 the prompts do not divide over the 4 batch shards, the rows do."""
  ids, pix, mask = video_batch(seed=5, videos=videos, frames=2, size=56, motion=False)
  kw = dict(num_generations=G, max_new_tokens=C, top_k=50, top_p=0.95, stop_ids=(7, 11),
            rng=jax.random.key(5))
  single, _ = model.from_pretrained(hf_checkpoint[0], mesh=sharding.single_device_mesh())
  want = jax.tree.map(np.asarray, rollout.generate_jit(single, ids, mask, pix, **kw))
  mesh = sharding.make_mesh((2, 2, 2), jax.devices()[:8])
  sharded, _ = model.from_pretrained(hf_checkpoint[0], mesh=mesh)
  with jax.set_mesh(mesh):
    got = rollout.generate_jit(sharded, ids, mask, pix, **kw)
  assert got["tokens_NC"].sharding.spec[0] == ("fsdp", "data")
  for k in ("tokens_NC", "mask_NC", "lengths_N", "stopped_N"):
    np.testing.assert_array_equal(np.asarray(got[k]), want[k])
  tolerance.assert_close(got["logprobs_NC"], want["logprobs_NC"], tolerance.SHARDED,
                         name="log-probs")


def test_data_parallel_decode_runs_per_shard(hf_checkpoint, batch):
  """On a data-only mesh each device decodes its own videos (padded prompts, rows that
  stop at different steps): the same tokens as one device, and no all-reduce in the
  compiled program (no per-step vote across devices on whether all rows stopped, as
  the SPMD loop of a mesh that splits the weights has)."""
  ids, pix, mask = batch
  kw = dict(num_generations=3, max_new_tokens=C, top_k=20, top_p=0.9, stop_ids=(7, 11, 13))
  single, _ = model.from_pretrained(hf_checkpoint[0], mesh=sharding.single_device_mesh())
  want = jax.tree.map(np.asarray, rollout.generate_jit(single, ids, mask, pix,
                                                       rng=jax.random.key(9), **kw))
  assert 0 < want["stopped_N"].sum() < len(want["stopped_N"])
  mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])
  dp, _ = model.from_pretrained(hf_checkpoint[0], mesh=mesh)
  with jax.set_mesh(mesh):
    got = rollout.generate_jit(dp, ids, mask, pix, rng=jax.random.key(9), **kw)
    hlo = rollout._generate_jit.lower(dp, ids, mask, pix, jax.random.key(9), np.float32(1.0),
                                      **rollout._static(**kw)).compile().as_text()
  assert got["tokens_NC"].sharding.spec[0] == "data"
  for k in ("tokens_NC", "mask_NC", "lengths_N", "stopped_N"):
    np.testing.assert_array_equal(np.asarray(got[k]), want[k])
  tolerance.assert_close(got["logprobs_NC"], want["logprobs_NC"], tolerance.SHARDED,
                         name="log-probs")
  assert "while(" in hlo and "all-reduce" not in hlo


def test_one_program_no_host_transfer_no_recompile(tiny, batch):
  """Inside a caller's jit (as the GRPO step uses it): traced once for two temperatures
  and keys, and the second call moves nothing between host and device."""
  traces = []

  @nnx.jit
  def step(m, ids, mask, pix, key, temperature):
    traces.append(1)
    return rollout.generate(m, ids, mask, pix, rng=key, num_generations=2, max_new_tokens=C,
                            temperature=temperature, top_k=20, top_p=0.95)

  args = [jax.device_put(x) for x in (*_split(batch), jax.random.key(6), np.float32(1.0))]
  jax.block_until_ready(step(tiny[0], *args))
  args[-2:] = jax.device_put((jax.random.key(7), np.float32(0.7)))
  with jax.transfer_guard("disallow"):
    out = jax.block_until_ready(step(tiny[0], *args))
  assert len(traces) == 1 and out["tokens_NC"].shape == (8, C)


def test_sample_filters_match_their_distributions():
  """Empirical frequencies over many rows against the filtered, renormalised softmax;
  log-probs are those of the unfiltered distribution."""
  p_V = np.array([0.05, 0.3, 0.1, 0.4, 0.15])
  rows = 40_000
  logits_NV = jnp.broadcast_to(jnp.log(jnp.asarray(p_V, jnp.float32)), (rows, 5))

  def freq(**kw):
    tokens, logprobs = jax.jit(lambda l, k: rollout.sample(l, k, **kw))(
        logits_NV, jax.random.key(8))
    tokens = np.asarray(tokens)
    if "temperature" not in kw:  # float32 log-softmax of float32 log p against float64
      tolerance.assert_close(logprobs, np.log(p_V)[tokens], 4, name="log-probs")
    return np.bincount(tokens, minlength=5) / rows

  # Frequencies of 40,000 draws: standard errors <= sqrt(0.25 / 40,000) = 0.0025, so 0.01
  # is 4 of them (a wrong filter moves a frequency by >= 0.05).
  kept = np.array([0, 0.3, 0, 0.4, 0.15])
  np.testing.assert_allclose(freq(top_k=3), kept / kept.sum(), atol=0.01)
  # 0.4 + 0.3 >= 0.69: the third token never enters; 0.4 + 0.3 < 0.75: 0.15 joins.
  np.testing.assert_allclose(freq(top_p=0.69), [0, 0.3 / 0.7, 0, 0.4 / 0.7, 0], atol=0.01)
  np.testing.assert_allclose(freq(top_p=0.75, top_k=4), kept / kept.sum(), atol=0.01)
  np.testing.assert_allclose(freq(temperature=0.5), p_V ** 2 / (p_V ** 2).sum(), atol=0.01)


def test_top_k_top_p_masks_are_exact():
  """The threshold searches against sorting, on rows with ties at the threshold, -inf,
  +inf, signed zeros and values over many orders of magnitude: ties are kept (as
  transformers' `scores < topk[..., -1]`)."""
  rng = np.random.default_rng(0)
  rows = {
      "normal": rng.normal(size=(16, 512)),
      "ties": rng.integers(0, 8, size=(16, 512)),
      "bf16": np.asarray(jnp.asarray(rng.normal(size=(16, 512)), jnp.bfloat16), np.float32),
      "neg_inf": np.where(rng.random((16, 512)) < 0.95, -np.inf, rng.normal(size=(16, 512))),
      "pos_inf": np.where(rng.random((16, 512)) < 0.05, np.inf, rng.normal(size=(16, 512))),
      "signed_zeros": np.where(rng.random((16, 512)) < 0.5, -0.0, 0.0),
      "wide": rng.normal(size=(16, 512)) * 10.0 ** rng.integers(-30, 30, size=(16, 512)),
  }
  top_k = jax.jit(rollout._top_k_mask, static_argnums=1)
  top_p = jax.jit(rollout._top_p_mask, static_argnums=1)
  for name, x in rows.items():
    x = x.astype(np.float32)
    for k in (1, 2, 50, 511):
      want = x >= -np.sort(-x, axis=-1)[:, k - 1:k]
      np.testing.assert_array_equal(top_k(x, k), want, err_msg=f"{name} k={k}")
    if name in ("normal", "ties", "bf16", "neg_inf"):
      p = np.asarray(jax.nn.softmax(2.0 * x, axis=-1))
      for q in (1e-6, 0.5, 0.95):
        want = np.zeros_like(p, bool)
        for i, row in enumerate(p):  # the largest row value t with mass(p >= t) >= q
          t = max(v for v in np.unique(row) if row[row >= v].sum(dtype=np.float32) >= q)
          want[i] = row >= t
        np.testing.assert_array_equal(top_p(p, q), want, err_msg=f"{name} top_p={q}")
