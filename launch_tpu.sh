#!/usr/bin/env bash
# Launch vqathinker-jax on a Cloud TPU VM slice (single host or pod) with gcloud.
# `./launch_tpu.sh --help` documents every subcommand, flag and environment fallback.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch_tpu.sh [OPTIONS] COMMAND [-- --config.a.b=value ...]

Create (or reuse) a Cloud TPU VM slice, copy this project to every worker, install it
and run `python -m vqathinker_jax.main --config ... --workdir ...` on all workers at once
(multi-host: main sees from the TPU VM's metadata that it is one of several processes and
calls jax.distributed.initialize(), which finds its peers; nothing else is needed). The
workdir may be a gs:// URL: every output is written there through etils.epath.

Commands:
  create   create the TPU VM (or, with --queued, a queued resource and wait until it is
           ACTIVE); an existing one of that name is reused
  setup    copy the project to every worker (a tarball of the committed git tree, HEAD;
           or, with --git URL, a clone) and install it: a Python venv (uv) with
           `pip install -e '.[tpu]'` (jax[tpu], and gcsfs for gs:// workdirs)
  run      start the job on all workers in the background (nohup); each worker logs to
           LOG_DIR/run.log and keeps the job's pid in LOG_DIR/run.pid (on its own disk)
  status   the TPU's state, then per worker whether the job runs and its last log lines
  logs     tail one worker's log (--worker N, default 0; --lines N, default 100)
  stop     kill the job on all workers
  delete   delete the TPU VM (with --queued: the queued resource and its node)
  up       create + setup + run

Before `run` and `up`, a pre-flight compiles the config's GRPO step for the slice with
XLA:TPU on this machine (`python -m vqathinker_jax.tools.aot`, the [tpu] extra installed
here; minutes, no TPU used) and refuses a config whose step does not fit the chips'
memory, before any TPU is created or started (v4, v5p, v5litepod, v6e); --no-preflight skips it.

Options (flag, then its environment fallback):
  --name NAME                 TPU_NAME          TPU VM / queued resource name (required)
  --project PROJECT           PROJECT           Google Cloud project (required)
  --zone ZONE                 ZONE              zone, e.g. us-east5-a (required)
  --accelerator-type TYPE     ACCELERATOR_TYPE  slice type, e.g. v5p-32 (required by create)
  --runtime-version VERSION   RUNTIME_VERSION   TPU software version (default from the type:
                                                v5p -> v2-alpha-tpuv5, v5e -> v2-alpha-tpuv5-lite,
                                                v6e -> v2-alpha-tpuv6e, v2/v3/v4 -> tpu-ubuntu2204-base)
  --bucket gs://BUCKET        BUCKET            run root: data at BUCKET/data (passed as
                                                --config.data.data_dir), workdir BUCKET/runs/NAME
                                                (required by run unless --workdir is given)
  --workdir DIR               WORKDIR           job workdir, a gs:// URL or a path on the
                                                workers (default BUCKET/runs/NAME)
  --config PATH               CONFIG            config file, relative to the project root
                                                (default configs/base.py)
  --queued                    QUEUED=1          use a queued resource instead of a direct create
  --spot                      SPOT=1            Spot capacity (preemptible)
  --git URL                   GIT_URL           setup clones URL instead of copying a tarball
  --ref REF                   GIT_REF           branch or tag to clone with --git (default: the
                                                repository's default branch)
  --remote-dir DIR            REMOTE_DIR        project directory on the workers, relative to the
                                                home directory (default vqathinker-jax)
  --log-dir DIR               LOG_DIR           log directory on each worker, relative to the
                                                home directory (default vqathinker-logs)
  --python VERSION            PYTHON_VERSION    Python of the workers' venv (default 3.11: the
                                                TPU images ship 3.10, the project needs >= 3.11)
  --worker N                                    worker whose log `logs` tails (default 0)
  --lines N                                     log lines `logs` shows (default 100)
  --no-preflight              PREFLIGHT=0       skip the pre-flight compile
  --local-python PATH         LOCAL_PYTHON      Python that runs the pre-flight here (default
                                                python3; needs `pip install -e '.[tpu]'`)
  --dry-run                                     print every command, one per line, shell-quoted,
                                                instead of running it
  -h, --help                                    this help

Arguments after `--` are passed to vqathinker_jax.main after the script's own, e.g.
  launch_tpu.sh --name vqa --project my-proj --zone us-east5-a --accelerator-type v5p-32 \
      --bucket gs://my-bucket --config configs/base.py up -- --config.train.batch_size=64
EOF
}

