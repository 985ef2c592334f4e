"""Compile a run config's real program for a TPU topology, on any machine (this CPU too),
and report what XLA:TPU says of it: per-chip memory, FLOPs, whether it fits.

    python -m vqathinker_jax.tools.aot --config configs/internvl3_8b_lsvq.py --topology v5p-64 \
        [--program step|update|rollout] [--config.a.b=v ...]

prints one JSON object: topology, mesh, program, peak_gib_per_chip, hbm_gib_per_chip, fits,
compile_s, flops_per_step (and the memory breakdown). The program is the trainer's own
(`train.steps.make_grpo_step` with its `prepare`, or `make_update_step`, or the rollout)
on the config's mesh laid over the topology's chips, lowered from shapes alone: nothing is
allocated and no checkpoint is read (the architecture is `factory.model_config`'s). A
program that does not fit fails to compile with an out-of-memory error: `fits` false and
the error's text. Needs libtpu (`pip install -e '.[tpu]'`); with other jobs using libtpu,
set ALLOW_MULTIPLE_LIBTPU_LOAD=1.

Legend: B videos, G completions per video, P prompt tokens, C new tokens, T frames,
S frame side, V vocabulary.
"""

from __future__ import annotations

import collections
import json
import math
import re
import time

# Cloud TPU accelerator types (gcloud's names) -> libtpu topologies. v4-N and v5p-N have
# N/2 chips (two TensorCores each, one "megacore" device); v5litepod-N (v5e) and v6e-N have
# N chips of one core.
TOPOLOGIES = {"v5p-8": "v5:2x2x1", "v5p-16": "v5:2x2x2", "v5p-32": "v5:2x2x4",
              "v5p-64": "v5:2x4x4", "v5p-128": "v5:4x4x4",
              "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4",
              "v4-64": "v4:2x4x4", "v4-128": "v4:4x4x4",
              **{f"{kind}-{n}": f"{core}:{grid}" for kind, core in (("v5litepod", "v5e"),
                                                                     ("v6e", "v6e"))
                 for n, grid in ((4, "2x2"), (8, "2x4"), (16, "4x4"), (32, "4x8"),
                                 (64, "8x8"), (128, "8x16"), (256, "16x16"))}}
# Per chip: v5p's from XLA:TPU's own out-of-memory message; the others nominal (a program
# that does not fit fails to compile whatever this says).
HBM_GIB = {"v5p": 95.74, "v4": 32.0, "v5litepod": 16.0, "v6e": 32.0}
PROGRAMS = ("step", "update", "rollout")
GIB = 1 << 30


def topology_devices(name: str):
  """The devices of a TPU topology, e.g. 'v5p-64' (needs libtpu; no TPU needed)."""
  from jax.experimental import topologies
  if name not in TOPOLOGIES:
    raise ValueError(f"unknown topology {name!r}; expected one of {sorted(TOPOLOGIES)}")
  megacore = name.split("-")[0] in ("v4", "v5p")
  return topologies.get_topology_desc(
      platform="tpu", topology_name=TOPOLOGIES[name],
      chip_config_name="megacore" if megacore else "default",
      chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=(False,) * 3).devices


