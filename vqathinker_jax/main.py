"""Entry point: `python -m vqathinker_jax.main --config configs/X.py --workdir DIR`.

Overrides: `--config.model.dtype=bfloat16`, `--config.mesh.tensor=2`, ...
Modes (`config.mode`, checked with the rest by `config_check`): train (SFT warm-start,
then GRPO), eval, predict, smoke.
"""

import json
import os
import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs (checkpoints, logs, reports).")
flags.mark_flags_as_required(["config", "workdir"])


def _multi_process() -> bool:
  """Launched as one of several processes (a TPU pod slice's workers, SLURM, or an explicit
  coordinator): `jax.distributed.initialize()` must run before anything touches jax."""
  env = os.environ
  return ("JAX_COORDINATOR_ADDRESS" in env or "," in env.get("TPU_WORKER_HOSTNAMES", "")
          or int(env.get("SLURM_NTASKS", "1") or 1) > 1)


def _compile_cache(jax, setting: str, workdir: pathlib.Path) -> None:
  """`config.compile_cache_dir`: XLA's persistent compilation cache for this run."""
  if setting == "":
    jax.config.update("jax_enable_compilation_cache", False)
  elif setting != "auto":
    jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(setting).expanduser()))
  elif not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # the user's own setting wins
    jax.config.update("jax_compilation_cache_dir", str(workdir / "xla_cache"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  # Imported after flag parsing: jax starts only for real runs.
  import jax
  if _multi_process():
    jax.distributed.initialize()
  from vqathinker_jax import config_check
  try:  # before anything loads or compiles
    config_check.validate(config, num_devices=jax.device_count(), workdir=_WORKDIR.value)
  except config_check.ConfigError as e:
    raise app.UsageError(str(e)) from None
  workdir = pathlib.Path(_WORKDIR.value).expanduser()
  _compile_cache(jax, config.compile_cache_dir, workdir)
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