die() {
  echo "launch_tpu.sh: error: $*" >&2
  echo "launch_tpu.sh: see --help" >&2
  exit 2
}

# Quote one word as Python's shlex.quote does, so dry-run lines paste into a shell.
quote() {
  local s=$1
  if [[ -z $s ]]; then
    printf "''"
  elif [[ $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\"\'\"\'}"
  fi
}

join_quoted() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

# Run a command, or print it under --dry-run.
run_cmd() {
  if [[ $DRY_RUN == 1 ]]; then
    join_quoted "$@"
    printf '\n'
  else
    "$@"
  fi
}

default_runtime() {
  case $1 in
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) die "no default runtime version for accelerator type '$1': pass --runtime-version" ;;
  esac
}

NAME=${TPU_NAME:-}
PROJECT=${PROJECT:-}
ZONE=${ZONE:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-}
RUNTIME_VERSION=${RUNTIME_VERSION:-}
BUCKET=${BUCKET:-}
WORKDIR=${WORKDIR:-}
CONFIG=${CONFIG:-configs/base.py}
QUEUED=${QUEUED:-0}
SPOT=${SPOT:-0}
GIT_URL=${GIT_URL:-}
GIT_REF=${GIT_REF:-}
REMOTE_DIR=${REMOTE_DIR:-vqathinker-jax}
LOG_DIR=${LOG_DIR:-vqathinker-logs}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
PREFLIGHT=${PREFLIGHT:-1}
LOCAL_PYTHON=${LOCAL_PYTHON:-python3}
WORKER=0
LINES=100
DRY_RUN=0
COMMAND=""
EXTRA=()

need_value() {
  [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --no-preflight) PREFLIGHT=0; shift ;;
    --name | --project | --zone | --accelerator-type | --runtime-version | --bucket | \
      --workdir | --config | --git | --ref | --remote-dir | --log-dir | --python | \
      --worker | --lines | --local-python)
      need_value "$@"
      case $1 in
        --name) NAME=$2 ;;
        --project) PROJECT=$2 ;;
        --zone) ZONE=$2 ;;
        --accelerator-type) ACCELERATOR_TYPE=$2 ;;
        --runtime-version) RUNTIME_VERSION=$2 ;;
        --bucket) BUCKET=$2 ;;
        --workdir) WORKDIR=$2 ;;
        --config) CONFIG=$2 ;;
        --git) GIT_URL=$2 ;;
        --ref) GIT_REF=$2 ;;
        --remote-dir) REMOTE_DIR=$2 ;;
        --log-dir) LOG_DIR=$2 ;;
        --python) PYTHON_VERSION=$2 ;;
        --worker) WORKER=$2 ;;
        --lines) LINES=$2 ;;
        --local-python) LOCAL_PYTHON=$2 ;;
      esac
      shift 2 ;;
    --name=* | --project=* | --zone=* | --accelerator-type=* | --runtime-version=* | \
      --bucket=* | --workdir=* | --config=* | --git=* | --ref=* | --remote-dir=* | \
      --log-dir=* | --python=* | --worker=* | --lines=* | --local-python=*)
      set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;  # split and handle as the two-word form
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option '$1'" ;;
    *)
      [[ -z $COMMAND ]] || die "one command at a time (got '$COMMAND' and '$1')"
      COMMAND=$1; shift ;;
  esac
done

case $COMMAND in
  create | setup | run | status | logs | stop | delete | up) ;;
  "") die "no command given (one of: create setup run status logs stop delete up)" ;;
  *) die "unknown command '$COMMAND' (one of: create setup run status logs stop delete up)" ;;
esac

missing=()
[[ -n $NAME ]] || missing+=("--name (or TPU_NAME)")
[[ -n $PROJECT ]] || missing+=("--project (or PROJECT)")
[[ -n $ZONE ]] || missing+=("--zone (or ZONE)")
if [[ $COMMAND == create || $COMMAND == up ]]; then
  [[ -n $ACCELERATOR_TYPE ]] || missing+=("--accelerator-type (or ACCELERATOR_TYPE), e.g. v5p-32")
fi
if [[ $COMMAND == run || $COMMAND == up ]]; then
  [[ -n $BUCKET || -n $WORKDIR ]] || missing+=("--bucket (or BUCKET), or --workdir (or WORKDIR)")
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  for m in "${missing[@]}"; do
    echo "launch_tpu.sh: error: '$COMMAND' needs $m" >&2
  done
  echo "launch_tpu.sh: see --help" >&2
  exit 2