def _sds(x, sharding):
  import jax
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def abstract_state(config, mesh, tx, reference: bool):
  """(graphdef, TrainState of ShapeDtypeStructs) as `train.state.init_state` would build
  it on ``mesh``: parameters placed by their logical axes, Adam moments as their
  parameters, counters replicated."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from vqathinker_jax import factory
  from vqathinker_jax.model import families
  from vqathinker_jax.train.state import TrainState

  cfg = factory.model_config(config)
  graphdef, abstract, shardings = families.abstract_state(cfg, mesh)
  placed = jax.tree.map(_sds, abstract, shardings)
  graphdef, params, rest = nnx.split(nnx.merge(graphdef, placed), nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  # The optimiser state as `tx.init` makes it from the placed params: each moment placed
  # as its parameter (found by the end of its tree path), its scalars replicated.
  placement = {jax.tree_util.keystr(p): x.sharding
               for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}

  def place(path, x):
    for i in range(len(path)):
      s = placement.get(jax.tree_util.keystr(path[i:]))
      if s is not None and len(s.spec) <= x.ndim:
        return _sds(x, s)
    return _sds(x, replicated)

  opt_state = jax.tree_util.tree_map_with_path(place, jax.eval_shape(tx.init, params))
  scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
  return graphdef, TrainState(step=scalar, params=params, rest=rest, opt_state=opt_state,
                              ref_params=params if reference else None, skipped=scalar), cfg


def synthetic_prompt(cfg, frames: int, size: int):
  """A prompt of the training prompt's length and slots (`tools.plan.prompt_tokens`):
  text ids, then a frame's `<IMG_CONTEXT>` slots per frame (+1 for motion). Qwen2.5-VL:
  the same text length (its system message is shorter: a slight overestimate) around
  <|vision_start|>, the clip's <|video_pad|> slots and <|vision_end|>."""
  import numpy as np
  from vqathinker_jax.model import qwen_vl
  from vqathinker_jax.tools import plan
  per_frame = cfg.tokens_per_frame(size)
  motion = cfg.motion is not None
  if cfg.family == qwen_vl.FAMILY:
    slots = cfg.tokens_per_video(frames, size, size)
    P = plan.PROMPT_TEXT_TOKENS + 2 + slots
    ids = np.zeros(P, np.int32)
    ids[P - slots - 9] = cfg.vision_start_token_id
    ids[P - slots - 8:P - 8] = cfg.video_token_id
    ids[P - 8] = cfg.vision_end_token_id
    return ids
  P = plan.prompt_tokens(frames, per_frame, motion)
  slots = frames * per_frame + motion
  ids = np.zeros(P, np.int32)
  ids[P - slots - 8:P - 8] = cfg.image_token_id  # slots amid text, as the template has them
  return ids


def reward_table(vocab: int, longest: int = 64):
  """A byte table of the vocabulary's size (the program's shapes; bytes are immaterial):
  Qwen2.5's longest tokens are tens of bytes, one entry here is ``longest``."""
  from vqathinker_jax.rl import rewards
  return rewards.table_from_bytes([b"x" * longest] + [b"ab"] * (vocab - 1))


