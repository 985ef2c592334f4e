"""Checks a run config before anything compiles and reports every problem at once.

`validate(config, num_devices=jax.device_count())` raises `ConfigError`, one line per bad
field, each naming it as `config.a.b=value` and saying what is wrong and what would be right:
unknown or mistyped fields (against configs/base.py), choices, numeric ranges, frame sizes,
the device mesh against the batch sizes, SlowFast's frame constraints, and (with
`check_paths`) the checkpoint, tokenizer and built data sets on disk.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import pathlib
import runpy
from typing import Any, Mapping

import numpy as np

from data_pipelines import builder
from vqathinker_jax.model import (attention_kernels, config as model_config, layers, llm,
                                  sharding, slowfast)
from vqathinker_jax.eval import report
from vqathinker_jax.rl import grpo, rewards, rollout
from vqathinker_jax.text import tokenizer as tok_lib
from vqathinker_jax.train import sft, state as train_state

MODES = ("train", "eval", "predict", "smoke")  # config.mode; main dispatches on them
# Choice lists come from the code that takes the value (one source per rule).
CHOICES = {
    "mode": MODES,
    "model.family": tok_lib.FAMILIES,
    "model.dtype": tuple(model_config.DTYPES),
    "model.param_dtype": tuple(model_config.DTYPES),
    "model.attention": attention_kernels.IMPLEMENTATIONS,
    "model.arch.vision.norm_type": layers.NORM_TYPES,
    "model.arch.motion.depth": tuple(slowfast.STAGE_DEPTHS),
    "sft.answer": sft.ANSWERS,
    "grpo.loss_type": grpo.LOSS_TYPES,
    "grpo.kl_estimator": grpo.KL_ESTIMATORS,
    "grpo.remat": tuple(llm.REMAT_POLICIES),
    "grpo.decode_layout": rollout.LAYOUTS,
    "rewards.pairing": rewards.PAIRINGS,
    "rewards.temporal_scope": rewards.TEMPORAL_SCOPES,
    "rewards.invalid": rewards.INVALID_SCORES,
    "rewards.decimals": rewards.DECIMAL_COUNTS,
    "train.optimizer.schedule": train_state.SCHEDULES,
    "eval.prompt_layout": tok_lib.LAYOUTS,
    "predict.prompt_layout": tok_lib.LAYOUTS,
    "eval.parse": report.PARSERS,
    "predict.parse": report.PARSERS,
}
# URL workdirs: scheme -> the fsspec file system epath writes it with.
URL_FILESYSTEMS = {"gs": "gcs", "s3": "s3", "az": "az"}
# Sections whose per-field rules their dataclass states (its __post_init__).
DATACLASSES = {"grpo": grpo.GRPOConfig, "rewards": rewards.RewardConfig}
# Frame sides must be whole 2x2 groups of ViT patches (patch 14 x pixel-shuffle 2) so that
# each frame becomes (S/28)^2 tokens; a checkpoint's own patch size is not read here.
CHECKPOINT_SIZE_UNIT = 28
BASE_PATH = pathlib.Path(__file__).resolve().parents[1] / "configs" / "base.py"
_MISSING = object()


class ConfigError(ValueError):
  """The config has problems; `problems` lists them, the message has one per line."""

  def __init__(self, problems: list[str]):
    self.problems = list(problems)
    n = len(self.problems)
    super().__init__(f"{n} problem{'s' * (n != 1)} in the config:\n"
                     + "\n".join("  " + p for p in self.problems))


@functools.cache
def base_config() -> dict | None:
  """configs/base.py's `get_config()` as a dict; None where configs/ is not beside the
  package (a non-editable install), which skips the unknown-field check."""
  if not BASE_PATH.is_file():
    return None
  return runpy.run_path(str(BASE_PATH))["get_config"]().to_dict()


def validate(config, *, num_devices: int | None = None, check_paths: bool = True,
             workdir: str | pathlib.Path | None = None) -> None:
  """Raise ConfigError listing every problem of ``config`` (a ConfigDict or nested mapping).

  ``num_devices``: check the mesh against this many devices (None: shape only).
  ``check_paths``: also check the checkpoint, tokenizer, SlowFast file and data sets on disk
  (and ``workdir``, the run's output directory: a local path that is not a file, or a
  bucket URL such as gs://bucket/run that this Python can write).
  """
  cfg = config.to_dict() if hasattr(config, "to_dict") else _plain(config)
  c = _Checker(cfg)
  base = base_config()
  if base is not None:
    _check_schema(c, base, cfg, "")
  _check_values(c)
  _check_qa(c, check_paths)
  _check_model(c)
  _check_mesh(c, num_devices)
  _check_motion(c, check_paths)
  if check_paths:
    _check_paths(c)
    if workdir is not None:
      _check_workdir(c, str(workdir))
  if c.problems:
    raise ConfigError(c.problems)


def _plain(x):
  return {k: _plain(v) for k, v in x.items()} if isinstance(x, Mapping) else x


class _Checker:
  """Field access by dotted path and the problem list (one problem per field)."""

  def __init__(self, cfg: dict):
    self.cfg, self.problems, self._seen = cfg, [], set()

  def get(self, path: str) -> Any:
    node = self.cfg
    for key in path.split("."):
      if not isinstance(node, Mapping) or key not in node:
        return _MISSING
      node = node[key]
    return node

  def bad(self, path: str, msg: str, *, value: bool = True) -> None:
    if path in self._seen:  # a wrong type already said it; derived checks stay quiet
      return
    self._seen.add(path)
    v = self.get(path)
    head = f"config.{path}={v!r}" if value and v is not _MISSING else f"config.{path}"
    self.problems.append(f"{head}: {msg}")

  def typed(self, path: str, kind: type) -> Any:
    """The value if it is a ``kind`` (int counts as float, bool never as a number), else
    None; a present value of the wrong type is reported."""
    v = self.get(path)
    if v is _MISSING:
      return None
    ok = (isinstance(v, bool) if kind is bool else
          isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else
          isinstance(v, int) and not isinstance(v, bool) if kind is int else isinstance(v, kind))
    if not ok:
      self.bad(path, f"must be {_KIND_NAMES[kind]}, not {type(v).__name__}")
      return None
    return v

  def int_(self, path):
    return self.typed(path, int)

  def num(self, path):
    return self.typed(path, float)

  def str_(self, path):
    return self.typed(path, str)

  def at_least(self, path: str, lo, why: str = "", kind=int) -> None:
    v = self.typed(path, kind)
    if v is not None and v < lo:
      self.bad(path, f"must be >= {lo}{_why(why)}")

  def positive(self, path: str, why: str = "") -> None:
    v = self.num(path)
    if v is not None and not v > 0:
      self.bad(path, f"must be > 0{_why(why)}")


_KIND_NAMES = {int: "an int", float: "a number (int or float)", bool: "a bool (True/False)",
               str: "a string"}


def _why(why: str) -> str:
  return f" ({why})" if why else ""


def _suggest(word, options, quote: bool = False) -> str:
  close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
  return f" (did you mean {close[0]!r}?)" if close and quote else \
      f" (did you mean {close[0]}?)" if close else ""


# ---------------------------------------------------------------------- schema ---

def _check_schema(c: _Checker, base: Mapping, cfg: Mapping, prefix: str) -> None:
  """Every key of ``cfg`` exists in base with a compatible type; none is missing."""
  for key, value in cfg.items():
    path = prefix + str(key)
    if key not in base:
      c.bad(path, f"unknown field{_suggest(key, base)}; the fields are those of configs/base.py",
            value=False)
      continue
    ref = base[key]
    if isinstance(ref, Mapping) != isinstance(value, Mapping):
      want = "a section (as in configs/base.py)" if isinstance(ref, Mapping) else \
          _KIND_NAMES.get(type(ref), type(ref).__name__)
      c.bad(path, f"must be {want}, not {type(value).__name__}")
    elif isinstance(ref, Mapping):
      _check_schema(c, ref, value, path + ".")
    elif type(ref) in _KIND_NAMES:
      c.typed(path, type(ref))
  for key in base:
    if key not in cfg:
      c.bad(prefix + str(key), "missing field; build run configs from configs/base.py's "
            "get_config() and override what differs", value=False)


# ---------------------------------------------------------------------- values ---

def _check_values(c: _Checker) -> None:
  for path, options in CHOICES.items():
    v = c.get(path)
    if v is not _MISSING and v not in options:
      c.bad(path, f"must be one of {', '.join(map(repr, options))}"
            f"{_suggest(v, options, quote=True)}")

  for section, cls in DATACLASSES.items():
    _check_dataclass(c, section, cls)
  g = "grpo."

  for f in ("train.batch_size", "sft.batch_size", "eval.batch_size", "predict.batch_size",
            "smoke.batch"):
    c.at_least(f, 1, "videos per batch")
  batch = c.int_("train.batch_size")
  for f in ("micro_batch_size", "logprob_micro_batch_size"):
    mb = c.int_(g + f)
    if mb and mb > 0 and batch and batch >= 1 and batch % mb:
      c.bad(g + f, f"must divide config.train.batch_size={batch} (0: the whole batch); "
            f"divisors: {_divisors(batch)}")

  steps = c.int_("sft.steps")
  c.at_least("sft.steps", 0, "0: no SFT warm-start")
  if steps:
    c.positive("sft.lr")
  if steps and c.get("sft.answer") == "random_scene" and not (
      c.get("data.synthetic.enabled") is True and (c.get("data.synthetic.scenes") or 0) >= 1):
    c.bad("sft.answer", "random_scene draws a score per scene of the synthetic set: it needs "
          "config.data.synthetic.enabled=True and config.data.synthetic.scenes >= 1 (or use "
          "'random': a score per video)")
  think = c.str_("sft.think")
  if think is not None:
    try:
      think.format(quality="x")
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
      c.bad("sft.think", f"must format with only {{quality}} (str.format failed: "
            f"{type(e).__name__}: {e}); write literal braces as {{{{ }}}}")

  t = "train."
  c.at_least(t + "num_steps", 0, "0: from num_epochs")
  if c.int_(t + "num_steps") == 0:
    c.at_least(t + "num_epochs", 0, "config.train.num_steps=0 takes the step count from it; "
               "0: no GRPO (SFT only)")
    if c.get(t + "num_epochs") == 0 and c.get("sft.steps") == 0:
      c.bad(t + "num_epochs", "with config.train.num_steps=0 and config.sft.steps=0 nothing "
            "is trained: set config.sft.steps, or GRPO steps or epochs")
  for f in ("log_every", "checkpoint_every", "keep_checkpoints"):
    c.at_least(t + f, 1)
  c.at_least(t + "eval_every", 0, "0: only after training")
  start, end = c.int_(t + "profile_start"), c.int_(t + "profile_end")
  if start is not None and end is not None and (start, end) != (-1, -1) and \
      not 0 <= start < end:
    c.bad(t + "profile_end" if start >= 0 else t + "profile_start",
          f"the trace needs 0 <= config.train.profile_start < config.train.profile_end "
          f"(got {start}, {end}); both -1: no trace")
  o = t + "optimizer."
  c.positive(o + "lr")
  c.at_least(o + "warmup_steps", 0)
  c.at_least(o + "weight_decay", 0, kind=float)
  c.at_least(o + "max_grad_norm", 0, "0: no clipping", kind=float)
  for f in ("b1", "b2"):
    v = c.num(o + f)
    if v is not None and not 0 <= v < 1:
      c.bad(o + f, "must be in [0, 1)")
  c.positive(o + "eps")

  for f in ("data.frames", "eval.frames", "predict.frames", "smoke.frames"):
    c.at_least(f, 1, "frames per video")
  for f in ("eval.max_new_tokens", "predict.max_new_tokens"):
    c.at_least(f, 1)
  c.at_least("eval.max_videos", 0, "0: all")
  c.at_least("smoke.text_tokens", 0)
  for f in ("read_threads", "prefetch"):
    c.at_least("data." + f, 1)
  c.at_least("data.worker_count", 0, "0: read in the trainer's process")
  modes = c.str_("data.perturb_modes")
  if modes:
    from data_pipelines import perturb
    unknown = [m for m in (s.strip() for s in modes.split(",")) if m not in perturb.MODES]
    if unknown:
      c.bad("data.perturb_modes", f"unknown modes {unknown}; choose from "
            f"{', '.join(perturb.MODES)} (comma-separated; '' = all)")

  s = "data.synthetic."
  kinds = c.str_(s + "distortions")
  if kinds:
    from data_pipelines import synthetic
    unknown = [k for k in (x.strip() for x in kinds.split(",")) if k not in synthetic.WEIGHTS]
    if unknown:
      c.bad(s + "distortions", f"unknown kinds {unknown}; choose from "
            f"{', '.join(synthetic.WEIGHTS)} (comma-separated; '' = all)")
  strengths = c.str_(s + "strengths")
  if strengths is not None:
    from data_pipelines import synthetic
    parts = [x.strip() for x in strengths.split(",")]
    allowed = [str(x) for x in range(1, synthetic.LEVELS)]
    if not parts or any(x not in allowed for x in parts):
      c.bad(s + "strengths", f"must be levels among {','.join(allowed)}, comma-separated")
  exposure = c.str_(s + "exposure")
  if exposure is not None:
    from data_pipelines import synthetic
    if exposure not in synthetic.EXPOSURE:
      c.bad(s + "exposure", f"must be one of {', '.join(map(repr, synthetic.EXPOSURE))}"
            f"{_suggest(exposure, synthetic.EXPOSURE, quote=True)}")
  c.at_least(s + "num_videos", 1)
  c.at_least(s + "scenes", 0, "0: one scene per clip")
  c.at_least(s + "num_frames", 1)
  for f in ("height", "width"):
    v = c.int_(s + f)
    if v is not None and (v < 2 or v % 2):
      c.bad(s + f, f"must be even and >= 2 (yuv420p video), e.g. {max(2, v + v % 2)}")
  frac = c.num(s + "test_fraction")
  if frac is not None and not 0 <= frac < 1:
    c.bad(s + "test_fraction", "must be in [0, 1)")

  mode = c.get("mode")
  if mode in ("train", "eval"):
    sets = c.str_("eval.sets")
    if sets is not None and not _names(sets):
      c.bad("eval.sets", "must name at least one data set (comma-separated), e.g. 'lsvq_test'")
  if mode == "predict":
    videos = c.str_("predict.videos")
    if videos is not None and not _names(videos):
      c.bad("predict.videos", "must list video paths (comma-separated) or a folder of videos "
            "for mode='predict'")
    if c.get("model.checkpoint") == "":
      c.bad("model.checkpoint", "must be set for mode='predict': a trained checkpoint "
            "directory (random weights score nothing)")


def _check_qa(c: _Checker, check_paths: bool) -> None:
  """config.eval.qa_sets / qa_num_options (eval/understanding.py): set names, the option
  count of generated questions, and (``check_paths``) each named set built on disk."""
  from data_pipelines import labels, qa
  lo, hi = 2, qa.MAX_OPTIONS
  v = c.int_("eval.qa_num_options")
  if v is not None and not lo <= v <= hi:
    c.bad("eval.qa_num_options", f"must be in [{lo}, {hi}] (the answer, then distractors from "
          f"the {hi - 1} synthetic kinds and 'none')")
  sets = c.str_("eval.qa_sets")
  if sets is None:
    return
  names = _names(sets)
  for name in names:
    try:
      labels.benchmark(name)  # the data set name rule
    except ValueError as e:
      c.bad("eval.qa_sets", f"{e} (QA set names, comma-separated)")
      return
  synthetic_qa = "synthetic_qa"  # eval/understanding.SYNTHETIC_QA: generated, then built
  if c.get("data.synthetic.enabled") is True:
    return  # generated or under the workdir's data_dir: nothing to look up yet
  data_dir, frames, size = c.get("data.data_dir"), c.get("eval.frames"), c.get("eval.size")
  if not (check_paths and c.get("mode") in ("train", "eval") and isinstance(data_dir, str)
          and data_dir and pathlib.Path(data_dir).expanduser().is_dir()
          and isinstance(frames, int) and isinstance(size, int)):
    return
  rot = c.get("data.honour_rotation") is not False
  for name in names:
    info = pathlib.Path(qa.dataset_dir(pathlib.Path(data_dir).expanduser(), name, frames, size,
                                       rot)) / "dataset_info.json"
    if not info.is_file():
      gen = (" (it is generated only with config.data.synthetic.enabled=True)"
             if name == synthetic_qa else "")
      c.bad("eval.qa_sets", f"QA set {name!r} at {frames}x{size} is not built under "
            f"config.data.data_dir={data_dir!r}{gen}: {info.parent} is missing; build it with "
            f"`python -m data_pipelines.qa --name {name} --questions QUESTIONS.json --videos "
            f"VIDEOS --data_dir {data_dir} --frames {frames} --size {size}`")
      return


def _check_dataclass(c: _Checker, section: str, cls) -> None:
  """Each field of `config.<section>` against ``cls``'s own rules: the dataclass is built
  with that field alone (the others at their defaults), so every bad field is reported,
  its message (which names the field first) under `config.<section>.<field>`."""
  for f in dataclasses.fields(cls):
    path = f"{section}.{f.name}"
    if c.get(path) is _MISSING or path in CHOICES:
      continue  # choices are reported above, with a suggestion
    kind = float if isinstance(f.default, float) else type(f.default)
    v = c.typed(path, kind) if kind in _KIND_NAMES else c.get(path)
    if v is None:
      continue
    try:
      cls(**{f.name: v})
    except ValueError as e:
      msg = str(e).removeprefix(f"{f.name} ").rsplit(", got ", 1)[0]
      c.bad(path, msg)
    except TypeError:
      pass  # a wrong type: the schema check says so


def _names(s: str) -> list[str]:
  return [x.strip() for x in s.split(",") if x.strip()]


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


# ----------------------------------------------------------------------- model ---

def _check_model(c: _Checker) -> None:
  if c.get("model.family") == tok_lib.QWEN25VL:
    for path in ("model.slowfast_weights", "model.arch.motion.enabled"):
      if c.get(path) not in ("", False, None):
        c.bad(path, "the motion branch is InternVL's; config.model.family=qwen2_5_vl runs "
              "without it (docs/method.md §8)")
  spg = c.num("model.second_per_grid_t")
  if spg is not None and not spg > 0:
    c.bad("model.second_per_grid_t", "must be > 0 (seconds of video per frame pair)")
  rate = c.num("model.drop_path_rate")
  if rate is not None and rate != -1 and not 0 <= rate < 1:
    c.bad("model.drop_path_rate", "must be in [0, 1) (the last ViT block's drop-path rate; "
          "0 = off) or -1 (the checkpoint's own)")
  elif rate == -1 and c.get("model.checkpoint") == "":
    c.bad("model.drop_path_rate", "-1 reads the rate from config.model.checkpoint's "
          "config.json, and there is none (random init): give the rate, or 0 for none")
  a = "model.arch."
  vocab, token = c.int_(a + "text.vocab_size"), c.int_(a + "image_token_id")
  c.at_least(a + "text.vocab_size", 1)
  if token is not None and vocab is not None and not 0 <= token < vocab:
    c.bad(a + "image_token_id", f"must be in [0, config.{a}text.vocab_size={vocab}) "
          "(it indexes the embedding table)")
  for sec in ("text", "vision"):
    for f in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
      c.at_least(f"{a}{sec}.{f}", 1)
  c.at_least(a + "text.num_kv_heads", 1)
  c.at_least(a + "text.head_dim", 2)
  heads, kv = c.int_(a + "text.num_heads"), c.int_(a + "text.num_kv_heads")
  if heads and kv and heads >= 1 and kv >= 1 and heads % kv:
    c.bad(a + "text.num_heads", f"must be a multiple of config.{a}text.num_kv_heads={kv} "
          "(grouped-query attention)")
  width, vheads = c.int_(a + "vision.hidden_size"), c.int_(a + "vision.num_heads")
  if width and vheads and width >= 1 and vheads >= 1 and width % vheads:
    c.bad(a + "vision.hidden_size", f"must be divisible by config.{a}vision.num_heads={vheads}")
  patch, image = c.int_(a + "vision.patch_size"), c.int_(a + "vision.image_size")
  c.at_least(a + "vision.patch_size", 1)
  if patch and image and patch >= 1 and image % (2 * patch):
    c.bad(a + "vision.image_size", f"must be a multiple of 2 x config.{a}vision.patch_size = "
          f"{2 * patch} (a whole grid of 2x2 patch groups)")

  unit = CHECKPOINT_SIZE_UNIT
  why = "ViT patch 14 x pixel-shuffle 2"
  if c.get("model.checkpoint") == "" and patch and patch >= 1:
    unit, why = 2 * patch, f"ViT patch {patch} x pixel-shuffle 2"
  for f in ("data.size", "eval.size", "predict.size", "smoke.image_size"):
    v = c.int_(f)
    if v is not None and (v < unit or v % unit):
      c.bad(f, f"must be a positive multiple of {unit} ({why}), e.g. "
            f"{max(unit, round(v / unit) * unit)}")


# ------------------------------------------------------------------------ mesh ---

def _available(n: int) -> str:
  return f"{n} {'is' if n == 1 else 'are'} available"


def _batch_fields(c: _Checker) -> list[str]:
  """Batch sizes the mode splits over the mesh's batch shards."""
  mode = c.get("mode")
  if mode == "train":
    sft = c.get("sft.steps")
    return ["train.batch_size"] + (["sft.batch_size"] if isinstance(sft, int) and sft > 0
                                   else []) + ["eval.batch_size"]
  return {"eval": ["eval.batch_size"], "predict": ["predict.batch_size"]}.get(mode, [])


def _check_mesh(c: _Checker, num_devices: int | None) -> None:
  dims = {}
  for axis in sharding.MESH_AXES:
    v = c.int_(f"mesh.{axis}")
    if v is None:
      return
    if v != -1 and v < 1:
      c.bad(f"mesh.{axis}", "must be a positive int or -1 (all remaining devices)")
      return
    dims[axis] = v
  shape = " × ".join(f"{a}={d}" for a, d in dims.items())
  free = [a for a, d in dims.items() if d == -1]
  if len(free) > 1:
    c.bad("mesh", f"at most one axis may be -1, got {shape}", value=False)
    return
  # The same resolution as sharding.make_mesh.
  known = math.prod(d for d in dims.values() if d != -1)
  if num_devices is not None:
    if free and num_devices % known:
      c.bad("mesh", f"{shape} needs a multiple of {known} devices, but {_available(num_devices)}; make the fixed axes' product divide {num_devices}", value=False)
      return
    if free:
      dims[free[0]] = num_devices // known
    elif known != num_devices:
      c.bad("mesh", f"{shape} uses {known} devices, but {_available(num_devices)}; make the "
            f"product {num_devices} or set one axis to -1 (the remaining devices)", value=False)
      return
  if any(dims[a] == -1 for a in sharding.BATCH_AXES):
    return  # the batch shards are known only with the device count
  shards = math.prod(dims[a] for a in sharding.BATCH_AXES)
  mesh_txt = " × ".join(f"{a}={dims[a]}" for a in ("data", "fsdp"))
  for f in _batch_fields(c):
    v = c.get(f)
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v % shards:
      c.bad(f, f"not divisible by the {shards} batch shards of mesh {mesh_txt}; use a multiple "
            f"of {shards} or a mesh whose data × fsdp divides {v}")


# ---------------------------------------------------------------------- motion ---

def _motion(c: _Checker, check_paths: bool) -> tuple[slowfast.SlowFastConfig, str] | None:
  """SlowFast's config and why the motion branch is on, or None when it is off."""
  ckpt, weights = c.get("model.checkpoint"), c.get("model.slowfast_weights")
  names = {f.name for f in dataclasses.fields(slowfast.SlowFastConfig)}
  pick = lambda d: {k: v for k, v in d.items() if k in names}
  if ckpt == "" and c.get("model.arch.motion.enabled") is True:
    try:
      return (slowfast.SlowFastConfig(**pick(c.get("model.arch.motion"))),
              "config.model.arch.motion.enabled=True")
    except TypeError:
      return None
  stored, has_motion = {}, False
  if isinstance(ckpt, str) and ckpt and check_paths:
    from vqathinker_jax.model import hf_checkpoint as checkpoint
    path = pathlib.Path(ckpt).expanduser()
    try:  # best effort (headers only): a missing checkpoint is reported by _check_paths
      stored = json.loads((path / "config.json").read_text()).get(checkpoint.MOTION_CONFIG_KEY, {})
      has_motion = bool(stored) or any(
          k.startswith((checkpoint.MOTION_PREFIX, checkpoint.SLOWFAST_PREFIX))
          for k in checkpoint.TensorFiles(path).keys())
    except Exception:  # noqa: BLE001 - unreadable files are for the loader to explain
      pass
  if isinstance(weights, str) and weights:
    return slowfast.SlowFastConfig(**pick(stored)), "config.model.slowfast_weights is set"
  if has_motion:
    return slowfast.SlowFastConfig(**pick(stored)), "config.model.checkpoint has one"
  return None


def _check_motion(c: _Checker, check_paths: bool) -> None:
  found = _motion(c, check_paths)
  if found is None:
    return
  cfg, why = found
  mode = c.get("mode")
  uses = {"train": [("data", True), ("eval", c.get("eval.train_selection") is True)],
          "eval": [("eval", c.get("eval.train_selection") is True)],
          "predict": [("predict", c.get("predict.train_selection") is True)]}.get(mode, [])
  for sec, train in uses:
    frames, size = c.get(f"{sec}.frames"), c.get(f"{sec}.size")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in (frames, size)):
      continue
    selection = "training" if train else "evaluation"
    # Frames first on frames large enough for any pool, so each problem names its field.
    for field, hw in ((f"{sec}.frames", 4096), (f"{sec}.size", size)):
      try:
        slowfast.check_frames((1, frames, hw, hw, 3), np.float32, train, cfg)
      except ValueError as e:
        c.bad(field, f"SlowFast (motion branch on: {why}) cannot take it with the {selection} "
              f"frame selection: {e}")
        break


