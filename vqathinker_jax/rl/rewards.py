"""VQAThinker rewards (docs/method.md §3) in pure JAX, from completion token ids to group advantages.

Completions are detokenised on device through a `ByteTable` (token id -> its bytes, byte-level
BPE undone, special tokens dropped as `skip_special_tokens=True` decoding does), then parsed
with data-parallel passes over the bytes (shifted compares, cumulative max/min, pointer
jumping; no sequential scan) that agree exactly with Python `re` on the decoded text:
  format  `re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", text, re.DOTALL)`;
  answer  the last group of `re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)`, or the
          whole text if none (as the reference), then the first `-?\\d+(\\.\\d+)?` in it.
`\\s` and `\\d` are Unicode-aware as in Python (e.g. U+3000, `３`); invalid UTF-8 behaves as
U+FFFD. Project defaults (docs/method.md §3): unparseable -> invalid (never a random score), decimals
counted as written, fidelity pairing over the whole batch, temporal bonus per video group; each
has the release's behaviour as an option (`RewardConfig.invalid`, `decimals`, `pairing`,
`temporal_scope`, docs/method.md §7).
Legend: N completions (B videos x G, video-major), C completion tokens, L bytes, V vocabulary,
B videos, G completions per video, Z comparator videos.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr


PAIRINGS = ("batch", "micro")          # fidelity comparators: the global batch or micro-batches
TEMPORAL_SCOPES = ("group", "micro")   # temporal-bonus means: per video group or micro-batch
INVALID_SCORES = ("zero", "random")    # no number parsed: invalid (rewards 0) | a random score
DECIMAL_COUNTS = ("written", "float_str")  # decimals as written | of Python's str(float(x))
# The release's `extract_first_number` falls back to `random.randint(1, 5)`: integers 1..5.
RANDOM_SCORES = (1, 5)


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  sigma: float = 0.5                     # bell-shaped regression width
  coarse_penalty: float = 0.8            # regression factor below `min_decimals` decimals
  min_decimals: int = 2
  variance_eps: float = 1e-6             # Phi((s - mu_z) / sqrt(var_i + var_z + eps))
  fidelity_eps: float = 1e-6             # sqrt(p g + eps) + sqrt((1 - p)(1 - g) + eps)
  pairing: str = "batch"                 # fidelity comparators: 'batch' | 'micro'
  micro_videos: int = 2                  # videos per micro-batch ('micro' pairing / scope)
  temporal_scope: str = "group"          # temporal-bonus means: 'group' | 'micro'
  temporal_bonus: float = 0.3
  temporal_rank_threshold: float = 0.5   # bonus where rank > threshold
  temporal_reg_threshold: float = 0.9    # bonus where regression > threshold
  ranking_weight: float = 1.0
  regression_weight: float = 1.0
  format_weight: float = 1.0
  advantage_eps: float = 1e-4            # A = (r - mean) / (std + eps), unbiased std
  # Parsed scores are clamped to +-score_clip so float32 group statistics stay finite.
  score_clip: float = 1e15
  # No number parsed: 'zero' = invalid (regression and ranking 0, out of mu / sigma^2 and
  # the comparators) | 'random' = the release: a score from randint(1, 5), drawn apart for
  # the regression and the ranking reward (the release parses once in each), then valid.
  invalid: str = "zero"
  # Decimals for the coarse penalty: 'written' = digits after the point as written ("3.50"
  # -> 2) | 'float_str' = the release: of str(float(x)), trailing zeros dropped ("3.50" -> 1).
  decimals: str = "written"

  def __post_init__(self):
    if self.pairing not in PAIRINGS:
      raise ValueError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")
    if self.temporal_scope not in TEMPORAL_SCOPES:
      raise ValueError(f"temporal_scope must be one of {TEMPORAL_SCOPES}, got {self.temporal_scope!r}")
    if self.micro_videos < 1:
      raise ValueError(f"micro_videos must be >= 1, got {self.micro_videos}")
    if not self.sigma > 0:
      raise ValueError(f"sigma must be > 0 (width of the bell-shaped regression reward), got {self.sigma}")
    if self.min_decimals < 0:
      raise ValueError(f"min_decimals must be >= 0, got {self.min_decimals}")
    if self.invalid not in INVALID_SCORES:
      raise ValueError(f"invalid must be one of {INVALID_SCORES}, got {self.invalid!r}")
    if self.decimals not in DECIMAL_COUNTS:
      raise ValueError(f"decimals must be one of {DECIMAL_COUNTS}, got {self.decimals!r}")

  @property
  def needs_key(self) -> bool:
    """Whether the rewards draw random numbers (then `compute_rewards` needs a key)."""
    return self.invalid == "random"


# ----------------------------------------------------------------------------- byte table


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["flat", "start_V", "length_V"], meta_fields=["max_token_bytes"])
@dataclasses.dataclass(frozen=True)
class ByteTable:
  """Token id -> bytes: token v is ``flat[start_V[v] : start_V[v] + length_V[v]]``."""
  flat: jax.Array       # uint8, all token byte strings concatenated
  start_V: jax.Array    # int32
  length_V: jax.Array   # int32
  max_token_bytes: int


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
  """Inverse of GPT-2's `bytes_to_unicode` (the byte-level BPE alphabet)."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {chr(c): b for b, c in zip(bs, cs)}


