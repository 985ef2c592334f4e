"""Tokenizer loading (both checkpoint layouts), the internvl2_5 template and the VQAThinker
prompt with its image and motion slots."""

import json

import numpy as np
import pytest

import tiny_tokenizer
from vqathinker_jax.text import tokenizer as T

SAMPLES = ["<think>Sharp, little noise.</think>\n<answer>3.75</answer>", "你好 ３.５ é 😀\t\r\n",
           "Frame1:<img><IMG_CONTEXT></img>\n<|im_end|>", "评分结果<tool_call> x"]


@pytest.fixture(scope="module", params=["json", "vocab"])
def tok(request, tmp_path_factory):
  path = tiny_tokenizer.save(tiny_tokenizer.make_tokenizer(),
                             tmp_path_factory.mktemp(request.param), request.param)
  return T.load_tokenizer(path)


def test_both_layouts_load_the_same_tokenizer(tok):
  ref = tiny_tokenizer.make_tokenizer()
  assert tok.vocab_size == ref.get_vocab_size()
  for text in SAMPLES:
    np.testing.assert_array_equal(tok.encode(text), ref.encode(text, add_special_tokens=False).ids)
    ids = tok.encode(text)
    assert tok.decode(ids, False) == ref.decode(ids.tolist(), skip_special_tokens=False)
    assert tok.decode(ids) == ref.decode(ids.tolist(), skip_special_tokens=True)
  s = tok.special
  assert [s.im_start, s.im_end, s.img_start, s.img_end, s.img_context] == [
      ref.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>", "<img>", "</img>",
                                   "<IMG_CONTEXT>")]
  assert s.eos == s.im_end and s.pad == ref.token_to_id("<|endoftext|>")
  assert s.stop_ids == (s.im_end,)
  assert tok.decode([s.img_context, tok.token_id("<tool_call>")]) == "<tool_call>"


def test_defaults_without_tokenizer_config_and_missing_files(tmp_path):
  path = tiny_tokenizer.save(tiny_tokenizer.make_tokenizer(), tmp_path / "t", "json")
  (path / "tokenizer_config.json").unlink()
  tok = T.load_tokenizer(path)
  assert tok.special.eos == tok.special.pad == tok.special.im_end
  with pytest.raises(FileNotFoundError):
    T.load_tokenizer(tmp_path)
  with pytest.raises(KeyError):
    tok.token_id("<not a token>")


def test_added_tokens_json_only_and_gaps_are_rejected(tmp_path):
  path = tiny_tokenizer.save(tiny_tokenizer.make_tokenizer(), tmp_path / "t", "vocab")
  config = json.loads((path / "tokenizer_config.json").read_text())
  del config["added_tokens_decoder"]  # ids from added_tokens.json, special from the names
  config["additional_special_tokens"] = ["<|im_start|>", "<img>", "</img>", "<IMG_CONTEXT>"]
  (path / "tokenizer_config.json").write_text(json.dumps(config))
  tok = T.load_tokenizer(path)
  assert tok.decode([tok.special.img_start, tok.token_id("<tool_call>")]) == "<tool_call>"
  added = json.loads((path / "added_tokens.json").read_text())
  added["<IMG_CONTEXT>"] += 50
  (path / "added_tokens.json").write_text(json.dumps(added))
  with pytest.raises(ValueError, match="without gaps"):
    T.load_tokenizer(path)


SPEC_USER = """Now you will receive a video:
Frame1:<image>
Frame2:<image>
Frame3:<image>
Frame4:<image>
Frame5:<image>
Frame6:<image>
Motion Feature:<image>
You are doing the video quality assessment task. Here is the question: What is your overall rating on the quality of this video? The rating should be a float between 1 and 5, rounded to two decimal places, with 1 representing very poor quality and 5 representing excellent quality. First output the thinking process in <think> </think> tags and then output the final answer in <answer> </answer> tags."""  # noqa: E501


