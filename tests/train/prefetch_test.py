"""The trainer's prefetch thread: same batches, exact checkpoint positions, errors kept."""

import threading

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from vqathinker_jax.train import checkpointing, prefetch


def _source(n=20):
  """A Grain iterator of n/2 batches of two shuffled numbers (state: its position)."""
  ds = grain.MapDataset.range(n).seed(3).shuffle().batch(2)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))


def _prepare(batch):
  return {"x": np.asarray(batch) * 10}


def test_yields_the_prepared_batches_in_order_then_stops():
  want = [b * 10 for b in _source()]
  with prefetch.Prefetch(_source(), _prepare, depth=2) as it:
    got = [b["x"] for b in it]
    np.testing.assert_array_equal(got, want)
    with pytest.raises(StopIteration):
      next(it)


def test_prepares_the_next_batch_while_the_consumer_holds_this_one():
  calls, second = [], threading.Event()

  def prepare(batch):
    calls.append(batch)
    if len(calls) == 2:
      second.set()
    return batch

  with prefetch.Prefetch(_source(), prepare) as it:
    next(it)
    # Nobody asks for batch 2, yet it is read and prepared (the step would be running now).
    assert second.wait(timeout=30)
    assert len(calls) == 2  # depth 1: one batch ahead, no more


def test_state_is_the_position_after_the_batch_taken_not_the_read_ahead():
  plain, it = _source(), prefetch.Prefetch(_source(), _prepare, depth=3)
  for _ in range(4):
    next(plain), next(it)
  saved = it.get_state()
  rest = [b * 10 for b in plain]
  # A fresh pipeline moved to the saved position continues with exactly the batches after
  # the fourth, though the thread had read up to three more.
  resumed = prefetch.Prefetch(_source(), _prepare)
  resumed.set_state(saved)
  np.testing.assert_array_equal([b["x"] for b in resumed], rest)
  # Restoring the same object in place drops what it had read ahead.
  it.set_state(saved)
  np.testing.assert_array_equal([b["x"] for b in it], rest)


def test_checkpoint_round_trip_through_the_trainers_checkpointer(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path / "ckpt", save_every=1)
  state = {"w": jnp.arange(3.0)}
  with prefetch.Prefetch(_source(), _prepare) as it:
    next(it), next(it)
    ckpt.save(2, state, data_iterator=it)
    ckpt.wait()
    want = [b["x"] for b in it]
  with prefetch.Prefetch(_source(), _prepare) as fresh:
    ckpt.restore(2, state, data_iterator=fresh)
    np.testing.assert_array_equal([b["x"] for b in fresh], want)
  ckpt.close()


def test_an_error_while_preparing_is_raised_by_the_next_call_that_needs_it():
  def prepare(batch):
    if 7 in batch:
      raise ValueError("record 7: corrupt video")
    return batch

  order = [list(b) for b in _source()]
  bad = next(i for i, b in enumerate(order) if 7 in b)
  with prefetch.Prefetch(_source(), prepare) as it:
    for _ in range(bad):
      next(it)
    for _ in range(2):  # and again: it does not skip the batch
      with pytest.raises(ValueError, match="record 7"):
        next(it)
