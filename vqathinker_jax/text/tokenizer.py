"""Tokenizer files, the InternVL `internvl2_5` chat template and the VQAThinker prompt (docs/method.md §2).

A checkpoint's tokenizer is read with `tokenizers` from ``tokenizer.json`` or, as InternVL3
ships it, from ``vocab.json`` + ``merges.txt`` (rebuilt the way transformers converts a Qwen2
tokenizer) with added tokens from ``tokenizer_config.json`` / ``added_tokens.json``.
Prompts are text with ``<image>`` placeholders whose ids are spliced in (``<img>`` +
``<IMG_CONTEXT>``×N + ``</img>``; the motion slot ``<img><IMG_CONTEXT></img>``). Splicing
equals tokenizing the expanded string, since added tokens split the text before BPE, and
skips tokenizing thousands of ``<IMG_CONTEXT>`` strings.
Legend: B batch, T tokens.
"""

from __future__ import annotations

import dataclasses
import json

from etils import epath
import numpy as np
import tokenizers

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Qwen2.5-VL's: a video is <|vision_start|> <|video_pad|>×N <|vision_end|>.
VISION_START, VISION_END, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"
QWEN_SYSTEM_MESSAGE = "You are a helpful assistant."  # its chat template's default
# The model families (`ModelConfig.family`, `qwen_vl.FAMILY`: the same names).
INTERNVL, QWEN25VL = "internvl", "qwen2_5_vl"
FAMILIES = (INTERNVL, QWEN25VL)
IMAGE_PLACEHOLDER = "<image>"

# transformers' Qwen2Converter pre-tokenizer split.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# InternVL's default system message; the `internvl2_5` template always carries it (docs/method.md §6).
INTERNVL_SYSTEM_MESSAGE = ("你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家"
                           "合作单位联合开发的多模态大语言模型。")
QUESTION = ("You are doing the video quality assessment task. Here is the question: What is your "
            "overall rating on the quality of this video? The rating should be a float between 1 "
            "and 5, rounded to two decimal places, with 1 representing very poor quality and 5 "
            "representing excellent quality.")
FORMAT_INSTRUCTION = ("First output the thinking process in <think> </think> tags and then output "
                      "the final answer in <answer> </answer> tags.")


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """Ids of the chat and image tokens; a family's own are None in the other's vocabulary
  (InternVL's `<img>`, `</img>`, `<IMG_CONTEXT>`; Qwen2.5-VL's vision start/end and
  video pad)."""
  img_start: int | None
  img_end: int | None
  img_context: int | None
  im_start: int
  im_end: int
  eos: int
  pad: int
  vision_start: int | None = None
  vision_end: int | None = None
  video_pad: int | None = None

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Ids that end generation (`<|im_end|>` and the tokenizer's eos, deduplicated)."""
    return tuple(dict.fromkeys((self.im_end, self.eos)))


class Tokenizer:
  """A `tokenizers.Tokenizer` with the InternVL special-token ids resolved."""

  def __init__(self, backend: tokenizers.Tokenizer, eos_token: str = IM_END,
               pad_token: str | None = None):
    self.backend = backend
    tid, maybe = self.token_id, backend.token_to_id
    self.special = SpecialTokens(
        img_start=maybe(IMG_START), img_end=maybe(IMG_END), img_context=maybe(IMG_CONTEXT),
        im_start=tid(IM_START), im_end=tid(IM_END), eos=tid(eos_token),
        pad=tid(pad_token) if pad_token is not None else tid(eos_token),
        vision_start=maybe(VISION_START), vision_end=maybe(VISION_END),
        video_pad=maybe(VIDEO_PAD))

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def token_id(self, token: str) -> int:
    i = self.backend.token_to_id(token)
    if i is None:
      raise KeyError(f"token {token!r} is not in the vocabulary")
    return i

  def encode(self, text: str) -> np.ndarray:
    """int32 ids of ``text``; nothing is prepended or appended."""
    return np.asarray(self.backend.encode(text, add_special_tokens=False).ids, np.int32)

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def _token_content(tok) -> str | None:
  return tok.get("content") if isinstance(tok, dict) else tok


def from_vocab_merges(vocab: dict[str, int], merges: list[tuple[str, str]],
                      added: list[dict]) -> tokenizers.Tokenizer:
  """A Qwen2-style byte-level BPE (as transformers' Qwen2Converter builds it).

  ``added``: dicts with ``id``, ``content`` and optionally ``special``, ``lstrip``,
  ``rstrip``, ``normalized``, ``single_word``; ids are kept as given.
  """
  added_json = [{"id": int(t["id"]), "content": t["content"],
                 "single_word": bool(t.get("single_word", False)),
                 "lstrip": bool(t.get("lstrip", False)), "rstrip": bool(t.get("rstrip", False)),
                 "normalized": bool(t.get("normalized", not t.get("special", False))),
                 "special": bool(t.get("special", False))}
                for t in sorted(added, key=lambda t: int(t["id"]))]
  spec = {
      "version": "1.0", "truncation": None, "padding": None, "added_tokens": added_json,
      "normalizer": {"type": "NFC"},
      "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
          {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated",
           "invert": False},
          {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
           "use_regex": False}]},
      "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                         "use_regex": False},
      "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False},
      "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                "ignore_merges": False, "vocab": vocab, "merges": [list(m) for m in merges]},
  }
  backend = tokenizers.Tokenizer.from_str(json.dumps(spec))
  # `tokenizers` numbers added tokens after the vocabulary in order, whatever ids we give.
  wrong = [(t["content"], t["id"], backend.token_to_id(t["content"])) for t in added_json
           if backend.token_to_id(t["content"]) != t["id"]]
  if wrong:
    raise ValueError("added tokens must follow the vocabulary without gaps; (token, id, got): "
                     f"{wrong[:5]}")
  return backend