fi
[[ $WORKER =~ ^[0-9]+$ ]] || die "--worker must be a worker index (0, 1, ...), got '$WORKER'"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines must be a number, got '$LINES'"
# Both go unquoted into remote shell commands: plain relative paths only.
for d in "$REMOTE_DIR" "$LOG_DIR"; do
  [[ $d =~ ^[A-Za-z0-9_.-][A-Za-z0-9_./-]*$ ]] || die "remote paths must be plain relative paths ([A-Za-z0-9_./-]), got '$d'"
done
if [[ -n $BUCKET ]]; then
  [[ $BUCKET == gs://* ]] || die "--bucket must be a gs:// URL, got '$BUCKET'"
  BUCKET=${BUCKET%/}
fi
if [[ -z $RUNTIME_VERSION && -n $ACCELERATOR_TYPE ]]; then
  RUNTIME_VERSION=$(default_runtime "$ACCELERATOR_TYPE")
fi
WORKDIR=${WORKDIR:-$BUCKET/runs/$NAME}

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TARBALL=${TMPDIR:-/tmp}/vqathinker-jax-$NAME.tar.gz
REMOTE_TARBALL=$REMOTE_DIR.tar.gz
WHERE=(--project="$PROJECT" --zone="$ZONE")
TPU=(gcloud compute tpus tpu-vm)
QR=(gcloud compute tpus queued-resources)

exists() {
  # Probe, printed (not run) under --dry-run, which then plans as if nothing exists.
  if [[ $DRY_RUN == 1 ]]; then
    run_cmd "$@" --format=value\(name\)
    return 1
  fi
  "$@" --format=value\(name\) >/dev/null 2>&1
}

do_create() {
  local spot=()
  [[ $SPOT == 1 ]] && spot=(--spot)
  if [[ $QUEUED == 1 ]]; then
    if exists "${QR[@]}" describe "$NAME" "${WHERE[@]}"; then
      echo "launch_tpu.sh: queued resource $NAME exists, reusing it" >&2
    else
      run_cmd "${QR[@]}" create "$NAME" "${WHERE[@]}" --node-id="$NAME" \
        --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" "${spot[@]}"
    fi
    wait_active
  elif exists "${TPU[@]}" describe "$NAME" "${WHERE[@]}"; then
    echo "launch_tpu.sh: TPU VM $NAME exists, reusing it" >&2
  else
    run_cmd "${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME_VERSION" "${spot[@]}"
  fi
}

wait_active() {
  # A queued resource is granted when capacity frees up: poll its state.
  local probe=("${QR[@]}" describe "$NAME" "${WHERE[@]}" --format=value\(state.state\))
  if [[ $DRY_RUN == 1 ]]; then
    run_cmd "${probe[@]}"
    return
  fi
  local state
  while true; do
    state=$("${probe[@]}")
    case $state in
      ACTIVE) return ;;
      FAILED | SUSPENDED) echo "launch_tpu.sh: queued resource $NAME is $state" >&2; exit 1 ;;
    esac
    echo "launch_tpu.sh: queued resource $NAME is ${state:-unknown}, waiting" >&2
    sleep 60
  done
}

ssh_all() {
  run_cmd "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"
}

do_setup() {
  local fetch
  if [[ -n $GIT_URL ]]; then
    local branch=()
    [[ -n $GIT_REF ]] && branch=(--branch "$GIT_REF")
    fetch="rm -rf $(quote "$REMOTE_DIR") && git clone --depth=1 $(join_quoted "${branch[@]}" "$GIT_URL" "$REMOTE_DIR")"
  else
    if [[ $DRY_RUN == 0 ]] && [[ -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]]; then
      echo "launch_tpu.sh: warning: uncommitted changes are not copied (the tarball is HEAD)" >&2
    fi
    run_cmd git -C "$REPO_ROOT" archive --format=tar.gz --output="$TARBALL" HEAD
    run_cmd "${TPU[@]}" scp "$TARBALL" "$NAME:$REMOTE_TARBALL" "${WHERE[@]}" --worker=all --recurse
    fetch="rm -rf $(quote "$REMOTE_DIR") && mkdir -p $(quote "$REMOTE_DIR") && tar -xzf $(quote "$REMOTE_TARBALL") -C $(quote "$REMOTE_DIR")"
  fi
  # uv brings its own Python (the TPU images' is 3.10) and installs fast on every worker.
  ssh_all "set -euo pipefail; $fetch && cd $(quote "$REMOTE_DIR") && python3 -m pip install --user --quiet uv && ~/.local/bin/uv venv --python $(quote "$PYTHON_VERSION") .venv && ~/.local/bin/uv pip install --python .venv/bin/python -e '.[tpu]'"
}

