"""Config -> objects: the one place where a run config becomes its mesh, model
architecture, model, tokenizer, data directory and frame normalisation. Every mode
(train, eval, predict, smoke) and `tools/plan` build through it.

    mesh = factory.make_mesh(config)
    model, model_cfg = factory.build_model(config, mesh)   # outside `jax.set_mesh`
    tok = factory.tokenizer(config, workdir)

Legend: B videos, T frames, H/W pixels, C colour channels.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import tempfile

from etils import epath
import jax
import numpy as np

from data_pipelines import perturb
from vqathinker_jax import model as model_lib
from vqathinker_jax.model import sharding
from vqathinker_jax.model.config import ModelConfig, TextConfig, VisionConfig
from vqathinker_jax.model.slowfast import SlowFastConfig
from vqathinker_jax.text import demo_tokenizer, tokenizer as tok_lib

SYNTHETIC = "synthetic"  # the data set name config.data.synthetic builds
# ImageNet mean / std of uint8 RGB, as the ViT and SlowFast were trained with.
IMAGENET_MEAN = np.asarray(perturb.IMAGENET_MEAN_RGB, np.float32) * 255
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32) * 255
# Qwen2.5-VL's processor normalises with CLIP's (`qwen_inputs.normalize`).
CLIP_MEAN = np.asarray([0.48145466, 0.4578275, 0.40821073], np.float32) * 255
CLIP_STD = np.asarray([0.26862954, 0.26130258, 0.27577711], np.float32) * 255


def normalize_frames(frames_BTHWC, family: str = tok_lib.INTERNVL):
  """uint8 RGB -> float32 normalised as ``family``'s vision tower was trained (ImageNet's
  mean/std for InternVL, CLIP's for Qwen2.5-VL); numpy stays on the host, a jax array on
  device (the trainer normalises there: a quarter of the bytes to move)."""
  mean, std = ((CLIP_MEAN, CLIP_STD) if family == tok_lib.QWEN25VL else
               (IMAGENET_MEAN, IMAGENET_STD))
  return (frames_BTHWC.astype(np.float32) - mean) / std


def make_mesh(config) -> jax.sharding.Mesh:
  """The (data, fsdp, tensor) mesh of `config.mesh`."""
  return sharding.make_mesh(dict(config.mesh))


def model_config(config) -> ModelConfig:
  """The architecture of a run config: the checkpoint's config.json when the directory
  exists, else `model.arch` (with the motion branch when `slowfast_weights` or
  `arch.motion.enabled` says so). The ViT's drop-path rate is `model.drop_path_rate`
  (-1: the checkpoint's own; with no readable checkpoint, e.g. `tools/aot` on
  placeholder paths, that is 0)."""
  m = config.model
  hf = _hf_config(m.checkpoint)
  if m.get("family", tok_lib.INTERNVL) == tok_lib.QWEN25VL or _family(hf) == tok_lib.QWEN25VL:
    return _qwen_config(config, hf)
  drop_path_rate = float(m.get("drop_path_rate", 0.0))
  motion = None
  if m.arch.motion.enabled or m.slowfast_weights:
    mo = m.arch.motion
    motion = SlowFastConfig(width=mo.width, depth=mo.depth, pool_t_slow=mo.pool_t_slow,
                            pool_t_fast=mo.pool_t_fast, pool_hw=mo.pool_hw)
  if hf is not None:
    from vqathinker_jax.model import hf_checkpoint
    text = hf.get("text_config") or hf.get("llm_config") or {}
    # An untied LM head is what InternVL3 ships; the config's own flag is unreliable.
    return hf_checkpoint.config_from_hf(hf, has_lm_head=not text.get("tie_word_embeddings", False),
                                        motion=motion, path=pathlib.Path(m.checkpoint),
                                        dtype=m.dtype,
                                        param_dtype=m.param_dtype, attention=m.attention,
                                        scan_layers=m.scan_layers, drop_path_rate=drop_path_rate)
  a = m.arch
  vision = VisionConfig(**a.vision.to_dict(), drop_path_rate=max(drop_path_rate, 0.0))
  return ModelConfig(vision=vision, text=TextConfig(**a.text.to_dict()),
                     image_token_id=a.image_token_id, vision_feature_layer=a.vision_feature_layer,
                     motion=motion, dtype=m.dtype, param_dtype=m.param_dtype,
                     attention=m.attention, scan_layers=m.scan_layers)


def _hf_config(checkpoint: str) -> dict | None:
  """A local checkpoint's config.json (None: no checkpoint, or none there)."""
  path = pathlib.Path(checkpoint) / "config.json" if checkpoint else None
  return json.loads(path.read_text()) if path is not None and path.exists() else None


def _family(hf: dict | None) -> str | None:
  """The family a checkpoint's config.json names (None: no config)."""
  if hf is None:
    return None
  return tok_lib.QWEN25VL if hf.get("model_type") == tok_lib.QWEN25VL else tok_lib.INTERNVL