def load_tokenizer(path) -> Tokenizer:
  """The tokenizer of a checkpoint directory (``tokenizer.json``, else ``vocab.json`` +
  ``merges.txt`` with added tokens from ``tokenizer_config.json`` / ``added_tokens.json``)."""
  path = epath.Path(path)  # a workdir's demo tokenizer may be under gs://
  config_file = path / "tokenizer_config.json"
  config = json.loads(config_file.read_text()) if config_file.exists() else {}
  if (path / "tokenizer.json").exists():
    backend = tokenizers.Tokenizer.from_str((path / "tokenizer.json").read_text(encoding="utf-8"))
  elif (path / "vocab.json").exists() and (path / "merges.txt").exists():
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in
              (path / "merges.txt").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    added = {int(i): dict(t, id=int(i)) for i, t in config.get("added_tokens_decoder", {}).items()}
    # Tokens only in added_tokens.json are special iff the config names them as such.
    named = {_token_content(config.get(k)) for k in
             ("eos_token", "pad_token", "bos_token", "unk_token")}
    named |= {_token_content(t) for t in config.get("additional_special_tokens", [])}
    added_file = path / "added_tokens.json"
    if added_file.exists():
      for content, i in json.loads(added_file.read_text(encoding="utf-8")).items():
        added.setdefault(int(i), {"id": int(i), "content": content, "special": content in named})
    backend = from_vocab_merges(vocab, merges, list(added.values()))
  else:
    raise FileNotFoundError(f"{path} has neither tokenizer.json nor vocab.json + merges.txt")
  return Tokenizer(backend, eos_token=_token_content(config.get("eos_token")) or IM_END,
                   pad_token=_token_content(config.get("pad_token")))


def tokens_per_frame(image_size: int, patch_size: int = 14, downsample_ratio: float = 0.5) -> int:
  """Visual tokens per frame after pixel shuffle: 256 at 448 px, 400 at 560 px."""
  side = image_size // patch_size
  return int(round(side * downsample_ratio)) ** 2


