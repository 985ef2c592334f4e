"""Session set-up and shared fixtures.

Eight fake CPU devices for the whole session (must be set before jax is imported), so
sharding tests run beside the rest; single-device tests pin a one-device mesh.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from hf_tiny import make_hf_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
  """(path, torch model) of a tiny random transformers InternVL, untied LM head."""
  path = tmp_path_factory.mktemp("hf_tiny")
  return path, make_hf_checkpoint(path)
