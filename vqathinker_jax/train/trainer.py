"""`mode='train'`: optional SFT warm-start, then GRPO, with checkpoints, logs and evaluation.

Steps are numbered globally: 1..S are SFT updates, S+1..S+N GRPO steps. A checkpoint holds
the phase's TrainState, the PRNG key, the Grain iterator position and metadata, so rerunning
the same command continues from the latest one and ends with the same parameters, bit for
bit, as an uninterrupted run (each step's key is `fold_in(key, step)`; the data order is the
iterator's). Evaluation reports go to workdir/eval/<tag>/ (tags `sft`, `step_N`, `final`).
Legend: B videos, G completions per video, T frames, H/W pixels, P prompt tokens.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any

from etils import epath
import jax
import numpy as np
import optax

from data_pipelines import perturb, pipeline, synthetic
from vqathinker_jax import factory
from vqathinker_jax.eval import evaluate
from vqathinker_jax.model import sharding
from vqathinker_jax.rl import grpo, rewards
from vqathinker_jax.text import tokenizer as tok_lib
from vqathinker_jax.train import checkpointing, prefetch, sft, steps, log as train_log
from vqathinker_jax.train.state import (Step, init_state, make_optimizer, policy, schedule,
                                        with_timing)


# ------------------------------------------------------------ config -> objects ---

def grpo_config(config, stop_ids) -> grpo.GRPOConfig:
  g = config.grpo
  return grpo.GRPOConfig(**{k: g[k] for k in g.keys()}, stop_ids=tuple(stop_ids))


def reward_config(config) -> rewards.RewardConfig:
  return rewards.RewardConfig(**config.rewards.to_dict())


def grpo_steps(config, train_size: int) -> int:
  t = config.train
  return t.num_steps or math.ceil(t.num_epochs * train_size / t.batch_size)


def sft_optimizer(config):
  # Cosine decay to 0: the warm-start ends settled instead of at a noisy constant-lr point.
  lr = optax.cosine_decay_schedule(config.sft.lr, max(config.sft.steps, 1))
  return make_optimizer(lr, max_grad_norm=config.train.optimizer.max_grad_norm)


def grpo_optimizer(config, num_steps: int):
  o = config.train.optimizer
  return make_optimizer(schedule(o, num_steps), max_grad_norm=o.max_grad_norm, b1=o.b1,
                        b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)


def trained_model(config, workdir):
  """The policy of the latest checkpoint in workdir/checkpoints (SFT or GRPO phase), on
  the config's mesh; None when there is no training run there."""
  ckdir = epath.Path(workdir) / "checkpoints"
  if not ckdir.is_dir():
    return None
  ckpt = checkpointing.Checkpointer(ckdir, read_only=True)
  try:
    step = ckpt.latest_step()
    if step is None:
      return None
    model, _ = factory.build_model(config, factory.make_mesh(config))
    if step <= config.sft.steps:
      graphdef, state = init_state(model, sft_optimizer(config), reference=False)
    else:  # the optimiser state's structure does not depend on the step count
      graphdef, state = init_state(model, grpo_optimizer(config, 1),
                                   reference=bool(config.grpo.beta))
    state, _, _ = ckpt.restore(step, state)
    logging.info("evaluating the policy of %s", ckdir / str(step))
    return policy(graphdef, state)
  finally:
    ckpt.close()


def _device_batch(batch: dict, mesh, keys):
  """Host batch -> global arrays split over the batch shards (each process gives its rows)."""
  out = {}
  for k in keys:
    x = np.asarray(batch[k])
    spec = jax.sharding.PartitionSpec(sharding.BATCH_AXES, *([None] * (x.ndim - 1)))
    out[k] = jax.make_array_from_process_local_data(jax.sharding.NamedSharding(mesh, spec), x)
  if jax.default_backend() == "cpu":
    # XLA:CPU copies a host array over 100 KiB (the frames) on a pool thread; a step whose
    # input is still being copied runs there too, where glibc mmaps its temporaries afresh
    # (main._keep_freed_memory). Waiting here keeps the step on this thread.
    jax.block_until_ready(out)
  return out


def _replicated(x, mesh):
  """`x` (the same on every process) on every device of the mesh. Placed from host memory:
  device_put refuses a typed key for devices of other processes."""
  s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = jax.device_put(np.asarray(jax.random.key_data(x)), s)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  return jax.device_put(np.asarray(x), s)