def lower(config, mesh, program: str):
  """The lowered program and its abstract arguments."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec
  from vqathinker_jax.model import sharding
  from vqathinker_jax.rl import grpo, rollout
  from vqathinker_jax.train import state as train_state, steps, trainer

  if program not in PROGRAMS:
    raise ValueError(f"unknown program {program!r}; expected one of {PROGRAMS}")
  B, T, S = config.train.batch_size, config.data.frames, config.data.size
  gcfg = trainer.grpo_config(config, rollout.DEFAULT_STOP_IDS)
  G, C = gcfg.num_generations, gcfg.max_completion_length
  tx = trainer.grpo_optimizer(config, 1000)  # the trainer's own (the schedule's length is immaterial)
  graphdef, state, cfg = abstract_state(config, mesh, tx, reference=bool(gcfg.beta))
  split = lambda *shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(
      mesh, PartitionSpec(sharding.BATCH_AXES, *([None] * (len(shape) - 1)))))
  prompt_P = synthetic_prompt(cfg, T, S)
  P = prompt_P.shape[0]
  key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype,
                             sharding=NamedSharding(mesh, PartitionSpec()))
  if program == "step":  # a host constant: made before the mesh context (abstract devices)
    reward_fn = grpo.vqathinker_rewards(reward_table(cfg.text.vocab_size),
                                        trainer.reward_config(config))
  with jax.set_mesh(mesh):
    if program == "step":
      fn = steps.make_grpo_step(graphdef, state, tx, gcfg, reward_fn,
                                prepare=steps.prompt_and_frames(prompt_P, cfg.family))
      args = (state, dict(frames=split(B, T, S, S, 3, dtype=jnp.uint8),
                          label=split(B, dtype=jnp.float32),
                          perturb_idx=split(B, G, T, dtype=jnp.int32),
                          blank=split(B, G, T, dtype=jnp.bool_)), key)
    elif program == "update":
      fn = steps.make_update_step(graphdef, state, tx, gcfg)
      args = (state, dict(prompt_ids=split(B, P, dtype=jnp.int32),
                          prompt_mask=split(B, P, dtype=jnp.int32),
                          pixel_values=split(B, T, S, S, 3, dtype=jnp.float32),
                          completions=split(B, G, C, dtype=jnp.int32),
                          completion_mask=split(B, G, C, dtype=jnp.int32),
                          advantages=split(B, G, dtype=jnp.float32)))
    elif program == "rollout":
      def fn(st, ids, mask, pix, rng):
        policy = train_state.policy(graphdef, st)
        return rollout.generate(policy, ids, mask, pix, rng=rng, num_generations=G,
                                max_new_tokens=C, temperature=gcfg.temperature,
                                top_k=gcfg.top_k, top_p=gcfg.top_p,
                                stop_ids=tuple(gcfg.stop_ids), train=True,
                                layout=gcfg.decode_layout)
      fn = jax.jit(fn)
      args = (state, split(B, P, dtype=jnp.int32), split(B, P, dtype=jnp.int32),
              split(B, T, S, S, 3, dtype=jnp.float32), key)
    return fn.lower(*args)


_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
               "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
# Ops that pass a value through (a gathered parameter may be copied or re-laid out first).
_PASS_THROUGH = ("copy", "bitcast", "convert", "reshape", "transpose", "copy-done", "copy-start")


def _array_bytes(type_text: str) -> int:
  """Bytes of every array in an HLO type, e.g. '(bf16[64,128]{1,0}, f32[2])'."""
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", type_text):
    total += _ITEM_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _computations(hlo_text: str) -> dict[str, list[str]]:
  comps, name = {}, None
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      name = head.group(1)
      comps[name] = []
    elif line.rstrip() == "}":  # not "}}, ...": a custom call's config may span lines
      name = None
    elif name is not None:
      comps[name].append(line.strip())
  return comps


def loop_collectives(hlo_text: str) -> list[dict]:
  """Per iteration of each `while` loop of a compiled (SPMD-partitioned) HLO module that
  moves data: its name (the jax op name, e.g. 'jit(step)/rollout/while': the GRPO step's
  decode loop), the bytes of each collective (nested computations counted once), and of
  all-gathers of loop-invariant operands, i.e. values the loop carries unchanged (weights,
  a prompt cache) and gathers again at every iteration. Largest first."""
  comps = _computations(hlo_text)
  callees = lambda c: {n for line in comps.get(c, ()) for group in re.findall(
      r"(?:calls|to_apply|body|condition|branch_computations)=\{?([%\w.\-, ]+)\}?", line)
      for n in re.split(r"[,\s%]+", group) if n}
  loops = []
  for lines in comps.values():
    for line in lines:
      m = re.search(r"\bwhile\(.*\bbody=%?([\w.\-]+)", line)
      if not m or m.group(1) not in comps:
        continue
      body, seen, todo = m.group(1), set(), [m.group(1)]
      while todo:
        c = todo.pop()
        if c not in seen and c in comps:
          seen.add(c)
          todo.extend(callees(c))
      # The body's own instructions: name -> (opcode, operands, index); which tuple
      # elements its ROOT passes through unchanged.
      defs, invariant = {}, set()
      for ins in comps[body]:
        d = re.match(r"(ROOT )?%?([\w.\-]+) = .*? ([a-z\-]+)\((.*?)\)(.*)$", ins)
        if not d:
          continue
        index = re.search(r"index=(\d+)", d.group(5))
        defs[d.group(2)] = (d.group(3), re.findall(r"%([\w.\-]+)", d.group(4)),
                            int(index.group(1)) if index else None)
        if d.group(1) and d.group(3) == "tuple":
          root = re.findall(r"%([\w.\-]+)", d.group(4))
      params = {n for n, (op, _, _) in defs.items() if op == "parameter"}
      for i, operand in enumerate(root if defs else []):
        op, args, index = defs.get(operand, (None, (), None))
        if op == "get-tuple-element" and args and args[0] in params and index == i:
          invariant.add(i)

      def carried(name, depth=0):
        """Whether ``name`` is an unchanged element of the loop's carry."""
        op, args, index = defs.get(name, (None, (), None))
        if op == "get-tuple-element" and args and args[0] in params:
          return index in invariant
        return op in _PASS_THROUGH and bool(args) and depth < 16 and carried(args[0], depth + 1)

      moved, invariant_gathers = collections.Counter(), 0
      for c in seen:
        for ins in comps[c]:
          d = re.match(r"(?:ROOT )?%?[\w.\-]+ = (.+?) ([a-z\-]+)\((.*?)\)", ins)
          if not d:
            continue
          kind = d.group(2).removesuffix("-start")
          if kind not in _COLLECTIVES or d.group(2).endswith("-done"):
            continue
          out = d.group(1)
          arrays = re.findall(r"[a-z]+\d*\[[\d,]*\]", out)
          if d.group(2).endswith("-start") and len(arrays) > 1:  # (operand, result, ...)
            out = arrays[1]
          moved[kind] += _array_bytes(out)
          operands = re.findall(r"%([\w.\-]+)", d.group(3))
          if kind == "all-gather" and c == body and operands and carried(operands[0]):
            invariant_gathers += _array_bytes(out)
      if moved:
        name = re.search(r'op_name="([^"]*)"', line)
        loops.append(dict(name=name.group(1) if name else "", collective_bytes=dict(moved),
                          invariant_all_gather_bytes=invariant_gathers))
  return sorted(loops, key=lambda x: -sum(x["collective_bytes"].values()))


