"""Convert a PyTorchVideo SlowFast checkpoint to the safetensors that we load.

    python -m vqathinker_jax.tools.convert_slowfast SLOWFAST_8x8_R50.pyth slowfast.safetensors

Reads the torch file with ``weights_only=True`` (no code in it runs), keeps the feature
blocks 0-4 (the classifier head is not used), and writes them under the names of
VQAThinker's release (`slowfast_model.feature_extraction.*`), so that
`model.from_pretrained(internvl3_dir, slowfast_weights=OUT)` adds the motion branch.
Needs torch (the CPU wheel is enough); nothing else here does.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

import numpy as np
from safetensors.numpy import save_file

from vqathinker_jax.model import slowfast
from vqathinker_jax.model.hf_checkpoint import MOTION_CONFIG_KEY, SLOWFAST_PREFIX

_FEATURE_KEY = re.compile(r"^(?:module\.)?(?:model\.)?blocks\.([0-4])\.(.+)$")


def feature_tensors(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """PyTorchVideo state dict -> {`0.multipathway_blocks...`: array} for blocks 0-4,
  checked against the SlowFast that its shapes imply."""
  out = {}
  for key, value in state.items():
    m = _FEATURE_KEY.match(key)
    if m and not key.endswith("num_batches_tracked"):
      out[f"{m.group(1)}.{m.group(2)}"] = np.asarray(value, np.float32)
  if not out:
    sample = ", ".join(list(state)[:5])
    raise ValueError(f"no PyTorchVideo SlowFast tensors (`blocks.0..4.*`) found; keys: {sample}")
  cfg = slowfast.infer_config({k: v.shape for k, v in out.items()})
  want = {key: kind for key, kind in slowfast.torch_names(cfg).values()}
  missing, extra = sorted(set(want) - set(out)), sorted(set(out) - set(want))
  if missing or extra:
    raise ValueError(f"not a SlowFast-R{cfg.depth} of width {cfg.width}: missing {missing[:5]}, "
                     f"unexpected {extra[:5]}")
  return out


def _torch_state(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise SystemExit("convert_slowfast needs torch to read the .pyth file: pip install torch "
                     "(the CPU wheel is enough)") from e
  ckpt = torch.load(path, map_location="cpu", weights_only=True)
  for wrapper in ("model_state", "state_dict", "model"):  # PyTorchVideo hub, Lightning, ...
    if isinstance(ckpt, dict) and isinstance(ckpt.get(wrapper), dict):
      ckpt = ckpt[wrapper]
  return {k: v.float().numpy() for k, v in ckpt.items() if hasattr(v, "numpy")}


def convert(src, dst) -> slowfast.SlowFastConfig:
  src, dst = pathlib.Path(src), pathlib.Path(dst)
  if not src.is_file():
    raise FileNotFoundError(f"no such file: {src}")
  tensors = feature_tensors(_torch_state(src))
  cfg = slowfast.infer_config({k: v.shape for k, v in tensors.items()})
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = dst.with_name(dst.name + ".tmp")
  save_file({SLOWFAST_PREFIX + k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
            metadata={"format": "pt", MOTION_CONFIG_KEY: json.dumps({"width": cfg.width,
                                                                     "depth": cfg.depth})})
  tmp.replace(dst)
  return cfg


def main(argv: list[str]) -> int:
  if len(argv) != 3 or argv[1].startswith("-"):
    print(__doc__.strip(), file=sys.stderr)
    return 2
  cfg = convert(argv[1], argv[2])
  print(f"wrote {argv[2]}: SlowFast-R{cfg.depth}, width {cfg.width}, "
        f"{cfg.feature_dim()}-d features")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
