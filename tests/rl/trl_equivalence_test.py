"""One GRPO update against TRL's `GRPOTrainer` (a trainer we did not write): same tiny
InternVL checkpoint, prompts, fixed completions and rewards, each `loss_type`.

TRL runs its own `trainer.train()` step (chat template and processor, masks through the
first EOS, group advantages, reference model, loss, backward, clipping, AdamW) with only
its sampler replaced by the fixed completions (EOS mid-way followed by junk, a second EOS,
EOS first and last, no EOS). Ours runs the production pieces on the same token ids and
normalised pixels: the decode loop's masks (`rollout.decode` on a decoder whose logits are
one-hot on the completions), `rewards.group_advantages`, `grpo.token_logprobs`,
`grpo.update` and `train.state.make_optimizer`. Compared within 1e-5 of each quantity's
scale: masks (exactly), advantages, per-token log-probs of policy and reference, per-token
k3 KL and its logged mean, loss, gradient norm, and every parameter and its step after
AdamW (by transformers name; ours via `model.save_pretrained`); each gradient tensor
within 4x the largest error seen (7e-6 of its scale).

Set on TRL's side: `use_bias_correction_kl=False` (TRL 1.16's default multiplies the KL by
the importance ratio, 1 in value but not in gradient, adding KL * d logp: DeepSeek-V3.2's
estimator; ours, as docs/method.md §4 and the original GRPO, differentiates beta * KL
alone; with the default the loss and log-probs agree and the gradient norm is 7.18 against
our 6.30). `scale_rewards="group"` is TRL's default and our normaliser. Both sides get a
perturbed copy of the policy as the reference: with reference = policy, as at a real run's
first step, k3 and its gradient are exactly 0 and the reference path would go unchecked.

Adam's first step, lr * g / (|g| + 1e-8), swings from -lr to lr where g is within rounding
of 0: each element's step may differ by what the two sides' (checked) gradients allow there,
binding almost everywhere (~0.25% of elements get more than 1e-5 lr); and optax's float32
bias correction makes its first step 6.5e-6 shorter than torch's (OPTAX_STEP).
"""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors.numpy import load_file

import tolerance
from hf_tiny import IMAGE_TOKEN, VOCAB, make_hf_checkpoint
from vqathinker_jax import model
from vqathinker_jax.model import sharding
from vqathinker_jax.rl import grpo, rewards, rollout
from vqathinker_jax.train import state as train_state

pytest.importorskip("trl")
import torch  # noqa: E402

B, G, C, T, SIZE = 3, 4, 8, 2, 56  # videos, completions per video, tokens, frames, pixels
LR, MAX_GRAD_NORM, B1, B2, ADAM_EPS = 1e-3, 1.0, 0.9, 0.999, 1e-8
BETA, EPSILON = 0.04, 0.2
REF_NOISE = 0.02  # the reference's weights: the policy's + REF_NOISE x N(0, 1)
REL = 1e-5  # the tolerance, relative to each quantity's scale
ULPS = REL / tolerance.EPS32  # the same, in float32 rounding units (~84)
GRAD_ULPS = 240  # gradients: see the test
# optax's Adam bias-corrects nu with 1 - b2^t in float32 (1 - f32(0.999) = 0.99998713e-3)
# after scaling g^2 by f32(1 - b2) (1.00000005e-3); torch uses float64: optax's first step
# is 6.5e-6 (relative) shorter than torch's.
OPTAX_STEP = 1.0 - np.sqrt((1.0 - np.float64(np.float32(B2))) / np.float64(np.float32(1.0 - B2)))

