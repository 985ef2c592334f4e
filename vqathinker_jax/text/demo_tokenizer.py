"""The demo's tokenizer: a tiny Qwen2-style byte-level BPE trained in-process on the
VQAThinker prompt and answer templates (no downloads), saved like a checkpoint's.

The InternVL added tokens come first (ids 0-5, so `<IMG_CONTEXT>` is 5 whatever the corpus
learns); for Qwen2.5-VL (`build(family=...)`) its vision tokens follow (6-8: vision start,
vision end, video pad); the rest of the 512 ids are bytes and merges. Digits stay single tokens, as in
Qwen's pre-tokenizer, so scores are written digit by digit.
"""

from __future__ import annotations

import json

from etils import epath
import tokenizers
from tokenizers import pre_tokenizers

from vqathinker_jax.text import tokenizer as tok_lib

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", tok_lib.IMG_START, tok_lib.IMG_END,
           tok_lib.IMG_CONTEXT]
QWEN_SPECIAL = [tok_lib.VISION_START, tok_lib.VISION_END, tok_lib.VIDEO_PAD]
VOCAB_SIZE = 512
# ITU-T P.910 ACR words for the MOS bands [1, 1.8), [1.8, 2.6), ...: the SFT reasoning.
QUALITY_WORDS = ("bad", "poor", "fair", "good", "excellent")


def quality_word(mos: float) -> str:
  """The ACR word of a MOS in [1, 5]."""
  return QUALITY_WORDS[min(int((float(mos) - 1.0) / 0.8), len(QUALITY_WORDS) - 1)]


def _corpus(family: str = tok_lib.INTERNVL) -> list[str]:
  prompt = tok_lib.prompt_text(tok_lib.PromptConfig(num_frames=12, tokens_per_frame=1,
                                                    family=family,
                                                    motion=family == tok_lib.INTERNVL),
                               expand=False)
  answers = [f"<think>The video looks {w}.</think>\n<answer>{s:.2f}</answer>"
             for w in QUALITY_WORDS for s in (1.25, 2.5, 3.75, 4.9)]
  return [prompt] * 8 + answers * 4 + ["0123456789 .-\n"]


def build(family: str = tok_lib.INTERNVL) -> tok_lib.Tokenizer:
  """The demo tokenizer of ``family``'s prompt (deterministic: same corpus, same merges)."""
  backend = tokenizers.Tokenizer(tokenizers.models.BPE())
  backend.normalizer = tokenizers.normalizers.NFC()
  backend.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(tok_lib.QWEN2_SPLIT), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
  backend.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=VOCAB_SIZE, show_progress=False,
      special_tokens=SPECIAL + (QWEN_SPECIAL if family == tok_lib.QWEN25VL else []),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  backend.train_from_iterator(_corpus(family), trainer)
  return tok_lib.Tokenizer(backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def save(tok: tok_lib.Tokenizer, out_dir) -> epath.Path:
  """Writes tokenizer.json + tokenizer_config.json (what `tokenizer.load_tokenizer` reads),
  under a local or a gs:// directory."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  # What `backend.save` writes, through epath (`save` takes only local file names).
  (out / "tokenizer.json").write_text(tok.backend.to_str(pretty=True), encoding="utf-8")
  (out / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
  return out
