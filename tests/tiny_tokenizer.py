"""A tiny Qwen2-style byte-level BPE tokenizer trained in-process (no downloads).

Added tokens follow InternVL3's layout after the BPE vocabulary: special `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>`, `<img>`, `</img>`, `<IMG_CONTEXT>`, plus two non-special
ones (`<tool_call>`, and a non-ASCII one) to exercise both decoding paths.
"""

from __future__ import annotations

import functools
import json
import pathlib

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
         r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
NON_SPECIAL = ["<tool_call>", "评分结果"]
CORPUS = [
    "Now you will receive a video:\nFrame1:\nFrame2:\nMotion Feature:\n",
    "You are doing the video quality assessment task. Here is the question: What is your "
    "overall rating on the quality of this video? The rating should be a float between 1 and "
    "5, rounded to two decimal places, with 1 representing very poor quality and 5 "
    "representing excellent quality. First output the thinking process in <think> </think> "
    "tags and then output the final answer in <answer> </answer> tags.",
    "<think>The video is sharp, with mild noise and stable motion.</think>\n<answer>3.75</answer>",
    "<think>Blurry frames, heavy compression artifacts.</think> <answer>-1.5 or 2</answer>",
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
    "Scores: 0.12 4.00 12345 ３.５ ٣.٥ é ü 😀 \t\r\n  end",
]


@functools.cache
def _trained() -> str:
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS * 4, trainer)
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
  tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in NON_SPECIAL])
  return tok.to_str()


def make_tokenizer() -> Tokenizer:
  """A fresh copy of the tiny tokenizer (trained once per process)."""
  return Tokenizer.from_str(_trained())


def save(tok: Tokenizer, out_dir, layout: str = "json") -> pathlib.Path:
  """Write ``tok`` as a checkpoint would: ``layout`` 'json' (tokenizer.json) or 'vocab'
  (vocab.json + merges.txt + added_tokens.json + tokenizer_config.json, as InternVL3)."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  added = tok.get_added_tokens_decoder()
  config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
            "added_tokens_decoder": {str(i): {"content": t.content, "special": t.special,
                                              "normalized": t.normalized, "lstrip": t.lstrip,
                                              "rstrip": t.rstrip, "single_word": t.single_word}
                                     for i, t in added.items()}}
  if layout == "json":
    tok.save(str(out / "tokenizer.json"))
  elif layout == "vocab":
    tok.model.save(str(out))
    (out / "added_tokens.json").write_text(
        json.dumps({t.content: i for i, t in added.items()}, ensure_ascii=False), encoding="utf-8")
  else:
    raise ValueError(layout)
  (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False),
                                             encoding="utf-8")
  return out
