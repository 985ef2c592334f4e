"""The JAX rewards agree with a plain-Python restatement of docs/method.md §3 (`re` + `math`) on
thousands of fuzzed completions, through both texts and token ids; so do the release's options
(random scores for unparsable answers, decimals of `str(float(x))`, docs/method.md §7)."""

import dataclasses
import math
import re
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_tokenizer
import tolerance
from vqathinker_jax.rl import rewards as R

# ----------------------------------------------------------------------------- restatement

FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NUMBER_RE = re.compile(r"-?\d+(\.\d+)?")


def release_decimals(number: str) -> int:
  """The release's count (`regression_reward`): decimals of str(float(x)), trailing zeros
  stripped."""
  t = str(float(number))
  return len(t.split(".")[-1].rstrip("0")) if "." in t else 0


def significant(number: str):
  """(S, k): the significant digits of a matched number and Python's decimal-point
  position (x = 0.S x 10^k); None for zero."""
  ip, _, fp = number.lstrip("-").partition(".")
  D = "".join(str(int(c)) for c in ip + fp)  # Unicode digits too, as float() reads them
  nonzero = [i for i, c in enumerate(D) if c != "0"]
  if not nonzero:
    return None
  return D[nonzero[0]:nonzero[-1] + 1], len(ip) - nonzero[0]


def repr_layout(S: str, k: int) -> str:
  """How Python's float repr lays out the digits S at point k ('r' format, '.0' added)."""
  n = len(S)
  if -4 < k <= 16:
    if k <= 0:
      return "0." + "0" * -k + S
    return S + "0" * (k - n) + ".0" if k >= n else S[:k] + "." + S[k:]
  return S[0] + ("." + S[1:] if n > 1 else "") + f"e{k - 1:+03d}"


def ref_float_str_decimals(number: str) -> int:
  """`release_decimals`, where the rewards match it exactly (up to 15 significant digits
  in the normal double range, zero, >= 1e309, < 1e-323); elsewhere the documented stand-in
  (`rewards._float_str_decimals`): the digits rounded half up to 17, laid out as repr."""
  sig = significant(number)
  if sig is None or sig[1] >= 310 or sig[1] <= -323 or (len(sig[0]) <= 15 and sig[1] > -307):
    return release_decimals(number)
  S, k = sig
  if len(S) > 17:
    up = int(S[17]) >= 5
    S = S[:17]
    if up:
      S = str(int(S) + 1)
      if len(S) > 17:
        S, k = S[:17], k + 1
    S = S.rstrip("0")
  t = repr_layout(S, k)
  return len(t.split(".")[-1].rstrip("0")) if "." in t else 0


def ref_parse(text, clip=R.RewardConfig.score_clip, decimals="written"):
  """(format, valid, score, decimals) of one completion."""
  fmt = 1.0 if FORMAT_RE.fullmatch(text) else 0.0
  groups = ANSWER_RE.findall(text)
  answer = groups[-1].strip() if groups else text.strip()
  m = NUMBER_RE.search(answer)
  if m is None:
    return fmt, False, 0.0, 0
  if decimals == "float_str":
    count = ref_float_str_decimals(m.group(0))
  else:
    count = len(m.group(1)) - 1 if m.group(1) else 0
  return fmt, True, max(-clip, min(clip, float(m.group(0)))), count