def _load_eval(workdir, tag) -> dict:
  """An earlier run's evaluation summary (a resumed run does not repeat it)."""
  path = epath.Path(workdir) / "eval" / tag / "summary.json"
  return json.loads(path.read_text()) if path.exists() else {}


def _mean_reward_curve(rows, phase="grpo", key="reward/total"):
  return [r[key] for r in rows if r.get("phase") == phase and key in r]


# ------------------------------------------------------------------------ the run ---

@dataclasses.dataclass
class _Run:
  """What the phases share: the config's objects, the run's outputs and its position."""
  config: Any
  workdir: epath.Path         # local or gs://: every output goes through epath
  mesh: Any
  tokenizer: tok_lib.Tokenizer
  source: Any                 # the training set (Grain random-access source)
  model_cfg: Any
  prompt_P: np.ndarray        # the training prompt's ids (the same for every video)
  sft_steps: int              # S: steps 1..S are SFT, S+1..S+N GRPO
  grpo_steps: int             # N
  latest: int                 # the latest checkpointed step (0: none)
  ckpt: checkpointing.Checkpointer
  writer: train_log.MetricWriter
  profiler: train_log.Profiler
  timer: train_log.Timer
  key: jax.Array
  evals: dict = dataclasses.field(default_factory=dict)

  def dataset(self, batch_size: int, seed: int, prepare, **kw) -> prefetch.Prefetch:
    """The phase's batches, each made a device batch by ``prepare`` one step ahead."""
    d = self.config.data
    it = iter(pipeline.dataset(self.source, batch_size=batch_size // jax.process_count(),
                               seed=seed, worker_count=d.worker_count,
                               read_threads=d.read_threads, prefetch=d.prefetch, **kw))
    return prefetch.Prefetch(it, prepare)

  def evaluate(self, graphdef, state, tag: str) -> None:
    with self.timer(f"eval/{tag}"):
      self.evals[tag] = evaluate.run(self.config, self.workdir, model=policy(graphdef, state),
                                     tokenizer=self.tokenizer, mesh=self.mesh, tag=tag)

  def log(self, s: int, state, metrics, t0: float, phase: str, data_wait_s: float) -> None:
    """Writes step s's metrics every `log_every` steps of the phase and at its last;
    ``data_wait_s``: the seconds the step waited for its batch before ``t0``."""
    first, last = ((0, self.sft_steps) if phase == "sft" else
                   (self.sft_steps, self.sft_steps + self.grpo_steps))
    if (s - first) % self.config.train.log_every == 0 or s == last:
      metrics = with_timing(jax.device_get(metrics), time.perf_counter() - t0, data_wait_s)
      self.writer.write(s, metrics, phase)
    self.profiler.after(s, state.params)

  def save(self, s: int, state, it, phase: str, *, force: bool = False) -> None:
    """Checkpoints step s when due, the metrics first: every step a checkpoint holds is in
    metrics.jsonl, and a resumed run drops (and logs again) only rows past its checkpoint."""
    if self.ckpt.due(s, force=force):
      self.writer.flush()
    self.ckpt.save(s, state, self.key, data_iterator=it, metadata={"phase": phase}, force=force)


def _setup(config, workdir: epath.Path):
  """The run's objects, and the model to train (placed on the mesh)."""
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = factory.make_mesh(config)
  tokenizer = factory.tokenizer(config, workdir)
  data_dir = factory.train_data_dir(config, workdir, workers=min(4, os.cpu_count() or 1))
  source = pipeline.data_source(data_dir, config.data.train, config.data.train_split,
                                config.data.frames, config.data.size,
                                config.data.honour_rotation)
  S, N = config.sft.steps, grpo_steps(config, len(source))
  model, mcfg = factory.build_model(config, mesh)  # outside the mesh context: logical names
  prompt = tok_lib.PromptConfig(
      num_frames=config.data.frames, motion=mcfg.motion is not None, family=mcfg.family,
      tokens_per_frame=mcfg.tokens_per_frame(config.data.size))
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                                    save_every=config.train.checkpoint_every)
  latest = ckpt.latest_step() or 0
  run = _Run(config=config, workdir=workdir, mesh=mesh, tokenizer=tokenizer, source=source,
             model_cfg=mcfg, prompt_P=tok_lib.prompt_ids(tokenizer, prompt), sft_steps=S,
             grpo_steps=N, latest=latest, ckpt=ckpt,
             writer=train_log.MetricWriter(workdir, S + N, resume_step=latest),
             profiler=train_log.Profiler(workdir, config.train.profile_start,
                                         config.train.profile_end),
             timer=train_log.Timer(), key=jax.random.key(config.seed))
  return run, model


