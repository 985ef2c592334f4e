"""GRPO (docs/method.md §4) as pure functions: packed group log-probs, the loss with TRL's
normalisers, the update on scored rollouts (`update`) and the whole rollout -> rewards ->
update step (`train_step`); `train.steps` jits them, `train.state` holds the state.

Each video's prompt and its G completions are packed as `[prompt | c1 | ... | cG]` with a
block mask (a completion sees the prompt and, causally, itself), so the ViT, SlowFast and
the prompt run once per group: P + G·C tokens per pass instead of G·(P + C).

Legend: B videos, G completions per video, P prompt tokens, C completion tokens,
L = P + G·C packed tokens, D width, K tokens per LM-head chunk, N = B·G.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from data_pipelines import perturb
from vqathinker_jax.model import layers, llm
from vqathinker_jax.rl import rewards as rewards_lib, rollout

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
KL_ESTIMATORS = ("k1", "k2", "k3")
# Keys a step folds from its key (`jax.random.fold_in(rng, tag)`) for the ViT's drop-path
# and the rewards' random scores. `split(rng)` keeps giving the two rollouts' keys, and
# under JAX's default threefry_partitionable `split(k)[i] == fold_in(k, i)`, so the tags
# stay clear of 0 and 1; with neither feature on, no tag is folded and the step is the
# same program as without them.
KEY_DROP_ROLLOUT = 101     # the rollout's prefill (masks shared by a video's G rows)
KEY_DROP_PERTURBED = 102   # the perturbed rollouts' prefill
KEY_DROP_UPDATE = 103      # the update's forwards (then per iteration and micro-batch)
KEY_REWARDS = 104          # `RewardConfig.invalid = "random"` scores
KEY_DROP_OLD = 105         # the old-policy log-probs (num_iterations > 1), folded into
                           # the update's key


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """The update's knobs; names follow TRL's `GRPOConfig` where the meaning is the same."""
  num_generations: int = 4          # G completions per video
  beta: float = 0.04                # KL weight; 0 skips the reference model entirely
  kl_estimator: str = "k3"          # k3 = exp(ref - logp) - (ref - logp) - 1 (docs/method.md §4); k1, k2
  epsilon: float = 0.2              # ratio clip, lower side: 1 - epsilon
  epsilon_high: float | None = None # upper side: 1 + epsilon_high (None: epsilon)
  loss_type: str = "grpo"           # grpo | bnpo | dapo | dr_grpo (TRL's normalisers)
  num_iterations: int = 1           # policy updates per rollout batch (old log-probs kept)
  max_completion_length: int = 2048 # C; dr_grpo divides by it
  temperature: float = 1.0          # sampling temperature; log-probs are of this distribution
  top_k: int = 50                   # sampling: keep the k likeliest tokens (0: all)
  top_p: float = 1.0                # sampling: nucleus mass (1: all)
  stop_ids: tuple = rollout.DEFAULT_STOP_IDS  # <|im_end|>, <|endoftext|>
  temporal: bool = True             # also roll out G perturbed copies per video (docs/method.md §3)
  logprob_chunk: int = 256          # completion tokens per LM-head chunk ([B, K, V] at a time)
  remat: str = "off"                # ViT blocks + decoder layers in the backward pass: off | full | save_dots
  decode_layout: str = "gathered"   # rollout decode weights: gathered (once per step) | train
  micro_batch_size: int = 0         # videos per gradient micro-batch (0: the whole batch)
  logprob_micro_batch_size: int = 0 # videos per no-grad log-prob micro-batch (0: all)

  def __post_init__(self):
    # Messages name the field first: config_check reports them as `config.grpo.<field>`.
    checks = [
        ("loss_type", self.loss_type in LOSS_TYPES, f"must be one of {LOSS_TYPES}"),
        ("kl_estimator", self.kl_estimator in KL_ESTIMATORS, f"must be one of {KL_ESTIMATORS}"),
        ("remat", self.remat in llm.REMAT_POLICIES, f"must be one of {tuple(llm.REMAT_POLICIES)}"),
        ("decode_layout", self.decode_layout in rollout.LAYOUTS,
         f"must be one of {rollout.LAYOUTS}"),
        ("num_generations", self.num_generations >= 2,
         "must be >= 2 (group advantages compare at least two completions per video)"),
        ("num_iterations", self.num_iterations >= 1,
         "must be >= 1 (policy updates per rollout batch)"),
        ("max_completion_length", self.max_completion_length >= 1, "must be >= 1"),
        ("temperature", self.temperature > 0, "must be > 0 (sampling divides the logits by it)"),
        ("top_k", self.top_k >= 0, "must be >= 0 (0 keeps every token)"),
        ("top_p", 0 < self.top_p <= 1, "must be in (0, 1] (1 keeps every token)"),
        ("epsilon", self.epsilon >= 0, "must be >= 0"),
        ("epsilon_high", self.epsilon_high is None or self.epsilon_high >= 0, "must be >= 0"),
        ("beta", self.beta >= 0, "must be >= 0"),
        ("logprob_chunk", self.logprob_chunk >= 1,
         "must be >= 1 (completion tokens per LM-head chunk)"),
        ("micro_batch_size", self.micro_batch_size >= 0, "must be >= 0 (0: the whole batch)"),
        ("logprob_micro_batch_size", self.logprob_micro_batch_size >= 0,
         "must be >= 0 (0: the whole batch)"),
    ]
    for name, ok, rule in checks:
      if not ok:
        raise ValueError(f"{name} {rule}, got {getattr(self, name)!r}")

  @property
  def eps_high(self) -> float:
    return self.epsilon if self.epsilon_high is None else self.epsilon_high


# ------------------------------------------------------------------------- packing ---

def pack(prompt_ids_BP, prompt_mask_BP, completions_BGC, prompt_positions=None):
  """`[prompt | c1 | ... | cG]` per video: ids [B, L], positions [B, L] (or [3, B, L]),
  the attention pattern (`layers.PrefixGroupMask`), prompt slots [B, L] (where visual
  tokens may go), and for each completion token the packed index whose hidden state
  predicts it, src [B, G, C]. ``prompt_positions``: (the prompts' positions, each row's
  next position [B]) from the model's `prompt_positions` (default: 1-D, 0, 1, ... over
  the unmasked tokens, the next one the prompt's length); each completion continues at
  next + 0, 1, ... (in every row of 3-D positions)."""
  B, P = prompt_ids_BP.shape
  _, G, C = completions_BGC.shape
  L = P + G * C
  plen_B = prompt_mask_BP.astype(jnp.int32).sum(1)
  if prompt_positions is None:
    prompt_positions = (llm.positions_from_mask(prompt_mask_BP), plen_B)
  pos_BP, next_B = prompt_positions
  ids_BL = jnp.concatenate([prompt_ids_BP, completions_BGC.reshape(B, G * C)], axis=1)
  comp_BM = next_B[:, None] + jnp.tile(jnp.arange(C), G)[None]
  pos_BL = jnp.concatenate([pos_BP, jnp.broadcast_to(comp_BM, pos_BP.shape[:-1] + (G * C,))],
                           axis=-1)
  is_prompt_L = jnp.arange(L) < P
  mask = layers.PrefixGroupMask(prompt_mask_BP.astype(bool), groups=G, group_len=C)
  c_idx = P + jnp.arange(G)[:, None] * C + jnp.arange(C)[None, :]  # [G, C]
  src_BGC = jnp.where(jnp.arange(C)[None, None, :] == 0, plen_B[:, None, None] - 1,
                      (c_idx - 1)[None])
  slots_BL = jnp.broadcast_to(is_prompt_L[None], (B, L))
  return dict(ids=ids_BL, positions=pos_BL, mask=mask, slots=slots_BL, src=src_BGC)


def token_logprobs(model, prompt_ids_BP, prompt_mask_BP, pixel_values, completions_BGC, *,
                   temperature: float = 1.0, chunk: int = 256, train: bool = True,
                   remat: str = "off", drop_key: jax.Array | None = None):
  """Log-probs [B, G, C] of the completion tokens and the entropies of their predictive
  distributions, from one packed pass; the LM head runs K tokens at a time (rematerialised
  in the backward pass) so [B, G·C, V] logits never exist at once. ``drop_key``: the
  ViT's drop-path masks (one ViT pass per video, shared by its G completions)."""
  B, G, C = completions_BGC.shape
  positions, next_B, _ = model.prompt_positions(prompt_ids_BP, prompt_mask_BP, pixel_values)
  packed = pack(prompt_ids_BP, prompt_mask_BP, completions_BGC, (positions, next_B))
  h_BLD = model.hidden_states(packed["ids"], pixel_values, packed["positions"], packed["mask"],
                              train=train, slots_BT=packed["slots"], remat=remat,
                              drop_key=drop_key)
  h_BMD = jnp.take_along_axis(h_BLD, packed["src"].reshape(B, G * C, 1), axis=1)
  tgt_BM = completions_BGC.reshape(B, G * C)
  M = G * C
  K = min(chunk, M)
  n = -(-M // K)
  h_nBKD = jnp.pad(h_BMD, ((0, 0), (0, n * K - M), (0, 0))).reshape(B, n, K, -1).swapaxes(0, 1)
  tgt_nBK = jnp.pad(tgt_BM, ((0, 0), (0, n * K - M))).reshape(B, n, K).swapaxes(0, 1)

  @jax.checkpoint
  def one_chunk(h_BKD, tgt_BK):
    logp_BKV = jax.nn.log_softmax(model.llm.logits(h_BKD) / temperature, axis=-1)
    logp_BK = jnp.take_along_axis(logp_BKV, tgt_BK[..., None], axis=-1)[..., 0]
    # The vocabulary padding has log-prob -inf (`Qwen2.logits`): it adds 0, not 0 * -inf
    # (NaN, in the gradient too).
    finite_BKV = jnp.where(logp_BKV == -jnp.inf, 0.0, logp_BKV)
    entropy_BK = -(jnp.exp(logp_BKV) * finite_BKV).sum(-1)
    return logp_BK, entropy_BK

  _, (logp_nBK, ent_nBK) = jax.lax.scan(lambda c, x: (c, one_chunk(*x)), None, (h_nBKD, tgt_nBK))
  unchunk = lambda x: x.swapaxes(0, 1).reshape(B, n * K)[:, :M].reshape(B, G, C)
  return unchunk(logp_nBK), unchunk(ent_nBK)


# ---------------------------------------------------------------------------- loss ---

def kl_divergence(logp, ref_logp, estimator: str = "k3"):
  """Per-token KL(policy || reference) estimate from log-probs of the sampled tokens."""
  d = ref_logp - logp
  if estimator == "k1":
    return -d
  if estimator == "k2":
    return 0.5 * d * d
  return jnp.exp(d) - d - 1.0


def per_token_loss(logp_BGC, old_logp_BGC, ref_logp_BGC, adv_BG, cfg: GRPOConfig):
  """`-min(r·A, clip(r)·A) + β·KL` per token, and the clip indicators."""
  ratio = jnp.exp(logp_BGC - old_logp_BGC)
  clipped = jnp.clip(ratio, 1.0 - cfg.epsilon, 1.0 + cfg.eps_high)
  a = adv_BG[..., None]
  loss = -jnp.minimum(ratio * a, clipped * a)
  kl = jnp.zeros_like(loss)
  if cfg.beta:
    kl = kl_divergence(logp_BGC, ref_logp_BGC, cfg.kl_estimator)
    loss = loss + cfg.beta * kl
  low = (ratio < 1.0 - cfg.epsilon) & (a < 0)
  high = (ratio > 1.0 + cfg.eps_high) & (a > 0)
  return loss, kl, low, high


def reduce_loss(loss_BGC, mask_BGC, cfg: GRPOConfig, num_items=None, num_micro: int = 1):
  """TRL's normalisers for one micro-batch of ``num_micro``: grpo = mean over sequences of
  the token mean; bnpo = token mean over the micro-batch; dr_grpo = sum / (N·C_max);
  dapo = sum / ``num_items`` (completion tokens in the whole global batch)."""
  m = mask_BGC.astype(loss_BGC.dtype)
  total = (loss_BGC * m).sum()
  if cfg.loss_type == "grpo":
    per_seq = (loss_BGC * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)
    return per_seq.mean() / num_micro
  if cfg.loss_type == "bnpo":
    return total / jnp.maximum(m.sum(), 1.0) / num_micro
  if cfg.loss_type == "dr_grpo":
    return total / (loss_BGC.shape[0] * loss_BGC.shape[1] * cfg.max_completion_length) / num_micro
  return total / jnp.maximum(num_items, 1.0)


# ---------------------------------------------------------------------------- step ---

def _micro(x, n):
  """[B, ...] -> [n, B/n, ...]."""
  return x.reshape(n, x.shape[0] // n, *x.shape[1:])


def _fold_keys(key: jax.Array, n: int) -> jax.Array:
  """[n] keys `fold_in(key, i)`: one per micro-batch, scanned with it."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def _logprobs_no_grad(graphdef, params, rest, batch, cfg, n_micro, drop_key=None):
  """Log-probs of a frozen copy (old policy or reference) in micro-batches; ``drop_key``:
  the ViT's drop-path (the old policy, sampled in train mode by the reference; never the
  reference model, which TRL runs in eval mode)."""
  def one(mb):
    m = nnx.merge(graphdef, params, rest)
    logp, _ = token_logprobs(m, mb["prompt_ids"], mb["prompt_mask"], mb["pixel_values"],
                             mb["completions"], temperature=cfg.temperature,
                             chunk=cfg.logprob_chunk, drop_key=mb.get("drop_key"))
    return jax.lax.stop_gradient(logp)
  keys = ("prompt_ids", "prompt_mask", "pixel_values", "completions")
  mbs = {k: _micro(batch[k], n_micro) for k in keys}
  if drop_key is not None:
    mbs["drop_key"] = _fold_keys(drop_key, n_micro)
  out = jax.lax.map(one, mbs)
  return out.reshape(-1, *out.shape[2:])


def _micro_loss(graphdef, rest, cfg: GRPOConfig, num_items, n_micro: int, ratio_one: bool):
  """``f(params, micro_batch) -> (loss, sums)``: one micro-batch's share of the loss, and
  its masked sums of KL, clip indicators and entropy (for the metrics)."""
  def micro_loss(params, mbatch):
    m = nnx.merge(graphdef, params, rest)
    logp, ent = token_logprobs(m, mbatch["prompt_ids"], mbatch["prompt_mask"],
                               mbatch["pixel_values"], mbatch["completions"],
                               temperature=cfg.temperature, chunk=cfg.logprob_chunk,
                               remat=cfg.remat, drop_key=mbatch.get("drop_key"))
    old = jax.lax.stop_gradient(logp) if ratio_one else mbatch["old_logp"]
    tok, kl, low, high = per_token_loss(logp, old, mbatch["ref_logp"], mbatch["advantages"], cfg)
    cm = mbatch["completion_mask"].astype(jnp.float32)
    loss = reduce_loss(tok, cm, cfg, num_items, n_micro)
    sums = dict(kl=(kl * cm).sum(), clip_low=(low * cm).sum(), clip_high=(high * cm).sum(),
                entropy=(ent * cm).sum())
    return loss, sums
  return micro_loss


def _accumulate(grad_fn, params, micro_batches):
  """(loss, sums, grads) of ``grad_fn`` summed over the micro-batches ([n, ...] leaves)."""
  def add(acc, mbatch):
    (loss, sums), g = grad_fn(params, mbatch)
    return jax.tree.map(jnp.add, acc, (loss, sums, g)), None
  zero = (jnp.zeros(()), dict(kl=0.0, clip_low=0.0, clip_high=0.0, entropy=0.0),
          jax.tree.map(jnp.zeros_like, params))
  zero = jax.tree.map(jnp.asarray, zero)
  (loss, sums, grads), _ = jax.lax.scan(add, zero, micro_batches)
  return loss, sums, grads


def update(graphdef, state, batch: dict, tx: optax.GradientTransformation,
           cfg: GRPOConfig, drop_key: jax.Array | None = None):
  """`num_iterations` policy updates on one batch of scored rollouts -> (state, metrics).

  ``state``: a `train.state.TrainState` (params, rest, opt_state, ref_params, step,
  skipped; `apply_gradients` applies ``tx`` unless the loss or gradient is not finite).

  batch: prompt_ids [B, P], prompt_mask [B, P], pixel_values (frames of the B videos),
  completions [B, G, C], completion_mask [B, G, C] (through the first EOS), advantages
  [B, G], and optionally old_logp [B, G, C] (the sampler's log-probs; default: this
  policy's, i.e. ratio 1 on the first iteration).

  ``drop_key``: the ViT's drop-path in the policy's forwards, fresh masks for each
  iteration and micro-batch (`fold_in(fold_in(drop_key, iteration), micro-batch)`), as
  the reference's train-mode passes; the reference model's pass has none. None: none.
  """
  B = batch["prompt_ids"].shape[0]
  mb = cfg.micro_batch_size or B
  lmb = cfg.logprob_micro_batch_size or B
  if B % mb or B % lmb:
    raise ValueError(f"batch of {B} videos is not divisible by micro-batch sizes {mb}, {lmb}")
  n_micro, n_lp = B // mb, B // lmb
  mask = batch["completion_mask"]
  num_items = mask.astype(jnp.float32).sum()
  # Named scopes split the step's time by phase in an XLA profile (one program, no host
  # clock inside it).
  old_logp = batch.get("old_logp")
  # One update per batch: the old policy is this one, so ratio = exp(logp - sg(logp)) = 1
  # with the same gradient, and the extra no-grad pass (TRL's too) is skipped.
  ratio_one = old_logp is None and cfg.num_iterations == 1
  if old_logp is None and not ratio_one:
    with jax.named_scope("old_logprobs"):
      old_drop = None if drop_key is None else jax.random.fold_in(drop_key, KEY_DROP_OLD)
      old_logp = _logprobs_no_grad(graphdef, state.params, state.rest, batch, cfg, n_lp,
                                   old_drop)
  with jax.named_scope("reference"):
    ref_logp = (_logprobs_no_grad(graphdef, state.ref_params, state.rest, batch, cfg, n_lp)
                if cfg.beta else jnp.zeros(mask.shape, jnp.float32))
  data = dict(batch, ref_logp=ref_logp)
  keys = ("prompt_ids", "prompt_mask", "pixel_values", "completions", "completion_mask",
          "advantages", "ref_logp")
  if not ratio_one:
    data["old_logp"] = old_logp
    keys += ("old_logp",)

  grad_fn = jax.value_and_grad(_micro_loss(graphdef, state.rest, cfg, num_items, n_micro,
                                            ratio_one), has_aux=True)

  def one_iteration(carry, iteration):
    params, opt_state = carry
    micro_batches = {k: _micro(data[k], n_micro) for k in keys}
    if drop_key is not None:
      micro_batches["drop_key"] = _fold_keys(jax.random.fold_in(drop_key, iteration), n_micro)
    loss, sums, grads = _accumulate(grad_fn, params, micro_batches)
    new, grad_norm, finite = state.replace(params=params, opt_state=opt_state).apply_gradients(
        tx, loss, grads)
    out = dict(loss=loss, grad_norm=grad_norm, skipped=(~finite).astype(jnp.int32),
               **{k: v / jnp.maximum(num_items, 1.0) for k, v in sums.items()})
    return (new.params, new.opt_state), out

  with jax.named_scope("update"):
    iterations = None if drop_key is None else jnp.arange(cfg.num_iterations)
    (params, opt_state), per_iter = jax.lax.scan(
        one_iteration, (state.params, state.opt_state), iterations, length=cfg.num_iterations)
  metrics = jax.tree.map(lambda x: x[-1], per_iter)
  metrics["skipped"] = per_iter["skipped"].sum()
  lengths = mask.astype(jnp.float32).sum(-1)
  metrics.update(completion_length=lengths.mean(), completion_length_min=lengths.min(),
                 completion_length_max=lengths.max(), tokens=num_items)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            skipped=state.skipped + metrics["skipped"])
  return new_state, metrics


# -------------------------------------------------------------- rollout -> update ---

def vqathinker_rewards(table: rewards_lib.ByteTable, cfg: rewards_lib.RewardConfig,
                       max_bytes: int | None = None):
  """docs/method.md §3's rewards of sampled token ids, on device: `reward_fn` for `train_step`.

  ``max_bytes`` bounds the detokenised text (default: C x the longest token, which for
  Qwen's vocabulary is ~100x C); longer completions are scored as cut (`overflow`).
  With ``cfg.invalid = "random"`` the function draws from a ``key`` (`needs_key`:
  `train_step` then passes one).
  """
  def reward_fn(tokens_NC, mask_NC, labels_B, perturbed, key=None):
    return rewards_lib.rewards_from_ids(table, tokens_NC, mask_NC, labels_B, cfg,
                                        perturbed=perturbed, max_bytes=max_bytes, key=key)
  reward_fn.needs_key = cfg.needs_key
  return reward_fn


def train_step(graphdef, state, batch: dict, rng: jax.Array, tx, cfg: GRPOConfig,
               reward_fn):
  """Rollout -> rewards -> `update`, one traceable function (jit it whole).

  batch: prompt_ids [B, P] and prompt_mask [B, P] (right-padded), pixel_values
  [B, T, H, W, 3] (normalised), labels [B] in [1, 5], and for the temporal reward
  perturb_idx / blank [B, G, T] (`data_pipelines.pipeline`). ``reward_fn(tokens_NC,
  mask_NC, labels_B, perturbed)`` returns at least `total` and `advantage` [N]; one with
  a true ``needs_key`` attribute also gets ``key=`` (`vqathinker_rewards`).

  A policy whose `VisionConfig.drop_path_rate` is > 0 runs the ViT with drop-path in
  the rollouts and the update (the reference samples and trains in train mode), from
  keys folded out of ``rng`` (`KEY_DROP_*`); evaluation never passes one.
  """
  B = batch["prompt_ids"].shape[0]
  G, C = cfg.num_generations, cfg.max_completion_length
  sample_kw = dict(max_new_tokens=C, temperature=cfg.temperature, top_k=cfg.top_k,
                   top_p=cfg.top_p, stop_ids=tuple(cfg.stop_ids), train=True)
  policy = nnx.merge(graphdef, state.params, state.rest)
  rng_orig, rng_pert = jax.random.split(rng)
  drop = policy.cfg.vision.drop_path_rate > 0
  drop_key = lambda tag: jax.random.fold_in(rng, tag) if drop else None
  with jax.named_scope("rollout"):
    # One decode copy of the weights for both rollouts (`rollout.decoder`).
    sample_kw["lm"] = rollout.decoder(policy, cfg.decode_layout)
    out = rollout.generate(policy, batch["prompt_ids"], batch["prompt_mask"],
                           batch["pixel_values"], rng=rng_orig, num_generations=G,
                           drop_key=drop_key(KEY_DROP_ROLLOUT), **sample_kw)
  perturbed = None
  if cfg.temporal and "perturb_idx" in batch:
    # G perturbed copies per video, one rollout each; scored, never trained on.
    pix_BGTHWC = perturb.apply_perturbations(batch["pixel_values"], batch["perturb_idx"],
                                             batch["blank"])
    with jax.named_scope("rollout_perturbed"):
      pert = rollout.generate(policy, jnp.repeat(batch["prompt_ids"], G, axis=0),
                              jnp.repeat(batch["prompt_mask"], G, axis=0),
                              pix_BGTHWC.reshape(B * G, *pix_BGTHWC.shape[2:]), rng=rng_pert,
                              num_generations=1, drop_key=drop_key(KEY_DROP_PERTURBED),
                              **sample_kw)
    perturbed = (pert["tokens_NC"], pert["mask_NC"])
  with jax.named_scope("rewards"):
    reward_kw = ({"key": jax.random.fold_in(rng, KEY_REWARDS)}
                 if getattr(reward_fn, "needs_key", False) else {})
    scores = reward_fn(out["tokens_NC"], out["mask_NC"], batch["labels"], perturbed,
                       **reward_kw)
  update_batch = dict(
      prompt_ids=batch["prompt_ids"], prompt_mask=batch["prompt_mask"],
      pixel_values=batch["pixel_values"], completions=out["tokens_NC"].reshape(B, G, C),
      completion_mask=out["mask_NC"].reshape(B, G, C),
      advantages=scores["advantage"].reshape(B, G))
  state, metrics = update(graphdef, state, update_batch, tx, cfg, drop_key(KEY_DROP_UPDATE))
  total_BG = scores["total"].reshape(B, G)
  metrics.update({f"reward/{k}": v.astype(jnp.float32).mean() for k, v in scores.items()
                  if k not in ("advantage", "score", "decimals")})
  metrics.update(
      frac_reward_zero_std=(total_BG.std(1) == 0).mean(),
      clipped_ratio=1.0 - out["stopped_N"].astype(jnp.float32).mean())
  if "valid" in scores:
    metrics["parse_fail_rate"] = 1.0 - scores["valid"].astype(jnp.float32).mean()
  return state, metrics