# Where each completion's first EOS goes (None: no EOS; it runs to C tokens and is cut).
EOS_AT = [[2, None, 5, 0], [None, 3, None, C - 1], [4, None, 1, None]]
SECOND_EOS = (0, 0, 6)  # (video, completion, position): a later EOS, to be masked too
# Fixed rewards; video 1's are all equal (zero advantages, only the KL term moves it).
REWARDS_BG = np.array([[1.0, 0.25, 0.5, 0.0], [0.5, 0.5, 0.5, 0.5], [2.0, 0.0, 1.0, 0.75]],
                      np.float32)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _benchmark():
  """benchmarks/grpo_vs_trl.py as a module (loaded once per process: it defines absl
  flags), for its tokenizer, processor and frames."""
  if "grpo_vs_trl" in sys.modules:
    return sys.modules["grpo_vs_trl"]
  path = ROOT / "benchmarks" / "grpo_vs_trl.py"
  saved = list(sys.path)
  sys.path.insert(0, str(path.parent))  # its `import _timing`
  try:
    spec = importlib.util.spec_from_file_location("grpo_vs_trl", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    importlib.import_module("shapes")  # its functions import it when called
  finally:
    sys.path[:] = saved  # it prepends the checkout and tests/ too
  sys.modules["grpo_vs_trl"] = mod
  return mod


class _Forced:
  """A decoder whose next-token logits are one-hot on fixed completions ``tokens_NC``:
  `rollout.decode` run greedily on it gives the production masks (through the first stop
  id) and padding of those completions."""

  def __init__(self, cfg, tokens_NC):
    self.cfg, self.tokens_NC = cfg, tokens_NC

  def logits(self, t):
    return jax.nn.one_hot(jnp.take(self.tokens_NC, t, axis=1), VOCAB)

  def decode(self, token_N, position_N, prompt_cache, prompt_valid_BP, cache, slot, rope_table):
    return self.logits(slot + 1), cache  # slot t - 1 is fed, token t is drawn


def production_masks(comp_BGC, stop_ids, text_cfg):
  """(tokens [B, G, C], masks [B, G, C]) that the decode loop writes for these
  completions (traceable)."""
  lm = _Forced(text_cfg, comp_BGC.reshape(B * G, C))
  prompt_cache = [{"k": jnp.zeros((B, 1, 1, 1)), "v": jnp.zeros((B, 1, 1, 1))}]
  out = rollout.decode(None, prompt_cache, lm.logits(0), jnp.ones((B, 1), jnp.int32), None,
                       max_new_tokens=C, greedy=True, stop_ids=stop_ids, lm=lm)
  return out["tokens_NC"].reshape(B, G, C), out["mask_NC"].reshape(B, G, C)


def recording(tx):
  """``tx`` whose state also keeps the gradient it was last given (what `grpo.update`
  passes its optimiser)."""
  def init(params):
    return tx.init(params), jax.tree.map(jnp.zeros_like, params)

  def update(grads, state, params=None):
    updates, inner = tx.update(grads, state[0], params)
    return updates, (inner, grads)
  return optax.GradientTransformation(init, update)


def grpo_config(loss_type, eos):
  return grpo.GRPOConfig(num_generations=G, beta=BETA, kl_estimator="k3", epsilon=EPSILON,
                         loss_type=loss_type, num_iterations=1, max_completion_length=C,
                         temperature=1.0, stop_ids=(eos,), temporal=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """The shared inputs (checkpoints, processed prompts, fixed completions, rewards) and our
  side for every loss type, in one program: the decode loop's masks, the group advantages,
  the per-token log-probs of the policy and the reference, and one `grpo.update` each."""
  from trl.data_utils import prepare_multimodal_messages
  bench = _benchmark()
  work = tmp_path_factory.mktemp("trl_equivalence")
  ckpt, ref_ckpt = work / "policy", work / "reference"
  hf = make_hf_checkpoint(ckpt)
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(REF_NOISE * torch.randn(p.shape, generator=gen))
  hf.save_pretrained(ref_ckpt)
  ref_state = {k: v.detach().clone() for k, v in hf.state_dict().items()}

  tokenizer = bench.make_tokenizer()
  processor = bench.make_processor(tokenizer, SIZE)
  frames = bench.video_frames(B, T, SIZE)
  messages = [{"role": "user", "content": bench.QUESTION}]
  inputs = processor.apply_chat_template(
      [prepare_multimodal_messages(messages, images=f) for f in frames],
      add_generation_prompt=True, tokenize=True, return_dict=True)
  ids_BP = np.asarray(inputs["input_ids"], np.int32)  # equal lengths: no padding
  pix_NCHW = np.asarray(inputs["pixel_values"], np.float32)  # [B.T, 3, H, W]
  eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

  rng = np.random.default_rng(0)
  special = set(tokenizer.all_special_ids) | {IMAGE_TOKEN}
  ordinary = np.array([i for i in range(VOCAB) if i not in special])
  comp_BGC = rng.choice(ordinary, (B, G, C)).astype(np.int32)
  for b in range(B):
    for g in range(G):
      if EOS_AT[b][g] is not None:
        comp_BGC[b, g, EOS_AT[b][g]] = eos
  comp_BGC[SECOND_EOS] = eos
  length_BG = np.array([[C if e is None else e + 1 for e in row] for row in EOS_AT])
  place = {tuple(comp_BGC[b, g, :length_BG[b, g]]): (b, g) for b in range(B) for g in range(G)}
  assert len(place) == B * G  # each completion is told apart by its tokens through the EOS

  mesh = sharding.single_device_mesh()
  policy, mcfg = model.from_pretrained(ckpt, mesh=mesh)
  ref, _ = model.from_pretrained(ref_ckpt, mesh=mesh)
  tx = recording(train_state.make_optimizer(LR, max_grad_norm=MAX_GRAD_NORM, b1=B1, b2=B2,
                                            eps=ADAM_EPS, weight_decay=0.0))
  graphdef, state = train_state.init_state(policy, tx, reference=True)
  state = state.replace(ref_params=nnx.to_pure_dict(nnx.state(ref, nnx.Param)))
  cfgs = {lt: grpo_config(lt, eos) for lt in grpo.LOSS_TYPES}

  @jax.jit
  def ours(state, ids_BP, pix_BTHWC, comp_BGC, rewards_BG):
    tokens_BGC, mask_BGC = production_masks(comp_BGC, (eos,), mcfg.text)
    adv_BG = rewards.group_advantages(rewards_BG.reshape(-1), G,
                                      rewards.RewardConfig().advantage_eps).reshape(B, G)
    batch = dict(prompt_ids=ids_BP, prompt_mask=jnp.ones_like(ids_BP), pixel_values=pix_BTHWC,
                 completions=tokens_BGC, completion_mask=mask_BGC, advantages=adv_BG)
    logp_BGC, ref_logp_BGC = (grpo.token_logprobs(
        nnx.merge(graphdef, params, state.rest), ids_BP, batch["prompt_mask"], pix_BTHWC,
        tokens_BGC)[0] for params in (state.params, state.ref_params))
    updates = {lt: grpo.update(graphdef, state, batch, tx, cfg) for lt, cfg in cfgs.items()}
    return tokens_BGC, mask_BGC, adv_BG, logp_BGC, ref_logp_BGC, updates

  pix_BTHWC = pix_NCHW.reshape(B, T, 3, SIZE, SIZE).transpose(0, 1, 3, 4, 2)
  tokens_BGC, mask_BGC, adv_BG, logp_BGC, ref_logp_BGC, updates = jax.device_get(
      ours(state, ids_BP, pix_BTHWC, comp_BGC, REWARDS_BG))

  def exported(params, path):
    """``params`` by transformers name (`model.save_pretrained`), float64."""
    model.save_pretrained(nnx.merge(graphdef, params, state.rest), mcfg, path)
    return {k: v.astype(np.float64) for k, v in load_file(path / "model.safetensors").items()}

  per_loss = {lt: dict(metrics=jax.tree.map(float, metrics),
                       after=exported(new.params, work / f"ours_{lt}" / "after"),
                       grads=exported(new.opt_state[1], work / f"ours_{lt}" / "grads"))
              for lt, (new, metrics) in updates.items()}
  return dict(ckpt=ckpt, ref_state=ref_state, processor=processor, frames=frames,
              messages=messages, ids_BP=ids_BP, pix_NCHW=pix_NCHW, eos=eos, comp_BGC=comp_BGC,
              place=place, tokens_BGC=tokens_BGC, mask_BGC=mask_BGC, adv_BG=adv_BG,
              logp_BGC=logp_BGC, ref_logp_BGC=ref_logp_BGC, cfgs=cfgs, ours=per_loss, work=work)


def run_trl(s, loss_type):
  """One `GRPOTrainer` step with the sampler replaced; what it computed on the way."""
  from datasets import Dataset
  from transformers import PrinterCallback
  from transformers.core_model_loading import revert_weight_conversion
  from trl import GRPOConfig as TRLConfig, GRPOTrainer
  frames, comp_BGC = s["frames"], s["comp_BGC"]
  reward_of = {ids: float(REWARDS_BG[bg]) for ids, bg in s["place"].items()}

  def fixed_rewards(completion_ids, **_):
    return [reward_of[tuple(ids)] for ids in completion_ids]

  args = TRLConfig(
      output_dir=str(s["work"] / f"trl_{loss_type}"), per_device_train_batch_size=B * G,
      gradient_accumulation_steps=1, steps_per_generation=1, num_generations=G,
      max_completion_length=C, temperature=1.0, beta=BETA, loss_type=loss_type,
      epsilon=EPSILON, num_iterations=1, scale_rewards="group", use_bias_correction_kl=False,
      disable_dropout=True, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
      optim="adamw_torch", adam_beta1=B1, adam_beta2=B2, adam_epsilon=ADAM_EPS, weight_decay=0.0,
      max_grad_norm=MAX_GRAD_NORM, max_steps=1, gradient_checkpointing=False, bf16=False,
      fp16=False, use_cpu=True, use_vllm=False, report_to="none", save_strategy="no",
      eval_strategy="no", logging_strategy="no", disable_tqdm=True, log_completions=False,
      dataloader_num_workers=0, seed=0, model_init_kwargs={"dtype": "float32"})
  dataset = Dataset.from_list([{"prompt": s["messages"], "images": f} for f in frames])
  trainer = GRPOTrainer(model=str(s["ckpt"]), reward_funcs=fixed_rewards, args=args,
                        train_dataset=dataset, processing_class=s["processor"])
  trainer.remove_callback(PrinterCallback)
  assert trainer.eos_token_ids == [s["eos"]], trainer.eos_token_ids
  trainer.ref_model.load_state_dict(s["ref_state"])
  pix_BTCHW = torch.tensor(s["pix_NCHW"]).reshape(B, T, 3, SIZE, SIZE)
  seen = {"calls": []}

  def fixed_generate(input_ids, pixel_values, **_):
    """The prompt ids and each row's fixed completion: the row's video told by its
    frames, its completions handed out in order."""
    handed = [0] * B
    rows = []
    for frames_TCHW in pixel_values.reshape(-1, T, 3, SIZE, SIZE):
      b = [bool(torch.equal(frames_TCHW, p)) for p in pix_BTCHW].index(True)
      rows.append(comp_BGC[b, handed[b]])
      handed[b] += 1
    return torch.cat([input_ids, torch.tensor(np.stack(rows), dtype=input_ids.dtype)], 1)
  trainer.model.generate = fixed_generate

  logps_fn = trainer._get_per_token_logps_and_entropies

  def logps(m, input_ids, attention_mask, logits_to_keep, *a, **kw):
    out = logps_fn(m, input_ids, attention_mask, logits_to_keep, *a, **kw)
    seen["calls"].append(dict(
        grad=torch.is_grad_enabled(), reference=m is trainer.ref_model,
        ids=input_ids[:, -logits_to_keep:].numpy().copy(),
        mask=attention_mask[:, -logits_to_keep:].numpy().copy(),
        logp=out[0].detach().numpy().copy()))
    return out
  trainer._get_per_token_logps_and_entropies = logps

  loss_fn = trainer._compute_loss

  def compute_loss(m, inputs):
    loss = loss_fn(m, inputs)
    seen["loss"] = float(loss.detach())
    seen["inputs"] = {k: v.detach().numpy().copy() for k, v in inputs.items()
                      if isinstance(v, torch.Tensor)}
    seen["kl_metric"] = trainer._metrics["train"]["kl"][-1]  # cleared by the end-of-train log
    return loss
  trainer._compute_loss = compute_loss

  def by_checkpoint_name(tensors):
    """Parameter-shaped tensors by their names in the checkpoint (transformers' renaming
    on save, as ours exports)."""
    return {k: v.detach().double().numpy().copy()
            for k, v in revert_weight_conversion(trainer.model, tensors).items()}

  clip_fn = trainer._clip_grad_norm

  def clip(m):
    seen["grads"] = by_checkpoint_name({n: p.grad for n, p in m.named_parameters()
                                        if p.grad is not None})
    norm = clip_fn(m)
    seen["grad_norm"] = float(norm)
    return norm
  trainer._clip_grad_norm = clip

  seen["before"] = by_checkpoint_name(dict(trainer.model.named_parameters()))
  trainer.train()
  seen["after"] = by_checkpoint_name(dict(trainer.model.named_parameters()))
  return seen


def to_BGC(rows_NX, ids_NX, mask_NX, place):
  """TRL's rows [N, C'] (any order; C' <= C) at our (video, completion) places [B, G, C],
  0 outside the mask; each row told by its completion's tokens through the EOS."""
  out = np.zeros((B, G, C) + rows_NX.shape[2:], np.float64)
  hit = np.zeros((B, G), int)
  for row, ids, m in zip(rows_NX, ids_NX, mask_NX.astype(bool)):
    b, g = place[tuple(ids[m])]
    hit[b, g] += 1
    out[b, g, :len(row)] = np.where(m, row, 0.0)
  assert (hit == 1).all(), hit
  return out


def vision_k_bias_scale(name):
  """InternViT's key bias has gradient 0 (attention is shift-invariant in the keys): what
  is computed is rounding at the scale of the key kernel's gradient (as grpo_test)."""
  if "vision_tower" in name and name.endswith("k_proj.bias"):
    return name.replace("k_proj.bias", "k_proj.weight")
  return name


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
def test_one_update_matches_trl(setup, loss_type):
  s = setup
  trl = run_trl(s, loss_type)
  cfg, ours = s["cfgs"][loss_type], s["ours"][loss_type]
  mask_BGC = s["mask_BGC"].astype(bool)
  place = s["place"]

  # TRL's own masks (through the first EOS), prompts and advantages are ours.
  inp = trl["inputs"]
  assert inp["completion_ids"].shape[1] == C  # some completions never stop
  assert inp["pixel_values"].shape[0] == B * G * T  # its VLM path: the frames of every row
  trl_mask_BGC = to_BGC(inp["completion_mask"], inp["completion_ids"], inp["completion_mask"],
                        place)
  np.testing.assert_array_equal(trl_mask_BGC, s["mask_BGC"])
  np.testing.assert_array_equal(np.where(mask_BGC, s["tokens_BGC"], -1),
                                np.where(mask_BGC, s["comp_BGC"], -1))
  assert (s["ids_BP"] == s["ids_BP"][0]).all() and (inp["prompt_ids"] == s["ids_BP"][0]).all()
  trl_adv_BG = to_BGC(np.repeat(inp["advantages"][:, None], C, 1), inp["completion_ids"],
                      inp["completion_mask"], place)[..., 0]
  tolerance.assert_close(s["adv_BG"], trl_adv_BG, ULPS, scale=1.0,  # standardised: scale 1
                         name="advantages")

  # Per-token log-probs of the policy (TRL's loss pass) and the reference (its no-grad pass).
  calls = trl["calls"]
  assert [(c["grad"], c["reference"]) for c in calls] == [(False, True), (True, False)]
  ref_c, pol_c = calls
  trl_ref_logp_BGC = to_BGC(ref_c["logp"], ref_c["ids"], ref_c["mask"], place)
  trl_logp_BGC = to_BGC(pol_c["logp"], pol_c["ids"], pol_c["mask"], place)
  tolerance.assert_close(s["logp_BGC"], trl_logp_BGC, ULPS, where=mask_BGC, name="log-probs")
  tolerance.assert_close(s["ref_logp_BGC"], trl_ref_logp_BGC, ULPS, where=mask_BGC,
                         name="reference log-probs")

  # Per-token k3 KL: TRL's `_compute_loss` line on its tensors (float32), ours on ours. Its
  # rounding is the log-probs', times |dKL/dd| = |exp(d) - 1|, d = ref - logp.
  lp, ref = (torch.tensor(x, dtype=torch.float32) for x in (trl_logp_BGC, trl_ref_logp_BGC))
  trl_kl_BGC = (torch.exp(ref - lp) - (ref - lp) - 1).numpy()
  kl_BGC = np.asarray(grpo.kl_divergence(s["logp_BGC"], s["ref_logp_BGC"], "k3"))
  kl_scale = (np.abs(trl_logp_BGC[mask_BGC]).max()
              * np.abs(np.expm1(trl_ref_logp_BGC - trl_logp_BGC)[mask_BGC]).max())
  tolerance.assert_close(kl_BGC, trl_kl_BGC, ULPS, scale=kl_scale, where=mask_BGC, name="KL")
  assert trl["kl_metric"] > 1e-3  # the reference is not the policy
  tolerance.assert_close(ours["metrics"]["kl"], trl["kl_metric"], ULPS, scale=kl_scale,
                         name="mean KL")

  # The loss, at the scale of the same reduction of its terms' magnitudes.
  tok_BGC, *_ = grpo.per_token_loss(s["logp_BGC"], s["logp_BGC"], s["ref_logp_BGC"],
                                    s["adv_BG"], cfg)
  loss_scale = float(grpo.reduce_loss(jnp.abs(tok_BGC), mask_BGC, cfg, num_items=mask_BGC.sum()))
  tolerance.assert_close(ours["metrics"]["loss"], trl["loss"], ULPS, scale=loss_scale,
                         name="loss")

  # Gradients (before clipping) and their global norm, by transformers name. Not among the
  # issue's quantities: XLA and torch sum every token's contribution in their own orders,
  # so the budget is 4x the largest error seen (~60 ulps of each tensor's largest).
  names = sorted(trl["before"])
  assert sorted(ours["after"]) == sorted(ours["grads"]) == names == sorted(trl["grads"])
  tolerance.assert_close(ours["metrics"]["grad_norm"], trl["grad_norm"], ULPS, name="grad norm")
  for n in names:
    tolerance.assert_close(ours["grads"][n], trl["grads"][n], GRAD_ULPS,
                           scale=np.abs(trl["grads"][vision_k_bias_scale(n)]).max(),
                           name=f"gradient {n}")

  # The AdamW step (after - before, at the scale of lr) and the parameters after it. Each
  # element is allowed, beyond the 1e-5: the rounding of p + step (1 ulp of |p| per
  # side); optax's float32 bias correction (OPTAX_STEP); and what the two clipped gradients
  # a, b can change u(g) = g / (|g| + eps) by, eps |a - b| / (min(|a|, |b|) + eps)^2 (min 0
  # across a sign change): large only where a gradient is within rounding of 0.
  coef_trl = min(1.0, MAX_GRAD_NORM / (trl["grad_norm"] + 1e-6))  # torch's clip_grad_norm_
  coef_ours = min(1.0, MAX_GRAD_NORM / ours["metrics"]["grad_norm"])  # optax's
  loose = total = 0
  for n in names:
    before, after = trl["before"][n], trl["after"][n]
    a, b = coef_ours * ours["grads"][n], coef_trl * trl["grads"][n]
    low = np.where(a * b > 0, np.minimum(np.abs(a), np.abs(b)), 0.0)
    adam = LR * np.minimum(2.0, ADAM_EPS * np.abs(a - b) / (low + ADAM_EPS) ** 2)
    loose += int((adam > REL * LR).sum())
    total += adam.size
    plus = (adam + tolerance.EPS32 * (np.abs(before) + np.abs(after))
            + OPTAX_STEP * np.abs(after - before))
    tolerance.assert_close(ours["after"][n] - before, after - before, ULPS, scale=LR, plus=plus,
                           name=f"step {n}")
    tolerance.assert_close(ours["after"][n], after, ULPS, plus=adam, name=f"parameter {n}")
  assert loose < 0.01 * total, (loose, total)  # the step check binds almost everywhere
