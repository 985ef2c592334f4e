"""attention_kernels: splash (Pallas' interpreter on this CPU) and the cuDNN path's
arguments (run through XLA) against `layers.attention`'s XLA reference, values and
gradients, for every mask the model uses; the choice of implementation; the setting
reaching the layers; and splash compiled into the TPU program (libtpu, no TPU)."""

import dataclasses
import importlib.util
import json
import subprocess
import sys
import textwrap

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import one_device
import tolerance
from hf_tiny import TINY
from vqathinker_jax.model import attention_kernels, internvl, layers
from vqathinker_jax.model.config import ModelConfig

SCALE = 0.3
# Splash against one masked softmax: the same float32 sums in blocks and another order,
# plus q scaled before the product (one more rounding). Observed up to 1.9 units of the
# outputs' scale and 5.2 of the gradients'.
ULPS_OUT, ULPS_GRAD = 8, 20


def _qkv(B, T, H, K, E, seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  q, k, v = (jax.random.normal(kk, (B, T, n, E)) for kk, n in zip(ks, (H, K, K)))
  return q, k, v, jax.random.normal(ks[3], (B, T, H, E))  # last: the output cotangent


def _prefix_groups(B=3, P=7, G=3, C=5):
  lengths = np.array([P, P - 3, 1])[:B]  # right-padded prompts, one of a single token
  return layers.PrefixGroupMask(jnp.asarray(np.arange(P)[None] < lengths[:, None]),
                                groups=G, group_len=C)


def _causal(B, T):
  lengths = np.array([T, T - 4, 3])[:B]  # right padding, one row almost all padding
  return layers.CausalMask(jnp.asarray(np.arange(T)[None] < lengths[:, None]))


def _query_rows(mask, B, T):
  """[B, T] rows every implementation defines: all but padding queries of the prompt."""
  if isinstance(mask, layers.PrefixGroupMask):
    P = mask.prompt_valid_BP.shape[1]
    return np.concatenate([np.asarray(mask.prompt_valid_BP), np.ones((B, T - P), bool)], 1)
  return np.ones((B, T), bool)


def _value_and_grads(fn, q, k, v, cotangent):
  out, vjp = jax.vjp(fn, q, k, v)
  return out, vjp(cotangent)


def _assert_matches(attend, q, k, v, w, mask):
  """``attend`` (q, k, v, mask) against `layers.attention` on the dense mask: outputs of
  the defined rows, and gradients with those rows' cotangent."""
  B, T = q.shape[:2]
  rows = _query_rows(mask, B, T)
  w = w * rows[:, :, None, None]
  dense = None if mask is None else mask.dense()
  run = jax.jit(lambda fn, q, k, v, w, m: _value_and_grads(lambda *a: fn(*a, m), q, k, v, w),
                static_argnums=0)
  got, got_grads = run(attend, q, k, v, w, mask)
  want, want_grads = run(lambda q, k, v, m: layers.attention(q, k, v, m, SCALE), q, k, v, w,
                         dense)
  tolerance.assert_close(got, want, ULPS_OUT, where=np.broadcast_to(rows[..., None, None],
                                                                    want.shape), name="out")
  for g, g_want, name in zip(got_grads, want_grads, "qkv"):
    tolerance.assert_close(g, g_want, ULPS_GRAD, name=f"d/d{name}")


# --------------------------------------------------------------------------- splash ---

def _splash(q, k, v, m):
  return layers.attention(q, k, v, m, SCALE, "splash")  # interpreted off TPU


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
  """128-token splash blocks: the short test sequences then span several."""
  monkeypatch.setattr(attention_kernels, "_MAX_BLOCK", 128)


def test_splash_prefix_groups_match_xla():
  q, k, v, w = _qkv(3, 22, 4, 2, 8)
  _assert_matches(_splash, q, k, v, w, _prefix_groups())


def test_splash_prefix_groups_over_several_blocks():
  # 350 tokens in 128-blocks: blocks wholly masked (skipped), whole (prompt keys of the
  # completions) and partial (the diagonals, group edges, the padded tail); one KV head.
  q, k, v, w = _qkv(2, 350, 2, 1, 8, seed=1)
  _assert_matches(_splash, q, k, v, w, _prefix_groups(B=2, P=150, G=2, C=100))


def test_splash_causal_with_padding_matches_xla_on_every_row():
  # Queries all in segment 1, keys by validity: even padding rows equal the dense mask's.
  # 150 tokens: two 128-blocks, the upper-right one skipped.
  q, k, v, w = _qkv(3, 150, 4, 2, 8, seed=2)
  _assert_matches(_splash, q, k, v, w, _causal(3, 150))


def test_splash_unmasked_matches_xla():
  q, k, v, w = _qkv(2, 17, 4, 4, 12, seed=3)  # the tiny ViT's 17 tokens, padded to 128
  _assert_matches(_splash, q, k, v, w, None)


def test_splash_blocks_pad_to_lanes_and_keep_blocks_large():
  blocks = lambda n: attention_kernels.splash_blocks(n, 512)
  assert blocks(22) == (128, 128)
  assert blocks(1025) == (1152, 384)   # the ViT at 448 px
  assert blocks(9000) == (9216, 512)   # a long prompt
  assert blocks(9000 + 8 * 2048) == (25600, 512)


# ---------------------------------------------------------------------------- cuDNN ---

def _cudnn_arguments_through_xla(q, k, v, m):
  """`attention_kernels.cudnn_attention` for ``m`` as `layers.attention` calls it, its
  `jax.nn.dot_product_attention` run by XLA."""
  valid, pattern = layers._kernel_pattern(m, *q.shape[:2])  # pylint: disable=protected-access
  return attention_kernels.cudnn_attention(q, k, v, valid, SCALE, implementation="xla",
                                           **pattern)


@pytest.mark.parametrize("kind", ["causal", "prefix_groups", "none"])
def test_cudnn_arguments_reproduce_the_mask(kind):
  """The lengths, causal flag and unpacked rows handed to cuDNN give the reference's
  attention when XLA runs them (`jax.nn.dot_product_attention` takes the same arguments
  for both)."""
  m = {"causal": _causal(3, 22), "prefix_groups": _prefix_groups(), "none": None}[kind]
  q, k, v, w = _qkv(3, 22, 4, 2, 8, seed=5)
  _assert_matches(_cudnn_arguments_through_xla, q, k, v, w, m)


def _nvidia_gpu():
  return jax.default_backend() == "gpu" and "nvidia" in jax.devices()[0].device_kind.lower()


@pytest.mark.skipif(not _nvidia_gpu(), reason="cuDNN's fused attention needs an NVIDIA GPU")
@pytest.mark.parametrize("kind", ["causal", "prefix_groups"])
def test_cudnn_matches_xla_in_bfloat16(kind):
  m = _causal(3, 22) if kind == "causal" else _prefix_groups()
  q, k, v, _ = (x.astype(jnp.bfloat16) for x in _qkv(3, 22, 4, 2, 16, seed=6))
  got = jax.jit(lambda q, k, v, m: layers.attention(q, k, v, m, SCALE, "cudnn"))(q, k, v, m)
  want = layers.attention(q, k, v, m.dense(), SCALE)
  rows = _query_rows(m, 3, 22)
  # bfloat16 outputs: a few roundings of the output's scale.
  tolerance.assert_close(got, want, 8, eps=tolerance.EPS_BF16, name="out",
                         where=np.broadcast_to(rows[..., None, None], want.shape))


# ------------------------------------------------------------------ choice, threading ---

def test_auto_is_xla_on_cpu_and_wrong_choices_are_refused():
  assert attention_kernels.resolve("auto", jnp.bfloat16, 128) == "xla"
  assert attention_kernels.resolve("splash", jnp.float32, 8) == "splash"  # interpreted
  with pytest.raises(ValueError, match="NVIDIA GPU"):
    attention_kernels.resolve("cudnn", jnp.bfloat16, 128)
  with pytest.raises(ValueError, match="expected one of"):
    attention_kernels.resolve("flash", jnp.float32, 8)
  with pytest.raises(ValueError, match="ModelConfig.attention"):
    ModelConfig(attention="flash")


def test_the_setting_reaches_every_attention_layer():
  """ModelConfig.attention='splash': the ViT's and the decoder's attention (forward with
  padding, and the packed GRPO pass) trace to Pallas calls, one per layer; 'auto' on
  CPU traces none."""
  ids = np.ones((2, 9), np.int32)
  ids[:, 1:5] = TINY.image_token_id
  mask = (np.arange(9)[None] < np.array([[9], [7]])).astype(np.int32)
  pix = np.zeros((2, 56, 56, 3), np.float32)
  groups = _prefix_groups(B=2, P=5, G=2, C=2)
  for setting, per_pass in (("splash", 1), ("auto", 0)):
    cfg = dataclasses.replace(TINY, attention=setting)
    # Traced from the parameters' shapes: nothing is initialised or compiled.
    graphdef, params = nnx.split(nnx.eval_shape(lambda: internvl.InternVL(cfg, nnx.Rngs(0))))
    m = lambda params: nnx.merge(graphdef, params)
    forward = jax.make_jaxpr(lambda p, ids, pix, mask: m(p).forward(ids, pix, mask))(
        params, ids, pix, mask)
    packed = jax.make_jaxpr(lambda p, ids: m(p).hidden_states(
        ids, None, jnp.zeros(ids.shape, jnp.int32), groups))(params, np.ones((2, 9), np.int32))
    vit, llm = TINY.vision.num_layers, TINY.text.num_layers
    assert _pallas_calls(forward.jaxpr) == per_pass * (vit + llm)
    assert _pallas_calls(packed.jaxpr) == per_pass * llm


def _pallas_calls(jaxpr) -> int:
  """Pallas calls in ``jaxpr`` and the jaxprs it calls."""
  def subjaxprs(value):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
      yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
      yield value
    elif isinstance(value, (tuple, list)):
      for v in value:
        yield from subjaxprs(v)
  return sum((eqn.primitive.name == "pallas_call")
             + sum(_pallas_calls(j) for v in eqn.params.values() for j in subjaxprs(v))
             for eqn in jaxpr.eqns)


# ------------------------------------------------------------------------------- TPU ---

_TPU_SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from vqathinker_jax.model import attention_kernels, layers
    devices = topologies.get_topology_desc(
        platform="tpu", topology_name="v5:2x2x1", chip_config_name="megacore",
        chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=(False,) * 3).devices
    mesh = Mesh(np.array(devices).reshape(1, 2, 2), ("data", "fsdp", "tensor"))
    B, P_, G, C, H, K = 4, 200, 3, 100, 8, 2
    L = P_ + G * C
    sds = lambda shape, dtype, spec: jax.ShapeDtypeStruct(shape, dtype,
                                                          sharding=NamedSharding(mesh, spec))
    heads = P("fsdp", None, "tensor", None)
    def grads(kind, E):
      def loss(q, k, v, valid):
        m = {"prefix": layers.PrefixGroupMask(valid, groups=G, group_len=C),
             "causal": layers.CausalMask(jnp.pad(valid, ((0, 0), (0, G * C)))),
             "none": None}[kind]
        return jnp.sum(layers.attention(q, k, v, m, E ** -0.5, "auto").astype(jnp.float32))
      q = sds((B, L, H, E), jnp.bfloat16, heads)
      kv = sds((B, L, K, E), jnp.bfloat16, heads)
      valid = sds((B, P_), jnp.bool_, P("fsdp", None))
      with jax.set_mesh(mesh):
        chosen = attention_kernels.resolve("auto", jnp.bfloat16, E)
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, valid)
        text = lowered.compile().as_text()
      return dict(chosen=chosen, kernels=text.count('custom_call_target="tpu_custom_call"'),
                  all_gather="all-gather" in text)
    print(json.dumps({kind: grads(kind, E) for kind, E in
                      (("prefix", 128), ("causal", 128), ("none", 64))}))
""")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (pip install -e '.[tpu]')")
def test_splash_is_compiled_into_the_tpu_program():
  """On a v5p-8 mesh (fsdp 2 x tensor 2) 'auto' is splash: the compiled gradient holds
  its three Pallas kernels (forward, dq, dkv) per mask and gathers nothing (shard_map
  keeps the batch and the heads split)."""
  env = dict(one_device.env(), ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  out = subprocess.run([sys.executable, "-c", _TPU_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  for kind, r in report.items():
    assert r == dict(chosen="splash", kernels=3, all_gather=False), (kind, r)
