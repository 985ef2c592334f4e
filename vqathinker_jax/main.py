"""Entry point: `python -m vqathinker_jax.main --config configs/X.py --workdir DIR`.

Overrides: `--config.model.dtype=bfloat16`, `--config.mesh.tensor=2`, ...
"""

import json
import pathlib

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs (checkpoints, logs, reports).")
flags.mark_flags_as_required(["config", "workdir"])

MODES = ("smoke", "predict")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config.mode not in MODES:
    raise app.UsageError(f"config.mode={config.mode!r}; expected one of {MODES}")
  workdir = pathlib.Path(_WORKDIR.value)
  # Imported after flag parsing: jax starts only for real runs.
  if config.mode == "predict":
    from vqathinker_jax import predict
    print(json.dumps(predict.run(config, workdir), indent=2))
    return
  from vqathinker_jax import smoke
  print(json.dumps(smoke.run(config, workdir), indent=2))


if __name__ == "__main__":
  app.run(main)