# The config's GRPO step compiled for the slice by XLA:TPU here (tools/aot): refuse to
# start a job whose step does not fit the chips' memory.
do_preflight() {
  [[ $PREFLIGHT == 1 ]] || return 0
  case $ACCELERATOR_TYPE in
    v4-8 | v4-16 | v4-32 | v4-64 | v4-128 | v5p-8 | v5p-16 | v5p-32 | v5p-64 | v5p-128 | \
      v5litepod-4 | v5litepod-8 | v5litepod-16 | v5litepod-32 | v5litepod-64 | v5litepod-128 | \
      v5litepod-256 | v6e-4 | v6e-8 | v6e-16 | v6e-32 | v6e-64 | v6e-128 | v6e-256) ;;
    *)
      echo "launch_tpu.sh: warning: no pre-flight compile for '${ACCELERATOR_TYPE:-no --accelerator-type}' (tools/aot knows v4, v5p, v5litepod and v6e slices up to 256 chips)" >&2
      return 0 ;;
  esac
  local overrides=() a
  for a in "${EXTRA[@]}"; do
    [[ $a == --config.* ]] && overrides+=("$a")
  done
  local cmd=("$LOCAL_PYTHON" -m vqathinker_jax.tools.aot --config="$REPO_ROOT/$CONFIG"
             --topology="$ACCELERATOR_TYPE" "${overrides[@]}")
  if [[ $DRY_RUN == 1 ]]; then
    run_cmd "${cmd[@]}"
    return
  fi
  echo "launch_tpu.sh: pre-flight: compiling the step for $ACCELERATOR_TYPE with XLA:TPU here (minutes; --no-preflight skips it)" >&2
  local report verdict
  report=$(cd "$REPO_ROOT" && ALLOW_MULTIPLE_LIBTPU_LOAD=1 "${cmd[@]}") \
    || die "the pre-flight compile failed (its error is above); --no-preflight skips it"
  verdict=$("$LOCAL_PYTHON" -c 'import json, sys
r = json.load(sys.stdin)
print(("fits" if r["fits"] else "does not fit") + ": peak %s GiB per chip of %s" % (r.get("peak_gib_per_chip", "?"), r["hbm_gib_per_chip"]))' <<<"$report")
  echo "launch_tpu.sh: pre-flight: $verdict" >&2
  [[ $verdict == fits:* ]] || die "the step does not fit $ACCELERATOR_TYPE: lower the batch or micro-batch sizes, set config.grpo.remat=full, or take a larger slice"
}

do_run() {
  local args=(--config="$CONFIG" --workdir="$WORKDIR")
  [[ -n $BUCKET ]] && args+=(--config.data.data_dir="$BUCKET/data")
  args+=("${EXTRA[@]}")
  local log="\$HOME/$LOG_DIR"
  ssh_all "mkdir -p $log && cd $(quote "$REMOTE_DIR") && nohup .venv/bin/python -m vqathinker_jax.main $(join_quoted "${args[@]}") > $log/run.log 2>&1 < /dev/null & echo \$! > $log/run.pid"
}

do_status() {
  if [[ $QUEUED == 1 ]]; then
    run_cmd "${QR[@]}" describe "$NAME" "${WHERE[@]}" --format=value\(state.state\)
  fi
  run_cmd "${TPU[@]}" describe "$NAME" "${WHERE[@]}" --format=value\(state,acceleratorType,health\)
  local log="\$HOME/$LOG_DIR"
  ssh_all "if kill -0 \"\$(cat $log/run.pid 2>/dev/null)\" 2>/dev/null; then echo \"\$(hostname): running\"; else echo \"\$(hostname): not running\"; fi; tail -n 3 $log/run.log 2>/dev/null || true"
}

do_logs() {
  run_cmd "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker="$WORKER" \
    --command="tail -n $LINES \$HOME/$LOG_DIR/run.log"
}

do_stop() {
  local log="\$HOME/$LOG_DIR"
  ssh_all "if [ -f $log/run.pid ]; then kill \"\$(cat $log/run.pid)\" 2>/dev/null || true; rm -f $log/run.pid; fi"
}

do_delete() {
  if [[ $QUEUED == 1 ]]; then
    run_cmd "${QR[@]}" delete "$NAME" "${WHERE[@]}" --force --quiet
  else
    run_cmd "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
  fi
}

case $COMMAND in
  create) do_create ;;
  setup) do_setup ;;
  run) do_preflight; do_run ;;
  status) do_status ;;
  logs) do_logs ;;
  stop) do_stop ;;
  delete) do_delete ;;
  up) do_preflight; do_create; do_setup; do_run ;;
esac