# ----------------------------------------------------------------------- paths ---

def _check_workdir(c: _Checker, workdir: str) -> None:
  """A local directory (not a file), or a bucket URL that epath can write to."""
  head = f"--workdir={workdir!r}"
  if "://" not in workdir:
    if workdir.startswith(("gs:/", "s3:/")):  # what pathlib leaves of gs://b/run
      c.problems.append(f"{head}: a URL with one slash; write {workdir.split(':/', 1)[0]}://"
                        "BUCKET/PATH")
    elif pathlib.Path(workdir).expanduser().is_file():
      c.problems.append(f"{head}: is a file; give a directory for the run's outputs (it is "
                        "created if missing)")
    return
  scheme, rest = workdir.split("://", 1)
  if scheme not in URL_FILESYSTEMS:
    c.problems.append(f"{head}: the scheme {scheme}:// is not one epath writes to; give a "
                      f"local path or one of {', '.join(f'{s}://' for s in URL_FILESYSTEMS)}")
  elif not rest.split("/", 1)[0]:
    c.problems.append(f"{head}: no bucket; write {scheme}://BUCKET/PATH")
  else:
    import importlib.util
    import fsspec
    try:  # epath's backend for the scheme (TensorFlow's gfile, where installed, serves gs://)
      if not (scheme == "gs" and importlib.util.find_spec("tensorflow")):
        fsspec.get_filesystem_class(URL_FILESYSTEMS[scheme])
    except ImportError as e:
      c.problems.append(f"{head}: this Python cannot write {scheme}:// ({e}); install its "
                        "fsspec file system (gs://: gcsfs, in the `tpu` extra)")


