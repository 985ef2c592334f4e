"""Temporal perturbations of docs/method.md §3 as frame-index maps (host) and one gather (device).

Legend: B = videos, G = perturbed copies per video, T = frames, H x W x C = frame pixels.

The host draws, per copy, a mode and an index map `perturb_idx_GxT` (output frame t shows
input frame idx[t]) with a mask `blank_GxT` of frames replaced by the blank value, so only
G x T integers cross to the device instead of G copies of the pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("shuffle", "local_shuffle", "reverse", "jitter", "duplicate", "random_drop")
LOCAL_WINDOW = 4
MAX_DUPLICATES = 3
MAX_DROPS = 3
# The reference blanks to 0 after ImageNet normalisation, i.e. the mean colour.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
REFERENCE_BLANK_UINT8 = tuple(int(round(255 * m)) for m in IMAGENET_MEAN_RGB)


def indices(mode, num_frames, rng):
  """(idx_T int32, blank_T bool) for one copy in `mode`, drawn with numpy Generator `rng`."""
  t = num_frames
  idx_T = np.arange(t)
  blank_T = np.zeros(t, bool)
  if mode == "shuffle":
    idx_T = rng.permutation(t)
  elif mode == "local_shuffle":
    for start in range(0, t, LOCAL_WINDOW):
      idx_T[start:start + LOCAL_WINDOW] = rng.permutation(idx_T[start:start + LOCAL_WINDOW])
  elif mode == "reverse":
    idx_T = idx_T[::-1]
  elif mode == "jitter":
    idx_T = np.clip(idx_T + rng.integers(-1, 2, t), 0, t - 1)
  elif mode == "duplicate":
    idx_T = _duplicate(t, rng)
  elif mode == "random_drop":
    blank_T[rng.choice(t, rng.integers(1, min(MAX_DROPS, t) + 1), replace=False)] = True
  else:
    raise ValueError(f"unknown perturbation mode {mode!r}; expected one of {MODES}")
  return np.ascontiguousarray(idx_T, np.int32), blank_T


def _duplicate(t, rng):
  """The reference's duplicate: n copies of frame d go in at an independent position
  (0..t, before frame `pos`), then n of the t original frames, chosen uniformly (d among
  them), are removed; the output is often out of order."""
  if t < 2:
    return np.arange(t)
  d = int(rng.integers(t))
  n = int(rng.integers(1, min(MAX_DUPLICATES, t - 1) + 1))
  pos = int(rng.integers(t + 1))
  keep_T = np.ones(t, bool)
  keep_T[rng.choice(t, n, replace=False)] = False
  frames_T = np.arange(t)
  return np.concatenate([frames_T[:pos][keep_T[:pos]], np.full(n, d),
                         frames_T[pos:][keep_T[pos:]]])


def sample(rng, num_copies, num_frames, modes=MODES):
  """G copies with modes drawn uniformly -> (mode_G int32 index into `modes`,
  perturb_idx_GxT int32, blank_GxT bool)."""
  mode_G = rng.integers(len(modes), size=num_copies).astype(np.int32)
  perturb_idx_GxT = np.empty((num_copies, num_frames), np.int32)
  blank_GxT = np.empty((num_copies, num_frames), bool)
  for g, m in enumerate(mode_G):
    perturb_idx_GxT[g], blank_GxT[g] = indices(modes[m], num_frames, rng)
  return mode_G, perturb_idx_GxT, blank_GxT


def apply_perturbations(frames_BTHWC, idx_BGT, blank_BGT, blank_value=None):
  """Device-side gather: frames_BGTHWC[b, g, t] = frames_BTHWC[b, idx_BGT[b, g, t]], blanked.

  blank_value: scalar or per-channel [C]; None is the reference's mean grey, i.e. 0 for
  floating (already normalised) frames and REFERENCE_BLANK_UINT8 for integer frames.
  """
  if blank_value is None:
    blank_value = (0.0 if jnp.issubdtype(frames_BTHWC.dtype, jnp.floating)
                   else REFERENCE_BLANK_UINT8)
  frames_BGTHWC = jax.vmap(lambda f_THWC, i_GT: f_THWC[i_GT])(frames_BTHWC, idx_BGT)
  blank = jnp.asarray(blank_value, frames_BTHWC.dtype)
  return jnp.where(blank_BGT[..., None, None, None], blank, frames_BGTHWC)
