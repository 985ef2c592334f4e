"""Score videos with a VQAThinker (or InternVL3) checkpoint: decode, prompt, greedy
rollout, parse (docs/method.md §5). A bad file gives an error entry; the others are still scored.

Legend: B videos per batch, T frames, H/W pixels, P prompt tokens, C new tokens.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
from typing import Iterable, Iterator, NamedTuple

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from data_pipelines import decode
from vqathinker_jax import factory
from vqathinker_jax.eval import report
from vqathinker_jax.model import sharding
from vqathinker_jax.rl import rollout
from vqathinker_jax.text import tokenizer as tok_lib

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".yuv", ".flv"}


@dataclasses.dataclass(frozen=True)
class Prediction:
  video: str
  score: float | None   # None when the video could not be read
  parsed: bool          # the first <answer> parsed (else docs/method.md §5's fallback 3.0)
  text: str             # the model's reasoning and answer
  error: str | None = None


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


class Scored(NamedTuple):
  text: str      # the model's reasoning and answer
  score: float   # docs/method.md §5: the first <answer> parsed, else 3.0
  parsed: bool   # the first <answer> parsed (report.parse_eval_answer)


def _batches(items: Iterable, size: int) -> Iterator[list]:
  it = iter(items)
  while chunk := list(itertools.islice(it, size)):
    yield chunk


def _to_device(x_B: np.ndarray) -> jax.Array:
  """Host batch -> device, split over the batch axes of the mesh in context (replicated if
  they do not divide it). Every process passes the same full batch and contributes its
  own shards, so this also works when the mesh spans hosts."""
  mesh = jax.sharding.get_mesh()
  if mesh.empty:
    return jnp.asarray(x_B)
  axes = tuple(a for a in sharding.BATCH_AXES if mesh.shape.get(a, 1) > 1)
  split = axes and x_B.shape[0] % math.prod(mesh.shape[a] for a in axes) == 0
  spec = NamedSharding(mesh, P(axes) if split else P())
  return jax.make_array_from_callback(x_B.shape, spec, lambda idx: x_B[idx])


def _to_host(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def generate_texts(model, tokenizer: tok_lib.Tokenizer,
                   videos: Iterable[tuple[np.ndarray, np.ndarray]], *, prompt_len: int,
                   batch_size: int, max_new_tokens: int,
                   train_selection: bool = False) -> list[str]:
  """Greedy completions for (uint8 frames [T, H, W, 3], prompt ids [P]) pairs, in order.

  ``videos`` is consumed lazily, one batch at a time (an evaluation set does not fit in
  host memory). Each prompt is right-padded to ``prompt_len`` (the rollout masks the
  padding and continues each row's positions from its own length, so a row reads as if
  alone) and the last batch is padded by repetition: every batch has one shape and the
  rollout compiles once. Call inside `jax.set_mesh(mesh)` to split the batch over the mesh.
  ``train_selection``: SlowFast's training frame selection (T//3, x6) instead of the
  evaluation one (T//4, x4).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  rng = jax.random.key(0)  # unused by greedy decoding, but generate takes one

  def launch(chunk):
    rows = chunk + [chunk[-1]] * (batch_size - len(chunk))
    ids_BP, mask_BP = tok_lib.pad_batch([ids for _, ids in rows], tokenizer.special.pad,
                                        prompt_len)
    pix_BTHWC = factory.normalize_frames(np.stack([f for f, _ in rows]), model.cfg.family)
    out = rollout.generate_jit(model, _to_device(ids_BP), _to_device(mask_BP),
                               _to_device(pix_BTHWC), rng=rng, greedy=True,
                               max_new_tokens=max_new_tokens,
                               stop_ids=tokenizer.special.stop_ids, train=train_selection)
    return len(chunk), out["tokens_NC"], out["lengths_N"]

  def finish(n, tokens_NC, lengths_N):
    tokens_BC, lengths_B = _to_host(tokens_NC)[:n], _to_host(lengths_N)[:n]
    return [tokenizer.decode(t[:k]) for t, k in zip(tokens_BC, lengths_B)]

  results, pending = [], None
  for chunk in _batches(videos, batch_size):
    # Dispatch is asynchronous: the device runs this batch while the host decodes the
    # previous batch's text and reads the next videos.
    launched = launch(chunk)
    if pending is not None:
      results += finish(*pending)
    pending = launched
  if pending is not None:
    results += finish(*pending)
  return results


def prompt_config(model_cfg, frames: int, size: int, layout: str) -> tok_lib.PromptConfig:
  """The scoring prompt's layout for `frames` square frames of side `size` on this model."""
  return tok_lib.PromptConfig(
      num_frames=frames, motion=model_cfg.motion is not None, layout=layout,
      family=model_cfg.family, tokens_per_frame=model_cfg.tokens_per_frame(size))


def score_batches(model, tokenizer: tok_lib.Tokenizer, frames: Iterable[np.ndarray], *,
                  prompt: tok_lib.PromptConfig, batch_size: int, max_new_tokens: int,
                  train_selection: bool = False, parse: str = "lenient") -> list[Scored]:
  """Greedy generation + docs/method.md §5 parse for uint8 [T, H, W, 3] videos, in order:
  `generate_texts` with one prompt for all. ``frames`` is consumed lazily; every batch
  has the same shape, so the rollout compiles once. Call inside `jax.set_mesh(mesh)` to
  split the batch over the mesh. ``train_selection``: SlowFast's training frame selection
  (T//3, x6) instead of the evaluation one (T//4, x4). ``parse``:
  `report.parse_eval_answer`'s parser.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  ids_P = tok_lib.prompt_ids(tokenizer, prompt)
  texts = generate_texts(model, tokenizer, ((f, ids_P) for f in frames), prompt_len=len(ids_P),
                         batch_size=batch_size, max_new_tokens=max_new_tokens,
                         train_selection=train_selection)
  return [Scored(t, float(s), bool(ok))
          for t, (s, ok) in zip(texts, (report.parse_eval_answer(t, parse) for t in texts))]


def predict(model, tokenizer: tok_lib.Tokenizer, videos: Iterable, *, frames: int, size: int,
            max_new_tokens: int = 1024, batch_size: int = 4, prompt_layout: str = "train",
            train_selection: bool = False, parse: str = "lenient",
            honour_rotation: bool = True) -> list[Prediction]:
  """Greedy predictions in the order of ``videos`` (`score_batches` over the videos that
  decode; the others get an error entry). Videos are decoded as the batches need them.

  ``train_selection``: SlowFast's training frame selection (T//3, x6; e.g. 6 frames)
  instead of the evaluation one (T//4, x4; the reference evaluates 12 frames at 560 px).
  ``honour_rotation``: decode.decode's (False: stored orientation, as the reference reads).
  """
  videos = list(videos)
  cfg = model.cfg
  prompt = prompt_config(cfg, frames, size, prompt_layout)
  errors: dict[int, Prediction] = {}
  good: list[int] = []

  def decoded():
    for i, path in enumerate(videos):
      try:
        frames_THWC = decode.decode(path, frames, size,
                                    honour_rotation=honour_rotation).frames_TxHxWx3
      except (decode.DecodeError, OSError) as e:  # corrupt, missing, not a video, ...
        errors[i] = Prediction(str(path), None, False, "", f"{type(e).__name__}: {e}")
        continue
      good.append(i)
      yield frames_THWC

  scored = score_batches(model, tokenizer, decoded(), prompt=prompt, batch_size=batch_size,
                         max_new_tokens=max_new_tokens, train_selection=train_selection,
                         parse=parse)
  results = {i: Prediction(str(videos[i]), s.score, s.parsed, s.text)
             for i, s in zip(good, scored)}
  return [results.get(i) or errors[i] for i in range(len(videos))]


def run(config, workdir) -> dict:
  """`mode='predict'`: score `config.predict.videos` with `config.model.checkpoint`; writes
  `predictions.json` to ``workdir`` and prints one line per video."""
  import json

  c = config.predict
  if not config.model.checkpoint:
    raise ValueError("config.model.checkpoint: predict needs a checkpoint directory (with "
                     "its tokenizer files)")
  if not c.videos:
    raise ValueError("config.predict.videos: give video paths (comma-separated) or a folder")
  paths = list_videos(c.videos)
  tokenizer = factory.tokenizer(config, workdir)
  mesh = factory.make_mesh(config)
  m, _ = factory.build_model(config, mesh)  # outside the mesh context: logical names there
  with jax.set_mesh(mesh):
    preds = predict(m, tokenizer, paths, frames=c.frames, size=c.size,
                    max_new_tokens=c.max_new_tokens, batch_size=c.batch_size,
                    prompt_layout=c.prompt_layout, train_selection=c.train_selection,
                    parse=c.parse, honour_rotation=config.data.honour_rotation)
  workdir = epath.Path(workdir)  # gs:// keeps its scheme
  workdir.mkdir(parents=True, exist_ok=True)
  out = workdir / "predictions.json"
  report.write_atomic(out, json.dumps([dataclasses.asdict(p) for p in preds], indent=2,
                                      ensure_ascii=False))
  for p in preds:
    print(f"{p.video}\tERROR\t{p.error}" if p.error else
          f"{p.video}\t{p.score:.2f}\t{' '.join(p.text.split())}")
  failed = sum(p.error is not None for p in preds)
  return {"predictions": str(out), "videos": len(preds), "failed": failed}