def compile_report(config, topology: str, program: str = "step") -> dict:
  """Compiles ``program`` of ``config`` for ``topology``; the JSON report (see the module
  docstring). An out-of-memory compile gives ``fits`` false and the error."""
  import jax
  from vqathinker_jax.model import sharding
  devices = topology_devices(topology)
  mesh = sharding.make_mesh(dict(config.mesh), devices)
  hbm = HBM_GIB[topology.split("-")[0]]
  report = dict(topology=topology, chips=len(devices), mesh=dict(mesh.shape), program=program,
                hbm_gib_per_chip=hbm)
  t0 = time.perf_counter()
  lowered = lower(config, mesh, program)
  report["lower_s"] = round(time.perf_counter() - t0, 1)
  t0 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e) and "memory" not in str(e).lower():
      raise
    report.update(fits=False, compile_s=round(time.perf_counter() - t0, 1),
                  error=str(e).splitlines()[0][:2000])
    return report
  report["compile_s"] = round(time.perf_counter() - t0, 1)
  m = compiled.memory_analysis()
  # XLA's own peak, and the buffers' sum (arguments + outputs - aliased + temporaries):
  # the larger decides.
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
           + m.temp_size_in_bytes)
  peak = max(getattr(m, "peak_memory_in_bytes", 0) or 0, total)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  report.update(
      peak_gib_per_chip=round(peak / GIB, 2), fits=peak / GIB <= hbm,
      free_fraction=round(1 - peak / GIB / hbm, 3),
      argument_gib=round(m.argument_size_in_bytes / GIB, 2),
      temp_gib=round(m.temp_size_in_bytes / GIB, 2),
      output_gib=round(m.output_size_in_bytes / GIB, 2),
      alias_gib=round(m.alias_size_in_bytes / GIB, 2),
      # per chip, as XLA counts them; the step's total is this times the chips
      flops_per_step=float(cost.get("flops", 0.0)) * len(devices) if cost else None)
  if program != "update":  # the decode loops: what each generated token moves between chips
    try:
      report["loops"] = loop_collectives(compiled.as_text())
    except jax.errors.JaxRuntimeError as e:  # some libtpu releases cannot print their HLO
      report["loops_error"] = str(e).splitlines()[0][:500]
  return report


def main() -> None:
  from absl import app, flags
  from ml_collections import config_flags
  config = config_flags.DEFINE_config_file("config", None, "A run config (configs/*.py).")
  topology = flags.DEFINE_enum("topology", "v5p-64", sorted(TOPOLOGIES), "TPU slice (gcloud accelerator type): v4-8..128, v5p-8..128, v5litepod-4..256, v6e-4..256.")
  program = flags.DEFINE_enum("program", "step", list(PROGRAMS), "What to compile.")
  flags.mark_flags_as_required(["config"])

  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    print(json.dumps(compile_report(config.value, topology.value, program.value), indent=1))

  app.run(run)


if __name__ == "__main__":
  main()
