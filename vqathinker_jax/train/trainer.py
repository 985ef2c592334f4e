"""`mode='train'`: optional SFT warm-start, then GRPO, with checkpoints, logs and evaluation.

Steps are numbered globally: 1..S are SFT updates, S+1..S+N GRPO steps. A checkpoint holds
the phase's TrainState, the PRNG key, the Grain iterator position and metadata, so rerunning
the same command continues from the latest one and ends with the same parameters, bit for
bit, as an uninterrupted run (each step's key is `fold_in(key, step)`; the data order is the
iterator's). Evaluation reports go to workdir/eval/<tag>/ (tags `sft`, `step_N`, `final`).
Legend: B videos, G completions per video, T frames, H/W pixels, P prompt tokens.
"""

from __future__ import annotations

import json
import logging
import os
import math
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_pipelines import perturb, pipeline
from vqathinker_jax import smoke
from vqathinker_jax.eval import evaluate, predict
from vqathinker_jax.model import sharding
from vqathinker_jax.rl import grpo, rewards
from vqathinker_jax.text import demo_tokenizer, tokenizer as tok_lib
from vqathinker_jax.train import checkpointing, sft, log as train_log

def normalize(frames_BTHWC):
  """uint8 RGB -> ImageNet-normalised float32 as `predict.normalize`, but on device (a
  quarter of the bytes to move)."""
  return (frames_BTHWC.astype(jnp.float32) - predict.IMAGENET_MEAN) / predict.IMAGENET_STD


def schedule(o, total_steps: int) -> optax.Schedule:
  """SPEC §4 default: linear decay to 0, no warm-up; or constant / cosine."""
  decay = max(total_steps - o.warmup_steps, 1)
  main = {"linear": optax.linear_schedule(o.lr, 0.0, decay),
          "constant": optax.constant_schedule(o.lr),
          "cosine": optax.cosine_decay_schedule(o.lr, decay)}[o.schedule]
  if not o.warmup_steps:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps), main],
                              [o.warmup_steps])


def grpo_config(config, stop_ids) -> grpo.GRPOConfig:
  g = config.grpo
  return grpo.GRPOConfig(**{k: g[k] for k in g.keys()}, stop_ids=tuple(stop_ids))


def reward_config(config) -> rewards.RewardConfig:
  return rewards.RewardConfig(**config.rewards.to_dict())


def grpo_steps(config, train_size: int) -> int:
  t = config.train
  return t.num_steps or math.ceil(t.num_epochs * train_size / t.batch_size)


def _sft_tx(config):
  # Cosine decay to 0: the warm-start ends settled instead of at a noisy constant-lr point.
  lr = optax.cosine_decay_schedule(config.sft.lr, max(config.sft.steps, 1))
  return grpo.make_optimizer(lr, max_grad_norm=config.train.optimizer.max_grad_norm)


def _grpo_tx(config, num_steps: int):
  o = config.train.optimizer
  return grpo.make_optimizer(schedule(o, num_steps), max_grad_norm=o.max_grad_norm, b1=o.b1,
                             b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)


def trained_model(config, workdir):
  """The policy of the latest checkpoint in workdir/checkpoints (SFT or GRPO phase), on
  the config's mesh; None when there is no training run there."""
  ckdir = pathlib.Path(workdir) / "checkpoints"
  if not ckdir.is_dir():
    return None
  ckpt = checkpointing.Checkpointer(ckdir, read_only=True)
  try:
    step = ckpt.latest_step()
    if step is None:
      return None
    mesh = sharding.make_mesh(dict(config.mesh))
    model, _ = smoke.build_model(config, mesh)
    if step <= config.sft.steps:
      graphdef, state = _sft_state(model, _sft_tx(config))
    else:  # the optimiser state's structure does not depend on the step count
      stop_ids = demo_tokenizer.resolve(config.model, workdir).special.stop_ids
      graphdef, state = grpo.init_state(model, _grpo_tx(config, 1), grpo_config(config, stop_ids))
    state, _, _ = ckpt.restore(step, state)
    logging.info("evaluating the policy of %s", ckdir / str(step))
    return nnx.merge(graphdef, state.params, state.rest)
  finally:
    ckpt.close()


class _Phase:
  """A jitted step compiled ahead of time (its compile time is reported, and a batch of
  another shape fails loudly instead of recompiling)."""

  def __init__(self, jitted, timer, name):
    self.jitted, self.compiled, self.timer, self.name = jitted, None, timer, name

  def __call__(self, *args):
    if self.compiled is None:
      with self.timer(self.name):
        self.compiled = self.jitted.lower(*args).compile()
    return self.compiled(*args)


def _device_batch(batch: dict, mesh, keys):
  """Host batch -> global arrays split over the batch shards (each process gives its rows)."""
  out = {}
  for k in keys:
    x = np.asarray(batch[k])
    spec = jax.sharding.PartitionSpec(sharding.BATCH_AXES, *([None] * (x.ndim - 1)))
    out[k] = jax.make_array_from_process_local_data(jax.sharding.NamedSharding(mesh, spec), x)
  return out


