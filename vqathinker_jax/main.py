"""Entry point: `python -m vqathinker_jax.main --config configs/X.py --workdir DIR`.

Overrides: `--config.model.dtype=bfloat16`, `--config.mesh.tensor=2`, ...
Modes (`config.mode`, checked with the rest by `config_check`): train (SFT warm-start,
then GRPO), eval, predict, smoke. `--workdir` may be a local path or gs://bucket/run.
"""

import json
import os
from typing import Callable, Mapping

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for outputs (checkpoints, logs, reports): a local path or a "
    "URL such as gs://bucket/run (every output is written through etils.epath).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize() before anything else. auto: when this is one of several "
    "processes, i.e. JAX_COORDINATOR_ADDRESS is set (with JAX_NUM_PROCESSES and "
    "JAX_PROCESS_ID, or a cluster JAX detects to fill them in), or JAX's own cluster "
    "detection finds more than one process (a TPU pod slice from the VM's metadata, SLURM, "
    "Open MPI, Kubernetes); on: always (JAX detects the rest, or fails saying what is "
    "missing); off: never (each process runs alone).")
flags.mark_flags_as_required(["config", "workdir"])


def _detected_process_count() -> int:
  """Processes in the cluster JAX's auto-detection finds: what `jax.distributed.initialize()`
  with no arguments would join (1: none). It reads the TPU VM's metadata server, not shell
  variables, so a `gcloud ... ssh --worker=all` command that exports nothing is found too."""
  from jax._src import clusters  # initialize's own detection (no public API for it)
  for env in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
    if not env.opt_in_only_method and env.is_env_present():  # the first one, as initialize
      return env.get_process_count()
  return 1


def _distributed_args(mode: str, env: Mapping[str, str],
                      detect: Callable[[], int] = _detected_process_count) -> dict | None:
  """The arguments of `jax.distributed.initialize` for this launch; None: one process, no
  initialisation. JAX reads JAX_COORDINATOR_ADDRESS itself but not JAX_NUM_PROCESSES or
  JAX_PROCESS_ID, so those are passed."""
  if mode == "off":
    return None
  if mode == "auto" and "JAX_COORDINATOR_ADDRESS" not in env:
    try:
      if detect() <= 1:
        return None
    except Exception as e:  # e.g. a TPU VM whose metadata server does not answer
      raise app.UsageError(f"could not tell whether this is one of several processes ({e!r}); "
                           "pass --distributed=on or --distributed=off") from e
  args = {}
  for key, name, cast in (("JAX_COORDINATOR_ADDRESS", "coordinator_address", str),
                          ("JAX_NUM_PROCESSES", "num_processes", int),
                          ("JAX_PROCESS_ID", "process_id", int)):
    if env.get(key):
      args[name] = cast(env[key])
  return args


def _compile_cache(jax, setting: str, workdir) -> None:
  """`config.compile_cache_dir`: XLA's persistent compilation cache for this run (JAX
  writes it through epath: a gs:// directory works)."""
  if setting == "":
    jax.config.update("jax_enable_compilation_cache", False)
  elif setting != "auto":
    jax.config.update("jax_compilation_cache_dir",
                      setting if "://" in setting else os.path.expanduser(setting))
  elif not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # the user's own setting wins
    jax.config.update("jax_compilation_cache_dir", os.fspath(workdir / "xla_cache"))


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_KEEP_BYTES = 1 << 30  # free memory glibc keeps at the heap top (its default: 128 KiB)


def _keep_freed_memory(jax) -> bool:
  """On the CPU backend glibc malloc serves XLA's buffers, and every execution's
  temporaries (96 MB a demo SFT step, 128 MB a GRPO step) are above glibc's mmap ceiling
  (32 MiB): each step mmapped fresh pages, the kernel zero-filled every one on first touch
  (~25-33k page faults, 50-80 ms of system time a step) and munmapped them at the end.
  With mmap off and the heap top kept, the next step reuses the same pages. This needs the
  program run on the calling (main) thread, set by `_sync_cpu_dispatch`: glibc mmaps an
  allocation over 64 MiB from any other thread's arena whatever the settings. The
  processes this one starts (the synthetic set's renderers, Grain's workers) get the same
  settings through glibc's environment variables (unless set): the renderers' numpy
  temporaries took 2-4k page faults a clip (1.7-3.8M for the demo's 960). CPU only, where
  device memory is host memory; other backends and non-glibc hosts are left alone."""
  if jax.default_backend() != "cpu" or jax.config.values["jax_cpu_enable_async_dispatch"]:
    return False
  import ctypes
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # not glibc (macOS)
    return False
  if not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)):
    return False
  os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
  os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(_KEEP_BYTES))
  return True


def _sync_cpu_dispatch(jax) -> None:
  """Before any backend starts: the CPU client runs programs on the calling thread (see
  `_keep_freed_memory`; a program whose inputs are still being copied, as a host transfer
  over 100 KiB is on a pool thread, still runs there). The trainer waits for every step's
  metrics anyway, and execution releases the GIL (Grain's threads keep reading); only the
  CPU client reads the option."""
  jax.config.update("jax_cpu_enable_async_dispatch", False)


def _workdir_path(flag: str):
  """--workdir as an epath.Path: gs://bucket/run keeps its scheme (pathlib would make it
  the local folder gs:/bucket/run); a local path has ~ expanded."""
  from etils import epath
  return epath.Path(flag if "://" in flag else os.path.expanduser(flag))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  # Imported after flag parsing: jax starts only for real runs.
  import jax
  _sync_cpu_dispatch(jax)
  dist = _distributed_args(_DISTRIBUTED.value, os.environ)
  if dist is not None:
    jax.distributed.initialize(**dist)
  from vqathinker_jax import config_check
  try:  # before anything loads or compiles
    config_check.validate(config, num_devices=jax.device_count(), workdir=_WORKDIR.value)
  except config_check.ConfigError as e:
    raise app.UsageError(str(e)) from None
  _keep_freed_memory(jax)  # before the model and data allocate
  workdir = _workdir_path(_WORKDIR.value)
  _compile_cache(jax, config.compile_cache_dir, workdir)
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    # No persistent cache: JAX keys CPU entries by each process's own topology and writes
    # process 0's only, so the others would compile what process 0 loads, and a rerun would
    # die at its first collective, where gloo waits 30 s at most for every process.
    jax.config.update("jax_enable_compilation_cache", False)
  if jax.process_index() != 0 or not flags.FLAGS["verbosity"].present:
    # Orbax and Grain log every save and read at INFO; `-v 0` brings them back.
    logging.set_verbosity(logging.WARNING)
  if config.mode == "train":
    from vqathinker_jax.train import log as train_log, trainer
    print(train_log.render_summary(trainer.run(config, workdir)))
  elif config.mode == "eval":
    from vqathinker_jax.eval import evaluate
    from vqathinker_jax.train import trainer
    result = evaluate.run(config, workdir, model=trainer.trained_model(config, workdir))
    print(json.dumps(result, indent=2, default=str))
  elif config.mode == "predict":
    from vqathinker_jax.eval import predict
    print(json.dumps(predict.run(config, workdir), indent=2))
  else:
    from vqathinker_jax import smoke
    print(json.dumps(smoke.run(config, workdir), indent=2))


if __name__ == "__main__":
  app.run(main)