def _is_byte_level(backend) -> bool:
  dec = json.loads(backend.to_str()).get("decoder") or {}
  subs = dec.get("decoders", [dec]) if dec.get("type") == "Sequence" else [dec]
  return any(d.get("type") == "ByteLevel" for d in subs)


def token_bytes(tokenizer, skip_special_tokens: bool = True,
                vocab_size: int | None = None) -> list[bytes]:
  """Each token id's bytes as the tokenizer's decoder would emit them.

  ``tokenizer``: a `tokenizers.Tokenizer` or anything with one under ``.backend``.
  Byte-level BPE: model tokens map back through the byte alphabet; added tokens too when all
  their characters are in it (as the `ByteLevel` decoder does), else their UTF-8. Special
  added tokens are empty with ``skip_special_tokens``. Other decoders fall back to decoding
  each token alone (exact only for decoders that act per token). ``vocab_size`` pads the
  table with empty entries (an embedding larger than the tokenizer).
  """
  backend = getattr(tokenizer, "backend", tokenizer)
  size = backend.get_vocab_size(with_added_tokens=True)
  added = backend.get_added_tokens_decoder()
  byte_level, u2b = _is_byte_level(backend), _unicode_to_byte()
  out = []
  for i in range(max(size, vocab_size or 0)):
    tok = backend.id_to_token(i) if i < size else None
    if tok is None or (skip_special_tokens and i in added and added[i].special):
      out.append(b"")
    elif byte_level:
      out.append(bytes(u2b[c] for c in tok) if all(c in u2b for c in tok)
                 else tok.encode("utf-8"))
    else:
      out.append(backend.decode([i], skip_special_tokens=skip_special_tokens).encode("utf-8"))
  return out


def table_from_bytes(entries: list[bytes]) -> ByteTable:
  lengths = np.asarray([len(e) for e in entries], np.int32)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
  flat = np.frombuffer(b"".join(entries) or b"\0", np.uint8)
  return ByteTable(jnp.asarray(flat), jnp.asarray(starts), jnp.asarray(lengths),
                   int(lengths.max(initial=1)))


def byte_table(tokenizer, skip_special_tokens: bool = True,
               vocab_size: int | None = None) -> ByteTable:
  """Device byte table of a tokenizer (see `token_bytes`)."""
  return table_from_bytes(token_bytes(tokenizer, skip_special_tokens, vocab_size))


