"""Grain pipeline: batches, determinism, per-epoch shuffle, host sharding, checkpoint/restore."""

import collections
import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import builder
from data_pipelines import perturb
from data_pipelines import pipeline
from data_pipelines import synthetic

T, S, B, G = 6, 32, 4, 4


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  labels_path, videos = synthetic.generate(str(root / "src"), num_videos=26, seed=1,
                                           num_frames=12, height=32, width=32)
  data_dir = str(root / "data")
  builder.build("synthetic", labels_path, videos, data_dir, T, S, split="train", progress=False)
  return pipeline.data_source(data_dir, "synthetic", "train", T, S)


def _take(ds_or_it, n):
  it = iter(ds_or_it)
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batches_carry_frames_labels_and_consistent_perturbations(source):
  batch = _take(pipeline.dataset(source, batch_size=B, seed=0, num_copies=G), 1)[0]
  assert batch["frames"].shape == (B, T, S, S, 3) and batch["frames"].dtype == np.uint8
  assert batch["label"].dtype == np.float32
  assert ((1 <= batch["label"]) & (batch["label"] <= 5)).all()
  assert batch["video_id"].shape == (B,) and len(set(batch["video_id"])) == B
  assert batch["perturb_mode"].shape == (B, G)
  assert batch["perturb_idx"].shape == batch["blank"].shape == (B, G, T)
  assert batch["perturb_idx"].dtype == np.int32 and batch["blank"].dtype == np.bool_
  for mode_G, idx_GxT, blank_GxT in zip(batch["perturb_mode"], batch["perturb_idx"],
                                        batch["blank"]):
    for m, idx_T, blank_T in zip(mode_G, idx_GxT, blank_GxT):
      assert blank_T.any() == (perturb.MODES[m] == "random_drop")
      if perturb.MODES[m] == "reverse":
        assert list(idx_T) == list(range(T))[::-1]
  # The device gather turns the maps into G perturbed clips per video.
  out = np.asarray(perturb.apply_perturbations(
      jnp.asarray(batch["frames"]), batch["perturb_idx"], batch["blank"]))
  assert out.shape == (B, G, T, S, S, 3)
  b, g, t = 1, 2, 3
  if not batch["blank"][b, g, t]:
    np.testing.assert_array_equal(out[b, g, t], batch["frames"][b, batch["perturb_idx"][b, g, t]])


def test_same_seed_same_batches_other_seed_other_batches(source):
  a = _take(pipeline.dataset(source, batch_size=B, seed=7), 5)
  _assert_same(a, _take(pipeline.dataset(source, batch_size=B, seed=7), 5))
  c = _take(pipeline.dataset(source, batch_size=B, seed=8), 5)
  assert [list(x["video_id"]) for x in a] != [list(x["video_id"]) for x in c]


def test_each_epoch_is_a_fresh_shuffle_with_fresh_perturbations(source):
  n = len(source)
  batches = list(pipeline.dataset(source, batch_size=1, seed=3, num_epochs=2))
  assert len(batches) == 2 * n
  ids = [b["video_id"][0] for b in batches]
  first, second = ids[:n], ids[n:]
  assert sorted(first) == sorted(second) and len(set(first)) == n  # each record once per epoch
  assert first != second and first != sorted(first)
  maps = collections.defaultdict(list)
  for b in batches:
    maps[b["video_id"][0]].append(b["perturb_idx"][0].tolist() + b["blank"][0].tolist())
  assert sum(m[0] != m[1] for m in maps.values()) > n // 2


@pytest.mark.parametrize("count", [1, 3, 4])
def test_host_sharding_covers_every_record_exactly_once(source, count):
  seen = []
  sizes = []
  for index in range(count):
    ds = pipeline.dataset(source, batch_size=3, seed=0, num_epochs=1, drop_remainder=False,
                          shard_index=index, shard_count=count)
    ids = [i for b in ds for i in b["video_id"]]
    sizes.append(len(ids))
    seen += ids
    if index == 1:  # hosts draw their own perturbations, not copies of host 0's
      first = next(iter(pipeline.dataset(source, batch_size=3, seed=0, shard_index=0,
                                         shard_count=count)))
      assert not np.array_equal(first["perturb_idx"], next(iter(ds))["perturb_idx"])
  all_ids = [r["video_id"].decode() for r in (source[i] for i in range(len(source)))]
  assert sorted(seen) == sorted(all_ids) and len(set(seen)) == len(source)
  assert max(sizes) - min(sizes) <= 3  # hosts at most a batch apart


@pytest.mark.parametrize("count", [1, 2, 4])
def test_hosts_split_the_batches_of_one_host(source, count):
  """Host k of n gets rows [k*b, (k+1)*b) of each global batch of n*b: the global batches
  (records, order, perturbations) are one host's, whatever the number of hosts."""
  b = 3
  hosts = [_take(pipeline.dataset(source, batch_size=b, seed=2, shard_index=k,
                                  shard_count=count), 3) for k in range(count)]
  one = _take(pipeline.dataset(source, batch_size=b * count, seed=2), 3)  # 4: 2 epochs
  for i, want in enumerate(one):
    _assert_same([want], [{k: np.concatenate([h[i][k] for h in hosts]) for k in want}])


def test_evaluation_mode_reads_every_record_once_in_order_without_perturbations(source):
  ds = pipeline.dataset(source, batch_size=5, seed=0, num_copies=0, shuffle=False, num_epochs=1,
                        drop_remainder=False)
  batches = list(ds)
  assert [len(b["video_id"]) for b in batches] == [5] * 5 + [1]
  assert batches[0]["perturb_idx"].shape == (5, 0, T)
  ids = [i for b in batches for i in b["video_id"]]
  assert ids == [source[i]["video_id"].decode() for i in range(len(source))]


def test_restore_mid_epoch_gives_the_same_following_batches(source, tmp_path):
  ds = pipeline.dataset(source, batch_size=B, seed=11)  # 26 records: 6.5 batches an epoch
  it = iter(ds)
  _take(it, 4)
  pipeline.save_iterator(str(tmp_path / "ckpt"), 4, it)
  expected = _take(it, 6)  # crosses into the next epoch
  fresh = iter(ds)
  restored = pipeline.restore_iterator(str(tmp_path / "ckpt"), 4, fresh)
  _assert_same(expected, _take(restored, 6))
  _assert_same(expected, _take(itertools.islice(pipeline.dataset(source, batch_size=B, seed=11),
                                                4, None), 6))


def test_worker_processes_give_the_same_batches(source):
  expected = _take(pipeline.dataset(source, batch_size=B, seed=5), 8)
  it = iter(pipeline.dataset(source, batch_size=B, seed=5, worker_count=2))
  try:
    _assert_same(expected, _take(it, 8))
  finally:
    it.close()


def test_bad_arguments_are_named(source):
  with pytest.raises(ValueError, match="shard_index 3"):
    pipeline.dataset(source, batch_size=B, seed=0, shard_index=3, shard_count=3)
  with pytest.raises(ValueError, match="is empty"):  # one pass: 6 batches of 4, not a whole 27 x 4
    pipeline.dataset(source, batch_size=B, seed=0, num_epochs=1, shard_index=len(source),
                     shard_count=len(source) + 1)
  with pytest.raises(ValueError, match="batch_size"):
    pipeline.dataset(source, batch_size=0, seed=0)
