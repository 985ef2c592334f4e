"""Training state and its optimiser: what every update step (SFT, GRPO) carries and how
it is applied, jitted and compiled.

    graphdef, state = init_state(model, tx, reference=True)
    step = Step(jit_step(lambda st, batch: ..., state))   # compiled on the first call
    state, metrics = step(state, batch)
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any                # the trainable nnx.Param leaves, as a nested dict of arrays
  rest: Any                  # every other variable (frozen SlowFast weights, ...), ditto
  opt_state: Any
  ref_params: Any            # the frozen initial policy's params (None without a KL term)
  skipped: jax.Array         # updates skipped for a non-finite loss or gradient

  def apply_gradients(self, tx: optax.GradientTransformation, loss, grads):
    """(state with ``tx``'s update applied, grad norm, finite): `apply_if_finite` on this
    state's params and optimiser state; ``step`` and ``skipped`` are the caller's."""
    params, opt_state, grad_norm, finite = apply_if_finite(tx, loss, grads, self.params,
                                                           self.opt_state)
    return self.replace(params=params, opt_state=opt_state), grad_norm, finite


def init_state(model, tx: optax.GradientTransformation, *, reference: bool):
  """(graphdef, TrainState) from a model; with ``reference`` the state also keeps a copy
  of the params as the frozen reference policy. The state holds the model's own arrays
  and the jitted steps donate it: the model object is spent."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # Plain arrays, not nnx.Variable leaves: a jitted step flattens and rebuilds the whole
  # state on every call, and Variables do that in Python (~8 ms per step for the tiny
  # model's 4 x 73 leaves, a third of its update); `nnx.merge` takes the dicts as they are.
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  ref = jax.tree.map(jnp.copy, params) if reference else None
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                     opt_state=tx.init(params), ref_params=ref, skipped=jnp.zeros((), jnp.int32))
  # Counters and optimiser scalars go on the parameters' mesh too: one layout for the
  # whole state, so the jitted step's outputs match its inputs and never recompile.
  mesh = jax.tree.leaves(params)[0].sharding.mesh
  on_mesh = lambda x: (x if isinstance(x.sharding, jax.sharding.NamedSharding) else
                       jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())))
  return graphdef, jax.tree.map(on_mesh, state)


def policy(graphdef, state: TrainState):
  """The model of a state (its current params)."""
  return nnx.merge(graphdef, state.params, state.rest)


def make_optimizer(lr: float | optax.Schedule, *, max_grad_norm: float = 1.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
  """AdamW with global-norm clipping (0: none), as the reference (docs/method.md §4)."""
  parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
  return optax.chain(*parts, optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))


SCHEDULES = ("linear", "constant", "cosine")  # `config.train.optimizer.schedule`


def schedule(o, total_steps: int) -> optax.Schedule:
  """The learning rate of `config.train.optimizer` ``o``: linear decay to 0 without
  warm-up by default (docs/method.md §4); or constant / cosine, after optional warm-up."""
  decay = max(total_steps - o.warmup_steps, 1)
  main = {"linear": optax.linear_schedule(o.lr, 0.0, decay),
          "constant": optax.constant_schedule(o.lr),
          "cosine": optax.cosine_decay_schedule(o.lr, decay)}[o.schedule]
  if not o.warmup_steps:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps), main],
                              [o.warmup_steps])


def apply_if_finite(tx: optax.GradientTransformation, loss, grads, params, opt_state):
  """One optimiser update, or none when the loss or the gradient is not finite.

  Returns (params, opt_state, grad_norm, finite). A `lax.cond` rather than a select per
  leaf: the skipped branch does no work, and the step stays a few ops instead of one
  select for each of the params' and both moments' leaves (hundreds of runtime calls on
  a small model).
  """
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def apply(operands):
    grads, params, opt_state = operands
    updates, new_opt = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_opt

  params, opt_state = jax.lax.cond(finite, apply, lambda ops: ops[1:],
                                   (grads, params, opt_state))
  return params, opt_state, grad_norm, finite


def jit_step(step_fn: Callable, state: TrainState):
  """jit ``step_fn(state, ...) -> (state, metrics)`` so the new state keeps the layout of
  ``state`` (parameters stay sharded as created, and the next call does not recompile)
  and reuses its buffers (donated)."""
  layout = jax.tree.map(lambda x: x.sharding, state)
  return jax.jit(step_fn, out_shardings=(layout, None), donate_argnums=0)


def with_timing(metrics: dict, seconds: float, data_wait_s: float | None = None) -> dict:
  """Fetched ``metrics`` plus the step's wall time, the time the step waited for its input
  before it (``data_wait_s``: the next batch from the pipeline, made ready on device) and,
  when they count ``tokens``, generated tokens per second. Every timing ends in `_s`."""
  metrics["step_time_s"] = seconds
  if data_wait_s is not None:
    metrics["data_wait_s"] = data_wait_s
  if "tokens" in metrics:
    metrics["tokens_per_s"] = float(metrics["tokens"]) / seconds
  return metrics


class Step:
  """A jitted step, compiled ahead of time on its first call: the compile time is
  reported to ``on_compile(seconds)``, and a batch of another shape fails loudly instead
  of recompiling. `timed` also fetches the metrics and adds the wall time, generated
  tokens/s (when the metrics count ``tokens``) and the compilations so far."""

  def __init__(self, jitted, on_compile: Callable[[float], None] | None = None):
    self.jitted, self.compiled, self.on_compile = jitted, None, on_compile
    self.compilations = 0

  def __call__(self, *args):
    if self.compiled is None:
      t0 = time.perf_counter()
      self.compiled = self.jitted.lower(*args).compile()
      self.compilations += 1
      if self.on_compile is not None:
        self.on_compile(time.perf_counter() - t0)
    return self.compiled(*args)

  def timed(self, *args):
    t0 = time.perf_counter()
    state, metrics = self(*args)
    metrics = with_timing(jax.device_get(metrics), time.perf_counter() - t0)
    metrics["compilations"] = self.compilations
    return state, metrics