def _replicated(x, mesh):
  return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _sft_state(model, tx):
  """GRPO's TrainState without a reference model (the same layout, checkpoints alike)."""
  return grpo.init_state(model, tx, grpo.GRPOConfig(beta=0.0))


def _load_eval(workdir, tag) -> dict:
  """An earlier run's evaluation summary (a resumed run does not repeat it)."""
  path = pathlib.Path(workdir) / "eval" / tag / "summary.json"
  return json.loads(path.read_text()) if path.exists() else {}


def _mean_reward_curve(rows, phase="grpo", key="reward/total"):
  return [r[key] for r in rows if r.get("phase") == phase and key in r]


def run(config, workdir: pathlib.Path) -> dict:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  timer = train_log.Timer()
  mesh = sharding.make_mesh(dict(config.mesh))
  tokenizer = demo_tokenizer.resolve(config.model, workdir)
  data_dir = evaluate.ensure_synthetic(config, workdir, config.data.frames, config.data.size,
                                      workers=min(4, os.cpu_count() or 1)) \
      if config.data.synthetic.enabled else config.data.data_dir
  source = pipeline.data_source(data_dir, config.data.train, config.data.train_split,
                                config.data.frames, config.data.size)
  S = config.sft.steps
  N = grpo_steps(config, len(source))
  total = S + N
  model, mcfg = smoke.build_model(config, mesh)  # outside the mesh context: logical names
  prompt = tok_lib.PromptConfig(
      num_frames=config.data.frames, motion=mcfg.motion is not None,
      tokens_per_frame=mcfg.tokens_per_frame(config.data.size))
  prompt_P = tok_lib.prompt_ids(tokenizer, prompt)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                                    save_every=config.train.checkpoint_every)
  writer = train_log.MetricWriter(workdir, total)
  profiler = train_log.Profiler(workdir, config.train.profile_start, config.train.profile_end)
  key = jax.random.key(config.seed)
  nproc = jax.process_count()
  modes = tuple(m for m in config.data.perturb_modes.split(",") if m) or perturb.MODES
  data_kw = dict(worker_count=config.data.worker_count, read_threads=config.data.read_threads,
                 prefetch=config.data.prefetch)
  latest = ckpt.latest_step() or 0
  evals: dict[str, dict] = {}
  summary: dict = {"workdir": str(workdir)}

  def run_eval(m, tag):
    with timer(f"eval/{tag}"):
      res = evaluate.run(config, workdir, model=m, tokenizer=tokenizer, mesh=mesh, tag=tag)
    evals[tag] = res
    return res

  try:
    # ------------------------------------------------------------------ SFT ---
    sft_tx = _sft_tx(config)
    graphdef, state = _sft_state(model, sft_tx)
    del model
    if S and latest < S:
      C = sft.target_length(tokenizer, config.sft.think)
      it = iter(pipeline.dataset(source, batch_size=config.sft.batch_size // nproc,
                                 seed=config.seed, num_copies=0, **data_kw))
      if latest:
        state, _, _ = ckpt.restore(latest, state, key, data_iterator=it)
        writer.set_position(latest)
      chunk = config.grpo.logprob_chunk

      def sft_step(st, b):
        B = b["frames"].shape[0]
        ids = jnp.broadcast_to(jnp.asarray(prompt_P), (B, prompt_P.shape[0]))
        full = dict(prompt_ids=ids, prompt_mask=jnp.ones_like(ids),
                    pixel_values=normalize(b["frames"]), targets=b["targets"],
                    target_mask=b["target_mask"])
        return sft.step(graphdef, st, full, sft_tx, chunk)

      step_fn = _Phase(grpo._jit_keeping_layout(sft_step, state), timer, "sft")
      with jax.set_mesh(mesh):
        for s in range(latest + 1, S + 1):
          host = next(it)
          host["targets"], host["target_mask"] = sft.targets(tokenizer, host["label"],
                                                             config.sft.think, C)
          b = _device_batch(host, mesh, ("frames", "targets", "target_mask"))
          profiler.before(s)
          t0 = time.perf_counter()
          state, metrics = step_fn(state, b)
          if s % config.train.log_every == 0 or s == S:
            metrics = jax.device_get(metrics)
            metrics["step_time_s"] = time.perf_counter() - t0
            writer.write(s, metrics, "sft")
          profiler.after(s, state.params)
          ckpt.save(s, state, key, data_iterator=it, metadata={"phase": "sft"}, force=s == S)
      latest = S
    elif S:  # SFT already done: its final state is the GRPO starting point
      if latest == S:
        state, _, _ = ckpt.restore(S, state, key)
    # ---------------------------------------------------------------- GRPO ---
    gcfg = grpo_config(config, tokenizer.special.stop_ids)
    table = rewards.byte_table(tokenizer)
    reward_fn = grpo.vqathinker_rewards(table, reward_config(config))
    tx = _grpo_tx(config, N)
    sft_tag = "sft" if S else "init"
    if latest <= S:
      with jax.set_mesh(mesh):
        run_eval(nnx.merge(graphdef, state.params, state.rest), sft_tag)
    else:
      evals[sft_tag] = _load_eval(workdir, sft_tag)
    policy = nnx.merge(graphdef, state.params, state.rest)
    graphdef, gstate = grpo.init_state(policy, tx, gcfg)
    del state, policy
    it = iter(pipeline.dataset(source, batch_size=config.train.batch_size // nproc,
                               seed=config.seed + 1, num_copies=gcfg.num_generations, modes=modes,
                               **data_kw))
    if latest > S:
      gstate, _, _ = ckpt.restore(latest, gstate, key, data_iterator=it)
      writer.set_position(latest)
    P = prompt_P.shape[0]
    key_dev = _replicated(key, mesh)

    def grpo_step(st, b, key):
      B = b["frames"].shape[0]
      rng = jax.random.fold_in(key, st.step)  # the state's own counter: resumes reproduce
      ids = jnp.broadcast_to(jnp.asarray(prompt_P), (B, P))
      full = dict(prompt_ids=ids, prompt_mask=jnp.ones_like(ids),
                  pixel_values=normalize(b["frames"]), labels=b["label"],
                  perturb_idx=b["perturb_idx"], blank=b["blank"])
      return grpo.train_step(graphdef, st, full, rng, tx, gcfg, reward_fn)

    step_fn = _Phase(grpo._jit_keeping_layout(grpo_step, gstate), timer, "grpo")
    eval_every = config.train.eval_every
    with jax.set_mesh(mesh):
      for s in range(max(latest, S) + 1, total + 1):
        b = _device_batch(next(it), mesh, ("frames", "label", "perturb_idx", "blank"))
        profiler.before(s)
        t0 = time.perf_counter()
        gstate, metrics = step_fn(gstate, b, key_dev)
        if (s - S) % config.train.log_every == 0 or s == total:
          metrics = jax.device_get(metrics)
          dt = time.perf_counter() - t0
          metrics.update(step_time_s=dt, tokens_per_s=float(metrics["tokens"]) / dt)
          writer.write(s, metrics, "grpo")
        profiler.after(s, gstate.params)
        ckpt.save(s, gstate, key, data_iterator=it, metadata={"phase": "grpo"}, force=s == total)
        if eval_every and (s - S) % eval_every == 0 and s != total:
          run_eval(nnx.merge(graphdef, gstate.params, gstate.rest), f"step_{s}")
      final = nnx.merge(graphdef, gstate.params, gstate.rest)
      run_eval(final, "final")
    ckpt.wait()
    export = workdir / "export"
    if jax.process_index() == 0:
      export_model(final, mcfg, tokenizer, config, workdir, export)
  except KeyboardInterrupt:
    logging.warning("interrupted: the last checkpoint in %s is kept", workdir / "checkpoints")
    raise
  finally:
    profiler.close()
    ckpt.close()
    writer.close()

  rows = [json.loads(l) for l in writer.path.read_text().splitlines()] if writer.path.exists() else []
  curve = _mean_reward_curve(rows)
  k = max(1, len(curve) // 4)  # quarters: single batches' rewards are noisy
  summary.update(
      sft_steps=S, grpo_steps=N,
      eval={tag: {name: {k: r["metrics"].get(k) for k in
                         ("srcc", "plcc", "plcc_fitted", "krcc", "rmse_label", "parse_failure_rate")}
                  for name, r in res.get("sets", {}).items()} for tag, res in evals.items()},
      reward_first=float(np.mean(curve[:k])) if curve else None,
      reward_last=float(np.mean(curve[-k:])) if curve else None,
      reward_curve=[round(x, 3) for x in curve],
      timing=writer.timing_report({p: timer.seconds.get(p, float("nan")) for p in ("sft", "grpo")}),
      eval_seconds={t: round(v, 1) for t, v in timer.seconds.items() if t.startswith("eval/")},
      checkpoints=str(workdir / "checkpoints"), tensorboard=str(workdir / "tb"),
      metrics=str(writer.path), export=str(workdir / "export"),
      reports={tag: str(workdir / "eval" / tag) for tag in evals})
  if jax.process_index() == 0:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
  return summary


def export_model(m, mcfg, tokenizer, config, workdir, out):
  """The trained policy as a Hugging Face InternVL directory with the tokenizer files, so
  `mode=predict` can load it with `--config.model.checkpoint=<out>`."""
  from vqathinker_jax import model as model_lib
  model_lib.save_pretrained(m, mcfg, out)
  src = workdir / "tokenizer" if config.model.tokenizer == "demo" else pathlib.Path(
      config.model.tokenizer or config.model.checkpoint)
  for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
            "added_tokens.json", "special_tokens_map.json"):
    if (src / f).exists():
      shutil.copy(src / f, out / f)
