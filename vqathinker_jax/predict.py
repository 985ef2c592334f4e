"""Score videos with a VQAThinker (or InternVL3) checkpoint: decode, prompt, greedy
rollout, parse (SPEC §5). A bad file gives an error entry; the others are still scored.

Legend: B videos per batch, T frames, H/W pixels, P prompt tokens, C new tokens.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import decode, perturb
from vqathinker_jax import eval_report, rollout, tokenizer as tok_lib

IMAGENET_MEAN = np.asarray(perturb.IMAGENET_MEAN_RGB, np.float32) * 255
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32) * 255
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".yuv", ".flv"}


@dataclasses.dataclass(frozen=True)
class Prediction:
  video: str
  score: float | None   # None when the video could not be read
  parsed: bool          # an <answer> with a number was found (else SPEC §5's fallback 3.0)
  text: str             # the model's reasoning and answer
  error: str | None = None


def normalize(frames_BTHWC: np.ndarray) -> np.ndarray:
  """uint8 RGB -> ImageNet-normalised float32, as the ViT and SlowFast expect."""
  return (frames_BTHWC.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD


def list_videos(spec) -> list[pathlib.Path]:
  """Comma-separated paths or one folder (its video files, sorted); order kept."""
  items = spec.split(",") if isinstance(spec, str) else list(spec)
  out = []
  for item in (str(i).strip() for i in items if str(i).strip()):
    p = pathlib.Path(item).expanduser()
    if p.is_dir():
      out.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES))
    else:
      out.append(p)  # a missing file is reported when it is read
  if not out:
    raise ValueError(f"no videos in {spec!r}")
  return out


def predict(model, tokenizer: tok_lib.Tokenizer, videos: Iterable, *, frames: int, size: int,
            max_new_tokens: int = 1024, batch_size: int = 4, prompt_layout: str = "train",
            train_selection: bool = False) -> list[Prediction]:
  """Greedy predictions in the order of ``videos``. Every batch has the same shapes (the
  last one is padded by repetition), so the rollout compiles once.

  ``train_selection``: SlowFast's training frame selection (T//3, x6; e.g. 6 frames)
  instead of the evaluation one (T//4, x4; the reference evaluates 12 frames at 560 px).
  """
  videos = list(videos)
  cfg = model.cfg
  prompt = tok_lib.PromptConfig(
      num_frames=frames, motion=cfg.motion is not None, layout=prompt_layout,
      tokens_per_frame=tok_lib.tokens_per_frame(size, cfg.vision.patch_size, cfg.downsample_ratio))
  ids_P = tok_lib.prompt_ids(tokenizer, prompt)
  results: dict[int, Prediction] = {}
  good: list[tuple[int, np.ndarray]] = []
  for i, path in enumerate(videos):
    try:
      good.append((i, decode.decode(path, frames, size).frames_TxHxWx3))
    except (decode.DecodeError, OSError) as e:  # corrupt, missing, not a video, ...
      results[i] = Prediction(str(path), None, False, "", f"{type(e).__name__}: {e}")
  for start in range(0, len(good), batch_size):
    chunk = good[start:start + batch_size]
    padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
    pix_BTHWC = normalize(np.stack([f for _, f in padded]))
    ids_BP = jnp.asarray(np.tile(ids_P, (batch_size, 1)))
    out = rollout.generate_jit(model, ids_BP, jnp.ones_like(ids_BP), jnp.asarray(pix_BTHWC),
                               rng=jax.random.key(0), greedy=True, max_new_tokens=max_new_tokens,
                               stop_ids=tokenizer.special.stop_ids, train=train_selection)
    tokens_BC, lengths_B = jax.device_get((out["tokens_NC"], out["lengths_N"]))
    for (i, _), tokens_C, n in zip(chunk, tokens_BC, lengths_B):
      text = tokenizer.decode(tokens_C[:n])
      score, ok = eval_report.parse_eval_answer(text)
      results[i] = Prediction(str(videos[i]), float(score), bool(ok), text)
  return [results[i] for i in sorted(results)]


def run(config, workdir: pathlib.Path) -> dict:
  """`mode='predict'`: score `config.predict.videos` with `config.model.checkpoint`; writes
  `predictions.json` to ``workdir`` and prints one line per video."""
  import json
  from vqathinker_jax import sharding, smoke

  c = config.predict
  if not config.model.checkpoint:
    raise ValueError("config.model.checkpoint: predict needs a checkpoint directory (with "
                     "its tokenizer files)")
  if not c.videos:
    raise ValueError("config.predict.videos: give video paths (comma-separated) or a folder")
  paths = list_videos(c.videos)
  tokenizer = tok_lib.load_tokenizer(config.model.tokenizer or config.model.checkpoint)
  mesh = sharding.make_mesh(dict(config.mesh))
  m, _ = smoke.build_model(config, mesh)  # outside the mesh context: logical names there
  with jax.set_mesh(mesh):
    preds = predict(m, tokenizer, paths, frames=c.frames, size=c.size,
                    max_new_tokens=c.max_new_tokens, batch_size=c.batch_size,
                    prompt_layout=c.prompt_layout, train_selection=c.train_selection)
  workdir.mkdir(parents=True, exist_ok=True)
  out = workdir / "predictions.json"
  out.write_text(json.dumps([dataclasses.asdict(p) for p in preds], indent=2, ensure_ascii=False))
  for p in preds:
    print(f"{p.video}\tERROR\t{p.error}" if p.error else
          f"{p.video}\t{p.score:.2f}\t{' '.join(p.text.split())}")
  failed = sum(p.error is not None for p in preds)
  return {"predictions": str(out), "videos": len(preds), "failed": failed}