def _check_paths(c: _Checker) -> None:
  mode = c.get("mode")
  ckpt, weights, tok = (c.get(f"model.{f}") for f in ("checkpoint", "slowfast_weights",
                                                       "tokenizer"))
  if isinstance(ckpt, str) and ckpt:
    p = pathlib.Path(ckpt).expanduser()
    if not p.is_dir():
      c.bad("model.checkpoint", "no such directory; point it at a local Hugging Face InternVL "
            "checkpoint (config.json + *.safetensors), or '' for a random init")
    elif not (p / "config.json").is_file():
      c.bad("model.checkpoint", f"has no config.json; expected a Hugging Face checkpoint "
            f"directory (config.json + *.safetensors) at {p}")
  if isinstance(weights, str) and weights and not pathlib.Path(weights).expanduser().is_file():
    c.bad("model.slowfast_weights", "no such file; convert the Kinetics-400 SlowFast once with "
          "`python -m vqathinker_jax.tools.convert_slowfast SLOWFAST_8x8_R50.pyth "
          "slowfast.safetensors`, or '' for no motion branch")
  if isinstance(weights, str) and weights and ckpt == "":
    c.bad("model.slowfast_weights", "needs config.model.checkpoint: the SlowFast weights join a "
          "loaded InternVL checkpoint (config.model.arch.motion.enabled=True gives a random "
          "init a random motion branch)")
  if tok == "" and ckpt == "" and mode in ("train", "eval", "predict"):
    c.bad("model.tokenizer", f"mode={mode!r} needs a tokenizer: set model.tokenizer, "
          "model.checkpoint, or 'demo' (the tiny demo tokenizer)")
  elif isinstance(tok, str) and tok not in ("", "demo") and \
      not pathlib.Path(tok).expanduser().is_dir():
    c.bad("model.tokenizer", "no such directory; give a tokenizer directory, '' (the "
          "checkpoint's) or 'demo'")

  if mode == "predict":
    videos = c.get("predict.videos")
    for v in _names(videos) if isinstance(videos, str) else []:
      if not pathlib.Path(v).expanduser().exists():
        c.bad("predict.videos", f"{v!r} does not exist (give video files or a folder)")
        break

  if mode not in ("train", "eval") or c.get("data.synthetic.enabled") is True:
    return
  data_dir = c.get("data.data_dir")
  if not isinstance(data_dir, str):
    return
  if not data_dir:
    c.bad("data.data_dir", f"must be set for mode={mode!r}: the TFDS data_dir where "
          "`python -m data_pipelines.prepare` built the data sets (or turn on "
          "config.data.synthetic.enabled)")
    return
  if not pathlib.Path(data_dir).expanduser().is_dir():
    c.bad("data.data_dir", "no such directory; build the data sets into it with "
          "`python -m data_pipelines.prepare --data_dir DIR ...`")
    return
  wanted = []
  if mode == "train":
    wanted.append(("data.train", "data.train_split", "data.frames", "data.size",
                   c.get("data.train")))
  sets = c.get("eval.sets")
  for name in _names(sets) if isinstance(sets, str) else []:
    wanted.append(("eval.sets", "eval.split", "eval.frames", "eval.size", name))
  for field, split_field, frames_field, size_field, name in wanted:
    frames, size, split = c.get(frames_field), c.get(size_field), c.get(split_field)
    if isinstance(name, str) and name and isinstance(frames, int) and isinstance(size, int):
      problem = _dataset_problem(data_dir, name, split, frames, size, split_field,
                                 c.get("data.honour_rotation") is not False)
      if problem:
        c.problems.append(f"config.{field}: {problem}")


