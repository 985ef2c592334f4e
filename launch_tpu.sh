#!/usr/bin/env bash
# TPU pod launch: filled in by the scale-out issue (create/reuse a slice with gcloud,
# install, start `python -m vqathinker_jax.main --config ...` on every worker).
set -euo pipefail
echo "launch_tpu.sh: not implemented yet (planned: TPU slice launch with gcloud)." >&2
exit 2
