"""Grain input pipeline over the pre-decoded ArrayRecord data sets.

Legend: B = batch, G = perturbed copies per video, T = frames, H x W x 3 = RGB pixels (uint8).

Per batch: `frames` [B, T, H, W, 3] uint8, `label` [B] float32 in [1, 5], `mos` [B] float32
(native scale), `video_id` [B] str, the source facts (`num_frames`, `fps`, `height`, `width`,
`rotation`, `short`, `repeated`) and the temporal perturbations: `perturb_mode` [B, G] int32
(index into the `modes` given, by default perturb.MODES), `perturb_idx` [B, G, T] int32 and
`blank` [B, G, T] bool, to be applied on device by `perturb.apply_perturbations`.
"""

from __future__ import annotations

import dataclasses

from absl import flags
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow_datasets as tfds

from data_pipelines import builder
from data_pipelines import perturb

_INT_FIELDS = ("num_frames", "height", "width", "rotation", "repeated")


def data_source(data_dir, name, split, frames, size, honour_rotation=True):
  """The random-access TFDS source of a data set built by `builder.build` (with the same
  ``honour_rotation``)."""
  return tfds.data_source(builder.tfds_name(name, frames, size, honour_rotation), split=split,
                          data_dir=data_dir)


@dataclasses.dataclass(frozen=True)
class ToExample(grain.transforms.RandomMap):
  """A TFDS record -> typed numpy example with its G perturbation maps.

  The rng is Grain's per-record generator (seeded from the pipeline seed and the record's
  position in the epoch-aware index), so the draws do not depend on workers or threads.
  """
  num_copies: int
  modes: tuple = perturb.MODES

  def random_map(self, record, rng):
    frames_TxHxWx3 = np.asarray(record["frames"])
    mode_G, idx_GxT, blank_GxT = perturb.sample(
        rng, self.num_copies, frames_TxHxWx3.shape[0], self.modes)
    video_id = record["video_id"]
    example = dict(
        frames=frames_TxHxWx3,
        label=np.float32(record["label"]),
        mos=np.float32(record["mos"]),
        video_id=video_id.decode() if isinstance(video_id, bytes) else str(video_id),
        fps=np.float32(record["fps"]),
        short=np.bool_(record["short"]),
        perturb_mode=mode_G, perturb_idx=idx_GxT, blank=blank_GxT)
    example.update({k: np.int32(record[k]) for k in _INT_FIELDS})
    return example


def dataset(source, *, batch_size, seed, num_copies=4, num_epochs=None, shuffle=True,
            shard_index=None, shard_count=None, drop_remainder=True, worker_count=0,
            worker_buffer_size=2, read_threads=4, prefetch=4, modes=perturb.MODES):
  """A batched `grain.IterDataset` over `source` (anything with __len__/__getitem__).

  The records are reshuffled every epoch from `seed` and repeated `num_epochs` times (None:
  forever; batches may then span an epoch boundary). Hosts split each global batch of
  `shard_count * batch_size` rows: host `shard_index` (default this JAX process of all)
  gets rows `[shard_index * batch_size, (shard_index + 1) * batch_size)`, the rows
  `jax.make_array_from_process_local_data` places on its devices when the mesh lists each
  process's devices together (`jax.devices()` order). So the global batches
  (records, order, perturbation draws) depend on `seed` alone, not on the number of hosts:
  a run on 2 hosts trains on what a run on 1 host does. With `drop_remainder` every host
  gets the same number of batches; without it a finite pass can leave hosts a batch apart.
  Batches are formed before prefetching, so they do not depend on `worker_count`; > 0 reads
  in that many worker processes, whose iterator must be closed (`it.close()`) in a program
  with a `__main__` guard. Per process, `prefetch` batches at most are held ahead and
  `read_threads` read at once (records are megabytes: Grain's default buffer of 500 elements
  would hold tens of gigabytes).
  """
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  if batch_size < 1 or num_copies < 0:
    raise ValueError(f"need batch_size >= 1 and num_copies >= 0, got {batch_size}, {num_copies}")
  ds = grain.MapDataset.source(source)
  # The same on every host (perturbation draws are keyed by the global position); the 0
  # keeps the stream one host drew when hosts had seeds of their own.
  ds = ds.seed(int(np.random.SeedSequence([seed, 0]).generate_state(1)[0]))
  if shuffle:
    ds = ds.shuffle()
  # Before repeat, so the perturbation draws (keyed by the epoch-aware index) and the
  # shuffle both change from epoch to epoch.
  ds = ds.random_map(ToExample(num_copies, tuple(modes)))
  ds = ds.repeat(num_epochs)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  # Host k's slice of global batch i is local batch i * shard_count + k; only those records
  # are read. Whole global batches only with drop_remainder, so that hosts stay in step.
  stop = len(ds) - len(ds) % shard_count if drop_remainder else len(ds)
  ds = ds[shard_index:stop:shard_count]
  if len(ds) == 0:
    raise ValueError(f"shard {shard_index} of {shard_count} is empty ({len(source)} records, "
                     f"{shard_count} x {batch_size} rows a global batch)")
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                prefetch_buffer_size=prefetch))
  if worker_count > 0:
    # Grain's workers read absl flags; outside app.run nobody parsed them: take defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return it_ds


def save_iterator(directory, step, iterator):
  """Saves the iterator's position under `directory/step` with Orbax (one file per process).

  In a trainer's composite checkpoint use `grain.checkpoint.CheckpointSave(iterator)` as the
  data item instead.
  """
  with ocp.CheckpointManager(directory) as manager:
    manager.save(step, args=grain.checkpoint.CheckpointSave(iterator))
    manager.wait_until_finished()


def restore_iterator(directory, step, iterator):
  """Moves a fresh iterator of the same pipeline to the position saved at `step`."""
  with ocp.CheckpointManager(directory) as manager:
    return manager.restore(step, args=grain.checkpoint.CheckpointRestore(iterator))