def _qwen_config(config, hf: dict | None):
  """`model_config` for Qwen2.5-VL: the checkpoint's config.json ``hf``, else
  `model.arch.text` and `model.arch.qwen`."""
  from vqathinker_jax.model import qwen_checkpoint, qwen_vision, qwen_vl
  m = config.model
  run = dict(dtype=m.dtype, param_dtype=m.param_dtype, attention=m.attention,
             scan_layers=m.scan_layers, second_per_grid_t=float(m.second_per_grid_t))
  if hf is not None:
    return qwen_checkpoint.config_from_hf(hf, has_lm_head=not hf.get("tie_word_embeddings"),
                                          **run)
  q = m.arch.qwen
  vision = qwen_vision.QwenVisionConfig(**q.vision.to_dict(),
                                        out_hidden_size=m.arch.text.hidden_size)
  text = TextConfig(**m.arch.text.to_dict(), mrope_section=tuple(q.mrope_section))
  return qwen_vl.QwenVLConfig(
      vision=vision, text=text, image_token_id=q.image_token_id,
      video_token_id=q.video_token_id, vision_start_token_id=q.vision_start_token_id,
      vision_end_token_id=q.vision_end_token_id, tokens_per_second=q.tokens_per_second, **run)


def build_model(config, mesh) -> tuple[model_lib.InternVL, ModelConfig]:
  """(model, its ModelConfig) on ``mesh``: `config.model.checkpoint` loaded (with
  `slowfast_weights` when set), else a random init of `config.model.arch` from
  `config.seed`. Call it outside `jax.set_mesh`: parameters are placed by their logical
  axis names."""
  m = config.model
  if m.checkpoint:
    found = _family(_hf_config(m.checkpoint))
    if found is not None and found != m.get("family", tok_lib.INTERNVL):
      raise ValueError(f"config.model.family={m.get('family', tok_lib.INTERNVL)!r} but the "
                       f"checkpoint {m.checkpoint} is {found!r}: set "
                       f"--config.model.family={found}")
    return model_lib.from_pretrained(m.checkpoint, dtype=m.dtype, param_dtype=m.param_dtype,
                                     mesh=mesh, slowfast_weights=m.slowfast_weights or None,
                                     seed=config.seed, attention=m.attention,
                                     scan_layers=m.scan_layers,
                                     drop_path_rate=float(m.get("drop_path_rate", 0.0)),
                                     second_per_grid_t=float(m.get("second_per_grid_t", 1.0)))
  if m.slowfast_weights:
    raise ValueError(f"config.model.slowfast_weights={m.slowfast_weights!r} needs "
                     "config.model.checkpoint: SlowFast weights are added to a loaded model")
  cfg = model_config(config)
  return model_lib.init(cfg, seed=config.seed, mesh=mesh), cfg


def tokenizer(config, workdir) -> tok_lib.Tokenizer:
  """The run's tokenizer: `config.model.tokenizer` 'demo' builds (once) and saves the demo
  tokenizer under workdir/tokenizer; else that path, or the checkpoint's own files."""
  m = config.model
  if m.tokenizer == "demo":
    path = epath.Path(workdir) / "tokenizer"

    def make():
      if not (path / "tokenizer.json").exists():
        demo_tokenizer.save(demo_tokenizer.build(m.get("family", tok_lib.INTERNVL)), path)

    # As ensure_synthetic: process 0 first, so that processes sharing the workdir do not
    # write the same files at once (the others build their own only on a local disk).
    _process_0_first("factory.tokenizer", make)
    return tok_lib.load_tokenizer(path)
  return tok_lib.load_tokenizer(m.tokenizer or m.checkpoint)


def data_dir(config, workdir) -> pathlib.Path:
  """The TFDS data_dir the run reads: `config.data.data_dir`, or for the synthetic set
  `<config.data.data_dir or workdir/data>/tfds` (its rendered clips go beside, in
  `synthetic_videos`); with a gs:// workdir, `workdir/data` is a local folder instead."""
  if config.data.synthetic.enabled:
    return pathlib.Path(config.data.data_dir or _local_data(workdir)) / "tfds"
  if not config.data.data_dir:
    raise ValueError("config.data.data_dir is empty: point it at the TFDS data_dir the data "
                     "sets were built into (python -m data_pipelines.prepare --data_dir ...), "
                     "or enable config.data.synthetic")
  return pathlib.Path(config.data.data_dir)


def _local_data(workdir) -> pathlib.Path:
  """workdir/data, or for a URL workdir (gs://B/run) TMPDIR/vqathinker_jax/gs/B/run/data:
  the synthetic clips are encoded and read through local files, and they are rebuilt from
  their settings on any machine, so they need not be durable."""
  workdir = os.fspath(workdir)
  if "://" not in workdir:
    return pathlib.Path(workdir) / "data"
  scheme, rest = workdir.split("://", 1)
  return pathlib.Path(tempfile.gettempdir(), "vqathinker_jax", scheme, rest.strip("/"), "data")