LAYOUTS = ("train", "reference_eval")  # the training prompt; the reference's evaluation one


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """The VQAThinker user turn.

  ``layout``: ``"train"`` is docs/method.md §2 (one line per frame, the reference training prompt);
  ``"reference_eval"`` is the release's `batch_infer.py` string (``Frame1: <image>`` with
  no newlines, no space before "First output").
  """
  num_frames: int = 6
  tokens_per_frame: int = 256
  motion: bool = True
  system_message: str | None = None  # None: the family's (InternVL's; Qwen2.5-VL's)
  question: str = QUESTION
  format_instruction: str = FORMAT_INSTRUCTION
  layout: str = "train"
  # qwen2_5_vl: Qwen2.5-VL's chat template, the clip as one video item (`image_tokens`);
  # ``tokens_per_frame`` is then per frame pair ((size / 28)², `QwenVLConfig.video_grid`).
  family: str = INTERNVL

  def __post_init__(self):
    if self.layout not in LAYOUTS:
      raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
    if self.family not in FAMILIES:
      raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
    if self.family == QWEN25VL and self.motion:
      raise ValueError("the motion token is InternVL's: Qwen2.5-VL prompts have none")
    if self.system_message is None:
      object.__setattr__(self, "system_message", QWEN_SYSTEM_MESSAGE
                         if self.family == QWEN25VL else INTERNVL_SYSTEM_MESSAGE)
    if self.num_frames < 1 or self.tokens_per_frame < 1:
      raise ValueError("num_frames and tokens_per_frame must be positive")

  @property
  def num_images(self) -> int:
    """``<image>`` placeholders: a frame each (+ motion); one video item for Qwen2.5-VL."""
    return 1 if self.family == QWEN25VL else self.num_frames + int(self.motion)

  @property
  def num_context_tokens(self) -> int:
    """`<IMG_CONTEXT>` slots in the prompt: frames × tokens per frame (+ 1 motion slot);
    Qwen2.5-VL's <|video_pad|> slots: a token per frame pair (its temporal patch)."""
    if self.family == QWEN25VL:
      return -(-self.num_frames // 2) * self.tokens_per_frame
    return self.num_frames * self.tokens_per_frame + int(self.motion)


def user_text(cfg: PromptConfig) -> str:
  """The user turn with one ``<image>`` per frame (then the motion one, if any); for
  Qwen2.5-VL one ``<image>`` for the whole clip, then the question (its template puts
  the text right after the video item, no newline)."""
  if cfg.family == QWEN25VL:
    return IMAGE_PLACEHOLDER + cfg.question + " " + cfg.format_instruction
  if cfg.layout == "train":
    lines = ["Now you will receive a video:\n"]
    lines += [f"Frame{i + 1}:{IMAGE_PLACEHOLDER}\n" for i in range(cfg.num_frames)]
    if cfg.motion:
      lines.append(f"Motion Feature:{IMAGE_PLACEHOLDER}\n")
    return "".join(lines) + cfg.question + " " + cfg.format_instruction
  parts = ["Now you will receive a video:"]
  parts += [f"Frame{i + 1}: {IMAGE_PLACEHOLDER}" for i in range(cfg.num_frames)]
  if cfg.motion:
    parts.append(f"Motion Feature: {IMAGE_PLACEHOLDER}")
  return "".join(parts) + cfg.question + cfg.format_instruction


def chat_text(user: str, system_message: str = INTERNVL_SYSTEM_MESSAGE) -> str:
  """InternVL `internvl2_5` (MPT-style) template, open for the assistant's turn; Qwen2.5-VL's
  renders the same text (with its own system message)."""
  return (f"{IM_START}system\n{system_message}{IM_END}\n"
          f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n")


def image_tokens(cfg: PromptConfig) -> list[str]:
  """Replacement of each ``<image>`` in order: frames, then the motion slot (Qwen2.5-VL:
  the clip's one video item)."""
  if cfg.family == QWEN25VL:
    return [VISION_START + VIDEO_PAD * cfg.num_context_tokens + VISION_END]
  frame = IMG_START + IMG_CONTEXT * cfg.tokens_per_frame + IMG_END
  return [frame] * cfg.num_frames + ([IMG_START + IMG_CONTEXT + IMG_END] if cfg.motion else [])


def prompt_text(cfg: PromptConfig, expand: bool = True) -> str:
  """The whole prompt string; with ``expand`` the images are written out as the reference
  does before tokenizing."""
  text = chat_text(user_text(cfg), cfg.system_message)
  if expand:
    for rep in image_tokens(cfg):
      text = text.replace(IMAGE_PLACEHOLDER, rep, 1)
  return text


def prompt_ids(tokenizer: Tokenizer, cfg: PromptConfig) -> np.ndarray:
  """int32 ids of the full prompt, image slots spliced in."""
  s = tokenizer.special
  pieces = prompt_text(cfg, expand=False).split(IMAGE_PLACEHOLDER)
  if len(pieces) != cfg.num_images + 1:
    raise ValueError(f"prompt has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholders, expected "
                     f"{cfg.num_images} (does the question or system message contain one?)")
  if cfg.family == QWEN25VL:
    if s.video_pad is None or s.vision_start is None or s.vision_end is None:
      raise ValueError(f"the tokenizer has no {VISION_START}/{VIDEO_PAD}/{VISION_END}: not a "
                       "Qwen2.5-VL tokenizer")
    images = [[s.vision_start] + [s.video_pad] * cfg.num_context_tokens + [s.vision_end]]
  else:
    if s.img_context is None or s.img_start is None or s.img_end is None:
      raise ValueError(f"the tokenizer has no {IMG_START}/{IMG_CONTEXT}/{IMG_END}: not an "
                       "InternVL tokenizer")
    frame = [s.img_start] + [s.img_context] * cfg.tokens_per_frame + [s.img_end]
    images = [frame] * cfg.num_frames + ([[s.img_start, s.img_context, s.img_end]]
                                         if cfg.motion else [])
  out = [tokenizer.encode(pieces[0])]
  for image, piece in zip(images, pieces[1:]):
    out += [np.asarray(image, np.int32), tokenizer.encode(piece)]
  return np.concatenate(out).astype(np.int32)


def pad_batch(seqs, pad_id: int, length: int | None = None,
              side: str = "right") -> tuple[np.ndarray, np.ndarray]:
  """(ids_BT, attention_mask_BT) int32, padded to ``length`` (default: the longest)."""
  T = max(len(s) for s in seqs) if length is None else length
  ids_BT = np.full((len(seqs), T), pad_id, np.int32)
  mask_BT = np.zeros((len(seqs), T), np.int32)
  for b, s in enumerate(seqs):
    if len(s) > T:
      raise ValueError(f"sequence {b} has {len(s)} tokens, more than length {T}")
    sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
    ids_BT[b, sl], mask_BT[b, sl] = s, 1
  return ids_BT, mask_BT


def prompt_batch(tokenizer: Tokenizer, cfg: PromptConfig, batch_size: int,
                 length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(input_ids_BT, attention_mask_BT): the prompt for ``batch_size`` videos, right-padded
  to ``length`` (the prompt text does not depend on the video)."""
  ids = prompt_ids(tokenizer, cfg)
  return pad_batch([ids] * batch_size, tokenizer.special.pad, length)


# Multiple-choice quality questions (data_pipelines/qa.py): the frames as in the training
# prompt, then the question, one lettered option per line, and the <think>/<answer> format
# with the option's letter as the answer.
QA_QUESTION = ("You are doing the video quality assessment task. Here is the question: "
               "{question}\n{options}\nAnswer with the letter of the correct option.")
QA_FORMAT_INSTRUCTION = ("First output the thinking process in <think> </think> tags and then "
                         "output the letter of the correct option as the final answer in "
                         "<answer> </answer> tags.")
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def qa_prompt(cfg: PromptConfig, question: str, options) -> PromptConfig:
  """``cfg`` (frames, layout, system message) asking a multiple-choice question: its
  `prompt_ids` / `prompt_text` put ``options`` as lines "A. ...", "B. ..." after the
  question. With the train layout, for two options:

      ...Motion Feature:<image>
      You are doing the video quality assessment task. Here is the question: {question}
      A. {option 1}
      B. {option 2}
      Answer with the letter of the correct option. First output the thinking process ...
  """
  options = [str(o).strip() for o in options]
  if not 2 <= len(options) <= len(OPTION_LETTERS):
    raise ValueError(f"need 2-{len(OPTION_LETTERS)} options, got {len(options)}")
  lines = "\n".join(f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(options))
  return dataclasses.replace(cfg, question=QA_QUESTION.format(question=str(question).strip(),
                                                              options=lines),
                             format_instruction=QA_FORMAT_INSTRUCTION)