def test_training_prompt_text_is_the_spec():
  cfg = T.PromptConfig()
  assert T.user_text(cfg) == SPEC_USER
  assert T.prompt_text(cfg, expand=False) == (
      "<|im_start|>system\n你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家"
      "合作单位联合开发的多模态大语言模型。<|im_end|>\n<|im_start|>user\n" + SPEC_USER
      + "<|im_end|>\n<|im_start|>assistant\n")
  assert (T.tokens_per_frame(448), T.tokens_per_frame(560)) == (256, 400)
  assert (cfg.num_images, cfg.num_context_tokens) == (7, 6 * 256 + 1)


def test_reference_eval_layout():
  cfg = T.PromptConfig(num_frames=2, layout="reference_eval")
  assert T.user_text(cfg) == (
      "Now you will receive a video:Frame1: <image>Frame2: <image>Motion Feature: <image>"
      + T.QUESTION + T.FORMAT_INSTRUCTION)
  assert "quality.First output" in T.user_text(cfg)
  with pytest.raises(ValueError):
    T.PromptConfig(layout="chat")


@pytest.mark.parametrize("cfg", [T.PromptConfig(tokens_per_frame=5),
                                 T.PromptConfig(num_frames=12, tokens_per_frame=3, motion=False),
                                 T.PromptConfig(num_frames=3, tokens_per_frame=4,
                                                layout="reference_eval")])
def test_prompt_ids_splice_equals_tokenizing_the_expanded_text(tok, cfg):
  ids = T.prompt_ids(tok, cfg)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, tok.encode(T.prompt_text(cfg)))
  assert tok.decode(ids, skip_special_tokens=False) == T.prompt_text(cfg)
  s = tok.special
  assert (ids == s.img_context).sum() == cfg.num_context_tokens
  assert (ids == s.img_start).sum() == (ids == s.img_end).sum() == cfg.num_images
  assert ids[0] == s.im_start
  tail = ids[np.flatnonzero(ids == s.im_start)[-1]:]
  assert tok.decode(tail, skip_special_tokens=False) == "<|im_start|>assistant\n"
  starts = np.flatnonzero(ids == s.img_start)
  last = ids[starts[-1]:starts[-1] + 3].tolist()
  if cfg.motion:  # the motion slot is the last <IMG_CONTEXT> of the sequence
    assert last == [s.img_start, s.img_context, s.img_end]
  else:
    assert last[:2] == [s.img_start, s.img_context] and last[2] == s.img_context


def test_placeholder_in_question_is_rejected(tok):
  with pytest.raises(ValueError, match="placeholders"):
    T.prompt_ids(tok, T.PromptConfig(question="Look at <image>."))


def test_padding_and_prompt_batch(tok):
  ids, mask = T.pad_batch([[5, 6, 7], [8]], pad_id=0)
  assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
  ids, mask = T.pad_batch([[5, 6, 7], [8]], pad_id=9, length=4, side="left")
  assert ids.tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]] and mask.tolist() == [[0, 1, 1, 1],
                                                                             [0, 0, 0, 1]]
  with pytest.raises(ValueError):
    T.pad_batch([[1, 2, 3]], pad_id=0, length=2)
  cfg = T.PromptConfig(tokens_per_frame=2)
  p = T.prompt_ids(tok, cfg)
  ids, mask = T.prompt_batch(tok, cfg, 3, length=len(p) + 4)
  assert ids.shape == mask.shape == (3, len(p) + 4) and ids.dtype == mask.dtype == np.int32
  assert (ids[:, :len(p)] == p).all() and (ids[:, len(p):] == tok.special.pad).all()
  assert mask.sum(1).tolist() == [len(p)] * 3


def test_family_names_are_the_models():
  # text/ may not import model/: its own names must be the model classes' family names.
  from vqathinker_jax.model import config as model_config, qwen_vl
  assert T.FAMILIES == (model_config.ModelConfig.family, qwen_vl.FAMILY)
  assert qwen_vl.QwenVLConfig.family == T.QWEN25VL