_BARRIERS = itertools.count()  # every process passes the barriers in the same order


def _barrier(name: str, timeout_s: int = 6 * 3600) -> None:
  """Waits for every process, through JAX's coordination service rather than a device
  program: on CPU that would be a gloo collective, whose set-up fails when processes
  arrive over 30 s apart (process 0 may render the synthetic set for minutes)."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # the client of jax.distributed.initialize
  client = distributed.global_state.client
  if client is None:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
    return
  # A barrier name is for one use, as Orbax's are (each evaluation comes here again).
  client.wait_at_barrier(f"{name}.{next(_BARRIERS)}", timeout_s * 1000)


def _process_0_first(name: str, make) -> None:
  """Runs ``make()`` on process 0, then (after barrier ``name``) on the others: on a shared
  file system they find the work done, on a local one they do their own."""
  if jax.process_index() == 0:
    make()
  _barrier(name)
  if jax.process_index() != 0:
    make()


def ensure_synthetic(config, workdir, frames: int, size: int, *, workers: int = 0) -> pathlib.Path:
  """Renders (`synthetic.generate` with the `config.data.synthetic` fields) and builds the
  synthetic set at ``frames`` x ``size`` unless already there; returns the TFDS data_dir.

  Rendering is skipped when `synthetic_videos/render.json` records the same settings; the
  build is skipped by the builder's own fingerprint. With several processes, process 0
  goes first; the others then find everything done on a shared file system (or make
  their own copy on a local one).
  """
  from data_pipelines import builder, synthetic

  s = config.data.synthetic
  out = data_dir(config, workdir)
  root = out.parent / "synthetic_videos"
  settings = dict(num_videos=s.num_videos, seed=s.seed, num_frames=s.num_frames,
                  height=s.height, width=s.width, scenes=s.scenes, exposure=s.exposure,
                  strengths=[int(x) for x in str(s.strengths).split(",") if x.strip()],
                  distortions=[d.strip() for d in s.distortions.split(",") if d.strip()] or None)

  def make():
    marker = root / "render.json"
    if not (marker.exists() and json.loads(marker.read_text()) == settings):
      synthetic.generate(str(root), workers=workers, **settings)
      marker.write_text(json.dumps(settings))  # last: an interrupted render is redone
    builder.build(SYNTHETIC, str(root / "labels.json"), str(root / "videos"), str(out),
                  frames, size, split=f"hash:{s.test_fraction}", workers=workers,
                  progress=False, honour_rotation=config.data.honour_rotation)

  _process_0_first("factory.ensure_synthetic", make)
  return out


def train_data_dir(config, workdir, *, workers: int = 0) -> pathlib.Path:
  """The TFDS data_dir of the training set, the synthetic one built first if enabled."""
  if config.data.synthetic.enabled:
    return ensure_synthetic(config, workdir, config.data.frames, config.data.size,
                            workers=workers)
  return pathlib.Path(config.data.data_dir)


def ensure_synthetic_qa(config, workdir, frames: int, size: int, *, name: str,
                        workers: int = 0) -> pathlib.Path:
  """The synthetic set's multiple-choice QA set ``name`` ("which distortion is most
  visible?", `qa.synthetic_questions` over its `config.eval.split` clips, seeded by
  `config.data.synthetic.seed`, `config.eval.qa_num_options` options) written beside the
  clips as `synthetic_videos/{name}.json` and built at ``frames`` x ``size``, after
  `ensure_synthetic`; returns the TFDS data_dir. Both steps are skipped when their inputs
  are unchanged; process 0 goes first, as in ensure_synthetic."""
  from data_pipelines import labels, qa

  s = config.data.synthetic
  out = ensure_synthetic(config, workdir, frames, size, workers=workers)
  root = out.parent / "synthetic_videos"
  bench = labels.benchmark(SYNTHETIC, split=f"hash:{s.test_fraction}")

  def make():
    distortions = json.loads((root / "distortions.json").read_text())
    ids = [v for v in distortions if labels.split_of(bench, v) == config.eval.split]
    if not ids:
      raise ValueError(f"config.eval.qa_sets={name!r}: no synthetic clip is in split "
                       f"config.eval.split={config.eval.split!r} (config.data.synthetic."
                       f"test_fraction={s.test_fraction}, num_videos={s.num_videos})")
    questions = qa.write_synthetic_questions(root / "distortions.json", root / f"{name}.json",
                                             seed=s.seed, num_options=config.eval.qa_num_options,
                                             video_ids=ids)
    qa.build(name, questions, str(root / "videos"), str(out), frames, size, workers=workers,
             progress=False, honour_rotation=config.data.honour_rotation)

  _process_0_first("factory.ensure_synthetic_qa", make)
  return out