def _run_sft(run: _Run, graphdef, state):
  """SFT steps latest+1..S (none when done); returns the state GRPO starts from."""
  config, S = run.config, run.sft_steps
  if not S:
    return state
  if run.latest >= S:  # SFT done: its final state is the GRPO starting point
    if run.latest == S:
      state, _, _ = run.ckpt.restore(S, state, run.key)
    return state
  C = sft.target_length(run.tokenizer, config.sft.think)

  def prepare(host):  # on the prefetch thread: the targets, the batch on the mesh
    scenes = ([synthetic.scene_of(v, config.data.synthetic.scenes) for v in host["video_id"]]
              if config.sft.answer == "random_scene" else None)
    scores = sft.answers(host["label"], host["video_id"], config.sft.answer, config.seed,
                         scenes)
    host["targets"], host["target_mask"] = sft.targets(run.tokenizer, scores,
                                                       config.sft.think, C)
    return _device_batch(host, run.mesh, ("frames", "targets", "target_mask"))

  it = run.dataset(config.sft.batch_size, config.seed, prepare, num_copies=0)
  if run.latest:
    state, _, _ = run.ckpt.restore(run.latest, state, run.key, data_iterator=it)
    run.writer.set_position(run.latest)
  step = Step(steps.make_sft_step(graphdef, state, sft_optimizer(config), config.grpo.logprob_chunk,
                                  prepare=steps.prompt_and_frames(run.prompt_P,
                                                                  run.model_cfg.family),
                                  remat=config.grpo.remat),
              on_compile=lambda s: run.timer.add("sft", s))
  with jax.set_mesh(run.mesh), it:  # leaving it stops the prefetch thread
    for s in range(run.latest + 1, S + 1):
      t_wait = time.perf_counter()  # input wait: what the prefetch thread has not made ready
      b = next(it)
      run.profiler.before(s)
      t0 = time.perf_counter()
      state, metrics = step(state, b)
      run.log(s, state, metrics, t0, "sft", t0 - t_wait)
      run.save(s, state, it, "sft", force=s == S)
  run.latest = S
  return state


def _run_grpo(run: _Run, graphdef, sft_state):
  """Evaluates the starting policy (once), then GRPO steps up to S+N; returns the final
  policy (evaluated too)."""
  config, S, N = run.config, run.sft_steps, run.grpo_steps
  total = S + N
  if not N:  # SFT only (train.num_epochs=0): the warm-started policy is the final one
    with jax.set_mesh(run.mesh):
      run.evaluate(graphdef, sft_state, "final")
    return policy(graphdef, sft_state)
  gcfg = grpo_config(config, run.tokenizer.special.stop_ids)
  reward_fn = grpo.vqathinker_rewards(rewards.byte_table(run.tokenizer), reward_config(config))
  tx = grpo_optimizer(config, N)
  start_tag = "sft" if S else "init"
  if run.latest <= S:
    with jax.set_mesh(run.mesh):
      run.evaluate(graphdef, sft_state, start_tag)
  else:
    run.evals[start_tag] = _load_eval(run.workdir, start_tag)
  graphdef, state = init_state(policy(graphdef, sft_state), tx, reference=bool(gcfg.beta))
  del sft_state
  modes = tuple(m for m in config.data.perturb_modes.split(",") if m) or perturb.MODES
  it = run.dataset(config.train.batch_size, config.seed + 1,
                   lambda host: _device_batch(host, run.mesh,
                                              ("frames", "label", "perturb_idx", "blank")),
                   num_copies=gcfg.num_generations, modes=modes)
  if run.latest > S:
    state, _, _ = run.ckpt.restore(run.latest, state, run.key, data_iterator=it)
    run.writer.set_position(run.latest)
  step = Step(steps.make_grpo_step(graphdef, state, tx, gcfg, reward_fn,
                                   prepare=steps.prompt_and_frames(run.prompt_P,
                                                                   run.model_cfg.family)),
              on_compile=lambda s: run.timer.add("grpo", s))
  key_dev = _replicated(run.key, run.mesh)
  eval_every = config.train.eval_every
  with jax.set_mesh(run.mesh):
    with it:  # leaving it stops the prefetch thread
      for s in range(max(run.latest, S) + 1, total + 1):
        t_wait = time.perf_counter()  # input wait: what the prefetch thread has not made ready
        b = next(it)
        run.profiler.before(s)
        t0 = time.perf_counter()
        state, metrics = step(state, b, key_dev)
        run.log(s, state, metrics, t0, "grpo", t0 - t_wait)
        run.save(s, state, it, "grpo", force=s == total)
        if eval_every and (s - S) % eval_every == 0 and s != total:
          run.evaluate(graphdef, state, f"step_{s}")
    run.evaluate(graphdef, state, "final")
  return policy(graphdef, state)


