"""The ViT's attention, forward + backward, at the shape the 1B update runs it: ours against
JAX's own `jax.nn.dot_product_attention` and our earlier formulation.

  python benchmarks/attention.py [--frames 12 --tokens 1025 --heads 16 --head_dim 64]
      [--remat] [--runs 7] [--cores 2] [--out FILE.json]

One call = the gradient (q, k and v) of sum(attention(q, k, v) * ct), jitted, float32, no
mask (the ViT's pattern; H = K). Contenders, each in its own process pinned to the same
`--cores`, called in a fresh random order each round (`_timing.isolated`):
- `ours`: `layers.attention` on the XLA path (what the ViT runs on CPU and GPU float32);
- `jax_dpa`: `jax.nn.dot_product_attention(implementation="xla")`, JAX's own;
- `grouped_softmax`: ours before 2026-12-06: a size-1 group axis ([B, T, K, 1, E]) and
  `jax.nn.softmax` before the product with V.
`--remat` wraps each in `jax.checkpoint` (the update's remat recomputes the forward in the
backward pass). Also reported: each program's XLA temporaries, the FLOPs of the six
matmuls (2 forward, 4 backward; +2 with remat) and the rate, against a float32 matmul timed
in the same run. Prints one JSON object with the provenance (date, CPU model, commit, command).
"""

from __future__ import annotations

import pathlib
import sys

from absl import app
from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _timing  # noqa: E402  (benchmarks/, beside this file)

_FRAMES = flags.DEFINE_integer("frames", 12, "B: frames (2 videos x 6 at the 1B shape)")
_TOKENS = flags.DEFINE_integer("tokens", 1025, "T: tokens per frame (448 px / 14, + CLS)")
_HEADS = flags.DEFINE_integer("heads", 16, "H: heads (InternViT-300M)")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "E: head width")
_REMAT = flags.DEFINE_bool("remat", False, "wrap each in jax.checkpoint")
_RUNS = flags.DEFINE_integer("runs", 7, "timed calls of each contender")
_CORES = flags.DEFINE_integer("cores", 2, "cores each contender is pinned to")
_OUT = flags.DEFINE_string("out", "", "also write the JSON here")

CONTENDERS = ("ours", "jax_dpa", "grouped_softmax")


def _grouped_softmax(q, k, v, scale):
  import jax
  import jax.numpy as jnp
  B, T, H, E = q.shape
  logits = jnp.einsum("btkge,bske->bkgts", q.reshape(B, T, H, 1, E), k,
                      preferred_element_type=jnp.float32) * scale
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bkgts,bske->btkge", probs, v).reshape(B, T, H, E)


def contender(name: str, shape: tuple, remat: bool):
  """A `_timing.isolated` factory: one call = the jitted gradient of ``name``'s attention."""
  import jax
  import jax.numpy as jnp
  from grpo_ours import as_in_training
  from vqathinker_jax.model import layers
  as_in_training(jax)  # the CPU runtime settings of a training run
  B, T, H, E = shape
  scale = E ** -0.5
  attend = {
      "ours": lambda q, k, v: layers.attention(q, k, v, None, scale, "xla"),
      "jax_dpa": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=scale,
                                                              implementation="xla"),
      "grouped_softmax": lambda q, k, v: _grouped_softmax(q, k, v, scale),
  }[name]
  if remat:
    attend = jax.checkpoint(attend)
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, ct = (jax.random.normal(key, shape, jnp.float32) for key in keys)
  grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v) * ct), argnums=(0, 1, 2)))
  compiled = grad.lower(q, k, v).compile()
  temp_gb = compiled.memory_analysis().temp_size_in_bytes / 1e9

  def call(i):
    out = jax.block_until_ready(compiled(q, k, v))
    if i == 0:  # the gradient's scale, to compare the contenders' results
      return {"temp_gb": round(temp_gb, 3),
              "grad_abs_sum": [float(jnp.sum(jnp.abs(g))) for g in out]}
    return None
  return call


def matmul_flops(shape: tuple, remat: bool) -> float:
  """FLOPs of the attention's matmuls: q k^T and p v forward, their four products backward
  (dv, dp, dq, dk), and the forward again under remat."""
  B, T, H, E = shape
  one = 2 * B * H * T * T * E
  return one * (2 + 4 + (2 if remat else 0))


def main(argv):
  del argv
  shape = (_FRAMES.value, _TOKENS.value, _HEADS.value, _HEAD_DIM.value)
  remat = _REMAT.value
  contenders = {name: (contender, dict(name=name, shape=shape, remat=remat))
                for name in CONTENDERS}
  contenders["matmul"] = (_timing.matmul_call, dict(n=4096, dtype="float32"))
  cores = sorted(__import__("os").sched_getaffinity(0))[:_CORES.value]
  r = _timing.isolated(contenders, _RUNS.value, cores=cores)
  flops = matmul_flops(shape, remat)
  out = {"benchmark": "attention", **_timing.provenance(),
         "shape": dict(zip(("frames", "tokens", "heads", "head_dim"), shape)), "remat": remat,
         "dtype": "float32", "matmul_tflop": round(flops / 1e12, 4)}
  peak = r["info"]["matmul"]["flops"] / _timing.summary(r["times_s"]["matmul"])["median_s"]
  out["matmul_peak_gflops"] = round(peak / 1e9, 1)
  for name in CONTENDERS:
    s = _timing.summary(r["times_s"][name], 4)
    rate = flops / s["median_s"]
    out[name] = {**s, **r["info"][name], "gflops_per_s": round(rate / 1e9, 1),
                 "fraction_of_matmul_peak": round(rate / peak, 3)}
  for peer in ("jax_dpa", "grouped_softmax"):
    out[f"speedup_vs_{peer}"] = round(out[peer]["median_s"] / out["ours"]["median_s"], 2)
  out["harness"] = {k: r[k] for k in ("predecessors", "load_average", "cores", "warmup")}
  _timing.emit(out, _OUT.value)


if __name__ == "__main__":
  app.run(main)
