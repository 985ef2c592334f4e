"""Our GRPO contender for the benchmarks (`grpo_vs_trl.py`, `gpu.py`): a factory that a
`_timing.isolated` process calls, in a module of its own (no flags), so that any benchmark
script can spawn it.

Legend: B videos, G completions per video, C new tokens, T frames, N = B.G rows.
"""

from __future__ import annotations


def as_in_training(jax) -> None:
  """The CPU runtime settings `vqathinker_jax.main` makes for every run (programs on the
  calling thread; glibc keeps freed memory, so a step's temporaries are not mmapped and
  zero-filled anew each call): the benchmark times the code as users run it."""
  from vqathinker_jax import main as entry
  entry._sync_cpu_dispatch(jax)
  entry._keep_freed_memory(jax)


def grpo_setup(policy, G: int, C: int, *, beta: float, loss_type: str, top_k: int,
               remat: str, learning_rate: float):
  """(GRPO config, AdamW, graphdef, train state) of our benchmarked updates (`ours`,
  `profile_update.py`): no stop ids, no temporal reward, a constant learning rate."""
  from vqathinker_jax.rl import grpo
  from vqathinker_jax.train import state as train_state
  cfg = grpo.GRPOConfig(num_generations=G, beta=beta, kl_estimator="k3", epsilon=0.2,
                        loss_type=loss_type, num_iterations=1, max_completion_length=C,
                        temperature=1.0, top_k=top_k, top_p=1.0, stop_ids=(), temporal=False,
                        remat=remat)
  tx = train_state.make_optimizer(learning_rate, max_grad_norm=1.0, b1=0.9, b2=0.999,
                                  eps=1e-8, weight_decay=0.0)
  graphdef, state = train_state.init_state(policy, tx, reference=bool(beta))
  return cfg, tx, graphdef, state


def ours(ckpt: str, ids, pix, work: dict, rollout_only: bool = False):
  """Our contender (its own process): one call = one jitted GRPO step (rollout -> reward ->
  reference -> update), or with ``rollout_only`` the rollout (and advantages) alone, with
  the model only (no optimizer state, reference copy or step)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from vqathinker_jax import model
  from vqathinker_jax.rl import rewards, rollout
  from vqathinker_jax.train import steps
  as_in_training(jax)
  B, G, C, T, size = (work[k] for k in ("videos", "generations", "new_tokens", "frames", "size"))
  # Compute dtype (default float32); parameters (and so AdamW's moments) in float32 always:
  # bfloat16 compute with float32 master weights, as configs/internvl3_8b_lsvq.py trains.
  dtype = work.get("dtype", "float32")
  # low_memory: layers recomputed in the backward pass, the ViT blocks and decoder layers
  # each one scanned loop (which keeps remat effective on XLA:CPU), the whole batch in one
  # gradient pass (a micro-batch loop would hold a second gradient-sized accumulator).
  policy, _ = model.from_pretrained(ckpt, dtype=dtype, param_dtype="float32",
                                    scan_layers=work["low_memory"])

  def reward_fn(tokens_NC, mask_NC, labels_B, perturbed):
    m = mask_NC.astype(jnp.float32)
    total = ((tokens_NC % 2 == 0) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    return dict(total=total, advantage=rewards.group_advantages(total, G, 1e-4))

  batch = dict(prompt_ids=jnp.asarray(ids), prompt_mask=jnp.ones(ids.shape, jnp.int32),
               pixel_values=jnp.asarray(pix.reshape(B, T, 3, size, size)
                                        .transpose(0, 1, 3, 4, 2), dtype),
               labels=jnp.ones((B,), jnp.float32))
  run = {"lengths": []}
  call_report = lambda: {"completion_lengths_min_max": (
      [min(a for a, _ in run["lengths"]), max(b for _, b in run["lengths"])]
      if run["lengths"] else None)}

  if rollout_only:
    # The policy's arrays as the train state holds them (`train_state.init_state`: plain
    # dicts, already on the mesh), so the rollout is the same program as in a step.
    graphdef, params, rest = nnx.split(policy, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    del policy
    mesh = jax.tree.leaves(params)[0].sharding.mesh

    @jax.jit
    def rollout_fn(params, rest, batch, rng):
      out = rollout.generate(nnx.merge(graphdef, params, rest), batch["prompt_ids"],
                             batch["prompt_mask"], batch["pixel_values"], rng=rng,
                             num_generations=G, max_new_tokens=C, temperature=1.0,
                             top_k=work["top_k"], top_p=1.0, stop_ids=(), train=True)
      return (out["tokens_NC"],
              reward_fn(out["tokens_NC"], out["mask_NC"], None, None)["advantage"])

    def call(i):
      with jax.set_mesh(mesh):
        tokens, _ = jax.block_until_ready(rollout_fn(params, rest, batch,
                                                     jax.random.key(10_000 + i)))
      return list(tokens.shape)
    call.report = call_report
    return call

  cfg, tx, graphdef, state = grpo_setup(
      policy, G, C, beta=work["beta"], loss_type=work["loss_type"], top_k=work["top_k"],
      remat="full" if work["low_memory"] else "off", learning_rate=work["learning_rate"])
  del policy
  mesh = jax.tree.leaves(state.params)[0].sharding.mesh
  step_fn = steps.make_grpo_step(graphdef, state, tx, cfg, reward_fn)
  run["state"] = state
  del state

  def call(i):
    with jax.set_mesh(mesh):
      run["state"], metrics = step_fn(run["state"], batch, jax.random.key(i))
      metrics = jax.device_get(jax.block_until_ready(metrics))
    run["lengths"].append((int(metrics["completion_length_min"]),
                           int(metrics["completion_length_max"])))
    return run["lengths"][-1]
  call.report = call_report
  return call