def _summarize(run: _Run) -> dict:
  """summary.json: evaluation per tag, the reward curve and its quarters, timings, paths."""
  path, wd = run.writer.path, run.workdir
  curve = _mean_reward_curve(run.writer.rows)
  k = max(1, len(curve) // 4)  # quarters: single batches' rewards are noisy
  keys = ("srcc", "plcc", "plcc_fitted", "krcc", "rmse_label", "parse_failure_rate",
          "n", "n_distinct_pred")
  seconds = run.timer.seconds
  summary = dict(
      workdir=str(wd), sft_steps=run.sft_steps, grpo_steps=run.grpo_steps,
      eval={tag: {name: {k: r["metrics"].get(k) for k in keys}
                  for name, r in res.get("sets", {}).items()} for tag, res in run.evals.items()},
      reward_first=float(np.mean(curve[:k])) if curve else None,
      reward_last=float(np.mean(curve[-k:])) if curve else None,
      # the spread of single steps' mean rewards within each quarter
      reward_first_std=float(np.std(curve[:k])) if curve else None,
      reward_last_std=float(np.std(curve[-k:])) if curve else None,
      reward_curve=[round(x, 3) for x in curve],
      timing=run.writer.timing_report({p: seconds.get(p, float("nan")) for p in ("sft", "grpo")}),
      eval_seconds={t: round(v, 1) for t, v in seconds.items() if t.startswith("eval/")},
      checkpoints=str(wd / "checkpoints"), tensorboard=str(wd / "tb"), metrics=str(path),
      export=str(wd / "export"), reports={tag: str(wd / "eval" / tag) for tag in run.evals})
  if jax.process_index() == 0:
    (wd / "summary.json").write_text(json.dumps(summary, indent=1))
  return summary


def run(config, workdir) -> dict:
  """set-up -> SFT warm-start -> GRPO -> export and summary (see the module docstring).
  ``workdir``: a local path or a URL such as gs://bucket/run."""
  run_, model = _setup(config, epath.Path(workdir))
  try:
    graphdef, state = init_state(model, sft_optimizer(config), reference=False)
    del model  # the state holds its arrays
    state = _run_sft(run_, graphdef, state)
    final = _run_grpo(run_, graphdef, state)
    run_.ckpt.wait()
    # Every process: the export gathers parameters sharded over all of them (process 0 writes).
    export_model(final, run_.model_cfg, run_.tokenizer, config, run_.workdir,
                 run_.workdir / "export")
  except KeyboardInterrupt:
    logging.warning("interrupted: the last checkpoint in %s is kept", run_.workdir / "checkpoints")
    raise
  finally:
    run_.profiler.close()
    run_.ckpt.close()
    run_.writer.close()
  return _summarize(run_)


def export_model(m, mcfg, tokenizer, config, workdir, out):
  """The trained policy as a Hugging Face InternVL directory with the tokenizer files, so
  `mode=predict` can load it with `--config.model.checkpoint=<out>`."""
  from vqathinker_jax import model as model_lib
  model_lib.save_pretrained(m, mcfg, out)  # collective: call it on every process
  if jax.process_index() != 0:
    return
  src = epath.Path(workdir) / "tokenizer" if config.model.tokenizer == "demo" else epath.Path(
      config.model.tokenizer or config.model.checkpoint)
  out = epath.Path(out)
  for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
            "added_tokens.json", "special_tokens_map.json"):
    if (src / f).exists():
      (src / f).copy(out / f, overwrite=True)