def detokenize(table: ByteTable, ids_NC: jax.Array, mask_NC: jax.Array,
               max_bytes: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(bytes_NL uint8, length_N, overflow_N) of the masked tokens, left-aligned, zero-padded.

  L = ``max_bytes`` (default C x the longest token: never overflows). A completion longer
  than L is cut to L bytes and flagged in ``overflow_N``.
  """
  N, C = ids_NC.shape
  L = C * table.max_token_bytes if max_bytes is None else int(max_bytes)
  ids_NC = jnp.clip(ids_NC, 0, table.length_V.shape[0] - 1)
  len_NC = jnp.where(mask_NC.astype(bool), table.length_V[ids_NC], 0)
  end_NC = jnp.cumsum(len_NC, axis=1)
  start_NC = end_NC - len_NC
  n_N = end_NC[:, -1]
  # Byte l belongs to the token after all tokens ending at or before l.
  hist_NL = jnp.zeros((N, L), jnp.int32).at[jnp.arange(N)[:, None], end_NC].add(1, mode="drop")
  tok_NL = jnp.minimum(jnp.cumsum(hist_NL, axis=1), C - 1)
  pos_L = jnp.arange(L)
  src_NL = (table.start_V[jnp.take_along_axis(ids_NC, tok_NL, 1)] + pos_L
            - jnp.take_along_axis(start_NC, tok_NL, 1))
  bytes_NL = jnp.where(pos_L < n_N[:, None], table.flat[src_NL], 0).astype(jnp.uint8)
  return bytes_NL, jnp.minimum(n_N, L), n_N > L


# ----------------------------------------------------------------------------- parsing


@functools.cache
def _char_classes() -> tuple[np.ndarray, np.ndarray]:
  """Two-level table of this Python's Unicode database: class of code point c is
  ``rows[block[c >> 8], c & 255]`` with 0 other, 1 whitespace (`re`'s `\\s`, i.e.
  `str.isspace`), 2 + d decimal digit d (`\\d`, i.e. `str.isdecimal`; `float` reads it)."""
  cls = np.zeros(sys.maxunicode + 1, np.uint8)
  for c in range(sys.maxunicode + 1):
    ch = chr(c)
    if ch.isspace():
      cls[c] = 1
    elif ch.isdecimal():
      cls[c] = 2 + int(ch)
  rows, block = np.unique(cls.reshape(-1, 256), axis=0, return_inverse=True)
  return block.astype(np.int32).reshape(-1), rows


class Parsed(NamedTuple):
  format_N: jax.Array    # float32 0/1
  valid_N: jax.Array     # bool: a number was found
  score_N: jax.Array     # float32 parsed score (0 where invalid)
  decimals_N: jax.Array  # int32 decimals (`RewardConfig.decimals`: as written, or float_str)


def _shift(x_NL: jax.Array, k: int, fill=0) -> jax.Array:
  """y[:, l] = x[:, l + k] (k may be negative), ``fill`` outside."""
  if k == 0:
    return x_NL
  if abs(k) >= x_NL.shape[1]:  # shorter than the shift (e.g. a tag longer than the text)
    return jnp.full_like(x_NL, fill)
  pad = jnp.full((x_NL.shape[0], abs(k)), fill, x_NL.dtype)
  if k > 0:
    return jnp.concatenate([x_NL[:, k:], pad], axis=1)
  return jnp.concatenate([pad, x_NL[:, :k]], axis=1)


def _at(x_NL: jax.Array, idx_N: jax.Array, fill=0) -> jax.Array:
  """x[n, idx[n]], ``fill`` where idx is outside [0, L)."""
  L = x_NL.shape[1]
  ok = (idx_N >= 0) & (idx_N < L)
  got = jnp.take_along_axis(x_NL, jnp.clip(idx_N, 0, L - 1)[:, None], 1)[:, 0]
  return jnp.where(ok, got, jnp.asarray(fill, x_NL.dtype))


def _match(b_NL: jax.Array, tag: str) -> jax.Array:
  """True where ``tag`` (ASCII) starts."""
  hit = jnp.ones(b_NL.shape, bool)
  for k, ch in enumerate(tag.encode()):
    hit &= _shift(b_NL, k) == ch
  return hit


def _first(flag_NL: jax.Array, reverse_fill: int) -> jax.Array:
  """For each l, the smallest j >= l with flag[j], else ``reverse_fill``."""
  L = flag_NL.shape[1]
  return jax.lax.cummin(jnp.where(flag_NL, jnp.arange(L), reverse_fill), axis=1, reverse=True)


def parse_completions(bytes_NL: jax.Array, length_N: jax.Array,
                      score_clip: float = RewardConfig.score_clip,
                      decimals: str = "written") -> Parsed:
  """Format flag and first-number parse of UTF-8 completions (see the module docstring);
  ``decimals``: `RewardConfig.decimals`."""
  L = bytes_NL.shape[1]
  pos_L = jnp.arange(L)
  n_N = jnp.minimum(length_N.astype(jnp.int32), L)
  b = jnp.where(pos_L < n_N[:, None], bytes_NL.astype(jnp.int32), 0)
  space_byte, digit_start, digit_byte, digit_val = _char_flags(b)
  open_ans, close_ans = _match(b, "<answer>"), _match(b, "</answer>")
  fmt_N = _format_flag(b, n_N, space_byte, open_ans, close_ans)
  lo_N, hi_N = _last_answer_span(n_N, open_ans, close_ans)
  valid_N, neg_N, d0_N, e1_N, e2_N, has_frac = _first_number(b, digit_start, digit_byte,
                                                             lo_N, hi_N)
  value_N, decimals_N = _number_value(digit_start, digit_val, d0_N, e1_N, e2_N, has_frac)
  if decimals == "float_str":
    decimals_N = _float_str_decimals(digit_start, digit_val, d0_N, e1_N, e2_N)
  value_N = jnp.clip(jnp.where(neg_N, -value_N, value_N), -score_clip, score_clip)
  return Parsed(format_N=fmt_N.astype(jnp.float32), valid_N=valid_N,
                score_N=jnp.where(valid_N, value_N, 0.0),
                decimals_N=jnp.where(valid_N, decimals_N, 0).astype(jnp.int32))


def _char_flags(b):
  """Per byte of [N, L] UTF-8 (0 past the end): whether it belongs to a whitespace
  character, whether it starts / belongs to a decimal digit, and the digit's value."""
  # UTF-8: the well-formed sequence starting at each byte, decided from 3 bytes of look-ahead
  # (continuation bytes never start one, so no left context is needed). Anything else is a
  # one-byte replacement character, which no pattern below can match.
  b1, b2, b3 = _shift(b, 1), _shift(b, 2), _shift(b, 3)
  cont = lambda x: (x >= 0x80) & (x <= 0xBF)
  in_ = lambda x, lo, hi: (x >= lo) & (x <= hi)
  two = in_(b, 0xC2, 0xDF) & cont(b1)
  three = (in_(b, 0xE0, 0xEF) & cont(b2)
           & in_(b1, jnp.where(b == 0xE0, 0xA0, 0x80), jnp.where(b == 0xED, 0x9F, 0xBF)))
  four = (in_(b, 0xF0, 0xF4) & cont(b2) & cont(b3)
          & in_(b1, jnp.where(b == 0xF0, 0x90, 0x80), jnp.where(b == 0xF4, 0x8F, 0xBF)))
  c1, c2, c3 = b1 & 0x3F, b2 & 0x3F, b3 & 0x3F
  cp = jnp.where(b < 0x80, b, -1)
  cp = jnp.where(two, ((b & 0x1F) << 6) | c1, cp)
  cp = jnp.where(three, ((b & 0x0F) << 12) | (c1 << 6) | c2, cp)
  cp = jnp.where(four, ((b & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3, cp)
  nbytes = jnp.where(two, 2, jnp.where(three, 3, jnp.where(four, 4, 1)))

  block, rows = _char_classes()
  cls = jnp.asarray(rows)[jnp.asarray(block)[jnp.maximum(cp, 0) >> 8], jnp.maximum(cp, 0) & 255]
  cls = jnp.where(cp >= 0, cls.astype(jnp.int32), 0)
  is_space, digit_start, digit_val = cls == 1, cls >= 2, cls - 2

  def whole_char(start_flag):  # extend a per-character flag over its continuation bytes
    out = start_flag
    for k in (1, 2, 3):
      out |= _shift(start_flag & (nbytes > k), -k, False)
    return out

  return whole_char(is_space), digit_start, whole_char(digit_start), digit_val


def _format_flag(b, n_N, space_byte, open_ans, close_ans):
  """Whether the whole text is "<think>" A "</think>" W "<answer>" B "</answer>", W
  whitespace. "</think>" ends in '>', so for an "<answer>" at q the only possible W is the
  maximal whitespace run ending at q: "</think>" must end exactly where that run starts."""
  L = b.shape[1]
  pos_L = jnp.arange(L)
  open_think, close_think = _match(b, "<think>"), _match(b, "</think>")
  prev_nonspace = jax.lax.cummax(jnp.where(space_byte, -1, pos_L), axis=1)
  run_start = _shift(prev_nonspace, -1, -1) + 1          # start of the run ending at l - 1
  think_at = jnp.take_along_axis(close_think, jnp.clip(run_start - 8, 0, L - 1), 1)
  split_ok = (open_ans & think_at & (run_start - 8 >= 7)
              & (pos_L + 8 <= n_N[:, None] - 9)).any(axis=1)
  return open_think[:, 0] & _at(close_ans, n_N - 9, False) & split_ok


def _last_answer_span(n_N, open_ans, close_ans):
  """[lo, hi) of the last findall match of "<answer>(.*?)</answer>" (the whole text when
  none). Scanning left to right, an "<answer>" at i matches iff a "</answer>" starts at or
  after i + 8; it ends at the first such j and the scan resumes at j + 9. Pointer jumping
  over "next match" finds the chain's last element."""
  N, L = open_ans.shape
  pos_L = jnp.arange(L)
  close_from = _shift(_first(close_ans, L), 8, L)        # first "</answer>" at >= l + 8
  cand = open_ans & (close_from < L)
  next_cand = jnp.concatenate([_first(cand, L), jnp.full((N, 1), L)], axis=1)
  jump = jnp.take_along_axis(next_cand, jnp.minimum(close_from + 9, L), 1)
  f = jnp.where(cand & (jump < L), jump, pos_L)
  for _ in range(max(1, math.ceil(math.log2(L)))):
    f = jnp.take_along_axis(f, f, 1)
  first_match = next_cand[:, 0]
  has_match = first_match < L
  last = _at(f, first_match, 0)
  return (jnp.where(has_match, last + 8, 0),
          jnp.where(has_match, _at(close_from, last, L), n_N))


def _first_number(b, digit_start, digit_byte, lo_N, hi_N):
  """The first "-?\\d+(\\.\\d+)?" in [lo, hi): leftmost start, greedy digits, optional
  fraction. Returns (found, negative, first digit, end of the integer digits, end of the
  number, has a fraction)."""
  L = b.shape[1]
  pos_L = jnp.arange(L)
  region = (pos_L >= lo_N[:, None]) & (pos_L < hi_N[:, None])
  minus = b == ord("-")
  digit_next = _shift(digit_start, 1, False) & (pos_L + 1 < hi_N[:, None])
  starts = region & (digit_start | (minus & digit_next))
  s_N = jnp.min(jnp.where(starts, pos_L, L), axis=1)
  valid_N = s_N < L
  neg_N = valid_N & _at(minus, s_N, False)
  d0_N = s_N + neg_N
  nondigit_from = _first(~digit_byte | (pos_L >= hi_N[:, None]), L)
  e1_N = _at(nondigit_from, d0_N, L)                     # end of the integer digits
  has_frac = _at(b, e1_N) == ord(".")
  has_frac &= _at(digit_start, e1_N + 1, False) & (e1_N + 1 < hi_N)
  e2_N = jnp.where(has_frac, _at(nondigit_from, e1_N + 1, L), e1_N)
  return valid_N, neg_N, d0_N, e1_N, e2_N, has_frac


def _number_value(digit_start, digit_val, d0_N, e1_N, e2_N, has_frac):
  """(|value|, decimals) of the number whose digits span [d0, e2). Up to 7 digits (all
  real scores) the integer mantissa is exact in float32 and one division rounds it: the
  score is float32(the decimal). Longer numbers sum digit x 10^k, exponents counted in
  characters (digits may be multi-byte) and clamped to float32 range."""
  N, L = digit_start.shape
  pos_L = jnp.arange(L)
  ex = jnp.concatenate([jnp.zeros((N, 1), jnp.int32),
                        jnp.cumsum(digit_start.astype(jnp.int32), axis=1)], axis=1)  # [N, L+1]
  cnt_before = ex[:, :-1]                                # digit starts in [0, l)
  in_int = digit_start & (pos_L >= d0_N[:, None]) & (pos_L < e1_N[:, None])
  in_frac = digit_start & (pos_L > e1_N[:, None]) & (pos_L < e2_N[:, None]) & has_frac[:, None]
  decimals_N = jnp.where(has_frac, _at(ex, e2_N) - _at(ex, e1_N + 1), 0)
  exp = jnp.where(in_int, _at(ex, e1_N)[:, None], _at(ex, e1_N + 1)[:, None]) - cnt_before - 1
  digits = in_int | in_frac
  pow10 = jnp.asarray([10.0 ** k for k in range(-45, 39)], jnp.float32)
  dv = jnp.where(digits, digit_val, 0)
  approx_N = (dv * pow10[jnp.clip(exp, -45, 38) + 45]).sum(1)
  pow10_int = jnp.asarray([10 ** k for k in range(7)], jnp.int32)
  mant_N = (dv * pow10_int[jnp.clip(exp + decimals_N[:, None], 0, 6)]).sum(1)
  exact_N = mant_N.astype(jnp.float32) / pow10[jnp.minimum(decimals_N, 38) + 45]
  return jnp.where(digits.sum(1) <= 7, exact_N, approx_N), decimals_N


def _float_str_decimals(digit_start, digit_val, d0_N, e1_N, e2_N):
  """The release's decimal count of the number whose digits span [d0, e2) (integer digits
  end at e1): `len(str(float(x)).split('.')[-1].rstrip('0'))` if '.' is in it, else 0.

  With the significant digits S (n of them) and Python's decimal-point position k
  (x = 0.S x 10^k), `repr` writes S with a point (count max(0, n - k); "4" -> "4.0" -> 0)
  for -4 < k <= 16, else in exponent form: "1e+16" (n = 1: no point, 0) or
  "1.5e+16" -> "5e+16" (n - 1 + 2 + the exponent's digits, at least 2, trailing zeros
  dropped: "1.5e+20" -> "5e+2"). Exact up to 15 significant digits (a double holds
  those: `repr` gives S back), for zero ("0.0", "-0.0" -> 0), for x >= 1e309 ('inf') and
  x < 1e-323 ('0.0', '5e-324', '1e-323'). Approximate: 16 or more significant digits
  are taken rounded to 17 (half up) with trailing zeros dropped, where Python prints the
  shortest string that reads back as the same double (e.g. "3.5000000000000001" is 3.5:
  1, here 16); subnormal doubles (1e-323 <= x < 1e-307), which print fewer digits; and
  1.8e308 <= x < 1e309, which is 'inf' there.
  """
  N, L = digit_start.shape
  pos_L = jnp.arange(L)
  ex = jnp.concatenate([jnp.zeros((N, 1), jnp.int32),
                        jnp.cumsum(digit_start.astype(jnp.int32), axis=1)], axis=1)
  k_NL = ex[:, :-1] - _at(ex, d0_N)[:, None]            # index of each digit in D = int ++ frac
  in_num = digit_start & (pos_L >= d0_N[:, None]) & (pos_L < e2_N[:, None])
  n_int_N = _at(ex, e1_N) - _at(ex, d0_N)
  big = jnp.int32(L + 1)
  nonzero = in_num & (digit_val > 0)
  first_N = jnp.min(jnp.where(nonzero, k_NL, big), axis=1)
  last_N = jnp.max(jnp.where(nonzero, k_NL, -1), axis=1)
  is_zero_N = first_N == big
  n_N = last_N - first_N + 1
  point_N = n_int_N - first_N                            # Python's decpt
  # More than 17 significant digits: round to 17 on the 18th.
  sig17 = in_num & (k_NL >= first_N[:, None]) & (k_NL < first_N[:, None] + 17)
  up_N = jnp.max(jnp.where(in_num & (k_NL == first_N[:, None] + 17), digit_val, 0), axis=1) >= 5
  last_non9_N = jnp.max(jnp.where(sig17 & (digit_val != 9), k_NL, -1), axis=1)
  last_nz17_N = jnp.max(jnp.where(sig17 & (digit_val > 0), k_NL, -1), axis=1)
  carry_N = up_N & (last_non9_N < 0)                     # 99..9 -> 1 at the next power of ten
  n17_N = jnp.where(up_N, jnp.where(carry_N, 1, last_non9_N - first_N + 1),
                    last_nz17_N - first_N + 1)
  rounded = n_N > 17
  n_N = jnp.where(rounded, n17_N, n_N)
  point_N = jnp.where(rounded & carry_N, point_N + 1, point_N)
  fixed_N = jnp.maximum(n_N - point_N, 0)
  e_N = jnp.abs(point_N - 1)
  e_digits_N = jnp.maximum(2, 1 + (e_N >= 10) + (e_N >= 100))
  e_zeros_N = jnp.where(e_N % 10 == 0, jnp.where(e_N % 100 == 0, 2, 1), 0)
  sci_N = jnp.where(n_N > 1, n_N - 1 + 2 + e_digits_N - e_zeros_N, 0)
  out_N = jnp.where((point_N > -4) & (point_N <= 16), fixed_N, sci_N)
  out_N = jnp.where(is_zero_N | (point_N >= 310) | (point_N <= -323), 0, out_N)
  return out_N.astype(jnp.int32)


# ----------------------------------------------------------------------------- rewards


def regression_reward(p: Parsed, labels_N: jax.Array, cfg: RewardConfig) -> jax.Array:
  """Bell-shaped reward exp(-(s_hat - s)^2 / (2 sigma^2)), x coarse_penalty below
  ``min_decimals`` decimals; 0 when invalid."""
  bell = jnp.exp(-jnp.square(p.score_N - labels_N) / (2.0 * cfg.sigma ** 2))
  bell = bell * jnp.where(p.decimals_N < cfg.min_decimals, cfg.coarse_penalty, 1.0)
  return jnp.where(p.valid_N, bell, 0.0)


def _blocks(B: int, cfg: RewardConfig, micro: bool) -> jax.Array:
  return jnp.arange(B) // cfg.micro_videos if micro else jnp.zeros((B,), jnp.int32)


def ranking_reward(p: Parsed, labels_B: jax.Array, cfg: RewardConfig) -> jax.Array:
  """Fidelity ranking reward of each completion against the other videos' valid
  predictions (docs/method.md §3, project edge cases)."""
  B = labels_B.shape[0]
  G = p.score_N.shape[0] // B
  valid_BG = p.valid_N.reshape(B, G)
  s_BG = jnp.where(valid_BG, p.score_N.reshape(B, G), 0.0)
  cnt_B = valid_BG.sum(1)
  mean_B = s_BG.sum(1) / jnp.maximum(cnt_B, 1)
  ss_B = jnp.where(valid_BG, jnp.square(s_BG - mean_B[:, None]), 0.0).sum(1)
  var_B = jnp.where(cnt_B >= 2, ss_B / jnp.maximum(cnt_B - 1, 1), 0.0)
  block_B = _blocks(B, cfg, cfg.pairing == "micro")
  comp_BZ = ((block_B[:, None] == block_B[None, :]) & ~jnp.eye(B, dtype=bool)
             & (cnt_B > 0)[None, :])
  g_BZ = jnp.where(labels_B[:, None] > labels_B[None, :], 1.0,
                   jnp.where(labels_B[:, None] < labels_B[None, :], 0.0, 0.5))
  scale_BZ = jnp.sqrt(var_B[:, None] + var_B[None, :] + cfg.variance_eps)
  x_BGZ = (s_BG[:, :, None] - mean_B[None, None, :]) / scale_BZ[:, None, :]
  # Phi(-x) rather than 1 - Phi(x): float32 keeps the upper tail.
  p_BGZ, q_BGZ = ndtr(x_BGZ), ndtr(-x_BGZ)
  g = g_BZ[:, None, :]
  r_BGZ = jnp.sqrt(p_BGZ * g + cfg.fidelity_eps) + jnp.sqrt(q_BGZ * (1.0 - g) + cfg.fidelity_eps)
  comp = comp_BZ[:, None, :]
  n_B = comp_BZ.sum(1)
  r_BG = jnp.where(comp, r_BGZ, 0.0).sum(2) / jnp.maximum(n_B, 1)[:, None]
  r_BG = jnp.where(valid_BG & (n_B > 0)[:, None], r_BG, 0.0)
  return r_BG.reshape(-1)


def _scope_mean(x_N: jax.Array, B: int, cfg: RewardConfig) -> jax.Array:
  """Per-completion mean of ``x`` over its video group, or its micro-batch of videos."""
  x_BG = x_N.reshape(B, -1)
  if cfg.temporal_scope == "group":
    m_B = x_BG.mean(1)
  else:
    block_B = _blocks(B, cfg, True)
    same_BZ = block_B[:, None] == block_B[None, :]
    m_B = (same_BZ * x_BG.sum(1)[None, :]).sum(1) / (same_BZ.sum(1) * x_BG.shape[1])
  return jnp.repeat(m_B, x_BG.shape[1])


def group_advantages(total_N: jax.Array, G: int, eps: float) -> jax.Array:
  """(r - mean_G) / (std_G + eps), unbiased std (taken as 0 when G = 1)."""
  r_BG = total_N.reshape(-1, G)
  d_BG = r_BG - r_BG.mean(1, keepdims=True)
  std_B = jnp.sqrt(jnp.square(d_BG).sum(1) / (G - 1)) if G > 1 else jnp.zeros(r_BG.shape[0])
  return (d_BG / (std_B[:, None] + eps)).reshape(-1)


def random_scores(p: Parsed, key: jax.Array) -> Parsed:
  """The release's fallback: where no number parsed, a score from randint(1, 5) (an
  integer: no decimals, written or as str()), and every completion counts as valid."""
  lo, hi = RANDOM_SCORES
  draw_N = jax.random.randint(key, p.score_N.shape, lo, hi + 1).astype(p.score_N.dtype)
  return Parsed(format_N=p.format_N, valid_N=jnp.ones_like(p.valid_N),
                score_N=jnp.where(p.valid_N, p.score_N, draw_N),
                decimals_N=jnp.where(p.valid_N, p.decimals_N, 0))


def compute_rewards(parsed: Parsed, labels_B: jax.Array, cfg: RewardConfig = RewardConfig(),
                    perturbed: Parsed | None = None,
                    key: jax.Array | None = None) -> dict[str, jax.Array]:
  """Per-completion rewards ([N] each) from parsed completions, video-major N = B x G.

  ``perturbed``: the parse of the G rollouts per video on the temporally perturbed copies;
  when given, the temporal bonus is added to ``ranking`` / ``regression`` (docs/method.md §3).
  ``key``: for ``cfg.invalid = "random"`` (`random_scores`, one draw for the regression and
  another for the ranking reward, of the original and of the perturbed rollouts); the
  outputs ``valid`` and ``score`` stay the parse's own.
  """
  B = labels_B.shape[0]
  N = parsed.score_N.shape[0]
  if N % B:
    raise ValueError(f"{N} completions do not split into {B} videos")
  G = N // B
  labels_B = labels_B.astype(jnp.float32)
  labels_N = jnp.repeat(labels_B, G)
  # The parses each reward reads: the same, or with the release's random scores (its
  # regression and ranking functions each parse, and so each draw, on their own).
  for_reg = for_rank = parsed
  p_for_reg = p_for_rank = perturbed
  if cfg.invalid == "random":
    if key is None:
      raise ValueError("RewardConfig.invalid='random' draws scores: pass a key")
    k_reg, k_rank, k_p_reg, k_p_rank = jax.random.split(key, 4)
    for_reg, for_rank = random_scores(parsed, k_reg), random_scores(parsed, k_rank)
    if perturbed is not None:
      p_for_reg = random_scores(perturbed, k_p_reg)
      p_for_rank = random_scores(perturbed, k_p_rank)
  reg_N = regression_reward(for_reg, labels_N, cfg)
  rank_N = ranking_reward(for_rank, labels_B, cfg)
  bonus_rank_N = bonus_reg_N = jnp.zeros((N,), jnp.float32)
  if perturbed is not None:
    p_reg_N = regression_reward(p_for_reg, labels_N, cfg)
    p_rank_N = ranking_reward(p_for_rank, labels_B, cfg)
    better_rank = _scope_mean(rank_N, B, cfg) >= _scope_mean(p_rank_N, B, cfg)
    better_reg = _scope_mean(reg_N, B, cfg) >= _scope_mean(p_reg_N, B, cfg)
    bonus_rank_N = jnp.where(better_rank & (rank_N > cfg.temporal_rank_threshold),
                             cfg.temporal_bonus, 0.0)
    bonus_reg_N = jnp.where(better_reg & (reg_N > cfg.temporal_reg_threshold),
                            cfg.temporal_bonus, 0.0)
    rank_N, reg_N = rank_N + bonus_rank_N, reg_N + bonus_reg_N
  total_N = (cfg.ranking_weight * rank_N + cfg.regression_weight * reg_N
             + cfg.format_weight * parsed.format_N)
  return {"format": parsed.format_N, "regression": reg_N, "ranking": rank_N, "total": total_N,
          "advantage": group_advantages(total_N, G, cfg.advantage_eps),
          "valid": parsed.valid_N, "score": parsed.score_N, "decimals": parsed.decimals_N,
          "bonus_ranking": bonus_rank_N, "bonus_regression": bonus_reg_N}


def rewards_from_bytes(bytes_NL: jax.Array, length_N: jax.Array, labels_B: jax.Array,
                       cfg: RewardConfig = RewardConfig(),
                       perturbed: tuple[jax.Array, jax.Array] | None = None,
                       key: jax.Array | None = None) -> dict[str, jax.Array]:
  """`compute_rewards` of UTF-8 completions; ``perturbed`` is (bytes, length) or None."""
  parsed = parse_completions(bytes_NL, length_N, cfg.score_clip, cfg.decimals)
  pert = (None if perturbed is None else
          parse_completions(*perturbed, cfg.score_clip, cfg.decimals))
  return compute_rewards(parsed, labels_B, cfg, pert, key)


def rewards_from_ids(table: ByteTable, ids_NC: jax.Array, mask_NC: jax.Array,
                     labels_B: jax.Array, cfg: RewardConfig = RewardConfig(), *,
                     perturbed: tuple[jax.Array, jax.Array] | None = None,
                     max_bytes: int | None = None,
                     key: jax.Array | None = None) -> dict[str, jax.Array]:
  """Rewards of sampled completions, all on device (jittable; ``cfg`` static).

  ``mask_NC`` selects the completion tokens (up to and including the first EOS; special
  tokens decode to nothing). ``perturbed``: (ids, mask) of the perturbed rollouts. Adds
  ``overflow`` (completion longer than ``max_bytes``, see `detokenize`). ``key``: see
  `compute_rewards`.
  """
  bytes_NL, n_N, over_N = detokenize(table, ids_NC, mask_NC, max_bytes)
  pert = None
  if perturbed is not None:
    pb, pn, pover = detokenize(table, *perturbed, max_bytes)
    pert, over_N = (pb, pn), over_N | pover.reshape(over_N.shape)
  out = rewards_from_bytes(bytes_NL, n_N, labels_B, cfg, pert, key)
  out["overflow"] = over_N
  return out


# ----------------------------------------------------------------------------- host wrapper


_parse_jit = jax.jit(parse_completions, static_argnames=("score_clip", "decimals"))


@functools.partial(jax.jit, static_argnames=("cfg", "rows"))
def _compute_jit(parsed: Parsed, labels_B, cfg: RewardConfig, rows: int, perturbed=None,
                 key=None):
  cut = lambda p: jax.tree.map(lambda x: x[:rows], p)
  return compute_rewards(cut(parsed), labels_B, cfg, None if perturbed is None else cut(perturbed),
                         key)


def _bucket(n: int, least: int) -> int:
  return max(least, 1 << max(n - 1, 0).bit_length())


def encode_texts(texts, length: int | None = None,
                 rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(bytes_NL uint8, length_N int32) of UTF-8 texts (lone surrogates kept as their
  ill-formed bytes, which parse as replacement characters, as Python's `re` treats them).
  L defaults to the longest rounded up to a power of two (at least 256); ``rows`` pads N
  with empty texts."""
  raw = [t.encode("utf-8", "surrogatepass") for t in texts]
  longest = max((len(r) for r in raw), default=0)
  L = length if length is not None else _bucket(longest, 256)
  if longest > L:
    raise ValueError(f"a text has {longest} bytes, more than length {L}")
  out = np.zeros((rows or len(raw), L), np.uint8)
  lengths = np.zeros((rows or len(raw),), np.int32)
  for i, r in enumerate(raw):
    out[i, :len(r)] = np.frombuffer(r, np.uint8)
    lengths[i] = len(r)
  return out, lengths


def score_texts(texts, labels, group_size: int, perturbed=None,
                config: RewardConfig | None = None, key=None) -> dict[str, np.ndarray]:
  """Rewards of decoded completions through the same device code (a byte-level table).

  ``texts``: the B x G completions, video-major; ``labels``: B scores (or B x G, one per
  completion, constant within a group); ``perturbed``: B x G perturbed completions or None.
  Returns numpy arrays [B x G] under ``format``, ``regression``, ``ranking``, ``total``,
  ``advantage`` (plus ``valid``, ``score``, ``decimals``, ``bonus_*``). Shapes are padded
  to buckets with empty videos, which are no comparator and in no group, so that calls of
  similar size share one compilation (not with ``invalid = "random"``, whose empty videos
  would draw scores). ``key``: see `compute_rewards`.
  """
  cfg = config or RewardConfig()
  texts = list(texts)
  G = int(group_size)
  if G < 1 or len(texts) % G:
    raise ValueError(f"{len(texts)} texts do not split into groups of {G}")
  B = len(texts) // G
  labels = np.asarray(labels, np.float32).reshape(-1)
  if labels.shape[0] == len(texts) and G > 1:
    labels = labels[::G]
  if labels.shape[0] != B:
    raise ValueError(f"{labels.shape[0]} labels for {B} videos")
  m = cfg.micro_videos
  if (cfg.temporal_scope == "micro" and B % m) or cfg.invalid == "random":
    B_pad = B  # padded videos would join the last micro-batch's means / draw random scores
  else:
    B_pad = -(-_bucket(B, 4) // m) * m if "micro" in (cfg.pairing, cfg.temporal_scope) else (
        _bucket(B, 4))
  rows = _bucket(B_pad * G, 8)
  raw = [t.encode("utf-8", "surrogatepass") for t in texts + list(perturbed or [])]
  L = _bucket(max((len(r) for r in raw), default=0), 256)
  parsed = _parse_jit(*encode_texts(texts, L, rows), score_clip=cfg.score_clip,
                      decimals=cfg.decimals)
  pert = None
  if perturbed is not None:
    if len(perturbed) != len(texts):
      raise ValueError(f"{len(perturbed)} perturbed completions for {len(texts)} texts")
    pert = _parse_jit(*encode_texts(perturbed, L, rows), score_clip=cfg.score_clip,
                      decimals=cfg.decimals)
  labels_B = np.zeros((B_pad,), np.float32)
  labels_B[:B] = labels
  out = _compute_jit(parsed, labels_B, cfg=cfg, rows=B_pad * G, perturbed=pert, key=key)
  return {k: np.asarray(v)[:B * G] for k, v in out.items()}