def _dataset_problem(data_dir: str, name: str, split, frames: int, size: int,
                     split_field: str, honour_rotation: bool = True) -> str | None:
  """Why `pipeline.data_source(data_dir, name, split, frames, size, honour_rotation)` would
  not find it (config.data.honour_rotation=False reads the `_norot` sets)."""
  root = pathlib.Path(data_dir).expanduser() / builder.tfds_name(name, frames, size,
                                                                 honour_rotation)
  info = root / builder.VERSION / "dataset_info.json"
  where = f"{name!r} at {frames}x{size} under config.data.data_dir={data_dir!r}"
  if not info.is_file():
    found = sorted(p.parent.name for p in root.glob("*/dataset_info.json"))
    older = f" (found only builder versions {found}: rebuild with --overwrite)" if found else ""
    return (f"{where} is not built: {info.parent} is missing{older}; build it with `python -m "
            f"data_pipelines.prepare --name {name} --labels LABELS --videos VIDEOS --data_dir "
            f"{data_dir} --frames {frames} --size {size}"
            f"{'' if honour_rotation else ' --nohonour_rotation'}`")
  try:
    splits = sorted(s["name"] for s in json.loads(info.read_text()).get("splits", []))
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"{where}: unreadable {info} ({e}); rebuild it with data_pipelines.prepare --overwrite"
  if split not in splits:
    return (f"{where} has splits {splits} but not config.{split_field}={split!r} (its split "
            f"rule put no video there; see labels.BENCHMARKS or prepare --split)")
  return None
