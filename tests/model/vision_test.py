"""Position-embedding resize against PyTorch's bicubic; pixel shuffle against docs/method.md §6."""

import numpy as np
import pytest

import tolerance
from vqathinker_jax.model import vision


@pytest.mark.parametrize("in_size, out_size", [(32, 40), (32, 32), (4, 6), (6, 4), (32, 16)])
def test_bicubic_matrix_matches_torch_interpolate(in_size, out_size):
  import torch
  grid = np.random.default_rng(0).standard_normal((1, 5, in_size, in_size)).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.tensor(grid), size=(out_size, out_size),
                                        mode="bicubic", align_corners=False).numpy()
  ours = np.asarray(vision.resize_pos_embed(grid[0].transpose(1, 2, 0), out_size, out_size))
  # A 4x4-tap weighted sum per output, in our order and in torch's.
  tolerance.assert_close(ours.transpose(2, 0, 1), ref[0], 92, name="resized")


def test_bicubic_rows_sum_to_one_and_identity_at_same_size():
  m = vision.bicubic_matrix(32, 40)
  tolerance.assert_close(m.sum(1), np.ones(40), 4, name="row sums")
  np.testing.assert_array_equal(vision.bicubic_matrix(7, 7), np.eye(7, dtype=np.float32))


def test_pixel_shuffle_token_order():
  """Token (i, j) = patches (2i,2j), (2i,2j+1), (2i+1,2j), (2i+1,2j+1), row-major."""
  N, h, w, C = 2, 4, 6, 3
  x = np.random.default_rng(1).standard_normal((N, h, w, C)).astype(np.float32)
  out = np.asarray(vision.pixel_shuffle(x))
  assert out.shape == (N, (h // 2) * (w // 2), 4 * C)
  for i in range(h // 2):
    for j in range(w // 2):
      expect = np.concatenate([x[:, 2 * i, 2 * j], x[:, 2 * i, 2 * j + 1],
                               x[:, 2 * i + 1, 2 * j], x[:, 2 * i + 1, 2 * j + 1]], -1)
      np.testing.assert_array_equal(out[:, i * (w // 2) + j], expect)


def test_pixel_shuffle_rejects_odd_grid():
  with pytest.raises(ValueError, match="even patch grid"):
    vision.pixel_shuffle(np.zeros((1, 3, 4, 2), np.float32))