def ref_components(texts, labels, G, cfg, draws=None):
  """``draws``: with `invalid='random'`, the regression's and the ranking's random scores
  [N] (the release's randint(1, 5), one per reward function): an unparsable completion
  takes its draw, with no decimals, and is valid."""
  B = len(labels)
  parsed = [ref_parse(t, cfg.score_clip, cfg.decimals) for t in texts]
  for_reg = for_rank = parsed
  if draws is not None:
    sub = lambda d: [p if p[1] else (p[0], True, float(x), 0) for p, x in zip(parsed, d)]
    for_reg, for_rank = sub(draws[0]), sub(draws[1])
  reg = []
  for n, (_, valid, s, dec) in enumerate(for_reg):
    r = math.exp(-(s - labels[n // G]) ** 2 / (2 * cfg.sigma ** 2)) if valid else 0.0
    reg.append(r * cfg.coarse_penalty if valid and dec < cfg.min_decimals else r)
  stats = []
  for i in range(B):
    vals = [for_rank[i * G + j][2] for j in range(G) if for_rank[i * G + j][1]]
    mu = sum(vals) / len(vals) if vals else 0.0
    var = sum((v - mu) ** 2 for v in vals) / (len(vals) - 1) if len(vals) >= 2 else 0.0
    stats.append((len(vals), mu, var))
  block = lambda i: i // cfg.micro_videos if cfg.pairing == "micro" else 0
  rank = []
  for n, (_, valid, s, _) in enumerate(for_rank):
    i = n // G
    zs = [z for z in range(B) if z != i and block(z) == block(i) and stats[z][0] > 0]
    if not valid or not zs:
      rank.append(0.0)
      continue
    total = 0.0
    for z in zs:
      x = (s - stats[z][1]) / math.sqrt(stats[i][2] + stats[z][2] + cfg.variance_eps)
      p = 0.5 * math.erfc(-x / math.sqrt(2))
      g = 1.0 if labels[i] > labels[z] else 0.0 if labels[i] < labels[z] else 0.5
      total += math.sqrt(p * g + cfg.fidelity_eps) + math.sqrt((1 - p) * (1 - g) + cfg.fidelity_eps)
    rank.append(total / len(zs))
  return [p[0] for p in parsed], reg, rank, parsed


def ref_scores(texts, labels, G, perturbed=None, cfg=R.RewardConfig(), draws=None):
  """``draws``: with `invalid='random'`, four [N] draws: regression, ranking, and the same
  for the perturbed rollouts."""
  B = len(labels)
  fmt, reg, rank, parsed = ref_components(texts, labels, G, cfg,
                                          None if draws is None else draws[:2])
  bonus_rank, bonus_reg = [0.0] * len(texts), [0.0] * len(texts)
  if perturbed is not None:
    _, preg, prank, _ = ref_components(perturbed, labels, G, cfg,
                                       None if draws is None else draws[2:])
    if cfg.temporal_scope == "group":
      scope = lambda n: range(n // G * G, n // G * G + G)
    else:
      scope = lambda n: [k for k in range(B * G)
                         if k // G // cfg.micro_videos == n // G // cfg.micro_videos]
    for n in range(len(texts)):
      mean = lambda xs: sum(xs[k] for k in scope(n)) / len(scope(n))
      if mean(rank) >= mean(prank) and rank[n] > cfg.temporal_rank_threshold:
        bonus_rank[n] = cfg.temporal_bonus
      if mean(reg) >= mean(preg) and reg[n] > cfg.temporal_reg_threshold:
        bonus_reg[n] = cfg.temporal_bonus
  rank = [r + b for r, b in zip(rank, bonus_rank)]
  reg = [r + b for r, b in zip(reg, bonus_reg)]
  total = [cfg.ranking_weight * a + cfg.regression_weight * b + cfg.format_weight * c
           for a, b, c in zip(rank, reg, fmt)]
  return {"format": fmt, "regression": reg, "ranking": rank, "total": total,
          "advantage": ref_advantage(total, G, cfg.advantage_eps),
          "valid": [p[1] for p in parsed], "score": [p[2] for p in parsed],
          "decimals": [p[3] for p in parsed], "bonus_ranking": bonus_rank,
          "bonus_regression": bonus_reg}


def ref_advantage(total, G, eps):
  out = []
  for i in range(0, len(total), G):
    grp = [float(t) for t in total[i:i + G]]
    mu, sd = sum(grp) / G, statistics.stdev(grp) if G > 1 else 0.0
    out += [(t - mu) / (sd + eps) for t in grp]
  return out


# float32 on device against float64 Python: parsing rounds each score once per digit;
# the rewards chain exp, sqrt and divisions by group spreads, at the rewards' scale.
ULPS_SCORE = 5
ULPS_REWARD = 12
ULPS_ADVANTAGE = 4


def advantage_scale(total, G, eps):
  """How far each advantage (t - mean) / (std + eps) moves per unit change of the totals:
  (2 + |advantage|) / (std + eps), times the totals' scale (their max |t|)."""
  t = np.asarray(total, np.float64).reshape(-1, G)
  std = t.std(1, ddof=1, keepdims=True) if G > 1 else np.zeros((len(t), 1))
  adv = (t - t.mean(1, keepdims=True)) / (std + eps)
  return ((2 + np.abs(adv)) / (std + eps) * np.abs(t).max()).reshape(-1)


def assert_same(got, want, G):
  for k in ("format", "valid", "decimals", "bonus_ranking", "bonus_regression"):
    np.testing.assert_array_equal(got[k], np.asarray(want[k], got[k].dtype), err_msg=k)
  tolerance.assert_close(got["score"], want["score"], ULPS_SCORE,
                         scale=np.abs(np.asarray(want["score"], np.float64)), name="score")
  for k in ("regression", "ranking", "total"):
    tolerance.assert_close(got[k], want[k], ULPS_REWARD, name=k)
  # Advantages divide by a group's spread, which may be tiny: the device formula against
  # float64 on the device's totals, then against the restatement, whose totals differ by
  # up to ULPS_REWARD.
  tolerance.assert_close(got["advantage"], ref_advantage(got["total"], G, 1e-4), ULPS_ADVANTAGE,
                         scale=advantage_scale(got["total"], G, 1e-4), name="advantage")
  tolerance.assert_close(got["advantage"], want["advantage"], ULPS_REWARD + ULPS_ADVANTAGE,
                         scale=advantage_scale(want["total"], G, 1e-4),
                         name="advantage vs restatement")


# ----------------------------------------------------------------------------- fuzzing

SPACES = [" ", "\n", "\t", "\r\n", "  ", "\u3000", "\xa0", "\x1c", "\x85", "\u2028", "\x0b",
          "\u200b", "\n\n"]
WORDS = ["good", "blur", "é", "你好", "😀", "\ufffd", "\x00", "a.b", "-", ".", "--", "<", ">",
         "/", "think", "answer", "\ud800", "score:", "1e5", "+", "Ⅻ", "²", "½", "."]
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
BROKEN = ["<think", "think>", "</think", "<answer", "answer>", "</answer", "<answer >",
          "<ANSWER>", "<<answer>", "</answer>>", "</ answer>", "<thinking>", "</think >", "<>"]
DIGIT_SETS = ["0123456789", "０１２３４５６７８９", "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९",
              "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗"]


def fuzz_number(rng):
  if rng.random() < 0.5:  # score-like, near the labels
    s = f"{rng.uniform(0.5, 5.5):.{rng.integers(0, 4)}f}"
  else:
    digits = DIGIT_SETS[0] if rng.random() < 0.8 else DIGIT_SETS[rng.integers(1, 5)]
    run = lambda k: "".join(digits[rng.integers(10)] for _ in range(k))
    s = run(rng.integers(1, 4) if rng.random() < 0.93 else rng.integers(14, 50))
    r = rng.random()
    if r < 0.5:
      s += "." + run(rng.integers(1, 5))
    elif r < 0.6:
      s += "."
    elif r < 0.65:
      s += "." + run(rng.integers(20, 60))
    elif r < 0.7:
      s += "." + run(2) + "." + run(1)
  return rng.choice(["", "", "", "-", "--", "+", "- "]) + s


def fuzz_fragment(rng):
  r = rng.random()
  if r < 0.25:
    return fuzz_number(rng)
  if r < 0.45:
    return SPACES[rng.integers(len(SPACES))]
  if r < 0.75:
    return WORDS[rng.integers(len(WORDS))]
  if r < 0.9:
    return TAGS[rng.integers(len(TAGS))]
  return BROKEN[rng.integers(len(BROKEN))]


def fuzz_text(rng):
  soup = lambda k: "".join(fuzz_fragment(rng) for _ in range(k))
  r = rng.random()
  if r < 0.35:  # well-formed, with fuzzed contents
    sep = ["", " ", "\n", "\n\n", "\u3000 ", " x ", "\t"][rng.integers(7)]
    ans = soup(rng.integers(0, 2)) + fuzz_number(rng) + soup(rng.integers(0, 2))
    text = f"<think>{soup(rng.integers(0, 5))}</think>{sep}<answer>{ans}</answer>"
    return text + (soup(rng.integers(1, 3)) if rng.random() < 0.25 else "")
  if r < 0.7:  # well-formed pieces, then mutated
    parts = ["<think>", soup(2), "</think>", "\n", "<answer>", fuzz_number(rng), "</answer>"]
    for _ in range(rng.integers(1, 4)):
      k, op = rng.integers(len(parts) + 1), rng.integers(4)
      if op == 0 and k < len(parts):
        del parts[k]
      elif op == 1 and k < len(parts):
        parts.insert(k, parts[k])
      elif op == 2:
        parts.insert(k, fuzz_fragment(rng))
      elif k < len(parts) and parts[k]:
        cut = rng.integers(len(parts[k]))
        parts[k] = parts[k][:cut] + parts[k][cut + 1:]
    return "".join(parts)
  if r < 0.85:
    return soup(rng.integers(0, 12))
  # Character-level tag soup between the right ends: overlapping partial tags.
  chars = list("<>/thinkaswer .-19２\n\u3000") + TAGS * 3
  mid = "".join(chars[i] for i in rng.integers(0, len(chars), rng.integers(0, 40)))
  return ("<think>" if rng.random() < 0.7 else "") + mid + (
      "</answer>" if rng.random() < 0.7 else "")


def fuzz_texts(n, seed):
  rng = np.random.default_rng(seed)
  return [fuzz_text(rng) for _ in range(n)]


def fuzz_labels(B, seed):
  rng = np.random.default_rng(seed)
  labels = np.round(rng.uniform(1, 5, B), 2)
  labels[rng.random(B) < 0.2] = 3.0  # ties
  return [float(x) for x in labels.astype(np.float32)]


# ----------------------------------------------------------------------------- tests


def test_config_defaults_are_the_spec():
  cfg = R.RewardConfig()
  assert (cfg.sigma, cfg.coarse_penalty, cfg.min_decimals) == (0.5, 0.8, 2)
  assert (cfg.temporal_bonus, cfg.temporal_rank_threshold, cfg.temporal_reg_threshold) == (
      0.3, 0.5, 0.9)
  assert (cfg.pairing, cfg.temporal_scope, cfg.advantage_eps) == ("batch", "group", 1e-4)
  assert (cfg.variance_eps, cfg.fidelity_eps) == (1e-6, 1e-6)
  # The project's defaults, not the release's (docs/method.md §7): nothing random.
  assert (cfg.invalid, cfg.decimals, cfg.needs_key) == ("zero", "written", False)
  assert R.RewardConfig(invalid="random").needs_key
  for bad in (dict(invalid="uniform"), dict(decimals="repr")):
    with pytest.raises(ValueError, match=next(iter(bad))):
      R.RewardConfig(**bad)
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.sigma = 1.0
  with pytest.raises(ValueError):
    R.RewardConfig(pairing="gpu")


@pytest.mark.parametrize("text", [
    "<think>a</think><answer>3.75</answer>",
    "<think></think><answer></answer>",
    "<think>a</think> \n\u3000<answer>1</answer>",
    "<think>a</think>x<answer>1</answer>",
    "<think>a</think><answer>1</answer></answer>",         # backtracks over the inner tag
    "<think>a</think><answer>1</answer>\n",
    "<think><think>a</think></think>\n<answer>1</answer>",  # .*? spans a "</think>"
    "<think>a</think><answer>1</answer><think>b</think><answer>2</answer>",
    "<think>a</think>\u200b<answer>1</answer>",             # zero-width space is not \s
    "<think>a</think\n><answer>1</answer>",
    "<think></answer>",
])
def test_format_examples(text):
  got = R.score_texts([text], [3.0], group_size=1)
  assert got["format"][0] == (FORMAT_RE.fullmatch(text) is not None)


def test_fuzzed_parse_matches_python_re():
  texts = fuzz_texts(4096, seed=0)
  labels = fuzz_labels(1024, seed=1)
  cfg = R.RewardConfig(pairing="micro", micro_videos=4)
  got = R.score_texts(texts, labels, group_size=4, config=cfg)
  want = ref_scores(texts, labels, 4, cfg=cfg)
  assert 0.1 < np.mean(got["format"]) < 0.9 and 0.3 < np.mean(got["valid"]) < 0.98
  assert_same(got, want, 4)


@pytest.mark.parametrize("cfg", [
    R.RewardConfig(),
    R.RewardConfig(pairing="micro", temporal_scope="micro", micro_videos=3),
    R.RewardConfig(sigma=0.7, coarse_penalty=0.5, min_decimals=1, temporal_bonus=0.25,
                   ranking_weight=0.5, regression_weight=2.0, format_weight=0.1),
])
def test_fuzzed_rewards_with_temporal_bonus_match_restatement(cfg):
  G, B = 4, 48
  texts, pert = fuzz_texts(B * G, seed=2), fuzz_texts(B * G, seed=3)
  labels = fuzz_labels(B, seed=4)
  got = R.score_texts(texts, labels, group_size=G, perturbed=pert, config=cfg)
  assert_same(got, ref_scores(texts, labels, G, pert, cfg), G)
  got = R.score_texts(texts, labels, group_size=G, config=cfg)
  assert_same(got, ref_scores(texts, labels, G, None, cfg), G)
  assert not got["bonus_ranking"].any()


def _ids_batch(tok, texts, C, rng):
  """Encoded texts + <|im_end|> + padding, and random id soups; prefix masks."""
  V = tok.get_vocab_size()
  ids = np.zeros((len(texts), C), np.int32)
  mask = np.zeros((len(texts), C), np.int32)
  for n, t in enumerate(texts):
    if n % 4 == 3:
      seq = rng.integers(0, V, rng.integers(0, C + 1))
    else:
      t = t.encode("utf-8", "surrogatepass").decode("utf-8", "replace")  # no lone surrogates
      seq = tok.encode(t, add_special_tokens=False).ids[:C - 1] + [tok.token_to_id("<|im_end|>")]
    ids[n, :len(seq)] = seq
    ids[n, len(seq):] = rng.integers(0, V, C - len(seq))  # garbage after the mask
    mask[n, :len(seq)] = 1
    if n % 16 == 5:  # holes: the mask need not be a prefix
      mask[n] &= rng.random(C) < 0.8
  return ids, mask


_ids_fn = jax.jit(R.rewards_from_ids, static_argnames=("cfg", "max_bytes"))


@pytest.fixture(scope="module")
def ids_case():
  """Tiny tokenizer, its byte table, and B = 64 videos x G = 4 completions of C = 96 ids
  (original and perturbed) with their labels."""
  tok = tiny_tokenizer.make_tokenizer()
  rng = np.random.default_rng(5)
  ids, mask = _ids_batch(tok, fuzz_texts(256, seed=6), 96, rng)
  pids, pmask = _ids_batch(tok, fuzz_texts(256, seed=7), 96, rng)
  return tok, R.byte_table(tok), ids, mask, pids, pmask, np.float32(fuzz_labels(64, seed=8))


def test_token_ids_path_matches_restatement_of_decoded_text(ids_case):
  tok, table, ids, mask, pids, pmask, labels = ids_case
  decode = lambda i, m: tok.decode([int(x) for x in i[m.astype(bool)]], skip_special_tokens=True)
  texts = [decode(i, m) for i, m in zip(ids, mask)]
  pert = [decode(i, m) for i, m in zip(pids, pmask)]
  got = _ids_fn(table, ids, mask, labels, perturbed=(pids, pmask))
  got = {k: np.asarray(v) for k, v in got.items()}
  assert not got["overflow"].any()
  assert_same(got, ref_scores(texts, labels.tolist(), 4, pert), 4)

  # The detokenised bytes are the decoder's bytes.
  entries = R.token_bytes(tok)
  b, n, _ = map(np.asarray, jax.jit(R.detokenize)(table, ids, mask))
  for row in range(len(ids)):
    want = b"".join(entries[i] for i in ids[row][mask[row].astype(bool)])
    assert bytes(b[row, :n[row]]) == want
    assert want.decode("utf-8", "replace") == texts[row]


def test_detokenize_overflow_is_flagged():
  table = R.table_from_bytes([b"ab", b"c", b""])
  ids = jnp.asarray([[0, 0, 1, 2], [1, 2, 2, 0]])
  mask = jnp.asarray([[1, 1, 1, 1], [1, 1, 1, 0]])
  b, n, over = R.detokenize(table, ids, mask, max_bytes=4)
  assert bytes(np.asarray(b[0])) == b"abab" and over.tolist() == [True, False]
  assert n.tolist() == [4, 1] and bytes(np.asarray(b[1])) == b"c\0\0\0"


@pytest.mark.parametrize("skip", [True, False])
def test_byte_table_round_trips_every_token(skip):
  tok = tiny_tokenizer.make_tokenizer()
  entries = R.token_bytes(tok, skip_special_tokens=skip)
  V = tok.get_vocab_size()
  assert len(entries) == V
  for i, e in enumerate(entries):
    assert e.decode("utf-8", "replace") == tok.decode([i], skip_special_tokens=skip), i
  # Multi-byte characters split across tokens only decode right when joined as bytes.
  rng = np.random.default_rng(9)
  seqs = [list(range(V))] + [list(rng.integers(0, V, rng.integers(1, 40))) for _ in range(300)]
  for seq in seqs:
    got = b"".join(entries[i] for i in seq).decode("utf-8", "replace")
    assert got == tok.decode([int(i) for i in seq], skip_special_tokens=skip)
  # Every model token is its byte-level string; specials vanish only when skipped.
  special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
  assert all((entries[i] == b"") == (skip and i in special) for i in range(V))
  padded = R.token_bytes(tok, skip, vocab_size=V + 5)
  assert padded[:V] == entries and padded[V:] == [b""] * 5


def _rewards(texts, labels, G, **kw):
  return R.score_texts(texts, labels, group_size=G, config=R.RewardConfig(**kw))


def test_regression_decimals_as_written_and_invalid():
  texts = ["<answer>3.50</answer>", "<answer>3.5</answer>", "<answer>4</answer>",
           "<answer>no score</answer>"]
  got = _rewards(texts, [3.5], 4)
  assert got["decimals"].tolist() == [2, 1, 0, 0]
  tolerance.assert_close(got["regression"], [1.0, 0.8, 0.8 * math.exp(-0.25 / 0.5), 0.0],
                         ULPS_REWARD, name="regression")
  assert got["valid"].tolist() == [True, True, True, False]


def test_ranking_edge_cases():
  a = lambda s: f"<think>x</think><answer>{s}</answer>"
  # One video: no comparator -> 0.
  got = _rewards([a("3.00"), a("4.00")], [3.0], 2)
  assert got["ranking"].tolist() == [0.0, 0.0]
  # Video 1 has no valid completion: not a comparator, and its completions get 0.
  texts = [a("2.00"), a("2.50"), a("none"), a("nothing"), a("4.00"), a("4.50")]
  got = _rewards(texts, [2.0, 3.0, 4.0], 2)
  assert got["ranking"][2:4].tolist() == [0.0, 0.0]
  only_pair = _rewards(texts[:2] + texts[4:], [2.0, 4.0], 2)
  tolerance.assert_close(got["ranking"][[0, 1, 4, 5]], only_pair["ranking"], ULPS_REWARD,
                         name="ranking")
  # Ties: g = 0.5. A lone valid completion has variance 0.
  got = _rewards([a("3.00"), a("x"), a("3.00"), a("x")], [3.0, 3.0], 2)
  p = 0.5  # (3 - 3) / sqrt(0 + 0 + eps)
  tolerance.assert_close(got["ranking"], [2 * math.sqrt(0.5 * p + 1e-6), 0.0] * 2, ULPS_REWARD,
                         name="ranking of ties")
  # Micro pairing: videos {0, 1} and {2, 3} are scored separately.
  texts = [a(f"{s:.2f}") for s in (1.2, 1.9, 2.2, 2.4, 3.3, 3.1, 4.6, 4.4)]
  labels = [1.5, 2.5, 3.5, 4.5]
  micro = _rewards(texts, labels, 2, pairing="micro", micro_videos=2)
  halves = [_rewards(texts[:4], labels[:2], 2), _rewards(texts[4:], labels[2:], 2)]
  tolerance.assert_close(micro["ranking"], np.concatenate([h["ranking"] for h in halves]),
                         ULPS_REWARD, name="micro ranking")
  assert not np.allclose(micro["ranking"], _rewards(texts, labels, 2)["ranking"])


def test_temporal_bonus_thresholds():
  a = lambda s: f"<think>x</think><answer>{s}</answer>"
  labels = [2.0, 4.0]
  texts = [a("2.00"), a("2.95"), a("4.00"), a("3.10")]     # regs 1.0, ~0.16, 1.0, ~0.2
  worse = [a("5.00"), a("none"), a("1.00"), a("x")]
  got = R.score_texts(texts, labels, group_size=2, perturbed=worse)
  base = R.score_texts(texts, labels, group_size=2)
  np.testing.assert_array_equal(got["bonus_regression"], np.float32([0.3, 0.0, 0.3, 0.0]))
  np.testing.assert_array_equal(got["bonus_ranking"],
                                np.where(base["ranking"] > 0.5, np.float32(0.3), 0.0))
  tolerance.assert_close(got["total"] - base["total"],
                         got["bonus_ranking"] + got["bonus_regression"], ULPS_REWARD,
                         scale=np.abs(got["total"]).max(), name="total - base")
  # Perturbed rollouts that do better: no bonus. Identical ones: the means tie -> bonus.
  assert not R.score_texts(worse, labels, 2, perturbed=texts)["bonus_regression"].any()
  assert R.score_texts(texts, labels, 2, perturbed=texts)["bonus_regression"].sum() > 0


def test_advantages_and_group_of_one():
  got = _rewards(["<think>a</think><answer>3.75</answer>", "x", "<answer>1</answer>", "y"],
                 [3.5, 2.0], 2)
  r = got["total"].reshape(2, 2)
  want = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)
  tolerance.assert_close(got["advantage"], want.reshape(-1), ULPS_ADVANTAGE,
                         scale=advantage_scale(got["total"], 2, 1e-4), name="advantage")
  single = _rewards(["<think>a</think><answer>3.75</answer>"] * 3, [3.5, 2.0, 1.0], 1)
  assert single["advantage"].tolist() == [0.0] * 3
  huge = _rewards(["<answer>" + "9" * 60 + "</answer>", "<answer>1.00</answer>"] * 2,
                  [3.0, 2.0], 2)
  assert all(np.isfinite(v).all() for v in huge.values())


def test_rewards_from_ids_is_one_program_without_host_transfers(ids_case):
  _, table, ids, mask, pids, pmask, labels = ids_case
  args = jax.device_put((table, ids, mask, labels))
  pert = jax.device_put((pids, pmask))
  with jax.transfer_guard("disallow"):
    first = _ids_fn(*args, perturbed=pert)
    compiled = _ids_fn._cache_size()  # the cache is shared by every jit of the function
    second = _ids_fn(*args, perturbed=pert)
  assert _ids_fn._cache_size() == compiled
  for k in first:
    np.testing.assert_array_equal(np.asarray(first[k]), np.asarray(second[k]))


def test_completion_shorter_than_a_tag():
  """A few one-byte tokens (fewer bytes than `</answer>`) still parse."""
  table = R.table_from_bytes([bytes([b]) for b in b"<>/answer 0123456789."])
  ids = jnp.asarray([[13, 20, 14, 9, 12]])  # "3.4 2"
  out = R.rewards_from_ids(table, ids, jnp.ones_like(ids), jnp.asarray([3.0]))
  assert bool(out["valid"][0])
  tolerance.assert_close(out["score"][0], 3.4, ULPS_SCORE, name="score")


# ------------------------------------------------------------- the release's options ---

RELEASE = R.RewardConfig(pairing="micro", micro_videos=2, temporal_scope="micro",
                         invalid="random", decimals="float_str")


def release_draws(key, N):
  """The four [N] draws `compute_rewards` makes from its key: regression, ranking, and
  both again for the perturbed rollouts; randint(1, 5) as the release's fallback."""
  return [np.asarray(jax.random.randint(k, (N,), 1, 6)) for k in jax.random.split(key, 4)]


def _numbers(seed: int, n: int) -> list[str]:
  """Numbers of up to 15 significant digits as a model might write them: scores, integers,
  leading and trailing zeros, signs, other digit scripts, tiny and huge magnitudes."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    digits = DIGIT_SETS[0] if rng.random() < 0.85 else DIGIT_SETS[rng.integers(1, 5)]
    sig = "".join(digits[rng.integers(10)] for _ in range(rng.integers(1, 16)))
    lead = digits[0] * rng.integers(0, 25 if rng.random() < 0.3 else 3)
    tail = digits[0] * rng.integers(0, 25 if rng.random() < 0.3 else 3)
    body = lead + sig + tail
    cut = rng.integers(0, len(body) + 1)
    number = body[:max(cut, 1)] + ("." + body[max(cut, 1):] if cut < len(body) else "")
    out.append(("-" if rng.random() < 0.2 else "") + number)
  return out


def test_float_str_decimals_match_python():
  """Decimals of str(float(x)) on device against Python's own: '4' -> '4.0' -> 0,
  '3.50' -> '3.5' -> 1, exponent forms ('1e+16' -> 0, '1.5e+16' -> '5e+16' -> 5,
  '1.5e+20' -> '5e+2' -> 4), zeros, 'inf' and underflow."""
  cases = ["3.50", "3.5", "4", "3.05", "3.00", "0", "-0", "-0.00", "0.0001", "0.00001",
           "0.000012", "0.00012", "9999999999999998", "10000000000000000", "15000000000000000",
           "150000000000000000000", "1500000000000000000000", "12.3400", "007.50", "1000",
           "0.10", "１２.５０", "٣.٢٥", "100000000000000.5", "1000000000000000.5", "2.675",
           "-3.25", "1" + "0" * 308, "1" + "0" * 309, "9" * 400, "0." + "0" * 330 + "1",
           "0." + "0" * 322 + "5", "0." + "0" * 120 + "12345"] + _numbers(0, 2000)
  texts = [f"<think>x</think><answer>{c}</answer>" for c in cases]
  got = R.score_texts(texts, [3.0] * len(texts), 1, config=R.RewardConfig(decimals="float_str"))
  want = [release_decimals(c) for c in cases]
  bad = [(c, int(g), w) for c, g, w in zip(cases, got["decimals"], want) if g != w]
  assert not bad, bad[:10]
  assert len(set(want)) > 10  # the cases reach many counts, exponent forms among them
  # The coarse penalty follows: "3.50" is penalised, "3.05" is not.
  got = R.score_texts(["<answer>3.50</answer>", "<answer>3.05</answer>"], [3.5, 3.0], 1,
                      config=R.RewardConfig(decimals="float_str"))
  tolerance.assert_close(got["regression"], [0.8, math.exp(-0.0025 / 0.5)], ULPS_REWARD,
                         name="regression")


def test_float_str_beyond_15_digits_is_the_documented_stand_in():
  """16+ significant digits: rounded to 17 then laid out as repr (Python prints the
  shortest string that reads back as the same double, sometimes shorter)."""
  cases = {  # number: (ours, Python's)
      "12345678901234567": (20, 20),             # '1.2345678901234568e+16'
      "1234567890123456.7": (1, 1),
      "3.14159265358979323846": (16, 15),        # Python: '3.141592653589793'
      "0.30000000000000001": (17, 1),            # Python: '0.3'
      "99999999999999999999": (0, 0),            # '1e+20'
  }
  texts = [f"<answer>{c}</answer>" for c in cases]
  got = R.score_texts(texts, [3.0] * len(cases), 1, config=R.RewardConfig(decimals="float_str"))
  assert got["decimals"].tolist() == [ours for ours, _ in cases.values()]
  assert [release_decimals(c) for c in cases] == [py for _, py in cases.values()]
  assert [ref_float_str_decimals(c) for c in cases] == [ours for ours, _ in cases.values()]


def test_random_scores_are_the_release_randint():
  texts = ["<answer>3.25</answer>", "none", "<answer>x</answer>", "4"] * 1024
  b, n = R.encode_texts(texts)
  parsed = jax.jit(R.parse_completions)(b, n)
  sub = R.random_scores(parsed, jax.random.key(0))
  valid = np.asarray(parsed.valid_N)
  score = np.asarray(sub.score_N)
  np.testing.assert_array_equal(score[valid], np.asarray(parsed.score_N)[valid])
  assert np.asarray(sub.valid_N).all() and not np.asarray(sub.decimals_N)[~valid].any()
  drawn = score[~valid]
  counts = np.array([(drawn == v).sum() for v in range(1, 6)])
  assert counts.sum() == drawn.size  # integers 1..5 only
  from scipy import stats
  assert stats.chisquare(counts).pvalue > 1e-4, counts


def test_release_options_match_restatement():
  """Fuzzed completions with temporal rollouts under the release's options: micro pairing
  and means, random scores (apart per reward), str(float(x)) decimals."""
  G, B = 4, 48
  texts, pert = fuzz_texts(B * G, seed=12), fuzz_texts(B * G, seed=13)
  labels = fuzz_labels(B, seed=14)
  key = jax.random.key(5)
  got = R.score_texts(texts, labels, group_size=G, perturbed=pert, config=RELEASE, key=key)
  draws = release_draws(key, B * G)
  want = ref_scores(texts, labels, G, pert, RELEASE, draws)
  assert_same(got, want, G)
  assert 0.3 < np.mean(got["valid"]) < 0.98  # some draws were used
  # Invalid completions score through their draws: not 0 as under the default.
  invalid = ~got["valid"]
  assert (got["regression"][invalid] > 0).all() and (got["ranking"][invalid] > 0).all()
  # Another key, other draws; the same key, the same rewards.
  again = R.score_texts(texts, labels, G, perturbed=pert, config=RELEASE, key=key)
  np.testing.assert_array_equal(again["total"], got["total"])
  other = R.score_texts(texts, labels, G, perturbed=pert, config=RELEASE,
                        key=jax.random.key(6))
  assert not np.array_equal(other["total"], got["total"])
  with pytest.raises(ValueError, match="pass a key"):
    R.score_texts(texts, labels, G, config=RELEASE)
