"""tools/aot: the trainer's GRPO step, compiled by XLA:TPU on this CPU for a v5p topology
(libtpu, no TPU): the report, the mesh laid over the chips, the decode loops' traffic per
generated token (no weight re-gathered), and a model too big for the chips reported as not
fitting (the compiler's out-of-memory error, not a crash)."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

import one_device

ROOT = pathlib.Path(__file__).resolve().parents[2]
if importlib.util.find_spec("libtpu") is None:
  pytest.skip("libtpu is not installed (pip install -e '.[tpu]')", allow_module_level=True)


def _aot(*args):
  env = dict(one_device.env(), ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  out = subprocess.run([sys.executable, "-m", "vqathinker_jax.tools.aot",
                        "--config", str(ROOT / "configs/demo.py"), "--topology", "v5p-8", *args],
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout)


# The demo at 32 videos (128 rollout rows) and a decoder 2x as wide, on fsdp 2 x tensor 2:
# with that many rows per width, XLA:TPU gathers fsdp-split weights rather than moving
# activations, as it does at the 8B config's shapes (at the demo's own, it moves rows).
ROWS_OVER_WIDTH = ("--config.mesh.fsdp=2", "--config.mesh.tensor=2", "--config.train.batch_size=32",
                   "--config.model.arch.text.hidden_size=128",
                   "--config.model.arch.text.intermediate_size=512",
                   "--config.model.arch.text.vocab_size=1024",
                   "--config.model.arch.text.head_dim=32")


def test_the_step_compiles_for_v5p_8_and_its_decode_loops_gather_no_weights():
  r = _aot(*ROWS_OVER_WIDTH)
  assert (r["topology"], r["chips"], r["program"]) == ("v5p-8", 4, "step")
  assert r["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
  assert r["fits"] and 0 < r["peak_gib_per_chip"] < r["hbm_gib_per_chip"] == 95.74
  assert r["flops_per_step"] > 0 and r["compile_s"] > 0
  # The two rollouts' decode loops (original and perturbed videos) move activations only:
  # the weights they read are the per-step decode copy, whole over fsdp.
  decode = [x for x in r["loops"] if x["name"] in ("jit(step)/rollout/while",
                                                   "jit(step)/rollout_perturbed/while")]
  assert len(decode) == 2, r["loops"]
  assert all(x["invariant_all_gather_bytes"] == 0 for x in decode), decode


def test_reading_the_stored_layout_gathers_weights_at_every_token():
  # The check above can fail: decoding on the parameters as stored (fsdp-split) gathers
  # some of them again inside the loop, at every generated token.
  r = _aot("--program", "rollout", "--config.grpo.decode_layout=train", *ROWS_OVER_WIDTH)
  (loop,) = [x for x in r["loops"] if x["name"] == "jit(fn)/while"]
  assert loop["invariant_all_gather_bytes"] > 0, r["loops"]


def test_every_accelerator_type_names_its_chips():
  # gcloud's names: v4-N and v5p-N have N/2 chips (megacore), v5litepod-N and v6e-N have N.
  code = ("from vqathinker_jax.tools import aot; print([(len(d), d[0].device_kind) for d in "
          "map(aot.topology_devices, ('v4-16', 'v5p-32', 'v5litepod-16', 'v6e-8'))])")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(one_device.env(), ALLOW_MULTIPLE_LIBTPU_LOAD="1"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == str([(8, "TPU v4"), (16, "TPU v5"), (16, "TPU v5 lite"),
                                    (8, "TPU v6 lite")])


def test_a_model_too_big_for_the_chips_does_not_fit():
  # 8 decoder layers of width 16384 and MLP 65536: ~26 G parameters, ~6.4 G per chip, x 16
  # bytes (f32 weights, Adam moments, gradients) > a v5p chip's 95.74 GiB.
  r = _aot("--program", "update", "--config.mesh.fsdp=-1", "--config.grpo.beta=0",
           "--config.model.arch.text.num_layers=8",
           "--config.model.arch.text.hidden_size=16384",
           "--config.model.arch.text.intermediate_size=65536")
  assert r["program"] == "update" and r["fits"] is False
  assert "memory" in r.get("error", "").lower() or r.get("peak_gib_per_chip", 0) > 95.74
