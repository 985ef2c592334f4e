"""The environment for a subprocess that runs a user's command on a one-device CPU machine."""

import os
import re


def env(**extra: str) -> dict[str, str]:
  """os.environ without the session's fake-device count; the other XLA flags (the test
  compiler level, a float-ordering run's flags) are kept."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", "")).strip()
  return {**os.environ, "XLA_FLAGS": flags, **extra}
